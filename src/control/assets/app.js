// ftshop control room: plain JS, no library. Renders the snapshots the server pushes
// (GET /api/events, server-sent events) and sends actions as JSON to /api/*.
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const $ = (sel) => document.querySelector(sel);
let last = null;           // the last snapshot
const rendered = {};       // panel -> JSON of what it last rendered (skip unchanged panels)
let openStory = null;      // order id whose story is shown under the table

// ---------- small DOM helpers (text is always set as text, never parsed as HTML) ----------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
// Replaces `el`'s content, keeping keyboard focus on the control with the same data-key.
function replace(el, ...children) {
  const active = document.activeElement;
  const key = active && el.contains(active) ? active.getAttribute('data-key') : null;
  el.replaceChildren(...children.flat());
  if (key) {
    const again = el.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}
function changed(panel, data) {
  const json = JSON.stringify(data);
  if (rendered[panel] === json) return false;
  rendered[panel] = json;
  return true;
}

const SYMBOL = {
  up: '✔', closed: '✔', starting: '…', restarting: '↻', half_open: '◐', crashed: '✖',
  open: '✖', forced_open: '⛔', frozen: '❄', unresponsive: '⚠',
};
function stateLabel(state) {
  const words = String(state).replace('_', ' ');
  return h('span', { class: `state state-${state}` }, `${SYMBOL[state] || '•'} ${words}`);
}
function pct(x) { return x === undefined || x === null ? '–' : `${(x * 100).toFixed(0)} %`; }
function secs(x) {
  if (x === undefined || x === null) return '–';
  if (x < 60) return `${x.toFixed(1)} s`;
  if (x < 3600) return `${Math.floor(x / 60)} min ${Math.floor(x % 60)} s`;
  return `${(x / 3600).toFixed(1)} h`;
}
function ms(us) { return `${(us / 1000).toFixed(1)} ms`; }

function notice(text, bad) {
  const el = $('#notice');
  el.textContent = text;
  el.classList.toggle('bad', !!bad);
}

// ---------- actions ----------
async function act(method, url, body, label) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    notice(`${label}: the control room did not answer (${e.message})`, true);
    return null;
  }
  let data = null;
  try { data = await response.json(); } catch (_) { /* no body */ }
  if (response.status === 401) {
    notice(`${label}: not signed in: open the URL that ftshop up printed (with ?token=…)`, true);
    return null;
  }
  if (!response.ok) {
    notice(`${label}: refused (${response.status}): ${(data && data.detail) || response.statusText}`, true);
    return null;
  }
  notice(`${label}: done`);
  return data;
}

