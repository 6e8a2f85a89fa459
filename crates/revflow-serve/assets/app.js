// Front end for `revflow serve`: plain DOM code, no framework, no network
// access beyond this page's own server.
'use strict';

const $ = (id) => document.getElementById(id);

// Read once; the header is only sent when the URL carried a token.
const TOKEN = new URLSearchParams(location.search).get('token');

const state = {
  runs: [],
  run: null,          // the selected run object from /api/runs
  lastUpload: null,   // data URL of the last chosen/dropped file
  marker: null,       // bits/dim of the last encoded input
  hist: new Map(),    // run name -> histogram, fetched once per run
};

// ---------- errors: one message per panel, shown together in #error ----------

const errors = new Map();

function renderErrors() {
  const el = $('error');
  el.textContent = [...errors.values()].join('\n');
  el.hidden = errors.size === 0;
}
function showError(panel, message) { errors.set(panel, message); renderErrors(); }
function clearError(panel) { if (errors.delete(panel)) renderErrors(); }

// ---------- server calls ----------

function runPath(run, action) {
  return `/api/runs/${encodeURIComponent(run)}/${action}`;
}

// Sends a request with the token header and returns the response; throws
// with the server's own message when it fails. GET without a body, POST with
// one, unless `method` says otherwise (DELETE).
async function send(path, body, method) {
  const opts = { method: method || (body === undefined ? 'GET' : 'POST'), headers: {} };
  if (TOKEN !== null) opts.headers['X-Revflow-Token'] = TOKEN;
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new Error(`network error: ${e.message}`);
  }
  if (!res.ok) {
    let message = res.statusText || `HTTP ${res.status}`;
    try {
      const data = await res.json();
      if (data && data.error) message = data.error;
    } catch (_) { /* not JSON: keep the status text */ }
    const retry = res.headers.get('Retry-After');
    if (res.status === 503 && retry) message += ` (retry in ${retry} s)`;
    throw new Error(message);
  }
  return res;
}

async function api(path, body) {
  const res = await send(path, body);
  try {
    return await res.json();
  } catch (_) {
    throw new Error(`bad response from ${path}`);
  }
}

// ---------- "latest wins": at most one request in flight per panel ----------

// While a request runs, newer parameters replace each other; only the newest
// is sent afterwards, and only if it differs from what was just sent.
function latestWins(send) {
  let busy = false;
  let pending = null;
  return async function request(params) {
    if (busy) { pending = params; return; }
    busy = true;
    try {
      let p = params;
      while (p) {
        const sent = JSON.stringify(p);
        await send(p);
        p = pending;
        pending = null;
        if (p && JSON.stringify(p) === sent) p = null;
      }
    } finally {
      busy = false;
    }
  };
}

// ---------- images with data-state (tests wait on it) ----------

// A generation counter keeps a late onload of an older image from
// marking a newer request as ready.
function markLoading(img) {
  img._gen = (img._gen || 0) + 1;
  img.dataset.state = 'loading';
}

function setImage(img, url) {
  const gen = img._gen;
  img.onload = () => { if (img._gen === gen) img.dataset.state = 'ready'; };
  img.onerror = () => { if (img._gen === gen) img.dataset.state = 'error'; };
  if (img.getAttribute('src') === url && img.complete) {
    img.dataset.state = 'ready';  // same picture: no new load event
  } else {
    img.src = url;
  }
}

function resetImage(img) {
  img._gen = (img._gen || 0) + 1;
  img.removeAttribute('src');
  delete img.dataset.state;
}

// A panel posts {run, body} to one action and applies the reply, unless the
// user has switched runs meanwhile (then the reply is stale and dropped).
function panel(name, action, img, apply) {
  return latestWins(async ({ run, body }) => {
    if (img) markLoading(img);
    let data;
    try {
      data = await api(runPath(run, action), body);
    } catch (e) {
      if (!state.run || run !== state.run.name) return;
      showError(name, e.message);
      if (img) img.dataset.state = 'error';
      return;
    }
    if (!state.run || run !== state.run.name) return;
    clearError(name);
    apply(data);
  });
}

// ---------- Samples ----------

const samples = panel('samples', 'sample', $('samples'), (d) => setImage($('samples'), d.image));

function requestSamples() {
  const run = state.run;
  if (!run) return;
  const temperature = Number($('temperature').value);
  $('temperature-value').textContent = temperature.toFixed(2);
  const seed = Math.max(0, Math.floor(Number($('seed').value) || 0));
  samples({
    run: run.name,
    body: {
      temperature,
      seed,
      n: run.kind === 'vector' ? 2000 : 64,
      class: (run.conditional && $('sample-class').value) || null,
    },
  });
}

// ---------- Encode and decode ----------

