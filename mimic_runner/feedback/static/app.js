// mimic-feedback page: plain JS and canvas, no dependencies, everything from this server.
// Coordinates: regions are stored image-normalised (x right, y down, both in [0, 1]). The view
// is a zoom and the image point at the canvas centre (cx, cy), shared by every canvas: zoom
// and pan are linked across the image, attention and comparison maps whatever their sizes.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => [...document.querySelectorAll(sel)];
const enc = encodeURIComponent;
const MIN_MEANINGFUL = 10;  // figures over fewer images are marked as not meaningful
const HANDLE = 7;  // CSS pixels: half the size of a resize handle
const KIND_WORDS = { include: "look here", exclude: "not here" };
const SHAPE_WORDS = { rect: "rectangle", ellipse: "ellipse", polygon: "polygon" };
const STATUS_WORDS = { accepted: "accepted", candidate: "candidate", rolled_back: "rolled back" };
const A_SHAPE = { rect: "a rectangle", ellipse: "an ellipse", polygon: "a polygon" };

const state = {
  info: null, split: "train", offset: 0, limit: 50, total: 0,
  imageId: null, imageSplit: "train", image: null, display: null, attention: null, heat: null,
  rois: [], selected: null, tool: "pan", kind: "include", layout: "side", opacity: 0.5,
  stretch: false, cmap: "viridis", wl: { window: 255, level: 128 },
  zoom: 1, cx: 0.5, cy: 0.5, drag: null, polygon: null, hover: null,
  status: null, viewVersion: null, mode: "inspect", cmp: null, cmpBefore: null, cmpAfter: null,
  polling: null, storageKey: null, history: new Map(),
};
const attentionCache = new Map();  // "id|version" -> map (versions never change)
const refs = new Map();  // region id -> {id}: undo/redo follow a region through re-creation

// -- messages: next to the action that caused them --------------------------------------------
const timers = {};
function report(sel, text, kind = "error") {
  const el = $(sel);
  clearTimeout(timers[sel]);
  if (!text) { el.hidden = true; el.textContent = ""; return; }
  el.textContent = text;
  el.classList.toggle("info", kind !== "error");
  el.hidden = false;
  if (kind !== "error") timers[sel] = setTimeout(() => { el.hidden = true; }, 4000);
  else if (el.classList.contains("floating")) {
    const close = document.createElement("button");
    close.type = "button"; close.className = "close"; close.textContent = "×";
    close.title = "Dismiss"; close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => { el.hidden = true; });
    el.appendChild(close);
  }
}

function setStatus(text, kind = "info") {
  const el = $("#status");
  el.textContent = text;
  el.className = kind === "error" ? "error" : kind === "ok" ? "ok" : "";
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
    const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    err.status = res.status;
    throw err;
  }
  return data;
}

