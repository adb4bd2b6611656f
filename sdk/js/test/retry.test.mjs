// Failure paths a real daemon cannot be made to produce on demand (429 with a given Retry-After,
// 5xx, bad JSON, silence, a closed port), against a scripted loopback server (servers.mjs), and the
// SDK's pure helpers.  The happy paths and the daemon's own refusals are in daemon.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { J1MSKYClient, J1MSKYError, RateLimitError, backoffDelay, parseRetryAfter, signRequest } from 'j1msky';
import { fakeApi, closedPort } from './servers.mjs';

const OK = { status: 200, body: { success: true, agent_id: 'subagent_1_1', status: 'spawning' } };
const fast = (url, more) => new J1MSKYClient({ baseUrl: url, apiKey: 'jsk_test', retryDelay: 1, ...more });

test('429 then 200: retried after Retry-After (a floor on the backoff), with the same Idempotency-Key', async () => {
  const api = await fakeApi([{ status: 429, headers: { 'Retry-After': '1' }, body: { success: false, error: { code: 429, type: 'RATE_LIMITED', message: 'slow down' } } }, OK]);
  try {
    const agent = await fast(api.url).spawn({ model: 'k2p5', task: 'x' });
    assert.equal(agent.id, 'subagent_1_1');
    assert.equal(api.seen.length, 2);
    const [first, second] = api.seen;
    assert.match(first.headers['idempotency-key'], /^[0-9a-f-]{36}$/);
    assert.equal(second.headers['idempotency-key'], first.headers['idempotency-key']);
    assert.equal(second.body, first.body);
    assert.equal(first.headers.authorization, 'Bearer jsk_test');
    assert.equal(first.url, '/api/spawn');
  } finally {
    await api.close();
  }
});

test('429 past maxRetries: RateLimitError with retryAfter (seconds), message, type and requestId from the envelope', async () => {
  const api = await fakeApi([{ status: 429, headers: { 'Retry-After': '0' }, body: { success: false, error: { code: 429, type: 'RATE_LIMITED', message: 'Rate limit exceeded', retry_after: 3600, request_id: 'req_abc123xyz' } } }]);
  try {
    const err = await fast(api.url, { maxRetries: 2 }).spawn({ model: 'k2p5', task: 'x' }).catch((e) => e);
    assert.ok(err instanceof RateLimitError, String(err));
    assert.ok(err instanceof J1MSKYError);
    assert.ok(err instanceof Error);
    assert.equal(err.retryAfter, 0, 'the Retry-After header wins over the body');
    assert.equal(err.status, 429);
    assert.equal(err.type, 'RATE_LIMITED');
    assert.equal(err.requestId, 'req_abc123xyz');
    assert.equal(err.message, 'Rate limit exceeded');
    assert.equal(api.seen.length, 3, 'one attempt and two retries');
  } finally {
    await api.close();
  }
});

test('429 with a Retry-After longer than maxRetryDelay: raised at once, for the caller to wait', async () => {
  const api = await fakeApi([{ status: 429, headers: { 'Retry-After': '3600' }, body: { error: { message: 'Rate limit exceeded' } } }, OK]);
  try {
    const err = await fast(api.url, { maxRetryDelay: 30000 }).spawn({ model: 'k2p5', task: 'x' }).catch((e) => e);
    assert.ok(err instanceof RateLimitError, String(err));
    assert.equal(err.retryAfter, 3600);
    assert.equal(api.seen.length, 1);
  } finally {
    await api.close();
  }
});

test("429 without a Retry-After header: the envelope's retry_after", async () => {
  const api = await fakeApi([{ status: 429, body: { error: { message: 'no', retry_after: 7 } } }]);
  try {
    const err = await fast(api.url, { maxRetries: 0 }).listAgents().catch((e) => e);
    assert.equal(err.retryAfter, 7);
  } finally {
    await api.close();
  }
});

test('503 and 502 then 200: retried; 500 on every attempt: the last error after maxRetries + 1 attempts', async () => {
  const flaky = await fakeApi([{ status: 503, body: {} }, { status: 502, body: 'Bad Gateway' }, OK]);
  const broken = await fakeApi([{ status: 500, headers: { 'X-Request-Id': 'req_from_header' }, body: { success: false, error: { code: 500, type: 'INTERNAL_ERROR', message: 'Internal server error' } } }]);
  try {
    assert.equal((await fast(flaky.url).spawn({ model: 'k2p5', task: 'x' })).id, 'subagent_1_1');
    assert.equal(flaky.seen.length, 3);
    const err = await fast(broken.url, { maxRetries: 1 }).getAgentStatus('a').catch((e) => e);
    assert.equal(err.status, 500);
    assert.equal(err.type, 'INTERNAL_ERROR');
    assert.equal(err.requestId, 'req_from_header', 'X-Request-Id when the envelope has none');
    assert.equal(broken.seen.length, 2);
    assert.equal(broken.seen[0].headers['idempotency-key'], undefined, 'a GET carries no Idempotency-Key');
  } finally {
    await flaky.close();
    await broken.close();
  }
});

test('4xx is not retried; an old-style {"error": "text"} body still gives its message', async () => {
  const api = await fakeApi([{ status: 400, body: { success: false, error: 'Task cannot be empty' } }]);
  try {
    const err = await fast(api.url).spawn({ model: 'k2p5', task: '' }).catch((e) => e);
    assert.ok(err instanceof J1MSKYError && !(err instanceof RateLimitError));
    assert.equal(err.message, 'Task cannot be empty');
    assert.equal(err.status, 400);
    assert.equal(api.seen.length, 1);
  } finally {
    await api.close();
  }
});

