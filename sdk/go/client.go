package j1msky

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Version is this SDK's version, sent in the User-Agent header.
const Version = "0.1.0"

const (
	defaultTimeout    = 30 * time.Second
	defaultMaxRetries = 3
	defaultRetryDelay = 500 * time.Millisecond
	maxRetryDelay     = 30 * time.Second
	defaultPoll       = time.Second
	maxResponseBytes  = 16 << 20 // an answer larger than this is not the daemon's
)

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	baseURL      string // ends in /api or /api/v1, no trailing slash
	pathPrefix   string // baseURL's path: signed paths start with it
	apiKey       string
	apiSecret    string
	httpClient   *http.Client
	timeout      time.Duration
	maxRetries   int
	retryDelay   time.Duration
	pollInterval time.Duration
	userAgent    string

	mu  sync.Mutex
	rng *mrand.Rand // the backoff's jitter
}

// Option changes a Client made by NewClient.
type Option func(*Client)

// WithHTTPClient sends the requests with hc (its transport, proxy, TLS settings) instead of
// http.DefaultClient.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.httpClient = hc } }

// WithTimeout limits each attempt of a request (default 30 s); 0 means no limit beyond the context's.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithMaxRetries sets how many times a request is retried after a retryable failure (default 3; 0: never).
func WithMaxRetries(n int) Option {
	return func(c *Client) {
		if n >= 0 {
			c.maxRetries = n
		}
	}
}

// WithRetryDelay sets the backoff's base delay (default 500 ms): retry n waits a random time
// up to RetryDelay * 2^(n-1), capped at 30 s, and never less than the daemon's Retry-After.
func WithRetryDelay(d time.Duration) Option {
	return func(c *Client) {
		if d >= 0 {
			c.retryDelay = d
		}
	}
}

// WithAPISecret signs every request with the key's signing secret (X-Timestamp, X-Signature);
// needed for a key made with require_signature.
func WithAPISecret(secret string) Option { return func(c *Client) { c.apiSecret = secret } }

// WithPollInterval sets how often WaitForCompletion asks for the agent's status (default 1 s).
func WithPollInterval(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.pollInterval = d
		}
	}
}

// WithUserAgent replaces the User-Agent header (default "j1msky-sdk-go/<Version>").
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// NewClient returns a client of the daemon at baseURL ("http://pi.local:8080", with or
// without "/api" or "/api/v1"), authenticating with apiKey (a "jsk_..." token; "" sends no
// key, which a daemon serves only to loopback callers its [security] local_scopes allow).
func NewClient(baseURL, apiKey string, opts ...Option) *Client {
	c := &Client{
		baseURL:      apiBase(baseURL),
		apiKey:       apiKey,
		httpClient:   http.DefaultClient,
		timeout:      defaultTimeout,
		maxRetries:   defaultMaxRetries,
		retryDelay:   defaultRetryDelay,
		pollInterval: defaultPoll,
		userAgent:    "j1msky-sdk-go/" + Version,
		rng:          mrand.New(mrand.NewSource(time.Now().UnixNano())),
	}
	for _, opt := range opts {
		opt(c)
	}
	if u, err := url.Parse(c.baseURL); err == nil {
		c.pathPrefix = u.EscapedPath()
	}
	return c
}

// BaseURL is the API's root this client sends to, ending in /api (or /api/v1).
func (c *Client) BaseURL() string { return c.baseURL }

func apiBase(base string) string {
	base = strings.TrimRight(strings.TrimSpace(base), "/")
	if strings.HasSuffix(base, "/api") || strings.HasSuffix(base, "/api/v1") {
		return base
	}
	return base + "/api"
}

// Call is one request for Do: Path is relative to the API root ("/agents"); Body, when not
// nil, is sent as JSON; a POST or PUT gets a fresh Idempotency-Key unless one is given.
type Call struct {
	Method         string
	Path           string
	Query          url.Values
	Body           any
	IdempotencyKey string
}

