/* j1mskyd dashboard: the Tasks view (docs/dashboard.md, docs/tasks.md).  Plain ES2020.
 *
 * Loaded before app.js, it only defines a factory: app.js calls it with its own helpers (the
 * API client holding the key, the DOM helpers, the scope check), so the key never leaves app.js's
 * closure and this file adds nothing global but the factory.  Everything the API returns is written
 * with textContent.  The list and the pending escalations are fetched when the view opens, with the
 * other panels (Refresh, every 5 minutes) and after a decision; in between they follow the task.*
 * and escalation.* events of the stream app.js already reads.  A task open in detail is fetched
 * again after its own events, at most once a second.
 */
window.J1mskyTasks = (kit) => {
  'use strict';

  const { $, api, el, fillTable, money, dateTime, can, setError } = kit;
  const MAX_ROWS = 50;
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  const DETAIL_EVERY_MS = 1000;  // a task in detail is fetched again at most this often after its events
  // stepCosts: task id -> (step id -> what the step was charged), from the task.progress events of
  // ended steps (the stream replays the event log at connect): a listed task's cost without fetching it.
  // decided: escalations known to be decided (an event, a decision): a list fetched before then
  // cannot bring them back as pending.
  const state = { tasks: new Map(), pending: new Map(), decided: new Set(), stepCosts: new Map(), detail: null,
    detailTimer: null, lastDetail: 0 };

  function progressText(p) {
    if (!p) return '–';
    return `${p.completed_steps}/${p.total_steps} (${Math.round(p.percentage)}%)`;
  }

  function progressCell(p) {
    const bar = el('progress', { max: '100', value: String(p ? p.percentage : 0), 'aria-label': 'progress' });
    return el('td', { class: 'progress' }, bar, el('span', { class: 'muted', text: ' ' + progressText(p) }));
  }

  function costOf(t) {  // the full view's charged cost, else the sum of its ended steps' (a summary has none)
    if (t.cost && typeof t.cost.charged === 'number') return t.cost.charged;
    const steps = state.stepCosts.get(t.id);
    return steps ? [...steps.values()].reduce((a, b) => a + b, 0) : null;
  }

  function noteStep(taskId, step) {
    if (!step || !step.id || step.status === 'running' || typeof step.cost !== 'number') return;
    if (!state.stepCosts.has(taskId)) state.stepCosts.set(taskId, new Map());
    state.stepCosts.get(taskId).set(step.id, step.cost);
  }

  // -- the list -------------------------------------------------------------------------------
  // A status never steps back: a list (or a task) fetched just before an event cannot undo it.  An
  // ended task stays ended, and an older view (updated_at) does not replace a newer one's status.
  function upsert(t) {
    if (!t || !t.id) return;
    const known = state.tasks.get(t.id) || {};
    const stale = known.status && ((TERMINAL.has(known.status) && !TERMINAL.has(t.status))
      || String(known.updated_at || '') > String(t.updated_at || ''));
    const keep = stale ? { status: known.status, progress: known.progress, updated_at: known.updated_at } : {};
    state.tasks.set(t.id, { ...known, ...t, ...keep, cost: t.cost || known.cost });
  }

  function render() {
    const rows = [...state.tasks.values()]
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)) || String(b.id).localeCompare(a.id))
      .slice(0, MAX_ROWS);
    fillTable('tasks', rows.map(taskRow));
    $('tasks-empty').hidden = rows.length > 0;
  }

  function taskRow(t) {
    const open = el('button', { type: 'button', class: 'link mono', text: t.id, 'aria-label': `Open task ${t.title}` });
    open.addEventListener('click', () => openTask(t.id));
    const cost = costOf(t);
    return el('tr', { 'data-task-id': t.id, 'data-status': t.status },
      el('td', {}, open), el('td', { class: 'task', text: t.title || '', title: t.title || '' }),
      el('td', { text: t.type || '' }),
      el('td', {}, el('span', { class: `badge status-${t.status}`, text: t.status })),
      progressCell(t.progress),
      el('td', { text: (t.progress && t.progress.current_step) || '–' }),
      el('td', { class: 'num cost', text: cost === null ? '–' : money(cost) }),
      el('td', { text: dateTime(t.updated_at || t.created_at) }));
  }

  async function loadTasks() {
    try {
      const body = await api(`/tasks?limit=${MAX_ROWS}&sort_by=created_at&sort_order=desc`);
      for (const t of body.data || body.tasks || []) upsert(t);
      setError('tasks-error', null);
    } catch (err) {
      setError('tasks-error', err);
    }
    render();
  }

  // -- pending escalations --------------------------------------------------------------------
  async function loadPending() {
    try {
      const body = await api(`/escalations?status=pending_approval&limit=${MAX_ROWS}`);
      state.pending.clear();
      for (const e of body.data || body.escalations || []) {
        if (!state.decided.has(e.escalation_id)) state.pending.set(e.escalation_id, e);
      }
      setError('escalations-error', null);
    } catch (err) {
      setError('escalations-error', err);
    }
    renderPending();
  }

  function renderPending() {
    const rows = [...state.pending.values()].filter((e) => e.status === 'pending_approval');
    fillTable('escalations', rows.map((e) => escalationRow(e, true)));
    $('escalations-empty').hidden = rows.length > 0;
  }

  // One escalation as a row: the pending list (the decision buttons first, for an admin:write key,
  // so that they are in sight on a narrow screen) and a task's detail (no such column).
  function escalationRow(e, withActions) {
    const actions = el('td', { class: 'actions' });
    if (e.status === 'pending_approval' && can('admin:write')) {
      for (const [decision, label, cls] of [['approved', 'Approve', 'approve'], ['rejected', 'Reject', 'danger']]) {
        const button = el('button', { type: 'button', class: cls, 'data-decision': decision, text: label,
          'aria-label': `${label} escalation ${e.escalation_id}` });
        button.addEventListener('click', () => decide(e, decision, button));
        actions.append(button);
      }
    }
    return el('tr', { 'data-escalation-id': e.escalation_id, 'data-status': e.status }, ...(withActions ? [actions] : []),
      el('td', { class: 'mono', text: e.escalation_id }), el('td', { class: 'mono', text: e.task_id }),
      el('td', { text: e.role || '–' }),
      el('td', { text: `${e.original_model || '?'} → ${e.target_model || '?'}` }),
      el('td', { class: 'num', text: money(e.estimated_cost) }),
      el('td', { class: 'task reason', text: e.reason || '', title: e.reason || '' }),
      el('td', {}, el('span', { class: `badge esc-${e.status}`, text: e.status })),
      el('td', { text: e.approved_by ? `${e.approved_by} ${dateTime(e.approved_at)}` : dateTime(e.submitted_at) }));
  }

  async function decide(e, decision, button) {
    for (const b of button.parentNode.querySelectorAll('button')) b.disabled = true;
    $('escalations-result').textContent = '';
    const reason = $('escalation-reason').value.trim();
    try {
      const decided = await api(`/escalations/${encodeURIComponent(e.escalation_id)}/decision`, {
        method: 'POST', body: { decision, ...(reason ? { reason } : {}) } });
      state.pending.set(e.escalation_id, decided);
      state.decided.add(e.escalation_id);
      $('escalations-result').textContent = `Escalation ${e.escalation_id} ${decided.status}.`;
      setError('escalations-error', null);
      renderPending();
      await Promise.all([loadPending(), state.detail === e.task_id ? loadDetail() : null]);
    } catch (err) {
      setError('escalations-error', err);
      for (const b of button.parentNode.querySelectorAll('button')) b.disabled = false;
    }
  }

  // -- one task -------------------------------------------------------------------------------
  function openTask(id) {
    state.detail = id;
    $('task-card').hidden = false;
    $('task-title').focus();
    loadDetail();
  }

  function closeTask() {
    const id = state.detail;
    state.detail = null;
    clearTimeout(state.detailTimer);
    state.detailTimer = null;
    $('task-card').hidden = true;
    const back = id && document.querySelector(`#tasks tr[data-task-id="${CSS.escape(id)}"] button`);
    if (back) back.focus();
  }

  function field(name, label, value) {
    return [el('dt', { text: label }), el('dd', { 'data-field': name, text: value == null || value === '' ? '–' : String(value) })];
  }

  async function loadDetail() {
    const id = state.detail;
    if (!id) return;
    state.lastDetail = Date.now();
    try {
      const t = await api(`/tasks/${encodeURIComponent(id)}`);
      if (state.detail !== id) return;
      upsert(t);
      render();
      showDetail(t);
      setError('task-error', null);
    } catch (err) {
      if (state.detail === id) setError('task-error', err);
    }
  }

  function showDetail(t) {
    $('task-id').textContent = t.id;
    $('task-name').textContent = t.title;
    $('task-status').textContent = t.status;
    $('task-status').className = `badge status-${t.status}`;
    const c = t.cost || {};
    const m = t.metadata || {};
    $('task-fields').replaceChildren(
      ...field('type', 'Type', t.type), ...field('priority', 'Priority', t.priority),
      ...field('progress', 'Progress', progressText(t.progress)),
      ...field('current_step', 'Current step', t.progress && t.progress.current_step),
      ...field('charged', 'Charged', money(c.charged)), ...field('estimated', 'Estimated', money(c.estimated)),
      ...field('refunded', 'Refunded', money(c.refunded)), ...field('model_used', 'Model used', m.model_used),
      ...field('created', 'Created', dateTime(t.created_at)), ...field('updated', 'Updated', dateTime(t.updated_at)),
      ...field('error', 'Error', t.error), ...field('description', 'Description', t.description));
    const steps = [...(t.steps || [])].sort((a, b) => a.seq - b.seq);
    fillTable('task-steps', steps.flatMap(stepRows));
    $('task-steps-empty').hidden = steps.length > 0;
    fillTable('task-escalations', (t.escalations || []).map((e) => escalationRow(e, false)));
    $('task-escalations-empty').hidden = (t.escalations || []).length > 0;
  }

  function stepRows(s) {
    const model = s.served_model && s.served_model !== s.model ? `${s.model} → ${s.served_model}` : (s.model || '–');
    const tokens = s.input_tokens == null ? '–' : `${s.input_tokens} in, ${s.output_tokens} out`;
    const row = el('tr', { 'data-step-id': s.id, 'data-status': s.status },
      el('td', { class: 'num', text: String(s.seq) }), el('td', { text: s.role }), el('td', { text: s.kind }),
      el('td', { class: 'mono model', text: model }),
      el('td', {}, el('span', { class: `badge status-${s.status}`, text: s.status })),
      el('td', { class: 'verdict', text: s.verdict ? s.verdict + (s.reasons ? `: ${s.reasons}` : '') : '–' }),
      el('td', { class: 'num cost', text: money(s.cost) }), el('td', { class: 'num', text: tokens }),
      el('td', { class: 'num', text: typeof s.duration_s === 'number' ? `${s.duration_s.toFixed(1)} s` : '–' }));
    const output = el('tr', { class: 'step-output', 'data-step-id': s.id },
      el('td', { colspan: '9' }, el('pre', { class: 'output', text: s.output || '(no output yet)' })));
    return [row, output];
  }

  // -- the stream -----------------------------------------------------------------------------
  function onEvent(type, data) {
    if (type.startsWith('task.')) {
      if (type === 'task.progress') noteStep(data.id, data.step);
      upsert(data);
      render();
      if (state.detail === data.id) detailSoon();
    } else if (type.startsWith('escalation.')) {
      if (data.status !== 'pending_approval') state.decided.add(data.escalation_id);
      if (!state.decided.has(data.escalation_id) || data.status !== 'pending_approval') {
        state.pending.set(data.escalation_id, data);
      }
      renderPending();
      if (state.detail === data.task_id) detailSoon();
    }
  }

  function detailSoon() {  // a burst of step events: one fetch, at most once a second
    if (state.detailTimer) return;
    const wait = Math.max(50, state.lastDetail + DETAIL_EVERY_MS - Date.now());
    state.detailTimer = setTimeout(() => {
      state.detailTimer = null;
      loadDetail();
    }, wait);
  }

  function load() {
    return Promise.all([loadTasks(), loadPending(), state.detail ? loadDetail() : null]);
  }

  function clear() {
    state.tasks.clear();
    state.pending.clear();
    state.decided.clear();
    state.stepCosts.clear();
    closeTask();
    for (const id of ['tasks', 'escalations', 'task-steps', 'task-escalations']) fillTable(id, []);
  }

  function applyScopes() {
    $('escalation-decide').hidden = !can('admin:write');
    renderPending();
  }

  $('task-close').addEventListener('click', closeTask);
  $('task-card').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') closeTask();
  });
  return { load, onEvent, clear, applyScopes };
};