// Wrap a handler: its errors are shown at `where` (next to the control that started it).
function guard(fn, where = "#status") {
  return async (...args) => {
    try { await fn(...args); } catch (err) {
      if (where === "#status") setStatus(err.message, "error"); else report(where, err.message);
    }
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

const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const pct = (v, d = 1) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(d)} %`);
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const clamp01 = (x) => clamp(x, 0, 1);

// -- persistence: the view survives a reload ----------------------------------------------------
const SAVED = ["split", "offset", "imageId", "imageSplit", "tool", "kind", "layout", "opacity", "stretch", "cmap",
  "wl", "zoom", "cx", "cy", "viewVersion", "mode", "cmpBefore", "cmpAfter"];
let saveTimer = null;
function save() {
  if (!state.storageKey) return;
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => {
    const view = {};
    for (const k of SAVED) view[k] = state[k];
    view.form = Object.fromEntries(new FormData($("#retrain-form")));
    view.advanced = $("#advanced").open;
    try { localStorage.setItem(state.storageKey, JSON.stringify(view)); } catch (e) { /* private mode */ }
  }, 150);
}

function restore() {
  try { return JSON.parse(localStorage.getItem(state.storageKey) || "null"); } catch (e) { return null; }
}

function fillForm(values) {
  for (const [name, value] of Object.entries(values || {})) {
    const el = $("#retrain-form").elements[name];
    if (el && value !== undefined && typeof value !== "object") el.value = value;
    else if (el && value === null && el.tagName === "INPUT") el.value = "";
  }
}

// -- colour maps --------------------------------------------------------------------------------
const LUT = {};
for (const [name, hex] of Object.entries(window.COLORMAP_HEX || {})) {
  const t = new Uint8Array(768);
  for (let i = 0; i < 768; i++) t[i] = parseInt(hex.substr(2 * i, 2), 16);
  LUT[name] = t;
}

function colourOf(lut, t) {  // t in [0, 1] -> [r, g, b]
  const i = 3 * Math.round(clamp01(t) * 255);
  return [lut[i], lut[i + 1], lut[i + 2]];
}

function heatCanvas(values, w, h, lo, hi, lut) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = colourOf(lut, (values[i] - lo) / span);
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function deltaCanvas(delta, w, h, peak) {  // transparent where nothing changed: anatomy stays visible
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const t = delta[i] / peak;
    const [r, g, b] = colourOf(LUT.diverging, 0.5 + 0.5 * t);
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b;
    img.data[4 * i + 3] = Math.round(255 * Math.min(1, Math.abs(t)) ** 0.7);
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function drawColourbar(sel, lut) {
  const c = $(sel), ctx = c.getContext("2d");
  for (let x = 0; x < c.width; x++) {
    const [r, g, b] = colourOf(lut, x / (c.width - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, c.height);
  }
}

function range(...maps) {
  let lo = Infinity, hi = -Infinity;
  for (const m of maps) for (const v of m.values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return { lo, hi };
}

// The display range of attention maps: 0..1, or (stretch) their own min..max; one range for
// every map on screen, so that equal colours mean equal values everywhere.
function displayRange(...maps) {
  const r = range(...maps);
  if (state.stretch && r.hi > r.lo) return { ...r, dlo: r.lo, dhi: r.hi };
  return { ...r, dlo: 0, dhi: 1 };
}

function updateLegend(r) {
  drawColourbar("#colorbar", LUT[state.cmap]);
  $("#cb-min").textContent = fmt(r.dlo, 2);
  $("#cb-max").textContent = fmt(r.dhi, 2);
  $("#legend-attention").dataset.min = r.dlo;
  $("#legend-attention").dataset.max = r.dhi;
  $("#attention-range").textContent = `map values ${fmt(r.lo, 2)}–${fmt(r.hi, 2)}${state.stretch ? " (stretched)" : ""}`;
}

// -- window / level -------------------------------------------------------------------------------
function applyWindow() {
  const px = state.image;
  if (!px) return;
  const c = document.createElement("canvas");
  c.width = px.w; c.height = px.h;
  const ctx = c.getContext("2d");
  const out = ctx.createImageData(px.w, px.h);
  const lo = state.wl.level - state.wl.window / 2, k = 255 / state.wl.window;
  for (let i = 0; i < px.data.length; i += 4) {
    for (let ch = 0; ch < 3; ch++) out.data[i + ch] = clamp(Math.round((px.data[i + ch] - lo) * k), 0, 255);
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  state.display = c;
  $("#wl-window").value = state.wl.window;
  $("#wl-level").value = state.wl.level;
}

// -- view transform (per canvas; shared zoom and centre) ----------------------------------------
function view(canvas) {
  const w = state.image ? state.image.w : 1, h = state.image ? state.image.h : 1;
  const W = canvas.width, H = canvas.height;
  const s = Math.min(W / w, H / h) * state.zoom;
  return { s, ox: W / 2 - state.cx * w * s, oy: H / 2 - state.cy * h * s, w, h, W, H };
}

function canvasPoint(canvas, ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * (canvas.width / r.width), (ev.clientY - r.top) * (canvas.height / r.height)];
}

function toImage(canvas, ev) {  // event -> normalised image coordinates (unclamped)
  const [px, py] = canvasPoint(canvas, ev);
  const v = view(canvas);
  return { x: (px - v.ox) / (v.s * v.w), y: (py - v.oy) / (v.s * v.h) };
}

function toCanvas(canvas, p) {
  const v = view(canvas);
  return [v.ox + p[0] * v.w * v.s, v.oy + p[1] * v.h * v.s];
}

function imageToClient(sel, x, y) {  // for tests and tools: normalised -> client pixels
  const c = $(sel), r = c.getBoundingClientRect();
  const [px, py] = toCanvas(c, [x, y]);
  return [r.left + px * (r.width / c.width), r.top + py * (r.height / c.height)];
}

function setCentre(cx, cy) {  // pan limits: the canvas centre stays over the image
  state.cx = clamp01(cx);
  state.cy = clamp01(cy);
}

function setZoom(zoom, canvas, ev) {
  zoom = clamp(zoom, 0.5, 32);
  if (canvas && ev && state.image) {  // keep the image point under the cursor in place
    const p = toImage(canvas, ev);
    const [px, py] = canvasPoint(canvas, ev);
    const v = view(canvas);
    const s2 = v.s / state.zoom * zoom;
    setCentre(p.x - (px - v.W / 2) / (v.w * s2), p.y - (py - v.H / 2) / (v.h * s2));
  }
  state.zoom = zoom;
  if (zoom <= 1) setCentre(0.5 + (state.cx - 0.5) * zoom, 0.5 + (state.cy - 0.5) * zoom);
  render();
  save();
}

// -- drawing ------------------------------------------------------------------------------------
function roiPath(ctx, canvas, roi, open = false) {
  ctx.beginPath();
  const pts = roi.points.map((p) => toCanvas(canvas, p));
  if (roi.shape === "rect") {
    const [[x0, y0], [x1, y1]] = pts;
    ctx.rect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  } else if (roi.shape === "ellipse") {
    const [[x0, y0], [x1, y1]] = pts;
    ctx.ellipse((x0 + x1) / 2, (y0 + y1) / 2, Math.max(0.5, Math.abs(x1 - x0) / 2), Math.max(0.5, Math.abs(y1 - y0) / 2), 0, 0, 2 * Math.PI);
  } else {
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (!open) ctx.closePath();
  }
  return pts;
}

// A black halo under a white line: visible on any image and any colour of the map. "Not here"
// is dashed, and each region carries a tag (+ look here, − not here).
function drawRoi(ctx, canvas, roi, { selected = false, open = false } = {}) {
  const dpr = canvas.width / (canvas.getBoundingClientRect().width || canvas.width);
  ctx.save();
  const pts = roiPath(ctx, canvas, roi, open);
  ctx.setLineDash([]);
  ctx.lineWidth = (selected ? 6 : 5) * dpr;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.85)";
  ctx.stroke();
  ctx.lineWidth = (selected ? 3 : 2) * dpr;
  ctx.strokeStyle = roi.kind === "include" ? "#ffffff" : "#ffd0d0";
  ctx.setLineDash(roi.kind === "include" ? [] : [7 * dpr, 4 * dpr]);
  ctx.stroke();
  if (selected) { ctx.fillStyle = "rgba(255, 214, 0, 0.16)"; ctx.fill(); }
  if (!open && pts.length) {
    const xs = pts.map((p) => p[0]);
    const x = (Math.min(...xs) + Math.max(...xs)) / 2, y = Math.min(...pts.map((p) => p[1]));
    const size = 13 * dpr;
    ctx.setLineDash([]);
    ctx.fillStyle = roi.kind === "include" ? "#16824a" : "#c62828";
    ctx.fillRect(x - size / 2, y - size / 2, size, size);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5 * dpr;
    ctx.strokeRect(x - size / 2, y - size / 2, size, size);
    ctx.fillStyle = "#fff";
    ctx.font = `bold ${11 * dpr}px system-ui, sans-serif`;
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.fillText(roi.kind === "include" ? "+" : "−", x, y + 0.5);
  }
  ctx.restore();
}

function handlesOf(roi) {  // normalised handle positions
  if (roi.shape === "polygon") return roi.points.map((p) => [p[0], p[1]]);
  const [[x0, y0], [x1, y1]] = roi.points;
  const a = Math.min(x0, x1), b = Math.min(y0, y1), c = Math.max(x0, x1), d = Math.max(y0, y1);
  return [[a, b], [c, b], [c, d], [a, d]];
}

function drawHandles(ctx, canvas, points, first = false) {
  const dpr = canvas.width / (canvas.getBoundingClientRect().width || canvas.width);
  const r = HANDLE * dpr * 0.8;
  ctx.save();
  points.forEach((p, i) => {
    const [x, y] = toCanvas(canvas, p);
    ctx.fillStyle = first && i === 0 ? "#f5b400" : "#fff";
    ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5 * dpr;
    ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
    ctx.strokeRect(x - r, y - r, 2 * r, 2 * r);
  });
  ctx.restore();
}

function shownRois() {  // the stored regions, with the one being moved/resized in its new place
  const d = state.drag;
  return state.rois.map((r) => (d && d.edit && d.id === r.id ? { ...r, points: d.points, kind: r.kind } : r));
}

function paint(canvas, layers, { outlines = true } = {}) {
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  const v = view(canvas);
  ctx.imageSmoothingEnabled = false;
  for (const [source, alpha] of layers) {
    if (!source) continue;
    ctx.globalAlpha = alpha;
    ctx.drawImage(source, v.ox, v.oy, v.w * v.s, v.h * v.s);
  }
  ctx.globalAlpha = 1;
  if (!outlines) return;
  const rois = shownRois();
  rois.forEach((r) => drawRoi(ctx, canvas, r, { selected: state.selected === r.id }));
  const sel = rois.find((r) => r.id === state.selected);
  if (sel && state.tool === "select" && state.mode === "inspect") drawHandles(ctx, canvas, handlesOf(sel));
  if (state.drag && state.drag.roi) drawRoi(ctx, canvas, state.drag.roi, { open: false });
  if (state.polygon && state.polygon.length) {
    const pts = state.hover ? [...state.polygon, [state.hover.x, state.hover.y]] : state.polygon;
    drawRoi(ctx, canvas, { shape: "polygon", kind: state.kind, points: pts }, { open: true });
    drawHandles(ctx, canvas, state.polygon, true);
  }
}

let frame = null;
function render() {
  $("#zoom-level").textContent = `${Math.round(state.zoom * 100)}%`;
  if (frame) return;
  frame = requestAnimationFrame(() => { frame = null; renderNow(); });
}

function renderNow() {
  const img = state.display;
  if (state.mode === "compare") {
    const c = state.cmp;
    paint($("#cmp-before"), [[img, 1], [c && c.heatB, state.opacity]]);
    paint($("#cmp-after"), [[img, 1], [c && c.heatA, state.opacity]]);
    paint($("#cmp-delta"), [[img, 1], [c && c.delta, Math.max(0.6, state.opacity)]]);
  } else if (state.layout === "overlay") {
    paint($("#image-canvas"), [[img, 1], [state.heat, state.opacity]]);
  } else {
    paint($("#image-canvas"), [[img, 1]]);
    paint($("#attention-canvas"), [[img, 1], [state.heat, state.opacity]]);
  }
  $("#zoom-level").textContent = `${Math.round(state.zoom * 100)}%`;
}

// Canvas buffers follow their on-screen size (sharp at any width and pixel density).
const resizer = new ResizeObserver((entries) => {
  for (const e of entries) {
    const c = e.target, dpr = window.devicePixelRatio || 1;
    const w = Math.max(16, Math.round(e.contentRect.width * dpr));
    if (c.width !== w || c.height !== w) { c.width = w; c.height = w; }
  }
  renderNow();
});

// -- images -------------------------------------------------------------------------------------
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
    b.title = `${item.id}: ${item.label_name}`;
    const thumb = document.createElement("img");
    thumb.className = "thumb"; thumb.alt = ""; thumb.loading = "lazy"; thumb.width = 40; thumb.height = 40;
    thumb.src = `/api/images/${enc(item.id)}/thumb.png?size=48`;
    const name = document.createElement("span");
    name.className = "name"; name.textContent = item.id;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = item.label_name;
    if (item.n_rois) {
      const n = document.createElement("span");
      n.className = "count";
      n.textContent = ` · ${item.n_rois} region${item.n_rois > 1 ? "s" : ""}`;
      meta.appendChild(n);
    }
    b.append(thumb, name, meta);
    b.addEventListener("click", guard(() => selectImage(item.id), "#list-message"));
    li.appendChild(b);
    ul.appendChild(li);
  }
  const last = Math.min(state.offset + state.limit, state.total);
  $("#page-info").textContent = `${state.total ? state.offset + 1 : 0}–${last} of ${state.total}`;
  $("#prev-page").disabled = state.offset === 0;
  $("#next-page").disabled = last >= state.total;
  return data;
}

async function fetchAttention(id, version) {  // exact float32 values, not an 8-bit image
  const key = `${id}|${version}`;
  if (version && attentionCache.has(key)) return attentionCache.get(key);
  const a = await api("GET", `/api/images/${enc(id)}/attention${version ? `?version=${version}` : ""}`);
  const bytes = Uint8Array.from(atob(a.values), (c) => c.charCodeAt(0));
  const m = { w: a.width, h: a.height, version: a.version, values: new Float32Array(bytes.buffer) };
  if (attentionCache.size > 300) attentionCache.clear();
  attentionCache.set(`${id}|${a.version}`, m);
  return m;
}

async function loadAttention() {
  if (!state.imageId) return;
  const id = state.imageId;
  const a = await fetchAttention(id, state.viewVersion);
  if (id !== state.imageId) return;  // a newer image was chosen meanwhile
  state.attention = a;
  colourAttention();
}

function colourAttention() {
  const a = state.attention;
  if (!a) return;
  const r = displayRange(a);
  state.heat = heatCanvas(a.values, a.w, a.h, r.dlo, r.dhi, LUT[state.cmap]);
  updateLegend(r);
  const cur = state.status ? state.status.current.id : null;
  $("#attention-caption").textContent = `where the model looks: version ${a.version}${a.version === cur ? " (in use)" : ""}`;
  $("#attention-caption").dataset.version = a.version;
  render();
}

async function selectImage(id, split = state.split) {
  state.imageId = id;
  state.imageSplit = split;
  state.selected = null;
  state.polygon = null;
  state.drag = null;
  $$("#image-list button").forEach((b) => b.classList.toggle("selected", b.dataset.id === id));
  const px = await loadPixels(`/api/images/${enc(id)}/image.png`);
  if (id !== state.imageId) return;
  state.image = px;
  applyWindow();
  $("#image-caption").textContent = `${id} (${px.w}×${px.h})`;
  $("#prediction").hidden = true;
  report("#canvas-message", "");
  await Promise.all([loadAttention(), loadRois()]);
  if (state.mode === "compare") await loadCompare();
  updateUndoButtons();
  save();
}

// -- regions ------------------------------------------------------------------------------------
async function loadRois() {
  state.rois = state.imageId ? await api("GET", `/api/rois?image_id=${enc(state.imageId)}`) : [];
  if (!state.rois.some((r) => r.id === state.selected)) state.selected = null;
  const ul = $("#roi-list");
  ul.innerHTML = "";
  for (const r of state.rois) {
    const li = document.createElement("li");
    li.className = `${r.kind}${state.selected === r.id ? " selected" : ""}`;
    li.dataset.id = r.id;
    li.dataset.kind = r.kind;
    const label = document.createElement("span");
    label.className = "roi-label";
    label.textContent = `#${r.id} ${SHAPE_WORDS[r.shape]} · ${KIND_WORDS[r.kind]}`;
    label.title = "Select (then drag it on the image to move it, or its handles to resize it)";
    label.addEventListener("click", () => { selectRoi(r.id); });
    const buttons = document.createElement("span");
    buttons.className = "roi-buttons";
    const sw = document.createElement("button");
    sw.type = "button";
    sw.className = "switch";
    sw.textContent = r.kind === "include" ? "make “not here”" : "make “look here”";
    sw.addEventListener("click", guard(() => switchKind(r.id), "#roi-message"));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "delete";
    del.addEventListener("click", guard(() => deleteRoi(r.id), "#roi-message"));
    buttons.append(sw, del);
    li.append(label, buttons);
    ul.appendChild(li);
  }
  const allowed = state.info ? state.info.feedback_splits : ["train"];
  const heldOut = state.imageId && !allowed.includes(state.imageSplit);
  $("#roi-note").textContent = heldOut
    ? `This is a held-out ${state.imageSplit === "val" ? "validation" : "test"} image: regions can be drawn on training images only, so that the checks on held-out images stay honest.`
    : (state.rois.length ? "" : "No regions yet: choose “rect”, “ellipse” or “polygon” and draw on the image.");
  $("#delete-roi").disabled = state.selected === null;
  $("#toggle-kind").disabled = state.selected === null;
  render();
}

