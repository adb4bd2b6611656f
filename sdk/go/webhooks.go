package j1msky

import (
	"context"
	"net/http"
)

// WebhookRequest is the body of POST /webhooks (docs/webhooks.md).
type WebhookRequest struct {
	URL    string   `json:"url"`
	Events []string `json:"events"` // e.g. "agent.completed", "agent.failed"; "*" for all
	// Secret signs the deliveries; "" lets the daemon generate one, returned once in
	// Webhook.Secret.
	Secret      string            `json:"secret,omitempty"`
	Description string            `json:"description,omitempty"`
	Sink        string            `json:"sink,omitempty"`    // "http" (the default), "slack", "file", or a plugin's
	Headers     map[string]string `json:"headers,omitempty"` // sent with each delivery
	// Active false registers the webhook paused: its deliveries wait until it is set active.
	Active *bool `json:"active,omitempty"`
}

// Webhook is a registered webhook.
type Webhook struct {
	ID            string   `json:"webhook_id"`
	URL           string   `json:"url"`
	Sink          string   `json:"sink"`
	Events        []string `json:"events"`
	Status        string   `json:"status"` // active or paused
	Description   string   `json:"description"`
	CreatedAt     string   `json:"created_at"`
	LastTriggered string   `json:"last_triggered"`
	Secret        string   `json:"secret"` // only when the daemon generated it: shown this once
}

// RegisterWebhook registers a webhook (POST /webhooks). A URL the daemon's target policy
// refuses (loopback, LAN, ... unless its [webhooks] allowed_networks allow it) is an
// *APIError with Status 400 and a Details entry for "url".
func (c *Client) RegisterWebhook(ctx context.Context, req WebhookRequest) (*Webhook, error) {
	return decoded[Webhook](ctx, c, Call{Method: http.MethodPost, Path: "/webhooks", Body: req})
}

// DeleteWebhook removes a webhook (DELETE /webhooks/{id}).
func (c *Client) DeleteWebhook(ctx context.Context, webhookID string) error {
	return c.Do(ctx, Call{Method: http.MethodDelete, Path: "/webhooks/" + pathEscape(webhookID)}, nil)
}
