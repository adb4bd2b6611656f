// The SDK against a REAL daemon: tests/test_sdk_js.py starts `j1mskyd serve` (offline provider;
// models k2p5, sonnet, opus, quick and `slow` (30 s a call); team team_coding; loopback webhooks
// allowed) and runs this with J1MSKY_API (…/api) and J1MSKY_KEY (the bootstrap admin token).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { J1MSKYClient, Agency, J1MSKYError, RateLimitError } from 'j1msky';
import { receiver } from './servers.mjs';

const API = process.env.J1MSKY_API;
const KEY = process.env.J1MSKY_KEY;
assert.ok(API && KEY, 'run by tests/test_sdk_js.py: J1MSKY_API and J1MSKY_KEY name the test daemon');
const ROOT = API.replace(/\/api$/, '');

test('no arguments: the client reads J1MSKY_API and J1MSKY_KEY and spawns, waits, returns output and cost', async () => {
  const client = new J1MSKYClient();
  assert.equal(client.baseUrl, API);
  const agent = await client.spawn({ model: 'k2p5', task: 'Write a JavaScript function to reverse a string', priority: 'normal' });
  assert.match(agent.id, /^subagent_/);
  assert.equal(agent.agentId, agent.id);
  const result = await agent.waitForCompletion({ timeout: 60000 });
  assert.equal(result.status, 'completed');
  assert.equal(result.state, 'completed');
  assert.equal(result.id, agent.id);
  assert.match(result.output, /^\[offline:k2p5-up\] Write a JavaScript function to reverse a string/);
  assert.equal(result.output, result.result);
  assert.equal(typeof result.cost, 'number');
  assert.ok(result.cost > 0);
  assert.equal(result.usage.inputTokens, result.usage.input_tokens); // the API's names, and camelCase twins
});

test('the base URL works with and without /api (and a trailing slash); Agency is the same client', async () => {
  for (const baseUrl of [ROOT, ROOT + '/', API, API + '/']) {
    const agency = new Agency({ apiKey: KEY, baseUrl });
    assert.equal(agency.baseUrl, API);
    const health = await agency.health();
    assert.equal(health.status, 'healthy', JSON.stringify(health));
  }
  assert.equal(Agency, J1MSKYClient);
});

test('getAgentStatus gives state and output; the team lead waits for its members', async () => {
  const client = new J1MSKYClient();
  const lead = await client.spawnTeam({ team: 'team_coding', task: 'Build a REST API' });
  const result = await lead.waitForCompletion({ timeout: 60000 });
  assert.equal(result.state, 'completed');
  assert.match(result.output, /\[offline:k2p5-up\] Build a REST API/);
  assert.match(result.output, /\[offline:sonnet-up\] Build a REST API/);
  assert.equal(result.members.length, 2);
  const status = await client.getAgentStatus(result.members[0].agent_id);
  assert.equal(status.state, 'completed');
  assert.match(status.output, /Build a REST API/);
});

test('spawnBatch: one Agent per entry, each runs', async () => {
  const client = new J1MSKYClient();
  const agents = await client.spawnBatch([{ model: 'k2p5', task: 'one' }, { model: 'opus', task: 'two', priority: 'low' }]);
  assert.equal(agents.length, 2);
  const results = await Promise.all(agents.map((a) => a.waitForCompletion({ timeout: 60000 })));
  assert.deepEqual(results.map((r) => r.model), ['k2p5', 'opus']);
  assert.deepEqual(results.map((r) => r.state), ['completed', 'completed']);
});

test('a refused spawn is a J1MSKYError with the envelope: status, type, requestId, details; not retried', async () => {
  const client = new J1MSKYClient();
  const before = (await client.listAgents({ limit: 1 })).pagination.total;
  const err = await client.spawn({ model: 'gpt-9', task: '', priority: 'urgent' }).catch((e) => e);
  assert.ok(err instanceof J1MSKYError, String(err));
  assert.ok(!(err instanceof RateLimitError));
  assert.equal(err.status, 400);
  assert.equal(err.type, 'VALIDATION_ERROR');
  assert.match(err.requestId, /^req_/);
  assert.deepEqual(err.details.map((d) => d.field).sort(), ['model', 'priority', 'task']);
  assert.equal(err.message, err.details[0].message);
  assert.equal((await client.listAgents({ limit: 1 })).pagination.total, before, 'a refused spawn made no agent');
});