// ---------- topology ----------
const CALLS = [['store', '/product, /sell'], ['exchange', '/exchange'], ['fidelity', '/bonus']];
function renderTopology(snap) {
  if (!changed('topology', snap.processes)) return;
  const procs = snap.processes;
  const ecommerce = procs.find((p) => p.service === 'ecommerce');
  const others = procs.filter((p) => p.service !== 'ecommerce');
  const W = 640, rowH = 40, H = Math.max(others.length * rowH + 20, 120);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Ecommerce and the processes it calls, with their states' });
  const node = (p, x, y, w) => {
    const g = s('g', {});
    g.append(s('rect', { x, y, width: w, height: 30, rx: 5, class: `node state-${p.state}`, fill: '#fff', stroke: 'currentColor', 'stroke-width': 2 }));
    g.append(s('text', { x: x + 8, y: y + 19, class: `state-${p.state}` }, `${SYMBOL[p.state] || '•'} ${p.name}: ${p.state}`));
    return g;
  };
  const ey = H / 2 - 15;
  others.forEach((p, i) => {
    const y = 10 + i * rowH;
    const label = (CALLS.find(([svc]) => svc === p.service) || ['', ''])[1];
    svg.append(s('line', { x1: 190, y1: ey + 15, x2: 400, y2: y + 15, stroke: '#888', 'stroke-width': 1.5 }));
    svg.append(s('text', { x: 250, y: (ey + 15 + y + 15) / 2 - 3, fill: '#555' }, label));
    svg.append(node(p, 400, y, 230));
  });
  if (ecommerce) svg.append(node(ecommerce, 10, ey, 180));
  replace($('#topo-diagram'), svg);

  const rows = procs.map((p) => h('tr', {},
    h('th', { scope: 'row' }, p.name),
    h('td', {}, stateLabel(p.state)),
    h('td', {}, p.pid ?? '–'),
    h('td', {}, p.restarts),
    h('td', {}, p.uptime_s !== null && p.uptime_s !== undefined ? secs(p.uptime_s) : `down ${secs(p.down_s)}`),
    h('td', {}, h('div', { class: 'buttons' },
      h('button', { type: 'button', class: 'danger', 'data-key': `kill-${p.name}`, 'aria-label': `Kill ${p.name} (SIGKILL)`, onclick: () => act('POST', `/api/processes/${p.name}/kill`, undefined, `kill ${p.name}`) }, 'Kill'),
      h('button', { type: 'button', 'data-key': `restart-${p.name}`, 'aria-label': `Restart ${p.name} (SIGTERM)`, onclick: () => act('POST', `/api/processes/${p.name}/restart`, undefined, `restart ${p.name}`) }, 'Restart'),
      p.state === 'frozen' ? h('button', { type: 'button', 'data-key': `resume-${p.name}`, 'aria-label': `Resume ${p.name} (SIGCONT)`, onclick: () => act('POST', `/api/processes/${p.name}/resume`, undefined, `resume ${p.name}`) }, 'Resume') : null,
    )),
  ));
  replace($('#proc-table tbody'), rows);
}

// ---------- breakers ----------
const STATE_FILL = { closed: '#d8f0dd', open: '#f6d3cf', forced_open: '#e8b4ae', half_open: '#f7e7b5' };
function renderBreakers(snap) {
  const list = Array.isArray(snap.services.breakers) ? snap.services.breakers : [];
  const transitions = Array.isArray(snap.services.transitions) ? snap.services.transitions : [];
  if (changed('breakers', list)) {
    const rows = list.map((b) => h('tr', {},
      h('th', { scope: 'row' }, b.name),
      h('td', {}, stateLabel(b.state), b.retry_after_ms ? ` (trial in ${(b.retry_after_ms / 1000).toFixed(1)} s)` : ''),
      h('td', {}, pct(b.failure_rate)),
      h('td', {}, pct(b.slow_rate)),
      h('td', {}, `${b.calls_in_window} (${b.failures_in_window})`),
      h('td', {}, h('div', { class: 'buttons' },
        h('button', { type: 'button', 'data-key': `reset-${b.name}`, 'aria-label': `Reset breaker ${b.name}`, onclick: () => act('POST', `/api/breakers/${b.name}/reset`, undefined, `reset ${b.name}`) }, 'Reset'),
        h('button', { type: 'button', class: 'danger', 'data-key': `open-${b.name}`, 'aria-label': `Force breaker ${b.name} open`, onclick: () => act('POST', `/api/breakers/${b.name}/force-open`, undefined, `force open ${b.name}`) }, 'Force open'),
      )),
    ));
    replace($('#breaker-table tbody'), rows.length ? rows : [h('tr', {}, h('td', { colspan: 6 }, 'no breaker data (is ecommerce up?)'))]);
  }
  if (!changed('timeline', [transitions, Math.floor(Date.now() / 5000)])) return;
  const now = Date.now(), span = 5 * 60 * 1000, from = now - span;
  const names = list.map((b) => b.name);
  const W = 640, rowH = 18, left = 130, H = names.length * rowH + 22;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Breaker states over the last 5 minutes (the list below says the same in words)' });
  const x = (t) => left + ((Math.max(t, from) - from) / span) * (W - left - 10);
  names.forEach((name, i) => {
    const y = 4 + i * rowH;
    svg.append(s('text', { x: 4, y: y + 12 }, name));
    const mine = transitions.filter((t) => t.name === name).sort((a, b) => a.at_unix_ms - b.at_unix_ms);
    let state = mine.length ? mine[0].from : (list[i] && list[i].state) || 'closed';
    let start = from;
    const segments = [];
    for (const t of mine) {
      segments.push([start, t.at_unix_ms, state]);
      state = t.to; start = t.at_unix_ms;
    }
    segments.push([start, now, (list[i] && list[i].state) || state]);
    for (const [a, b, st] of segments) {
      if (b < from) continue;
      const x1 = x(a), x2 = x(b);
      const rect = s('rect', { x: x1, y, width: Math.max(x2 - x1, 1), height: rowH - 4, fill: STATE_FILL[st] || '#eee', stroke: '#999', 'stroke-width': 0.5 });
      rect.append(s('title', {}, `${name}: ${st}`));
      svg.append(rect);
      if (x2 - x1 > 40) svg.append(s('text', { x: x1 + 3, y: y + 11 }, `${SYMBOL[st] || ''} ${st.replace('_', ' ')}`));
    }
  });
  svg.append(s('text', { x: left, y: H - 4 }, '−5 min'));
  svg.append(s('text', { x: W - 30, y: H - 4 }, 'now'));
  const recent = transitions.slice(-8).reverse().map((t) => h('li', {},
    `${new Date(t.at_unix_ms).toLocaleTimeString()}: ${t.name} ${t.from} → ${t.to} (${String(t.reason).replace(/_/g, ' ')}, failure ${pct(t.failure_rate)}, slow ${pct(t.slow_rate)})`));
  replace($('#timeline'), svg, recent.length ? h('ol', { 'aria-label': 'Latest transitions, newest first' }, recent) : h('p', { class: 'hint' }, 'No transition yet.'));
}