const encode = panel('encode', 'encode', $('decoded'), (d) => {
  setImage($('original'), d.original);
  setImage($('decoded'), d.decoded);
  $('label').textContent = d.label === null || d.label === undefined ? '' : `(label ${d.label})`;

  const levels = $('levels');
  levels.replaceChildren();
  (d.levels || []).forEach((level, k) => {
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    img.className = 'pix small';
    img.alt = `latent level ${k + 1}`;
    img.src = level.image;
    const cap = document.createElement('figcaption');
    cap.textContent = `level ${k + 1}: ${level.shape.join('×')}`;
    fig.append(img, cap);
    levels.append(fig);
  });

  $('roundtrip').textContent =
    `${d.pixels_differ} pixels differ of ${d.pixels} (largest error ${Number(d.max_error).toExponential(1)})`;
  $('bits').textContent = `${Number(d.bits_per_dim).toFixed(3)} bits/dim`;
  setMarker(Number(d.bits_per_dim));
});

function requestEncode(input) {
  if (!state.run) return;
  encode({ run: state.run.name, body: { input, class: null } });
}

function readFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith('image/')) {
    showError('encode', `${file.name} is not an image`);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.lastUpload = reader.result;
    $('use-upload-a').disabled = false;
    $('use-upload-b').disabled = false;
    requestEncode(reader.result);
  };
  reader.onerror = () => showError('encode', `could not read ${file.name}`);
  reader.readAsDataURL(file);
}

// ---------- Where it falls (histogram) ----------

const histogram = panel('histogram', 'histogram', null, (d) => {
  state.hist.set(state.run.name, d);
  drawHistogram();
});

function setMarker(value) {
  state.marker = value;
  const canvas = $('histogram');
  if (value === null) canvas.removeAttribute('data-marker');
  else canvas.dataset.marker = String(value);
  drawHistogram();
}

function drawHistogram() {
  const canvas = $('histogram');
  const g = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height;
  const pad = { l: 12, r: 12, t: 20, b: 22 };
  const pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
  g.clearRect(0, 0, W, H);
  g.font = '12px system-ui, sans-serif';
  g.textBaseline = 'alphabetic';

  const h = state.run && state.hist.get(state.run.name);
  if (!h || !h.counts || !h.counts.length) {
    g.fillStyle = '#888';
    g.textAlign = 'center';
    g.fillText('no histogram yet', W / 2, H / 2);
    return;
  }

  const max = Math.max(1, ...h.counts);
  const bw = pw / h.counts.length;
  g.fillStyle = '#9aa8b8';
  h.counts.forEach((n, i) => {
    const bh = (n / max) * ph;
    g.fillRect(pad.l + i * bw, pad.t + ph - bh, Math.max(1, bw - 1), bh);
  });

  // Axis and labels: lo at the left edge, hi at the right.
  g.fillStyle = '#444';
  g.fillRect(pad.l, pad.t + ph, pw, 1);
  const y = H - 6;
  g.textAlign = 'left';
  g.fillText(h.lo.toFixed(2), pad.l, y);
  g.textAlign = 'right';
  g.fillText(h.hi.toFixed(2), W - pad.r, y);
  g.textAlign = 'center';
  g.fillText(`bits/dim, n = ${h.n}, mean ${h.mean.toFixed(2)}`, W / 2, y);

  if (state.marker === null || !Number.isFinite(state.marker)) return;
  // Clamp so an input outside the test range still shows at the edge.
  const span = h.hi - h.lo || 1;
  const f = Math.min(1, Math.max(0, (state.marker - h.lo) / span));
  const x = pad.l + f * pw;
  g.fillStyle = '#d22';
  g.fillRect(x - 1, pad.t - 4, 2, ph + 4);
  g.textAlign = f < 0.15 ? 'left' : f > 0.85 ? 'right' : 'center';
  g.fillText(state.marker.toFixed(3), x, pad.t - 7);
}

// ---------- Interpolate ----------

const interp = panel('interpolate', 'interpolate', $('interp'), (d) => setImage($('interp'), d.image));

function requestInterp() {
  if (!state.run || state.run.kind !== 'image') return;
  const t = Number($('interp-t').value);
  $('interp-t-value').textContent = t.toFixed(2);
  interp({
    run: state.run.name,
    body: { a: $('interp-a').value.trim(), b: $('interp-b').value.trim(), t },
  });
}

function useUpload(field) {
  if (!state.lastUpload) return;
  $(field).value = state.lastUpload;
  requestInterp();
}

// ---------- Manipulate ----------

const manip = panel('manipulate', 'manipulate', $('manip'), (d) => setImage($('manip'), d.image));

function requestManip() {
  const run = state.run;
  const attributes = (run && run.attributes) || [];
  if (!run || run.kind !== 'image' || !((run.classes || []).length || attributes.length)) return;
  const alpha = Number($('manip-alpha').value);
  $('manip-alpha-value').textContent = alpha.toFixed(1);
  // A class direction (from → to), or an attribute of the run's attributes.csv.
  const attribute = $('manip-attribute').value;
  $('manip-from').disabled = $('manip-to').disabled = Boolean(attribute);
  const direction = attribute
    ? { attribute }
    : { from: $('manip-from').value, to: $('manip-to').value };
  manip({
    run: run.name,
    body: { input: $('manip-input').value.trim(), ...direction, alpha },
  });
}

