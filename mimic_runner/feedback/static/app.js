// mimic-feedback page: plain JS and canvas, no dependencies, everything from this server.
// Coordinates: regions are stored image-normalised (x right, y down, both in [0, 1]); the
// view maps image pixels to canvas pixels by a scale and an offset shared by both canvases.
"use strict";

const $ = (sel) => document.querySelector(sel);
const CANVAS = 384;

const state = {
  info: null, split: "train", offset: 0, limit: 50, total: 0,
  imageId: null, image: null, attention: null, attentionVersion: null,
  rois: [], selected: null, tool: "pan", kind: "include", view: "side", opacity: 0.5,
  zoom: 1, panX: 0, panY: 0, drag: null, polygon: null, versions: [], status: null,
  polling: null,
};

// -- helpers ----------------------------------------------------------------------------------
function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(url, opts);
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const detail = data && data.detail ? data.detail : `${res.status} ${res.statusText}`;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

function guard(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (err) { setStatus(err.message, true); }
  };
}

function loadPixels(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      resolve({ canvas: c, w: c.width, h: c.height, data: ctx.getImageData(0, 0, c.width, c.height).data });
    };
    img.onerror = async () => {
      try { const r = await fetch(url); const d = await r.json(); reject(new Error(d.detail)); }
      catch (e) { reject(new Error(`cannot load ${url}`)); }
    };
    img.src = url;
  });
}

const enc = encodeURIComponent;
const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));

// -- colour maps ----------------------------------------------------------------------------------
const STOPS = [[0, [48, 18, 59]], [0.25, [40, 120, 230]], [0.5, [30, 200, 160]],
  [0.75, [250, 190, 40]], [1, [180, 20, 10]]];

