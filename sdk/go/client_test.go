package j1msky

// Unit tests of the client's error paths against httptest servers on loopback: retries,
// Retry-After, typed errors, broken answers, context cancellation, signing headers.
// integration_test.go runs the same client against a real daemon.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// seen is one request as the test server got it.
type seen struct {
	Method, Path, RawPath, Query string
	Header                       http.Header
	Body                         string
	At                           time.Time
}

// scripted is a test server that answers its requests in turn with the handlers given (the
// last one repeats) and records what it got.
type scripted struct {
	*httptest.Server
	mu   sync.Mutex
	got  []seen
	next []http.HandlerFunc
}

func newScripted(t *testing.T, handlers ...http.HandlerFunc) *scripted {
	t.Helper()
	s := &scripted{next: handlers}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got = append(s.got, seen{r.Method, r.URL.Path, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Clone(),
			string(body), time.Now()})
		i := len(s.got) - 1
		if i >= len(s.next) {
			i = len(s.next) - 1
		}
		h := s.next[i]
		s.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *scripted) requests() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seen(nil), s.got...)
}

func reply(status int, body string, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// envelope writes the daemon's error envelope.
func envelopeReply(status int, typ, message, requestID string, headers ...string) http.HandlerFunc {
	body, _ := json.Marshal(map[string]any{"success": false, "error": map[string]any{
		"code": status, "type": typ, "message": message, "request_id": requestID}})
	return reply(status, string(body), headers...)
}

// The daemon's own answers (captured from a running daemon on the offline provider).
const (
	spawnAnswer   = `{"success":true,"agent_id":"subagent_1796563912_4080","model":"k2p5","status":"spawning","estimated_cost":0.0012005}`
	runningAnswer = `{"agent_id":"subagent_1796563912_4080","model":"k2p5","status":"running","result":null,"cost":null}`
	doneAnswer    = `{"agent_id":"subagent_1796563912_4080","model":"k2p5","status":"completed","task":"x","created":"2026-12-06T13:31:52Z","started":"2026-12-06T13:31:52Z","completed":"2026-12-06T13:31:52Z","result":"[offline:k2p5] x (id 7e1907634c2c)","cost":1.4e-05,"estimated_cost":0.0012005,"priority":"normal","timeout":300.0,"team":null,"error":null,"served_by":{"model":"k2p5","provider":"offline"},"usage":{"input_tokens":1,"output_tokens":9},"attempts":1,"api_key":"key_924bda6b91186f06","project_id":null}`
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// fast is a client whose retries wait at most a few milliseconds (unless Retry-After says otherwise).
func fast(s *scripted, opts ...Option) *Client {
	return NewClient(s.URL, "jsk_test", append([]Option{WithRetryDelay(time.Millisecond)}, opts...)...)
}

func TestBaseURLWithOrWithoutAPI(t *testing.T) {
	for _, suffix := range []string{"", "/", "/api", "/api/", "/api/v1"} {
		s := newScripted(t, reply(200, spawnAnswer))
		if _, err := NewClient(s.URL+suffix, "k").Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"}); err != nil {
			t.Fatalf("%q: %v", suffix, err)
		}
		want := "/api/spawn"
		if suffix == "/api/v1" {
			want = "/api/v1/spawn"
		}
		if got := s.requests()[0].Path; got != want {
			t.Errorf("base %q: path %q, want %q", suffix, got, want)
		}
	}
}

func TestSpawnSendsTheDaemonsFieldsAndKey(t *testing.T) {
	s := newScripted(t, reply(200, spawnAnswer))
	agent, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "Write a Go function",
		Priority: PriorityHigh, Timeout: 60, WebhookURL: "https://example.invalid/h"})
	if err != nil {
		t.Fatal(err)
	}
	if agent.ID != "subagent_1796563912_4080" || agent.Status != "spawning" || agent.EstimatedCost != 0.0012005 {
		t.Errorf("agent decoded as %+v", agent)
	}
	r := s.requests()[0]
	var body map[string]any
	if err := json.Unmarshal([]byte(r.Body), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"model": "k2p5", "task": "Write a Go function", "priority": "high", "timeout": 60.0,
		"webhook_url": "https://example.invalid/h"}
	if len(body) != len(want) {
		t.Errorf("body %v, want %v", body, want)
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("body[%q] = %v, want %v", k, body[k], v)
		}
	}
	if r.Method != "POST" || r.Header.Get("Authorization") != "Bearer jsk_test" ||
		r.Header.Get("Content-Type") != "application/json" || !uuidV4.MatchString(r.Header.Get("Idempotency-Key")) {
		t.Errorf("request %s with headers %v", r.Method, r.Header)
	}
	if r.Header.Get("X-Signature") != "" {
		t.Error("signed without a secret")
	}
}

