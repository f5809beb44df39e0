// Single view: one head's pattern drawn from the stored values, hover/pin a cell for its exact
// value, keys to step through cells, heads, layers and prompts. State lives in the URL.
import {
  FIGURES_URL, MODELS_URL, applyTheme, el, errorUrl, fetchJson, fetchJsonOptional, fetchJsonl,
  figureOutputs, imageUrl, loadColormap, modelCfgUrl, patternsUrl, promptJsonUrl, promptStatsUrl, promptsUrl,
  readState, showError, singleUrl, statsUrl, stateQuery, themeToggle, visibleToken,
} from "./common.js";
import { loadHead } from "./patterns.js";

const DEFAULTS = { model: "", prompt: "", layer: "0", head: "0", figure: "raw", q: "", k: "", shade: "row", scale: "linear" };
const LABEL_FONT = "11px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
const LABEL_MAX = 110; // px of the widest axis label; longer tokens are cut with an ellipsis
const MIN_LABEL_CELL = 11; // px: below this cell size only every k-th token gets a label
const MAX_CELL = 48;
const $ = (id) => document.getElementById(id);

const state = readState(DEFAULTS);
const view = {
  cfg: null, prompts: [], promptIndex: -1, prompt: null, figures: [], stats: null, promptStats: null,
  pattern: null, headMax: 1, image: null, colormap: null,
  cell: 0, ox: 0, oy: 0, fit: true, hover: null, pinned: null, marginLeft: 0, marginTop: 0,
};

// ---- loading ----

async function loadModel(model) {
  const [cfg, prompts, stats] = await Promise.all([
    fetchJson(modelCfgUrl(model)),
    fetchJsonl(promptsUrl(model)).catch(() => []),
    fetchJsonOptional(statsUrl(model)),
  ]);
  Object.assign(view, { cfg, prompts, stats });
}

/** The prompt's record (from prompts.jsonl, else its prompt.json), its index and its statistics. */
async function loadPrompt(model, prompt) {
  const promptIndex = view.prompts.findIndex((p) => p.hash === prompt);
  const [record, promptStats] = await Promise.all([
    promptIndex >= 0 ? view.prompts[promptIndex] : fetchJson(promptJsonUrl(model, prompt)),
    fetchJsonOptional(promptStatsUrl(model, prompt)),
  ]);
  return { promptIndex, prompt: record, promptStats };
}

function setPattern(pattern) {
  view.pattern = pattern;
  view.headMax = pattern.values.reduce((m, v) => (v > m ? v : m), 0) || 1;
  view.image = patternImage(pattern);
}

// ---- drawing the matrix ----

function colourIndex(v) {
  const t = state.scale === "sqrt" ? Math.sqrt(v) : state.scale === "max" ? v / view.headMax : v;
  return Math.max(0, Math.min(255, Math.round(t * 255)));
}