function heat(v) {
  v = Math.min(1, Math.max(0, v));
  for (let i = 1; i < STOPS.length; i++) {
    if (v <= STOPS[i][0]) {
      const [a, ca] = STOPS[i - 1], [b, cb] = STOPS[i];
      const t = (v - a) / (b - a);
      return ca.map((x, k) => Math.round(x + t * (cb[k] - x)));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

function diverging(v) {  // v in [-1, 1]: blue = attention removed, red = attention added
  const t = Math.min(1, Math.abs(v));
  return v < 0 ? [Math.round(255 * (1 - t)), Math.round(255 * (1 - t * 0.6)), 255]
    : [255, Math.round(255 * (1 - t * 0.8)), Math.round(255 * (1 - t))];
}

function mapCanvas(values, w, h, colour) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = colour(values[i]);
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

async function fetchAttention(id, version) {  // exact float32 values, not an 8-bit image
  const q = version ? `?version=${version}` : "";
  const a = await api("GET", `/api/images/${enc(id)}/attention${q}`);
  const bytes = Uint8Array.from(atob(a.values), (c) => c.charCodeAt(0));
  return { w: a.width, h: a.height, version: a.version, values: new Float32Array(bytes.buffer) };
}

// -- view transform ---------------------------------------------------------------------------
function view() {
  const w = state.image ? state.image.w : 1, h = state.image ? state.image.h : 1;
  const s = Math.min(CANVAS / w, CANVAS / h) * state.zoom;
  return { s, ox: (CANVAS - w * s) / 2 + state.panX, oy: (CANVAS - h * s) / 2 + state.panY, w, h };
}

function toImage(canvas, ev) {  // event -> normalised image coordinates (unclamped)
  const r = canvas.getBoundingClientRect();
  const cx = (ev.clientX - r.left) * (canvas.width / r.width);
  const cy = (ev.clientY - r.top) * (canvas.height / r.height);
  const v = view();
  return { x: (cx - v.ox) / (v.s * v.w), y: (cy - v.oy) / (v.s * v.h) };
}

function toCanvas(p) {
  const v = view();
  return [v.ox + p[0] * v.w * v.s, v.oy + p[1] * v.h * v.s];
}

const clamp01 = (x) => Math.min(1, Math.max(0, x));

// -- drawing ----------------------------------------------------------------------------------
function drawRoi(ctx, roi, selected, preview = false) {
  ctx.save();
  ctx.lineWidth = selected ? 3 : 2;
  ctx.strokeStyle = roi.kind === "include" ? "#2ecc71" : "#ff5252";
  ctx.setLineDash(roi.kind === "include" ? [] : [6, 4]);
  if (preview) ctx.globalAlpha = 0.8;
  ctx.beginPath();
  const pts = roi.points.map(toCanvas);
  if (roi.shape === "rect") {
    const [[x0, y0], [x1, y1]] = pts;
    ctx.rect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  } else if (roi.shape === "ellipse") {
    const [[x0, y0], [x1, y1]] = pts;
    ctx.ellipse((x0 + x1) / 2, (y0 + y1) / 2, Math.abs(x1 - x0) / 2, Math.abs(y1 - y0) / 2, 0, 0, 2 * Math.PI);
  } else {
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (!preview) ctx.closePath();
  }
  ctx.save();  // a dark halo keeps the outline visible on any image or colour map
  ctx.setLineDash([]);
  ctx.lineWidth += 2;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.55)";
  ctx.stroke();
  ctx.restore();
  ctx.stroke();
  if (selected) {
    ctx.fillStyle = "rgba(255, 214, 0, 0.18)";
    ctx.fill();
  }
  ctx.restore();
}

function paint(canvas, layers) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  const v = view();
  ctx.imageSmoothingEnabled = false;
  for (const [source, alpha] of layers) {
    if (!source) continue;
    ctx.globalAlpha = alpha;
    ctx.drawImage(source, v.ox, v.oy, v.w * v.s, v.h * v.s);
  }
  ctx.globalAlpha = 1;
  state.rois.forEach((r) => drawRoi(ctx, r, state.selected === r.id));
  if (state.drag && state.drag.roi) drawRoi(ctx, state.drag.roi, false, true);
  if (state.polygon && state.polygon.length) {
    drawRoi(ctx, { shape: "polygon", kind: state.kind, points: state.polygon }, false, true);
  }
}

function render() {
  const heatLayer = state.attention ? state.attention.colour : null;
  const img = state.image ? state.image.canvas : null;
  if (state.view === "overlay") {
    paint($("#image-canvas"), [[img, 1], [heatLayer, state.opacity]]);
  } else {
    paint($("#image-canvas"), [[img, 1]]);
    paint($("#attention-canvas"), [[img, 1], [heatLayer, 1]]);
  }
  $("#zoom-level").textContent = `${Math.round(state.zoom * 100)}%`;
}

// -- images -----------------------------------------------------------------------------------
async function loadList() {
  const data = await api("GET", `/api/images?split=${state.split}&offset=${state.offset}&limit=${state.limit}`);
  state.total = data.total;
  const ul = $("#image-list");
  ul.innerHTML = "";
  for (const item of data.items) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.id = item.id;
    b.className = item.id === state.imageId ? "selected" : "";
    b.innerHTML = `<span></span><span class="count"></span>`;
    b.firstChild.textContent = `${item.id} · ${item.label_name}`;
    b.lastChild.textContent = item.n_rois ? `${item.n_rois} ROI` : "";
    b.addEventListener("click", guard(() => selectImage(item.id)));
    li.appendChild(b);
    ul.appendChild(li);
  }
  const last = Math.min(state.offset + state.limit, state.total);
  $("#page-info").textContent = `${state.total ? state.offset + 1 : 0}–${last} of ${state.total}`;
  $("#prev-page").disabled = state.offset === 0;
  $("#next-page").disabled = last >= state.total;
  return data;
}

function shownVersion() {
  const v = $("#version-select").value;
  return v ? Number(v) : null;
}

async function loadAttention() {
  if (!state.imageId) return;
  const a = await fetchAttention(state.imageId, shownVersion());
  state.attentionVersion = a.version;
  state.attention = a;
  colourAttention();
}