func TestNoKeySendsNoAuthorization(t *testing.T) {
	s := newScripted(t, reply(200, doneAnswer))
	if _, err := NewClient(s.URL, "").GetAgent(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if h := s.requests()[0].Header; h.Get("Authorization") != "" || h.Get("Idempotency-Key") != "" {
		t.Errorf("GET without a key sent %v", h)
	}
}

func TestServerErrorsAreRetriedWithOneIdempotencyKey(t *testing.T) {
	s := newScripted(t, envelopeReply(503, "INTERNAL_ERROR", "busy", "req_1"), reply(502, "<html>bad gateway</html>"),
		reply(200, spawnAnswer))
	agent, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if agent.ID != "subagent_1796563912_4080" {
		t.Errorf("agent %+v", agent)
	}
	got := s.requests()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3", len(got))
	}
	key := got[0].Header.Get("Idempotency-Key")
	for i, r := range got {
		if r.Header.Get("Idempotency-Key") != key || r.Body != got[0].Body {
			t.Errorf("attempt %d: key %q body %q; first: key %q body %q", i, r.Header.Get("Idempotency-Key"), r.Body,
				key, got[0].Body)
		}
	}
	// A second spawn is another logical request: another key.
	if _, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"}); err != nil {
		t.Fatal(err)
	}
	if s.requests()[3].Header.Get("Idempotency-Key") == key {
		t.Error("two spawns shared an Idempotency-Key")
	}
}

func TestGivenIdempotencyKeyIsSent(t *testing.T) {
	s := newScripted(t, reply(200, spawnAnswer))
	if _, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t", IdempotencyKey: "order-42"}); err != nil {
		t.Fatal(err)
	}
	r := s.requests()[0]
	if r.Header.Get("Idempotency-Key") != "order-42" || strings.Contains(r.Body, "order-42") {
		t.Errorf("key header %q, body %s", r.Header.Get("Idempotency-Key"), r.Body)
	}
}

func TestRetriesEndWithTheLastError(t *testing.T) {
	s := newScripted(t, envelopeReply(500, "INTERNAL_ERROR", "database could not commit", "req_9"))
	_, err := fast(s, WithMaxRetries(2)).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error %T %v, want *APIError", err, err)
	}
	if apiErr.Status != 500 || apiErr.Type != "INTERNAL_ERROR" || apiErr.Message != "database could not commit" ||
		apiErr.RequestID != "req_9" {
		t.Errorf("APIError %+v", apiErr)
	}
	if n := len(s.requests()); n != 3 {
		t.Errorf("%d attempts, want 1 + 2 retries", n)
	}
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	body := `{"success":false,"error":{"code":400,"type":"VALIDATION_ERROR","message":"Task cannot be empty",` +
		`"request_id":"req_3a","details":[{"field":"task","message":"Task cannot be empty"},` +
		`{"field":"priority","message":"Priority must be one of: low, normal, high"}]}}`
	s := newScripted(t, reply(400, body))
	_, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "", Priority: "urgent"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Type != "VALIDATION_ERROR" || len(apiErr.Details) != 2 ||
		apiErr.Details[1] != (FieldError{"priority", "Priority must be one of: low, normal, high"}) {
		t.Fatalf("error %#v", err)
	}
	var rl *RateLimitError
	if errors.As(err, &rl) {
		t.Error("a 400 is not a RateLimitError")
	}
	if n := len(s.requests()); n != 1 {
		t.Errorf("a 400 was sent %d times", n)
	}
	if !strings.Contains(err.Error(), "Task cannot be empty") || !strings.Contains(err.Error(), "req_3a") {
		t.Errorf("message %q", err.Error())
	}
}

