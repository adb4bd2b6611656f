package j1msky

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// FieldError is one broken rule of a VALIDATION_ERROR: the field and what is wrong with it.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// APIError is an answer of the daemon's error envelope,
// {"success": false, "error": {"code", "type", "message", "request_id", "details", ...}}.
type APIError struct {
	Status    int          // the HTTP status
	Type      string       // e.g. VALIDATION_ERROR, NOT_FOUND, CONFLICT; "" when the body was not the envelope
	Message   string       // the daemon's words, or "HTTP <status>" when the body had none
	RequestID string       // the daemon's request id (X-Request-Id), for its logs
	Details   []FieldError // one entry per broken rule (VALIDATION_ERROR)
	// Raw is the envelope's "error" object as sent, for its other fields (e.g. a CONFLICT's
	// "status", a FORBIDDEN's "required_scope"); nil when the body was not the envelope.
	Raw json.RawMessage
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("j1msky: ")
	if e.Type != "" {
		b.WriteString(e.Type + ": ")
	}
	b.WriteString(e.Message)
	fmt.Fprintf(&b, " (HTTP %d", e.Status)
	if e.RequestID != "" {
		b.WriteString(", request " + e.RequestID)
	}
	b.WriteString(")")
	return b.String()
}

// RateLimitError is a 429 answer (RATE_LIMITED). errors.As finds it as an *APIError too.
type RateLimitError struct {
	APIError
	RetryAfter time.Duration // how long the daemon asked to wait (Retry-After); 0 when it did not say
}

// Unwrap lets errors.As(err, &apiErr) see the APIError inside.
func (e *RateLimitError) Unwrap() error { return &e.APIError }

func (e *RateLimitError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("%s; retry after %s", e.APIError.Error(), e.RetryAfter)
	}
	return e.APIError.Error()
}

// AgentError is a waited-for agent that ended without completing (failed or cancelled).
type AgentError struct {
	AgentID string
	Status  string // "failed" or "cancelled"
	Reason  string // the agent's "error" field: why it failed or was cancelled
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("j1msky: agent %s %s: %s", e.AgentID, e.Status, e.Reason)
}

// WaitTimeoutError is a WaitForCompletion whose own time limit ran out while the agent was
// still live.
type WaitTimeoutError struct {
	AgentID string
	Status  string // the agent's last status seen
	Timeout time.Duration
}

func (e *WaitTimeoutError) Error() string {
	return fmt.Sprintf("j1msky: agent %s still %s after %s", e.AgentID, e.Status, e.Timeout)
}

// envelope is the daemon's error body.
type envelope struct {
	Error json.RawMessage `json:"error"`
}

type errorBody struct {
	Type       string          `json:"type"`
	Message    string          `json:"message"`
	RequestID  string          `json:"request_id"`
	Details    json.RawMessage `json:"details"`
	RetryAfter *float64        `json:"retry_after"`
}

// parseError turns a non-2xx answer into an *APIError or *RateLimitError; a body that is not
// the envelope (a proxy's HTML page, a truncated body) still gives one, from the status and
// the X-Request-Id header.
func parseError(status int, header http.Header, body []byte) error {
	e := APIError{Status: status, Message: fmt.Sprintf("HTTP %d", status), RequestID: header.Get("X-Request-Id")}
	var retryAfter *float64
	var env envelope
	if json.Unmarshal(body, &env) == nil && len(env.Error) > 0 {
		var eb errorBody
		var text string
		if json.Unmarshal(env.Error, &eb) == nil {
			e.Raw = env.Error
			e.Type = eb.Type
			if eb.Message != "" {
				e.Message = eb.Message
			}
			if eb.RequestID != "" {
				e.RequestID = eb.RequestID
			}
			// details is a list of {field, message} for validation; other shapes are left in Raw.
			_ = json.Unmarshal(eb.Details, &e.Details)
			retryAfter = eb.RetryAfter
		} else if json.Unmarshal(env.Error, &text) == nil && text != "" {
			e.Message = text
		}
	}
	if status != http.StatusTooManyRequests {
		return &e
	}
	rl := &RateLimitError{APIError: e}
	if d, ok := parseRetryAfter(header.Get("Retry-After"), time.Now()); ok {
		rl.RetryAfter = d
	} else if retryAfter != nil && *retryAfter > 0 {
		rl.RetryAfter = seconds(*retryAfter)
	}
	return rl
}

// parseRetryAfter reads Retry-After as seconds or as an HTTP date (RFC 9110).
func parseRetryAfter(value string, now time.Time) (time.Duration, bool) {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0, false
	}
	if s, err := strconv.ParseFloat(value, 64); err == nil {
		if s < 0 || s != s || s > 1e9 {
			return 0, false
		}
		return seconds(s), true
	}
	if t, err := http.ParseTime(value); err == nil {
		if d := t.Sub(now); d > 0 {
			return d, true
		}
		return 0, true
	}
	return 0, false
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