// ---------- faults ----------
function ruleLabel(r) {
  const parts = [`${r.kind} ${r.method || '*'} ${r.route}`, `p=${r.probability}`];
  if (r.window_ms) parts.push(`window ${r.window_ms / 1000} s`);
  if (r.latency_ms) parts.push(`+${r.latency_ms} ms`);
  if (r.instance) parts.push(`only ${r.instance}`);
  return parts.join(', ');
}
function renderFaults(snap) {
  if (changed('presets', snap.presets)) {
    replace($('#presets'), snap.presets.map((p) => h('button', {
      type: 'button', 'data-key': `preset-${p.name}`, title: p.description, 'aria-label': `${p.label}: ${p.description}`,
      onclick: () => act('POST', '/api/faults/preset', { name: p.name, seconds: Number($('#preset-seconds').value) || 30 }, `preset ${p.label}`),
    }, p.label)));
  }
  const instances = snap.processes.map((p) => [p.name, p.service]);
  if (changed('instances', instances)) fillInstances();
  const faults = snap.services.faults || {};
  if (!changed('faults', faults)) return;
  const tables = Object.entries(faults).map(([proc, status]) => {
    if (!status) return h('p', {}, `${proc}: not answering`);
    // GET /admin/faults flattens each rule into its status: split them again.
    const RULE_FIELDS = ['service', 'instance', 'route', 'method', 'kind', 'probability', 'window_ms', 'latency_ms', 'ttl_secs'];
    const rules = (status.rules || []).map((r) => Object.assign({}, r, {
      rule: Object.fromEntries(RULE_FIELDS.filter((k) => r[k] !== undefined && r[k] !== null).map((k) => [k, r[k]])),
    }));
    const rows = rules.map((r, i) => h('tr', {},
      h('td', {}, ruleLabel(r.rule)),
      h('td', {}, r.active ? `active, ${(r.active_remaining_ms / 1000).toFixed(0)} s left` : 'idle'),
      h('td', {}, r.injected),
      h('td', {}, r.expires_in_secs ? `${r.expires_in_secs} s` : 'never'),
      h('td', {}, h('div', { class: 'buttons' },
        h('label', { class: 'sr', for: `p-${proc}-${i}` }, `Probability of rule ${i + 1} on ${proc}`),
        h('input', { id: `p-${proc}-${i}`, 'data-key': `p-${proc}-${i}`, type: 'number', min: 0, max: 1, step: 0.05, value: r.rule.probability, size: 4 }),
        h('button', { type: 'button', 'data-key': `set-${proc}-${i}`, 'aria-label': `Set the probability of rule ${i + 1} on ${proc}`, onclick: () => {
          const p = Number(document.getElementById(`p-${proc}-${i}`).value);
          const list = rules.map((x) => x.rule);
          list[i] = Object.assign({}, list[i], { probability: p });
          act('PUT', `/api/faults/${proc}`, { rules: list }, `change rule on ${proc}`);
        } }, 'Set p'),
        h('button', { type: 'button', class: 'danger', 'data-key': `rm-${proc}-${i}`, 'aria-label': `Remove rule ${i + 1} on ${proc}`, onclick: () => {
          const list = rules.map((x) => x.rule).filter((_, j) => j !== i);
          act('PUT', `/api/faults/${proc}`, { rules: list }, `remove rule on ${proc}`);
        } }, 'Remove'),
      )),
    ));
    return h('div', { class: 'scroll' }, h('table', {},
      h('caption', {}, `${proc} (${status.service}), profile ${status.profile}`),
      h('thead', {}, h('tr', {}, ['Rule', 'Window', 'Injected', 'Expires', 'Change'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 5 }, 'no faults'))),
    ));
  });
  replace($('#fault-tables'), tables);
}
function fillInstances() {
  const form = $('#rule-form');
  const service = form.service.value;
  const current = form.instance.value;
  const names = (last ? last.processes : []).filter((p) => p.service === service).map((p) => p.name);
  form.instance.replaceChildren(h('option', { value: '' }, 'every replica'), ...names.map((n) => h('option', { value: n }, n)));
  if (names.includes(current)) form.instance.value = current;
}
function setupFaultForm() {
  const form = $('#rule-form');
  form.service.addEventListener('change', fillInstances);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = form;
    const rule = {
      service: f.service.value, route: f.route.value.trim(), kind: f.kind.value,
      probability: Number(f.probability.value),
      window_ms: Math.round(Number(f.window.value || 0) * 1000),
      latency_ms: Math.round(Number(f.latency.value || 0)),
    };
    if (f.instance.value) rule.instance = f.instance.value;
    if (f.method.value) rule.method = f.method.value;
    if (f.ttl.value) rule.ttl_secs = Math.round(Number(f.ttl.value));
    act('POST', '/api/faults/rules', rule, `rule ${rule.kind} ${rule.route} on ${rule.instance || rule.service}`);
  });
}

