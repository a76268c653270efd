// kessai's operator UI: counts by state, the saga list, one saga's story.
//
// Plain browser JavaScript, no build step. Every datum comes from the coordinator's
// JSON API under /v1 with the bearer token typed into the token box (kept in
// sessionStorage: gone when the tab closes). Text from the API is only ever set as
// text (textContent), never parsed as HTML; positions are set through the CSSOM, which
// the page's content security policy allows.
'use strict';

(() => {
  const TOKEN_KEY = 'kessai.token';
  const STATES = ['trying', 'confirming', 'cancelling', 'confirmed', 'cancelled'];
  const COUNTS_EVERY_MS = 5000;
  const SAGA_EVERY_MS = 3000;
  const PAGE = 50;
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  // Timeline kinds that answer a command (the end of a waterfall bar).
  const ANSWERS = new Set([
    'try_ok', 'try_rejected', 'try_failed',
    'confirm_ok', 'confirm_failed',
    'cancel_ok', 'cancel_failed',
  ]);

  const $ = (id) => document.getElementById(id);

  /** A new element: `props` sets attributes (`text` the text, `class` the class). */
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  // ---- formatting ---------------------------------------------------------

  function fmtTime(ms) {
    if (ms === undefined || ms === null) return '—';
    return new Date(ms).toISOString().replace('T', ' ').replace('Z', '');
  }

  function fmtDuration(ms) {
    if (ms === undefined || ms === null || !Number.isFinite(ms)) return '—';
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    const min = Math.floor(ms / 60000);
    if (min < 60) return min + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
    return Math.floor(min / 60) + ' h ' + (min % 60) + ' min';
  }

  const fmtOffset = (ms) => '+' + fmtDuration(Math.max(0, ms));
  const fmtCount = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '–');

  /** Who caused a timeline entry: `"timer"`, `{"named_operator": "x"}`, … */
  function fmtActor(actor) {
    if (actor === undefined || actor === null) return '';
    if (typeof actor === 'string') return actor;
    const [k, v] = Object.entries(actor)[0] || [];
    if (k === 'named_operator') return 'operator ' + v;
    return k ? k + ' ' + v : '';
  }

  function stateBadge(state, extra) {
    return el('span', { class: 'badge state-' + state, 'data-state': state, text: extra || state });
  }

  // ---- the API ------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    toString() {
      return (this.status ? this.status + ' ' : '') + this.code + ': ' + this.message;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  /** A call to the coordinator's API: the parsed JSON, or an ApiError with its message. */
  async function api(path, options) {
    const opts = options || {};
    const t = token();
    if (!t) throw new ApiError(0, 'no_token', 'enter an API token (scope read) in the box at the top right');
    const headers = { authorization: 'Bearer ' + t, accept: 'application/json' };
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method: opts.method || 'GET',
        headers,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      throw new ApiError(0, 'unreachable', 'the coordinator did not answer (' + e.message + ')');
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const err = body && body.error;
      throw new ApiError(
        response.status,
        err && err.code ? err.code : 'http_' + response.status,
        err && err.message ? err.message : response.statusText || 'no message',
      );
    }
    return body;
  }

  // ---- errors -------------------------------------------------------------

  // One line per source (the counts poll, the current view), so a poll that recovers
  // does not hide the view's error or the other way round.
  const errors = new Map();

  function setError(source, error) {
    if (error) errors.set(source, error instanceof ApiError ? error.toString() : String(error));
    else errors.delete(source);
    const banner = $('error');
    banner.replaceChildren(...[...errors.values()].map((m) => el('div', { text: m })));
    banner.hidden = errors.size === 0;
  }

  // ---- counts -------------------------------------------------------------

  let countsTimer = null;

  async function refreshCounts() {
    clearTimeout(countsTimer);
    countsTimer = setTimeout(refreshCounts, COUNTS_EVERY_MS);
    if (!token()) return;
    try {
      const stats = await api('/v1/stats');
      const sagas = stats.sagas || {};
      for (const k of [...STATES, 'stuck']) $('count-' + k).textContent = fmtCount(sagas[k]);
      $('tile-stuck').classList.toggle('alarm', (sagas.stuck || 0) > 0);
      $('counts-admission').textContent =
        'unfinished ' + fmtCount(stats.unfinished) + ' / bound ' + fmtCount(stats.admission_bound) +
        (stats.refused ? ' · refused ' + fmtCount(stats.refused) : '');
      $('counts-updated').textContent = 'updated ' + fmtTime(Date.now()).slice(11, 19) + ' UTC';
      $('counts').classList.remove('stale');
      setError('counts', null);
    } catch (e) {
      $('counts').classList.add('stale');
      setError('counts', 'counts: ' + e);
    }
  }

  // ---- routing ------------------------------------------------------------

  // Bumped on every navigation: an answer for an older view is dropped.
  let generation = 0;
  let sagaTimer = null;

  function parseHash() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const [path, query] = hash.split('?');
    const m = path.match(/^\/saga\/([^/]+)$/);
    if (m) return { view: 'saga', id: decodeURIComponent(m[1]) };
    return { view: 'list', params: new URLSearchParams(query || '') };
  }

  function show(view) {
    $('list-view').hidden = view !== 'list';
    $('saga-view').hidden = view !== 'saga';
  }

  function route() {
    generation += 1;
    clearTimeout(sagaTimer);
    setError('view', null);
    const r = parseHash();
    if (r.view === 'saga') {
      show('saga');
      loadSaga(r.id, generation, true);
    } else {
      show('list');
      loadList(r.params, generation);
    }
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  // ---- the list -----------------------------------------------------------

  let listCursor = null;
  let listQuery = null;
  let listWhat = '';

  function listHash(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
    const s = q.toString();
    return '#/' + (s ? '?' + s : '');
  }

  async function loadList(params, gen) {
    $('filter-state').value = params.get('state') || '';
    $('filter-stuck').checked = params.get('stuck') === 'true';
    $('filter-kind').value = params.get('kind') || '';
    const q = new URLSearchParams();
    for (const k of ['state', 'stuck', 'kind', 'client', 'payment_id']) {
      if (params.get(k)) q.set(k, params.get(k));
    }
    q.set('limit', String(PAGE));
    listQuery = q;
    listCursor = null;
    listWhat = params.get('payment_id')
      ? 'Sagas of payment “' + params.get('payment_id') + '”'
      : 'Sagas' + describeFilters(params);
    $('list-caption').textContent = listWhat + ' — loading…';
    $('saga-rows').replaceChildren();
    $('list-more').hidden = true;
    if (!token()) {
      $('list-caption').textContent = 'Enter an API token (scope read) to see the sagas.';
      return;
    }
    await loadPage(gen);
  }

  function describeFilters(params) {
    const parts = [];
    if (params.get('state')) parts.push('state ' + params.get('state'));
    if (params.get('stuck') === 'true') parts.push('stuck');
    if (params.get('kind')) parts.push('kind ' + params.get('kind'));
    return parts.length ? ' (' + parts.join(', ') + ')' : '';
  }

  async function loadPage(gen) {
    const what = listWhat;
    const q = new URLSearchParams(listQuery);
    if (listCursor) q.set('cursor', listCursor);
    try {
      const page = await api('/v1/sagas?' + q.toString());
      if (gen !== generation) return;
      const now = Date.now();
      for (const s of page.sagas) $('saga-rows').append(sagaRow(s, now));
      listCursor = page.next_cursor;
      $('list-more').hidden = !listCursor;
      const n = $('saga-rows').children.length;
      $('list-caption').textContent = n === 0
        ? what + ': none.'
        : what + ': ' + n + (listCursor ? '+' : '') + ', newest first.';
    } catch (e) {
      if (gen !== generation) return;
      $('list-caption').textContent = what + ': could not load.';
      setError('view', e);
    }
  }

  function sagaRow(s, now) {
    const duration = s.finished_at_ms !== null && s.finished_at_ms !== undefined
      ? fmtDuration(s.finished_at_ms - s.created_at_ms)
      : 'running ' + fmtDuration(now - s.created_at_ms);
    const state = el('td', null, stateBadge(s.state));
    if (s.stuck) state.append(' ', stateBadge('stuck'));
    return el('tr', { 'data-testid': 'saga-row', 'data-saga-id': s.id, 'data-state': s.state },
      el('td', { class: 'mono' },
        el('a', { href: '#/saga/' + s.id, 'data-testid': 'saga-link', text: s.id })),
      el('td', { text: s.kind }),
      state,
      el('td', { text: s.client || '—' }),
      el('td', { class: 'mono', text: fmtTime(s.created_at_ms) }),
      el('td', { class: 'num', text: duration }),
      el('td', { class: 'reason-cell', title: s.reason || '', text: s.reason || '' }));
  }

  // ---- one saga -----------------------------------------------------------

  let currentSaga = null;

  async function loadSaga(id, gen, first) {
    if (first) {
      currentSaga = null;
      $('saga-id').textContent = id;
      for (const t of ['branch-rows', 'timeline-rows', 'retry-rows', 'waterfall', 'saga-facts']) {
        $(t).replaceChildren();
      }
      $('saga-state').textContent = '';
      $('cancel-reason').hidden = true;
      $('retry-result').textContent = '';
    }
    if (!UUID.test(id)) {
      setError('view', 'not a saga id: ' + id);
      return;
    }
    try {
      const saga = await api('/v1/sagas/' + encodeURIComponent(id));
      if (gen !== generation) return;
      currentSaga = saga;
      renderSaga(saga);
      setError('view', null);
      if (!isOver(saga.state)) {
        sagaTimer = setTimeout(() => {
          if (gen === generation) loadSaga(id, gen, false);
        }, SAGA_EVERY_MS);
      }
    } catch (e) {
      if (gen !== generation) return;
      setError('view', e);
      if (e.status === 0 || e.status >= 500) {
        sagaTimer = setTimeout(() => {
          if (gen === generation) loadSaga(id, gen, false);
        }, SAGA_EVERY_MS);
      }
    }
  }

  function isOver(state) {
    return state === 'confirmed' || state === 'cancelled';
  }

  function renderSaga(saga) {
    const now = Date.now();
    const end = saga.finished_at_ms !== null && saga.finished_at_ms !== undefined ? saga.finished_at_ms : now;
    const participant = new Map(saga.branches.map((b) => [b.branch_id, b.participant]));

    $('saga-id').textContent = saga.id;
    const badge = $('saga-state');
    badge.className = 'badge state-' + saga.state;
    badge.setAttribute('data-state', saga.state);
    badge.textContent = saga.state;
    $('saga-stuck').hidden = !saga.stuck;
    document.title = 'kessai · ' + saga.state + ' · ' + saga.id.slice(0, 8);

    const cancelled = saga.state === 'cancelling' || saga.state === 'cancelled';
    $('cancel-reason').hidden = !(cancelled && saga.reason);
    $('cancel-reason-label').textContent = saga.state === 'cancelling' ? 'Cancelling because' : 'Cancelled because';
    $('cancel-reason-text').textContent = saga.reason || '';

    renderFacts(saga, end, now);

    // Left enabled on a finished saga too: the API then says why there is nothing to do.
    const retry = $('retry-button');
    retry.classList.toggle('quiet', isOver(saga.state));
    retry.title = isOver(saga.state)
      ? 'the saga is over: nothing to resend'
      : 'resend now what the saga waits on (needs the admin scope)';

    $('branch-rows').replaceChildren(...saga.branches.map((b) =>
      el('tr', { 'data-testid': 'branch-row', 'data-participant': b.participant, 'data-state': b.state },
        el('td', { class: 'num', text: b.branch_id }),
        el('td', { class: 'participant', text: b.participant }),
        el('td', null, stateBadge(b.state)),
        el('td', { class: 'num', text: b.attempt || '—' }),
        el('td', { class: 'mono', text: b.resend_at_ms ? fmtTime(b.resend_at_ms) : '—' }),
        el('td', { class: 'error-text', 'data-testid': 'branch-error', text: b.last_error || '' }))));

    renderWaterfall(saga, participant, end);
    renderRetries(saga, participant);

    $('timeline-rows').replaceChildren(...saga.timeline.map((e) =>
      el('tr', { 'data-testid': 'timeline-row', 'data-kind': e.kind, class: 'kind-' + e.kind },
        el('td', { class: 'num', text: fmtOffset(e.at_ms - saga.created_at_ms) }),
        el('td', { class: 'mono', text: fmtTime(e.at_ms) }),
        el('td', { class: 'nowrap' }, el('span', { class: 'event event-' + e.kind, text: e.kind.replace(/_/g, ' ') })),
        el('td', { class: 'nowrap', text: e.branch_id !== undefined && e.branch_id !== null
          ? participant.get(e.branch_id) || '#' + e.branch_id : '' }),
        el('td', { class: 'nowrap', text: e.operation ? e.operation + (e.attempt ? ' #' + e.attempt : '') : '' }),
        el('td', { text: e.outcome || '' }),
        el('td', { class: 'detail', text: e.detail }),
        el('td', { class: 'nowrap', text: fmtActor(e.actor) }))));

    $('saga-request').textContent = JSON.stringify(saga.request, null, 2);
  }

  function renderFacts(saga, end, now) {
    const facts = [
      ['kind', saga.kind],
      ['client', saga.client || '— (in-process)'],
      ['created', fmtTime(saga.created_at_ms) + ' UTC'],
      ['finished', saga.finished_at_ms ? fmtTime(saga.finished_at_ms) + ' UTC' : 'not yet'],
      ['duration', (saga.finished_at_ms ? '' : 'running ') + fmtDuration(end - saga.created_at_ms)],
      ['try deadline', fmtTime(saga.try_deadline_ms) + ' UTC' +
        (saga.state === 'trying' ? ' (in ' + fmtDuration(saga.try_deadline_ms - now) + ')' : '')],
      ['idempotency key', saga.idempotency_key || '—'],
    ];
    const dl = $('saga-facts');
    dl.replaceChildren();
    for (const [k, v] of facts) {
      dl.append(el('dt', { text: k }), el('dd', { 'data-testid': 'fact-' + k.replace(/ /g, '-'), text: v }));
    }
    // The trace: a link when the coordinator knows where traces are shown.
    const trace = el('dd', { 'data-testid': 'fact-trace', class: 'mono' });
    const url = typeof saga.trace_url === 'string' && /^https?:\/\//i.test(saga.trace_url) ? saga.trace_url : null;
    if (url) {
      trace.append(el('a', {
        href: url, target: '_blank', rel: 'noopener noreferrer', 'data-testid': 'trace-link',
        text: saga.trace_id || 'open trace',
      }));
    } else {
      trace.textContent = saga.trace_id || '—';
    }
    dl.append(el('dt', { text: 'trace' }), trace);
  }

  /**
   * The commands of a saga from its timeline, each from its send to its answer.
   * Sends: `submitted` (every try, send 1), `decided` (every confirm, or every cancel
   * but to branches whose try was refused, send 1), `resent` (one command, send n).
   * Answers: the `*_ok`, `*_rejected` and `*_failed` entries, matched on branch,
   * command and send number. A send without an answer runs until the branch's next
   * send, or the saga's end.
   */
  function operations(saga, end) {
    const bars = new Map();
    const refused = new Set();
    const key = (b, op, n) => b + '|' + op + '|' + n;
    const send = (branch, op, attempt, at) => {
      const k = key(branch, op, attempt);
      if (!bars.has(k)) bars.set(k, { branch, op, attempt, start: at, end: null, outcome: null, kind: null });
      return bars.get(k);
    };
    for (const e of saga.timeline) {
      if (e.kind === 'submitted') {
        for (const b of saga.branches) send(b.branch_id, 'try', 1, e.at_ms);
      } else if (e.kind === 'decided' && (e.operation === 'confirm' || e.operation === 'cancel')) {
        for (const b of saga.branches) {
          if (e.operation === 'cancel' && refused.has(b.branch_id)) continue;
          send(b.branch_id, e.operation, 1, e.at_ms);
        }
      } else if (e.kind === 'resent' && e.branch_id !== undefined && e.branch_id !== null && e.operation) {
        send(e.branch_id, e.operation, e.attempt || 0, e.at_ms);
      } else if (ANSWERS.has(e.kind) && e.branch_id !== undefined && e.branch_id !== null && e.operation) {
        if (e.kind === 'try_rejected') refused.add(e.branch_id);
        const bar = send(e.branch_id, e.operation, e.attempt || 0, e.at_ms);
        if (bar.end === null) {
          bar.end = e.at_ms;
          bar.outcome = e.outcome || e.kind;
          bar.kind = e.kind;
        }
      }
    }
    const list = [...bars.values()];
    for (const bar of list) {
      if (bar.end !== null) continue;
      // Superseded by the branch's next command (a resend, or the decision's confirm
      // or cancel), else still open at the saga's end (or now).
      const next = list
        .filter((o) => o.branch === bar.branch && o !== bar && o.start >= bar.start &&
          (o.op !== bar.op || o.attempt > bar.attempt))
        .sort((a, b) => a.start - b.start)[0];
      bar.end = next ? next.start : end;
      if (next) bar.outcome = next.op === bar.op ? 'no answer, sent again' : 'no answer before the decision';
      else bar.outcome = isOver(saga.state) ? 'no answer' : 'waiting';
      bar.kind = 'unanswered';
    }
    const order = { try: 0, confirm: 1, cancel: 1 };
    return list.sort((a, b) => a.start - b.start || order[a.op] - order[b.op] || a.branch - b.branch ||
      a.attempt - b.attempt);
  }

  function renderWaterfall(saga, participant, end) {
    const bars = operations(saga, end);
    const box = $('waterfall');
    box.replaceChildren();
    if (bars.length === 0) {
      box.append(el('p', { class: 'muted', text: 'No command sent yet.' }));
      return;
    }
    const t0 = saga.created_at_ms;
    const span = Math.max(1, end - t0, ...bars.map((b) => b.end - t0));
    const pct = (ms) => Math.min(100, Math.max(0, (ms / span) * 100));

    const axis = el('div', { class: 'wf-row wf-axis' }, el('div', { class: 'wf-label' }));
    const track = el('div', { class: 'wf-track' });
    for (let i = 0; i <= 4; i += 1) {
      const tick = el('span', { class: 'wf-tick', text: fmtOffset((span * i) / 4) });
      tick.style.left = (i * 25) + '%';
      if (i === 4) tick.classList.add('wf-tick-last');
      track.append(tick);
    }
    axis.append(track);
    box.append(axis);

    for (const b of bars) {
      const name = participant.get(b.branch) || '#' + b.branch;
      const took = b.end - b.start;
      const row = el('div', {
        class: 'wf-row',
        'data-testid': 'waterfall-bar',
        'data-participant': name,
        'data-operation': b.op,
        'data-attempt': b.attempt,
        'data-outcome': b.outcome,
      });
      row.append(el('div', { class: 'wf-label' },
        el('span', { class: 'participant', text: name }), ' ',
        el('span', { class: 'op op-' + b.op, text: b.op }),
        b.attempt > 1 ? el('span', { class: 'muted', text: ' #' + b.attempt }) : null));
      const lane = el('div', { class: 'wf-track' });
      const bar = el('div', {
        class: 'wf-bar op-' + b.op + ' outcome-' + String(b.kind === 'unanswered' ? 'unanswered' : b.outcome),
        title: name + ' ' + b.op + ' send ' + b.attempt + ': ' + fmtOffset(b.start - t0) + ' → ' +
          fmtOffset(b.end - t0) + ' (' + fmtDuration(took) + '), ' + b.outcome,
      });
      const from = pct(b.start - t0);
      const width = Math.max(0.4, pct(took));
      bar.style.left = from + '%';
      bar.style.width = width + '%';
      // The label after the bar, else before it, else inside it.
      const label = el('span', { class: 'wf-text', text: fmtDuration(took) + ' · ' + b.outcome });
      if (from + width <= 72) {
        label.style.left = (from + width + 0.5) + '%';
      } else if (from >= 28) {
        label.style.right = (100 - from + 0.5) + '%';
      } else {
        label.classList.add('wf-text-inside');
        label.style.left = (from + 0.5) + '%';
      }
      lane.append(bar, label);
      row.append(lane);
      box.append(row);
    }
  }

  function renderRetries(saga, participant) {
    const rows = [];
    for (const e of saga.timeline) {
      let what = null;
      if (e.kind === 'resent') {
        const name = participant.get(e.branch_id) || '#' + e.branch_id;
        what = 'resent ' + (e.operation || 'command') + ' to ' + name + (e.attempt ? ' (send ' + e.attempt + ')' : '');
      } else if (e.kind === 'resend_requested') {
        what = 'resend requested';
      } else if (e.kind === 'stuck') {
        what = 'flagged stuck';
      } else if (e.kind === 'unstuck') {
        what = 'no longer stuck';
      }
      if (what === null) continue;
      rows.push(el('tr', { 'data-testid': 'retry-row', 'data-kind': e.kind },
        el('td', { class: 'num', text: fmtOffset(e.at_ms - saga.created_at_ms) }),
        el('td', { text: what }),
        el('td', { text: fmtActor(e.actor) || (e.kind === 'resent' ? 'timer' : '') }),
        el('td', { text: e.reason || (e.kind === 'stuck' ? e.detail : '') })));
    }
    $('retry-rows').replaceChildren(...rows);
    $('retries').hidden = rows.length === 0;
    $('retries-empty').hidden = rows.length !== 0;
  }

  async function retryNow() {
    if (!currentSaga) return;
    const id = currentSaga.id;
    const gen = generation;
    const out = $('retry-result');
    out.className = 'muted';
    out.textContent = 'sending…';
    try {
      const r = await api('/v1/sagas/' + encodeURIComponent(id) + '/retry', {
        method: 'POST',
        body: { reason: 'retry from the web UI' },
      });
      out.className = 'ok-text';
      out.textContent = 'resent ' + r.resent + ' command' + (r.resent === 1 ? '' : 's') + '; the saga is ' + r.state;
      if (gen === generation) {
        clearTimeout(sagaTimer);
        loadSaga(id, gen, false);
      }
    } catch (e) {
      out.className = 'error-text';
      out.textContent = 'retry refused: ' + e;
    }
  }

  // ---- search, filters, token ---------------------------------------------

  async function search(event) {
    event.preventDefault();
    const value = $('search-input').value.trim();
    if (!value) return;
    if (UUID.test(value)) {
      // A saga id — unless no saga has it, then it may be a payment id.
      try {
        await api('/v1/sagas/' + encodeURIComponent(value));
        go('#/saga/' + value.toLowerCase());
        return;
      } catch (e) {
        if (e.status !== 404) {
          setError('view', e);
          return;
        }
      }
    }
    go(listHash({ payment_id: value }));
  }

  function applyFilters(event) {
    if (event) event.preventDefault();
    go(listHash({
      state: $('filter-state').value,
      stuck: $('filter-stuck').checked ? 'true' : '',
      kind: $('filter-kind').value.trim(),
    }));
  }

  function showTokenState() {
    const has = token() !== '';
    $('token-status').textContent = has ? 'token set for this tab' : 'no token';
    $('token-forget').hidden = !has;
    $('token-input').placeholder = has ? 'replace the API token' : 'API token';
  }

  function saveToken(event) {
    event.preventDefault();
    const value = $('token-input').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token-input').value = '';
    showTokenState();
    refreshCounts();
    route();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    for (const k of [...STATES, 'stuck']) $('count-' + k).textContent = '–';
    $('counts-admission').textContent = '';
    route();
  }

  function start() {
    $('search-form').addEventListener('submit', search);
    $('filters').addEventListener('submit', applyFilters);
    $('filter-state').addEventListener('change', applyFilters);
    $('filter-stuck').addEventListener('change', applyFilters);
    $('filter-clear').addEventListener('click', () => go('#/'));
    $('list-refresh').addEventListener('click', route);
    $('list-more').addEventListener('click', () => loadPage(generation));
    $('token-form').addEventListener('submit', saveToken);
    $('token-forget').addEventListener('click', forgetToken);
    $('retry-button').addEventListener('click', retryNow);
    window.addEventListener('hashchange', route);
    showTokenState();
    refreshCounts();
    route();
  }

  start();
})();
