// The CommonJS entry: require('j1msky') (the package's "exports" "require" condition; from inside
// the package Node resolves its own name), against the real daemon (tests/test_sdk_js.py).
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { Agency, J1MSKYClient, J1MSKYError, RateLimitError, VERSION } = require('j1msky');

test('require and import give the very same classes (no dual-package hazard: instanceof works across)', async () => {
  const esm = await import('j1msky');
  assert.equal(esm.J1MSKYClient, J1MSKYClient);
  assert.equal(esm.RateLimitError, RateLimitError);
  assert.equal(esm.default.Agency, Agency);
  assert.equal(VERSION, require('../package.json').version);
});

test("the SDK Usage section's shape: new Agency({apiKey, baseUrl}), spawn, waitForCompletion().output", async () => {
  const agency = new Agency({ apiKey: process.env.J1MSKY_KEY, baseUrl: process.env.J1MSKY_API.replace(/\/api$/, '') });
  const agent = await agency.spawn({ model: 'k2p5', task: 'Write a blog post about AI', priority: 'normal' });
  const result = await agent.waitForCompletion();
  assert.match(result.output, /Write a blog post about AI/);
  const err = await agency.spawn({ model: 'k2p5', task: 'x', priority: 'urgent' }).catch((e) => e);
  assert.ok(err instanceof J1MSKYError);
  assert.equal(err.type, 'VALIDATION_ERROR');
});