// ---------- traffic ----------
const OUTCOMES = [['completed', '200', '0'], ['accepted', '202', '6 3'], ['refused', 'refused', '2 2'], ['failed', 'failed', '10 3 2 3']];
function lineChart(el, label, series, opts) {
  const W = 320, H = 150, L = 34, B = 18;
  const xs = series.flatMap((sr) => sr.points.map((p) => p[0]));
  const ys = series.flatMap((sr) => sr.points.map((p) => p[1]));
  const xMax = Math.max(10, ...xs), yMax = Math.max(opts.minY || 1, ...ys) * 1.1;
  const X = (x) => L + (x / xMax) * (W - L - 6), Y = (y) => H - B - (y / yMax) * (H - B - 6);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
  svg.append(s('line', { x1: L, y1: H - B, x2: W - 4, y2: H - B, stroke: '#999' }), s('line', { x1: L, y1: 4, x2: L, y2: H - B, stroke: '#999' }));
  for (const f of [0, 0.5, 1]) {
    const v = (yMax / 1.1) * f;
    svg.append(s('text', { x: 2, y: Y(v) + 3 }, v >= 100 ? v.toFixed(0) : v.toFixed(1)));
  }
  svg.append(s('text', { x: W - 40, y: H - 4 }, `${xMax.toFixed(0)} s`));
  series.forEach((sr) => {
    if (!sr.points.length) return;
    const d = sr.points.map((p, i) => `${i ? 'L' : 'M'}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ');
    svg.append(s('path', { d, fill: 'none', stroke: sr.color, 'stroke-width': 2, 'stroke-dasharray': sr.dash || '0' }));
  });
  const legend = h('div', { class: 'legend' }, series.map((sr) => {
    const key = s('svg', { width: 26, height: 8, 'aria-hidden': 'true' }, s('line', { x1: 0, y1: 4, x2: 26, y2: 4, stroke: sr.color, 'stroke-width': 2, 'stroke-dasharray': sr.dash || '0' }));
    const lastPoint = sr.points.length ? sr.points[sr.points.length - 1][1] : null;
    return h('span', {}, key, ` ${sr.name}${lastPoint !== null ? `: ${Number(lastPoint).toFixed(1)}` : ''}`);
  }));
  replace(el, svg, legend);
}
const COLORS = { completed: '#1a7f37', accepted: '#0b5cad', refused: '#9a6700', failed: '#b42318' };
function renderTraffic(snap) {
  const t = snap.traffic || { state: 'idle' };
  if (!changed('traffic', t)) return;
  const st = t.state === 'idle' ? 'No load run yet.' :
    `Load ${t.state}${t.error ? `: ${t.error}` : ''}: ${t.settings.users} users, think ${t.settings.think_ms} ms, ft ${t.settings.ft}, ${t.settings.duration_s} s (${Math.min(t.elapsed_s, t.settings.duration_s).toFixed(0)} s elapsed).`;
  $('#load-status').textContent = st;
  const series = t.series || {};
  for (const ft of ['on', 'off']) {
    const secondsList = series[ft] || [];
    // The last second is still filling: it is left out of the charts.
    const done = t.state === 'running' ? secondsList.slice(0, -1) : secondsList;
    lineChart($(`#chart-${ft}`), `Purchases per second by outcome, ft ${ft}`, OUTCOMES.map(([k, name, dash]) => ({
      name, color: COLORS[k], dash, points: done.map((x) => [x.t, x[k]]),
    })), { minY: 1 });
  }
  const lat = [];
  for (const ft of ['on', 'off']) {
    const secondsList = (series[ft] || []).filter((x) => x.p50_ms !== null);
    lat.push({ name: `p99 ft ${ft}`, color: ft === 'on' ? '#0b5cad' : '#b42318', dash: '0', points: secondsList.map((x) => [x.t, x.p99_ms]) });
    lat.push({ name: `p50 ft ${ft}`, color: ft === 'on' ? '#0b5cad' : '#b42318', dash: '5 3', points: secondsList.map((x) => [x.t, x.p50_ms]) });
  }
  lineChart($('#chart-latency'), 'Latency p50 and p99 per second, ft on and off', lat, { minY: 10 });
  const backlog = t.backlog || [];
  lineChart($('#chart-backlog'), 'Deferred sales and pending bonuses over the run', [
    { name: 'deferred sales', color: '#9a6700', dash: '0', points: backlog.map((b) => [b[0], Math.max(b[1], 0)]) },
    { name: 'outbox bonuses', color: '#0b5cad', dash: '6 3', points: backlog.map((b) => [b[0], Math.max(b[2], 0)]) },
    { name: 'Fidelity pending', color: '#6e40c9', dash: '2 2', points: backlog.map((b) => [b[0], Math.max(b[3], 0)]) },
  ], { minY: 1 });
  const rows = Object.entries(series).map(([ft, list]) => {
    const sum = (k) => list.reduce((a, x) => a + x[k], 0);
    const withLat = list.filter((x) => x.p50_ms !== null);
    const lastLat = withLat[withLat.length - 1];
    return h('tr', {}, h('th', { scope: 'row' }, ft), h('td', {}, sum('completed')), h('td', {}, sum('accepted')), h('td', {}, sum('refused')),
      h('td', {}, sum('failed')), h('td', {}, sum('rejected')), h('td', {}, lastLat ? `${lastLat.p50_ms.toFixed(1)} ms` : '–'), h('td', {}, lastLat ? `${lastLat.p99_ms.toFixed(1)} ms` : '–'));
  });
  replace($('#load-table tbody'), rows);
}
function setupLoadForm() {
  const form = $('#load-form');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act('POST', '/api/traffic/start', {
      users: Number(form.users.value), think_ms: Number(form.think_ms.value), ft: form.ft.value, duration_s: Number(form.duration_s.value),
    }, 'start load');
  });
  $('#load-stop').addEventListener('click', () => act('POST', '/api/traffic/stop', undefined, 'stop load'));
}