/** The pattern as an n x n offscreen canvas, one pixel per cell; cells above the diagonal of a causal head stay transparent. */
function patternImage({ n, values, header }) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = n;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(n, n);
  const cmap = view.colormap;
  for (let q = 0; q < n; q++) {
    const end = header.layout === "tril" ? q + 1 : n;
    for (let k = 0; k < end; k++) {
      const c = cmap[colourIndex(values[q * n + k])], o = 4 * (q * n + k);
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

function labelText(ctx, token) {
  let text = visibleToken(token);
  if (ctx.measureText(text).width <= LABEL_MAX) return text;
  while (text.length > 1 && ctx.measureText(text + "\u2026").width > LABEL_MAX) text = text.slice(0, -1);
  return text + "\u2026";
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** Size the canvas to its box, compute margins for the labels, and (when fitting) the cell size. */
function layout() {
  const canvas = $("matrix"), box = $("matrix-wrap").getBoundingClientRect();
  const ctx = canvas.getContext("2d");
  ctx.font = LABEL_FONT;
  const widest = Math.min(LABEL_MAX, Math.max(...view.prompt.tokens.map((t) => ctx.measureText(visibleToken(t)).width)));
  view.marginLeft = view.marginTop = Math.ceil(widest) + 12;
  const size = Math.max(200, Math.floor(Math.min(box.width, window.innerHeight - box.top - 12)));
  const dpr = window.devicePixelRatio || 1;
  canvas.style.width = canvas.style.height = `${size}px`;
  canvas.width = canvas.height = Math.round(size * dpr);
  view.size = size;
  const n = view.pattern.n, fitCell = (size - view.marginLeft) / n;
  view.fitCell = fitCell;
  if (view.fit || view.cell < fitCell) Object.assign(view, { cell: fitCell, ox: 0, oy: 0, fit: true });
  clampOffset();
}

function visibleCells() {
  return (view.size - view.marginLeft) / view.cell;
}

function clampOffset() {
  const max = Math.max(0, view.pattern.n - visibleCells());
  view.ox = Math.max(0, Math.min(max, view.ox));
  view.oy = Math.max(0, Math.min(max, view.oy));
}

function draw() {
  const canvas = $("matrix"), ctx = canvas.getContext("2d");
  const dpr = canvas.width / view.size, { n } = view.pattern, cs = view.cell;
  const ml = view.marginLeft, mt = view.marginTop, span = visibleCells();
  Object.assign(canvas.dataset, { marginLeft: ml, marginTop: mt, cell: cs, ox: view.ox, oy: view.oy });
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, view.size, view.size);
  ctx.fillStyle = cssVar("--placeholder");
  ctx.fillRect(ml, mt, Math.min(span, n) * cs, Math.min(span, n) * cs);
  ctx.imageSmoothingEnabled = false;
  const w = Math.min(span, n - view.ox), h = Math.min(span, n - view.oy);
  ctx.drawImage(view.image, view.ox, view.oy, w, h, ml, mt, w * cs, h * cs);
  drawLabels(ctx, span);
  drawCrosshair(ctx);
}

function drawLabels(ctx, span) {
  const { tokens } = view.prompt, cs = view.cell, ml = view.marginLeft, mt = view.marginTop;
  const step = Math.ceil(MIN_LABEL_CELL / cs), cell = active();
  const first = Math.floor(view.oy), last = Math.min(tokens.length, Math.ceil(view.oy + span));
  ctx.font = LABEL_FONT;
  ctx.textBaseline = "middle";
  const fg = cssVar("--fg"), accent = cssVar("--accent"), muted = cssVar("--muted");
  const shown = (i, hot) => hot || i % step === 0;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, mt, view.size, view.size - mt);
  ctx.clip();
  ctx.textAlign = "right";
  for (let i = first; i < last; i++) {
    const hot = cell && cell.q === i;
    if (!shown(i, hot)) continue;
    ctx.fillStyle = hot ? accent : step > 1 ? muted : fg;
    ctx.fillText(labelText(ctx, tokens[i]), ml - 4, mt + (i - view.oy + 0.5) * cs);
  }
  ctx.restore();
  ctx.save();
  ctx.beginPath();
  ctx.rect(ml, 0, view.size - ml, mt);
  ctx.clip();
  const firstK = Math.floor(view.ox), lastK = Math.min(tokens.length, Math.ceil(view.ox + span));
  ctx.textAlign = "left";
  for (let i = firstK; i < lastK; i++) {
    const hot = cell && cell.k === i;
    if (!shown(i, hot)) continue;
    ctx.save();
    ctx.translate(ml + (i - view.ox + 0.5) * cs, mt - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.fillStyle = hot ? accent : step > 1 ? muted : fg;
    ctx.fillText(labelText(ctx, tokens[i]), 0, 0);
    ctx.restore();
  }
  ctx.restore();
}

function drawCrosshair(ctx) {
  const cell = active();
  if (!cell) return;
  const cs = view.cell, ml = view.marginLeft, mt = view.marginTop, span = visibleCells();
  const x = ml + (cell.k - view.ox) * cs, y = mt + (cell.q - view.oy) * cs;
  const width = Math.min(span, view.pattern.n) * cs;
  ctx.save();
  ctx.beginPath();
  ctx.rect(ml, mt, width, width);
  ctx.clip();
  ctx.fillStyle = "rgba(255, 255, 255, 0.16)";
  ctx.fillRect(ml, y, width, cs);
  ctx.fillRect(x, mt, cs, width);
  ctx.restore();
  ctx.lineWidth = 2;
  ctx.strokeStyle = view.pinned ? "#ff3b6b" : "#ffffff";
  ctx.strokeRect(x - 1, y - 1, cs + 2, cs + 2);
  ctx.fillStyle = cssVar("--accent");
  ctx.fillRect(ml - 3, y, 3, cs);
  ctx.fillRect(x, mt - 3, cs, 3);
}

// ---- the cell under the mouse or pinned ----

function active() {
  return view.hover || view.pinned;
}

function cellAt(event) {
  const r = $("matrix").getBoundingClientRect();
  const x = event.clientX - r.left - view.marginLeft, y = event.clientY - r.top - view.marginTop;
  if (x < 0 || y < 0) return null;
  const k = Math.floor(view.ox + x / view.cell), q = Math.floor(view.oy + y / view.cell);
  return q < view.pattern.n && k < view.pattern.n ? { q, k } : null;
}

/** Display text of a value: what the hover test compares with lens.Patterns(...).head(l, h)[q, k]. */
const formatValue = (v) => v.toFixed(5);

function showCell() {
  const cell = active(), { tokens } = view.prompt;
  $("pinned").textContent = view.pinned ? `pinned at q${view.pinned.q} k${view.pinned.k} (Esc unpins)` : "";
  if (!cell) {
    for (const id of ["cell-q", "cell-k", "cell-value", "cell-note"]) $(id).textContent = "";
    $("cell-value").textContent = "hover over the pattern";
    shadeText(null);
    return;
  }
  const { n, values, header } = view.pattern, v = values[cell.q * n + cell.k];
  $("cell-q").textContent = `${cell.q} ${JSON.stringify(tokens[cell.q])}`;
  $("cell-k").textContent = `${cell.k} ${JSON.stringify(tokens[cell.k])}`;
  $("cell-value").textContent = formatValue(v);
  $("cell-value").dataset.value = String(v);
  $("cell-value").dataset.q = cell.q;
  $("cell-value").dataset.k = cell.k;
  $("cell-note").textContent = header.layout === "tril" && cell.k > cell.q ? "(masked: key after query)" : "";
  shadeText(cell);
}

// ---- the prompt's text, tokens shaded by the active row's (or column's) attention ----

function buildText() {
  const box = $("prompt-text");
  box.replaceChildren(...view.prompt.tokens.map((t, i) => el("span", {
    class: "tok", dataset: { i },
    onclick: () => pin(state.shade === "row" ? { q: i, k: Math.min(i, active()?.k ?? 0) } : { q: Math.max(i, active()?.q ?? 0), k: i }),
  }, t.replace(/\n/g, "\u21b5\n"))));
}

function shadeText(cell) {
  const spans = $("prompt-text").children, { n, values } = view.pattern;
  const byRow = state.shade === "row";
  $("shade-note").textContent = cell
    ? `shaded by ${byRow ? `query ${cell.q}'s attention to each key` : `each query's attention to key ${cell.k}`} (darkest = max)`
    : "";
  const weight = (i) => (byRow ? values[cell.q * n + i] : values[i * n + cell.k]);
  let max = 0;
  if (cell) for (let i = 0; i < n; i++) max = Math.max(max, weight(i));
  for (let i = 0; i < spans.length; i++) {
    const s = spans[i];
    const w = cell && max > 0 ? weight(i) / max : 0;
    s.style.setProperty("--w", w.toFixed(3));
    s.classList.toggle("strong", w > 0.6);
    s.title = cell ? `${i}: ${formatValue(weight(i))}` : String(i);
    s.classList.toggle("query", !!cell && cell.q === i);
    s.classList.toggle("key", !!cell && cell.k === i);
  }
}

// ---- statistics of this head ----

function showStats() {
  const { stats, promptStats } = view, layer = Number(state.layer), head = Number(state.head);
  $("stats-panel").classList.toggle("hidden", !stats && !promptStats);
  const names = Object.keys(stats?.stats || promptStats || {});
  const rows = names.map((name) => {
    const mean = stats?.stats[name]?.mean;
    const here = promptStats?.[name]?.[layer]?.[head];
    const m = mean?.[layer]?.[head];
    return el("tr", { title: stats?.stats[name]?.doc || "" },
      el("td", {}, el("a", { href: `heads.html?${stateQuery({ model: state.model, stat: name })}` }, name)),
      el("td", { class: "num" }, fmtStat(here)),
      el("td", { class: "num" }, fmtStat(m)),
      el("td", { class: "num" }, mean ? rankText(mean, layer, head) : ""));
  });
  $("stats").replaceChildren(el("table", { class: "data stats-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "statistic"), el("th", {}, "this prompt"),
      el("th", {}, "mean"), el("th", {}, "rank"))),
    el("tbody", {}, rows)));
}

const fmtStat = (v) => (v === undefined || v === null || Number.isNaN(v) ? "\u2013" : Number(v).toFixed(4));

/** "3 / 144": this head's place among all heads, highest mean first. */
function rankText(mean, layer, head) {
  const mine = mean[layer][head];
  if (mine === null || Number.isNaN(mine)) return "";
  const all = mean.flat().filter((v) => v !== null && !Number.isNaN(v));
  return `${1 + all.filter((v) => v > mine).length} / ${all.length}`;
}

// ---- the rendered figure image ----

function showFigure() {
  const outputs = figureOutputs(view.figures);
  const chosen = outputs.find((o) => o.output === state.figure) || { output: state.figure, format: "svg" };
  const args = [state.model, state.prompt, Number(state.layer), Number(state.head), chosen.output];
  const box = $("figure-view");
  const img = el("img", { src: imageUrl(...args, chosen.format), alt: `${chosen.output} figure` });
  img.addEventListener("error", async () => {
    const res = await fetch(errorUrl(...args));
    box.replaceChildren(el("pre", { class: "error-text" }, res.ok ? await res.text() : `no ${chosen.output} image for this head`));
  });
  box.replaceChildren(img, chosen.figure?.doc ? el("p", { class: "muted" }, chosen.figure.doc) : "");
}

// ---- controls, URL and keys ----

function fillSelect(select, values, current, label = String) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, selected: String(v) === String(current) }, label(v))));
}