function selectRoi(id) {
  state.selected = id;
  if (id !== null && state.tool !== "select") setTool("select");
  $$("#roi-list li").forEach((li) => li.classList.toggle("selected", Number(li.dataset.id) === id));
  $("#delete-roi").disabled = id === null;
  $("#toggle-kind").disabled = id === null;
  render();
}

async function afterRegionChange() {
  await loadRois();
  await Promise.all([loadList(), refreshStatus()]);
  if (state.mode === "compare") await loadDiffTable();
}

// Undo history per image: entries are {label, undo, redo} closures over region refs.
function stacks() {
  if (!state.history.has(state.imageId)) state.history.set(state.imageId, { undo: [], redo: [] });
  return state.history.get(state.imageId);
}

function refFor(id) {
  if (!refs.has(id)) refs.set(id, { id });
  return refs.get(id);
}

function rebind(ref, id) {
  refs.delete(ref.id);
  ref.id = id;
  refs.set(id, ref);
}

function record(entry) {
  const s = stacks();
  s.undo.push(entry);
  s.redo = [];
  updateUndoButtons();
}

function updateUndoButtons() {
  const s = state.imageId ? stacks() : { undo: [], redo: [] };
  $("#undo").disabled = !s.undo.length;
  $("#redo").disabled = !s.redo.length;
  $("#undo").title = s.undo.length ? `Undo ${s.undo[s.undo.length - 1].label} (Ctrl+Z)` : "Nothing to undo (Ctrl+Z)";
  $("#redo").title = s.redo.length ? `Redo ${s.redo[s.redo.length - 1].label} (Ctrl+Shift+Z)` : "Nothing to redo (Ctrl+Shift+Z)";
}

async function undo() {
  const s = stacks(), e = s.undo.pop();
  if (!e) { report("#canvas-message", "Nothing to undo", "info"); return; }
  try { await e.undo(); } catch (err) { s.undo.push(e); throw err; }
  s.redo.push(e);
  updateUndoButtons();
  await afterRegionChange();
  report("#canvas-message", `Undone: ${e.label}`, "info");
}

async function redo() {
  const s = stacks(), e = s.redo.pop();
  if (!e) { report("#canvas-message", "Nothing to redo", "info"); return; }
  try { await e.redo(); } catch (err) { s.redo.push(e); throw err; }
  s.undo.push(e);
  updateUndoButtons();
  await afterRegionChange();
  report("#canvas-message", `Redone: ${e.label}`, "info");
}

function payloadOf(roi) {
  return { image_id: roi.image_id, shape: roi.shape, kind: roi.kind, points: roi.points, weight: roi.weight || 1 };
}

async function addRoi(roi) {
  const body = { image_id: state.imageId, ...roi };
  const [created] = await api("POST", "/api/rois", { rois: [body] });
  const ref = refFor(created.id), data = payloadOf(created);
  record({
    label: `adding ${A_SHAPE[roi.shape]}`,
    undo: async () => { await api("DELETE", `/api/rois/${ref.id}`); },
    redo: async () => { const [c] = await api("POST", "/api/rois", { rois: [data] }); rebind(ref, c.id); },
  });
  state.selected = null;
  await afterRegionChange();
  report("#canvas-message", `Added ${A_SHAPE[roi.shape]} (“${KIND_WORDS[roi.kind]}”)`, "info");
}

async function deleteRoi(id) {
  const roi = state.rois.find((r) => r.id === id);
  await api("DELETE", `/api/rois/${id}`);
  if (roi) {
    const ref = refFor(id), data = payloadOf(roi);
    record({
      label: `deleting region #${id}`,
      undo: async () => { const [c] = await api("POST", "/api/rois", { rois: [data] }); rebind(ref, c.id); },
      redo: async () => { await api("DELETE", `/api/rois/${ref.id}`); },
    });
  }
  if (state.selected === id) state.selected = null;
  await afterRegionChange();
  report("#canvas-message", `Deleted region #${id} (Ctrl+Z brings it back)`, "info");
}

async function updateRoi(id, changes, label) {
  const roi = state.rois.find((r) => r.id === id);
  const before = {};
  for (const k of Object.keys(changes)) before[k] = roi[k];
  await api("PATCH", `/api/rois/${id}`, changes);
  const ref = refFor(id);
  record({
    label,
    undo: async () => { await api("PATCH", `/api/rois/${ref.id}`, before); },
    redo: async () => { await api("PATCH", `/api/rois/${ref.id}`, changes); },
  });
  await afterRegionChange();
}