// ---------- purchases ----------
function replicaName(step, n) {
  if (step === 'bonus') return 'fidelity';
  return `${step === 'exchange' ? 'exchange' : 'store'}-${n}`;
}
const STEPS = ['product', 'exchange', 'sell', 'bonus'];
// One sentence per step: who answered, attempts, hedges, breaker rejections, failover.
function stepLines(story) {
  const lines = [];
  for (const step of STEPS) {
    const all = story.attempts.filter((a) => a.step === step);
    const sent = all.filter((a) => a.outcome !== 'breaker_rejected');
    const rejected = all.filter((a) => a.outcome === 'breaker_rejected');
    const answered = sent.find((a) => a.outcome === 'success' || a.outcome === 'client_error');
    const parts = [];
    if (!all.length) {
      if (step === 'product' || step === 'exchange') parts.push('from the cache (no call)');
      else if (step === 'bonus' && story.degraded.includes('fidelity:bonus-queued')) parts.push('queued in the outbox (no call)');
      else parts.push('not reached');
    } else {
      if (answered) parts.push(`${replicaName(step, answered.replica)} answered (${answered.outcome.replace('_', ' ')}, ${ms(answered.duration_us)})`);
      else parts.push('no replica answered');
      parts.push(`${sent.length} attempt${sent.length === 1 ? '' : 's'}`);
      const hedges = sent.filter((a) => a.hedge).length;
      if (hedges) parts.push(`${hedges} hedge${hedges === 1 ? '' : 's'}`);
      if (rejected.length) parts.push(`${rejected.length} breaker rejection${rejected.length === 1 ? '' : 's'} (${rejected.map((a) => replicaName(step, a.replica)).join(', ')})`);
      const failed = sent.filter((a) => a !== answered && !a.hedge);
      if (answered && failed.length && step !== 'product') {
        parts.push(`failover: ${failed.map((a) => `${replicaName(step, a.replica)} ${a.outcome.replace('_', ' ')}`).join(', ')} → ${replicaName(step, answered.replica)}`);
      } else if (answered && (rejected.length) && step !== 'product') {
        parts.push(`failover past the open breaker to ${replicaName(step, answered.replica)}`);
      }
    }
    lines.push(h('li', {}, h('strong', {}, `${step}: `), parts.join('; ')));
  }
  return lines;
}
function waterfall(story) {
  const total = Math.max(story.duration_us, 1);
  const rows = story.attempts;
  const W = 600, L = 150, rowH = 16, H = rows.length * rowH + 20;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Waterfall of the purchase\'s calls (the list above says the same in words)' });
  rows.forEach((a, i) => {
    const y = 2 + i * rowH;
    const x = L + (a.start_us / total) * (W - L - 10);
    const w = Math.max((a.duration_us / total) * (W - L - 10), 2);
    const ok = a.outcome === 'success' || a.outcome === 'client_error';
    svg.append(s('text', { x: 2, y: y + 11 }, `${a.step} ${replicaName(a.step, a.replica)}${a.hedge ? ' (hedge)' : ''}`));
    const r = s('rect', { x, y: y + 2, width: w, height: rowH - 5, fill: ok ? '#8fd19e' : (a.outcome === 'breaker_rejected' ? '#e8b4ae' : '#f0a8a0'), stroke: '#666', 'stroke-width': 0.5, 'stroke-dasharray': ok ? '0' : '3 2' });
    r.append(s('title', {}, `${a.outcome}, ${ms(a.duration_us)} at +${ms(a.start_us)}`));
    svg.append(r);
    svg.append(s('text', { x: Math.min(x + w + 3, W - 80), y: y + 11 }, `${ok ? '✔' : '✖'} ${a.outcome.replace('_', ' ')} ${ms(a.duration_us)}`));
  });
  svg.append(s('text', { x: L, y: H - 3 }, '0'));
  svg.append(s('text', { x: W - 60, y: H - 3 }, ms(total)));
  return h('div', { class: 'waterfall' }, svg);
}
function storyView(story, heading) {
  if (!story) return h('p', {}, 'No story recorded for this purchase (ecommerce keeps the last 200).');
  const fallbacks = story.degraded.length ? `fallbacks: ${story.degraded.join(', ')}` : 'no fallback needed';
  return h('article', { class: 'story', 'aria-label': heading },
    h('h4', {}, `${heading}: answered ${story.status} in ${ms(story.duration_us)}, ft ${story.ft ? 'on' : 'off'}, ${fallbacks}`),
    h('p', {}, `order ${story.order_id || '(none)'}, product ${story.product}, user ${story.user}`),
    h('ol', {}, stepLines(story)),
    waterfall(story));
}
function renderPurchases(snap) {
  const products = Array.isArray(snap.services.products) ? snap.services.products : [];
  if (changed('products', products.map((p) => p.id)) && products.length) {
    const sel = $('#buy-product');
    const current = sel.value;
    sel.replaceChildren(...products.map((p) => h('option', { value: p.id }, `${p.id}: ${p.name}`)));
    if (products.some((p) => p.id === current)) sel.value = current;
  }
  const list = Array.isArray(snap.services.purchases) ? snap.services.purchases : [];
  if (!changed('purchases', list.map((p) => [p.order_id, p.at_unix_ms]))) return;
  const rows = list.map((p, i) => h('tr', {},
    h('td', {}, new Date(p.at_unix_ms).toLocaleTimeString()),
    h('td', {}, p.user), h('td', {}, p.product), h('td', {}, p.ft ? 'on' : 'off'),
    h('td', {}, String(p.status)), h('td', {}, ms(p.duration_us)),
    h('td', {}, p.degraded.length ? p.degraded.join(', ') : '–'),
    h('td', {}, h('button', { type: 'button', 'data-key': `story-${p.order_id || i}`, 'aria-label': `Show the story of the purchase at ${new Date(p.at_unix_ms).toLocaleTimeString()} by ${p.user}`, onclick: () => {
      openStory = p;
      replace($('#story-view'), storyView(p, 'Story'));
    } }, 'Story')),
  ));
  replace($('#purchase-table tbody'), rows.length ? rows : [h('tr', {}, h('td', { colspan: 8 }, 'no purchase yet'))]);
}
function setupBuyForm() {
  const form = $('#buy-form');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { product: form.product.value, user: form.user.value.trim(), ft: form.ft.checked };
    const data = await act('POST', '/api/buy', body, `buy product ${body.product}`);
    if (!data) return;
    const answer = data.answer || {};
    const summary = data.status === 200 || data.status === 202
      ? `Answered ${data.status}: order ${answer.order_id}, ${answer.status}, total R$ ${answer.total}`
      : `Answered ${data.status}: ${answer.detail || answer.title || ''}`;
    replace($('#buy-result'), h('p', {}, summary), storyView(data.story, 'Story of this purchase'));
  });
}

