// mimic-feedback page: plain JS and canvas, no dependencies, everything from this server
// (docs/feedback.md says why no imaging library: Cornerstone3D / OpenSeadragon were weighed).
// Coordinates: regions are stored image-normalised (x right, y down, both in [0, 1]). The view
// is a zoom and the image point at the canvas centre (cx, cy), shared by every canvas: zoom
// and pan are linked across the image, attention and comparison maps whatever their sizes.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => [...document.querySelectorAll(sel)];
const enc = encodeURIComponent;
const MIN_MEANINGFUL = 10;  // figures over fewer images are marked as not meaningful
const HANDLE = 7;  // CSS pixels: half the size of a resize handle
const MIN_REGION_PX = 3;  // image pixels: a smaller box is a jitter, not a region
const MIN_REGION_CSS = 6;  // screen pixels, likewise
const POLL_MS = 2000;  // every tab asks the server for changes this often
const CONFIRM_ABOVE_S = 180;  // a retraining estimated longer asks first
const KIND_WORDS = { include: "look here", exclude: "not here" };
const SHAPE_WORDS = { rect: "rectangle", ellipse: "ellipse", polygon: "polygon" };
const STATUS_WORDS = { accepted: "accepted", candidate: "new, waiting for a decision", rolled_back: "rolled back" };
const SPLIT_WORDS = { train: "training", val: "check set 1", test: "check set 2" };
const A_SHAPE = { rect: "a rectangle", ellipse: "an ellipse", polygon: "a polygon" };
const SHAPE_NAMES = { rect: "rectangle", ellipse: "ellipse", polygon: "outline" };

const state = {
  info: null, split: "train", offset: 0, limit: 50, total: 0,
  imageId: null, imageSplit: "train", image: null, display: null, attention: null, heat: null,
  rois: [], selected: null, tool: "pan", kind: "include", layout: "overlay", opacity: 0.5,
  stretch: false, cmap: "viridis", wl: { window: 255, level: 128 },
  zoom: 1, cx: 0.5, cy: 0.5, drag: null, polygon: null, hover: null,
  status: null, viewVersion: null, mode: "inspect", cmp: null, cmpBefore: null, cmpAfter: null,
  polling: null, storageKey: null, history: new Map(),
  invert: false, attStyle: "heat", threshold: 0.5, heldout: "val", kbd: null, kbdBox: null,
  filters: { label: "", predicted: "", correct: "", has_rois: "", sort: "id", region: null },
  thumbAttention: false, author: "", caps: { v2: false }, revision: null, offline: null,
  busy: new Set(), estimate: null,
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

function newRequestId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `r${Date.now().toString(36)}${Math.random().toString(36).slice(2)}`;
}

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    if (body && typeof body === "object" && !Array.isArray(body) && body.author === undefined && state.author) {
      body = { ...body, author: state.author };  // the reviewer's name with every action
    }
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let res;
  try { res = await fetch(url, opts); } catch (e) {
    serverAway();
    const err = new Error("The server does not answer. Is mimic-feedback still running? The page reconnects by itself when it is back.");
    err.offline = true;
    throw err;
  }
  if (res.status === 502 || res.status === 503 || res.status === 504) serverAway();
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