test('an unknown agent is 404 NOT_FOUND; a bad key is 401 INVALID_API_KEY', async () => {
  const client = new J1MSKYClient();
  const missing = await client.getAgentStatus('subagent_1_0').catch((e) => e);
  assert.equal(missing.status, 404);
  assert.equal(missing.type, 'NOT_FOUND');
  const stranger = new J1MSKYClient({ apiKey: 'jsk_not-a-key' });
  const denied = await stranger.listAgents().catch((e) => e);
  assert.ok(denied instanceof J1MSKYError);
  assert.equal(denied.status, 401);
  assert.equal(denied.type, 'INVALID_API_KEY');
});

test('spawn sends camelCase webhookUrl as the API field webhook_url: the agent end reaches it', async () => {
  const hooks = await receiver();
  try {
    const client = new J1MSKYClient();
    const agent = await client.spawn({ model: 'k2p5', task: 'Analyze data', webhookUrl: `${hooks.url}/own` });
    const delivery = await hooks.next((d) => d.payload?.data?.agent_id === agent.id && d.path === '/own');
    assert.equal(delivery.payload.event, 'agent.completed');
    assert.equal(delivery.headers['x-j1msky-event'], 'agent.completed');
  } finally {
    await hooks.close();
  }
});

test('a refused webhookUrl is refused as webhook_url (the daemon saw the mapped name)', async () => {
  const client = new J1MSKYClient();
  const err = await client.spawn({ model: 'k2p5', task: 'x', webhookUrl: 'ftp://127.0.0.1/hook' }).catch((e) => e);
  assert.equal(err.status, 400);
  assert.deepEqual(err.details.map((d) => d.field), ['webhook_url']);
});

test('registerWebhook({url, events, secret}): deliveries are signed with that secret; list and delete', async () => {
  const hooks = await receiver();
  const client = new J1MSKYClient();
  const secret = 'sdk-js-test-secret';
  try {
    const hook = await client.registerWebhook({ url: `${hooks.url}/registered`, events: ['agent.completed', 'agent.failed'], secret });
    assert.equal(hook.success, true);
    assert.deepEqual(hook.events, ['agent.completed', 'agent.failed']);
    const listed = await client.listWebhooks();
    assert.ok(listed.webhooks.some((w) => w.webhook_id === hook.webhook_id));
    const agent = await client.spawn({ model: 'k2p5', task: 'hooked' });
    const d = await hooks.next((x) => x.path === '/registered' && x.payload?.data?.agent_id === agent.id);
    const expected = 'sha256=' + createHmac('sha256', secret).update(d.raw).digest('hex');
    assert.equal(d.headers['x-j1msky-signature'], expected);
    await client.deleteWebhook(hook.webhook_id);
    assert.ok(!(await client.listWebhooks()).webhooks.some((w) => w.webhook_id === hook.webhook_id));
  } finally {
    await hooks.close();
  }
});

test('getQuote: internal cost, recommended price, margin and the guardrail check, snake_case and camelCase', async () => {
  const client = new J1MSKYClient();
  const quote = await client.getQuote({ model: 'sonnet', estimatedInputTokens: 3000, estimatedOutputTokens: 1200, complexity: 'high', segment: 'enterprise', deliveryType: 'task' });
  assert.equal(quote.model, 'sonnet');
  assert.equal(quote.segment, 'enterprise');
  assert.equal(quote.estimated_input_tokens, 3000);
  assert.equal(quote.estimatedOutputTokens, 1200);
  assert.equal(typeof quote.internal_cost, 'number');
  assert.equal(quote.internalCost, quote.internal_cost);
  assert.ok(quote.recommendedPrice > quote.internalCost);
  assert.equal(typeof quote.guardrailCheck.isCompliant, 'boolean');
  assert.equal(quote.guardrail_check.is_compliant, quote.guardrailCheck.isCompliant);
  assert.equal(quote.raw.success, true);
  const bad = await client.getQuote({ model: 'sonnet', estimatedInput: 1, estimatedOutput: 1, complexity: 'extreme' }).catch((e) => e);
  assert.equal(bad.status, 400);
});