// ---------- invariants ----------
function renderChecks(result) {
  if (!result) return;
  const verdicts = (result.verdicts || []).map((v) => h('div', { class: 'verdict' },
    h('strong', { class: v.holds ? 'holds' : 'violated' }, `${v.holds ? '✔ holds' : '✖ violated'}: ${v.title}`),
    ` (${v.checked})`,
    v.violations.length ? h('ul', {}, v.violations.slice(0, 20).map((x) => h('li', {}, x.evidence))) : null));
  replace($('#check-result'),
    h('p', {}, h('strong', { class: result.passed ? 'holds' : 'violated' }, result.passed ? '✔ All invariants hold' : '✖ Some invariant is violated'),
      ` at ${new Date(result.checked_at_unix_ms).toLocaleTimeString()}: ${result.purchases.from_buy_one} purchases from "buy one", ${result.purchases.from_load_runs} from load runs; drained ${result.drained_after_s === null ? 'not within 30 s' : `after ${result.drained_after_s} s`}.`),
    verdicts, h('p', { class: 'hint' }, result.note));
}
function setupChecks() {
  $('#run-checks').addEventListener('click', async () => {
    replace($('#check-result'), h('p', {}, 'Checking… (waits for the backlog to drain, at most 30 s)'));
    const result = await act('POST', '/api/invariants', undefined, 'invariants');
    if (result) renderChecks(result);
    else replace($('#check-result'), h('p', {}, 'The check did not run (see the message above).'));
  });
  $('#reset-all').addEventListener('click', () => act('POST', '/api/breakers/reset', undefined, 'reset every breaker'));
}