function fillSelect(select, values, selected, first) {
  select.replaceChildren();
  if (first) select.append(new Option(first, ''));
  for (const v of values) select.append(new Option(v, v));
  if (selected !== undefined) select.value = selected;
}

// ---------- run selection ----------

function loadRun() {
  const run = state.runs.find((r) => r.name === $('run').value) || null;
  state.run = run;
  errors.clear();
  renderErrors();
  if (!run) return;

  const isImage = run.kind === 'image';
  const classes = run.classes || [];
  document.body.classList.toggle('kind-vector', !isImage);
  document.querySelectorAll('.image-only').forEach((el) => { el.hidden = !isImage; });
  // Only a class-conditional model samples a chosen class.
  document.querySelectorAll('.conditional-only').forEach((el) => { el.hidden = !run.conditional; });

  const shape = run.shape ? run.shape.join('×') : `${run.dims} dims`;
  $('run-info').textContent = `${run.model} · ${run.kind} · ${shape}`;
  // Loads the run on the server (weights, data) and tells the size of its test set.
  api(`/api/runs/${encodeURIComponent(run.name)}`).then((info) => {
    if (state.run !== run) return;
    const bits = info.n_bits ? ` · ${info.n_bits} bits` : '';
    $('run-info').textContent = `${run.model} · ${run.kind} · ${shape}${bits} · ${info.test_size} test examples`;
    if (info.test_size > 0) $('test-index').max = String(info.test_size - 1);
  }, (e) => showError('runs', e.message));

  // Clear what belonged to the previous run.
  for (const id of ['samples', 'original', 'decoded', 'interp', 'manip']) resetImage($(id));
  $('levels').replaceChildren();
  for (const id of ['roundtrip', 'bits', 'label']) $(id).textContent = '';
  setMarker(null);

  fillSelect($('sample-class'), classes, '', 'any');
  fillSelect($('manip-from'), classes, classes[0]);
  fillSelect($('manip-to'), classes, classes[1] !== undefined ? classes[1] : classes[0]);
  const attributes = run.attributes || [];
  // Without classes, only attribute directions exist.
  if (classes.length) fillSelect($('manip-attribute'), attributes, '', 'between classes');
  else fillSelect($('manip-attribute'), attributes, attributes[0]);
  $('manip-attribute-label').hidden = !attributes.length;
  const directions = classes.length > 0 || attributes.length > 0;
  $('manip-note').hidden = directions;
  for (const id of ['manip-input', 'manip-attribute', 'manip-from', 'manip-to', 'manip-alpha']) $(id).disabled = !directions;

  requestSamples();
  if (!state.hist.has(run.name)) histogram({ run: run.name, body: undefined });
  requestInterp();
  requestManip();
}

// Lists the runs and selects `select` when given, else keeps the one shown
// (the first at the start); a run already shown is not loaded again.
async function loadRuns(select) {
  let data;
  try {
    data = await api('/api/runs');
  } catch (e) {
    showError('runs', e.message);
    return;
  }
  state.runs = data.runs || [];
  if (!state.runs.length) {
    $('run').disabled = true;
    showError('runs', 'no runs in this folder: train one with revflow train');
    return;
  }
  $('run').disabled = false;
  const names = state.runs.map((r) => r.name);
  const chosen = [select, state.run && state.run.name].find((n) => names.includes(n)) || names[0];
  fillSelect($('run'), names, chosen);
  if (!state.run || state.run.name !== chosen) loadRun();
}

// ---------- Watch training ----------

// Chart/CSV id suffix -> metric key in the run's metrics.jsonl.
const METRICS = [
  { id: 'loss', key: 'loss' },
  { id: 'bits', key: 'bits_per_dim' },
  { id: 'test', key: 'test_bits_per_dim' },
  { id: 'lr', key: 'lr' },
];
const PALETTE = ['#3a5f8a', '#d1495b', '#2e8b57', '#e08a1e', '#7b4fa3', '#1b9aaa', '#8c6d31', '#555555'];

const watch = {
  active: false,     // the watch view is shown, so its connections are open
  listed: false,     // the run list was read once
  runs: new Map(),   // checked run name -> its series, connection and panels
};

const runBoxes = () => [...$('watch-runs').querySelectorAll('input[type="checkbox"]')];
const checkedRuns = () => runBoxes().filter((b) => b.checked).map((b) => b.value);
const emptySeries = () => Object.fromEntries(METRICS.map((m) => [m.key, []]));

// A run's colour follows its place in the list, so it matches in every chart.
function runColour(name) {
  const i = runBoxes().findIndex((b) => b.value === name);
  return PALETTE[Math.max(0, i) % PALETTE.length];
}