// Local, readable times ("14 Mar, 09:05") from the server's ISO UTC times.
function when(iso) {
  if (!iso) return "–";
  const t = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
  if (Number.isNaN(t.getTime())) return iso;
  const sameDay = t.toDateString() === new Date().toDateString();
  return t.toLocaleString(undefined, sameDay ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit" });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "unknown";
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const h = Math.floor(seconds / 3600), m = Math.round((seconds % 3600) / 60);
  return `${h} h${m ? ` ${m} min` : ""}`;
}

// Numbers as people type them: "30,5" is 30.5; "1 000" is 1000. Returns a number, null for
// blank, or an Error whose message says what is wrong.
function parseNumber(raw) {
  let t = String(raw).trim().replace(/[\s\u00a0\u202f']/g, "");
  if (t === "") return null;
  if (t.includes(",") && t.includes(".")) return new Error("use one decimal mark: 30.5 or 30,5");
  if ((t.match(/,/g) || []).length > 1) return new Error("use at most one decimal comma");
  t = t.replace(",", ".").replace(/^\u2212/, "-");
  if (!/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t)) return new Error("not a number");
  return Number(t);
}

const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const pct = (v, d = 1) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(d)} %`);
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const clamp01 = (x) => clamp(x, 0, 1);

// -- dialogs: modal (focus stays inside), focus returns where it was --------------------------
function confirmDialog({ title, body, yes, danger = false }) {
  const dlg = $("#confirm-dialog");
  const back = document.activeElement;
  $("#confirm-title").textContent = title;
  const box = $("#confirm-body");
  box.innerHTML = "";
  for (const part of [].concat(body)) {
    if (part instanceof Node) box.appendChild(part);
    else { const p = document.createElement("p"); p.textContent = part; box.appendChild(p); }
  }
  const ok = dlg.querySelector(".confirm-yes"), no = dlg.querySelector(".confirm-no");
  ok.textContent = yes;
  ok.classList.toggle("danger-fill", danger);
  ok.disabled = false;
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.disabled = true;  // a double-click answers once
      ok.removeEventListener("click", onYes); no.removeEventListener("click", onNo);
      dlg.removeEventListener("cancel", onCancel);
      if (dlg.open) dlg.close();
      if (back && back.focus && !back.disabled) back.focus(); else focusDecisions();
      resolve(answer);
    };
    const onYes = () => done(true), onNo = () => done(false);
    const onCancel = (e) => { e.preventDefault(); done(false); };
    ok.addEventListener("click", onYes); no.addEventListener("click", onNo);
    dlg.addEventListener("cancel", onCancel);
    dlg.showModal();
    (danger ? no : ok).focus();
  });
}

function focusDecisions() {
  const b = $$("#actions button").find((x) => !x.disabled && !x.hidden && x.offsetParent !== null);
  if (b) b.focus(); else $("#status").focus();
}

// -- persistence: the view survives a reload ----------------------------------------------------
const SAVED = ["split", "offset", "limit", "imageId", "imageSplit", "tool", "kind", "layout", "opacity", "stretch", "cmap",
  "wl", "zoom", "cx", "cy", "viewVersion", "mode", "cmpBefore", "cmpAfter", "invert", "attStyle", "threshold",
  "filters", "thumbAttention", "heldout"];
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
  const lo = state.wl.level - state.wl.window / 2, k = 255 / state.wl.window, inv = state.invert;
  for (let i = 0; i < px.data.length; i += 4) {
    for (let ch = 0; ch < 3; ch++) {
      const v = clamp(Math.round((px.data[i + ch] - lo) * k), 0, 255);
      out.data[i + ch] = inv ? 255 - v : v;
    }
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  state.display = c;
  showWindow();
}

function showWindow() {  // the numeric readout and sliders follow the state
  $("#wl-window").value = state.wl.window;
  $("#wl-level").value = state.wl.level;
  if (document.activeElement !== $("#wl-w")) $("#wl-w").value = state.wl.window;
  if (document.activeElement !== $("#wl-l")) $("#wl-l").value = state.wl.level;
  $("#invert").checked = !!state.invert;
  const key = `${state.wl.window}/${state.wl.level}`;
  $("#wl-preset").value = [...$("#wl-preset").options].some((o) => o.value === key) ? key : "";
}

function setWindow(window_, level) {
  state.wl = { window: clamp(Math.round(window_), 8, 255), level: clamp(Math.round(level), 0, 255) };
  applyWindow();
  render();
  save();
}

// The outline of the attention at a threshold: the pixel edges between "at least thr" and
// "below", as segments [x0, y0, x1, y1] in image-normalised coordinates. m: {w, h, values}.
function outlineSegments(m, thr) {
  const { w, h, values } = m, segs = [];
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && values[y * w + x] >= thr;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!on(x, y)) continue;
      if (!on(x, y - 1)) segs.push([x / w, y / h, (x + 1) / w, y / h]);
      if (!on(x, y + 1)) segs.push([x / w, (y + 1) / h, (x + 1) / w, (y + 1) / h]);
      if (!on(x - 1, y)) segs.push([x / w, y / h, x / w, (y + 1) / h]);
      if (!on(x + 1, y)) segs.push([(x + 1) / w, y / h, (x + 1) / w, (y + 1) / h]);
    }
  }
  return segs;
}

function drawOutline(ctx, canvas, segs) {
  if (!segs || !segs.length) return;
  const dpr = canvas.width / (canvas.getBoundingClientRect().width || canvas.width);
  ctx.save();
  ctx.beginPath();
  for (const [x0, y0, x1, y1] of segs) {
    const a = toCanvas(canvas, [x0, y0]), b = toCanvas(canvas, [x1, y1]);
    ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]);
  }
  ctx.lineCap = "square";
  ctx.lineWidth = 4 * dpr; ctx.strokeStyle = "rgba(0, 0, 0, 0.8)"; ctx.stroke();
  ctx.lineWidth = 2 * dpr; ctx.strokeStyle = "#ffd400"; ctx.stroke();
  ctx.restore();
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

function paint(canvas, layers, { outlines = true, contour = null } = {}) {
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
  if (contour) drawOutline(ctx, canvas, contour);
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
  if (state.freehand && state.freehand.length > 1) {
    drawRoi(ctx, canvas, { shape: "polygon", kind: state.kind, points: state.freehand }, { open: true });
  }
  if (state.kbdBox) drawRoi(ctx, canvas, { shape: state.kbdBox.shape, kind: state.kind, points: state.kbdBox.points }, { selected: true });
  if (state.kbd && document.activeElement === canvas) drawCursor(ctx, canvas, state.kbd);
}

function drawCursor(ctx, canvas, p) {  // the keyboard's cross
  const [x, y] = toCanvas(canvas, [p.x, p.y]);
  const dpr = canvas.width / (canvas.getBoundingClientRect().width || canvas.width), r = 9 * dpr;
  ctx.save();
  for (const [width, colour] of [[4 * dpr, "#000"], [2 * dpr, "#ffd400"]]) {
    ctx.beginPath();
    ctx.moveTo(x - r, y); ctx.lineTo(x + r, y); ctx.moveTo(x, y - r); ctx.lineTo(x, y + r);
    ctx.lineWidth = width; ctx.strokeStyle = colour; ctx.stroke();
  }
  ctx.restore();
}

let frame = null;
function render() {
  $("#zoom-level").textContent = `${Math.round(state.zoom * 100)}%`;
  if (frame) return;
  frame = requestAnimationFrame(() => { frame = null; renderNow(); });
}

function renderNow() {
  const img = state.display;
  const heatOn = state.attStyle === "heat" || state.attStyle === "both";
  const lineOn = state.attStyle === "outline" || state.attStyle === "both";
  const contourOf = (m) => {
    if (!lineOn || !m) return null;
    const key = `${m.version}|${state.threshold}`;
    if (!m.contour || m.contourKey !== key) { m.contour = outlineSegments(m, state.threshold); m.contourKey = key; }
    return m.contour;
  };
  if (state.mode === "compare") {
    const c = state.cmp;
    paint($("#cmp-before"), [[img, 1], [heatOn && c && c.heatB, state.opacity]], { contour: contourOf(c && c.b) });
    paint($("#cmp-after"), [[img, 1], [heatOn && c && c.heatA, state.opacity]], { contour: contourOf(c && c.a) });
    paint($("#cmp-delta"), [[img, 1], [c && c.delta, Math.max(0.6, state.opacity)]]);
  } else if (state.layout === "overlay") {
    paint($("#image-canvas"), [[img, 1], [heatOn && state.heat, state.opacity]], { contour: contourOf(state.attention) });
  } else {
    paint($("#image-canvas"), [[img, 1]]);
    paint($("#attention-canvas"), [[img, 1], [heatOn && state.heat, state.opacity]], { contour: contourOf(state.attention) });
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
// The list's query: split, page, filters, order and the search box (image pixels).
function listQuery(extra = {}) {
  const f = state.filters, q = new URLSearchParams({ split: state.split, offset: state.offset, limit: state.limit });
  for (const k of ["label", "predicted", "correct", "has_rois"]) if (f[k] !== "" && f[k] !== null) q.set(k, f[k]);
  if (f.sort && f.sort !== "id") q.set("sort", f.sort);
  if (f.region) q.set("region", f.region.join(","));
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return q;
}

function filterWords() {
  const f = state.filters, names = state.info ? state.info.class_names : [], w = [];
  if (f.label !== "") w.push(`class ${names[f.label]}`);
  if (f.predicted !== "") w.push(`model says ${names[f.predicted]}`);
  if (f.correct !== "") w.push(f.correct === "true" ? "right diagnoses" : "wrong diagnoses");
  if (f.has_rois !== "") w.push(f.has_rois === "true" ? "with regions" : "without regions");
  return w.join(", ");
}

async function loadList() {
  const data = await api("GET", `/api/images?${listQuery()}`);
  state.total = data.total;
  state.listIds = data.items.map((i) => i.id);
  const ul = $("#image-list");
  ul.innerHTML = "";
  for (const item of data.items) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.id = item.id;
    b.className = item.id === state.imageId ? "selected" : "";
    const pred = item.predicted !== undefined && state.info ? state.info.class_names[item.predicted] : null;
    b.title = `${item.id}: ${item.label_name}${pred ? `; the model says ${pred}` : ""}`;
    const thumb = document.createElement("canvas");
    thumb.className = "thumb"; thumb.width = 40; thumb.height = 40;
    drawThumb(thumb, item.id);
    const name = document.createElement("span");
    name.className = "name"; name.textContent = item.id;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = item.label_name;
    if (item.correct === false) {
      const wrong = document.createElement("span");
      wrong.className = "wrong"; wrong.textContent = ` · model: ${pred}`;
      meta.appendChild(wrong);
    }
    if (item.n_rois) {
      const n = document.createElement("span");
      n.className = "count";
      n.textContent = ` · ${item.n_rois} region${item.n_rois > 1 ? "s" : ""}`;
      meta.appendChild(n);
    }
    if (item.attention_share !== undefined && item.attention_share !== null) {
      const a = document.createElement("span");
      a.className = "share"; a.textContent = ` · ${pct(item.attention_share, 0)} in box`;
      a.title = "Share of the model's attention inside the search box";
      meta.appendChild(a);
    }
    b.append(thumb, name, meta);
    b.addEventListener("click", guard(() => selectImage(item.id), "#list-message"));
    li.appendChild(b);
    ul.appendChild(li);
  }
  const last = Math.min(state.offset + state.limit, state.total);
  const filtered = filterWords();
  $("#page-info").textContent = `${state.total ? state.offset + 1 : 0}–${last} of ${state.total}${filtered ? " found" : ""}`;
  $("#page-info").title = filtered ? `Only ${filtered}` : "";
  $("#prev-page").disabled = state.offset === 0;
  $("#next-page").disabled = last >= state.total;
  showSearchBox();
  ul.dataset.split = state.split;  // for scripts: the list shown is this split's
  ul.dataset.ready = String(Date.now());
  return data;
}

// Thumbnails: the image, and (on demand) the attention of the version in use over it.
const thumbCache = new Map();
function drawThumb(canvas, id) {
  const paintIt = async () => {
    const ctx = canvas.getContext("2d");
    const key = `${id}|${state.thumbAttention ? state.status && state.status.current.id : 0}|${state.cmap}`;
    let px = thumbCache.get(key);
    if (!px) {
      const base = await loadPixels(`/api/images/${enc(id)}/thumb.png?size=48`);
      const c = document.createElement("canvas");
      c.width = base.w; c.height = base.h;
      const cx = c.getContext("2d");
      cx.drawImage(base.canvas, 0, 0);
      if (state.thumbAttention) {
        const m = await fetchAttention(id, state.status ? state.status.current.id : null);
        const r = displayRange(m);
        cx.globalAlpha = 0.55;
        cx.imageSmoothingEnabled = true;
        cx.drawImage(heatCanvas(m.values, m.w, m.h, r.dlo, r.dhi, LUT[state.cmap]), 0, 0, base.w, base.h);
      }
      px = c;
      if (thumbCache.size > 400) thumbCache.clear();
      thumbCache.set(key, px);
    }
    ctx.fillStyle = "#111"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    const s = Math.min(canvas.width / px.width, canvas.height / px.height);
    ctx.drawImage(px, (canvas.width - px.width * s) / 2, (canvas.height - px.height * s) / 2, px.width * s, px.height * s);
  };
  paintIt().catch(() => {});
}

function showSearchBox() {
  const r = state.filters.region;
  $("#search-box").textContent = r
    ? `Search box: x ${r[0]}–${r[2]}, y ${r[1]}–${r[3]} (pixels). The list shows the share of attention inside it.`
    : "Search box: none. Use “find” on a region to look for images where the model looks there.";
  $("#clear-search").hidden = !r;
  for (const o of $$("#sort option")) if (o.value.includes("attention_share")) o.disabled = !r;
}

async function setFilter(key, value) {
  state.filters = { ...state.filters, [key]: value };
  if (!state.filters.region && state.filters.sort.includes("attention_share")) state.filters.sort = "id";
  state.offset = 0;
  $("#sort").value = state.filters.sort;
  await loadList();
  save();
}

// The search box: a region's bounding box in image pixels; the list sorted by the share of
// attention inside it (most first): where the model looks at a marker, a shortcut.
async function findWithRegion(roi) {
  const xs = roi.points.map((p) => p[0]), ys = roi.points.map((p) => p[1]);
  const W = state.image ? state.image.w : state.info.width, H = state.image ? state.image.h : state.info.height;
  const box = [Math.floor(Math.min(...xs) * W), Math.floor(Math.min(...ys) * H), Math.ceil(Math.max(...xs) * W), Math.ceil(Math.max(...ys) * H)];
  state.filters = { ...state.filters, region: box, sort: "-attention_share" };
  $("#sort").value = "-attention_share";
  $("#filters").open = true;
  state.offset = 0;
  await loadList();
  save();
  setStatus(`Images sorted by how much the model looks inside the box of region #${roi.id} (most first).`);
}