// ---------- the stream ----------
function render(snap) {
  last = snap;
  renderTopology(snap);
  renderBreakers(snap);
  renderFaults(snap);
  renderTraffic(snap);
  renderPurchases(snap);
  if (snap.checks && changed('checks', snap.checks)) renderChecks(snap.checks);
  const b = snap.services.backlog || {}, f = snap.services.fidelity_pending || {};
  const backlogText = `Now: ${b.pending_orders ?? '?'} deferred sales, ${b.outbox_bonuses ?? '?'} bonuses in ecommerce's outbox, ${f.depth ?? '?'} bonuses pending at Fidelity.`;
  if ($('#backlog-now').textContent !== backlogText) $('#backlog-now').textContent = backlogText;
  const down = (snap.services.unreachable || []).length;
  $('#conn').textContent = `live · ${new Date(snap.at_unix_ms).toLocaleTimeString()}${down ? ` · ${down} source(s) not answering` : ''}`;
}
let source = null;
function connect() {
  if (source) source.close();
  source = new EventSource('/api/events');
  source.addEventListener('snapshot', (e) => {
    try { render(JSON.parse(e.data)); } catch (err) { notice(`could not show a snapshot: ${err.message}`, true); }
  });
  source.addEventListener('error', () => {
    $('#conn').textContent = 'connection lost · reconnecting…';
    // EventSource retries by itself unless the server refused (401 after a token change):
    // then try again every 3 s, and say what to do.
    if (source.readyState === EventSource.CLOSED) {
      fetch('/api/state', { credentials: 'same-origin' }).then((r) => {
        if (r.status === 401) notice('Not signed in: open the URL that ftshop up printed (with ?token=…).', true);
      }).catch(() => {});
      setTimeout(connect, 3000);
    }
  });
}
document.addEventListener('DOMContentLoaded', () => {
  setupFaultForm();
  setupLoadForm();
  setupBuyForm();
  setupChecks();
  connect();
});