// Adds a checkbox for each run not listed yet; checked boxes stay checked.
async function loadWatchRuns() {
  let data;
  try {
    data = await api('/api/runs');
  } catch (e) {
    showError('watch', e.message);
    renderStatus();
    return;
  }
  clearError('watch');
  const known = new Set(runBoxes().map((b) => b.value));
  const first = known.size === 0;
  (data.runs || []).forEach((run, i) => {
    if (known.has(run.name)) return;
    const input = document.createElement('input');
    input.type = 'checkbox';
    input.value = run.name;
    input.checked = first && i === 0;  // watch the first run by default
    input.addEventListener('change', syncWatched);
    const label = document.createElement('label');
    label.append(input, ` ${run.name}`);
    $('watch-runs').append(label);
  });
  syncWatched();
}

// Brings panels and connections in line with the checked boxes and the view
// shown: an unchecked run loses its panels, a hidden view its connections.
function syncWatched() {
  const checked = checkedRuns();
  for (const [name, w] of watch.runs) {
    if (checked.includes(name)) continue;
    disconnect(w);
    w.figure.remove();
    w.details.remove();
    clearError(`config ${name}`);
    watch.runs.delete(name);
  }
  for (const name of checked) {
    if (!watch.runs.has(name)) watch.runs.set(name, addRun(name));
    const w = watch.runs.get(name);
    if (watch.active && !w.source) connect(w);
    if (!watch.active) disconnect(w);
  }
  renderStatus();
  scheduleDraw();
}

// The run's samples figure and config, fetched once per check.
function addRun(name) {
  const img = document.createElement('img');
  img.className = 'watch-samples';
  img.dataset.run = name;
  img.alt = `latest samples of ${name}`;
  const caption = document.createElement('figcaption');
  const figure = document.createElement('figure');
  figure.append(img, caption);
  $('watch-samples').append(figure);

  const summary = document.createElement('summary');
  summary.textContent = name;
  const pre = document.createElement('pre');
  pre.textContent = 'loading…';
  const details = document.createElement('details');
  details.append(summary, pre);
  $('watch-config').append(details);
  api(runPath(name, 'config')).then(
    (d) => { pre.textContent = JSON.stringify(d.config, null, 2); },
    (e) => {
      pre.textContent = '';
      showError(`config ${name}`, `config of ${name}: ${e.message}`);
    });

  const w = { name, source: null, state: 'connecting', series: emptySeries(), step: null, checkpoint: null, img, caption, figure, details };
  renderCaption(w);
  return w;
}

function renderCaption(w) {
  const step = w.step === null ? 'no samples yet' : `step ${w.step}`;
  const checkpoint = w.checkpoint === null ? '' : ` · checkpoint ${w.checkpoint}`;
  w.caption.textContent = `${w.name} — ${step}${checkpoint}`;
}

// EventSource cannot send headers, so the token travels in the query.
function connect(w) {
  w.series = emptySeries();  // a new connection re-sends the whole file
  w.state = 'connecting';
  const url = runPath(w.name, 'watch') + (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : '');
  const source = new EventSource(url);
  w.source = source;
  const on = (type, handle) => source.addEventListener(type, (e) => {
    let data;
    try { data = JSON.parse(e.data); } catch (_) { return; }  // not JSON: ignore
    handle(data);
  });
  on('metrics', (lines) => {
    for (const line of lines) append(w, line);
    clearError(`watch ${w.name}`);  // a passing read problem is over
    w.state = 'live';
    renderStatus();
    scheduleDraw();
  });
  on('reset', () => { w.series = emptySeries(); scheduleDraw(); });
  on('samples', (d) => {
    w.step = d.step;
    w.img.src = d.image;
    w.img.dataset.step = String(d.step);
    renderCaption(w);
  });
  on('checkpoint', (d) => { w.checkpoint = d.step; renderCaption(w); });
  // The server could not read the run's files (the stream goes on).
  on('problem', (d) => showError(`watch ${w.name}`, `${w.name}: ${d.error}`));
  // Every (re)connection is a fresh read of the whole file: start the curves again, so a
  // resume that rewrote the file while disconnected is not mixed with what came before.
  source.onopen = () => { w.series = emptySeries(); w.state = 'live'; renderStatus(); scheduleDraw(); };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (not a dropped stream): the browser will not retry; the next
      // sync (refresh, checkbox, view switch) will.
      w.state = 'stopped';
      w.source = null;
      showError(`watch ${w.name}`, `live updates of ${w.name} stopped: the server refused them`);
    } else {
      w.state = 'lost';  // EventSource reconnects by itself
    }
    renderStatus();
  };
}

function disconnect(w) {
  if (w.source) w.source.close();
  w.source = null;
  clearError(`watch ${w.name}`);
}