// Do sends a request to any route of the API (those without a method of their own here) with
// the client's key, signing and retries, and decodes a 2xx answer's JSON into out (unless out
// is nil).
func (c *Client) Do(ctx context.Context, call Call, out any) error {
	var body []byte
	if call.Body != nil {
		var err error
		if body, err = json.Marshal(call.Body); err != nil {
			return fmt.Errorf("j1msky: encoding the body of %s %s: %w", call.Method, call.Path, err)
		}
	}
	method := strings.ToUpper(call.Method)
	key := call.IdempotencyKey
	if key == "" && (method == http.MethodPost || method == http.MethodPut) {
		key = newIdempotencyKey()
	}
	path := call.Path
	if q := call.Query.Encode(); q != "" {
		path += "?" + q
	}
	for attempt := 0; ; attempt++ {
		raw, err := c.attempt(ctx, method, path, body, key)
		if err == nil {
			if out == nil {
				return nil
			}
			if len(bytes.TrimSpace(raw)) == 0 {
				// Not the daemon's (it always answers JSON): never a zero-valued Agent.
				return fmt.Errorf("j1msky: %s %s: empty answer", method, call.Path)
			}
			if err := json.Unmarshal(raw, out); err != nil {
				return fmt.Errorf("j1msky: decoding the answer to %s %s: %w", method, call.Path, err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("j1msky: %s %s: %w", method, call.Path, ctx.Err())
		}
		if !retryable(err) || attempt >= c.maxRetries {
			return err
		}
		if err := sleep(ctx, c.backoff(attempt+1, err)); err != nil {
			return fmt.Errorf("j1msky: %s %s: waiting to retry: %w", method, call.Path, err)
		}
	}
}

// decoded is Do for the methods that return the answer as a T.
func decoded[T any](ctx context.Context, c *Client, call Call) (*T, error) {
	var v T
	if err := c.Do(ctx, call, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// attempt sends the request once: the body of a 2xx answer, or the error.
func (c *Client) attempt(ctx context.Context, method, path string, body []byte, idemKey string) ([]byte, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, reader)
	if err != nil {
		return nil, fmt.Errorf("j1msky: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	if c.apiSecret != "" {
		// Nanoseconds: two attempts of one request never share a timestamp, so never a
		// signature, which the daemon would refuse as a replay.
		now := time.Now()
		ts := fmt.Sprintf("%d.%09d", now.Unix(), now.Nanosecond())
		req.Header.Set("X-Timestamp", ts)
		req.Header.Set("X-Signature", Sign(c.apiSecret, ts, method, c.pathPrefix+path, string(body)))
	}
	resp, err := c.httpClient.Do(req)
	if err != nil {
		return nil, &transportError{err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, &transportError{err: err}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return raw, nil
	}
	return nil, parseError(resp.StatusCode, resp.Header, raw)
}

// transportError is a request that got no answer (connection refused or reset, an attempt's
// timeout): retried like a 5xx.
type transportError struct{ err error }

func (e *transportError) Error() string { return "j1msky: " + e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

func retryable(err error) bool {
	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.Status {
		case 429, 500, 502, 503, 504:
			return true
		}
	}
	return false
}

// backoff is the wait before retry n (1 for the first): full jitter up to
// RetryDelay * 2^(n-1), capped at 30 s; a Retry-After is a floor (capped the same way),
// since waiting less would only earn another 429. The daemon's runtime paces its own
// retries the same way (j1mskyd/backoff.py).
func (c *Client) backoff(n int, err error) time.Duration {
	ceiling := c.retryDelay
	for i := 1; i < n && ceiling < maxRetryDelay; i++ {
		ceiling *= 2
	}
	if ceiling > maxRetryDelay {
		ceiling = maxRetryDelay
	}
	var delay time.Duration
	if ceiling > 0 {
		c.mu.Lock()
		delay = time.Duration(c.rng.Int63n(int64(ceiling) + 1))
		c.mu.Unlock()
	}
	var rl *RateLimitError
	if errors.As(err, &rl) {
		floor := rl.RetryAfter
		if floor > maxRetryDelay {
			floor = maxRetryDelay
		}
		if delay < floor {
			delay = floor
		}
	}
	return delay
}

// sleep waits d or until ctx ends (its error then).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newIdempotencyKey is a random UUID (version 4).
func newIdempotencyKey() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on the systems Go supports; a time-based key still
		// keeps one logical request's retries together.
		return fmt.Sprintf("go-%d", time.Now().UnixNano())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