function colourAttention() {
  const a = state.attention;
  if (!a) return;
  let lo = Infinity, hi = -Infinity;
  for (const v of a.values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const stretch = $("#stretch").checked && hi > lo;
  const colour = stretch ? (v) => heat((v - lo) / (hi - lo)) : heat;
  a.colour = mapCanvas(a.values, a.w, a.h, colour);
  $("#attention-range").textContent = `v${state.attentionVersion}: ${lo.toFixed(2)}–${hi.toFixed(2)}${stretch ? " (stretched)" : ""}`;
  render();
}

async function selectImage(id) {
  state.imageId = id;
  state.selected = null;
  state.polygon = null;
  document.querySelectorAll("#image-list button").forEach((b) => b.classList.toggle("selected", b.dataset.id === id));
  const px = await loadPixels(`/api/images/${enc(id)}/image.png`);
  state.image = px;
  $("#image-caption").textContent = `${id} (${px.w}×${px.h})`;
  $("#prediction").hidden = true;
  await Promise.all([loadAttention(), loadRois()]);
  if (!$("#diff").hidden) await renderDiffMaps();
  setStatus(`image ${id}`);
}

// -- regions ----------------------------------------------------------------------------------
async function loadRois() {
  state.rois = state.imageId ? await api("GET", `/api/rois?image_id=${enc(state.imageId)}`) : [];
  const ul = $("#roi-list");
  ul.innerHTML = "";
  for (const r of state.rois) {
    const li = document.createElement("li");
    li.className = `${r.kind}${state.selected === r.id ? " selected" : ""}`;
    li.dataset.id = r.id;
    const label = document.createElement("span");
    label.textContent = `#${r.id} ${r.shape} · ${r.kind === "include" ? "look here" : "not here"}`;
    label.addEventListener("click", () => { state.selected = r.id; loadRois(); });
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "delete";
    del.addEventListener("click", guard(() => deleteRoi(r.id)));
    li.append(label, del);
    ul.appendChild(li);
  }
  const split = state.imageId ? state.split : null;
  const allowed = state.info ? state.info.feedback_splits : ["train"];
  $("#roi-note").textContent = split && !allowed.includes(split)
    ? `Feedback is taken on ${allowed.join(", ")} images only: ${split} images stay held out.` : "";
  $("#delete-roi").disabled = state.selected === null;
  render();
}

async function addRoi(roi) {
  await api("POST", "/api/rois", { rois: [{ image_id: state.imageId, ...roi }] });
  await loadRois();
  await loadList();
  await refreshStatus();
  setStatus(`added a ${roi.shape} (${roi.kind === "include" ? "look here" : "not here"})`);
}

async function deleteRoi(id) {
  await api("DELETE", `/api/rois/${id}`);
  if (state.selected === id) state.selected = null;
  await loadRois();
  await loadList();
  await refreshStatus();
  setStatus(`deleted region #${id}`);
}

function inside(roi, p) {
  const pts = roi.points;
  if (roi.shape === "rect") {
    const [[x0, y0], [x1, y1]] = pts;
    return p.x >= Math.min(x0, x1) && p.x <= Math.max(x0, x1) && p.y >= Math.min(y0, y1) && p.y <= Math.max(y0, y1);
  }
  if (roi.shape === "ellipse") {
    const [[x0, y0], [x1, y1]] = pts;
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, rx = Math.abs(x1 - x0) / 2, ry = Math.abs(y1 - y0) / 2;
    return ((p.x - cx) / rx) ** 2 + ((p.y - cy) / ry) ** 2 <= 1;
  }
  let ins = false;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    const [xi, yi] = pts[i], [xj, yj] = pts[j];
    if ((yi > p.y) !== (yj > p.y) && p.x < ((xj - xi) * (p.y - yi)) / (yj - yi) + xi) ins = !ins;
  }
  return ins;
}