// Appends each metric of one metrics.jsonl line. A step not past the last one
// is a line re-sent after an automatic reconnect: skipped.
function append(w, line) {
  if (typeof line.step !== 'number') return;
  for (const { key } of METRICS) {
    const value = line[key];
    const s = w.series[key];
    if (typeof value !== 'number' || (s.length && line.step <= s[s.length - 1][0])) continue;
    s.push([line.step, value]);
  }
}

function renderStatus() {
  const all = [...watch.runs.values()];
  const n = all.length;
  const any = (state) => all.some((w) => w.state === state);
  $('watch-status').textContent =
    !runBoxes().length ? 'no runs listed: refresh the list once training has started'
    : n === 0 ? 'no run checked'
    : any('lost') ? 'connection lost, reconnecting…'
    : any('stopped') ? 'live updates stopped'
    : `${n} run${n === 1 ? '' : 's'} · ${any('connecting') ? 'connecting…' : 'live'}`;
}

// Events can come in bursts: draw at most four times a second.
let drawTimer = null;
function scheduleDraw() {
  if (drawTimer !== null) return;
  drawTimer = setTimeout(() => {
    drawTimer = null;
    drawCharts();
  }, 250);
}

function drawCharts() {
  const runs = [...watch.runs.values()];
  for (const { id, key } of METRICS) {
    drawChart($(`chart-${id}`), runs.map((w) => ({ name: w.name, colour: runColour(w.name), points: w.series[key] })));
  }
}

// Lowest and highest value; a flat series gets some room around it.
// (A loop, not Math.min(...v): long runs can exceed the argument limit.)
function extent(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (lo < hi) return [lo, hi];
  const room = Math.abs(lo) * 0.1 || 1;
  return [lo - room, hi + room];
}

// Axis labels: 3 significant digits, an exponent for tiny or huge values (lr).
function fmt(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-2 || a >= 1e5) ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// One line per run (x = step), a legend on top, min/max labels on both axes.
function drawChart(canvas, lines) {
  const g = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height;
  const pad = { l: 58, r: 14, t: 24, b: 22 };
  const pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
  g.clearRect(0, 0, W, H);
  g.font = '12px system-ui, sans-serif';
  const points = lines.flatMap((l) => l.points);
  canvas.dataset.points = String(points.length);  // tests read it
  if (!points.length) {
    g.fillStyle = '#888';
    g.textAlign = 'center';
    g.fillText('no data yet', W / 2, H / 2);
    return;
  }

  const [x0, x1] = extent(points.map((p) => p[0]));
  const [y0, y1] = extent(points.map((p) => p[1]));
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * pw;
  const Y = (y) => pad.t + ph - ((y - y0) / (y1 - y0)) * ph;

  g.fillStyle = '#444';
  g.fillRect(pad.l, pad.t, 1, ph);
  g.fillRect(pad.l, pad.t + ph, pw, 1);
  g.textAlign = 'right';
  g.textBaseline = 'top';
  g.fillText(fmt(y1), pad.l - 4, pad.t);
  g.textBaseline = 'bottom';
  g.fillText(fmt(y0), pad.l - 4, pad.t + ph);
  g.textBaseline = 'alphabetic';
  g.fillText(String(Math.round(x1)), W - pad.r, H - 6);
  g.textAlign = 'left';
  g.fillText(String(Math.round(x0)), pad.l, H - 6);
  g.textAlign = 'center';
  g.fillText('step', pad.l + pw / 2, H - 6);

  let lx = pad.l;
  g.textAlign = 'left';
  g.lineWidth = 1.5;
  for (const { name, colour, points: p } of lines) {
    g.strokeStyle = g.fillStyle = colour;
    g.fillRect(lx, 9, 12, 3);
    g.fillText(name, lx + 16, 15);
    lx += 28 + g.measureText(name).width;
    if (!p.length) continue;
    if (p.length === 1) g.fillRect(X(p[0][0]) - 2, Y(p[0][1]) - 2, 4, 4);  // a lone point is a dot
    g.beginPath();
    g.moveTo(X(p[0][0]), Y(p[0][1]));
    for (const [x, y] of p) g.lineTo(X(x), Y(y));
    g.stroke();
  }
}

// Fetches one metric as CSV for every checked run and saves RUN-KEY.csv.
async function downloadCsv(key) {
  const runs = checkedRuns();
  if (!runs.length) {
    showError('csv', 'check a run to download its CSV');
    return;
  }
  const failed = [];
  for (const run of runs) {
    try {
      const res = await send(`${runPath(run, 'curve.csv')}?metric=${encodeURIComponent(key)}`);
      saveFile(new Blob([await res.text()], { type: 'text/csv' }), `${run}-${key}.csv`);
    } catch (e) {
      failed.push(`CSV of ${run}: ${e.message}`);
    }
  }
  if (failed.length) showError('csv', failed.join('\n'));
  else clearError('csv');
}