async function switchKind(id) {
  const roi = state.rois.find((r) => r.id === id);
  if (!roi) return;
  const kind = roi.kind === "include" ? "exclude" : "include";
  state.selected = id;
  await updateRoi(id, { kind }, `switching region #${id} to “${KIND_WORDS[kind]}”`);
  report("#canvas-message", `Region #${id} is now “${KIND_WORDS[kind]}”`, "info");
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

function handleAt(canvas, ev, roi) {  // index of the handle under the pointer, or -1
  const [px, py] = canvasPoint(canvas, ev);
  const dpr = canvas.width / canvas.getBoundingClientRect().width;
  const r = (HANDLE + 3) * dpr;
  return handlesOf(roi).findIndex((p) => {
    const [x, y] = toCanvas(canvas, p);
    return Math.abs(x - px) <= r && Math.abs(y - py) <= r;
  });
}

function resized(roi, handle, p) {  // new points after dragging handle `handle` to p
  if (roi.shape === "polygon") return roi.points.map((q, i) => (i === handle ? [clamp01(p.x), clamp01(p.y)] : q));
  const c = handlesOf(roi);
  const opposite = c[(handle + 2) % 4];
  return [[opposite[0], opposite[1]], [clamp01(p.x), clamp01(p.y)]];
}

function moved(points, dx, dy) {  // translate, clamped so that the region stays on the image
  const xs = points.map((q) => q[0]), ys = points.map((q) => q[1]);
  dx = clamp(dx, -Math.min(...xs), 1 - Math.max(...xs));
  dy = clamp(dy, -Math.min(...ys), 1 - Math.max(...ys));
  return points.map(([x, y]) => [x + dx, y + dy]);
}

// -- pointer interaction ----------------------------------------------------------------------
function probe(canvas, ev) {
  if (!state.image) return;
  const p = toImage(canvas, ev);
  const c = Math.floor(p.x * state.image.w), r = Math.floor(p.y * state.image.h);
  const el = $("#probe");
  if (c < 0 || r < 0 || c >= state.image.w || r >= state.image.h) { el.textContent = "outside the image"; return; }
  const i = 4 * (r * state.image.w + c), d = state.image.data;
  const pixel = state.info && state.info.channels === 3 ? `(${d[i]}, ${d[i + 1]}, ${d[i + 2]})` : `${d[i]}`;
  const at = (m) => (m ? m.values[Math.floor(p.y * m.h) * m.w + Math.floor(p.x * m.w)] : null);
  if (state.mode === "compare" && state.cmp) {
    const b = at(state.cmp.b), a = at(state.cmp.a);
    el.textContent = `x ${c}, y ${r} · pixel ${pixel} · before ${fmt(b)} · after ${fmt(a)} · change ${b === null || a === null ? "–" : (a - b >= 0 ? "+" : "") + fmt(a - b)}`;
    return;
  }
  const att = state.attention ? fmt(at(state.attention)) : "–";
  el.textContent = `x ${c}, y ${r} · pixel ${pixel} · attention ${att}`;
  el.dataset.pixel = pixel;
  el.dataset.attention = att;
}

function onDown(ev) {
  if (!state.image) return;
  const canvas = ev.currentTarget;
  canvas.focus({ preventScroll: true });
  const p = toImage(canvas, ev);
  const tool = state.mode === "compare" ? "pan" : state.tool;
  if (tool === "pan" || ev.button === 1) {
    state.drag = { pan: true, x: ev.clientX, y: ev.clientY, cx: state.cx, cy: state.cy, canvas };
    canvas.classList.add("panning");
  } else if (tool === "wl") {
    state.drag = { wl: true, x: ev.clientX, y: ev.clientY, wl: { ...state.wl } };
  } else if (tool === "rect" || tool === "ellipse") {
    if (p.x < 0 || p.y < 0 || p.x > 1 || p.y > 1) return;
    const start = [clamp01(p.x), clamp01(p.y)];
    state.drag = { roi: { shape: tool, kind: state.kind, points: [start, start] } };
  } else if (tool === "select") {
    const sel = state.rois.find((r) => r.id === state.selected);
    const h = sel ? handleAt(canvas, ev, sel) : -1;
    if (sel && h >= 0) {
      state.drag = { edit: "resize", id: sel.id, handle: h, start: p, orig: sel.points, points: sel.points };
    } else {
      const hit = [...state.rois].reverse().find((r) => inside(r, p));
      selectRoi(hit ? hit.id : null);
      if (hit) state.drag = { edit: "move", id: hit.id, start: p, orig: hit.points, points: hit.points };
    }
  } else {
    return;  // polygon: clicks
  }
  if (ev.pointerId !== undefined && canvas.setPointerCapture) canvas.setPointerCapture(ev.pointerId);
}

function onMove(ev) {
  const canvas = ev.currentTarget;
  probe(canvas, ev);
  if (state.tool === "polygon" && state.polygon && state.mode === "inspect") {
    const p = toImage(canvas, ev);
    state.hover = { x: clamp01(p.x), y: clamp01(p.y) };  // the rubber-band line follows
    render();
  }
  const d = state.drag;
  if (!d) {
    if (state.tool === "select" && state.mode === "inspect") {
      const sel = state.rois.find((r) => r.id === state.selected);
      const p = toImage(canvas, ev);
      canvas.classList.toggle("resize", !!sel && handleAt(canvas, ev, sel) >= 0);
      canvas.classList.toggle("move", !!sel && handleAt(canvas, ev, sel) < 0 && inside(sel, p));
    }
    return;
  }
  if (d.pan) {
    const v = view(d.canvas), k = d.canvas.width / d.canvas.getBoundingClientRect().width;
    setCentre(d.cx - ((ev.clientX - d.x) * k) / (v.s * v.w), d.cy - ((ev.clientY - d.y) * k) / (v.s * v.h));
  } else if (d.wl) {
    state.wl.window = clamp(Math.round(d.wl.window + (ev.clientX - d.x)), 8, 255);
    state.wl.level = clamp(Math.round(d.wl.level - (ev.clientY - d.y)), 0, 255);
    applyWindow();
  } else if (d.roi) {
    const p = toImage(canvas, ev);
    d.roi.points[1] = [clamp01(p.x), clamp01(p.y)];
  } else if (d.edit) {
    const p = toImage(canvas, ev);
    const roi = state.rois.find((r) => r.id === d.id);
    d.points = d.edit === "move" ? moved(d.orig, p.x - d.start.x, p.y - d.start.y) : resized({ ...roi, points: d.orig }, d.handle, p);
    d.changed = true;
  }
  render();
}

async function onUp(ev) {
  const d = state.drag;
  state.drag = null;
  if (ev && ev.currentTarget) ev.currentTarget.classList.remove("panning");
  try {
    if (!d) return;
    if (d.pan || d.wl) { save(); return; }
    if (d.roi) {
      const [[x0, y0], [x1, y1]] = d.roi.points;
      if (Math.abs(x1 - x0) < 0.005 || Math.abs(y1 - y0) < 0.005) {
        report("#canvas-message", `Drag to draw ${A_SHAPE[d.roi.shape]}`, "info");
        return;
      }
      await addRoi(d.roi);
    } else if (d.edit && d.changed) {
      await updateRoi(d.id, { points: d.points }, d.edit === "move" ? `moving region #${d.id}` : `resizing region #${d.id}`);
      report("#canvas-message", `Region #${d.id} ${d.edit === "move" ? "moved" : "resized"}`, "info");
    }
  } catch (err) {
    // Refused: nothing of it stays on screen; the reason appears over the image.
    report("#canvas-message", err.message.replace(/^region \d+: /, ""));
    await loadRois().catch(() => {});
  } finally {
    render();
  }
}

function onClick(ev) {
  if (state.tool !== "polygon" || !state.image || state.mode !== "inspect") return;
  const canvas = ev.currentTarget;
  const p = toImage(canvas, ev);
  if (p.x < 0 || p.y < 0 || p.x > 1 || p.y > 1) return;
  state.polygon = state.polygon || [];
  if (state.polygon.length >= 3) {  // a click on the first corner closes the polygon
    const [fx, fy] = toCanvas(canvas, state.polygon[0]);
    const [px, py] = canvasPoint(canvas, ev);
    const dpr = canvas.width / canvas.getBoundingClientRect().width;
    if (Math.hypot(fx - px, fy - py) <= (HANDLE + 3) * dpr) { closePolygon(); return; }
  }
  state.polygon.push([clamp01(p.x), clamp01(p.y)]);
  render();
}

async function closePolygon() {
  const pts = state.polygon;
  state.polygon = null;
  state.hover = null;
  if (!pts) return;
  // A double-click also fires two clicks on the same spot: drop the repeated points.
  const unique = pts.filter((p, i) => i === 0 || Math.hypot(p[0] - pts[i - 1][0], p[1] - pts[i - 1][1]) > 1e-3);
  try {
    if (unique.length < 3) throw new Error("A polygon needs at least 3 corners");
    await addRoi({ shape: "polygon", kind: state.kind, points: unique });
  } catch (err) {
    report("#canvas-message", err.message.replace(/^region \d+: /, ""));
  } finally {
    render();
  }
}

function onWheel(ev) {
  if (!state.image) return;
  ev.preventDefault();
  setZoom(state.zoom * (ev.deltaY < 0 ? 1.25 : 0.8), ev.currentTarget, ev);
}

// -- prediction ---------------------------------------------------------------------------------
async function showPrediction() {
  if (!state.imageId) throw new Error("choose an image first");
  const v = state.mode === "compare" ? state.cmpAfter : state.viewVersion;
  const p = await api("GET", `/api/images/${enc(state.imageId)}/prediction${v ? `?version=${v}` : ""}`);
  const el = $("#prediction");
  el.innerHTML = "";
  const head = document.createElement("div");
  head.id = "predicted-class";
  const strong = document.createElement("strong");
  strong.textContent = `Predicted: ${p.predicted_name} (${pct(p.probabilities[p.predicted_name])})`;
  const muted = document.createElement("span");
  muted.className = "muted";
  muted.textContent = ` label: ${p.label_name} · version ${p.version}`;
  head.append(strong, muted);
  el.appendChild(head);
  for (const [name, prob] of Object.entries(p.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar";
    const n = document.createElement("span"); n.textContent = name;
    const track = document.createElement("span");
    const fill = document.createElement("span"); fill.className = "fill";
    fill.style.width = `${Math.round(prob * 100)}%`;
    track.appendChild(fill);
    const val = document.createElement("span"); val.className = "mono"; val.textContent = pct(prob);
    row.append(n, track, val);
    el.appendChild(row);
  }
  el.hidden = false;
}

// -- retraining: validated before anything is sent ----------------------------------------------
const FIELDS = {
  gamma: { label: "feedback strength", required: true, min: 0, max: 1e6, hint: "a number from 0 to 1 000 000; 30 is usual, 0 ignores your regions" },
  epochs: { label: "training passes", required: true, integer: true, min: 1, max: 1000, hint: "a whole number from 1 to 1000" },
  lr: { label: "learning rate", required: true, min: 0, exclusiveMin: true, max: 1, hint: "a number above 0, at most 1 (usual: 0.001)", advanced: true },
  max_batches: { label: "batches per pass", integer: true, min: 1, max: 100000, hint: "a whole number from 1, or blank for all", advanced: true },
  batch_size: { label: "images per batch", integer: true, min: 1, max: 4096, hint: "a whole number from 1 to 4096, or blank", advanced: true },
  seed: { label: "random seed", required: true, integer: true, min: 0, max: 2 ** 31 - 1, hint: "a whole number from 0", advanced: true },
};

function validateForm() {
  const form = $("#retrain-form");
  const body = { train: form.elements.train.value, mode: form.elements.mode.value, heldout: form.elements.heldout.value };
  const bad = [];
  for (const [name, f] of Object.entries(FIELDS)) {
    const input = form.elements[name];
    const raw = input.value.trim();
    let msg = null;
    if (input.validity && input.validity.badInput) msg = `Not a number: enter ${f.hint}.`;
    else if (raw === "") { if (f.required) msg = `Enter the ${f.label}: ${f.hint}.`; }
    else {
      const v = Number(raw);
      if (!Number.isFinite(v)) msg = `Not a number: enter ${f.hint}.`;
      else if (f.integer && !Number.isInteger(v)) msg = `Use ${f.hint}.`;
      else if (v < f.min || (f.exclusiveMin && v === f.min) || v > f.max) msg = `Out of range: use ${f.hint}.`;
      else body[name] = v;
    }
    const err = $(`#${name}-error`);
    input.setAttribute("aria-invalid", msg ? "true" : "false");
    err.textContent = msg || "";
    err.hidden = !msg;
    if (msg) bad.push([name, f, input]);
  }
  return { body, bad };
}

async function startRetrain(ev) {
  ev.preventDefault();
  report("#form-message", "");
  const { body, bad } = validateForm();
  if (bad.length) {
    const [, f, input] = bad[0];
    if (bad.some(([, g]) => g.advanced)) $("#advanced").open = true;
    const names = bad.map(([, g]) => g.label).join(", ");
    report("#form-message", `Not started: check the ${names}.`);
    setStatus(`Retraining not started: check the ${names} (in “Retrain with your regions”).`, "error");
    input.focus();
    return;
  }
  save();
  await api("POST", "/api/retrain", body);
  setStatus(`Retraining started: ${body.epochs} pass${body.epochs > 1 ? "es" : ""}, feedback strength ${body.gamma}`);
  pollRetrain();
}

function describeParams(p) {
  if (!p) return "";
  return `${p.epochs} pass${p.epochs > 1 ? "es" : ""}, strength ${p.gamma}`;
}

function pollRetrain() {
  clearTimeout(state.polling);
  const tick = guard(async () => {
    const s = await api("GET", "/api/retrain");
    $("#retrain-progress").value = s.progress || 0;
    const msg = $("#retrain-message");
    msg.dataset.state = s.state;
    if (s.state === "running") {
      msg.textContent = `${Math.round(100 * (s.progress || 0))}% · ${s.message || "starting"}`;
      msg.title = `Retraining (${describeParams(s.params)}): ${s.message}`;
    } else {
      msg.textContent = s.state === "failed" ? "failed" : s.state === "done" ? `done: version ${s.version}` : "";
      msg.title = s.message || "";
    }
    $("#retrain").disabled = s.state === "running";
    if (s.state === "running") {
      state.polling = setTimeout(tick, 500);
      updateDecisionButtons();
    } else {
      await refreshStatus();
      if (s.state === "done") {
        setStatus(`Candidate version ${s.version} is ready: compare it, then accept or discard it.`, "ok");
        $("#show-diff").classList.add("highlight");
      }
      if (s.state === "failed") setStatus(`Retraining failed: ${s.error}`, "error");
    }
  });
  tick();
}

// -- versions, history and decisions ------------------------------------------------------------
function versionById(id) { return state.status ? state.status.versions.find((v) => v.id === id) : null; }

function accuracyOf(v) {
  const m = v.metrics || {};
  const split = m.heldout_split || "test";
  return { acc: m[`${split}/acc`], n: m[`${split}/n_images`], split };
}

function settingsOf(v) {
  const p = v.params || {};
  if (p.gamma === undefined) return { short: "the trained run", long: `the run's checkpoint${p.source ? ` (${p.source})` : ""}` };
  const trainWords = { all: "whole model", attention: "where it looks", perception: "how it classifies" };
  const part = p.train && p.train !== "all" ? ` · only ${trainWords[p.train] || p.train}` : "";
  const short = `strength ${p.gamma} · ${p.epochs} pass${p.epochs > 1 ? "es" : ""}${part}`;
  const long = `feedback strength (γ) ${p.gamma}; training passes (epochs) ${p.epochs}; learning rate ${p.lr}; ` +
    `retrained: ${trainWords[p.train] || p.train}; correction: ${p.mode}; batches per pass: ${p.max_batches || "all"}; ` +
    `seed ${p.seed}; from ${p.feedback_rois} regions on ${p.feedback_images} images`;
  return { short, long, regions: `${p.feedback_rois} regions on ${p.feedback_images} images` };
}

function versionLabel(v) {
  const cur = state.status && state.status.current.id === v.id;
  return `v${v.id} · ${cur ? "in use" : STATUS_WORDS[v.status]}`;
}

function renderVersions(s) {
  const t = $("#versions");
  t.innerHTML = "";
  const head = document.createElement("tr");
  for (const [c, title] of [["Version", ""], ["Settings", "Feedback strength and training passes (more in the tooltip)"],
    ["Accuracy", "Correct diagnoses on held-out images"], ["", ""]]) {
    const th = document.createElement("th"); th.textContent = c; th.title = title; head.appendChild(th);
  }
  t.appendChild(head);
  for (const v of [...s.versions].reverse()) {
    const tr = document.createElement("tr");
    tr.dataset.version = v.id;
    tr.dataset.status = v.status;
    if (v.current) tr.className = "current";
    if (state.viewVersion === v.id || (state.viewVersion === null && v.current)) tr.classList.add("viewing");
    const td1 = document.createElement("td");
    const chip = document.createElement("span");
    chip.className = `chip ${v.current ? "in-use" : v.status}`;
    chip.textContent = v.current ? "in use" : STATUS_WORDS[v.status];
    td1.append(`v${v.id} `, chip);
    td1.title = `created ${v.created.replace("T", " ").slice(0, 19)} UTC${v.author ? ` by ${v.author}` : ""}; from version ${v.parent || "–"}; fingerprint (sha256) ${v.sha256}`;
    const set = settingsOf(v);
    const td2 = document.createElement("td");
    td2.className = "settings";
    td2.textContent = set.short;
    td2.title = set.long;
    if (set.regions) { const sm = document.createElement("div"); sm.className = "muted"; sm.textContent = set.regions; td2.appendChild(sm); }
    const { acc, n, split } = accuracyOf(v);
    const td3 = document.createElement("td");
    td3.className = "num";
    td3.textContent = acc === undefined ? "–" : pct(acc);
    td3.title = `correct diagnoses on ${n || "?"} held-out ${split === "val" ? "validation" : split} images`;
    if (n !== undefined && n < MIN_MEANINGFUL) {
      const note = document.createElement("div"); note.className = "note"; note.textContent = `only ${n} images: not meaningful`;
      td3.appendChild(note);
    } else if (n !== undefined) {
      const sm = document.createElement("div"); sm.className = "muted"; sm.textContent = `${n} images`; td3.appendChild(sm);
    }
    const td4 = document.createElement("td");
    const viewB = document.createElement("button");
    viewB.type = "button"; viewB.className = "view-version"; viewB.textContent = "View";
    viewB.title = `Show the attention of version ${v.id}`;
    viewB.addEventListener("click", guard(() => viewVersion(v.id)));
    td4.appendChild(viewB);
    if (s.revert_targets.includes(v.id)) {
      const rb = document.createElement("button");
      rb.type = "button"; rb.className = "revert-to danger"; rb.dataset.version = v.id;
      rb.textContent = "Revert"; rb.title = `Make version ${v.id} the version in use again`;
      rb.addEventListener("click", guard(() => revert(v.id)));
      td4.appendChild(rb);
    }
    tr.append(td1, td2, td3, td4);
    t.appendChild(tr);
  }
}

function fillVersionSelect(sel, value, withCurrent) {
  const s = state.status;
  sel.innerHTML = "";
  const opt = (v, text) => { const o = document.createElement("option"); o.value = v; o.textContent = text; sel.appendChild(o); };
  if (withCurrent) opt("", `version in use (v${s.current.id})`);
  for (const v of [...s.versions].reverse()) opt(String(v.id), versionLabel(v));
  sel.value = value === null || value === undefined ? "" : String(value);
  if (sel.value === "" && !withCurrent && sel.options.length) sel.selectedIndex = 0;
}

function updateDecisionButtons() {
  const s = state.status;
  if (!s) return;
  const running = s.retrain && s.retrain.state === "running" || $("#retrain-message").dataset.state === "running";
  const cand = s.candidate;
  $("#accept").disabled = !cand || running;
  $("#rollback").disabled = !cand || running;
  $("#accept").title = cand ? `Make candidate version ${cand.id} the version in use` : "No candidate: retrain first";
  $("#rollback").title = cand ? `Throw candidate version ${cand.id} away; version ${s.current.id} stays in use` : "No candidate to discard";
  const target = s.revert_targets[0];
  $("#revert").disabled = target === undefined || running;
  $("#revert").textContent = target === undefined ? "Revert…" : `Revert to v${target}…`;
  $("#revert").title = target === undefined ? "Nothing earlier to return to" : `Make version ${target} the version in use again (other earlier versions: History)`;
  $("#show-diff").disabled = s.versions.length < 2;
  $("#show-diff").textContent = cand ? `Compare with candidate v${cand.id}` : "Compare versions";
  $("#mode-compare").disabled = s.versions.length < 2;
}

async function refreshStatus() {
  const s = await api("GET", "/api/status");
  state.status = s;
  const cand = s.candidate ? ` · candidate v${s.candidate.id}` : "";
  $("#version-badge").textContent = `in use: v${s.current.id}${cand} · ${s.n_rois} region${s.n_rois === 1 ? "" : "s"}`;
  $("#version-badge").dataset.current = s.current.id;
  $("#version-badge").dataset.candidate = s.candidate ? s.candidate.id : "";
  if (state.viewVersion !== null && !versionById(state.viewVersion)) state.viewVersion = null;
  renderVersions(s);
  fillVersionSelect($("#version-select"), state.viewVersion, true);
  const r = s.retrain || {};
  $("#retrain").disabled = r.state === "running";
  if (r.state !== "running") $("#retrain-message").dataset.state = r.state || "idle";
  updateDecisionButtons();
  return s;
}

async function viewVersion(id) {
  state.viewVersion = state.status && state.status.current.id === id ? null : id;
  if (state.mode === "compare") setMode("inspect");
  fillVersionSelect($("#version-select"), state.viewVersion, true);
  await loadAttention();
  renderVersions(state.status);
  save();
  setStatus(`Showing the attention of version ${id}`);
}

function clearAfterDecision() {
  $("#retrain-message").textContent = "";
  $("#retrain-progress").value = 0;
  $("#show-diff").classList.remove("highlight");
}

// A decision's late report must not overwrite a newer one.
let decisionSeq = 0;
async function decided(seq, text) {
  clearAfterDecision();
  await refreshStatus();
  if (state.mode === "compare") { defaultComparison(); await loadCompare(); }
  await loadAttention();
  if (seq === decisionSeq) setStatus(text, "ok");
}

async function accept() {
  const s = state.status, c = s.candidate;
  if (!c) return;
  if (!window.confirm(`Accept candidate version ${c.id}?\n\nIt becomes the version in use, replacing version ${s.current.id}. ` +
    `Version ${s.current.id} stays in the history and you can revert to it later.`)) return;
  const seq = ++decisionSeq;
  const r = await api("POST", "/api/accept", { version: c.id });
  await decided(seq, `Accepted: version ${r.current.id} is in use.`);
}

async function discard() {
  const s = state.status, c = s.candidate;
  if (!c) return;
  if (!window.confirm(`Discard candidate version ${c.id}?\n\nVersion ${s.current.id} stays in use. The candidate is kept in ` +
    "the history (you can still view it) but can no longer be accepted.")) return;
  const seq = ++decisionSeq;
  const r = await api("POST", "/api/discard", {});
  await decided(seq, `Discarded candidate version ${r.rolled_back.id}: version ${r.current.id} stays in use.`);
}

async function revert(target) {
  const s = state.status;
  if (target === undefined) target = s.revert_targets[0];
  if (target === undefined) return;
  const undone = [];
  for (let v = versionById(s.current.id); v && v.id !== target; v = versionById(v.parent)) undone.push(`v${v.id}`);
  const pending = s.candidate ? ` and the pending candidate v${s.candidate.id}` : "";
  if (!window.confirm(`Revert to version ${target}?\n\nVersion ${target} becomes the version in use again; ${undone.join(", ")}${pending} ` +
    "will be marked “rolled back” (kept in the history, still viewable). Your regions are kept.")) return;
  const seq = ++decisionSeq;
  const r = await api("POST", "/api/revert", { version: target });
  await decided(seq, `Reverted: version ${r.current.id} is in use again (rolled back: ${r.rolled_back.map((v) => `v${v}`).join(", ")}).`);
}

// -- comparing two versions ---------------------------------------------------------------------
function defaultComparison() {
  const s = state.status;
  if (s.candidate) { state.cmpBefore = s.current.id; state.cmpAfter = s.candidate.id; return; }
  const ok = (id) => id && versionById(id);
  if (ok(state.cmpBefore) && ok(state.cmpAfter) && state.cmpBefore !== state.cmpAfter) return;
  const cur = s.current;
  state.cmpAfter = cur.id;
  state.cmpBefore = cur.parent || (s.versions.find((v) => v.id !== cur.id) || cur).id;
}

function setMode(mode) {
  state.mode = mode;
  document.body.classList.toggle("comparing", mode === "compare");
  $("#mode-inspect").classList.toggle("active", mode === "inspect");
  $("#mode-compare").classList.toggle("active", mode === "compare");
  $("#mode-inspect").setAttribute("aria-pressed", String(mode === "inspect"));
  $("#mode-compare").setAttribute("aria-pressed", String(mode === "compare"));
  $$(".draw-tool").forEach((b) => { b.disabled = mode === "compare"; });
  state.polygon = null;
  save();
  render();
}

async function openCompare(before, after) {
  if (!state.status || state.status.versions.length < 2) throw new Error("There is only one version: retrain first");
  if (before !== undefined) { state.cmpBefore = before; state.cmpAfter = after; } else defaultComparison();
  setMode("compare");
  $("#show-diff").classList.remove("highlight");
  await loadCompare();
}

async function loadCompare() {
  if (!state.imageId || !state.status) return;
  fillVersionSelect($("#compare-before"), state.cmpBefore, false);
  fillVersionSelect($("#compare-after"), state.cmpAfter, false);
  const b = state.cmpBefore, a = state.cmpAfter, id = state.imageId;
  const [mb, ma] = await Promise.all([fetchAttention(id, b), fetchAttention(id, a)]);
  if (id !== state.imageId || b !== state.cmpBefore || a !== state.cmpAfter) return;
  const r = displayRange(mb, ma);
  const lut = LUT[state.cmap];
  const delta = ma.values.map((x, i) => x - mb.values[i]);
  let peak = 0;
  for (const x of delta) peak = Math.max(peak, Math.abs(x));
  peak = Math.max(peak, 0.01);
  state.cmp = { b: mb, a: ma, peak, heatB: heatCanvas(mb.values, mb.w, mb.h, r.dlo, r.dhi, lut),
    heatA: heatCanvas(ma.values, ma.w, ma.h, r.dlo, r.dhi, lut), delta: deltaCanvas(delta, ma.w, ma.h, peak) };
  updateLegend(r);
  drawColourbar("#colorbar-delta", LUT.diverging);
  $("#cbd-min").textContent = `−${fmt(peak, 3)} less`;
  $("#cbd-max").textContent = `+${fmt(peak, 3)} more`;
  const word = (v) => { const x = versionById(v); return x ? versionLabel(x) : `v${v}`; };
  $("#cmp-before-caption").textContent = `before: ${word(b)}`;
  $("#cmp-after-caption").textContent = `after: ${word(a)}`;
  $("#cmp-delta-caption").textContent = `change (after − before), ±${fmt(peak, 3)}`;
  render();
  save();
  await loadDiffTable();
}

async function loadDiffTable() {
  const b = state.cmpBefore, a = state.cmpAfter;
  $("#diff").hidden = false;
  const t = $("#diff-summary");
  if (b === a) { t.innerHTML = ""; $("#diff-note").textContent = "Choose two different versions."; return; }
  $("#diff-note").textContent = "Measuring…";
  const d = await api("GET", `/api/diff?before=${b}&after=${a}&heldout=val`);
  if (b !== state.cmpBefore || a !== state.cmpAfter) return;
  state.diff = d;
  renderCompareTable();
  setStatus(`Comparing version ${d.before_version} (before) with version ${d.after_version} (after)`);
}

function renderCompareTable() {
  const d = state.diff;
  if (!d) return;
  const t = $("#diff-summary");
  t.innerHTML = "";
  const headRow = document.createElement("tr");
  for (const c of ["", `before (v${d.before_version})`, `after (v${d.after_version})`, "change"]) {
    const th = document.createElement("th"); th.textContent = c; headRow.appendChild(th);
  }
  t.appendChild(headRow);
  const section = (text) => {
    const tr = document.createElement("tr"); tr.className = "section";
    const th = document.createElement("th"); th.colSpan = 4; th.textContent = text; tr.appendChild(th); t.appendChild(tr);
  };
  // [label, tooltip (the maths), values, direction: +1 higher is better, -1 lower, 0 neither, format]
  const add = (label, tip, ba, dir, n, asPct = true) => {
    if (!ba) return;
    const tr = document.createElement("tr");
    tr.dataset.key = label;
    const meaningful = n >= MIN_MEANINGFUL;
    if (!meaningful) tr.classList.add("not-meaningful");
    const td0 = document.createElement("td"); td0.textContent = label; td0.title = tip;
    if (!meaningful) { const note = document.createElement("div"); note.className = "note"; note.textContent = `only ${n} image${n === 1 ? "" : "s"}: not meaningful`; td0.appendChild(note); }
    const f = (v) => (asPct ? pct(v) : fmt(v, 3));
    const cells = [td0];
    for (const v of [ba.before, ba.after]) { const td = document.createElement("td"); td.className = "num"; td.textContent = f(v); cells.push(td); }
    const td3 = document.createElement("td"); td3.className = "num";
    const delta = ba.delta;
    if (delta === null || delta === undefined) td3.textContent = "–";
    else {
      const shown = asPct ? `${delta >= 0 ? "+" : "−"}${Math.abs(100 * delta).toFixed(1)} pts` : `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(3)}`;
      const small = Math.abs(delta) < 5e-4;
      const trend = !dir || small ? "same" : (delta > 0) === (dir > 0) ? "better" : "worse";
      td3.dataset.trend = trend;
      const span = document.createElement("span");
      span.className = trend === "same" ? "" : `trend-${trend}`;
      span.textContent = small ? "no change" : trend === "same" ? shown : `${trend === "better" ? "▲" : "▼"} ${shown} (${trend})`;
      td3.title = dir ? `${dir > 0 ? "higher" : "lower"} is better` : "neither better nor worse";
      td3.appendChild(span);
    }
    cells.push(td3);
    tr.append(...cells);
    t.appendChild(tr);
  };
  const fb = d.feedback, ho = d.heldout;
  const hoName = ho.split === "val" ? "validation" : ho.split;
  section(`On the ${fb.n_images} image${fb.n_images === 1 ? "" : "s"} with your regions`);
  if (!fb.n_images) { const tr = document.createElement("tr"); const td = document.createElement("td"); td.colSpan = 4; td.className = "muted"; td.textContent = "No regions drawn yet."; tr.appendChild(td); t.appendChild(tr); }
  add("Attention inside “look here” (share)", "Share of the map's attention inside the “look here” regions: Σ M·R⁺ / Σ M", fb.include_share, +1, fb.n_images);
  add("Attention inside “not here” (share)", "Share of the map's attention inside the “not here” regions: Σ M·R⁻ / Σ M", fb.exclude_share, -1, fb.n_images);
  add("Average attention in “look here”", "Mean of M over the “look here” pixels (0–1)", fb.include_attention, +1, fb.n_images, false);
  add("Average attention in “not here”", "Mean of M over the “not here” pixels (0–1)", fb.exclude_attention, -1, fb.n_images, false);
  add("Attention on the known artefact (share)", "Share of attention on the confounder marked in the data: Σ M·C / Σ M", fb.confounder_share, -1, fb.n_images);
  add("Correct diagnoses", "Accuracy on the images with regions", fb.accuracy, +1, fb.n_images);
  section(`On ${ho.n_images} held-out ${hoName} images (not used for training)`);
  add("Correct diagnoses", `Accuracy on the ${hoName} split`, ho.accuracy, +1, ho.n_images);
  add("Attention on the known artefact (share)", "Share of attention on the confounder: Σ M·C / Σ M", ho.confounder_share, -1, ho.n_images);
  add("Average attention on the artefact", "Mean of M over the confounder's pixels", ho.confounder_attention, -1, ho.n_images, false);
  add("Average attention (whole image)", "Mean of M over all pixels", ho.attention_mean, 0, ho.n_images, false);
  const tr = document.createElement("tr");
  if (ho.n_images < MIN_MEANINGFUL) tr.classList.add("not-meaningful");
  const cells = [`Diagnoses that changed`, "", String(ho.prediction_changes), ""];
  cells.forEach((c, i) => { const td = document.createElement("td"); td.textContent = c; if (i) td.className = "num"; tr.appendChild(td); });
  tr.firstChild.title = ho.changed && ho.changed.length ? `Images: ${ho.changed.slice(0, 20).map((x) => x.id).join(", ")}` : "";
  t.appendChild(tr);
  const tr2 = document.createElement("tr");
  if (ho.n_images < MIN_MEANINGFUL) tr2.classList.add("not-meaningful");
  ["Average change of the map", "", fmt(ho.mean_abs_attention_change, 4), ""].forEach((c, i) => { const td = document.createElement("td"); td.textContent = c; if (i) td.className = "num"; tr2.appendChild(td); });
  tr2.firstChild.title = "Mean absolute change of M per pixel: mean |M_after − M_before|";
  t.appendChild(tr2);
  $("#diff-note").textContent = "Green ▲: better, red ▼: worse (hover a row for its definition). Figures over fewer than 10 images are greyed out: too few to be meaningful.";
}

// -- wiring -------------------------------------------------------------------------------------
function setTool(tool) {
  if (state.mode === "compare" && tool !== "pan" && tool !== "wl") return;
  state.tool = tool;
  state.polygon = null;
  state.hover = null;
  $$(".tool").forEach((b) => {
    b.classList.toggle("active", b.dataset.tool === tool);
    b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
  });
  for (const c of $$(".canvas-row canvas")) {
    c.classList.toggle("pan", tool === "pan");
    c.classList.toggle("select", tool === "select");
    c.classList.toggle("wl", tool === "wl");
  }
  save();
  render();
}

function setKind(kind) {
  state.kind = kind;
  const r = $(`input[name=kind][value=${kind}]`);
  if (r) r.checked = true;
  save();
}

function setLayout(layout) {
  state.layout = layout;
  $(`input[name=view][value=${layout}]`).checked = true;
  $("#canvases").classList.toggle("overlay", layout === "overlay");
  save();
  render();
}

function recolour() {
  colourAttention();
  if (state.mode === "compare") loadCompare().catch((e) => setStatus(e.message, "error"));
  save();
}

async function stepImage(dir) {
  const buttons = $$("#image-list button");
  const i = buttons.findIndex((b) => b.dataset.id === state.imageId);
  const next = buttons[i + dir];
  if (next) { await selectImage(next.dataset.id); next.scrollIntoView({ block: "nearest" }); }
}

function toggleHelp(open) {
  const help = $("#help");
  open = open === undefined ? help.hidden : open;
  help.hidden = !open;
  if (open) { state.helpReturn = document.activeElement; $("#help-close").focus(); }
  else if (state.helpReturn && state.helpReturn.focus) state.helpReturn.focus();
}

const onKey = guard(async (e) => {
  if (!$("#help").hidden) {
    if (e.key === "Escape" || e.key === "?") { e.preventDefault(); toggleHelp(false); }
    return;
  }
  if (e.target.closest("input, select, textarea")) return;
  const ctrl = e.ctrlKey || e.metaKey;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (ctrl && key === "z") { e.preventDefault(); await (e.shiftKey ? redo() : undo()); return; }
  if (ctrl && key === "y") { e.preventDefault(); await redo(); return; }
  if (ctrl || e.altKey) return;
  const onCanvas = e.target.closest && e.target.closest("canvas");
  if (e.key === "?") { e.preventDefault(); toggleHelp(true); return; }
  if (e.key === "Escape") {
    if (state.polygon) { state.polygon = null; state.hover = null; report("#canvas-message", "Polygon cancelled", "info"); }
    else if (state.drag) state.drag = null;
    else if (state.selected !== null) selectRoi(null);
    render();
    return;
  }
  if (e.key === "Enter" && state.polygon) { e.preventDefault(); await closePolygon(); return; }
  if (e.key === "Backspace" && state.polygon) { e.preventDefault(); state.polygon.pop(); if (!state.polygon.length) state.polygon = null; render(); return; }
  if ((e.key === "Delete" || e.key === "Backspace") && state.selected !== null) { e.preventDefault(); await deleteRoi(state.selected); return; }
  if (onCanvas && e.key.startsWith("Arrow")) {
    e.preventDefault();
    const step = 0.05 / state.zoom;
    const [dx, dy] = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
    setCentre(state.cx + dx, state.cy + dy);
    render();
    save();
    return;
  }
  if (e.target.closest("button, a, summary") && (e.key === "Enter" || e.key === " ")) return;
  const tools = { h: "pan", v: "select", r: "rect", e: "ellipse", p: "polygon", w: "wl" };
  if (tools[key]) { setTool(tools[key]); return; }
  if (key === "l") { setKind("include"); report("#canvas-message", "New regions: “look here”", "info"); return; }
  if (key === "n") { setKind("exclude"); report("#canvas-message", "New regions: “not here”", "info"); return; }
  if (key === "k" && state.selected !== null) { await switchKind(state.selected); return; }
  if (key === "+" || key === "=") { setZoom(state.zoom * 1.25); return; }
  if (key === "-") { setZoom(state.zoom * 0.8); return; }
  if (key === "0") { state.zoom = 1; setCentre(0.5, 0.5); render(); save(); return; }
  if (key === "[") { await stepImage(-1); return; }
  if (key === "]") { await stepImage(1); return; }
  if (key === "o") { setLayout(state.layout === "side" ? "overlay" : "side"); return; }
  if (key === "c") { if (state.mode === "compare") setMode("inspect"); else await openCompare(); }
}, "#canvas-message");

function trackHeader() {
  const h = $("#top");
  const set = () => document.documentElement.style.setProperty("--header-h", `${Math.ceil(h.getBoundingClientRect().height)}px`);
  new ResizeObserver(set).observe(h);
  set();
}

async function init() {
  trackHeader();
  state.info = await api("GET", "/api/info");
  $("#run-info").textContent = `${state.info.dataset} · ${state.info.run_dir}`;
  $("#run-info").title = `run ${state.info.run_dir}; workspace ${state.info.workspace}`;
  state.storageKey = `mimic-feedback:${state.info.run_dir}|${state.info.workspace}`;
  const saved = restore();
  if (saved) {
    for (const k of SAVED) if (saved[k] !== undefined && saved[k] !== null) state[k] = saved[k];
    fillForm(saved.form);
    $("#advanced").open = !!saved.advanced;
  }
  state.wl = { window: Number(state.wl.window) || 255, level: Number(state.wl.level) || 128 };
  if (!LUT[state.cmap]) state.cmap = "viridis";
  $("#split").value = state.split;
  $("#opacity").value = state.opacity;
  $("#stretch").checked = !!state.stretch;
  $("#cmap").value = state.cmap;

  for (const c of $$(".canvas-row canvas")) {
    resizer.observe(c);
    c.addEventListener("pointerdown", onDown);
    c.addEventListener("pointermove", onMove);
    c.addEventListener("pointerup", onUp);
    c.addEventListener("pointercancel", onUp);
    c.addEventListener("pointerleave", () => { $("#probe").textContent = "move the cursor over the image"; });
    c.addEventListener("click", onClick);
    c.addEventListener("dblclick", (e) => { e.preventDefault(); if (state.polygon) closePolygon(); });
    c.addEventListener("wheel", onWheel, { passive: false });
  }
  $$(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  $$("input[name=kind]").forEach((r) => r.addEventListener("change", () => setKind(r.value)));
  $$("input[name=view]").forEach((r) => r.addEventListener("change", () => setLayout(r.value)));
  $("#stretch").addEventListener("change", (e) => { state.stretch = e.target.checked; recolour(); });
  $("#cmap").addEventListener("change", (e) => { state.cmap = e.target.value; recolour(); });
  $("#opacity").addEventListener("input", (e) => { state.opacity = Number(e.target.value); render(); save(); });
  $("#wl-window").addEventListener("input", (e) => { state.wl.window = Number(e.target.value); applyWindow(); render(); save(); });
  $("#wl-level").addEventListener("input", (e) => { state.wl.level = Number(e.target.value); applyWindow(); render(); save(); });
  $("#wl-reset").addEventListener("click", () => { state.wl = { window: 255, level: 128 }; applyWindow(); render(); save(); });
  $("#zoom-in").addEventListener("click", () => setZoom(state.zoom * 1.25));
  $("#zoom-out").addEventListener("click", () => setZoom(state.zoom * 0.8));
  $("#zoom-reset").addEventListener("click", () => { state.zoom = 1; setCentre(0.5, 0.5); render(); save(); });
  $("#split").addEventListener("change", guard(async (e) => { state.split = e.target.value; state.offset = 0; await loadList(); save(); }, "#list-message"));
  $("#prev-page").addEventListener("click", guard(async () => { state.offset = Math.max(0, state.offset - state.limit); await loadList(); save(); }, "#list-message"));
  $("#next-page").addEventListener("click", guard(async () => { state.offset += state.limit; await loadList(); save(); }, "#list-message"));
  $("#version-select").addEventListener("change", guard(async (e) => {
    state.viewVersion = e.target.value ? Number(e.target.value) : null;
    await loadAttention();
    renderVersions(state.status);
    save();
  }, "#canvas-message"));
  $("#show-prediction").addEventListener("click", guard(showPrediction, "#canvas-message"));
  $("#delete-roi").addEventListener("click", guard(async () => { if (state.selected !== null) await deleteRoi(state.selected); }, "#canvas-message"));
  $("#toggle-kind").addEventListener("click", guard(async () => { if (state.selected !== null) await switchKind(state.selected); }, "#canvas-message"));
  $("#undo").addEventListener("click", guard(undo, "#canvas-message"));
  $("#redo").addEventListener("click", guard(redo, "#canvas-message"));
  $("#retrain-form").addEventListener("submit", guard(startRetrain));
  $("#retrain-form").addEventListener("input", (e) => {
    if (e.target.getAttribute("aria-invalid") === "true") validateForm();
    save();
  });
  $("#advanced").addEventListener("toggle", save);
  $("#show-diff").addEventListener("click", guard(() => openCompare()));
  $("#mode-compare").addEventListener("click", guard(() => openCompare(), "#canvas-message"));
  $("#mode-inspect").addEventListener("click", () => setMode("inspect"));
  $("#compare-before").addEventListener("change", guard(async (e) => { state.cmpBefore = Number(e.target.value); await loadCompare(); }, "#canvas-message"));
  $("#compare-after").addEventListener("change", guard(async (e) => { state.cmpAfter = Number(e.target.value); await loadCompare(); }, "#canvas-message"));
  $("#compare-swap").addEventListener("click", guard(async () => { [state.cmpBefore, state.cmpAfter] = [state.cmpAfter, state.cmpBefore]; await loadCompare(); }, "#canvas-message"));
  $("#accept").addEventListener("click", guard(accept));
  $("#rollback").addEventListener("click", guard(discard));
  $("#revert").addEventListener("click", guard(() => revert()));
  $("#help-button").addEventListener("click", () => toggleHelp(true));
  $("#help-close").addEventListener("click", () => toggleHelp(false));
  $("#help").addEventListener("click", (e) => { if (e.target.id === "help") toggleHelp(false); });
  document.addEventListener("keydown", onKey);

  setTool(state.tool);
  setKind(state.kind);
  setLayout(state.layout);
  const s = await refreshStatus();
  if (s.retrain && s.retrain.state === "running") {
    fillForm(s.retrain.params);  // the running retraining's settings, not the defaults
    pollRetrain();
  }
  let list = await loadList();
  if (!list.items.length && state.offset) { state.offset = 0; list = await loadList(); }
  const wanted = state.imageId;
  let shown = false;
  if (wanted) {
    try { await selectImage(wanted, state.imageSplit); shown = true; } catch (e) { state.imageId = null; }
  }
  if (!shown && list.items.length) await selectImage(list.items[0].id);
  if (state.mode === "compare" && s.versions.length >= 2) {
    if (!versionById(state.cmpBefore) || !versionById(state.cmpAfter)) defaultComparison();
    setMode("compare");
    await loadCompare();
  } else setMode("inspect");
  render();
  document.body.dataset.ready = "1";
}

// For tests and scripting: the state and the view transform (read-only use).
window.mimicFeedback = { state, imageToClient, refreshStatus };
window.addEventListener("DOMContentLoaded", guard(init));