// -- pointer interaction ----------------------------------------------------------------------
function probe(canvas, ev) {
  if (!state.image) return;
  const p = toImage(canvas, ev);
  const c = Math.floor(p.x * state.image.w), r = Math.floor(p.y * state.image.h);
  if (c < 0 || r < 0 || c >= state.image.w || r >= state.image.h) {
    $("#probe").textContent = "outside the image";
    return;
  }
  const i = 4 * (r * state.image.w + c), d = state.image.data;
  const pixel = state.info && state.info.channels === 3 ? `(${d[i]}, ${d[i + 1]}, ${d[i + 2]})` : `${d[i]}`;
  let att = "–";
  if (state.attention) {
    const ac = Math.floor(p.x * state.attention.w), ar = Math.floor(p.y * state.attention.h);
    att = state.attention.values[ar * state.attention.w + ac].toFixed(3);
  }
  $("#probe").textContent = `x ${c}, y ${r} · pixel ${pixel} · attention ${att}`;
  $("#probe").dataset.pixel = pixel;
  $("#probe").dataset.attention = att;
}

function onDown(ev) {
  if (!state.image) return;
  const canvas = ev.currentTarget;
  const p = toImage(canvas, ev);
  if (state.tool === "pan" || ev.button === 1) {
    state.drag = { pan: true, x: ev.clientX, y: ev.clientY, panX: state.panX, panY: state.panY };
  } else if (state.tool === "rect" || state.tool === "ellipse") {
    const start = [clamp01(p.x), clamp01(p.y)];
    state.drag = { roi: { shape: state.tool, kind: state.kind, points: [start, start] } };
  } else if (state.tool === "select") {
    const hit = [...state.rois].reverse().find((r) => inside(r, p));
    state.selected = hit ? hit.id : null;
    loadRois();
  }
  canvas.setPointerCapture && ev.pointerId !== undefined && canvas.setPointerCapture(ev.pointerId);
}

function onMove(ev) {
  const canvas = ev.currentTarget;
  probe(canvas, ev);
  if (!state.drag) return;
  if (state.drag.pan) {
    const r = canvas.getBoundingClientRect(), k = canvas.width / r.width;
    state.panX = state.drag.panX + (ev.clientX - state.drag.x) * k;
    state.panY = state.drag.panY + (ev.clientY - state.drag.y) * k;
  } else if (state.drag.roi) {
    const p = toImage(canvas, ev);
    state.drag.roi.points[1] = [clamp01(p.x), clamp01(p.y)];
  }
  render();
}

const onUp = guard(async () => {
  const drag = state.drag;
  state.drag = null;
  if (drag && drag.roi) {
    const [[x0, y0], [x1, y1]] = drag.roi.points;
    if (Math.abs(x1 - x0) < 0.005 || Math.abs(y1 - y0) < 0.005) { render(); return; }
    await addRoi(drag.roi);
  }
  render();
});

const onClick = guard(async (ev) => {
  if (state.tool !== "polygon" || !state.image) return;
  const p = toImage(ev.currentTarget, ev);
  state.polygon = state.polygon || [];
  state.polygon.push([clamp01(p.x), clamp01(p.y)]);
  render();
});

const closePolygon = guard(async () => {
  const pts = state.polygon;
  state.polygon = null;
  if (!pts) return;
  // A double-click also fires two clicks on the same spot: drop the repeated points.
  const unique = pts.filter((p, i) => i === 0 || Math.hypot(p[0] - pts[i - 1][0], p[1] - pts[i - 1][1]) > 1e-3);
  if (unique.length < 3) { render(); setStatus("a polygon needs at least 3 points", true); return; }
  await addRoi({ shape: "polygon", kind: state.kind, points: unique });
});

function onWheel(ev) {
  if (!state.image) return;
  ev.preventDefault();
  zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, ev.currentTarget, ev);
}

