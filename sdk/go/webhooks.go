package j1msky

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// WebhookRequest is the body of POST /webhooks (docs/webhooks.md).
type WebhookRequest struct {
	URL    string   `json:"url"`
	Events []string `json:"events,omitempty"` // e.g. "agent.completed"; "*" for all; none: the daemon's default (an agent's end)
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

// WebhookEvent is what the daemon POSTs to a webhook (docs/webhooks.md).
type WebhookEvent struct {
	Event     string          `json:"event"`     // e.g. agent.completed
	Timestamp string          `json:"timestamp"` // ISO 8601 UTC
	Data      json.RawMessage `json:"data"`      // for agent.* events, the agent (decode into AgentStatus)
	ID        int64           `json:"id"`
}

// ErrBadWebhookSignature is a webhook body whose X-J1MSKY-Signature does not match the secret.
var ErrBadWebhookSignature = errors.New("j1msky: webhook signature does not match")

// VerifyWebhook checks a delivery's X-J1MSKY-Signature header ("sha256=" + hex
// HMAC-SHA256(secret, body)) over the raw body as received, then decodes it. Delivery is at
// least once: drop an event whose ID (signed, unlike the headers) you already processed.
func VerifyWebhook(secret string, body []byte, signature string) (*WebhookEvent, error) {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(strings.TrimSpace(signature)))) {
		return nil, ErrBadWebhookSignature
	}
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, err
	}
	return &ev, nil
}
