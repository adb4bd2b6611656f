package j1msky

// Integration tests: the client against a REAL daemon, named by J1MSKY_API (its /api root,
// e.g. http://127.0.0.1:8080/api) and J1MSKY_KEY (a key with agents:read, agents:write;
// the key and signing tests need admin:write, the bootstrap key has it). Skipped without
// them. tests/test_sdk_go.py starts a daemon on the offline provider and runs them, with
// J1MSKY_TEST_WEBHOOKS=1 when that daemon allows webhooks to loopback.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

const liveModel, liveTeam = "k2p5", "team_coding" // in the embedded default config and in tests/daemon.py's

var agentID = regexp.MustCompile(`^subagent_[0-9]+_[0-9]{4}$`)

// live is a client of the daemon the environment names, and a context that ends the test's
// calls after two minutes; the test is skipped without a daemon.
func live(t *testing.T, opts ...Option) (*Client, context.Context) {
	t.Helper()
	api, key := os.Getenv("J1MSKY_API"), os.Getenv("J1MSKY_KEY")
	if api == "" || key == "" {
		t.Skip("no daemon: set J1MSKY_API (e.g. http://127.0.0.1:8080/api) and J1MSKY_KEY to run the " +
			"integration tests against one (tests/test_sdk_go.py does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return NewClient(api, key, append([]Option{WithPollInterval(50 * time.Millisecond)}, opts...)...), ctx
}

// newKey makes a key with the admin client (skipping the test when J1MSKY_KEY may not) and
// revokes it when the test ends.
func newKey(t *testing.T, ctx context.Context, admin *Client, body map[string]any) (token, secret string) {
	t.Helper()
	var key struct {
		KeyID  string `json:"key_id"`
		Token  string `json:"token"`
		Secret string `json:"secret"`
	}
	err := admin.Do(ctx, Call{Method: "POST", Path: "/keys", Body: body}, &key)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusForbidden {
		t.Skip("J1MSKY_KEY may not make keys (admin:write): " + apiErr.Message)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admin.Do(context.Background(), Call{Method: "DELETE", Path: "/keys/" + pathEscape(key.KeyID)}, nil)
	})
	return key.Token, key.Secret
}

func TestLiveSpawnAndWait(t *testing.T) {
	c, ctx := live(t)
	agent, err := c.Spawn(ctx, SpawnRequest{Model: liveModel, Task: "Write a Go function", Priority: PriorityNormal})
	if err != nil {
		t.Fatal(err)
	}
	if !agentID.MatchString(agent.ID) || agent.Model != liveModel || agent.Status != StatusSpawning || agent.EstimatedCost <= 0 {
		t.Errorf("spawned %+v", agent)
	}
	result, err := c.WaitForCompletion(ctx, agent.ID, 120)
	if err != nil {
		t.Fatal(err)
	}
	if result.Status != StatusCompleted || result.Output == "" || result.Cost <= 0 || result.AgentID != agent.ID ||
		result.Agent.Usage == nil || result.Agent.Usage.OutputTokens <= 0 || result.Agent.ServedBy == nil {
		t.Errorf("result %+v, agent %+v", result, result.Agent)
	}
	status, err := c.GetAgent(ctx, agent.ID)
	if err != nil || status.Task != "Write a Go function" || status.Result != result.Output || status.Priority != "normal" {
		t.Errorf("GetAgent %+v %v", status, err)
	}
}

func TestLiveIdempotencyKeyMakesOneAgent(t *testing.T) {
	c, ctx := live(t)
	req := SpawnRequest{Model: liveModel, Task: "once", IdempotencyKey: "go-sdk-" + newIdempotencyKey()}
	first, err := c.Spawn(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Spawn(ctx, req) // what a retry after a lost answer sends
	if err != nil || again.ID != first.ID {
		t.Errorf("the same Idempotency-Key spawned %v then %v (%v)", first.ID, again, err)
	}
	req.IdempotencyKey = ""
	other, err := c.Spawn(ctx, req)
	if err != nil || other.ID == first.ID {
		t.Errorf("a new spawn without a key returned %v (%v)", other, err)
	}
	for _, id := range []string{first.ID, other.ID} {
		if _, err := c.WaitForCompletion(ctx, id, 120); err != nil {
			t.Error(err)
		}
	}
}

func TestLiveTeam(t *testing.T) {
	c, ctx := live(t)
	team, err := c.SpawnTeam(ctx, TeamRequest{Team: liveTeam, Task: "Build a REST API", Priority: PriorityHigh})
	if err != nil {
		t.Fatal(err)
	}
	if team.Team != liveTeam || len(team.Members) < 2 || len(team.Models) != len(team.Members) {
		t.Errorf("team %+v", team)
	}
	result, err := c.WaitForCompletion(ctx, team.ID, 120)
	if err != nil {
		t.Fatal(err)
	}
	if result.Output == "" || len(result.Agent.Members) != len(team.Members) || result.Agent.Members[0].Status != StatusCompleted {
		t.Errorf("team result %+v", result.Agent)
	}
}

func TestLiveCancel(t *testing.T) {
	c, ctx := live(t)
	// tests/test_sdk_go.py's daemon answers after a delay, so the agent is still live here.
	agent, err := c.Spawn(ctx, SpawnRequest{Model: liveModel, Task: "to be cancelled"})
	if err != nil {
		t.Fatal(err)
	}
	cancelled, err := c.CancelAgent(ctx, agent.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cancelled.AgentID != agent.ID || cancelled.Refund < 0 {
		t.Errorf("cancel %+v", cancelled)
	}
	result, err := c.WaitForCompletion(ctx, agent.ID, 120)
	var agentErr *AgentError
	if !errors.As(err, &agentErr) || agentErr.Status != StatusCancelled || result == nil || result.Status != StatusCancelled {
		t.Errorf("waiting for a cancelled agent: %+v %v", result, err)
	}
	_, err = c.CancelAgent(ctx, agent.ID)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusConflict || apiErr.Type != "CONFLICT" ||
		!strings.Contains(string(apiErr.Raw), `"status":"cancelled"`) {
		t.Errorf("cancelling twice: %#v", err)
	}
}

func TestLiveErrorsAreTyped(t *testing.T) {
	c, ctx := live(t)
	var apiErr *APIError

	_, err := c.GetAgent(ctx, "subagent_0_0000")
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Type != "NOT_FOUND" || !strings.HasPrefix(apiErr.RequestID, "req_") {
		t.Errorf("unknown agent: %#v", err)
	}

	_, err = c.Spawn(ctx, SpawnRequest{Model: "gpt-9", Task: "", Priority: "urgent"})
	fields := map[string]bool{}
	if errors.As(err, &apiErr) {
		for _, d := range apiErr.Details {
			fields[d.Field] = true
		}
	}
	if apiErr == nil || apiErr.Status != 400 || apiErr.Type != "VALIDATION_ERROR" || !fields["model"] || !fields["task"] || !fields["priority"] {
		t.Errorf("bad spawn: %#v", err)
	}

	// 0.0.0.0 is refused by the target policy whatever the config: the daemon never connects.
	_, err = c.RegisterWebhook(ctx, WebhookRequest{URL: "http://0.0.0.0:9/hook", Events: []string{"agent.completed"}})
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || len(apiErr.Details) == 0 || apiErr.Details[0].Field != "url" {
		t.Errorf("refused webhook URL: %#v", err)
	}

	stranger := NewClient(c.BaseURL(), "jsk_not_a_key")
	_, err = stranger.GetAgent(ctx, "subagent_0_0000")
	if !errors.As(err, &apiErr) || apiErr.Status != 401 || apiErr.Type != "INVALID_API_KEY" {
		t.Errorf("unknown key: %#v", err)
	}
}

func TestLiveQuote(t *testing.T) {
	c, ctx := live(t)
	q, err := c.GetQuote(ctx, QuoteRequest{Model: liveModel, Complexity: "low", Segment: "smb",
		EstimatedInputTokens: 1000, EstimatedOutputTokens: 500})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(q.QuoteID, "quote_") || q.Model != liveModel || q.InternalCost <= 0 || q.RecommendedPrice <= 0 ||
		q.GuardrailCheck.Action == "" || q.GuardrailCheck.ActualMarginPct != q.GrossMarginPct {
		t.Errorf("quote %+v", q)
	}
	_, err = c.GetQuote(ctx, QuoteRequest{Model: liveModel, Complexity: "extreme", Segment: "galactic"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Type != "VALIDATION_ERROR" || len(apiErr.Details) != 2 ||
		apiErr.Details[0].Field != "complexity" || apiErr.Details[1].Field != "segment" {
		t.Errorf("bad quote: %v %+v", err, apiErr)
	}
}

func TestLiveSigning(t *testing.T) {
	admin, ctx := live(t)
	token, secret := newKey(t, ctx, admin, map[string]any{"name": "go-sdk-signing",
		"scopes": []string{"agents:read", "agents:write"}, "require_signature": true})

	signed := NewClient(admin.BaseURL(), token, WithAPISecret(secret))
	agent, err := signed.Spawn(ctx, SpawnRequest{Model: liveModel, Task: "signed"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signed.GetAgent(ctx, agent.ID); err != nil {
		t.Error(err)
	}
	var page struct {
		Data []AgentStatus `json:"data"`
	}
	if err := signed.Do(ctx, Call{Method: "GET", Path: "/agents", Query: map[string][]string{"limit": {"1"}}}, &page); err != nil || len(page.Data) != 1 {
		t.Errorf("signed GET with a query: %v %v", page, err)
	}

	for name, tc := range map[string]struct {
		client *Client
		want   string
	}{
		"unsigned":     {NewClient(admin.BaseURL(), token), "SIGNATURE_REQUIRED"},
		"wrong secret": {NewClient(admin.BaseURL(), token, WithAPISecret(secret+"x")), "INVALID_SIGNATURE"},
	} {
		_, err := tc.client.GetAgent(ctx, agent.ID)
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.Status != 401 || apiErr.Type != tc.want {
			t.Errorf("%s: %#v", name, err)
		}
	}
}

func TestLiveRateLimit(t *testing.T) {
	admin, ctx := live(t)
	// One agent read per window for this key: the second is a real 429 with Retry-After.
	token, _ := newKey(t, ctx, admin, map[string]any{"name": "go-sdk-ratelimit",
		"scopes": []string{"agents:read"}, "limits": map[string]int{"agent_read": 1}})
	c := NewClient(admin.BaseURL(), token, WithMaxRetries(0))
	var apiErr *APIError
	if _, err := c.GetAgent(ctx, "subagent_0_0000"); !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Fatalf("first read: %#v", err)
	}
	_, err := c.GetAgent(ctx, "subagent_0_0000")
	var rl *RateLimitError
	if !errors.As(err, &rl) || rl.Type != "RATE_LIMITED" || rl.RetryAfter <= 0 || !errors.As(err, &apiErr) || apiErr.Status != 429 {
		t.Errorf("second read: %#v", err)
	}
}

func TestLiveWebhookDelivery(t *testing.T) {
	c, ctx := live(t)
	if os.Getenv("J1MSKY_TEST_WEBHOOKS") != "1" {
		t.Skip("set J1MSKY_TEST_WEBHOOKS=1 when the daemon's [webhooks] allowed_networks lets it post to 127.0.0.1")
	}
	const secret = "go-sdk-webhook-secret"
	events := make(chan *WebhookEvent, 16)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ev, err := VerifyWebhook(secret, body, r.Header.Get("X-J1MSKY-Signature"))
		if err != nil {
			t.Errorf("delivery %s: %v", body, err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		events <- ev
	}))
	defer receiver.Close()
	hook, err := c.RegisterWebhook(ctx, WebhookRequest{URL: receiver.URL + "/hook", Events: []string{"agent.completed"},
		Secret: secret, Description: "go sdk test"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.DeleteWebhook(context.Background(), hook.ID) }()
	if hook.ID == "" || hook.Status != "active" || hook.Secret != "" {
		t.Errorf("webhook %+v", hook) // a secret we chose is not echoed back
	}
	agent, err := c.Spawn(ctx, SpawnRequest{Model: liveModel, Task: "announce me"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-events:
			var data AgentStatus
			if err := json.Unmarshal(ev.Data, &data); err != nil {
				t.Fatal(err)
			}
			if ev.Event == "agent.completed" && data.ID == agent.ID {
				return
			}
		case <-ctx.Done():
			t.Fatal("no agent.completed delivery for " + agent.ID)
		}
	}
}