function zoomAt(factor, canvas, ev) {
  const old = view();
  let cx = CANVAS / 2, cy = CANVAS / 2;
  if (canvas && ev) {
    const r = canvas.getBoundingClientRect();
    cx = (ev.clientX - r.left) * (canvas.width / r.width);
    cy = (ev.clientY - r.top) * (canvas.height / r.height);
  }
  const zoom = Math.min(32, Math.max(0.25, state.zoom * factor));
  const f = zoom / state.zoom;
  state.zoom = zoom;
  // Keep the image point under (cx, cy) in place.
  const base = Math.min(CANVAS / old.w, CANVAS / old.h) * zoom;
  const ox = cx - (cx - old.ox) * f, oy = cy - (cy - old.oy) * f;
  state.panX = ox - (CANVAS - old.w * base) / 2;
  state.panY = oy - (CANVAS - old.h * base) / 2;
  render();
}

// -- prediction -------------------------------------------------------------------------------
async function showPrediction() {
  if (!state.imageId) throw new Error("choose an image first");
  const v = shownVersion();
  const p = await api("GET", `/api/images/${enc(state.imageId)}/prediction${v ? `?version=${v}` : ""}`);
  const el = $("#prediction");
  el.innerHTML = "";
  const head = document.createElement("div");
  head.id = "predicted-class";
  head.innerHTML = "<strong></strong> <span class='muted'></span>";
  head.firstChild.textContent = `Predicted: ${p.predicted_name} (${fmt(p.probabilities[p.predicted_name])})`;
  head.lastChild.textContent = `label: ${p.label_name} · version ${p.version}`;
  el.appendChild(head);
  for (const [name, prob] of Object.entries(p.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<span></span><span><span class="fill"></span></span><span class="mono"></span>`;
    row.children[0].textContent = name;
    row.querySelector(".fill").style.width = `${Math.round(prob * 100)}%`;
    row.children[2].textContent = fmt(prob);
    el.appendChild(row);
  }
  el.hidden = false;
}

// -- retraining -------------------------------------------------------------------------------
async function startRetrain(ev) {
  ev.preventDefault();
  const form = new FormData($("#retrain-form"));
  const body = {
    epochs: Number(form.get("epochs")), gamma: Number(form.get("gamma")), lr: Number(form.get("lr")),
    train: form.get("train"), mode: form.get("mode"),
  };
  if (form.get("max_batches")) body.max_batches = Number(form.get("max_batches"));
  await api("POST", "/api/retrain", body);
  setStatus("retraining started");
  pollRetrain();
}

function pollRetrain() {
  clearTimeout(state.polling);
  const tick = guard(async () => {
    const s = await api("GET", "/api/retrain");
    $("#retrain-progress").value = s.progress || 0;
    $("#retrain-message").textContent = s.error ? `failed: ${s.error}` : s.message || s.state;
    $("#retrain-message").dataset.state = s.state;
    $("#retrain").disabled = s.state === "running";
    if (s.state === "running") {
      state.polling = setTimeout(tick, 500);
    } else {
      await refreshStatus();
      if (s.state === "done") setStatus(`retraining done: candidate version ${s.version} is ready`);
      if (s.state === "failed") setStatus(`retraining failed: ${s.error}`, true);
    }
  });
  tick();
}

// -- differences and decisions ----------------------------------------------------------------
function row(table, cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    td.textContent = c;
    if (i > 0) td.className = "num";
    tr.appendChild(td);
  });
  table.appendChild(tr);
  return tr;
}

function header(table, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const th = document.createElement("th");
    th.textContent = c;
    tr.appendChild(th);
  }
  table.appendChild(tr);
}

async function showDiff() {
  const d = await api("GET", "/api/diff?heldout=val");
  state.diff = d;
  const t = $("#diff-summary");
  t.innerHTML = "";
  header(t, ["", `v${d.before_version}`, `v${d.after_version}`, "Δ"]);
  const fb = d.feedback, ho = d.heldout;
  const add = (label, ba, digits = 3) => ba && row(t, [label, fmt(ba.before, digits), fmt(ba.after, digits), fmt(ba.delta, digits)]);
  add(`feedback (${fb.n_images} img): share in "look here"`, fb.include_share);
  add("feedback: share in \"not here\"", fb.exclude_share);
  add("feedback: share on confounder", fb.confounder_share);
  add("feedback: mean M in \"look here\"", fb.include_attention);
  add("feedback: mean M in \"not here\"", fb.exclude_attention);
  add("feedback: accuracy", fb.accuracy);
  add(`${ho.split} (${ho.n_images} img): accuracy`, ho.accuracy);
  add(`${ho.split}: share on confounder`, ho.confounder_share);
  add(`${ho.split}: mean M on confounder`, ho.confounder_attention);
  add(`${ho.split}: mean M`, ho.attention_mean);
  row(t, [`${ho.split}: prediction changes`, "", String(ho.prediction_changes), ""]);
  row(t, [`${ho.split}: mean |ΔM|`, "", fmt(ho.mean_abs_attention_change, 4), ""]);
  $("#diff").hidden = false;
  await renderDiffMaps();
  setStatus(`differences between version ${d.before_version} and version ${d.after_version}`);
}

async function renderDiffMaps() {
  if (!state.diff || !state.imageId) return;
  const d = state.diff;
  const [b, a] = await Promise.all([fetchAttention(state.imageId, d.before_version),
    fetchAttention(state.imageId, d.after_version)]);
  const vb = b.values, va = a.values;
  const delta = va.map((x, i) => x - vb[i]);
  const peak = delta.reduce((m, x) => Math.max(m, Math.abs(x)), 0) || 1;
  const draw = (sel, src) => {
    const c = $(sel), ctx = c.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.drawImage(src, 0, 0, c.width, c.height);
  };
  draw("#diff-before", mapCanvas(vb, b.w, b.h, heat));
  draw("#diff-after", mapCanvas(va, a.w, a.h, heat));
  draw("#diff-delta", mapCanvas(delta, a.w, a.h, (x) => diverging(x / peak)));
  $("#diff-delta-caption").textContent = `after − before (±${peak.toFixed(3)})`;
  $("#diff-before-caption").textContent = `before (v${d.before_version})`;
  $("#diff-after-caption").textContent = `after (v${d.after_version})`;
}

function clearDecisionViews() {  // differences and retraining messages are stale after a decision
  state.diff = null;
  $("#diff").hidden = true;
  $("#retrain-message").textContent = "";
  $("#retrain-progress").value = 0;
}

// Accept and roll back report after reloading the attention map; a decision made meanwhile
// must not be overwritten by the older one's late report.
let decisionSeq = 0;

async function accept() {
  if (!window.confirm("Accept the candidate? It becomes the current model.")) return;
  const seq = ++decisionSeq;
  const r = await api("POST", "/api/accept", {});
  clearDecisionViews();
  await refreshStatus();
  await loadAttention();
  if (seq === decisionSeq) setStatus(`accepted: version ${r.current.id} is current`);
}

async function rollback() {
  if (!window.confirm("Roll back? A pending candidate is discarded; otherwise the previous accepted version becomes current again.")) return;
  const seq = ++decisionSeq;
  const r = await api("POST", "/api/rollback", {});
  clearDecisionViews();
  await refreshStatus();
  await loadAttention();
  if (seq === decisionSeq) {
    setStatus(`rolled back version ${r.rolled_back.id}: version ${r.current.id} is current`);
  }
}

async function refreshStatus() {
  const s = await api("GET", "/api/status");
  state.status = s;
  const cand = s.candidate ? ` · candidate v${s.candidate.id}` : "";
  $("#version-badge").textContent = `current v${s.current.id}${cand} · ${s.n_rois} regions`;
  $("#version-badge").dataset.current = s.current.id;
  const t = $("#versions");
  t.innerHTML = "";
  header(t, ["version", "parent", "status", "created", "sha256", "acc"]);
  for (const v of [...s.versions].reverse()) {
    const m = v.metrics || {};
    const split = m.heldout_split || "test";
    const acc = m[`${split}/acc`];
    const tr = row(t, [`v${v.id}${v.current ? " ●" : ""}`, v.parent ? `v${v.parent}` : "–",
      v.status.replace("_", " "), v.created.slice(11, 19), v.sha256.slice(0, 10),
      acc === undefined ? "–" : fmt(acc)], v.current ? "current" : "");
    tr.title = `created ${v.created}; sha256 ${v.sha256}; accuracy on ${split}`;
    tr.dataset.version = v.id;
    tr.dataset.status = v.status;
  }
  const sel = $("#version-select"), keep = sel.value;
  sel.innerHTML = "";
  const opt = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); };
  opt("", `current (v${s.current.id})`);
  for (const v of [...s.versions].reverse()) if (v.status !== "rolled_back") opt(String(v.id), `v${v.id} · ${v.status}`);
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  $("#accept").disabled = !s.candidate;
  $("#show-diff").disabled = !s.candidate;
  const r = s.retrain || {};
  $("#retrain").disabled = r.state === "running";
  return s;
}

// -- wiring -----------------------------------------------------------------------------------
function setTool(tool) {
  state.tool = tool;
  state.polygon = null;
  document.querySelectorAll(".tool").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  for (const c of [$("#image-canvas"), $("#attention-canvas")]) c.classList.toggle("pan", tool === "pan");
  render();
}

async function init() {
  state.info = await api("GET", "/api/info");
  $("#run-info").textContent = `${state.info.dataset} · ${state.info.run_dir}`;
  for (const c of [$("#image-canvas"), $("#attention-canvas")]) {
    c.addEventListener("pointerdown", onDown);
    c.addEventListener("pointermove", onMove);
    c.addEventListener("pointerup", onUp);
    c.addEventListener("pointerleave", () => { $("#probe").textContent = "move the cursor over the image"; });
    c.addEventListener("click", onClick);
    c.addEventListener("dblclick", closePolygon);
    c.addEventListener("wheel", onWheel, { passive: false });
  }
  document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  document.querySelectorAll("input[name=kind]").forEach((r) => r.addEventListener("change", () => { state.kind = r.value; }));
  document.querySelectorAll("input[name=view]").forEach((r) => r.addEventListener("change", () => {
    state.view = r.value;
    $("#canvases").classList.toggle("overlay", r.value === "overlay");
    render();
  }));
  $("#stretch").addEventListener("change", colourAttention);
  $("#opacity").addEventListener("input", (e) => { state.opacity = Number(e.target.value); render(); });
  $("#zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("#zoom-out").addEventListener("click", () => zoomAt(0.8));
  $("#zoom-reset").addEventListener("click", () => { state.zoom = 1; state.panX = 0; state.panY = 0; render(); });
  $("#split").addEventListener("change", guard(async (e) => { state.split = e.target.value; state.offset = 0; await loadList(); }));
  $("#prev-page").addEventListener("click", guard(async () => { state.offset = Math.max(0, state.offset - state.limit); await loadList(); }));
  $("#next-page").addEventListener("click", guard(async () => { state.offset += state.limit; await loadList(); }));
  $("#version-select").addEventListener("change", guard(loadAttention));
  $("#show-prediction").addEventListener("click", guard(showPrediction));
  $("#delete-roi").addEventListener("click", guard(async () => { if (state.selected !== null) await deleteRoi(state.selected); }));
  $("#retrain-form").addEventListener("submit", guard(startRetrain));
  $("#show-diff").addEventListener("click", guard(showDiff));
  $("#accept").addEventListener("click", guard(accept));
  $("#rollback").addEventListener("click", guard(rollback));
  document.addEventListener("keydown", guard(async (e) => {
    if (e.target.closest("input, select, textarea")) return;
    if (e.key === "Enter" && state.polygon) await closePolygon();
    if (e.key === "Escape") { state.polygon = null; state.drag = null; render(); }
    if ((e.key === "Delete" || e.key === "Backspace") && state.selected !== null) await deleteRoi(state.selected);
  }));
  const s = await refreshStatus();
  if (s.retrain && s.retrain.state === "running") pollRetrain();
  const list = await loadList();
  if (list.items.length) await selectImage(list.items[0].id);
  document.body.dataset.ready = "1";
}

window.addEventListener("DOMContentLoaded", guard(init));
