// "Works in a browser too": the SDK's one source file, run the way a browser's <script> runs it:
// in a fresh JavaScript realm whose globals are only web-platform APIs (fetch, URL, crypto,
// AbortController, TextEncoder, timers), with no require, module, process or Buffer.  It must
// define window.J1MSKY there and spawn against the real daemon (tests/test_sdk_js.py).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { webcrypto } from 'node:crypto';
import vm from 'node:vm';

const API = process.env.J1MSKY_API;
const KEY = process.env.J1MSKY_KEY;
const SOURCE = new URL('../src/j1msky.js', import.meta.url);

function browserRealm() {
  const window = vm.createContext({
    fetch, Headers, Request, Response, URL, URLSearchParams, AbortController, TextEncoder, TextDecoder,
    crypto: webcrypto, setTimeout, clearTimeout, console,
  });
  vm.runInContext('var window = globalThis;', window);
  return window;
}

test('the source names no Node module: nothing but the guarded Node 18 WebCrypto fallback', async () => {
  const text = (await readFile(SOURCE, 'utf8')).replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const requires = text.match(/require\([^)]*\)/g) || [];
  assert.deepEqual(requires, ["require('node:crypto')"]);
  assert.match(text, /module\.require\('node:crypto'\)\.webcrypto/);
  assert.doesNotMatch(text, /\bBuffer\b|\bimport\s*\(/);
});

test('as a classic <script>: window.J1MSKY spawns and waits against the daemon', async () => {
  const window = browserRealm();
  vm.runInContext(await readFile(SOURCE, 'utf8'), window, { filename: 'j1msky.js' });
  for (const name of ['require', 'module', 'process', 'Buffer']) {
    assert.equal(vm.runInContext(`typeof ${name}`, window), 'undefined', `${name} must not exist in the realm`);
  }
  const { J1MSKYClient, J1MSKYError } = window.J1MSKY;
  // No process.env in a browser: the URL and key are given.
  const client = new J1MSKYClient({ baseUrl: API, apiKey: KEY, apiSecret: undefined });
  const agent = await client.spawn({ model: 'k2p5', task: 'from a browser realm' });
  const result = await agent.waitForCompletion({ timeout: 60000 });
  assert.equal(result.state, 'completed');
  assert.match(result.output, /from a browser realm/);
  const err = await client.getAgentStatus('subagent_0_0').catch((e) => e);
  assert.ok(err instanceof J1MSKYError);
  assert.equal(err.status, 404);
});

test('in the browser realm, signing uses its crypto.subtle (the daemon accepts the signature)', async () => {
  const window = browserRealm();
  vm.runInContext(await readFile(SOURCE, 'utf8'), window);
  const admin = new window.J1MSKY.J1MSKYClient({ baseUrl: API, apiKey: KEY });
  const made = await admin.request('POST', '/keys', { body: { name: `sdk-js-browser-${Date.now()}`, scopes: ['agents:read'], require_signature: true } });
  const signed = new window.J1MSKY.J1MSKYClient({ baseUrl: API, apiKey: made.token, apiSecret: made.secret });
  const listed = await signed.listAgents({ limit: 1 });
  assert.ok(Array.isArray(listed.data));
});