func TestRetryAfterIsWaitedFor(t *testing.T) {
	s := newScripted(t, envelopeReply(429, "RATE_LIMITED", "Rate limit exceeded", "req_r", "Retry-After", "1"),
		reply(200, spawnAnswer))
	if _, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"}); err != nil {
		t.Fatal(err)
	}
	got := s.requests()
	if len(got) != 2 {
		t.Fatalf("%d attempts, want 2", len(got))
	}
	// A lower bound only: the retry may come later on a busy machine, never sooner.
	if gap := got[1].At.Sub(got[0].At); gap < time.Second {
		t.Errorf("retried %v after a Retry-After of 1 s", gap)
	}
	if got[0].Header.Get("Idempotency-Key") != got[1].Header.Get("Idempotency-Key") {
		t.Error("the retry changed the Idempotency-Key")
	}
}

func TestRateLimitErrorCarriesRetryAfter(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    time.Duration
	}{
		{"header seconds", envelopeReply(429, "RATE_LIMITED", "slow down", "req_a", "Retry-After", "7"), 7 * time.Second},
		{"envelope field", reply(429, `{"success":false,"error":{"code":429,"type":"RATE_LIMITED","message":"m","request_id":"req_a","retry_after":2.5}}`), 2500 * time.Millisecond},
		{"no hint", envelopeReply(429, "RATE_LIMITED", "m", "req_a"), 0},
	}
	for _, tc := range cases {
		s := newScripted(t, tc.handler)
		_, err := fast(s, WithMaxRetries(0)).GetAgent(context.Background(), "a")
		var rl *RateLimitError
		if !errors.As(err, &rl) {
			t.Fatalf("%s: error %T %v", tc.name, err, err)
		}
		if rl.RetryAfter != tc.want {
			t.Errorf("%s: RetryAfter %v, want %v", tc.name, rl.RetryAfter, tc.want)
		}
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.Status != 429 || apiErr.Type != "RATE_LIMITED" || apiErr.RequestID != "req_a" {
			t.Errorf("%s: as APIError: %+v", tc.name, apiErr)
		}
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	d, ok := parseRetryAfter("Sun, 06 Dec 2026 12:00:09 GMT", now)
	if !ok || d != 9*time.Second {
		t.Errorf("HTTP date: %v %v", d, ok)
	}
	for _, bad := range []string{"", "soon", "-1", "NaN", "Inf"} {
		if _, ok := parseRetryAfter(bad, now); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestBackoffFloorAndCap(t *testing.T) {
	c := NewClient("http://127.0.0.1:1", "", WithRetryDelay(10*time.Millisecond))
	rl := &RateLimitError{APIError: APIError{Status: 429}, RetryAfter: 2 * time.Second}
	huge := &RateLimitError{APIError: APIError{Status: 429}, RetryAfter: time.Hour}
	server := &APIError{Status: 503}
	none := NewClient("http://127.0.0.1:1", "", WithRetryDelay(0))
	for i := 0; i < 50; i++ {
		if d := c.backoff(1, rl); d != 2*time.Second {
			t.Fatalf("Retry-After 2 s: waited %v", d)
		}
		if d := c.backoff(1, huge); d != maxRetryDelay {
			t.Fatalf("Retry-After 1 h: waited %v, want the 30 s cap", d)
		}
		if d := c.backoff(3, server); d < 0 || d > 40*time.Millisecond {
			t.Fatalf("retry 3 of base 10 ms: waited %v", d)
		}
		if d := c.backoff(40, server); d < 0 || d > maxRetryDelay {
			t.Fatalf("retry 40: waited %v", d)
		}
		if d := none.backoff(5, server); d != 0 {
			t.Fatalf("RetryDelay 0: waited %v", d)
		}
	}
}

func TestBrokenAnswers(t *testing.T) {
	s := newScripted(t, reply(200, `{"agent_id": "a", "status": `))
	_, err := fast(s).GetAgent(context.Background(), "a")
	var syntax *json.SyntaxError
	var apiErr *APIError
	if !errors.As(err, &syntax) || errors.As(err, &apiErr) {
		t.Errorf("truncated JSON: %T %v", err, err)
	}
	if n := len(s.requests()); n != 1 {
		t.Errorf("a 200 with broken JSON was sent %d times", n)
	}

	// An error answer that is not the envelope (a proxy's page) is still an APIError.
	s = newScripted(t, reply(404, "<html>not here</html>", "X-Request-Id", "req_proxy"))
	_, err = fast(s).GetAgent(context.Background(), "a")
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Message != "HTTP 404" || apiErr.RequestID != "req_proxy" ||
		apiErr.Type != "" || apiErr.Raw != nil {
		t.Errorf("HTML 404: %#v", err)
	}

	// An empty 200 is not an agent with no id.
	s = newScripted(t, reply(200, ""))
	if agent, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"}); err == nil ||
		!strings.Contains(err.Error(), "empty answer") {
		t.Errorf("empty 200: %+v %v", agent, err)
	}

	// The wrong JSON type for a field is a decoding error, not a silent zero.
	s = newScripted(t, reply(200, `{"agent_id": 12}`))
	_, err = fast(s).GetAgent(context.Background(), "a")
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) {
		t.Errorf("agent_id 12: %T %v", err, err)
	}
}

func TestConnectionFailuresAreRetried(t *testing.T) {
	drop := func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}
	s := newScripted(t, drop, drop, reply(200, spawnAnswer))
	if _, err := fast(s).Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"}); err != nil {
		t.Fatal(err)
	}
	if n := len(s.requests()); n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}

	s = newScripted(t, drop)
	_, err := fast(s, WithMaxRetries(1)).GetAgent(context.Background(), "a")
	var apiErr *APIError
	if err == nil || errors.As(err, &apiErr) {
		t.Errorf("dropped connections: %T %v", err, err)
	}
	if n := len(s.requests()); n != 2 {
		t.Errorf("%d attempts, want 2", n)
	}
}