function syncControls() {
  const { cfg } = view;
  fillSelect($("layer"), [...Array(cfg.n_layers).keys()], state.layer);
  fillSelect($("head"), [...Array(cfg.n_heads).keys()], state.head);
  const outputs = figureOutputs(view.figures).map((o) => o.output);
  fillSelect($("figure"), outputs.includes(state.figure) ? outputs : [state.figure, ...outputs], state.figure);
  $("scale").value = state.scale;
  $("shade").value = state.shade;
  const i = view.promptIndex, text = view.prompt.text.replace(/\s+/g, " ");
  $("prompt-label").textContent = `${i >= 0 ? `prompt ${i + 1}/${view.prompts.length}` : state.prompt}: ${text.slice(0, 60)}${text.length > 60 ? "\u2026" : ""}`;
  $("prompt-label").title = view.prompt.text;
  $("prev-prompt").disabled = i <= 0;
  $("next-prompt").disabled = i < 0 || i >= view.prompts.length - 1;
  $("title").textContent = `${state.model} L${state.layer}H${state.head}`;
  document.title = `L${state.layer}H${state.head} ${state.model}: attention lens`;
  // the grid shows every head of this prompt, the view one usually comes from
  $("grid-link").href = `index.html?${stateQuery({ models: state.model, prompts: state.prompt, figures: state.figure })}`;
  $("heads-link").href = `heads.html?${stateQuery({ model: state.model })}`;
}