async function nextUnmarked() {
  const q = listQuery({ has_rois: "false", offset: 0, limit: 500 });
  const data = await api("GET", `/api/images?${q}`);
  let items = data.items;
  if (!state.caps.v2) items = items.filter((i) => !i.n_rois);  // an older server ignores the filter
  const order = state.listIds || [];
  const here = order.indexOf(state.imageId);
  const after = items.find((i) => order.indexOf(i.id) > here) || items.find((i) => i.id !== state.imageId);
  if (!after) { report("#list-message", "Every image in this list has regions.", "info"); return; }
  await selectImage(after.id);
  const b = $(`#image-list button[data-id="${CSS.escape(after.id)}"]`);
  if (b) b.scrollIntoView({ block: "nearest" });
}

// Copy one region to many images in one request (all or none).
function openApply(roi) {
  const dlg = $("#apply-dialog"), back = document.activeElement;
  const n = state.listIds ? state.listIds.length : 0;
  const filtered = filterWords();
  $("#apply-what").textContent = `Region #${roi.id}: ${SHAPE_WORDS[roi.shape]}, “${KIND_WORDS[roi.kind]}”, at the same place on each image.`;
  $("#apply-page").textContent = `the ${n} images shown in the list`;
  $("#apply-filtered").textContent = filtered ? `all ${state.total} images found (${filtered})` : `all ${state.total} images of the list`;
  $("#apply-all").textContent = `all ${state.info.splits.train} training images`;
  const trainOnly = state.split === "train";
  for (const v of ["page", "filtered"]) dlg.querySelector(`input[value=${v}]`).disabled = !trainOnly;
  if (!trainOnly) dlg.querySelector("input[value=all]").checked = true;
  report("#apply-message", "");
  const go = $("#apply-go");
  go.disabled = false;
  const close = () => { if (dlg.open) dlg.close(); go.onclick = null; if (back && back.focus) back.focus(); };
  $("#apply-cancel").onclick = close;
  dlg.oncancel = (e) => { e.preventDefault(); close(); };
  go.onclick = guard(async () => {
    if (go.disabled) return;
    go.disabled = true;
    const to = dlg.querySelector("input[name=apply-to]:checked").value;
    const roiBody = { kind: roi.kind, shape: roi.shape, points: roi.points, weight: roi.weight || 1 };
    const body = { roi: roiBody, split: "train", image_ids: null, filter: null };
    if (to === "page") body.image_ids = state.listIds.filter((id) => id !== roi.image_id);
    if (to === "filtered") {
      const f = {};
      for (const k of ["label", "predicted", "correct", "has_rois"]) if (state.filters[k] !== "") f[k] = state.filters[k];
      body.filter = f;
    }
    try {
      const r = await applyRoi(body, roi);
      close();
      await afterRegionChange();
      setStatus(`Copied region #${roi.id} to ${r.created} image${r.created === 1 ? "" : "s"}.`, "ok");
    } catch (err) { go.disabled = false; report("#apply-message", err.message); }
  }, "#apply-message");
  dlg.showModal();
  go.focus();
}

async function applyRoi(body, roi) {
  try {
    return await api("POST", "/api/rois/apply", body);
  } catch (err) {
    if (err.status !== 404 && err.status !== 405) throw err;
    // An older server: copy image by image (the shown list only).
    const ids = body.image_ids || state.listIds.filter((id) => id !== roi.image_id);
    for (const id of ids) await api("POST", "/api/rois", { rois: [{ ...body.roi, image_id: id }] });
    return { created: ids.length, image_ids: ids };
  }
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
    const find = document.createElement("button");
    find.type = "button";
    find.className = "find-here";
    find.textContent = "find";
    find.title = "Sort the images by how much the model looks inside this region's box (to find a shortcut such as a marker)";
    find.addEventListener("click", guard(() => findWithRegion(r), "#roi-message"));
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "apply-roi";
    copy.textContent = "copy to…";
    copy.title = "Put this region at the same place on other images (the shown list, the images found, or all)";
    copy.addEventListener("click", () => openApply(r));
    buttons.append(sw, find, copy, del);
    li.append(label, buttons);
    ul.appendChild(li);
  }
  const allowed = state.info ? state.info.feedback_splits : ["train"];
  const heldOut = state.imageId && !allowed.includes(state.imageSplit);
  $("#roi-note").textContent = heldOut
    ? `This image belongs to ${SPLIT_WORDS[state.imageSplit] || state.imageSplit} (not trained on): regions can be drawn on training images only, so that the check stays honest.`
    : (state.rois.length ? "" : "No regions yet: choose “rectangle”, “ellipse”, “polygon” or “freehand” and draw on the image (or R, then arrow keys and Enter).");
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

// Whether a region can start at p; if not, the reason appears over the image.
function canDraw(p) {
  const allowed = state.info ? state.info.feedback_splits : ["train"];
  if (!allowed.includes(state.imageSplit)) {
    report("#canvas-message", `Regions can be drawn on training images only: this image belongs to ${SPLIT_WORDS[state.imageSplit] || state.imageSplit}, kept apart to check the model honestly.`);
    return false;
  }
  if (p.x < 0 || p.y < 0 || p.x > 1 || p.y > 1) {
    report("#canvas-message", "Start on the image itself: the dark margin around it is outside the image.", "info");
    return false;
  }
  return true;
}

// At least MIN_REGION_PX image pixels and MIN_REGION_CSS screen pixels on each side.
function bigEnough(points, canvas) {
  const xs = points.map((q) => q[0]), ys = points.map((q) => q[1]);
  const w = Math.max(...xs) - Math.min(...xs), h = Math.max(...ys) - Math.min(...ys);
  const W = state.image ? state.image.w : 64, H = state.image ? state.image.h : 64;
  let css = Infinity;
  if (canvas) {
    const v = view(canvas), k = canvas.getBoundingClientRect().width / canvas.width || 1;
    css = Math.min(w * v.w * v.s * k, h * v.h * v.s * k);
  }
  return w * W >= MIN_REGION_PX && h * H >= MIN_REGION_PX && css >= MIN_REGION_CSS;
}

// A freehand path as a polygon of at most 64 corners (evenly spaced along the path).
function simplifyPath(pts, max = 64) {
  const out = [pts[0]];
  for (const p of pts) { const q = out[out.length - 1]; if (Math.hypot(p[0] - q[0], p[1] - q[1]) > 0.004) out.push(p); }
  if (out.length <= max) return out;
  const step = out.length / max;
  return Array.from({ length: max }, (_, i) => out[Math.floor(i * step)]);
}