func TestAnAttemptsTimeoutIsRetried(t *testing.T) {
	hang := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	s := newScripted(t, hang, reply(200, doneAnswer))
	status, err := fast(s, WithTimeout(200*time.Millisecond)).GetAgent(context.Background(), "a")
	if err != nil || status.Status != "completed" {
		t.Fatalf("%v %v", status, err)
	}
}

// cancelOnceArrived runs call with a context it cancels shortly after the server got a
// request (arrived), and returns call's error; it fails the test when either takes over 20 s.
// The short pause lets a client that got its answer reach its wait (a retry's backoff, a poll
// interval), so that the cancel is seen there; the result is the same without it.
func cancelOnceArrived(t *testing.T, arrived <-chan struct{}, call func(context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the server never got the request")
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("the call did not return after its context was cancelled")
	}
	return nil
}

func TestCancelDuringARequest(t *testing.T) {
	arrived := make(chan struct{}, 8)
	s := newScripted(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	err := cancelOnceArrived(t, arrived, func(ctx context.Context) error {
		_, err := fast(s).Spawn(ctx, SpawnRequest{Model: "k2p5", Task: "t"})
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if n := len(s.requests()); n != 1 {
		t.Errorf("%d attempts after a cancel, want 1", n)
	}
}

func TestCancelWhileWaitingToRetry(t *testing.T) {
	arrived := make(chan struct{}, 8)
	s := newScripted(t, func(w http.ResponseWriter, r *http.Request) {
		// Retry-After is a floor: the client would wait the 30 s cap before its retry.
		envelopeReply(429, "RATE_LIMITED", "slow down", "req_b", "Retry-After", "3600")(w, r)
		arrived <- struct{}{}
	})
	err := cancelOnceArrived(t, arrived, func(ctx context.Context) error {
		_, err := fast(s).GetAgent(ctx, "a")
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if n := len(s.requests()); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

func TestSleepStopsWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- sleep(ctx, time.Hour) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("sleep returned %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sleep ignored its context")
	}
}

func TestSignature(t *testing.T) {
	// Values from the daemon's own j1mskyd.signing.sign.
	if got := Sign("s3cret", "1796563912.123456789", "POST", "/api/spawn", `{"model":"k2p5","task":"t"}`); got != "7031934bb528d504f85ddf05b4b3a7193d9019b3af7d65d5e5f57525ea45666a" {
		t.Errorf("POST signature %s", got)
	}
	if got := Sign("s3cret", "1796563912", "get", "/api/agents?limit=1", ""); got != "62979146bd56387ea7de6889e037effc694a7c9795937df33f63a0800d30ca7e" {
		t.Errorf("GET signature %s", got)
	}
}

func TestSignedRequestsAndRetries(t *testing.T) {
	s := newScripted(t, envelopeReply(503, "INTERNAL_ERROR", "busy", "req_s"), reply(200, spawnAnswer))
	c := NewClient(s.URL+"/api/v1/", "jsk_k", WithAPISecret("s3cret"), WithRetryDelay(0))
	if _, err := c.Spawn(context.Background(), SpawnRequest{Model: "k2p5", Task: "t"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(context.Background(), Call{Method: "GET", Path: "/agents", Query: map[string][]string{"limit": {"1"}}}, nil); err != nil {
		t.Fatal(err)
	}
	got := s.requests()
	stamp := regexp.MustCompile(`^[0-9]{10}\.[0-9]{9}$`)
	for i, r := range got {
		ts := r.Header.Get("X-Timestamp")
		path := r.RawPath
		if r.Query != "" {
			path += "?" + r.Query
		}
		if !stamp.MatchString(ts) || r.Header.Get("X-Signature") != Sign("s3cret", ts, r.Method, path, r.Body) {
			t.Errorf("request %d (%s %s): X-Timestamp %q X-Signature %q", i, r.Method, path, ts, r.Header.Get("X-Signature"))
		}
	}
	if got[2].RawPath != "/api/v1/agents" || got[2].Query != "limit=1" {
		t.Errorf("GET went to %s?%s", got[2].RawPath, got[2].Query)
	}
	// The retry is signed afresh: the daemon refuses a signature it has seen (a replay).
	if got[0].Header.Get("X-Signature") == got[1].Header.Get("X-Signature") {
		t.Error("the retry resent the first attempt's signature")
	}
}

func TestAgentIDIsOnePathSegment(t *testing.T) {
	s := newScripted(t, envelopeReply(404, "NOT_FOUND", "Agent 'x' not found", "req_n"))
	_, err := fast(s).GetAgent(context.Background(), "../keys?x=1")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Type != "NOT_FOUND" {
		t.Fatalf("%#v", err)
	}
	if r := s.requests()[0]; r.RawPath != "/api/agent/..%2Fkeys%3Fx=1" || r.Query != "" {
		t.Errorf("went to %s ? %s", r.RawPath, r.Query)
	}
}

func TestWaitForCompletion(t *testing.T) {
	s := newScripted(t, reply(200, runningAnswer), reply(200, runningAnswer), reply(200, doneAnswer))
	c := fast(s, WithPollInterval(time.Millisecond))
	result, err := c.WaitForCompletion(context.Background(), "subagent_1796563912_4080", 30)
	if err != nil {
		t.Fatal(err)
	}
	if result.Output != "[offline:k2p5] x (id 7e1907634c2c)" || result.Cost != 1.4e-05 || result.Status != "completed" ||
		result.Agent.Usage.OutputTokens != 9 || result.Agent.ServedBy.Provider != "offline" {
		t.Errorf("result %+v", result)
	}
	if n := len(s.requests()); n != 3 {
		t.Errorf("%d polls, want 3", n)
	}
}

func TestWaitForAFailedAgent(t *testing.T) {
	s := newScripted(t, reply(200, `{"agent_id":"a1","status":"failed","result":null,"cost":null,"error":"all providers failed: offline: boom"}`))
	result, err := fast(s).WaitForCompletion(context.Background(), "a1", 30)
	var agentErr *AgentError
	if !errors.As(err, &agentErr) || agentErr.Status != "failed" || agentErr.Reason != "all providers failed: offline: boom" {
		t.Fatalf("error %#v", err)
	}
	if result == nil || result.Status != "failed" || result.Cost != 0 || result.Output != "" {
		t.Errorf("result %+v", result)
	}
}

func TestWaitRunsOutOfTime(t *testing.T) {
	s := newScripted(t, reply(200, runningAnswer))
	_, err := fast(s, WithPollInterval(10*time.Millisecond)).WaitForCompletion(context.Background(), "a", 1)
	var timeout *WaitTimeoutError
	if !errors.As(err, &timeout) || timeout.Status != "running" || timeout.Timeout != time.Second {
		t.Fatalf("error %#v", err)
	}
}

func TestWaitStopsWhenItsContextEnds(t *testing.T) {
	arrived := make(chan struct{}, 1000)
	s := newScripted(t, func(w http.ResponseWriter, r *http.Request) {
		reply(200, runningAnswer)(w, r)
		arrived <- struct{}{}
	})
	err := cancelOnceArrived(t, arrived, func(ctx context.Context) error {
		_, err := fast(s, WithPollInterval(time.Hour)).WaitForCompletion(ctx, "a", 0)
		return err
	})
	var timeout *WaitTimeoutError
	if !errors.Is(err, context.Canceled) || errors.As(err, &timeout) {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

func TestOtherCallsDecodeTheDaemonsAnswers(t *testing.T) {
	ctx := context.Background()
	team := `{"success":true,"agent_id":"subagent_1796563912_4082","team":"team_coding","models":["offline/k2p5","offline/claude-sonnet-4-6"],"status":"spawning","estimated_cost":0.0132035,"team_status":"active","members":["subagent_1796563912_4083","subagent_1796563912_4084"]}`
	s := newScripted(t, reply(200, team))
	tm, err := fast(s).SpawnTeam(ctx, TeamRequest{Team: "team_coding", Task: "t"})
	if err != nil || tm.ID != "subagent_1796563912_4082" || len(tm.Members) != 2 || tm.TeamStatus != "active" {
		t.Errorf("team %+v %v", tm, err)
	}
	if r := s.requests()[0]; r.Path != "/api/spawn-team" || r.Body != `{"team":"team_coding","task":"t"}` {
		t.Errorf("team request %s %s", r.Path, r.Body)
	}

	s = newScripted(t, reply(200, `{"success":true,"message":"Agent cancelled","agent_id":"a","refund":0.001602}`))
	cancelled, err := fast(s).CancelAgent(ctx, "a")
	if err != nil || cancelled.Refund != 0.001602 || s.requests()[0].Method != "DELETE" {
		t.Errorf("cancel %+v %v", cancelled, err)
	}

	hook := `{"success":true,"data":{"id":"webhook_026fb84d6dde"},"id":"webhook_026fb84d6dde","webhook_id":"webhook_026fb84d6dde","url":"https://example.invalid/h","sink":"http","events":["agent.completed"],"status":"active","description":null,"agent_id":null,"created_at":"2026-12-06T13:31:52Z","last_triggered":null,"secret":"CnniJynQ"}`
	s = newScripted(t, reply(201, hook))
	paused := false
	wh, err := fast(s).RegisterWebhook(ctx, WebhookRequest{URL: "https://example.invalid/h", Events: []string{"agent.completed"}, Active: &paused})
	if err != nil || wh.ID != "webhook_026fb84d6dde" || wh.Secret != "CnniJynQ" || wh.Events[0] != "agent.completed" {
		t.Errorf("webhook %+v %v", wh, err)
	}
	if r := s.requests()[0]; r.Body != `{"url":"https://example.invalid/h","events":["agent.completed"],"active":false}` {
		t.Errorf("webhook body %s", r.Body)
	}

	quote := `{"success":true,"quote_id":"quote_8c7253c243e5","quote":{"model":"k2p5","complexity":"low","segment":"smb","estimated_input_tokens":1000,"estimated_output_tokens":500,"internal_cost":0.0013,"base_markup":3.0,"segment_adjustment":-0.5,"final_markup":2.5,"recommended_price":0.5,"gross_margin_pct":99.74,"margin_band":"strong"},"guardrail_check":{"delivery_type":"task","minimum_margin_pct":55.0,"actual_margin_pct":99.74,"is_compliant":true,"action":"approve_quote"}}`
	s = newScripted(t, reply(200, quote))
	q, err := fast(s).GetQuote(ctx, QuoteRequest{Model: "k2p5", Complexity: "low", Segment: "smb", EstimatedInputTokens: 1000, EstimatedOutputTokens: 500})
	if err != nil || q.QuoteID != "quote_8c7253c243e5" || q.InternalCost != 0.0013 || q.RecommendedPrice != 0.5 ||
		!q.GuardrailCheck.IsCompliant || q.MarginBand != "strong" {
		t.Errorf("quote %+v %v", q, err)
	}
	if r := s.requests()[0]; r.Body != `{"model":"k2p5","complexity":"low","segment":"smb","estimated_input":1000,"estimated_output":500}` {
		t.Errorf("quote body %s", r.Body)
	}
}

func TestVerifyWebhook(t *testing.T) {
	body := []byte(`{"event":"agent.completed","timestamp":"2026-11-25T16:30:12Z","data":{"agent_id":"a1","status":"completed"},"id":42}`)
	// The value the daemon's sink (j1mskyd/sinks.py) computes for this body and secret.
	sig := "sha256=98021b7e51ee2d0a3768985909899d7c2af28d1a259e32bfc98662944451416d"
	ev, err := VerifyWebhook("whsec_test", body, sig)
	if err != nil || ev.Event != "agent.completed" || ev.ID != 42 {
		t.Fatalf("%+v %v", ev, err)
	}
	var agent AgentStatus
	if err := json.Unmarshal(ev.Data, &agent); err != nil || agent.ID != "a1" {
		t.Errorf("data %s: %v", ev.Data, err)
	}
	tampered := append([]byte(nil), body...)
	tampered[len(tampered)-3] = '3'
	for name, tc := range map[string]struct {
		secret, sig string
		body        []byte
	}{
		"other secret": {"whsec_other", sig, body},
		"tampered":     {"whsec_test", sig, tampered},
		"no header":    {"whsec_test", "", body},
		"bare hex":     {"whsec_test", strings.TrimPrefix(sig, "sha256="), body},
	} {
		if _, err := VerifyWebhook(tc.secret, tc.body, tc.sig); !errors.Is(err, ErrBadWebhookSignature) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