function saveUrl(push = false) {
  const cell = view.pinned;
  Object.assign(state, { q: cell ? cell.q : "", k: cell ? cell.k : "" });
  const url = `${location.pathname}?${stateQuery(state, DEFAULTS)}`;
  history[push ? "pushState" : "replaceState"](null, "", url);
}

/** (Re)load what changed and redraw: `what` is "prompt" or "head". */
let updates = 0;

async function update(what, push = true) {
  const mine = ++updates, { model, prompt } = state;
  let loaded, pattern;
  try {
    [loaded, pattern] = await Promise.all([
      what === "head" ? {} : loadPrompt(model, prompt),
      loadHead(patternsUrl(model, prompt), Number(state.layer), Number(state.head)),
    ]);
  } catch (e) {
    showError(e.message);
    return;
  }
  if (mine !== updates) return; // a newer key press is loading: only its head gets drawn
  Object.assign(view, loaded);
  setPattern(pattern);
  const n = view.pattern.n;
  if (view.pinned) view.pinned = { q: Math.min(view.pinned.q, n - 1), k: Math.min(view.pinned.k, n - 1) };
  if (what !== "head") buildText();
  syncControls();
  layout();
  draw();
  showCell();
  showStats();
  showFigure();
  saveUrl(push);
}

function pin(cell) {
  view.pinned = cell;
  view.hover = null;
  if (cell) scrollTo(cell);
  draw();
  showCell();
  if (cell) revealToken(state.shade === "row" ? cell.q : cell.k);
  saveUrl();
}