function onDown(ev) {
  if (!state.image) return;
  if (state.mode === "compare" && ["rect", "ellipse", "polygon", "freehand", "select"].includes(state.tool)) {
    report("#canvas-message", "Drawing is off while comparing versions: press C or “Image & attention” to draw.", "info");
  }
  const canvas = ev.currentTarget;
  canvas.focus({ preventScroll: true });
  const p = toImage(canvas, ev);
  const tool = state.mode === "compare" ? "pan" : state.tool;
  if (tool === "pan" || ev.button === 1) {
    state.drag = { pan: true, x: ev.clientX, y: ev.clientY, cx: state.cx, cy: state.cy, canvas };
    canvas.classList.add("panning");
  } else if (tool === "wl") {
    state.drag = { wl: true, x: ev.clientX, y: ev.clientY, wl: { ...state.wl } };
  } else if (tool === "rect" || tool === "ellipse" || tool === "freehand") {
    if (!canDraw(p)) return;
    const start = [clamp01(p.x), clamp01(p.y)];
    if (tool === "freehand") { state.freehand = [start]; state.drag = { free: true }; }
    else state.drag = { roi: { shape: tool, kind: state.kind, points: [start, start] } };
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
    if (tool === "polygon" && !state.polygon) canDraw(p);  // says why a first click cannot start
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
  } else if (d.free) {
    const p = toImage(canvas, ev);
    state.freehand.push([clamp01(p.x), clamp01(p.y)]);
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
    if (d.free) {
      const pts = simplifyPath(state.freehand || []);
      state.freehand = null;
      if (pts.length < 3 || !bigEnough(pts, ev && ev.currentTarget)) {
        report("#canvas-message", "Too small for a region: hold the button and draw the outline around the area.", "info");
        return;
      }
      await addRoi({ shape: "polygon", kind: state.kind, points: pts });
    } else if (d.roi) {
      if (!bigEnough(d.roi.points, ev && ev.currentTarget)) {
        report("#canvas-message", `Too small for a region (a slip of the hand?): drag further to draw ${A_SHAPE[d.roi.shape]}.`, "info");
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

// -- keyboard drawing: arrows move a cross, Enter starts a box, arrows move it, Shift+arrows
// resize it, Enter ends it (K switches its kind, Esc cancels). With "select", arrows move the
// selected region and Shift+arrows resize it; the change is saved after a short pause.
let kbdTimer = null;
async function keyboardDraw(e, canvas) {
  const tool = state.mode === "compare" ? "pan" : state.tool;
  if (!state.image) return false;
  const arrow = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[e.key];
  const step = Math.max(1 / state.image.w, 1 / 32 / state.zoom);
  if (tool === "rect" || tool === "ellipse") {
    e.preventDefault();
    if (!state.kbd) state.kbd = { x: state.cx, y: state.cy };
    if (e.key === "Enter") {
      if (!state.kbdBox) {
        if (!canDraw(state.kbd)) return true;
        const s0 = 0.1 / Math.max(1, state.zoom);
        const x0 = clamp(state.kbd.x, 0, 1 - s0), y0 = clamp(state.kbd.y, 0, 1 - s0);
        state.kbdBox = { shape: tool, points: [[x0, y0], [x0 + s0, y0 + s0]] };
        report("#canvas-message", "Arrows move the region, Shift+arrows resize it, K switches its kind, Enter saves it, Esc cancels.", "info");
      } else {
        const box = state.kbdBox;
        state.kbdBox = null;
        state.kbd = { x: box.points[1][0], y: box.points[1][1] };
        if (!bigEnough(box.points, canvas)) {
          report("#canvas-message", "Too small for a region: make it larger with Shift+arrows.", "info");
        } else {
          await addRoi({ shape: box.shape, kind: state.kind, points: box.points });
        }
      }
      render();
      return true;
    }
    const [dx, dy] = arrow.map((v) => v * step);
    if (state.kbdBox) {
      const b = state.kbdBox;
      if (e.shiftKey) {  // resize: the far corner moves, at least a few pixels wide
        const [[x0, y0], [x1, y1]] = b.points;
        b.points = [[x0, y0], [clamp(x1 + dx, x0 + MIN_REGION_PX / state.image.w, 1), clamp(y1 + dy, y0 + MIN_REGION_PX / state.image.h, 1)]];
      } else b.points = moved(b.points, dx, dy);
    } else {
      state.kbd = { x: clamp01(state.kbd.x + dx * (e.shiftKey ? 4 : 1)), y: clamp01(state.kbd.y + dy * (e.shiftKey ? 4 : 1)) };
    }
    render();
    return true;
  }
  if (tool === "select" && state.selected !== null && arrow) {
    e.preventDefault();
    const roi = state.rois.find((r) => r.id === state.selected);
    if (!roi) return true;
    const d = state.drag && state.drag.kbd ? state.drag : { edit: "move", kbd: true, id: roi.id, orig: roi.points, points: roi.points };
    const [dx, dy] = arrow.map((v) => v * step);
    if (e.shiftKey && roi.shape !== "polygon") {
      d.edit = "resize";
      const [[x0, y0], [x1, y1]] = d.points;
      const a = [Math.min(x0, x1), Math.min(y0, y1)], b = [Math.max(x0, x1), Math.max(y0, y1)];
      d.points = [a, [clamp(b[0] + dx, a[0] + MIN_REGION_PX / state.image.w, 1), clamp(b[1] + dy, a[1] + MIN_REGION_PX / state.image.h, 1)]];
    } else d.points = moved(d.points, dx, dy);
    state.drag = d;
    render();
    clearTimeout(kbdTimer);
    kbdTimer = setTimeout(guard(async () => {
      const k = state.drag;
      if (!k || !k.kbd) return;
      state.drag = null;
      await updateRoi(k.id, { points: k.points }, k.edit === "move" ? `moving region #${k.id}` : `resizing region #${k.id}`);
      report("#canvas-message", `Region #${k.id} ${k.edit === "move" ? "moved" : "resized"}`, "info");
    }, "#canvas-message"), 500);
    return true;
  }
  return false;
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
  gamma: { label: "feedback strength", required: true, min: 0, max: 1e6, hint: "a number from 0 to 1 000 000, such as 30 or 30,5; 0 ignores your regions" },
  epochs: { label: "training rounds", required: true, integer: true, min: 1, max: 1000, hint: "a whole number from 1 to 1000" },
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
    const v = parseNumber(raw);
    let msg = null;
    if (v instanceof Error) msg = `${raw} is ${v.message === "not a number" ? "not a number" : `unclear (${v.message})`}: enter ${f.hint}.`;
    else if (v === null) { if (f.required) msg = `Enter the ${f.label}: ${f.hint}.`; }
    else {
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
  if (state.busy.has("retrain")) return;
  state.busy.add("retrain");
  $("#retrain").disabled = true;
  try {
    save();
    const s = state.status;
    // A waiting candidate is replaced by a new retraining: ask first.
    let replace = false;
    if (s && s.candidate) {
      const ok = await confirmDialog({
        title: `Replace the waiting version ${s.candidate.id}?`,
        body: [`Version ${s.candidate.id} is waiting for your decision. A new retraining puts it aside (“rolled back”, still in the history) and makes a new one.`,
          "To keep it, cancel and accept it first."],
        yes: `Retrain and put v${s.candidate.id} aside`, danger: true });
      if (!ok) { setStatus("Retraining not started."); return; }
      replace = true;
    }
    // The time, from one measured step on this machine; long ones ask first.
    let est = null;
    try { est = await api("POST", "/api/retrain/estimate", body); } catch (err) { if (err.offline) throw err; }
    state.estimate = est ? { seconds: est.seconds, at: Date.now() } : null;
    if (est && est.seconds > CONFIRM_ABOVE_S) {
      const ok = await confirmDialog({
        title: `This retraining takes about ${duration(est.seconds)}`,
        body: [`${body.epochs} training round${body.epochs > 1 ? "s" : ""}, measured on this computer: about ${duration(est.seconds)}${est.passes ? ` (${duration(est.per_pass_s)} per round)` : ""}.`,
          "You can cancel it at any time with “Cancel” next to the progress bar. Meanwhile the decisions wait."],
        yes: `Start (about ${duration(est.seconds)})` });
      if (!ok) { setStatus("Retraining not started. Fewer training rounds take less time."); return; }
    }
    const send = { ...body };
    if (replace && state.caps.v2) send.replace_candidate = true;
    try {
      await api("POST", "/api/retrain", send);
    } catch (err) {
      if (err.status !== 409 || !/candidate/i.test(err.message) || replace) throw err;
      const ok = await confirmDialog({ title: "Replace the waiting version?", body: [err.message], yes: "Retrain and replace it", danger: true });
      if (!ok) { setStatus("Retraining not started."); return; }
      await api("POST", "/api/retrain", { ...body, replace_candidate: true });
    }
    setStatus(`Retraining started: ${body.epochs} round${body.epochs > 1 ? "s" : ""}, feedback strength ${body.gamma}${est ? `, about ${duration(est.seconds)}` : ""}.`);
    state.expectChange = true;
    pollRetrain();
  } finally {
    state.busy.delete("retrain");
    if (!state.status || !state.status.retrain || state.status.retrain.state !== "running") {
      $("#retrain").disabled = $("#retrain-message").dataset.state === "running";
    }
  }
}

async function cancelRetrain() {
  if (state.busy.has("cancel")) return;
  state.busy.add("cancel");
  $("#cancel-retrain").disabled = true;
  try {
    await api("POST", "/api/retrain/cancel", {});
    setStatus("Stopping the retraining…");
    pollRetrain();
  } finally { state.busy.delete("cancel"); }
}

function describeParams(p) {
  if (!p) return "";
  return `${p.epochs} round${p.epochs > 1 ? "s" : ""}, strength ${p.gamma}`;
}

// The server's progress line in plain words: "epoch 1/2, batch 3/26: loss …" -> round, step.
function plainProgress(msg) {
  if (!msg) return "starting";
  const m = /epoch (\d+)\/(\d+)(?:, batch (\d+)\/(\d+))?/.exec(msg);
  if (!m) return msg.replace(/loss [^()]*(\(feedback [^)]*\))?/g, "").trim() || "working";
  return `round ${m[1]} of ${m[2]}${m[3] ? `, step ${m[3]} of ${m[4]}` : ""}`;
}

function timeLeft(r) {
  const frac = r.progress && typeof r.progress === "object" ? r.progress.fraction : r.progress;
  const started = r.started_at ? new Date(/[zZ]$|[+-]\d\d:?\d\d$/.test(r.started_at) ? r.started_at : `${r.started_at}Z`).getTime() : null;
  if (frac > 0.02 && started) return (Date.now() - started) / 1000 * (1 - frac) / frac;
  const est = r.estimate_s || (state.estimate && state.estimate.seconds);
  if (est && started) return Math.max(0, est - (Date.now() - started) / 1000);
  return null;
}

function showRetrain(r) {
  const frac = r.progress && typeof r.progress === "object" ? r.progress.fraction : r.progress;
  $("#retrain-progress").value = frac || 0;
  const msg = $("#retrain-message");
  msg.dataset.state = r.state;
  const running = r.state === "running" || r.state === "cancelling";
  if (running) {
    const left = timeLeft(r);
    msg.textContent = r.state === "cancelling" ? "stopping…"
      : `${Math.round(100 * (frac || 0))}% · ${plainProgress(r.message)}${left !== null ? ` · about ${duration(left)} left` : ""}`;
    msg.title = `Retraining (${describeParams(r.params)})${r.author ? ` by ${r.author}` : ""}, started ${when(r.started_at)}. Technical: ${r.message || ""}`;
  } else {
    const words = { failed: "failed", done: `done: version ${r.version}`, cancelled: "cancelled", lost: "lost (server stopped)" };
    msg.textContent = words[r.state] || "";
    msg.title = r.message || "";
  }
  $("#cancel-retrain").hidden = !running;
  $("#cancel-retrain").disabled = r.state === "cancelling";
  $("#retrain").disabled = running;
}

function pollRetrain() {
  clearTimeout(state.polling);
  const tick = guard(async () => {
    const s = await api("GET", "/api/retrain");
    showRetrain(s);
    if (s.state === "running" || s.state === "cancelling") {
      state.polling = setTimeout(tick, 500);
      updateDecisionButtons();
    } else {
      state.polling = null;
      await refreshStatus();
      if (s.state === "done") {
        setStatus(`New version ${s.version} is ready: compare it, then accept or discard it.`, "ok");
        $("#show-diff").classList.add("highlight");
      }
      if (s.state === "failed") setStatus(`Retraining failed: ${s.error || s.message}`, "error");
      if (s.state === "cancelled") setStatus(`Retraining cancelled${s.message ? `: ${s.message}` : ""}. Nothing was changed.`);
      if (s.state === "lost") setStatus(lostWords(s), "error");
    }
  });
  tick();
}

function lostWords(r) {
  return `The retraining started ${when(r.started_at)}${r.author ? ` by ${r.author}` : ""} was lost: the server stopped while it ran. Nothing was changed; start it again if needed.`;
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
  const short = `strength ${p.gamma} · ${p.epochs} round${p.epochs > 1 ? "s" : ""}${part}`;
  const long = `Technical: feedback strength (γ) ${p.gamma}; training rounds (epochs) ${p.epochs}; learning rate ${p.lr}; ` +
    `retrained: ${trainWords[p.train] || p.train}; correction: ${p.mode}; batches per pass: ${p.max_batches || "all"}; ` +
    `seed ${p.seed}; from ${p.feedback_rois} regions on ${p.feedback_images} images`;
  return { short, long, regions: `${p.feedback_rois} regions on ${p.feedback_images} images` };
}

function versionLabel(v) {
  const cur = state.status && state.status.current.id === v.id;
  return `v${v.id} · ${cur ? "in use" : v.status === "candidate" ? "new" : STATUS_WORDS[v.status]}`;
}

function renderVersions(s) {
  const t = $("#versions");
  t.innerHTML = "";
  const head = document.createElement("tr");
  for (const [c, title] of [["Version", ""], ["Settings", "Feedback strength and training rounds (more in the tooltip)"],
    ["Right diagnoses", "On images the model was not trained on"], ["", ""]]) {
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
    td1.title = `made ${when(v.created)}${v.author ? ` by ${v.author}` : ""}${v.parent ? `; from version ${v.parent}` : ""}`;
    const made = document.createElement("div");
    made.className = "muted small"; made.textContent = when(v.created);
    td1.appendChild(made);
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
    td3.title = `right diagnoses on ${n || "?"} images of ${SPLIT_WORDS[split] || split} (not trained on)`;
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
  const rs = s.retrain && s.retrain.state;
  const running = rs === "running" || rs === "cancelling" || ["running", "cancelling"].includes($("#retrain-message").dataset.state);
  const cand = s.candidate;
  $("#accept").disabled = !cand || running || state.busy.has("decision") || state.busy.has("accept-dialog");
  $("#rollback").disabled = !cand || running || state.busy.has("decision");
  $("#accept").textContent = cand ? `Accept v${cand.id}${state.acceptNote && state.acceptNote.id === cand.id ? ` (${state.acceptNote.text})` : ""}` : "Accept new version";
  $("#accept").classList.toggle("falls", !!(cand && state.acceptNote && state.acceptNote.id === cand.id && state.acceptNote.falls));
  $("#accept").title = cand ? `Make the new version ${cand.id} the version in use` : "Nothing to accept: retrain first";
  $("#rollback").textContent = cand ? `Discard v${cand.id}` : "Discard new version";
  $("#rollback").title = cand ? `Put the new version ${cand.id} aside; version ${s.current.id} stays in use` : "Nothing to discard";
  const target = s.revert_targets[0];
  $("#revert").disabled = target === undefined || running || state.busy.has("decision");
  $("#revert").textContent = target === undefined ? "Revert…" : `Revert to v${target}…`;
  $("#revert").title = target === undefined ? "Nothing earlier to return to" : `Make version ${target} the version in use again (other earlier versions: History)`;
  $("#show-diff").disabled = s.versions.length < 2;
  $("#show-diff").textContent = cand ? `Compare with new v${cand.id}` : "Compare versions";
  $("#mode-compare").disabled = s.versions.length < 2;
}

// What a status says, to tell another tab's changes: a revision (newer servers) or a summary.
function statusKey(s) {
  if (s.revision !== undefined) return `r${s.revision}`;
  const r = s.retrain || {};
  return JSON.stringify([s.current.id, s.candidate && s.candidate.id, s.versions.map((v) => v.status), s.n_rois, r.state, r.version]);
}

function describeChange(old, s) {
  const w = [];
  const by = (who) => (who ? ` by ${who}` : "");
  if (old.current.id !== s.current.id) {
    const v = s.versions.find((x) => x.id === s.current.id);
    w.push(`version ${s.current.id} is now in use${by(v && v.author)}`);
  }
  if (s.candidate && (!old.candidate || old.candidate.id !== s.candidate.id)) w.push(`new version ${s.candidate.id} is waiting for a decision`);
  if (old.candidate && !s.candidate && old.current.id === s.current.id) w.push(`new version ${old.candidate.id} was discarded`);
  const ro = old.retrain || {}, rn = s.retrain || {};
  if (rn.state !== ro.state) {
    const words = { running: `a retraining started${by(rn.author)}`, cancelling: "the retraining is being stopped", cancelled: "the retraining was cancelled",
      done: "the retraining finished", failed: "the retraining failed", lost: "a retraining was lost when the server stopped" };
    if (words[rn.state]) w.push(words[rn.state]);
  }
  if (old.n_rois !== s.n_rois) w.push(`regions changed (${old.n_rois} → ${s.n_rois})`);
  return w.join("; ") || "something changed";
}

async function refreshStatus({ remote = false } = {}) {
  const old = state.status;
  const s = await api("GET", "/api/status");
  state.caps.v2 = s.revision !== undefined;
  state.status = s;
  state.statusKey = statusKey(s);
  const cand = s.candidate ? ` · new v${s.candidate.id} waiting` : "";
  $("#version-badge").textContent = `in use: v${s.current.id}${cand}`;
  $("#version-badge").dataset.current = s.current.id;
  $("#version-badge").dataset.candidate = s.candidate ? s.candidate.id : "";
  const imgs = s.images_with_rois !== undefined ? s.images_with_rois : null;
  $("#rois-badge").textContent = imgs === null ? `${s.n_rois} region${s.n_rois === 1 ? "" : "s"}`
    : `${imgs} image${imgs === 1 ? "" : "s"} with regions (${s.n_rois} region${s.n_rois === 1 ? "" : "s"})`;
  $("#rois-badge").dataset.images = imgs === null ? "" : imgs;
  if (state.viewVersion !== null && !versionById(state.viewVersion)) state.viewVersion = null;
  renderVersions(s);
  fillVersionSelect($("#version-select"), state.viewVersion, true);
  const r = s.retrain || {};
  if (r.state) showRetrain(r);
  if ((r.state === "running" || r.state === "cancelling") && !state.polling) pollRetrain();
  if (r.state === "lost" && (!old || (old.retrain || {}).state !== "lost")) setStatus(lostWords(r), "error");
  if (remote && old) {
    const text = `Changed in another window at ${when(new Date().toISOString())}: ${describeChange(old, s)}.`;
    const note = $("#remote-note");
    note.textContent = text;
    note.hidden = false;
    note.dataset.revision = s.revision !== undefined ? s.revision : "";
    clearTimeout(timers.remote);
    timers.remote = setTimeout(() => { note.hidden = true; }, 15000);
    if (old.candidate && (!s.candidate || s.candidate.id !== old.candidate.id)) $("#show-diff").classList.remove("highlight");
    $("#status").textContent = "";
  }
  updateDecisionButtons();
  loadEvents().catch(() => {});
  return s;
}

// Every tab asks for changes every POLL_MS; a change made elsewhere refreshes what it shows and
// says so. A server that went away is shown plainly; the page recovers when it comes back.
async function watch() {
  let s;
  try {
    const res = await fetch("/api/status", { cache: "no-store" });
    if (!res.ok) throw new Error(String(res.status));
    s = await res.json();
  } catch (e) {
    serverAway();
    setTimeout(watch, POLL_MS);
    return;
  }
  if (state.offline) await serverBack();
  else if (state.status && statusKey(s) !== state.statusKey && !state.busy.size && !state.drag) {
    const mine = state.expectChange;
    state.expectChange = false;
    await guard(async () => {
      await refreshStatus({ remote: !mine });
      await loadList();
      await loadRois();
      if (state.mode === "compare") { defaultComparison(); await loadCompare(); } else await loadAttention();
    })();
  }
  setTimeout(watch, POLL_MS);
}

function serverAway() {
  if (state.offline) return;
  state.offline = Date.now();
  const el = $("#connection");
  el.textContent = `The server is not answering (since ${when(new Date().toISOString())}). Nothing you see is lost; the page reconnects by itself when the server is back.`;
  el.hidden = false;
  clearTimeout(state.polling);
  state.polling = null;
}

async function serverBack() {
  state.offline = null;
  const el = $("#connection");
  el.hidden = true;
  await guard(async () => {
    await refreshStatus();
    await loadList();
    if (state.imageId) await selectImage(state.imageId, state.imageSplit);
    const r = state.status.retrain || {};
    setStatus(r.state === "lost" ? lostWords(r) : "Reconnected to the server.", r.state === "lost" ? "error" : "ok");
  })();
}

async function loadEvents() {
  if (!$("#audit").open) return;
  const ev = await api("GET", "/api/events?limit=30");
  const ol = $("#events");
  ol.innerHTML = "";
  for (const e of ev) {
    const li = document.createElement("li");
    const what = String(e.action || e.event || e.type || e.kind || "").replaceAll("_", " ");
    li.textContent = `${when(e.time || e.created)} · ${e.author || "someone"} · ${what}`;
    li.title = e.detail ? (typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)) : "";
    ol.appendChild(li);
  }
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
  state.expectChange = true;
  await refreshStatus();
  if (state.mode === "compare") { defaultComparison(); await loadCompare(); }
  await loadAttention();
  if (seq === decisionSeq) setStatus(text, "ok");
  focusDecisions();  // the button pressed may now be disabled: the focus stays in the bar
}

// One request per decision however often it is clicked: the buttons are disabled while it
// runs, and a retry after a lost answer repeats the same request_id (the server answers it once).
async function decide(url, body) {
  if (state.busy.has("decision")) return null;
  state.busy.add("decision");
  updateDecisionButtons();
  const send = state.caps.v2 ? { ...body, request_id: newRequestId() } : body;
  try {
    try { return await api("POST", url, send); } catch (err) {
      if (!err.offline || !state.caps.v2) throw err;
      await new Promise((r) => setTimeout(r, 1500));
      return await api("POST", url, send);  // same request_id: done at most once
    }
  } finally {
    state.busy.delete("decision");
    updateDecisionButtons();
  }
}

// Accuracy before/after with its uncertainty, and how many diagnoses changed in which direction.
function accuracyChange(d) {
  const ho = d.heldout || {};
  const acc = d.accuracy || ho.accuracy || {};
  const n = acc.n || ho.n_images;
  let ci = acc.delta_ci95;
  if (!ci && n && acc.before !== undefined) {  // Wald interval of a difference of proportions (fallback)
    const se = Math.sqrt((acc.before * (1 - acc.before) + acc.after * (1 - acc.after)) / n);
    ci = [acc.delta - 1.96 * se, acc.delta + 1.96 * se];
  }
  const dg = d.diagnoses || {};
  return { before: acc.before, after: acc.after, delta: acc.delta, ci, n, split: ho.split || state.heldout,
    w2r: dg.wrong_to_right, r2w: dg.right_to_wrong, w2w: dg.wrong_to_wrong, changed: dg.total_changed !== undefined ? dg.total_changed : ho.prediction_changes };
}

const points = (x) => `${x >= 0 ? "+" : "−"}${Math.abs(100 * x).toFixed(1)}`;

function accuracyWords(c) {
  if (c.before === undefined) return ["The accuracy could not be measured."];
  const lines = [`Right diagnoses on ${c.n} images of ${SPLIT_WORDS[c.split] || c.split} (not trained on): ${pct(c.before)} → ${pct(c.after)}, ` +
    `${c.delta >= 0 ? "up" : "down"} ${Math.abs(100 * c.delta).toFixed(1)} percentage points` +
    (c.ci ? ` (95 % range ${points(c.ci[0])} to ${points(c.ci[1])} points${c.ci[0] < 0 && c.ci[1] > 0 ? ": could be chance" : ""}).` : ".")];
  if (c.w2r !== undefined) {
    lines.push(`Diagnoses that changed: ${c.changed} — ${c.w2r} from wrong to right, ${c.r2w} from right to wrong${c.w2w ? `, ${c.w2w} from one wrong class to another` : ""}.`);
  } else if (c.changed !== undefined) lines.push(`Diagnoses that changed: ${c.changed}.`);
  return lines;
}

async function comparisonFor(before, after) {
  const d = state.diff;
  if (d && d.before_version === before && d.after_version === after && (d.heldout || {}).split === state.heldout) return d;
  return api("GET", `/api/diff?before=${before}&after=${after}&heldout=${state.heldout}`);
}

async function accept() {
  const s = state.status, c = s.candidate;
  if (!c || state.busy.has("decision") || state.busy.has("accept-dialog")) return;
  state.busy.add("accept-dialog");  // a second click while measuring or asking does nothing
  $("#accept").disabled = true;
  try { await acceptFlow(s, c); } finally {
    state.busy.delete("accept-dialog");
    updateDecisionButtons();
  }
}

async function acceptFlow(s, c) {
  setStatus(`Measuring version ${c.id} against version ${s.current.id}…`);
  const ch = accuracyChange(await comparisonFor(s.current.id, c.id));
  const falls = ch.delta < 0;
  state.acceptNote = { id: c.id, falls, text: ch.delta === undefined ? "" : `accuracy ${points(ch.delta)} pts` };
  updateDecisionButtons();
  setStatus("");
  const ok = await confirmDialog({
    title: `Accept version ${c.id}?`,
    body: [...accuracyWords(ch), `Version ${c.id} becomes the version in use, replacing version ${s.current.id}. Version ${s.current.id} stays in the history and you can revert to it later.`],
    yes: `Accept version ${c.id}`, danger: falls });
  if (!ok) { setStatus("Not accepted."); return; }
  if (falls) {  // asked twice only when the accuracy falls
    const again = await confirmDialog({
      title: "The accuracy falls: accept anyway?",
      body: [`With version ${c.id}, ${pct(ch.before)} → ${pct(ch.after)} of the diagnoses are right (${points(ch.delta)} points${ch.r2w !== undefined ? `; ${ch.r2w} right diagnoses become wrong` : ""}).`,
        "Accept it only if where the model looks matters more to you than this loss."],
      yes: `Accept version ${c.id} although accuracy falls`, danger: true });
    if (!again) { setStatus("Not accepted."); return; }
  }
  const seq = ++decisionSeq;
  const r = await decide("/api/accept", { version: c.id });
  if (!r) return;
  await decided(seq, r.already ? `Version ${r.current.id} was already in use.` : `Accepted: version ${r.current.id} is in use.`);
}

async function discard() {
  const s = state.status, c = s.candidate;
  if (!c || state.busy.has("decision")) return;
  const ok = await confirmDialog({
    title: `Discard version ${c.id}?`,
    body: [`Version ${s.current.id} stays in use. Version ${c.id} is kept in the history (you can still look at it) but can no longer be accepted.`],
    yes: `Discard version ${c.id}` });
  if (!ok) return;
  const seq = ++decisionSeq;
  const r = await decide("/api/discard", {});
  if (!r) return;
  await decided(seq, `Discarded version ${r.rolled_back.id}: version ${r.current.id} stays in use.`);
}

async function revert(target) {
  const s = state.status;
  if (target === undefined) target = s.revert_targets[0];
  if (target === undefined || state.busy.has("decision")) return;
  const undone = [];
  for (let v = versionById(s.current.id); v && v.id !== target; v = versionById(v.parent)) undone.push(`v${v.id}`);
  const pending = s.candidate ? ` and the waiting version v${s.candidate.id}` : "";
  const ok = await confirmDialog({
    title: `Revert to version ${target}?`,
    body: [`Version ${target} becomes the version in use again; ${undone.join(", ")}${pending} will be marked “rolled back” (kept in the history, still viewable). Your regions are kept.`],
    yes: `Revert to version ${target}` });
  if (!ok) return;
  const seq = ++decisionSeq;
  const r = await decide("/api/revert", { version: target });
  if (!r) return;
  const back = (r.rolled_back || []).map((v) => `v${typeof v === "object" ? v.id : v}`).join(", ");
  await decided(seq, `Reverted: version ${r.current.id} is in use again${back ? ` (rolled back: ${back})` : ""}.`);
}

// -- comparing two versions ---------------------------------------------------------------------
// The default pair: the version in use and the waiting one; else the version in use and the
// latest other version, the older one always "before".
function defaultComparison() {
  const s = state.status;
  if (s.candidate) { state.cmpBefore = s.current.id; state.cmpAfter = s.candidate.id; return; }
  const cur = s.current;
  const other = [...s.versions].reverse().find((v) => v.id !== cur.id) || cur;
  state.cmpBefore = Math.min(cur.id, other.id);
  state.cmpAfter = Math.max(cur.id, other.id);
}

function setMode(mode) {
  state.mode = mode;
  document.body.classList.toggle("comparing", mode === "compare");
  $("#mode-inspect").classList.toggle("active", mode === "inspect");
  $("#mode-compare").classList.toggle("active", mode === "compare");
  $("#mode-inspect").setAttribute("aria-pressed", String(mode === "inspect"));
  $("#mode-compare").setAttribute("aria-pressed", String(mode === "compare"));
  $$(".draw-tool").forEach((b) => {
    b.disabled = mode === "compare";  // and never look chosen while they cannot be used
    const on = mode !== "compare" && b.dataset.tool === state.tool;
    b.classList.toggle("active", on);
    b.setAttribute("aria-pressed", String(on));
  });
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
  const h = state.heldout;
  const d = await api("GET", `/api/diff?before=${b}&after=${a}&heldout=${h}`);
  if (b !== state.cmpBefore || a !== state.cmpAfter || h !== state.heldout) return;
  state.diff = d;
  renderCompareTable();
  setStatus(`Comparing version ${d.before_version} (before) with version ${d.after_version} (after), checked on ${SPLIT_WORDS[h]}`);
  const cand = state.status.candidate;
  if (cand && d.after_version === cand.id && d.before_version === state.status.current.id) {
    const c = accuracyChange(d);
    if (c.delta !== undefined) state.acceptNote = { id: cand.id, falls: c.delta < 0, text: `accuracy ${points(c.delta)} pts` };
    updateDecisionButtons();
  }
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
      const shown = asPct ? `${delta >= 0 ? "+" : "−"}${Math.abs(100 * delta).toFixed(1)} points` : `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(3)}`;
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
  const hoName = SPLIT_WORDS[ho.split] || ho.split;
  section(`On the ${fb.n_images} image${fb.n_images === 1 ? "" : "s"} with your regions`);
  if (!fb.n_images) { const tr = document.createElement("tr"); const td = document.createElement("td"); td.colSpan = 4; td.className = "muted"; td.textContent = "No regions drawn yet."; tr.appendChild(td); t.appendChild(tr); }
  add("Part of the attention inside “look here”", "Technical: share of the map's attention inside the “look here” regions, Σ M·R⁺ / Σ M", fb.include_share, +1, fb.n_images);
  add("Part of the attention inside “not here”", "Technical: Σ M·R⁻ / Σ M", fb.exclude_share, -1, fb.n_images);
  add("Attention in “look here” (0–1)", "Technical: mean of M over the “look here” pixels", fb.include_attention, +1, fb.n_images, false);
  add("Attention in “not here” (0–1)", "Technical: mean of M over the “not here” pixels", fb.exclude_attention, -1, fb.n_images, false);
  add("Part of the attention on the marker (the shortcut)", "Technical: share of attention on the confounder marked in the data, Σ M·C / Σ M", fb.confounder_share, -1, fb.n_images);
  add("Right diagnoses", "Accuracy on the images with regions", fb.accuracy, +1, fb.n_images);
  section(`On ${ho.n_images} images of ${hoName} (not trained on)`);
  add("Right diagnoses", `Accuracy on ${hoName}`, ho.accuracy, +1, ho.n_images);
  const c = accuracyChange(d);
  if (c.ci && ho.accuracy) {
    const tr = document.createElement("tr");
    tr.dataset.key = "uncertainty";
    const cells = ["How sure (95 % range of the change)", "", "", `${points(c.ci[0])} to ${points(c.ci[1])} points`];
    cells.forEach((x, i) => { const td = document.createElement("td"); td.textContent = x; if (i) td.className = "num"; tr.appendChild(td); });
    tr.firstChild.title = d.accuracy && d.accuracy.method ? `Technical: ${d.accuracy.method}` : "Technical: a 95 % interval of the difference in accuracy";
    t.appendChild(tr);
  }
  add("Part of the attention on the marker (the shortcut)", "Technical: Σ M·C / Σ M on the confounder", ho.confounder_share, -1, ho.n_images);
  add("Attention on the marker (0–1)", "Technical: mean of M over the confounder's pixels", ho.confounder_attention, -1, ho.n_images, false);
  add("Attention over the whole image (0–1)", "Technical: mean of M over all pixels", ho.attention_mean, 0, ho.n_images, false);
  const tr = document.createElement("tr");
  tr.dataset.key = "diagnoses changed";
  if (ho.n_images < MIN_MEANINGFUL) tr.classList.add("not-meaningful");
  const dirWords = c.w2r !== undefined ? `${c.w2r} wrong → right, ${c.r2w} right → wrong${c.w2w ? `, ${c.w2w} wrong → other wrong` : ""}` : "";
  const cells = ["Diagnoses that changed", "", String(c.changed), dirWords];
  cells.forEach((x, i) => { const td = document.createElement("td"); td.textContent = x; if (i) td.className = "num"; tr.appendChild(td); });
  if (c.w2r !== undefined) {
    const last = tr.lastChild, span = document.createElement("span");
    const trend = c.w2r > c.r2w ? "better" : c.w2r < c.r2w ? "worse" : "same";
    last.dataset.trend = trend;
    span.className = trend === "same" ? "" : `trend-${trend}`;
    span.textContent = dirWords;
    last.textContent = "";
    last.appendChild(span);
  }
  tr.firstChild.title = ho.changed && ho.changed.length ? `Images: ${ho.changed.slice(0, 20).map((x) => x.id).join(", ")}` : "";
  t.appendChild(tr);
  const tr2 = document.createElement("tr");
  if (ho.n_images < MIN_MEANINGFUL) tr2.classList.add("not-meaningful");
  ["How much the attention moved (0–1)", "", fmt(ho.mean_abs_attention_change, 3), ""].forEach((x, i) => { const td = document.createElement("td"); td.textContent = x; if (i) td.className = "num"; tr2.appendChild(td); });
  tr2.firstChild.title = "Technical: mean absolute change of M per pixel, mean |M_after − M_before|";
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
  open = open === undefined ? !help.open : open;
  if (open && !help.open) { state.helpReturn = document.activeElement; help.showModal(); $("#help-close").focus(); }
  else if (!open && help.open) {
    help.close();
    if (state.helpReturn && state.helpReturn.focus) state.helpReturn.focus();
  }
}

const onKey = guard(async (e) => {
  if (document.querySelector("dialog[open]")) {  // a dialog keeps the keyboard (Esc closes it)
    if (e.key === "?" && $("#help").open) { e.preventDefault(); toggleHelp(false); }
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
    if (state.kbdBox) { state.kbdBox = null; report("#canvas-message", "Region cancelled", "info"); render(); return; }
    if (state.polygon) { state.polygon = null; state.hover = null; report("#canvas-message", "Polygon cancelled", "info"); }
    else if (state.drag) state.drag = null;
    else if (state.selected !== null) selectRoi(null);
    render();
    return;
  }
  if (e.key === "Enter" && state.polygon) { e.preventDefault(); await closePolygon(); return; }
  if (e.key === "Backspace" && state.polygon) { e.preventDefault(); state.polygon.pop(); if (!state.polygon.length) state.polygon = null; render(); return; }
  if ((e.key === "Delete" || e.key === "Backspace") && state.selected !== null) { e.preventDefault(); await deleteRoi(state.selected); return; }
  if (onCanvas && (e.key.startsWith("Arrow") || e.key === "Enter") && await keyboardDraw(e, onCanvas)) return;
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
  const tools = { h: "pan", v: "select", r: "rect", e: "ellipse", p: "polygon", f: "freehand", w: "wl" };
  if (tools[key]) { setTool(tools[key]); return; }
  if (key === "l") { setKind("include"); report("#canvas-message", "New regions: “look here”", "info"); return; }
  if (key === "n") { setKind("exclude"); report("#canvas-message", "New regions: “not here”", "info"); return; }
  if (key === "k" && (state.kbdBox || state.selected === null)) {
    setKind(state.kind === "include" ? "exclude" : "include");
    report("#canvas-message", `New regions: “${KIND_WORDS[state.kind]}”`, "info");
    render();
    return;
  }
  if (key === "k" && state.selected !== null) { await switchKind(state.selected); return; }
  if (key === "d") { e.preventDefault(); focusDecisions(); return; }
  if (key === "u") { await nextUnmarked(); return; }
  if (key === "i") { state.invert = !state.invert; applyWindow(); render(); save(); return; }
  if (key === "a") {
    const order = ["heat", "outline", "both", "off"];
    setAttStyle(order[(order.indexOf(state.attStyle) + 1) % order.length]);
    report("#canvas-message", `Attention: ${$("#att-style").selectedOptions[0].textContent}`, "info");
    return;
  }
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
  $("#run-info").textContent = state.info.dataset;
  $("#about-run").textContent = `Run folder: ${state.info.run_dir}; feedback kept in ${state.info.workspace}.`;
  state.storageKey = `mimic-feedback:${state.info.run_dir}|${state.info.workspace}`;
  const saved = restore();
  if (saved) {
    for (const k of SAVED) if (saved[k] !== undefined && saved[k] !== null) state[k] = saved[k];
    fillForm(saved.form);
    $("#advanced").open = !!saved.advanced;
  }
  state.filters = { label: "", predicted: "", correct: "", has_rois: "", sort: "id", region: null, ...(state.filters || {}) };
  state.limit = [10, 25, 50, 100].includes(Number(state.limit)) ? Number(state.limit) : 50;
  state.wl = { window: Number(state.wl.window) || 255, level: Number(state.wl.level) || 128 };
  if (!LUT[state.cmap]) state.cmap = "viridis";
  if (!["heat", "outline", "both", "off"].includes(state.attStyle)) state.attStyle = "heat";
  state.heldout = $("#f-heldout").value || "val";
  $("#split").value = state.split;
  $("#opacity").value = state.opacity;
  $("#stretch").checked = !!state.stretch;
  $("#cmap").value = state.cmap;
  $("#att-style").value = state.attStyle;
  $("#threshold").value = state.threshold;
  $("#compare-heldout").value = state.heldout;
  $("#thumb-attention").checked = !!state.thumbAttention;
  $("#page-size").value = String(state.limit);
  for (const [sel, key] of [["#filter-label", "label"], ["#filter-predicted", "predicted"]]) {
    state.info.class_names.forEach((name, i) => { const o = document.createElement("option"); o.value = String(i); o.textContent = name; $(sel).appendChild(o); });
    $(sel).value = state.filters[key];
  }
  $("#filter-correct").value = state.filters.correct;
  $("#filter-rois").value = state.filters.has_rois;
  $("#sort").value = state.filters.sort;
  // The reviewer's name: asked once, kept in this browser, sent with every action.
  try { state.author = localStorage.getItem("mimic-feedback:author") || ""; } catch (e) { state.author = ""; }
  $("#reviewer").value = state.author;
  $("#reviewer-field").classList.toggle("ask", !state.author);
  $("#reviewer").addEventListener("change", () => {
    state.author = $("#reviewer").value.trim().slice(0, 100);
    try { localStorage.setItem("mimic-feedback:author", state.author); } catch (e) { /* private mode */ }
    $("#reviewer-field").classList.toggle("ask", !state.author);
    setStatus(state.author ? `Your regions and decisions are recorded as ${state.author}.` : "No reviewer name: actions are recorded without it.");
  });
  $("#reviewer").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); e.target.blur(); } });

  for (const c of $$(".canvas-row canvas")) {
    resizer.observe(c);
    c.addEventListener("pointerdown", onDown);
    c.addEventListener("pointermove", onMove);
    c.addEventListener("pointerup", onUp);
    c.addEventListener("pointercancel", onUp);
    c.addEventListener("pointerleave", () => { $("#probe").textContent = "point at the image for its values"; });
    c.addEventListener("focus", () => render());
    c.addEventListener("blur", () => render());
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
  $("#wl-window").addEventListener("input", (e) => setWindow(Number(e.target.value), state.wl.level));
  $("#wl-level").addEventListener("input", (e) => setWindow(state.wl.window, Number(e.target.value)));
  $("#wl-preset").addEventListener("change", (e) => { if (e.target.value) { const [w, l] = e.target.value.split("/").map(Number); setWindow(w, l); } });
  for (const [sel, which] of [["#wl-w", "window"], ["#wl-l", "level"]]) {
    $(sel).addEventListener("change", (e) => {
      const v = parseNumber(e.target.value);
      const [lo, hi] = which === "window" ? [8, 255] : [0, 255];
      if (v === null || v instanceof Error || v < lo || v > hi) {
        report("#wl-error", `${which === "window" ? "W" : "L"}: enter a number from ${lo} to ${hi} (a comma works as a decimal point).`);
        e.target.setAttribute("aria-invalid", "true");
        return;
      }
      report("#wl-error", "");
      e.target.setAttribute("aria-invalid", "false");
      if (which === "window") setWindow(v, state.wl.level); else setWindow(state.wl.window, v);
    });
  }
  $("#invert").addEventListener("change", (e) => { state.invert = e.target.checked; applyWindow(); render(); save(); });
  $("#wl-reset").addEventListener("click", () => { state.invert = false; setWindow(255, 128); });
  $("#att-style").addEventListener("change", (e) => setAttStyle(e.target.value));
  $("#threshold").addEventListener("change", (e) => {
    const v = parseNumber(e.target.value);
    if (v === null || v instanceof Error || v < 0 || v > 1) {
      report("#threshold-error", "Outline at: enter a number from 0 to 1, such as 0.5 or 0,5.");
      e.target.setAttribute("aria-invalid", "true");
      return;
    }
    report("#threshold-error", "");
    e.target.setAttribute("aria-invalid", "false");
    state.threshold = v;
    if (state.attStyle === "heat" || state.attStyle === "off") setAttStyle("both"); else { render(); save(); }
  });
  $("#filter-label").addEventListener("change", guard((e) => setFilter("label", e.target.value), "#list-message"));
  $("#filter-predicted").addEventListener("change", guard((e) => setFilter("predicted", e.target.value), "#list-message"));
  $("#filter-correct").addEventListener("change", guard((e) => setFilter("correct", e.target.value), "#list-message"));
  $("#filter-rois").addEventListener("change", guard((e) => setFilter("has_rois", e.target.value), "#list-message"));
  $("#sort").addEventListener("change", guard((e) => setFilter("sort", e.target.value), "#list-message"));
  $("#clear-search").addEventListener("click", guard(async () => { state.filters.region = null; await setFilter("sort", "id"); }, "#list-message"));
  $("#thumb-attention").addEventListener("change", guard(async (e) => { state.thumbAttention = e.target.checked; await loadList(); save(); }, "#list-message"));
  $("#page-size").addEventListener("change", guard(async (e) => { state.limit = Number(e.target.value); state.offset = 0; await loadList(); save(); }, "#list-message"));
  $("#next-unmarked").addEventListener("click", guard(nextUnmarked, "#list-message"));
  $("#cancel-retrain").addEventListener("click", guard(cancelRetrain));
  $("#compare-heldout").addEventListener("change", guard(async (e) => { setHeldout(e.target.value); await loadDiffTable(); }, "#canvas-message"));
  $("#f-heldout").addEventListener("change", (e) => setHeldout(e.target.value));
  $("#audit").addEventListener("toggle", () => loadEvents().catch(() => {}));
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
  $("#help").addEventListener("cancel", (e) => { e.preventDefault(); toggleHelp(false); });
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
  setTimeout(watch, POLL_MS);
}

function setAttStyle(style) {
  state.attStyle = style;
  $("#att-style").value = style;
  render();
  save();
}

function setHeldout(h) {  // the split the versions are checked on: the form's and Compare's
  state.heldout = h;
  $("#f-heldout").value = h;
  $("#compare-heldout").value = h;
  save();
}

// For tests and scripting: the state and the view transform (read-only use).
window.mimicFeedback = { state, imageToClient, refreshStatus, parseNumber };
window.addEventListener("DOMContentLoaded", guard(init));
