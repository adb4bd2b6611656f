/*
 * j1msky: the JavaScript/TypeScript client of the J1MSKY API (the j1mskyd daemon).
 *
 * One implementation for every way it is loaded, with no runtime dependency:
 *   - Node's require('j1msky') loads this file as CommonJS;
 *   - Node's import ... from 'j1msky' loads index.mjs, which re-exports this file's exports;
 *   - a browser loads it with <script src=".../j1msky.js"> (window.J1MSKY), or index.mjs as a module.
 * That is why it is a UMD wrapper and not an ES module: Node 18 cannot require() an ES module,
 * and a second copy of the code for CommonJS would be two implementations to keep equal.
 *
 * Only web-platform APIs are used: fetch, AbortController, URL, TextEncoder, crypto.subtle
 * (HMAC signing) and crypto.getRandomValues.  Node 18 has no global `crypto` without a flag, so
 * there (and only there) node:crypto's webcrypto is the fallback.
 *
 * Behaviour mirrors the daemon's Python SDK (j1mskyd/client.py): retries of 429 (honouring
 * Retry-After), 5xx and network errors with exponential backoff and full jitter; one
 * Idempotency-Key per POST/PUT, kept by its retries, so a retried spawn never runs twice; with
 * apiSecret, every request is HMAC-signed the way j1mskyd/signing.py verifies it.
 */