/** Scroll the prompt text box (only it, not the page) so token i is in view. */
function revealToken(i) {
  const box = $("prompt-text"), tok = box.children[i];
  if (!tok) return;
  const top = tok.offsetTop; // the box is positioned, so this is relative to it
  if (top < box.scrollTop || top + tok.offsetHeight > box.scrollTop + box.clientHeight) {
    box.scrollTop = top - box.clientHeight / 2;
  }
}

/** Pan so a cell is visible (when zoomed in). */
function scrollTo({ q, k }) {
  const span = visibleCells();
  if (k < view.ox) view.ox = k;
  if (k + 1 > view.ox + span) view.ox = k + 1 - span;
  if (q < view.oy) view.oy = q;
  if (q + 1 > view.oy + span) view.oy = q + 1 - span;
  clampOffset();
}

function zoom(factor, around = active()) {
  const span = visibleCells();
  const cq = around ? around.q + 0.5 : view.oy + span / 2, ck = around ? around.k + 0.5 : view.ox + span / 2;
  const fy = (cq - view.oy) / span, fx = (ck - view.ox) / span;
  view.cell = Math.max(view.fitCell, Math.min(MAX_CELL, factor ? view.cell * factor : view.fitCell));
  view.fit = view.cell <= view.fitCell + 1e-9;
  const newSpan = visibleCells();
  view.oy = cq - fy * newSpan;
  view.ox = ck - fx * newSpan;
  clampOffset();
  draw();
}

function stepHead(delta) {
  const { n_layers, n_heads } = view.cfg;
  const i = (Number(state.layer) * n_heads + Number(state.head) + delta + n_layers * n_heads) % (n_layers * n_heads);
  Object.assign(state, { layer: String(Math.floor(i / n_heads)), head: String(i % n_heads) });
  update("head");
}

function stepLayer(delta) {
  const n = view.cfg.n_layers;
  state.layer = String((Number(state.layer) + delta + n) % n);
  update("head");
}

function stepPrompt(delta) {
  const i = view.promptIndex + delta;
  if (i < 0 || i >= view.prompts.length) return;
  state.prompt = view.prompts[i].hash;
  update("prompt");
}

function moveCell(dq, dk) {
  const n = view.pattern.n, cell = view.pinned || view.hover || { q: n - 1, k: 0 };
  pin({ q: Math.max(0, Math.min(n - 1, cell.q + dq)), k: Math.max(0, Math.min(n - 1, cell.k + dk)) });
}