function saveFile(blob, filename) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  // Revoking at once can cancel the download in some browsers.
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---------- 2-D playground ----------

// One training job per page. The server cancels a job whose page disconnects,
// so closing the stream of the previous job is how a new one replaces it.
const pg = {
  id: null,       // the job shown (its pictures, layers, save)
  source: null,   // its EventSource while it trains
  layers: null,   // [{name, key, points}] after it is done
  bounds: null,   // fixed axes for every layer
  groups: null,   // point indices by colour shade
};
const PG_PLOTS = ['density', 'latents', 'grid'];
const PG_TINT = '#d1495b';  // the kept (key) coordinate of a coupling
const SHADES = 24;          // colours of the layer plot, drawn one batch each

const pgPath = (id, action) => `/api/playground/${id}${action ? `/${action}` : ''}`;

// data-state: running | done | cancelled | failed (tests wait on it).
function setPgStatus(text, state) {
  $('pg-status').textContent = text;
  $('pg-status').dataset.state = state;
}

// Stops listening to the job (it ended, or a new one replaces it).
function closePlayground(text, state) {
  if (pg.source) pg.source.close();
  pg.source = null;
  $('pg-cancel').disabled = true;
  if (text) setPgStatus(text, state);
}

async function startPlayground() {
  const body = {
    set: $('pg-set').value,
    flow: $('pg-flow').value,
    steps: Number($('pg-steps').value),
    layers: Number($('pg-layers').value),
    hidden: Number($('pg-hidden').value),
  };
  $('pg-start').disabled = true;  // a double click would start two jobs
  let data;
  try {
    data = await api('/api/playground', body);
  } catch (e) {
    showError('playground', `2-D playground: ${e.message}`);  // a job shown goes on
    return;
  } finally {
    $('pg-start').disabled = false;
  }
  for (const p of ['playground', 'playground layers', 'playground save']) clearError(p);
  closePlayground();

  pg.id = data.id;
  pg.layers = null;
  for (const k of PG_PLOTS) {
    resetImage($(`pg-${k}`));
    delete $(`pg-${k}`).dataset.step;
  }
  $('card-pg-layers').hidden = true;
  $('pg-progress').value = 0;
  $('pg-save-name').value = `${body.set}-${body.flow}`;
  $('pg-save-name').disabled = $('pg-save').disabled = true;
  $('pg-saved').textContent = 'Once trained, the flow can be saved and opened in Explore.';
  $('pg-cancel').disabled = false;
  setPgStatus('starting…', 'running');
  watchPlayground(data.id);
}

// EventSource cannot send headers, so the token travels in the query.
function watchPlayground(id) {
  const url = pgPath(id, 'events') + (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : '');
  const source = new EventSource(url);
  pg.source = source;
  const on = (type, handle) => source.addEventListener(type, (e) => {
    let data;
    try { data = JSON.parse(e.data); } catch (_) { return; }  // not JSON: ignore
    handle(data);
  });
  on('progress', (d) => {
    $('pg-progress').value = d.steps ? d.step / d.steps : 0;
    setPgStatus(`step ${d.step} / ${d.steps} · loss ${Number(d.loss).toFixed(2)}`, 'running');
  });
  on('snapshot', (d) => {
    for (const k of PG_PLOTS) {
      $(`pg-${k}`).src = d[k];
      $(`pg-${k}`).dataset.step = String(d.step);
    }
  });
  on('done', (d) => {
    closePlayground(`done: test ${Number(d.test_bits_per_dim).toFixed(2)} bits/dim`, 'done');
    $('pg-progress').value = 1;
    $('pg-save-name').disabled = $('pg-save').disabled = false;
    loadLayers(id);
  });
  on('cancelled', () => closePlayground('cancelled', 'cancelled'));
  on('failed', (d) => closePlayground(`failed: ${d.error}`, 'failed'));
  // No reconnecting: the server has cancelled a job whose stream dropped.
  source.onerror = () => closePlayground('failed: lost the connection to the server', 'failed');
}

async function cancelPlayground() {
  const id = pg.id;
  if (id === null || !pg.source) return;
  $('pg-cancel').disabled = true;
  try {
    await send(pgPath(id), undefined, 'DELETE');  // the stream then says `cancelled`
    clearError('playground');
  } catch (e) {
    showError('playground', `cancel: ${e.message}`);
    if (pg.id === id && pg.source) $('pg-cancel').disabled = false;
  }
}

async function savePlayground() {
  const id = pg.id;
  const name = $('pg-save-name').value.trim();
  $('pg-save').disabled = true;
  let data;
  try {
    data = await api(pgPath(id, 'save'), { name });
  } catch (e) {
    showError('playground save', `save: ${e.message}`);
    return;
  } finally {
    if (pg.id === id) $('pg-save').disabled = false;
  }
  clearError('playground save');
  const run = data.run || name;
  const link = document.createElement('a');
  link.href = '#';
  link.textContent = 'open it in Explore';
  link.addEventListener('click', (e) => { e.preventDefault(); openInExplore(run); });
  $('pg-saved').replaceChildren(`saved as ${run}: `, link);
  // Explore not shown yet reads its list, this run included, when it is.
  if (exploreStarted) loadRuns();
}

