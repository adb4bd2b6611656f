/* j1mskyd dashboard (docs/dashboard.md).  Plain ES2020, no framework, no build step.
 *
 * The API key lives only in this tab's sessionStorage and in the Authorization header of
 * requests to this origin: never in a URL, a cookie or the browser's persistent storage.  Everything the API
 * returns is written with textContent, never parsed as HTML.
 * Live agent status comes from GET /api/events/stream, read with fetch() (EventSource
 * cannot send headers).  The other panels are counted against the key's and the address's
 * hourly rate limits (docs/operations.md), so they are fetched sparingly: every REFRESH_MS, after
 * agent events at most every EVENT_REFRESH_MS, and on the Refresh button; never from a hidden tab.
 */
(() => {
  'use strict';

  const TOKEN_KEY = 'j1msky.apiKey';
  const HEALTH_MS = 15000;         // GET /api/health is public and not counted
  const REFRESH_MS = 300000;       // the counted panels
  const EVENT_REFRESH_MS = 30000;  // the counted panels after agent events, at most this often
  const MAX_ROWS = 50;
  const STREAM_TYPES = ['agent.spawned', 'agent.started', 'agent.completed', 'agent.failed', 'agent.cancelled',
    'budget.notice', 'budget.warning', 'budget.critical'].join(',');
  const RANK = { spawning: 0, queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    view: 'overview',
    agents: new Map(),      // agent_id -> {agent_id, model, status, task, cost, created_at, source}
    lastEventId: 0,
    streamCtrl: null,
    streamGen: 0,
    refreshTimer: null,
    healthTimer: null,
    lastSoon: 0,
    lastRefresh: 0,
    renderTimer: null,
    soonTimer: null,
  };

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.type = err.type || '';
      this.requiredScope = err.required_scope || null;
    }
  }

  // -- helpers --------------------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-')) node.dataset[k.slice(5).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function money(v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return '–';
    if (v === 0) return '$0.00';
    return '$' + (Math.abs(v) >= 0.01 ? v.toFixed(2) : v.toFixed(6));
  }

  function pct(v) {
    return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(1)}%` : '–';
  }

  function clock(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
  }

  function dateTime(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function randomId() {  // crypto.randomUUID needs a secure context; plain http on a LAN is not one
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return 'dash-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function problem(err) {
    if (err instanceof ApiError) {
      if (err.status === 403 && err.requiredScope) return `This key lacks the scope ${err.requiredScope}.`;
      return err.message;
    }
    return 'The daemon did not answer: ' + (err && err.message ? err.message : String(err));
  }

  function setError(id, err) {
    $(id).textContent = err ? problem(err) : '';
  }

  // -- the API --------------------------------------------------------------------------------
  async function api(path, { method = 'GET', body, headers = {}, probe = false } = {}) {
    const token = state.token;
    if (!token) throw new ApiError(401, { error: { message: 'Not logged in' } });
    const init = {
      method,
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json', ...headers },
      cache: 'no-store',
      credentials: 'omit',
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch('/api' + path, init);
    if (state.token !== token && !probe) {  // logged out meanwhile: show nothing of it
      throw new ApiError(401, { error: { message: 'Logged out' } });
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const err = new ApiError(resp.status, data);
      if (resp.status === 401 && !probe && state.token === token) logout('The key was refused (revoked or expired). Log in again.');
      throw err;
    }
    return data;
  }

  // -- login / logout -------------------------------------------------------------------------
  async function login(event) {
    event.preventDefault();
    const input = $('login-key');
    const key = input.value.trim();
    $('login-error').textContent = '';
    if (!key) return;
    $('login-submit').disabled = true;
    state.token = key;
    try {
      await api('/agents?limit=1', { probe: true });
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 403) {  // 403: a valid key with fewer scopes
        state.token = null;
        $('login-error').textContent = err instanceof ApiError && err.status === 401
          ? 'That key was not accepted.' : problem(err);
        $('login-submit').disabled = false;
        return;
      }
    }
    $('login-submit').disabled = false;
    input.value = '';
    sessionStorage.setItem(TOKEN_KEY, key);
    start();
  }

  function logout(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    stopStream();
    clearTimeout(state.refreshTimer);
    clearTimeout(state.soonTimer);
    state.soonTimer = null;
    state.agents.clear();
    state.lastEventId = 0;
    clearSecrets();
    for (const id of ['agents', 'providers', 'requests', 'breakers', 'keys']) $(id).tBodies[0].replaceChildren();
    $('spend').replaceChildren();
    $('spawn-model').replaceChildren();
    $('overview-view').hidden = true;
    $('settings-view').hidden = true;
    $('nav').hidden = true;
    $('logout').hidden = true;
    $('refresh').hidden = true;
    $('live').hidden = true;
    $('login-view').hidden = false;
    showNotice(typeof message === 'string' ? message : '');
    $('login-key').focus();
  }

  function showNotice(text) {
    $('notice').textContent = text;
    $('notice').hidden = !text;
  }

  function start() {
    showNotice('');
    $('login-view').hidden = true;
    $('nav').hidden = false;
    $('logout').hidden = false;
    $('refresh').hidden = false;
    $('live').hidden = false;
    show('overview');
    loadModels();
    refreshAll(false);  // the agents list comes when the stream connects
    startStream();
  }

  function show(view) {
    state.view = view;
    $('overview-view').hidden = view !== 'overview';
    $('settings-view').hidden = view !== 'settings';
    for (const tab of document.querySelectorAll('.tab')) {
      tab.setAttribute('aria-pressed', String(tab.dataset.view === view));
    }
    if (view === 'settings') loadKeys();
  }

  // -- periodic panels ------------------------------------------------------------------------
  async function refreshAll(withAgents = true) {
    clearTimeout(state.refreshTimer);
    if (!state.token) return;
    state.lastRefresh = Date.now();
    if (!document.hidden) {
      const loads = [loadLimits(), loadBudget(), loadSpend()];
      if (withAgents) loads.push(loadAgents());
      if (state.view === 'settings') loads.push(loadKeys());
      await Promise.all(loads);
    }
    if (state.token) state.refreshTimer = setTimeout(refreshAll, REFRESH_MS);
  }

  function refreshSoon() {  // after events: one refresh for a burst of them, and not too often
    if (state.soonTimer) return;
    const wait = Math.max(400, state.lastSoon + EVENT_REFRESH_MS - Date.now());
    state.soonTimer = setTimeout(() => {
      state.soonTimer = null;
      state.lastSoon = Date.now();
      if (state.token && !document.hidden) Promise.all([loadLimits(), loadBudget(), loadSpend()]);
    }, wait);
  }

  async function healthLoop() {
    clearTimeout(state.healthTimer);
    if (!document.hidden) await loadHealth();
    state.healthTimer = setTimeout(healthLoop, HEALTH_MS);
  }

  function onVisible() {
    if (document.hidden) return;
    loadHealth();
    if (state.token && Date.now() - state.lastRefresh > EVENT_REFRESH_MS) refreshAll();
  }

  async function loadHealth() {
    const pill = $('health');
    try {
      const resp = await fetch('/api/health', { cache: 'no-store', credentials: 'omit' });
      const body = await resp.json();
      pill.textContent = `${body.status} · v${body.version}`;
      pill.className = 'pill ' + (body.status === 'healthy' ? 'good' : 'bad');
      if (state.token) {
        $('breakers').tBodies[0].replaceChildren(...Object.entries(body.providers || {}).map(([name, p]) =>
          el('tr', { 'data-provider': name }, el('td', { text: name }),
            el('td', {}, el('span', { class: `badge breaker-${p.state}`, text: p.state })),
            el('td', { class: 'num', text: `${p.successes} / ${p.failures}` }))));
      }
    } catch (err) {
      pill.textContent = 'unreachable';
      pill.className = 'pill bad';
    }
  }

  async function loadModels() {
    const select = $('spawn-model');
    try {
      const body = await api('/models');
      const data = body.data || {};
      select.replaceChildren(...(data.models || []).map((m) =>
        el('option', { value: m.name, text: `${m.name} (${m.provider})` })));
      if (data.default_model) select.value = data.default_model;
      setError('spawn-result', null);
    } catch (err) {
      if (state.token) setError('spawn-result', err);
    }
  }

  async function loadAgents() {
    try {
      const body = await api('/agents?sort=-created_at&limit=' + MAX_ROWS);
      for (const a of body.data || []) {
        upsertAgent({ agent_id: a.agent_id, model: a.model, status: a.status, task: a.task,
          cost: a.actual_cost != null ? a.actual_cost : a.estimated_cost, created_at: a.created_at }, 'list');
      }
      setError('agents-error', null);
    } catch (err) {
      if (state.token) setError('agents-error', err);
    }
    scheduleRender();
  }

  async function loadLimits() {
    try {
      const body = await api('/rate-limits');
      const providers = Object.entries(body.limits || {}).map(([name, l]) => el('tr', { 'data-provider': name },
        el('td', { text: name }), el('td', { class: 'num', text: `${l.used} / ${l.limit}` }),
        el('td', { class: 'num', text: String(l.remaining) }), el('td', { text: clock(l.reset_at) })));
      $('providers').tBodies[0].replaceChildren(...providers);
      const requests = Object.entries(body.requests || {}).map(([name, l]) => el('tr', { 'data-class': name },
        el('td', { text: name }), el('td', { class: 'num', text: `${l.used} / ${l.limit}` }),
        el('td', { class: 'num', text: String(l.remaining) })));
      $('requests').tBodies[0].replaceChildren(...requests);
      if (body.budget) showBudget(body.budget);
      setError('limits-error', null);
    } catch (err) {
      if (state.token) setError('limits-error', err);
    }
  }

  function showBudget(b) {
    $('budget-spend').textContent = money(b.today_spend);
    $('budget-limit').textContent = money(b.daily_budget);
    $('budget-pct').textContent = pct(b.budget_utilization_pct);
    $('budget-meter').value = Math.min(100, b.budget_utilization_pct || 0);
    if (typeof b.month_spend === 'number') {
      $('month-spend').textContent = money(b.month_spend);
      $('month-limit').textContent = money(b.monthly_ceiling);
      $('month-meter').value = b.monthly_ceiling ? Math.min(100, (100 * b.month_spend) / b.monthly_ceiling) : 0;
    }
    if (b.budget_alert_level) showAlertLevel(b.budget_alert_level);
  }

  function showAlertLevel(level) {
    const badge = $('alert-level');
    badge.textContent = level;
    badge.className = 'badge level-' + level;
    badge.dataset.level = level;
  }

  async function loadBudget() {
    try {
      const body = await api('/orchestrator/status');
      showAlertLevel(body.budget_alert_level);
      const flags = body.operational_flags || {};
      $('budget-action').textContent = flags.recommended_action || '';
      setError('budget-error', null);
    } catch (err) {
      // Without billing:read the gauge still comes from /rate-limits; say why the rest is missing.
      if (state.token) setError('budget-error', err);
    }
  }

  async function loadSpend() {
    try {
      const body = await api('/billing/usage');
      const entries = Object.entries(body.by_model || {}).sort((a, b) => b[1] - a[1]);
      const top = entries.length ? entries[0][1] : 0;
      $('spend').replaceChildren(...entries.map(([model, cost]) => {
        const fill = el('div', { class: 'fill' });
        fill.style.width = top > 0 ? `${Math.max(1, (100 * cost) / top)}%` : '0';
        return el('li', { 'data-model': model }, el('span', { class: 'mono', text: model }),
          el('div', { class: 'track' }, fill), el('span', { class: 'value', text: money(cost) }));
      }));
      $('spend-total').textContent = money(body.total_cost);
      $('spend-calls').textContent = String(body.calls != null ? body.calls : '–');
      $('spend-period').textContent = body.period || '';
      setError('spend-error', null);
    } catch (err) {
      if (state.token) setError('spend-error', err);
    }
  }

  // -- agents ---------------------------------------------------------------------------------
  function upsertAgent(a, source) {
    const old = state.agents.get(a.agent_id);
    if (!old) {
      state.agents.set(a.agent_id, { ...a, source });
      return;
    }
    // Never step back: news older than what is shown (a list fetched before an event, a spawn's
    // answer arriving after its completion) only fills in what is missing.
    const newer = (RANK[a.status] ?? 0) >= (RANK[old.status] ?? 0);
    const merged = { ...old };
    for (const [k, v] of Object.entries(a)) {
      if (v != null && (newer || merged[k] == null)) merged[k] = v;
    }
    if (merged.status !== old.status) merged.source = source;
    state.agents.set(a.agent_id, merged);
  }

  function scheduleRender() {
    if (state.renderTimer) return;
    state.renderTimer = setTimeout(() => {
      state.renderTimer = null;
      renderAgents();
    }, 50);
  }

  function renderAgents() {
    const rows = [...state.agents.values()].sort((x, y) => String(y.created_at).localeCompare(String(x.created_at)));
    for (const old of rows.slice(MAX_ROWS * 4)) state.agents.delete(old.agent_id);  // bounded memory
    const body = $('agents').tBodies[0];
    body.replaceChildren(...rows.slice(0, MAX_ROWS).map(agentRow));
    $('agents-empty').hidden = rows.length > 0;
  }

  function agentRow(a) {
    const actions = el('td');
    if (!TERMINAL.has(a.status)) {
      const cancel = el('button', { type: 'button', class: 'danger', text: 'Cancel' });
      cancel.addEventListener('click', () => cancelAgent(a.agent_id, cancel));
      actions.append(cancel);
    }
    return el('tr', { 'data-agent-id': a.agent_id, 'data-status': a.status, 'data-source': a.source },
      el('td', { class: 'mono', text: a.agent_id }),
      el('td', { text: a.model || '–' }),
      el('td', {}, el('span', { class: `badge status-${a.status}`, text: a.status })),
      el('td', { class: 'task', text: a.task || '', title: a.task || '' }),
      el('td', { class: 'num', text: money(a.cost) }),
      el('td', { text: clock(a.created_at) }),
      actions);
  }

  async function cancelAgent(agentId, button) {
    button.disabled = true;
    try {
      await api(`/agent/${encodeURIComponent(agentId)}`, { method: 'DELETE' });
      setError('agents-error', null);
    } catch (err) {
      if (state.token) setError('agents-error', err);
      button.disabled = false;
    }
  }

  async function spawn(event) {
    event.preventDefault();
    const task = $('spawn-task').value.trim();
    const model = $('spawn-model').value;
    if (!task || !model) return;
    const button = $('spawn-submit');
    button.disabled = true;
    $('spawn-result').textContent = '';
    try {
      const body = await api('/spawn', {
        method: 'POST',
        body: { model, task, priority: $('spawn-priority').value },
        headers: { 'Idempotency-Key': randomId() },
      });
      upsertAgent({ agent_id: body.agent_id, model: body.model, status: body.status, task,
        cost: body.estimated_cost, created_at: new Date().toISOString() }, 'spawn');
      scheduleRender();
      $('spawn-result').textContent = `Spawned ${body.agent_id} (estimated ${money(body.estimated_cost)}).`;
      $('spawn-result').dataset.agentId = body.agent_id;
      $('spawn-task').value = '';
    } catch (err) {
      if (state.token) setError('spawn-result', err);
    } finally {
      button.disabled = false;
    }
  }

  // -- the live stream ------------------------------------------------------------------------
  function setLive(text, good) {
    const pill = $('live');
    pill.textContent = text;
    pill.className = 'pill' + (good === true ? ' good' : good === false ? ' bad' : '');
    pill.dataset.state = text;
  }

  function stopStream() {
    state.streamGen += 1;
    if (state.streamCtrl) state.streamCtrl.abort();
    state.streamCtrl = null;
  }

  function startStream() {
    stopStream();
    streamLoop(state.streamGen);
  }

  async function streamLoop(gen) {
    let delay = 1000;
    while (state.token && gen === state.streamGen) {
      const ctrl = new AbortController();
      state.streamCtrl = ctrl;
      setLive('connecting');
      try {
        const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
        if (state.lastEventId) headers['Last-Event-ID'] = String(state.lastEventId);
        const resp = await fetch(`/api/events/stream?types=${STREAM_TYPES}`,
          { headers, cache: 'no-store', credentials: 'omit', signal: ctrl.signal });
        if (resp.status === 401) {
          logout('The key was refused (revoked or expired). Log in again.');
          return;
        }
        if (resp.status === 403) {
          setLive('no live status (needs agents:read)', false);
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        setLive('live', true);
        delay = 1000;
        loadAgents();  // the list, then what happens next from the stream (and "running", which has no event)
        await readEvents(resp.body, gen);
      } catch (err) {
        if (ctrl.signal.aborted || gen !== state.streamGen) return;
      }
      if (gen !== state.streamGen) return;
      setLive('reconnecting', false);
      await sleep(delay);
      delay = Math.min(delay * 2, 30000);
    }
  }

  async function readEvents(stream, gen) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== state.streamGen) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(block);
      }
    }
  }

  function dispatch(block) {  // one SSE message: "id:", "event:", "data:" lines
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id' && /^\d+$/.test(value)) state.lastEventId = Number(value);
      else if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    let payload;
    try {
      payload = JSON.parse(data.join('\n'));
    } catch (_) {
      return;
    }
    onEvent(type, payload);
  }

  function onEvent(type, payload) {
    const d = payload.data || {};
    if (type.startsWith('agent.') && d.agent_id) {
      upsertAgent({ agent_id: d.agent_id, model: d.model, status: d.status, task: d.task,
        cost: d.cost != null ? d.cost : d.estimated_cost,
        created_at: type === 'agent.spawned' ? payload.timestamp : null }, 'stream');
      if (!state.agents.get(d.agent_id).created_at) state.agents.get(d.agent_id).created_at = payload.timestamp;
      scheduleRender();
      if (TERMINAL.has(d.status)) refreshSoon();
    } else if (type.startsWith('budget.')) {
      const level = type.slice('budget.'.length);
      showAlertLevel(d.budget_alert_level || level);
      refreshSoon();
    }
  }

  // -- Settings -> API ------------------------------------------------------------------------
  async function loadKeys() {
    try {
      const body = await api('/keys');
      $('keys').tBodies[0].replaceChildren(...(body.keys || []).map(keyRow));
      setError('keys-error', null);
    } catch (err) {
      if (state.token) setError('keys-error', err);
    }
  }

  function keyRow(k) {
    const actions = el('td');
    if (k.status === 'active') {
      const revoke = el('button', { type: 'button', class: 'danger', text: 'Revoke' });
      revoke.addEventListener('click', () => revokeKey(k.key_id, revoke));
      actions.append(revoke);
    }
    return el('tr', { 'data-key-id': k.key_id, 'data-status': k.status },
      el('td', { text: k.name }), el('td', { class: 'mono', text: k.key_id }),
      el('td', { text: (k.scopes || []).join(', ') }),
      el('td', {}, el('span', { class: `badge key-${k.status}`, text: k.status })),
      el('td', { text: dateTime(k.created_at) }), el('td', { text: dateTime(k.last_used_at) }), actions);
  }

  async function revokeKey(keyId, button) {
    if (button.dataset.armed !== '1') {  // two clicks, no blocking confirm() dialog
      button.dataset.armed = '1';
      button.textContent = 'Click again to revoke';
      return;
    }
    button.disabled = true;
    try {
      await api(`/keys/${encodeURIComponent(keyId)}`, { method: 'DELETE' });
      await loadKeys();
    } catch (err) {
      if (state.token) setError('keys-error', err);
      button.disabled = false;
    }
  }

  async function createKey(event) {
    event.preventDefault();
    const name = $('key-name').value.trim();
    const scopes = [...document.querySelectorAll('.key-scope:checked')].map((c) => c.value);
    $('key-error').textContent = '';
    if (!name) return;
    if (!scopes.length) {
      $('key-error').textContent = 'Choose at least one scope.';
      return;
    }
    const button = $('key-submit');
    button.disabled = true;
    try {
      const body = await api('/keys', { method: 'POST', body: { name, scopes } });
      $('new-key-id').textContent = body.key_id;
      $('new-key-token').textContent = body.token;
      $('new-key-secret').textContent = body.secret;
      $('new-key-webhook-secret').textContent = body.webhook_secret || '';
      $('new-key').hidden = false;
      $('new-key-copy').textContent = 'Copy token';
      $('key-name').value = '';
      await loadKeys();
    } catch (err) {
      if (state.token) setError('key-error', err);
    } finally {
      button.disabled = false;
    }
  }

  function clearSecrets() {
    for (const id of ['new-key-id', 'new-key-token', 'new-key-secret', 'new-key-webhook-secret']) $(id).textContent = '';
    $('new-key').hidden = true;
  }

  async function copyToken() {
    const node = $('new-key-token');
    try {
      await navigator.clipboard.writeText(node.textContent);
      $('new-key-copy').textContent = 'Copied';
    } catch (_) {  // no clipboard API outside a secure context: select it for Ctrl-C
      const range = document.createRange();
      range.selectNodeContents(node);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      $('new-key-copy').textContent = 'Selected: press Ctrl-C';
    }
  }

  // -- wiring ---------------------------------------------------------------------------------
  function init() {
    $('login-form').addEventListener('submit', login);
    $('spawn-form').addEventListener('submit', spawn);
    $('key-form').addEventListener('submit', createKey);
    $('logout').addEventListener('click', () => logout('Logged out.'));
    $('refresh').addEventListener('click', () => refreshAll());
    document.addEventListener('visibilitychange', onVisible);
    $('new-key-copy').addEventListener('click', copyToken);
    $('new-key-done').addEventListener('click', clearSecrets);
    for (const tab of document.querySelectorAll('.tab')) tab.addEventListener('click', () => show(tab.dataset.view));
    healthLoop();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      state.token = saved;
      start();
    } else {
      $('login-view').hidden = false;
      $('login-key').focus();
    }
  }

  init();
})();