function onKey(e) {
  if (e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  const step = e.shiftKey ? 10 : 1;
  const actions = {
    ArrowUp: () => moveCell(-step, 0), ArrowDown: () => moveCell(step, 0),
    ArrowLeft: () => moveCell(0, -step), ArrowRight: () => moveCell(0, step),
    h: () => stepHead(1), H: () => stepHead(-1), l: () => stepLayer(1), L: () => stepLayer(-1),
    p: () => stepPrompt(1), P: () => stepPrompt(-1),
    r: () => setShade(state.shade === "row" ? "col" : "row"),
    "+": () => zoom(1.5), "=": () => zoom(1.5), "-": () => zoom(1 / 1.5), 0: () => zoom(0),
    Escape: () => pin(null), "?": () => $("help").classList.toggle("hidden"),
    g: () => { location.href = $("grid-link").href; },
  };
  const action = actions[e.key];
  if (!action) return;
  e.preventDefault();
  action();
}

function setShade(shade) {
  state.shade = shade;
  $("shade").value = shade;
  showCell();
  saveUrl();
}

function wire() {
  const canvas = $("matrix");
  canvas.addEventListener("mousemove", (e) => {
    const cell = cellAt(e);
    if (cell?.q === view.hover?.q && cell?.k === view.hover?.k) return;
    view.hover = cell;
    draw();
    showCell();
  });
  canvas.addEventListener("mouseleave", () => { view.hover = null; draw(); showCell(); });
  canvas.addEventListener("click", (e) => {
    const cell = cellAt(e);
    const same = cell && view.pinned && cell.q === view.pinned.q && cell.k === view.pinned.k;
    pin(same ? null : cell);
  });
  canvas.addEventListener("wheel", (e) => {
    if (!view.pattern) return;
    e.preventDefault();
    if (e.ctrlKey) return zoom(e.deltaY < 0 ? 1.25 : 0.8, cellAt(e));
    const cells = (e.deltaMode ? e.deltaY * 16 : e.deltaY) / view.cell;
    if (e.shiftKey) view.ox += cells; else { view.oy += cells; view.ox += (e.deltaMode ? e.deltaX * 16 : e.deltaX) / view.cell; }
    clampOffset();
    draw();
  }, { passive: false });
  document.addEventListener("keydown", onKey);
  $("layer").addEventListener("change", (e) => { state.layer = e.target.value; update("head"); });
  $("head").addEventListener("change", (e) => { state.head = e.target.value; update("head"); });
  $("figure").addEventListener("change", (e) => { state.figure = e.target.value; showFigure(); saveUrl(); });
  $("shade").addEventListener("change", (e) => setShade(e.target.value));
  $("scale").addEventListener("change", (e) => {
    state.scale = e.target.value;
    view.image = patternImage(view.pattern);
    draw();
    saveUrl();
  });
  $("model").addEventListener("change", (e) => { location.href = singleUrl({ ...state, model: e.target.value, prompt: "" }); });
  $("prev-prompt").addEventListener("click", () => stepPrompt(-1));
  $("next-prompt").addEventListener("click", () => stepPrompt(1));
  $("zoom-in").addEventListener("click", () => zoom(1.5));
  $("zoom-out").addEventListener("click", () => zoom(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => zoom(0));
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  window.addEventListener("resize", () => { if (view.pattern) { layout(); draw(); } });
  window.addEventListener("popstate", () => { Object.assign(state, readState(DEFAULTS)); start(); });
  const mq = window.matchMedia("(prefers-color-scheme: dark)");
  mq.addEventListener("change", () => view.pattern && draw());
}

async function start() {
  try {
    const models = await fetchJsonl(MODELS_URL).catch(() => []);
    const names = models.map((m) => m.model_dir);
    if (!state.model) state.model = names[0] || "";
    if (!state.model) throw new Error("no model given (single.html?model=...&prompt=...)");
    fillSelect($("model"), names.includes(state.model) ? names : [state.model, ...names], state.model);
    view.figures = await fetchJsonl(FIGURES_URL).catch(() => []);
    view.colormap = await loadColormap();
    await loadModel(state.model);
    if (!state.prompt) state.prompt = view.prompts[0]?.hash || "";
    if (!state.prompt) throw new Error(`${state.model}: no prompts`);
  } catch (e) {
    showError(e.message);
    return;
  }
  view.pinned = state.q !== "" && state.k !== "" ? { q: Number(state.q), k: Number(state.k) } : null;
  view.fit = true;
  await update("prompt", false);
  document.body.dataset.ready = "1";
}

applyTheme();
$("theme").append(themeToggle());
$("theme").addEventListener("click", () => setTimeout(() => view.pattern && draw(), 0));
wire();
start();