test('a 200 that is not JSON: INVALID_RESPONSE, not retried', async () => {
  const api = await fakeApi([{ status: 200, body: '<html>proxy login</html>' }]);
  try {
    const err = await fast(api.url).health().catch((e) => e);
    assert.ok(err instanceof J1MSKYError);
    assert.equal(err.type, 'INVALID_RESPONSE');
    assert.equal(err.status, 200);
    assert.equal(api.seen.length, 1);
  } finally {
    await api.close();
  }
});

test('nothing listening: NETWORK_ERROR after the retries, no status', async () => {
  const port = await closedPort();
  const err = await fast(`http://127.0.0.1:${port}`, { maxRetries: 2 }).health().catch((e) => e);
  assert.ok(err instanceof J1MSKYError, String(err));
  assert.equal(err.type, 'NETWORK_ERROR');
  assert.equal(err.status, null);
  assert.match(err.message, /cannot reach http:\/\/127\.0\.0\.1:\d+\/api/);
});

test('a server that never answers: TIMEOUT after options.timeout, retried like a network error', async () => {
  const api = await fakeApi([{ hang: true }]);
  try {
    const err = await fast(api.url, { timeout: 200, maxRetries: 1 }).health().catch((e) => e);
    assert.equal(err.type, 'TIMEOUT');
    assert.match(err.message, /no answer within 200 ms/);
    assert.equal(api.seen.length, 2);
  } finally {
    await api.close();
  }
});

test('signing: X-Signature is HMAC-SHA256 of "timestamp\\nMETHOD\\npath?query\\nbody", fresh on each retry', async () => {
  const api = await fakeApi([{ status: 503, body: {} }, OK]);
  const secret = 'the-signing-secret';
  try {
    await fast(api.url, { apiSecret: secret }).request('POST', '/spawn', { body: { model: 'k2p5', task: 'ünï' }, params: { dry: 1 } });
    assert.equal(api.seen.length, 2);
    for (const req of api.seen) {
      const ts = req.headers['x-timestamp'];
      assert.match(ts, /^\d{10}\.\d{3}$/);
      // Recomputed here with node:crypto, independently of the SDK's WebCrypto code.
      const expected = createHmac('sha256', secret).update(`${ts}\nPOST\n/api/spawn?dry=1\n${req.body}`).digest('hex');
      assert.equal(req.headers['x-signature'], expected);
    }
    assert.notEqual(api.seen[0].headers['x-timestamp'], api.seen[1].headers['x-timestamp'],
      'a retry signs again: the daemon refuses a signature it has seen (replay)');
    assert.equal(await signRequest('k', '1', 'get', '/p', ''),
      createHmac('sha256', 'k').update('1\nGET\n/p\n').digest('hex'));
  } finally {
    await api.close();
  }
});

test('backoffDelay: exponential with full jitter, capped; Retry-After is a floor (capped too)', () => {
  const top = () => 0.999999;
  assert.ok(Math.abs(backoffDelay(1, 100, 30000, null, top) - 100) < 0.01);
  assert.ok(Math.abs(backoffDelay(3, 100, 30000, null, top) - 400) < 0.01);
  assert.equal(Math.round(backoffDelay(20, 100, 30000, null, top)), 30000);
  assert.equal(backoffDelay(1, 100, 30000, 2, () => 0), 2000);
  assert.equal(backoffDelay(1, 100, 30000, 3600, () => 0), 30000);
  assert.equal(backoffDelay(2, 100, 30000, null, () => 0), 0);
});

test('parseRetryAfter: seconds or an HTTP date; nonsense is null', () => {
  assert.equal(parseRetryAfter('120'), 120);
  assert.equal(parseRetryAfter('1.5'), 1.5);
  const now = Date.parse('Sun, 06 Dec 2026 12:00:00 GMT');
  assert.equal(parseRetryAfter('Sun, 06 Dec 2026 12:00:30 GMT', now), 30);
  assert.equal(parseRetryAfter('Sun, 06 Dec 2026 11:00:00 GMT', now), 0);
  assert.equal(parseRetryAfter('soon'), null);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter('-5'), null);
});

test('options: no environment variables and no options give the reference default http://localhost:8080/api', () => {
  const saved = { api: process.env.J1MSKY_API, key: process.env.J1MSKY_KEY };
  delete process.env.J1MSKY_API;
  delete process.env.J1MSKY_KEY;
  try {
    const client = new J1MSKYClient();
    assert.equal(client.baseUrl, 'http://localhost:8080/api');
    assert.equal(client.apiKey, null);
    assert.equal(client.apiSecret, null);
    process.env.J1MSKY_SECRET = 'from-the-environment';
    assert.equal(new J1MSKYClient().apiSecret, 'from-the-environment');
    assert.equal(new J1MSKYClient({ apiSecret: null }).apiSecret, null, 'an explicit null turns signing off');
    delete process.env.J1MSKY_SECRET;
    assert.equal(new J1MSKYClient({ baseUrl: 'http://h:1/api/v1' }).baseUrl, 'http://h:1/api/v1');
    const tuned = new J1MSKYClient({ maxRetries: 5, retryDelay: 1000 });
    assert.equal(tuned.maxRetries, 5);
    assert.equal(tuned.retryDelay, 1000);
  } finally {
    if (saved.api !== undefined) process.env.J1MSKY_API = saved.api;
    if (saved.key !== undefined) process.env.J1MSKY_KEY = saved.key;
  }
});
