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

async function api(path, body) {
  const opts = { method: body === undefined ? 'GET' : 'POST', headers: {} };
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

async function loadRuns() {
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
  fillSelect($('run'), state.runs.map((r) => r.name), state.runs[0].name);
  loadRun();
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
}

wire();
drawHistogram();
loadRuns();
