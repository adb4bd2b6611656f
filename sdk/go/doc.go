// Package j1msky is the Go client of the J1MSKY daemon's HTTP API (j1mskyd).
//
//	client := j1msky.NewClient("http://raspberrypi.local:8080", os.Getenv("J1MSKY_KEY"))
//	agent, err := client.Spawn(ctx, j1msky.SpawnRequest{Model: "k2p5", Task: "Write a Go function"})
//	...
//	result, err := client.WaitForCompletion(ctx, agent.ID, 300)
//	fmt.Println(result.Output, result.Cost)
//
// It needs only the standard library. Every call takes a context and stops when it is
// cancelled, between retries as well as during a request.
//
// Retries: a 429, 500, 502, 503 or 504 answer, or a failed connection, is retried up to
// MaxRetries times (default 3) after an exponential backoff with full jitter (base
// RetryDelay, default 500 ms, capped at 30 s); a Retry-After header is a floor for the
// wait. Every POST and PUT carries one Idempotency-Key, kept by all its retries, which the
// daemon honours: a retried spawn never runs twice.
//
// Signing: with WithAPISecret every request carries X-Timestamp (unix seconds with
// nanoseconds, so that a retry is never refused as a replay of the attempt before it) and
// X-Signature = hex(HMAC-SHA256(secret, timestamp + "\n" + METHOD + "\n" + path + "\n" + body)),
// the way the daemon checks it.
//
// Errors: an answer of the daemon's error envelope is an *APIError (Status, Type, Message,
// RequestID, Details); a 429 is a *RateLimitError (RetryAfter), which errors.As also
// finds as an *APIError. A waited-for agent that failed or was cancelled is an *AgentError
// (its Result is returned too), and a wait that ran out of time a *WaitTimeoutError.
package j1msky
