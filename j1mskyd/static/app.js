/* j1mskyd dashboard (docs/dashboard.md).  Plain ES2020, no framework, no build step.
 *
 * The API key lives only in this tab's sessionStorage and in the Authorization header of
 * requests to this origin: never in a URL, a cookie or the browser's persistent storage.  Everything the API
 * returns is written with textContent, never parsed as HTML.
 * Live agent status comes from GET /api/events/stream, read with fetch() (EventSource
 * cannot send headers).  The other panels are counted against the key's and the address's
 * hourly rate limits (docs/operations.md), so they are fetched sparingly: every REFRESH_MS, after
 * agent events at most every EVENT_REFRESH_MS, and on the Refresh button; never from a hidden tab.
 * The page learns its key's scopes from GET /api/keys/me and hides what the key may not use; the API
 * itself filters what a key sees (a key without admin:read or admin:write sees only its own work).
 * The charts are SVG drawn here (no library): the CSP allows no inline style, and none is needed.
 */
(() => {
  'use strict';

  const TOKEN_KEY = 'j1msky.apiKey';
  const HEALTH_MS = 15000;         // GET /api/health is public and not counted
  const REFRESH_MS = 300000;       // the counted panels
  const EVENT_REFRESH_MS = 30000;  // the counted panels after agent events, at most this often
  const MAX_ROWS = 50;
  // task.* and escalation.* feed the Tasks view (tasks.js).
  const STREAM_TYPES = ['agent.spawned', 'agent.started', 'agent.output', 'agent.completed', 'agent.failed',
    'agent.cancelled', 'budget.notice', 'budget.warning', 'budget.critical', 'task.created', 'task.progress',
    'task.completed', 'task.failed', 'task.cancelled', 'escalation.submitted', 'escalation.approved',
    'escalation.rejected'].join(',');
  const OUTPUT_MAX = 65536;        // characters of live output kept per agent
  const OUTPUT_AGENTS = 20;        // live agents whose output is kept
  const CHART_DAYS = 30;
  const CHART_SERIES = 6;          // models drawn apart in the spend chart; the rest is "other"
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const RANK = { spawning: 0, queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  // keys.py's rule: admin:write holds every scope; admin:read every read scope (and every key's work).
  const ADMIN = 'admin:write';
  const READ_ALL = 'admin:read';
  const READ_ALL_GRANTS = new Set(['agents:read', 'billing:read', READ_ALL]);
  const PERIODS = { '1d': 'per day', '30d': 'per 30 days', total: 'in total' };
  // The key limits, one definition for the create form and the edit form (ids: PREFIX-NAME).
  const LIMIT_FIELDS = [
    { name: 'max_budget', label: 'Max budget (USD)', type: 'number', attrs: { min: '0', step: 'any' } },
    { name: 'budget_duration', label: 'Budget period', type: 'select',
      options: [['1d', '1 day (1d)'], ['30d', '30 days (30d)'], ['total', 'in total, never resets']] },
    { name: 'models', label: 'Models and teams (comma-separated; empty: all)', type: 'text',
      attrs: { placeholder: 'k2p5, sonnet' } },
    { name: 'max_concurrency', label: 'Max live agents', type: 'number', attrs: { min: '1', step: '1' } },
    { name: 'expires_at', label: 'Expires at (this browser\'s time)', type: 'datetime-local' },
    { name: 'metadata', label: 'Metadata (key=value, comma-separated, or JSON)', type: 'text',
      attrs: { placeholder: 'owner=ana, project=garden' } },
  ];

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    me: null,               // GET /api/keys/me: the key's scopes, limits and budget; null: not known
    remaining: null,        // X-Budget-Remaining of the latest answer: the most the key may still spend
    editing: null,          // the key whose limits the edit form holds: {key_id, initial: {field: text}}
    view: 'overview',
    agents: new Map(),      // agent_id -> {agent_id, model, status, task, estimate, charged, created_at, seq, source}
    seq: 0,                 // arrival order: ties of created_at (whole seconds) show the later-known first
    outputs: new Map(),     // agent_id -> its live output so far (agent.output deltas)
    detail: null,           // the agent shown in detail: {id, view}
    detailTimer: null,
    budget: null,           // the daemon's budget snapshot (daily_budget, today_spend), for the burn-down
    burnRows: null,         // today's spend per UTC hour (GET /billing/usage?group_by=hour)
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
      this.details = Array.isArray(err.details) ? err.details : [];
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

  function fillTable(id, rows) {  // one home for replacing a table's rows
    $(id).tBodies[0].replaceChildren(...rows);
  }

  function svg(tag, attrs, ...children) {  // an SVG element (attributes only: no inline style)
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
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
      if (err.details.length > 1) return err.details.map((d) => d.message).join('; ');
      return err.message;
    }
    return 'The daemon did not answer: ' + (err && err.message ? err.message : String(err));
  }

  function setError(id, err) {
    $(id).textContent = err ? problem(err) : '';
  }

  // -- what the key may do --------------------------------------------------------------------
  function can(scope) {
    if (!state.me) return true;  // not known (auth off): show everything; each panel says what it lacks
    const scopes = state.me.scopes || [];
    if (scopes.includes(ADMIN) || scopes.includes(scope)) return true;
    return scopes.includes(READ_ALL) && READ_ALL_GRANTS.has(scope);
  }

  function seesAll() {  // null: not known
    if (!state.me) return null;
    const scopes = state.me.scopes || [];
    return scopes.includes(ADMIN) || scopes.includes(READ_ALL);
  }

  // Cancelling another key's agent needs admin:write (an admin:read key sees it, may not change it).
  // A row that does not name its owner (one known from the live stream only) keeps its button.
  function mayChange(agent) {
    if (!can('agents:write')) return false;
    if (!state.me || can(ADMIN) || !agent.api_key) return true;
    return agent.api_key === state.me.key_id;
  }

  function applyScopes() {
    $('spawn-card').hidden = !can('agents:write');
    for (const id of ['agents-card', 'limits-card', 'requests-card', 'webhooks-card', 'models-card']) {
      $(id).hidden = !can('agents:read');
    }
    if (!can('agents:read')) closeDetail();
    $('spend-card').hidden = !can('billing:read');
    $('spend-chart-card').hidden = !can('billing:read');
    // Today's budget is the daemon's: drawn against every key's spend, so for a key that sees it all.
    $('burn-card').hidden = !can('billing:read') || seesAll() === false;
    for (const id of ['calls-card', 'latency-card']) $(id).hidden = !can(READ_ALL);  // every key's work
    $('budget-card').hidden = !can('agents:read') && !can('billing:read');
    $('tab-settings').hidden = !can(READ_ALL);
    $('tab-tasks').hidden = !can('agents:read');
    if (tasks) tasks.applyScopes();
    $('key-create').hidden = !can(ADMIN);
    const all = seesAll();
    if (all !== null) {
      for (const label of document.querySelectorAll('.scope-label')) {
        label.textContent = all ? label.dataset.all : label.dataset.own;
      }
    }
    if (state.view === 'settings' && !can(READ_ALL)) show('overview');
    if (state.view === 'tasks' && !can('agents:read')) show('overview');
  }

  function noteBudget(resp) {
    const value = resp.headers.get('X-Budget-Remaining');
    if (value === null || value === '' || !Number.isFinite(Number(value))) return;
    state.remaining = Number(value);
    renderMe();
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
    if (state.token === token) noteBudget(resp);
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
    state.me = null;
    try {
      state.me = await api('/keys/me', { probe: true });  // every active key may read its own record
    } catch (err) {
      state.token = null;
      $('login-error').textContent = err instanceof ApiError && err.status === 401
        ? 'That key was not accepted.' : problem(err);
      $('login-submit').disabled = false;
      return;
    }
    $('login-submit').disabled = false;
    input.value = '';
    sessionStorage.setItem(TOKEN_KEY, key);
    start();
  }

  function logout(message) {
    state.token = null;
    state.me = null;
    state.remaining = null;
    closeEdit();
    renderMe();
    sessionStorage.removeItem(TOKEN_KEY);
    stopStream();
    clearTimeout(state.refreshTimer);
    clearTimeout(state.soonTimer);
    state.soonTimer = null;
    state.agents.clear();
    state.lastEventId = 0;
    clearSecrets();
    for (const id of ['agents', 'providers', 'requests', 'breakers', 'keys', 'webhooks', 'models', 'teams']) fillTable(id, []);
    closeDetail();
    if (tasks) tasks.clear();
    state.outputs.clear();
    state.budget = null;
    state.burnRows = null;
    for (const id of ['spend', 'spend-chart', 'burn-chart', 'spend-chart-legend', 'calls-chart', 'calls-legend',
      'latency-chart', 'latency-legend']) $(id).replaceChildren();
    $('spawn-model').replaceChildren();
    $('overview-view').hidden = true;
    $('settings-view').hidden = true;
    $('tasks-view').hidden = true;
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

  async function start() {
    showNotice('');
    $('login-view').hidden = true;
    $('nav').hidden = false;
    $('logout').hidden = false;
    $('refresh').hidden = false;
    show('overview');
    if (!state.me) await loadMe();  // a reload: the key came from sessionStorage
    if (!state.token) return;       // refused meanwhile
    applyScopes();
    renderMe();
    loadHealth();  // the breakers now, not at the next poll (public: not counted)
    refreshAll(false, false);  // the agents list comes when the stream connects; the key's record just came
    $('live').hidden = !can('agents:read');
    if (can('agents:read')) startStream();
  }

  async function loadMe() {
    try {
      state.me = await api('/keys/me');
      applyScopes();
      renderMe();
    } catch (_) {
      // 401 logged out already; anything else keeps what is known (null: every panel shows)
    }
  }

  function renderMe() {
    const me = state.me;
    const b = me && me.budget;
    $('me').hidden = !state.token || (!me && state.remaining === null);
    $('me-name').textContent = me ? me.name : '';
    $('me-remaining').textContent = state.remaining !== null ? `${money(state.remaining)} left` : '';
    $('me').dataset.remaining = state.remaining !== null ? String(state.remaining) : '';
    $('me-resets').textContent = !b ? '' : b.resets_at ? `resets ${dateTime(b.resets_at)}` : 'never resets';
    $('me').title = (b ? `This key's budget: ${money(b.max_budget)} ${PERIODS[b.budget_duration] || ''}, `
      + `spent ${money(b.spend)}, held for live agents ${money(b.reserved)}. ` : 'This key has no budget of its own. ')
      + '"left" is the most it may still spend now: the smallest of its own budget, its project\'s and the '
      + 'daemon\'s daily budget.';
    $('key-budget').hidden = !b;
    if (b) {
      $('key-budget-spend').textContent = money(b.spend);
      $('key-budget-limit').textContent = money(b.max_budget);
      $('key-budget-period').textContent = PERIODS[b.budget_duration] || b.budget_duration || '';
      $('key-budget-remaining').textContent = money(b.budget_remaining);
      $('key-budget-resets').textContent = b.resets_at ? `, resets ${dateTime(b.resets_at)}` : '';
    }
  }

  function show(view) {
    if (view === 'settings' && !can(READ_ALL)) view = 'overview';
    if (view === 'tasks' && (!tasks || !can('agents:read'))) view = 'overview';
    state.view = view;
    $('overview-view').hidden = view !== 'overview';
    $('settings-view').hidden = view !== 'settings';
    $('tasks-view').hidden = view !== 'tasks';
    for (const tab of document.querySelectorAll('.tab')) {
      tab.setAttribute('aria-pressed', String(tab.dataset.view === view));
    }
    if (view === 'settings') loadKeys();
    if (view === 'tasks' && state.token) tasks.load();
  }

  // -- periodic panels ------------------------------------------------------------------------
  async function refreshAll(withAgents = true, withMe = true) {
    clearTimeout(state.refreshTimer);
    if (!state.token) return;
    state.lastRefresh = Date.now();
    if (!document.hidden) {
      const loads = panelLoads(withMe);
      if (withAgents && can('agents:read')) loads.push(loadAgents());
      if (can('agents:read')) loads.push(loadWebhooks());  // not after events: webhooks change by hand
      if (state.view === 'settings') loads.push(loadKeys());
      if (state.view === 'tasks') loads.push(tasks.load());
      await Promise.all(loads);
    }
    if (state.token) state.refreshTimer = setTimeout(refreshAll, REFRESH_MS);
  }

  // The counted panels this key may read, and its own record (budget).  ``slow``: also those that
  // change slowly (models, the charts), left out after events; the burn-down's current hour
  // follows the budget's spend, which comes with the limits anyway.
  function panelLoads(withMe = true, slow = true) {
    const loads = withMe ? [loadMe()] : [];
    if (can('agents:read')) loads.push(loadLimits());
    if (can('billing:read')) loads.push(loadBudget(), loadSpend());
    if (slow && can('agents:read')) loads.push(loadModels());
    if (slow && can('billing:read')) loads.push(loadSpendChart());
    if (slow && !$('burn-card').hidden) loads.push(loadBurn());
    if (slow && can(READ_ALL)) loads.push(loadSeries());
    if (state.detail) loads.push(loadDetail());
    return loads;
  }

  function refreshSoon() {  // after events: one refresh for a burst of them, and not too often
    if (state.soonTimer) return;
    const wait = Math.max(400, state.lastSoon + EVENT_REFRESH_MS - Date.now());
    state.soonTimer = setTimeout(() => {
      state.soonTimer = null;
      state.lastSoon = Date.now();
      if (state.token && !document.hidden) Promise.all(panelLoads(true, false));
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
        fillTable('breakers', Object.entries(body.providers || {}).map(([name, p]) =>
          el('tr', { 'data-provider': name }, el('td', { text: name }),
            el('td', {}, el('span', { class: `badge breaker-${p.state}`, text: p.state })),
            el('td', { class: 'num', text: `${p.successes} / ${p.failures}` }))));
      }
    } catch (err) {
      pill.textContent = 'unreachable';
      pill.className = 'pill bad';
    }
  }

  // The models (with prices and the last 24 h's performance) and teams: the Models panel and the spawn form.
  async function loadModels() {
    try {
      const body = await api('/models?include=pricing,performance');
      const data = body.data || {};
      const allowed = state.me && Array.isArray(state.me.models) ? state.me.models : null;  // null: all
      const models = (data.models || []).filter((m) => !allowed || allowed.includes(m.name));
      fillSpawnModels(models, data.default_model);
      fillTable('models', models.map(modelRow));
      const teams = data.teams || [];
      fillTable('teams', teams.map((t) => el('tr', { 'data-team': t.id }, el('td', { class: 'mono', text: t.id }),
        el('td', { text: t.name }), el('td', { text: (t.members || []).join(', ') }), el('td', { text: t.status }))));
      $('teams-empty').hidden = teams.length > 0;
      setError('models-error', null);
    } catch (err) {
      if (state.token) setError('models-error', err);
    }
  }

  function fillSpawnModels(models, defaultModel) {  // keeps the choice made, when it is still offered
    const select = $('spawn-model');
    const chosen = select.value;
    select.replaceChildren(...models.map((m) => el('option', { value: m.name, text: `${m.name} (${m.provider})` })));
    const keep = [chosen, defaultModel].find((name) => models.some((m) => m.name === name));
    if (keep) select.value = keep;
  }

  function seconds(v) {
    return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(v < 10 ? 2 : 1)} s` : '–';
  }

  function modelRow(m) {
    const p = m.pricing || {};
    const perf = m.performance || {};
    return el('tr', { 'data-model': m.name },
      el('td', { class: 'mono', text: m.name }), el('td', { text: m.provider }),
      el('td', {}, el('span', { class: `badge model-${m.status}`, text: m.status })),
      el('td', { class: 'num', text: money(p.input_tokens) }), el('td', { class: 'num', text: money(p.output_tokens) }),
      el('td', { class: 'num success', text: pct(perf.success_rate) }),
      el('td', { class: 'num', text: seconds(perf.average_response_time) }),
      el('td', { class: 'num', text: seconds(perf.p95_response_time) }),
      el('td', { class: 'num finished', text: perf.finished_agents != null ? String(perf.finished_agents) : '–' }));
  }

  async function loadAgents() {
    try {
      const body = await api('/agents?sort=-created_at&limit=' + MAX_ROWS);
      // Oldest first: an agent the page did not know yet gets a later arrival number than the older
      // ones, so agents created in the same second keep the list's order (newest first).
      for (const a of [...(body.data || [])].reverse()) {
        upsertAgent({ agent_id: a.agent_id, model: a.model, status: a.status, task: a.task,
          estimate: a.estimated_cost, charged: chargedOf(a.status, a.charged_cost, a.actual_cost),
          created_at: a.created_at, api_key: a.api_key }, 'list');
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
      fillTable('providers', Object.entries(body.limits || {}).map(([name, l]) => limitRow('provider', name, l)));
      fillTable('requests', Object.entries(body.requests || {}).map(([name, l]) => limitRow('class', name, l)));
      if (body.budget) showBudget(body.budget);
      setError('limits-error', null);
    } catch (err) {
      if (state.token) setError('limits-error', err);
    }
  }

  // "used": the calls of the last hour; "remaining": what may be sent now (a token bucket's level:
  // each call takes one, and they come back steadily over the hour).
  function limitRow(kind, name, l) {
    return el('tr', { [`data-${kind}`]: name }, el('td', { text: name }),
      el('td', { class: 'num used', text: `${l.used} / ${l.limit}` }),
      el('td', { class: 'num available', text: String(l.remaining) }),
      el('td', { text: l.remaining >= l.limit ? 'full' : clock(l.reset_at) }));
  }

  function showBudget(b) {
    state.budget = b;
    drawBurn();
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
      // The gauge comes from /rate-limits (unrounded, with the month); a key without agents:read has this one.
      if (can('agents:read')) showAlertLevel(body.budget_alert_level);
      else showBudget(body);
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

  // -- charts (inline SVG drawn here) ----------------------------------------------------------
  function utcDay(offsetDays = 0) {  // YYYY-MM-DD, UTC (the ledger's days and the budget's)
    return new Date(Date.now() + offsetDays * 86400000).toISOString().slice(0, 10);
  }

  function chartFrame(figure, width, height, label) {
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label, class: 'chart-svg' },
      svg('title', {}, label));
    figure.replaceChildren(root);
    return root;
  }

  async function loadSpendChart() {
    try {
      const from = utcDay(1 - CHART_DAYS);
      const body = await api(`/billing/usage?group_by=day,model&from=${from}&to=${utcDay()}`);
      drawSpendChart(body.rows || []);
    } catch (err) {
      if (state.token) $('spend-chart-caption').textContent = problem(err);
    }
  }

  // Stacked bars: one per UTC day, one colour per model (the costliest CHART_SERIES, then "other").
  function drawSpendChart(rows) {
    const days = Array.from({ length: CHART_DAYS }, (_, i) => utcDay(i + 1 - CHART_DAYS));
    const totals = new Map();
    for (const r of rows) totals.set(r.model, (totals.get(r.model) || 0) + r.cost);
    const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([m]) => m);
    const series = ranked.slice(0, CHART_SERIES);
    if (ranked.length > CHART_SERIES) series.push('other');
    const seriesOf = (model) => (series.includes(model) ? model : 'other');
    const cells = new Map();  // "day model" -> cost
    for (const r of rows) {
      const key = `${r.day} ${seriesOf(r.model)}`;
      cells.set(key, (cells.get(key) || 0) + r.cost);
    }
    const { total, top } = drawStacked($('spend-chart'), {
      label: `Spend per day by model, ${days[0]} to ${days[days.length - 1]}`, columns: days, series,
      value: (day, name) => cells.get(`${day} ${name}`) || 0, format: money, tick: (day) => day.slice(5),
      every: 7, dataKey: 'day', classOf: (k) => `s${k}` });
    legend('spend-chart-legend', series.map((name, k) => [name, `s${k}`]));
    $('spend-chart-caption').textContent = rows.length
      ? `${money(total)} in ${CHART_DAYS} days; the most in a day ${money(top)}.` : `Nothing spent in ${CHART_DAYS} days.`;
  }

  function legend(id, entries) {  // [name, class] pairs
    $(id).replaceChildren(...entries.map(([name, cls]) =>
      el('li', {}, el('span', { class: `swatch ${cls}` }), el('span', { class: 'mono', text: name }))));
  }

  // Stacked bars, one per column, one colour per series; returns the sum and the tallest column.
  function drawStacked(figure, { label, columns, series, value, format, tick, every, dataKey, classOf }) {
    const colTotal = (c) => series.reduce((sum, name) => sum + value(c, name), 0);
    const top = Math.max(0, ...columns.map(colTotal));
    const W = 360, H = 180, L = 62, B = 20, T = 8;
    const root = chartFrame(figure, W, H, label);
    axisY(root, L, T, W, H - B, top, format);
    const slot = (W - L) / columns.length;
    columns.forEach((col, i) => {
      let y = H - B;
      series.forEach((name, k) => {
        const v = value(col, name);
        if (!v) return;
        const h = top > 0 ? ((H - B - T) * v) / top : 0;
        y -= h;
        root.append(svg('rect', { x: (L + i * slot + 1).toFixed(1), y: y.toFixed(1), width: Math.max(slot - 2, 1).toFixed(1),
          height: Math.max(h, 0.5).toFixed(1), class: `series ${classOf(k, name)}`, [`data-${dataKey}`]: col,
          'data-series': name }, svg('title', {}, `${col} ${name}: ${format(v)}`)));
      });
      const last = i === columns.length - 1;
      if (last || (i % every === 0 && i < columns.length - every / 1.5)) {  // regular labels, the latest at the right edge
        root.append(svg('text', { x: last ? W : (L + i * slot).toFixed(1), y: H - 6, class: last ? 'tick end' : 'tick' },
          tick(col)));
      }
    });
    return { total: columns.reduce((sum, c) => sum + colTotal(c), 0), top };
  }

  function axisY(root, left, top, right, bottom, max, format = money) {  // the zero line and the top value
    root.append(svg('line', { x1: left, y1: bottom, x2: right, y2: bottom, class: 'axis' }),
      svg('text', { x: left - 4, y: bottom, class: 'tick end' }, format(0)),
      svg('text', { x: left - 4, y: top + 10, class: 'tick end' }, format(max)));
  }

  // From GET /api/metrics/timeseries (admin:read: the rows add up every key's work).
  async function loadSeries() {
    try {
      const [agents, latency] = await Promise.all([api('/metrics/timeseries?metric=agents&period=48h'),
        api('/metrics/timeseries?metric=latency_seconds&period=48h')]);
      drawAgentsChart(agents);
      drawLatencyChart(latency);
    } catch (err) {
      if (state.token) $('calls-caption').textContent = problem(err);
    }
  }

  const ENDS = ['completed', 'failed', 'cancelled'];  // the agents series, drawn in this order

  function hourTick(iso) {
    return String(iso).slice(11, 16);
  }

  function drawAgentsChart(body) {
    const counts = new Map((body.series || []).map((x) => [x.label, x.count]));
    const columns = body.buckets || [];
    const index = new Map(columns.map((b, i) => [b, i]));
    const { total } = drawStacked($('calls-chart'), {
      label: 'Agents ended per hour over 48 h, by final status', columns, series: ENDS,
      value: (b, name) => (counts.get(name) || [])[index.get(b)] || 0, format: (v) => String(Math.round(v)),
      tick: hourTick, every: 12, dataKey: 'hour', classOf: (k, name) => `end-${name}` });
    legend('calls-legend', ENDS.map((name) => [name, `end-${name}`]));
    const failed = (counts.get('failed') || []).reduce((a, b) => a + b, 0);
    $('calls-card').dataset.total = String(total);
    $('calls-card').dataset.failed = String(failed);
    $('calls-caption').textContent = total
      ? `${total} ended in 48 h, ${failed} failed (${pct((100 * failed) / total)}).` : 'No agent ended in 48 h.';
  }

  // Run time p50 (solid) and p95 (dashed) per provider, hour by hour; an hour without agents is a gap.
  function drawLatencyChart(body) {
    const columns = body.buckets || [];
    const series = (body.series || []).slice(0, CHART_SERIES);
    const values = series.flatMap((x) => [...(x.p50 || []), ...(x.p95 || [])]).filter((v) => typeof v === 'number');
    const top = Math.max(0, ...values);
    const W = 360, H = 180, L = 62, B = 20, T = 8;
    const root = chartFrame($('latency-chart'), W, H, 'Agent run time per provider over 48 h, p50 and p95');
    axisY(root, L, T, W, H - B, top, seconds);
    const x = (i) => L + ((W - L) * (i + 0.5)) / Math.max(columns.length, 1);
    const y = (v) => H - B - (top > 0 ? ((H - B - T) * v) / top : 0);
    series.forEach((x0, k) => {
      for (const q of ['p50', 'p95']) {
        for (const run of runsOf(x0[q] || [])) {  // one polyline per stretch of hours with a value
          const points = run.map((i) => `${x(i).toFixed(1)},${y(x0[q][i]).toFixed(1)}`).join(' ');
          root.append(run.length > 1
            ? svg('polyline', { points, class: `line s${k} ${q}`, 'data-provider': x0.label, 'data-q': q })
            : svg('circle', { cx: x(run[0]).toFixed(1), cy: y(x0[q][run[0]]).toFixed(1), r: 2.5,
              class: `dot s${k} ${q}`, 'data-provider': x0.label, 'data-q': q },
            svg('title', {}, `${x0.label} ${q} ${hourTick(columns[run[0]])}: ${seconds(x0[q][run[0]])}`)));
        }
      }
    });
    [[0, 'tick'], [Math.floor(columns.length / 2), 'tick mid'], [columns.length - 1, 'tick end']].forEach(([i, cls]) => {
      if (columns[i]) root.append(svg('text', { x: cls === 'tick end' ? W : x(i), y: H - 6, class: cls }, hourTick(columns[i])));
    });
    legend('latency-legend', series.map((x0, k) => [x0.label, `s${k}`]));
    const latest = series.map((x0) => {
      const i = (x0.p50 || []).map((v, j) => (typeof v === 'number' ? j : -1)).filter((j) => j >= 0).pop();
      return i === undefined ? null : `${x0.label} p50 ${seconds(x0.p50[i])}, p95 ${seconds(x0.p95[i])}`;
    }).filter(Boolean);
    $('latency-caption').textContent = latest.length ? `Latest hour with agents: ${latest.join('; ')}.`
      : 'No agent completed in 48 h.';
  }

  function runsOf(values) {  // the index runs where values are numbers
    const runs = [];
    values.forEach((v, i) => {
      if (typeof v !== 'number') return;
      const run = runs[runs.length - 1];
      if (run && run[run.length - 1] === i - 1) run.push(i);
      else runs.push([i]);
    });
    return runs;
  }

  async function loadBurn() {
    try {
      const today = utcDay();
      const body = await api(`/billing/usage?group_by=hour&from=${today}&to=${today}`);
      state.burnRows = body.rows || [];
      drawBurn();
    } catch (err) {
      if (state.token) $('burn-caption').textContent = problem(err);
    }
  }

  // Today's budget left, hour by hour (UTC, as the budget's day), and where today's pace ends it:
  // the spend so far divided by the part of the day gone.
  function drawBurn() {
    const b = state.budget;
    const rows = state.burnRows;
    if (!b || !rows || $('burn-card').hidden) return;
    const budget = Number(b.daily_budget) || 0;
    const spent = Number(b.today_spend) || 0;
    const midnight = Date.parse(utcDay() + 'T00:00:00Z');
    const hoursGone = Math.min(Math.max((Date.now() - midnight) / 3600000, 1 / 60), 24);
    const projected = (spent / hoursGone) * 24;
    const byHour = new Array(24).fill(0);
    for (const r of rows) byHour[Number(String(r.hour).slice(11, 13))] += r.cost;
    const W = 360, H = 160, L = 62, B = 20, T = 8;
    const top = Math.max(budget, projected, 1e-9);
    const x = (h) => L + ((W - L) * h) / 24;
    const y = (v) => H - B - ((H - B - T) * Math.max(v, 0)) / top;
    const root = chartFrame($('burn-chart'), W, H, 'Budget left today, and the projection to midnight UTC');
    axisY(root, L, T, W, H - B, top);
    const points = [[0, budget]];
    let sum = 0;
    for (let h = 0; h < Math.floor(hoursGone); h += 1) {
      sum += byHour[h];
      points.push([h + 1, budget - sum]);
    }
    points.push([hoursGone, budget - spent]);
    root.append(
      svg('line', { x1: L, y1: y(budget), x2: W, y2: y(budget), class: 'limit' }),
      svg('polyline', { points: points.map(([h, v]) => `${x(h).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
        class: 'left' }, svg('title', {}, `left now: ${money(budget - spent)}`)),
      svg('line', { x1: x(hoursGone), y1: y(budget - spent), x2: x(24), y2: y(budget - projected), class: 'projection' },
        svg('title', {}, `projected left at midnight: ${money(budget - projected)}`)));
    for (const h of [0, 6, 12, 18, 24]) root.append(svg('text', { x: x(h), y: H - 6, class: 'tick' }, `${h}:00`));
    $('burn-card').dataset.projected = String(projected);
    $('burn-caption').textContent = `Spent ${money(spent)} of ${money(budget)} today; at this pace `
      + `${money(projected)} by midnight UTC (${pct(budget > 0 ? (100 * projected) / budget : 0)} of the budget).`;
  }

  // -- agents ---------------------------------------------------------------------------------
  // What an agent was charged: its charged cost once it ended (nothing billed: 0, not its estimate);
  // null while it is live (the estimate is shown then, marked as one).
  function chargedOf(status, charged, cost) {
    if (!TERMINAL.has(status)) return null;
    if (charged != null) return charged;
    return cost != null ? cost : 0;
  }

  function upsertAgent(a, source) {
    const old = state.agents.get(a.agent_id);
    if (!old) {
      state.seq += 1;
      state.agents.set(a.agent_id, { ...a, source, seq: state.seq });
      return;
    }
    // Never step back: news older than what is shown (a list fetched before an event, a spawn's
    // answer arriving after its completion) only fills in what is missing.
    const newer = (RANK[a.status] ?? 0) >= (RANK[old.status] ?? 0);
    const merged = { ...old };
    for (const [k, v] of Object.entries(a)) {
      if (k === 'created_at' && merged.created_at && source !== 'list') continue;  // the daemon's time stays
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

  // Newest first: by creation second, then by arrival (the stream replays and reports spawns in the
  // order they happened; the list is taken oldest first), so agents of the same second are newest first.
  function byNewest(x, y) {
    const second = (a) => String(a.created_at || '').slice(0, 19);
    return second(y).localeCompare(second(x)) || y.seq - x.seq;
  }

  function renderAgents() {
    const rows = [...state.agents.values()].sort(byNewest);
    for (const old of rows.slice(MAX_ROWS * 4)) state.agents.delete(old.agent_id);  // bounded memory
    // The rows are rebuilt: a keyboard user's focus on one of their buttons moves to the new one.
    const focused = document.activeElement;
    const row = focused && focused.closest ? focused.closest('#agents tr[data-agent-id]') : null;
    const again = row ? [row.dataset.agentId, focused.classList.contains('danger') ? 'danger' : 'link'] : null;
    fillTable('agents', rows.slice(0, MAX_ROWS).map(agentRow));
    $('agents-empty').hidden = rows.length > 0;
    if (again) {
      const button = document.querySelector(`#agents tr[data-agent-id="${CSS.escape(again[0])}"] button.${again[1]}`);
      if (button) button.focus();
    }
  }

  function agentRow(a) {
    const actions = el('td');
    if (!TERMINAL.has(a.status) && mayChange(a)) {
      const cancel = el('button', { type: 'button', class: 'danger', text: 'Cancel' });
      cancel.addEventListener('click', () => cancelAgent(a.agent_id, cancel));
      actions.append(cancel);
    }
    const open = el('button', { type: 'button', class: 'link mono', text: a.agent_id,
      'aria-label': `Show agent ${a.agent_id}` });
    open.addEventListener('click', () => openDetail(a.agent_id));
    const row = el('tr', { 'data-agent-id': a.agent_id, 'data-status': a.status, 'data-source': a.source,
      class: state.detail && state.detail.id === a.agent_id ? 'selected' : '' },
    el('td', {}, open),
    el('td', { text: a.model || '–' }),
    el('td', {}, el('span', { class: `badge status-${a.status}`, text: a.status })),
    el('td', { class: 'task', text: a.task || '', title: a.task || '' }),
    costCell(a),
    el('td', { text: clock(a.created_at) }),
    actions);
    row.addEventListener('click', (event) => {  // the whole row opens it too (not its buttons)
      if (!event.target.closest('button')) openDetail(a.agent_id);
    });
    return row;
  }

  function costCell(a) {
    if (a.charged == null) {
      return el('td', { class: 'num cost estimate', text: `est. ${money(a.estimate)}`,
        title: 'Estimated at spawn; charged once it ends' });
    }
    const refunded = a.estimate != null ? Math.max(a.estimate - a.charged, 0) : 0;
    return el('td', { class: 'num cost', 'data-charged': String(a.charged),
      title: `Charged ${money(a.charged)}; estimated ${money(a.estimate)}, refunded ${money(refunded)}` },
    money(a.charged));
  }

  // -- one agent in detail ---------------------------------------------------------------------
  async function openDetail(agentId) {
    state.detail = { id: agentId, view: null };
    $('detail-card').hidden = false;
    $('detail-id').textContent = agentId;
    $('detail-fields').replaceChildren();
    fillTable('detail-deliveries', []);
    $('detail-deliveries-empty').hidden = true;
    setError('detail-error', null);
    showOutput();
    scheduleRender();  // marks the row
    $('detail-title').focus();
    $('detail-card').scrollIntoView({ block: 'nearest' });
    await loadDetail();
  }

  function closeDetail() {
    const shown = state.detail;
    state.detail = null;
    $('detail-card').hidden = true;
    if (!shown) return;
    scheduleRender();
    const opener = document.querySelector(`#agents tr[data-agent-id="${CSS.escape(shown.id)}"] button.link`);
    if (opener) opener.focus();  // back where the keyboard was
  }

  async function loadDetail() {
    const shown = state.detail;
    if (!shown) return;
    const path = `/agent/${encodeURIComponent(shown.id)}`;
    try {
      const [view, deliveries] = await Promise.all([api(path), api(path + '/deliveries')]);
      if (state.detail !== shown) return;
      shown.view = view;
      renderDetail(view);
      renderDeliveries(deliveries.data || []);
      setError('detail-error', null);
    } catch (err) {
      if (state.token && state.detail === shown) setError('detail-error', err);
    }
  }

  function usageText(v) {  // what is known of the tokens: a failed call may have reported none
    if (v.usage) return `${v.usage.input_tokens} in, ${v.usage.output_tokens} out`;
    if (!TERMINAL.has(v.status)) return 'not yet (it has not ended)';
    return v.status === 'completed' ? 'not reported' : `not reported (${v.status} before the provider reported tokens)`;
  }

  function fallbackText(v) {
    if (v.fallbacks == null) return v.status === 'failed' ? 'none answered: the error names each model tried' : '–';
    return v.fallbacks.length ? [v.model, ...v.fallbacks].join(' → ') : `none (${v.model} answered)`;
  }

  function detailFields(v) {  // [label, text, key] in the order shown
    const c = v.charges || {};
    const t = v.timeline || {};
    const served = v.served_by ? `${v.served_by.model} on ${v.served_by.provider}` : '–';
    return [
      ['Task', v.task || '(erased)', 'task'],
      ['Model asked for', v.model, 'model'],
      ['Served by', served, 'served_by'],
      ['Fallbacks', fallbackText(v), 'fallbacks'],
      ['Attempts', String(v.attempts ?? '–'), 'attempts'],
      ['Usage (tokens)', usageText(v), 'usage'],
      ['Estimated', money(c.estimated), 'estimated'],
      ['Charged', c.charged == null ? 'not yet' : money(c.charged), 'charged'],
      ['Refunded', c.refunded == null ? 'not yet' : money(c.refunded), 'refunded'],
      ['Created', dateTime(t.created), 'created'],
      ['Queued', dateTime(t.queued), 'queued'],
      ['Started', dateTime(t.started), 'started'],
      ['Completed', dateTime(t.completed), 'completed'],
      ['Error', v.error || '–', 'error'],
      ['Priority', v.priority, 'priority'],
      ['Key', v.api_key || '–', 'api_key'],
    ];
  }

  function renderDetail(v) {
    $('detail-status').textContent = v.status;
    $('detail-status').className = `badge status-${v.status}`;
    $('detail-card').dataset.status = v.status;
    $('detail-fields').replaceChildren(...detailFields(v).flatMap(([label, text, key]) =>
      [el('dt', { text: label }), el('dd', { text, 'data-field': key, class: key === 'error' && v.error ? 'error' : '' })]));
    showOutput();
  }

  function showOutput() {  // the result once there is one; until then what the stream brought
    const shown = state.detail;
    if (!shown) return;
    const v = shown.view;
    const live = state.outputs.get(shown.id) || '';
    let text = v && v.result != null ? v.result : live;
    if (!text) text = v && TERMINAL.has(v.status) ? `(no output: ${v.status})` : '(no output yet)';
    $('detail-output').textContent = text;
    $('detail-live').textContent = v && v.result == null && live ? '(streaming)' : '';
  }

  function addOutput(agentId, delta) {
    if (typeof delta !== 'string' || !delta) return;
    if (!state.outputs.has(agentId) && state.outputs.size >= OUTPUT_AGENTS) {
      state.outputs.delete(state.outputs.keys().next().value);  // the oldest
    }
    state.outputs.set(agentId, ((state.outputs.get(agentId) || '') + delta).slice(-OUTPUT_MAX));
    if (state.detail && state.detail.id === agentId) showOutput();
  }

  function renderDeliveries(rows) {
    fillTable('detail-deliveries', rows.map((r) => el('tr', { 'data-delivery-id': r.delivery_id, 'data-status': r.status },
      el('td', { text: r.event || '(purged)' }), el('td', { class: 'task', text: r.url, title: r.url }),
      el('td', { text: r.status }), el('td', { class: 'num', text: String(r.attempts) }),
      el('td', { text: r.last_error || '–' }), el('td', { text: dateTime(r.delivered_at) }))));
    $('detail-deliveries-empty').hidden = rows.length > 0;
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
        estimate: body.estimated_cost, created_at: new Date().toISOString() }, 'spawn');
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

  // -- webhooks (a key sees and changes only its own; admin:read and admin:write see all) ------
  async function loadWebhooks() {
    try {
      const body = await api('/webhooks');
      const hooks = body.webhooks || [];
      fillTable('webhooks', hooks.map(webhookRow));
      $('webhooks-empty').hidden = hooks.length > 0;
      setError('webhooks-error', null);
    } catch (err) {
      if (state.token) setError('webhooks-error', err);
    }
  }

  function webhookRow(h) {
    const actions = el('td');
    if (can('agents:write')) {
      const test = el('button', { type: 'button', class: 'link', text: 'Send test', 'aria-label': `Send a test event to ${h.url}` });
      test.addEventListener('click', () => webhookAction(h, 'test', test));
      const del = el('button', { type: 'button', class: 'danger', text: 'Delete', 'aria-label': `Delete the webhook to ${h.url}` });
      del.addEventListener('click', () => webhookAction(h, 'delete', del));
      actions.append(test, del);
    }
    return el('tr', { 'data-webhook-id': h.webhook_id, 'data-status': h.status },
      el('td', { class: 'mono', text: h.webhook_id }), el('td', { class: 'task', text: h.url, title: h.url }),
      el('td', { text: (h.events || []).join(', ') }), el('td', { text: h.status }),
      el('td', { text: dateTime(h.last_triggered) }), actions);
  }

  async function webhookAction(h, action, button) {
    if (action === 'delete' && button.dataset.armed !== '1') {  // two clicks, like Revoke
      button.dataset.armed = '1';
      button.textContent = 'Click again to delete';
      return;
    }
    button.disabled = true;
    $('webhooks-result').textContent = '';
    const path = `/webhooks/${encodeURIComponent(h.webhook_id)}`;
    try {
      if (action === 'test') {
        await api(path + '/test', { method: 'POST' });
        $('webhooks-result').textContent = `Test event queued for ${h.url}.`;
      } else {
        await api(path, { method: 'DELETE' });
        $('webhooks-result').textContent = `Webhook ${h.webhook_id} deleted.`;
      }
      setError('webhooks-error', null);
      await loadWebhooks();
    } catch (err) {
      if (state.token) setError('webhooks-error', err);
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
        noteBudget(resp);
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
    if (type === 'agent.output' && d.agent_id) {
      addOutput(d.agent_id, d.delta);
    } else if (type.startsWith('agent.') && d.agent_id) {
      upsertAgent({ agent_id: d.agent_id, model: d.model, status: d.status, task: d.task,
        estimate: d.estimated_cost, charged: chargedOf(d.status, null, d.cost),
        created_at: type === 'agent.spawned' ? payload.timestamp : null }, 'stream');
      if (!state.agents.get(d.agent_id).created_at) state.agents.get(d.agent_id).created_at = payload.timestamp;
      scheduleRender();
      if (TERMINAL.has(d.status)) {
        state.outputs.delete(d.agent_id);  // the result has it all now
        refreshSoon();
      }
      if (state.detail && state.detail.id === d.agent_id) loadDetail();
    } else if (tasks && (type.startsWith('task.') || type.startsWith('escalation.'))) {
      tasks.onEvent(type, d);
    } else if (type.startsWith('budget.')) {
      const level = type.slice('budget.'.length);
      showAlertLevel(d.budget_alert_level || level);
      refreshSoon();
    }
  }

  // -- Settings -> API ------------------------------------------------------------------------
  async function loadKeys() {
    try {
      // Each key with its budget's standing, and what it spent this month (the ledger, by key).
      const [body, usage] = await Promise.all([api('/keys'),
        can('billing:read') ? api('/billing/usage?group_by=key') : Promise.resolve(null)]);
      const spent = new Map(((usage && usage.rows) || []).map((r) => [r.key_id, r.cost]));
      fillTable('keys', (body.keys || []).map((k) => keyRow(k, usage ? spent.get(k.key_id) || 0 : null)));
      setError('keys-error', null);
    } catch (err) {
      if (state.token) setError('keys-error', err);
    }
  }

  function limitsSummary(k) {
    const parts = [];
    if (Array.isArray(k.models)) parts.push('models: ' + k.models.join(', '));
    if (k.max_concurrency != null) parts.push(`at most ${k.max_concurrency} live`);
    if (k.limits) parts.push('requests: ' + Object.entries(k.limits).map(([c, n]) => `${c} ${n}`).join(', '));
    if (k.expires_at) parts.push('expires ' + dateTime(k.expires_at));
    const meta = metadataText(k.metadata);
    if (meta) parts.push(meta);
    return parts.join(' · ') || '–';
  }

  function keyRow(k, monthSpend) {
    const b = k.budget;
    const actions = el('td');
    if (can(ADMIN) && k.status === 'active') {  // a revoked or expired key's limits cannot change (400)
      const edit = el('button', { type: 'button', class: 'link', text: 'Limits', 'aria-label': `Edit the limits of ${k.name}` });
      edit.addEventListener('click', () => openEdit(k.key_id));
      const revoke = el('button', { type: 'button', class: 'danger', text: 'Revoke' });
      revoke.addEventListener('click', () => revokeKey(k.key_id, revoke));
      actions.append(edit, revoke);
    }
    return el('tr', { 'data-key-id': k.key_id, 'data-status': k.status },
      el('td', { text: k.name }), el('td', { class: 'mono', text: k.key_id }),
      el('td', { text: (k.scopes || []).join(', ') }),
      el('td', {}, el('span', { class: `badge key-${k.status}`, text: k.status })),
      el('td', { class: 'budget', text: b ? `${money(b.max_budget)} ${PERIODS[b.budget_duration] || b.budget_duration}` : '–' }),
      el('td', { class: 'num spent', text: b ? money(b.spend) : '–' }),
      el('td', { class: 'num remaining', text: b ? money(b.budget_remaining) : '–' }),
      el('td', { class: 'num month-spend', text: monthSpend == null ? '–' : money(monthSpend) }),
      el('td', { class: 'resets', text: !b ? '–' : b.resets_at ? dateTime(b.resets_at) : 'never' }),
      el('td', { class: 'limits', text: limitsSummary(k) }),
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

  // The limit fields: built once per form from LIMIT_FIELDS, read back as the API's JSON.
  function buildLimitFields(fieldset, prefix) {
    for (const f of LIMIT_FIELDS) {
      const id = `${prefix}-${f.name.replace(/_/g, '-')}`;
      const input = f.type === 'select'
        ? el('select', { id }, ...f.options.map(([value, text]) => el('option', { value, text })))
        : el('input', { id, type: f.type, ...(f.attrs || {}) });
      input.dataset.field = f.name;
      fieldset.append(el('div', { class: 'field' }, el('label', { for: id, text: f.label }), input));
    }
  }

  function limitInputs(prefix) {
    return Object.fromEntries(LIMIT_FIELDS.map((f) => [f.name, $(`${prefix}-${f.name.replace(/_/g, '-')}`)]));
  }

  function metadataText(meta) {
    const entries = Object.entries(meta || {});
    if (!entries.length) return '';
    const plain = entries.every(([k, v]) => typeof v === 'string' && !/[,=]/.test(k + v));
    return plain ? entries.map(([k, v]) => `${k}=${v}`).join(', ') : JSON.stringify(meta);
  }

  function localInput(iso) {  // an ISO time as a datetime-local value, in this browser's zone
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  // A field's text as the API's value; '' is null (PATCH: clear it).
  function limitValue(name, text) {
    const t = text.trim();
    if (!t) return null;
    switch (name) {
      case 'max_budget':
      case 'max_concurrency': {
        const n = Number(t);
        if (!Number.isFinite(n)) throw new Error(`${name} must be a number`);
        return n;
      }
      case 'models':
        return t.split(',').map((m) => m.trim()).filter(Boolean);
      case 'expires_at': {
        const d = new Date(t);
        if (Number.isNaN(d.getTime())) throw new Error('expires_at must be a date and time');
        return d.toISOString();
      }
      case 'metadata': {
        if (t.startsWith('{')) {
          try {
            return JSON.parse(t);
          } catch (_) {
            throw new Error('metadata is not valid JSON');
          }
        }
        const meta = {};
        for (const pair of t.split(',').map((x) => x.trim()).filter(Boolean)) {
          const eq = pair.indexOf('=');
          if (eq < 1) throw new Error(`metadata: write key=value pairs ("${pair}" has no key=)`);
          meta[pair.slice(0, eq).trim()] = pair.slice(eq + 1).trim();
        }
        return meta;
      }
      default:
        return t;
    }
  }

  function formTexts(prefix) {
    return Object.fromEntries(Object.entries(limitInputs(prefix)).map(([name, input]) => [name, input.value]));
  }

  // The limits to send: every filled field (create), or every changed one (edit, where '' clears).
  // max_budget and budget_duration go together: the daemon checks them as a pair.
  function limitsBody(texts, initial) {
    const body = {};
    const differs = (name) => texts[name].trim() !== initial[name].trim();
    for (const f of LIMIT_FIELDS) {
      if (f.name === 'max_budget' || f.name === 'budget_duration') continue;
      const value = limitValue(f.name, texts[f.name]);
      if (initial ? differs(f.name) : value !== null) body[f.name] = value;
    }
    const budget = limitValue('max_budget', texts.max_budget);
    if (initial ? differs('max_budget') || differs('budget_duration') : budget !== null) {
      body.max_budget = budget;
      body.budget_duration = budget === null ? null : texts.budget_duration;
    }
    return body;
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
    let limits;
    try {
      limits = limitsBody(formTexts('key'), null);
    } catch (err) {
      $('key-error').textContent = err.message;
      return;
    }
    const button = $('key-submit');
    button.disabled = true;
    try {
      const body = await api('/keys', { method: 'POST', body: { name, scopes, ...limits } });
      $('new-key-id').textContent = body.key_id;
      $('new-key-token').textContent = body.token;
      $('new-key-secret').textContent = body.secret;
      $('new-key-webhook-secret').textContent = body.webhook_secret || '';
      $('new-key').hidden = false;
      $('new-key-copy').textContent = 'Copy token';
      $('key-name').value = '';
      for (const input of Object.values(limitInputs('key'))) input.value = input.tagName === 'SELECT' ? '1d' : '';
      await loadKeys();
    } catch (err) {
      if (state.token) setError('key-error', err);
    } finally {
      button.disabled = false;
    }
  }

  async function openEdit(keyId) {
    setError('keys-error', null);
    try {
      const key = await api(`/keys/${encodeURIComponent(keyId)}`);
      const b = key.budget || {};
      const initial = {
        max_budget: (key.max_budget ?? b.max_budget) != null ? String(key.max_budget ?? b.max_budget) : '',
        budget_duration: key.budget_duration || b.budget_duration || '1d',
        models: Array.isArray(key.models) ? key.models.join(', ') : '',
        max_concurrency: key.max_concurrency != null ? String(key.max_concurrency) : '',
        expires_at: localInput(key.expires_at),
        metadata: metadataText(key.metadata),
      };
      const inputs = limitInputs('edit');
      for (const [name, text] of Object.entries(initial)) inputs[name].value = text;
      state.editing = { key_id: key.key_id, initial: formTexts('edit') };
      $('key-edit-name').textContent = key.name;
      $('key-edit-id').textContent = key.key_id;
      $('key-edit-error').textContent = '';
      $('key-edit-result').textContent = '';
      $('key-edit').hidden = false;
      inputs.max_budget.focus();
    } catch (err) {
      if (state.token) setError('keys-error', err);
    }
  }

  function closeEdit() {
    state.editing = null;
    $('key-edit').hidden = true;
    for (const input of Object.values(limitInputs('edit'))) input.value = '';
  }

  async function saveEdit(event) {
    event.preventDefault();
    const editing = state.editing;
    if (!editing) return;
    $('key-edit-error').textContent = '';
    $('key-edit-result').textContent = '';
    let body;
    try {
      body = limitsBody(formTexts('edit'), editing.initial);
    } catch (err) {
      $('key-edit-error').textContent = err.message;
      return;
    }
    if (!Object.keys(body).length) {
      $('key-edit-result').textContent = 'Nothing changed.';
      return;
    }
    const button = $('key-edit-submit');
    button.disabled = true;
    try {
      await api(`/keys/${encodeURIComponent(editing.key_id)}`, { method: 'PATCH', body });
      if (state.editing === editing) {
        editing.initial = formTexts('edit');
        $('key-edit-result').textContent = 'Saved.';
      }
      await loadKeys();
      if (state.me && editing.key_id === state.me.key_id) await loadMe();
    } catch (err) {
      if (state.token) setError('key-edit-error', err);
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
  // The Tasks view (tasks.js, loaded first) gets this file's helpers; the key stays in here.
  const tasks = window.J1mskyTasks ? window.J1mskyTasks({ $, api, el, fillTable, money, dateTime, can, setError }) : null;

  function init() {
    $('login-form').addEventListener('submit', login);
    $('spawn-form').addEventListener('submit', spawn);
    $('key-form').addEventListener('submit', createKey);
    $('key-edit-form').addEventListener('submit', saveEdit);
    $('key-edit-cancel').addEventListener('click', closeEdit);
    $('detail-close').addEventListener('click', closeDetail);
    $('detail-card').addEventListener('keydown', (event) => {
      if (event.key === 'Escape') closeDetail();
    });
    buildLimitFields($('key-limits'), 'key');
    buildLimitFields($('edit-limits'), 'edit');
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
