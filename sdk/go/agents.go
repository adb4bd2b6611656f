package j1msky

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Priorities of a spawn.
const (
	PriorityLow    = "low"
	PriorityNormal = "normal"
	PriorityHigh   = "high"
)

// Agent statuses (GET /agent/{id} "status"); the last three are terminal.
const (
	StatusSpawning  = "spawning"
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// SpawnRequest is the body of POST /spawn. Model and Task are required; the daemon answers a
// 400 VALIDATION_ERROR (*APIError with Details) for a broken rule.
type SpawnRequest struct {
	Model      string   `json:"model"`
	Task       string   `json:"task"`
	Priority   string   `json:"priority,omitempty"`    // low, normal (the default) or high
	Timeout    float64  `json:"timeout,omitempty"`     // seconds; 0: the daemon's default
	WebhookURL string   `json:"webhook_url,omitempty"` // gets this agent's end, signed with the key's webhook secret
	Privacy    *Privacy `json:"privacy,omitempty"`
	// IdempotencyKey, when set, is sent instead of a fresh one: the same key again (within
	// the daemon's idempotency window) returns the first spawn instead of a second agent.
	IdempotencyKey string `json:"-"`
}

// Privacy overrides how long the daemon keeps this agent's task and result.
type Privacy struct {
	RetentionDays int `json:"retention_days"`
}

// Agent is the answer to a spawn: the new agent's id and what it is expected to cost.
type Agent struct {
	ID            string  `json:"agent_id"`
	Model         string  `json:"model"`
	Status        string  `json:"status"` // "spawning" in a spawn's answer
	EstimatedCost float64 `json:"estimated_cost"`
}

// TeamRequest is the body of POST /spawn-team.
type TeamRequest struct {
	Team           string  `json:"team"`
	Task           string  `json:"task"`
	Priority       string  `json:"priority,omitempty"`
	Timeout        float64 `json:"timeout,omitempty"`
	WebhookURL     string  `json:"webhook_url,omitempty"`
	IdempotencyKey string  `json:"-"`
}

// Team is the answer to a team spawn: the team agent (ID, which WaitForCompletion takes) and
// one member agent per team model.
type Team struct {
	ID            string   `json:"agent_id"`
	Team          string   `json:"team"`
	Models        []string `json:"models"` // "provider/upstream" labels
	Status        string   `json:"status"`
	EstimatedCost float64  `json:"estimated_cost"`
	TeamStatus    string   `json:"team_status"` // the config's "active" or "standby"
	Members       []string `json:"members"`     // the member agents' ids
}

// ServedBy is the model and provider that answered (after a fallback, not the agent's model).
type ServedBy struct {
	Model    string `json:"model"`
	Provider string `json:"provider"`
}

// Usage is the provider's token counts.
type Usage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

// Member is one member of a team agent, as GET /agent/{team id} lists it.
type Member struct {
	ID     string   `json:"agent_id"`
	Model  string   `json:"model"`
	Status string   `json:"status"`
	Cost   *float64 `json:"cost"`
}

// AgentStatus is GET /agent/{id}: one agent as the daemon stores it (docs/api.md). Times are
// ISO 8601 UTC text; a JSON null is the zero value ("", nil).
type AgentStatus struct {
	ID            string    `json:"agent_id"`
	Model         string    `json:"model"`
	Status        string    `json:"status"`
	Task          string    `json:"task"`
	Created       string    `json:"created"`
	Started       string    `json:"started"`
	Completed     string    `json:"completed"`
	Result        string    `json:"result"` // the model's text once completed
	Cost          *float64  `json:"cost"`   // nil until something completed
	EstimatedCost float64   `json:"estimated_cost"`
	Priority      string    `json:"priority"`
	Timeout       float64   `json:"timeout"`
	Team          string    `json:"team"`
	Error         string    `json:"error"` // why it failed or was cancelled
	ServedBy      *ServedBy `json:"served_by"`
	Usage         *Usage    `json:"usage"`
	Attempts      int       `json:"attempts"`
	APIKey        string    `json:"api_key"` // the id of the key that spawned it (never its token)
	ProjectID     string    `json:"project_id"`
	ParentID      string    `json:"parent_id"` // team members only
	Models        []string  `json:"models"`    // team agents only
	Members       []Member  `json:"members"`   // team agents only
}

// Terminal reports whether the agent has ended (completed, failed or cancelled).
func (a *AgentStatus) Terminal() bool {
	switch a.Status {
	case StatusCompleted, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// Result is a finished agent, as WaitForCompletion returns it.
type Result struct {
	AgentID string
	Status  string  // completed, failed or cancelled
	Output  string  // the model's text ("" unless completed)
	Cost    float64 // what it cost in USD (0 when nothing was billed)
	Error   string  // why it failed or was cancelled
	Agent   *AgentStatus
}

// Cancellation is the answer to CancelAgent.
type Cancellation struct {
	Message string  `json:"message"`
	AgentID string  `json:"agent_id"`
	Refund  float64 `json:"refund"` // the estimate minus what was recorded, never below 0
}

// Spawn creates one agent (POST /spawn). Its retries carry one Idempotency-Key, so they
// never create a second agent.
func (c *Client) Spawn(ctx context.Context, req SpawnRequest) (*Agent, error) {
	return decoded[Agent](ctx, c, Call{Method: http.MethodPost, Path: "/spawn", Body: req, IdempotencyKey: req.IdempotencyKey})
}

// SpawnTeam creates a team agent and its members (POST /spawn-team).
func (c *Client) SpawnTeam(ctx context.Context, req TeamRequest) (*Team, error) {
	return decoded[Team](ctx, c, Call{Method: http.MethodPost, Path: "/spawn-team", Body: req, IdempotencyKey: req.IdempotencyKey})
}

// GetAgent reads one agent (GET /agent/{id}); an unknown id is an *APIError with Status 404.
func (c *Client) GetAgent(ctx context.Context, agentID string) (*AgentStatus, error) {
	return decoded[AgentStatus](ctx, c, Call{Method: http.MethodGet, Path: agentPath(agentID)})
}

// CancelAgent cancels a live agent (DELETE /agent/{id}); an agent that already ended is an
// *APIError with Status 409 (Type CONFLICT).
func (c *Client) CancelAgent(ctx context.Context, agentID string) (*Cancellation, error) {
	return decoded[Cancellation](ctx, c, Call{Method: http.MethodDelete, Path: agentPath(agentID)})
}

// WaitForCompletion polls the agent until it ends and returns its Result. timeoutSeconds
// limits the wait (<= 0: only ctx does); when it runs out the error is a *WaitTimeoutError.
// An agent that failed or was cancelled returns its Result AND an *AgentError, so that
// `if err != nil` never passes a failure off as an empty output.
func (c *Client) WaitForCompletion(ctx context.Context, agentID string, timeoutSeconds int) (*Result, error) {
	limit := time.Duration(timeoutSeconds) * time.Second
	waitCtx := ctx
	if limit > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	last := ""
	for {
		status, err := c.GetAgent(waitCtx, agentID)
		if err == nil {
			if status.Terminal() {
				return finished(status)
			}
			last = status.Status
			err = sleep(waitCtx, c.pollInterval)
		}
		if err != nil {
			if ctx.Err() == nil && waitCtx.Err() != nil {
				return nil, &WaitTimeoutError{AgentID: agentID, Status: last, Timeout: limit}
			}
			return nil, err
		}
	}
}

func finished(s *AgentStatus) (*Result, error) {
	r := &Result{AgentID: s.ID, Status: s.Status, Output: s.Result, Error: s.Error, Agent: s}
	if s.Cost != nil {
		r.Cost = *s.Cost
	}
	if s.Status != StatusCompleted {
		return r, &AgentError{AgentID: s.ID, Status: s.Status, Reason: s.Error}
	}
	return r, nil
}

func agentPath(id string) string { return "/agent/" + pathEscape(id) }

// pathEscape makes an id one path segment (a "/" or "?" in it cannot reach another route).
func pathEscape(id string) string { return url.PathEscape(id) }