function openInExplore(run) {
  exploreStarted = true;  // the listing below replaces the one showView would start
  loadRuns(run);
  showView('explore');
  location.hash = '';
}

// ----- layer by layer -----

// The q-quantile of the finite values (NaN from a diverged flow is left out).
function quantile(values, q) {
  const s = Float64Array.from(values.filter(Number.isFinite)).sort();
  return s.length ? s[Math.round(q * (s.length - 1))] : NaN;
}

async function loadLayers(id) {
  let data;
  try {
    data = await api(pgPath(id, 'layers'));
  } catch (e) {
    if (pg.id === id) showError('playground layers', `layers: ${e.message}`);
    return;
  }
  const layers = data.layers || [];
  if (pg.id !== id || !layers.length) return;
  pg.layers = layers;
  pg.bounds = layerBounds(layers);
  pg.groups = shadeGroups(layers[0].points);
  $('pg-layer').max = String(layers.length - 1);
  $('pg-layer').value = '0';
  $('card-pg-layers').hidden = false;
  drawLayer();
}

// Fixed axes for all layers, so the motion shows: the union of each layer's
// central 99.5 %, made square so that shapes are not stretched.
function layerBounds(layers) {
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const { points } of layers) {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    x0 = Math.min(x0, quantile(xs, 0.0025));
    x1 = Math.max(x1, quantile(xs, 0.9975));
    y0 = Math.min(y0, quantile(ys, 0.0025));
    y1 = Math.max(y1, quantile(ys, 0.9975));
  }
  if (![x0, x1, y0, y1].every(Number.isFinite)) return { x0: -1, x1: 1, y0: -1, y1: 1 };
  const half = (Math.max(x1 - x0, y1 - y0) / 2 || 1) * 1.05;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  return { x0: cx - half, x1: cx + half, y0: cy - half, y1: cy + half };
}

// A point keeps the colour of its distance from the data's centre in every
// layer, so one can follow it; indices grouped by shade, one fillStyle each.
function shadeGroups(points) {
  let cx = 0, cy = 0;
  for (const [x, y] of points) { cx += x / points.length; cy += y / points.length; }
  const dist = points.map(([x, y]) => Math.hypot(x - cx, y - cy));
  const far = quantile(dist, 0.99) || 1;
  const groups = Array.from({ length: SHADES }, () => []);
  dist.forEach((d, i) => {
    const s = Number.isFinite(d) ? Math.min(SHADES - 1, Math.floor((d / far) * SHADES)) : SHADES - 1;
    groups[s].push(i);
  });
  return groups;
}

// Blue at the centre to orange at the rim.
const shadeColour = (s) => `hsl(${Math.round(250 - (s / (SHADES - 1)) * 220)}, 70%, 45%)`;

function stepLayer(delta) {
  const slider = $('pg-layer');
  slider.value = String(Math.min(Number(slider.max), Math.max(0, Number(slider.value) + delta)));
  drawLayer();
}

function drawLayer() {
  if (!pg.layers) return;
  const canvas = $('pg-layer-canvas');
  const last = pg.layers.length - 1;
  const k = Math.min(last, Math.max(0, Math.round(Number($('pg-layer').value)) || 0));
  const { name, key, points } = pg.layers[k];
  $('pg-layer-name').textContent = `${k} / ${last}: ${name}`;
  $('pg-prev').disabled = k === 0;
  $('pg-next').disabled = k === last;

  const g = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height;
  const pad = { l: 44, r: 12, t: 26, b: 26 };
  const pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
  const b = pg.bounds;
  const X = (x) => pad.l + ((x - b.x0) / (b.x1 - b.x0)) * pw;
  const Y = (y) => pad.t + ph - ((y - b.y0) / (b.y1 - b.y0)) * ph;
  g.clearRect(0, 0, W, H);
  g.font = '12px system-ui, sans-serif';

  // Faint zero lines, then the axes: x₁ along the bottom, x₂ up the left,
  // the coupling's key (kept as it is) thick and tinted.
  g.fillStyle = '#e6e6e6';
  if (b.x0 < 0 && b.x1 > 0) g.fillRect(X(0), pad.t, 1, ph);
  if (b.y0 < 0 && b.y1 > 0) g.fillRect(pad.l, Y(0), pw, 1);
  g.fillStyle = key === 0 ? PG_TINT : '#444';
  g.fillRect(pad.l, pad.t + ph, pw, key === 0 ? 3 : 1);
  g.textBaseline = 'alphabetic';
  g.textAlign = 'center';
  g.fillText('x₁', pad.l + pw / 2, H - 6);
  g.fillStyle = key === 1 ? PG_TINT : '#444';
  g.fillRect(pad.l - (key === 1 ? 2 : 0), pad.t, key === 1 ? 3 : 1, ph);
  g.textAlign = 'right';
  g.fillText('x₂', pad.l - 6, pad.t + ph / 2);

  g.fillStyle = '#444';
  g.fillText(fmt(b.x1), W - pad.r, H - 6);
  g.textAlign = 'left';
  g.fillText(fmt(b.x0), pad.l, H - 6);
  g.textAlign = 'right';
  g.textBaseline = 'top';
  g.fillText(fmt(b.y1), pad.l - 6, pad.t);
  g.textBaseline = 'bottom';
  g.fillText(fmt(b.y0), pad.l - 6, pad.t + ph);

  if (key === 0 || key === 1) {
    g.fillStyle = PG_TINT;
    g.textAlign = 'left';
    g.textBaseline = 'alphabetic';
    g.fillText(`key: ${key === 0 ? 'x₁' : 'x₂'} (kept)`, pad.l, 16);
  }

  // Points outside the axes (the 0.5 % tails) are clipped.
  g.save();
  g.beginPath();
  g.rect(pad.l, pad.t, pw, ph);
  g.clip();
  g.globalAlpha = 0.8;
  pg.groups.forEach((group, s) => {
    g.fillStyle = shadeColour(s);
    for (const i of group) {
      const p = points[i];
      if (p) g.fillRect(X(p[0]) - 1.25, Y(p[1]) - 1.25, 2.5, 2.5);
    }
  });
  g.restore();
  canvas.dataset.layer = String(k);  // tests read it
}