(function (root, factory) {
  'use strict';
  if (typeof module === 'object' && module && module.exports) {
    module.exports = factory();
  } else {
    root.J1MSKY = factory();
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  'use strict';

  var VERSION = '0.1.0';
  var TERMINAL = ['completed', 'failed', 'cancelled'];
  var RETRY_STATUSES = [429, 500, 502, 503, 504];

  // -- errors -------------------------------------------------------------------------------
  /** An API error: the daemon's error envelope ({code, type, message, request_id, details}). */
  class J1MSKYError extends Error {
    constructor(message, options) {
      var o = options || {};
      super(message);
      this.name = 'J1MSKYError';
      this.status = o.status === undefined ? null : o.status;
      this.requestId = o.requestId === undefined ? null : o.requestId;
      this.type = o.type === undefined ? null : o.type;
      this.details = o.details === undefined ? null : o.details;
      this.body = o.body === undefined ? null : o.body;
      if (o.cause !== undefined) this.cause = o.cause;
    }
  }

  /** 429: wait `retryAfter` seconds (the Retry-After header, else the envelope's retry_after). */
  class RateLimitError extends J1MSKYError {
    constructor(message, options) {
      super(message, options);
      this.name = 'RateLimitError';
      var r = options && options.retryAfter;
      this.retryAfter = r === undefined ? null : r;
    }
  }

  /** Retry-After as seconds: delta-seconds or an HTTP date; null when absent or unreadable. */
  function parseRetryAfter(value, now) {
    if (value === null || value === undefined || value === '') return null;
    var text = String(value).trim();
    if (/^[0-9]+(\.[0-9]+)?$/.test(text)) return Number(text);
    // An HTTP date (RFC 9110: IMF-fixdate, always GMT); Date.parse alone would also take '-5'.
    var when = /GMT$/.test(text) ? Date.parse(text) : NaN;
    if (Number.isNaN(when)) return null;
    return Math.max(0, (when - (now === undefined ? Date.now() : now)) / 1000);
  }

  /** The J1MSKYError (or RateLimitError) for a non-2xx answer. */
  function errorFromResponse(status, headers, text) {
    var data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    var err = data && typeof data === 'object' ? data.error : null;
    var headerId = headers.get('X-Request-Id');
    var message;
    var o = { status: status, requestId: headerId, body: data };
    var envelopeRetry = null;
    if (err && typeof err === 'object') {
      message = err.message || 'HTTP ' + status;
      o.type = err.type || null;
      o.details = err.details === undefined ? null : err.details;
      if (err.request_id) o.requestId = err.request_id;
      if (typeof err.retry_after === 'number') envelopeRetry = err.retry_after;
    } else {
      message = typeof err === 'string' ? err : 'HTTP ' + status;
    }
    if (status === 429) {
      var header = parseRetryAfter(headers.get('Retry-After'));
      o.retryAfter = header === null ? envelopeRetry : header;
      return new RateLimitError(message, o);
    }
    return new J1MSKYError(message, o);
  }

  // -- pieces shared by every request -----------------------------------------------------------
  function env() {
    // process exists in Node (and in bundlers that define it); a browser has none.
    return typeof process !== 'undefined' && process && process.env ? process.env : {};
  }

  /** The API root: the base URL with `/api` added unless it already ends in /api or /api/v1. */
  function apiBase(baseUrl) {
    var base = String(baseUrl).replace(/\/+$/, '');
    return /\/api(\/v1)?$/.test(base) ? base : base + '/api';
  }

  function webCrypto(given) {
    if (given) return given;
    if (typeof globalThis !== 'undefined' && globalThis.crypto && globalThis.crypto.subtle) return globalThis.crypto;
    // Node 18 only (its global crypto needs --experimental-global-webcrypto).  module.require keeps
    // bundlers from pulling a Node polyfill into a browser build.
    if (typeof module === 'object' && module && typeof module.require === 'function') {
      return module.require('node:crypto').webcrypto;
    }
    throw new J1MSKYError('no WebCrypto (crypto.subtle) here: pass options.crypto');
  }

  function uuid4(crypto) {
    if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.from(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  /**
   * hex(HMAC-SHA256(secret, `${timestamp}\n${METHOD}\n${path}\n${body}`)): what j1mskyd/signing.py
   * verifies; `path` is the URL's path with its query string.
   */
  async function signRequest(secret, timestamp, method, path, body, crypto) {
    var c = webCrypto(crypto);
    var enc = new TextEncoder();
    var key = await c.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    var message = timestamp + '\n' + method.toUpperCase() + '\n' + path + '\n' + body;
    var mac = new Uint8Array(await c.subtle.sign('HMAC', key, enc.encode(message)));
    return Array.from(mac, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
  }

  /** Full-jitter exponential backoff (j1mskyd/backoff.py); a Retry-After is a floor. In ms. */
  function backoffDelay(attempt, baseMs, capMs, retryAfterSeconds, random) {
    var ceiling = Math.min(capMs, baseMs * Math.pow(2, attempt - 1));
    var delay = (random || Math.random)() * ceiling;
    if (retryAfterSeconds !== null && retryAfterSeconds !== undefined) {
      delay = Math.max(delay, Math.min(retryAfterSeconds * 1000, capMs));
    }
    return delay;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  /** snake_case keys also readable as camelCase (recursively), the API's names kept. */
  function withCamelCase(value) {
    if (Array.isArray(value)) return value.map(withCamelCase);
    if (!value || typeof value !== 'object') return value;
    var out = {};
    Object.keys(value).forEach(function (k) {
      out[k] = withCamelCase(value[k]);
    });
    Object.keys(value).forEach(function (k) {
      var camel = k.replace(/_([a-z0-9])/g, function (_, ch) { return ch.toUpperCase(); });
      if (!(camel in out)) out[camel] = out[k];
    });
    return out;
  }

  /** An options object's camelCase fields under the API's snake_case names (webhookUrl -> webhook_url). */
  function snakeCaseKeys(obj) {
    var out = {};
    Object.keys(obj).forEach(function (k) {
      if (obj[k] === undefined) return;
      out[k.replace(/[A-Z]/g, function (ch) { return '_' + ch.toLowerCase(); })] = obj[k];
    });
    return out;
  }

  function requireText(name, value) {
    if (typeof value !== 'string' || !value) throw new TypeError(name + ' must be a non-empty string');
    return value;
  }

  /** An agent's state as the SDK returns it: the API's fields plus output/state/id/cost names. */
  function agentResult(data) {
    var r = withCamelCase(data || {});
    r.id = r.agent_id;
    r.state = r.status;
    r.output = r.result === undefined ? null : r.result;
    if (r.cost === undefined) r.cost = null;
    if (r.error === undefined) r.error = null;
    return r;
  }

  // -- the client ---------------------------------------------------------------------------
  /** A spawned agent (or team lead): `id`, `waitForCompletion({timeout})`, `getStatus()`, `cancel()`. */
  class Agent {
    constructor(client, data) {
      this.client = client;
      this.data = data;
      this.id = data.agent_id;
      this.agentId = data.agent_id;
      this.status = data.status;
      this.estimatedCost = data.estimated_cost === undefined ? null : data.estimated_cost;
    }

    getStatus() {
      return this.client.getAgentStatus(this.id);
    }

    waitForCompletion(options) {
      return this.client.waitForCompletion(this.id, options);
    }

    cancel() {
      return this.client.cancel(this.id);
    }
  }

  class J1MSKYClient {
    /**
     * options: baseUrl (default $J1MSKY_API, else http://localhost:8080; with or without /api),
     * apiKey (default $J1MSKY_KEY), apiSecret (HMAC-sign every request; default $J1MSKY_SECRET, the
     * Python SDK's variable too), timeout (ms per request,
     * 30000), maxRetries (3), retryDelay (ms, backoff base, 500), maxRetryDelay (ms, 30000),
     * pollInterval (ms, 1000), headers, fetch, crypto.
     */
    constructor(options) {
      var o = options || {};
      var e = env();
      this.baseUrl = apiBase(o.baseUrl || e.J1MSKY_API || 'http://localhost:8080');
      this.apiKey = o.apiKey !== undefined ? o.apiKey : e.J1MSKY_KEY || null;
      this.apiSecret = o.apiSecret !== undefined ? o.apiSecret : e.J1MSKY_SECRET || null;
      this.timeout = o.timeout === undefined ? 30000 : o.timeout;
      this.maxRetries = o.maxRetries === undefined ? 3 : o.maxRetries;
      this.retryDelay = o.retryDelay === undefined ? 500 : o.retryDelay;
      this.maxRetryDelay = o.maxRetryDelay === undefined ? 30000 : o.maxRetryDelay;
      this.pollInterval = o.pollInterval === undefined ? 1000 : o.pollInterval;
      this.headers = o.headers || {};
      this._fetch = o.fetch || (typeof fetch === 'function' ? fetch.bind(globalThis) : null);
      this._crypto = o.crypto || null;
      if (!this._fetch) throw new J1MSKYError('no fetch here (Node 18+ or a browser): pass options.fetch');
    }

    /**
     * One API call, retried on 429, 5xx and network errors.  `path` is below the API root
     * ('/spawn').  options: body (JSON), params (query), idempotencyKey, retry (false: one attempt).
     * Resolves to the parsed JSON answer.
     */
    async request(method, path, options) {
      var o = options || {};
      method = method.toUpperCase();
      var url = new URL(this.baseUrl + path);
      var params = o.params || {};
      Object.keys(params).forEach(function (k) {
        if (params[k] !== undefined && params[k] !== null) url.searchParams.set(k, String(params[k]));
      });
      var body = o.body === undefined ? null : JSON.stringify(o.body);
      var idem = o.idempotencyKey || ((method === 'POST' || method === 'PUT') ? uuid4(webCrypto(this._crypto)) : null);
      var retries = o.retry === false ? 0 : this.maxRetries;
      for (var attempt = 0; ; attempt++) {
        var err;
        try {
          return await this._once(method, url, body, idem);
        } catch (e) {
          err = e;
        }
        var retriable = err.type === 'NETWORK_ERROR' || err.type === 'TIMEOUT' ||
          RETRY_STATUSES.indexOf(err.status) >= 0;
        if (!retriable || attempt >= retries || this._waitsTooLong(err)) throw err;
        await sleep(backoffDelay(attempt + 1, this.retryDelay, this.maxRetryDelay,
          err instanceof RateLimitError ? err.retryAfter : null));
      }
    }

    /**
     * A 429 whose Retry-After is longer than maxRetryDelay is the caller's to handle (the
     * reference's examples wait error.retryAfter): a retry sooner would only earn another 429.
     */
    _waitsTooLong(err) {
      return err instanceof RateLimitError && err.retryAfter !== null && err.retryAfter * 1000 > this.maxRetryDelay;
    }

    async _once(method, url, body, idempotencyKey) {
      var headers = Object.assign({ Accept: 'application/json' }, this.headers);
      if (body !== null) headers['Content-Type'] = 'application/json';
      if (this.apiKey) headers.Authorization = 'Bearer ' + this.apiKey;
      if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
      if (this.apiSecret) {
        // Milliseconds: each attempt's signature differs, so a retry is never refused as a replay.
        var ts = (Date.now() / 1000).toFixed(3);
        headers['X-Timestamp'] = ts;
        headers['X-Signature'] = await signRequest(this.apiSecret, ts, method, url.pathname + url.search,
          body || '', this._crypto);
      }
      var controller = new AbortController();
      var timer = setTimeout(function () { controller.abort(); }, this.timeout);
      var resp;
      var text;
      try {
        resp = await this._fetch(url.toString(), { method: method, headers: headers, body: body, signal: controller.signal });
        text = await resp.text();
      } catch (e) {
        var timedOut = controller.signal.aborted;
        throw new J1MSKYError((timedOut ? 'no answer within ' + this.timeout + ' ms from ' : 'cannot reach ') +
          this.baseUrl + ': ' + (e && e.cause && e.cause.code ? e.cause.code : e && e.message),
          { type: timedOut ? 'TIMEOUT' : 'NETWORK_ERROR', cause: e });
      } finally {
        clearTimeout(timer);
      }
      if (!resp.ok) throw errorFromResponse(resp.status, resp.headers, text);
      if (!text) return null;
      try {
        return JSON.parse(text);
      } catch (e) {
        throw new J1MSKYError('the answer of ' + method + ' ' + url.pathname + ' is not JSON',
          { status: resp.status, requestId: resp.headers.get('X-Request-Id'), type: 'INVALID_RESPONSE', cause: e });
      }
    }

    // -- agents --------------------------------------------------------------------------------
    /** POST /spawn.  {model, task, priority, timeout (s), webhookUrl, privacy, ...}: camelCase is sent as snake_case. */
    async spawn(request) {
      // The daemon checks the body (every broken rule named in one 400): no second set of rules here.
      return new Agent(this, await this.request('POST', '/spawn', { body: snakeCaseKeys(request || {}) }));
    }

    /** POST /spawn-team.  {team, task, priority, webhookUrl, ...}; the Agent is the team's lead. */
    async spawnTeam(request) {
      return new Agent(this, await this.request('POST', '/spawn-team', { body: snakeCaseKeys(request || {}) }));
    }

    /** POST /spawn-batch: all or nothing; one Agent per request, in order. */
    async spawnBatch(requests) {
      var answer = await this.request('POST', '/spawn-batch', { body: { agents: requests.map(snakeCaseKeys) } });
      var self = this;
      return (answer.agents || []).map(function (a) { return new Agent(self, a); });
    }

    /** GET /agent/{id}: the API's fields (snake_case and camelCase) plus id, state and output. */
    async getAgentStatus(agentId) {
      return agentResult(await this.request('GET', '/agent/' + encodeURIComponent(requireText('agentId', agentId))));
    }

    /**
     * Poll until the agent is completed, failed or cancelled; resolves to its result ({output,
     * cost, status, state, error, ...}).  options: timeout (ms, 300000), pollInterval (ms).
     * Past the timeout: a J1MSKYError of type WAIT_TIMEOUT (the agent keeps running).
     */
    async waitForCompletion(agentId, options) {
      var o = options || {};
      var timeout = o.timeout === undefined ? 300000 : o.timeout;
      var interval = o.pollInterval === undefined ? this.pollInterval : o.pollInterval;
      var end = Date.now() + timeout;
      // Short first polls: an agent often finishes within a fraction of a second.
      for (var wait = Math.min(100, interval); ; wait = Math.min(wait * 2, interval)) {
        var status = await this.getAgentStatus(agentId);
        if (TERMINAL.indexOf(status.status) >= 0) return status;
        var left = end - Date.now();
        if (left <= 0) {
          throw new J1MSKYError('agent ' + agentId + ' still ' + status.status + ' after ' + timeout + ' ms',
            { type: 'WAIT_TIMEOUT', body: status });
        }
        await sleep(Math.min(wait, left));
      }
    }

    /** GET /agents; params as the API names them (status, model, limit, cursor, page...). */
    listAgents(params) {
      return this.request('GET', '/agents', { params: params });
    }

    /** DELETE /agent/{id}. */
    cancel(agentId) {
      return this.request('DELETE', '/agent/' + encodeURIComponent(requireText('agentId', agentId)));
    }

    // -- pricing -------------------------------------------------------------------------------
    /**
     * POST /pricing/quote.  {model, estimatedInputTokens (or estimatedInput), estimatedOutputTokens
     * (or estimatedOutput), complexity, segment, deliveryType}.  Resolves to the quote's fields
     * (internal_cost / internalCost, recommended_price, gross_margin_pct, ...) with guardrail_check
     * (guardrailCheck.isCompliant) and the whole answer as `raw`.
     */
    async getQuote(request) {
      var r = snakeCaseKeys(request || {});
      var body = {
        model: r.model,
        complexity: r.complexity,
        segment: r.segment,
        delivery_type: r.delivery_type,
        estimated_input: r.estimated_input !== undefined ? r.estimated_input : r.estimated_input_tokens,
        estimated_output: r.estimated_output !== undefined ? r.estimated_output : r.estimated_output_tokens
      };
      var answer = await this.request('POST', '/pricing/quote', { body: snakeCaseKeys(body) });
      var quote = withCamelCase(Object.assign({}, answer.quote, { guardrail_check: answer.guardrail_check }));
      quote.raw = answer;
      return quote;
    }

    // -- webhooks ------------------------------------------------------------------------------
    /** POST /webhooks: {url, events (default: the agent end events), secret, description, ...}. */
    registerWebhook(request) {
      return this.request('POST', '/webhooks', { body: snakeCaseKeys(request || {}) });
    }

    listWebhooks() {
      return this.request('GET', '/webhooks');
    }

    deleteWebhook(webhookId) {
      return this.request('DELETE', '/webhooks/' + encodeURIComponent(requireText('webhookId', webhookId)));
    }

    /** GET /health (no key needed). */
    health() {
      return this.request('GET', '/health');
    }
  }

  return {
    VERSION: VERSION,
    J1MSKYClient: J1MSKYClient,
    Agency: J1MSKYClient, // the API reference's older name
    Agent: Agent,
    J1MSKYError: J1MSKYError,
    RateLimitError: RateLimitError,
    signRequest: signRequest,
    backoffDelay: backoffDelay,
    parseRetryAfter: parseRetryAfter
  };
});