test('waitForCompletion past its timeout: WAIT_TIMEOUT with the last state, and the agent is still there to cancel', async () => {
  const client = new J1MSKYClient();
  const agent = await client.spawn({ model: 'slow', task: 'takes 30 s' });
  const err = await agent.waitForCompletion({ timeout: 300 }).catch((e) => e);
  assert.ok(err instanceof J1MSKYError, String(err));
  assert.equal(err.type, 'WAIT_TIMEOUT');
  assert.ok(!['completed', 'failed', 'cancelled'].includes(err.body.status), err.body.status);
  await agent.cancel();
  const end = await agent.waitForCompletion({ timeout: 30000 });
  assert.equal(end.state, 'cancelled');
});

test('Idempotency-Key: the same key twice is one spawn (the SDK sends the header it keeps across retries)', async () => {
  const client = new J1MSKYClient();
  const key = randomUUID();
  const first = await client.request('POST', '/spawn', { body: { model: 'k2p5', task: 'once' }, idempotencyKey: key });
  const again = await client.request('POST', '/spawn', { body: { model: 'k2p5', task: 'once' }, idempotencyKey: key });
  assert.equal(again.agent_id, first.agent_id);
  const other = await client.request('POST', '/spawn', { body: { model: 'k2p5', task: 'once' } });
  assert.notEqual(other.agent_id, first.agent_id);
});

test('apiSecret: requests are HMAC-signed as the daemon verifies them; unsigned or wrongly signed ones are refused', async () => {
  const admin = new J1MSKYClient();
  const made = await admin.request('POST', '/keys', {
    body: { name: `sdk-js-signed-${Date.now()}`, scopes: ['agents:read', 'agents:write'], require_signature: true },
  });
  const token = made.token ?? made.data?.token;
  const secret = made.secret ?? made.data?.secret;
  assert.ok(token && secret, JSON.stringify(Object.keys(made)));

  const signed = new J1MSKYClient({ apiKey: token, apiSecret: secret });
  const agent = await signed.spawn({ model: 'k2p5', task: 'signed spawn: ünïcode too' });
  const result = await agent.waitForCompletion({ timeout: 60000 });
  assert.match(result.output, /signed spawn: ünïcode too/);
  const listed = await signed.listAgents({ limit: 5, status: 'completed' }); // a signed path with a query string
  assert.ok(listed.data.some((a) => a.agent_id === agent.id));

  const unsigned = await new J1MSKYClient({ apiKey: token }).listAgents().catch((e) => e);
  assert.equal(unsigned.status, 401);
  assert.equal(unsigned.type, 'SIGNATURE_REQUIRED');
  const wrong = await new J1MSKYClient({ apiKey: token, apiSecret: secret + 'x' }).listAgents().catch((e) => e);
  assert.equal(wrong.status, 401);
  assert.equal(wrong.type, 'INVALID_SIGNATURE');
});

test('no key at all, from loopback: the daemon serves the local caller (its [security] local_scopes), never admin', async () => {
  const local = new J1MSKYClient({ baseUrl: API, apiKey: null });
  const agent = await local.spawn({ model: 'k2p5', task: 'no key needed here' });
  const result = await agent.waitForCompletion({ timeout: 60000 });
  assert.equal(result.state, 'completed');
  const admin = await local.request('GET', '/keys').catch((e) => e);
  assert.ok(admin instanceof J1MSKYError);
  assert.ok([401, 403].includes(admin.status), String(admin.status));
});