// ---------- views ----------

let view = null;
let exploreStarted = false;

const VIEWS = ['explore', 'watch', 'playground'];
const viewFromHash = () => VIEWS.find((v) => v !== 'explore' && location.hash === `#${v}`) || 'explore';

function showView(name) {
  if (name === view) return;
  view = name;
  const watching = name === 'watch';
  for (const v of VIEWS) {
    $(`view-${v}`).hidden = v !== name;
    $(`tab-${v}`).classList.toggle('active', v === name);
  }
  document.querySelectorAll('.explore-only').forEach((el) => { el.hidden = name !== 'explore'; });
  // Explore loads its run on the server, so only once it is first shown.
  if (name === 'explore' && !exploreStarted) {
    exploreStarted = true;
    loadRuns();
  }
  watch.active = watching;
  if (watching && !watch.listed) {
    watch.listed = true;
    loadWatchRuns();
  } else {
    syncWatched();  // closes connections on leaving, reopens on return
  }
}

// ---------- wiring ----------

function wire() {
  $('run').addEventListener('change', loadRun);

  $('temperature').addEventListener('input', requestSamples);
  $('seed').addEventListener('change', requestSamples);
  $('sample-class').addEventListener('change', requestSamples);

  $('file').addEventListener('change', (e) => {
    readFile(e.target.files[0]);
    e.target.value = '';  // so choosing the same file again fires change
  });
  $('encode-test').addEventListener('click', () => {
    const i = Math.max(0, Math.floor(Number($('test-index').value) || 0));
    requestEncode(`test:${i}`);
  });

  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    readFile(e.dataTransfer.files[0]);
  });
  // A file dropped beside the zone should not navigate away from the page.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());

  $('interp-t').addEventListener('input', requestInterp);
  $('interp-a').addEventListener('change', requestInterp);
  $('interp-b').addEventListener('change', requestInterp);
  $('use-upload-a').addEventListener('click', () => useUpload('interp-a'));
  $('use-upload-b').addEventListener('click', () => useUpload('interp-b'));

  $('manip-alpha').addEventListener('input', requestManip);
  for (const id of ['manip-input', 'manip-attribute', 'manip-from', 'manip-to']) $(id).addEventListener('change', requestManip);

  $('tab-explore').addEventListener('click', () => { showView('explore'); location.hash = ''; });
  $('tab-watch').addEventListener('click', () => { showView('watch'); location.hash = '#watch'; });
  $('tab-playground').addEventListener('click', () => { showView('playground'); location.hash = '#playground'; });
  window.addEventListener('hashchange', () => showView(viewFromHash()));
  $('watch-refresh').addEventListener('click', loadWatchRuns);
  for (const { id, key } of METRICS) $(`csv-${id}`).addEventListener('click', () => downloadCsv(key));

  $('pg-start').addEventListener('click', startPlayground);
  $('pg-cancel').addEventListener('click', cancelPlayground);
  $('pg-layer').addEventListener('input', drawLayer);
  $('pg-prev').addEventListener('click', () => stepLayer(-1));
  $('pg-next').addEventListener('click', () => stepLayer(1));
  $('pg-save').addEventListener('click', savePlayground);
}

wire();
drawHistogram();
drawCharts();
showView(viewFromHash());
