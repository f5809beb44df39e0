// Single view: one head's pattern drawn from the stored values, hover/pin a cell for its exact
// value, keys to step through cells, heads, layers and prompts. State lives in the URL.
import {
  FIGURES_URL, MODELS_URL, errorUrl, fetchData, fetchEach, figureOutputs, imageUrl, isStored, loadColormap,
  modelCfgUrl, patternsUrl, promptJsonUrl, promptStatsUrl, promptsUrl, rankHeads, statMeans, statsUrl,
} from "./data.js";
import { $, el, fillSelect, formatNumber, showError, startPage } from "./dom.js";
import * as matrix from "./matrix.js";
import { NotStoredError, loadHead } from "./patterns.js";
import { gridUrl, headsUrl, readState, singleUrl, writeState } from "./url.js";

const state = readState("single");
const data = { models: [], figures: [], colormap: null, cfg: null, prompts: [], stats: null };
const view = {
  promptIndex: -1, prompt: null, promptStats: null, pattern: null, hover: null, pinned: null, matrix: null,
};
const weight = (v) => formatNumber(v, 5);  // an attention weight to its stored precision (3.1e-5)

// ---- load ----

async function load() {
  const [models, figures, colormap] = await fetchEach([
    fetchData(MODELS_URL, "jsonl"), fetchData(FIGURES_URL, "jsonl"), loadColormap(),
  ]);
  Object.assign(data, { models, figures, colormap });
  if (!state.model) state.model = models[0]?.model_dir ?? "";
  if (!state.model) throw new Error(`${MODELS_URL}: no models (run compute_activations.py)`);
  const [cfg, prompts, stats] = await fetchEach([
    fetchData(modelCfgUrl(state.model)), fetchData(promptsUrl(state.model), "jsonl"), fetchData(statsUrl(state.model)),
  ]);
  Object.assign(data, { cfg, prompts, stats });
  if (!state.prompt) state.prompt = prompts[0]?.hash ?? "";
  if (!state.prompt) throw new Error(`${promptsUrl(state.model)}: no prompts`);
  view.pinned = pinnedFromUrl();
  Object.assign(view, await loadPrompt());
  view.pattern = await loadPattern(view.prompt);
}

const pinnedFromUrl = () => (state.q !== "" && state.k !== "" ? { q: Number(state.q), k: Number(state.k) } : null);

/** The prompt's record (from prompts.jsonl, else its prompt.json), its place in the list and its statistics. */
async function loadPrompt() {
  const promptIndex = data.prompts.findIndex((p) => p.hash === state.prompt);
  const [prompt, promptStats] = await fetchEach([
    promptIndex >= 0 ? data.prompts[promptIndex] : fetchData(promptJsonUrl(state.model, state.prompt)),
    fetchData(promptStatsUrl(state.model, state.prompt)),
  ]);
  return { promptIndex, prompt, promptStats };
}

/** The head's pattern, or null when the prompt does not store this head. */
async function loadPattern(prompt) {
  const layer = Number(state.layer), head = Number(state.head);
  let pattern = null;
  if (isStored(prompt, data.cfg, layer, head)) {
    try {
      pattern = await loadHead(patternsUrl(state.model, state.prompt), layer, head);
    } catch (e) {
      if (!(e instanceof NotStoredError)) throw e;
    }
  }
  return pattern;
}

// ---- render ----

function render() {
  renderControls();
  renderMatrix();
  renderCell();
  renderStats();
  renderFigure();
}

/** The URL says what is shown, the pinned cell included; `push` makes it a step Back returns from. */
function saveUrl(push = false) {
  writeState("single", { ...state, q: view.pinned?.q ?? "", k: view.pinned?.k ?? "" }, push);
}

function renderControls() {
  const { cfg } = data, names = data.models.map((m) => m.model_dir);
  fillSelect($("model"), names.includes(state.model) ? names : [state.model, ...names], state.model);
  fillSelect($("layer"), [...Array(cfg.n_layers).keys()], state.layer);
  fillSelect($("head"), [...Array(cfg.n_heads).keys()], state.head);
  const outputs = figureOutputs(data.figures).map((o) => o.output);
  fillSelect($("figure"), outputs.includes(state.figure) ? outputs : [state.figure, ...outputs], state.figure);
  $("scale").value = state.scale;
  $("shade").value = state.shade;
  const i = view.promptIndex, text = view.prompt.text.replace(/\s+/g, " ");
  $("prompt-label").textContent = `${i >= 0 ? `prompt ${i + 1}/${data.prompts.length}` : state.prompt}: `
    + `${text.slice(0, 60)}${text.length > 60 ? "\u2026" : ""}`;
  $("prompt-label").title = view.prompt.text;
  $("prev-prompt").disabled = i <= 0;
  $("next-prompt").disabled = i < 0 || i >= data.prompts.length - 1;
  $("title").textContent = `${state.model} L${state.layer}H${state.head}`;
  document.title = `L${state.layer}H${state.head} ${state.model}: attention lens`;
  // the grid shows every head of this prompt, the view one usually comes from
  $("grid-link").href = gridUrl({ model: state.model, prompts: [state.prompt], figures: state.figure });
  $("heads-link").href = headsUrl({ model: state.model });
}

function renderMatrix() {
  const m = view.matrix;
  matrix.setPattern(m, view.pattern, view.prompt.tokens, data.colormap, state.scale);
  const box = $("matrix-wrap").getBoundingClientRect();
  matrix.layout(m, Math.max(200, Math.floor(Math.min(box.width, window.innerHeight - box.top - 12))));
  redraw();
  $("not-stored").classList.toggle("hidden", !!view.pattern);
  $("not-stored").textContent = view.pattern ? ""
    : `L${state.layer}H${state.head} is not stored for this prompt (it stores ${view.prompt.heads ?? "other heads"}); `
      + "h / l / p move on";
}

const active = () => view.hover || view.pinned;
const redraw = () => matrix.draw(view.matrix, active(), !!view.pinned);

function renderCell() {
  const cell = active(), { tokens } = view.prompt;
  $("pinned").textContent = view.pinned ? `pinned at q${view.pinned.q} k${view.pinned.k} (Esc unpins)` : "";
  for (const id of ["cell-q", "cell-k", "cell-value", "cell-note"]) $(id).textContent = "";
  delete $("cell-value").dataset.value;
  if (!cell) {
    $("cell-value").textContent = view.pattern ? "hover over the pattern" : "not stored";
    shadeText(null);
    return;
  }
  $("cell-q").textContent = `${cell.q} ${JSON.stringify(tokens[cell.q])}`;
  $("cell-k").textContent = `${cell.k} ${JSON.stringify(tokens[cell.k])}`;
  Object.assign($("cell-value").dataset, { q: cell.q, k: cell.k });
  if (!view.pattern) {
    $("cell-value").textContent = "not stored";
    shadeText(null);
    return;
  }
  const { n, values, header } = view.pattern, v = values[cell.q * n + cell.k];
  $("cell-value").textContent = weight(v);
  $("cell-value").dataset.value = String(v);
  $("cell-note").textContent = header.layout === "tril" && cell.k > cell.q ? "(masked: key after query)" : "";
  shadeText(cell);
}

// ---- the prompt's text, tokens shaded by the active row's (or column's) attention ----

function renderText() {
  $("prompt-text").replaceChildren(...view.prompt.tokens.map((t, i) => el("span", {
    class: "tok", dataset: { i },
    onclick: () => pin(state.shade === "row" ? { q: i, k: Math.min(i, active()?.k ?? 0) } : { q: Math.max(i, active()?.q ?? 0), k: i }),
  }, t.replace(/\n/g, "\u21b5\n"))));
}

function shadeText(cell) {
  const spans = $("prompt-text").children, byRow = state.shade === "row";
  const on = cell && view.pattern;
  $("shade-note").textContent = on
    ? `shaded by ${byRow ? `query ${cell.q}'s attention to each key` : `each query's attention to key ${cell.k}`} (darkest = max)`
    : "";
  const { n, values } = view.pattern ?? {};
  const at = (i) => (byRow ? values[cell.q * n + i] : values[i * n + cell.k]);
  let max = 0;
  if (on) for (let i = 0; i < n; i++) max = Math.max(max, at(i));
  for (let i = 0; i < spans.length; i++) {
    const w = on && max > 0 ? at(i) / max : 0;
    spans[i].style.setProperty("--w", w.toFixed(3));
    spans[i].classList.toggle("is-strong", w > 0.6);
    spans[i].title = on ? `${i}: ${weight(at(i))}` : String(i);
    spans[i].classList.toggle("is-query", !!cell && cell.q === i);
    spans[i].classList.toggle("is-key", !!cell && cell.k === i);
  }
}

// ---- statistics of this head ----

function renderStats() {
  const { stats } = data, { promptStats } = view, layer = Number(state.layer), head = Number(state.head);
  $("stats-panel").classList.toggle("hidden", !stats && !promptStats);
  const rows = Object.keys(stats?.stats || promptStats || {}).map((name) => {
    const ranked = stats?.stats[name] ? rankHeads(statMeans(stats, name)) : [];
    const mine = ranked.find((h) => h.layer === layer && h.head === head);
    return el("tr", { title: stats?.stats[name]?.doc || "" },
      el("td", {}, el("a", { href: headsUrl({ model: state.model, stat: name }) }, name)),
      el("td", { class: "num" }, formatNumber(promptStats?.[name]?.[layer]?.[head])),
      el("td", { class: "num" }, formatNumber(mine?.value)),
      el("td", { class: "num" }, mine ? `${mine.rank} / ${ranked.length}` : ""));
  });
  $("stats").replaceChildren(el("table", { class: "data stats-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "statistic"), el("th", {}, "this prompt"),
      el("th", {}, "mean"), el("th", {}, "rank"))),
    el("tbody", {}, rows)));
}

// ---- the rendered figure image ----

function renderFigure() {
  const box = $("figure-view");
  if (!view.pattern) {
    box.replaceChildren(el("p", { class: "not-stored" }, "not stored"));
    return;
  }
  const outputs = figureOutputs(data.figures);
  const chosen = outputs.find((o) => o.output === state.figure) || { output: state.figure, format: "svg" };
  const args = [state.model, state.prompt, Number(state.layer), Number(state.head), chosen.output];
  const img = el("img", { src: imageUrl(...args, chosen.format), alt: `${chosen.output} figure` });
  img.addEventListener("error", () => showMissingFigure(img, chosen.output, args).catch(showError));
  box.replaceChildren(img, chosen.figure?.doc ? el("p", { class: "muted" }, chosen.figure.doc) : "");
}

/** A failed figure shows its error text; an image never rendered says so (unless another head is shown by then). */
async function showMissingFigure(img, output, args) {
  const text = await fetchData(errorUrl(...args), "text");
  if (!img.isConnected) return;
  img.parentElement.replaceChildren(text === null ? el("p", { class: "no-image" }, `no ${output} image for this head`)
    : el("pre", { class: "figure-error" }, text));
}

// ---- moving: cells, heads, layers, prompts ----

let updates = 0;

/** Load what a key or control changed (the prompt when `prompt`, else only the head), then render. */
async function update(prompt = false, push = true) {
  const mine = ++updates;
  let loaded, pattern;
  try {
    loaded = prompt ? await loadPrompt() : { prompt: view.prompt };
    pattern = await loadPattern(loaded.prompt);
  } catch (e) {
    showError(e);
    return;
  }
  if (mine !== updates) return;  // a newer key press is loading: only its head gets drawn
  Object.assign(view, loaded, { pattern });
  const n = view.prompt.tokens.length;
  if (view.pinned) view.pinned = { q: Math.min(view.pinned.q, n - 1), k: Math.min(view.pinned.k, n - 1) };
  if (prompt) renderText();
  render();
  saveUrl(push);
}

function pin(cell) {
  view.pinned = cell;
  view.hover = null;
  if (cell) matrix.scrollTo(view.matrix, cell);
  redraw();
  renderCell();
  if (cell) revealToken(state.shade === "row" ? cell.q : cell.k);
  saveUrl();
}

/** Scroll the prompt text box (only it, not the page) so token i is in view. */
function revealToken(i) {
  const box = $("prompt-text"), tok = box.children[i];
  if (!tok) return;
  const top = tok.offsetTop;  // the box is positioned, so this is relative to it
  if (top < box.scrollTop || top + tok.offsetHeight > box.scrollTop + box.clientHeight) {
    box.scrollTop = top - box.clientHeight / 2;
  }
}

function zoom(factor, around = active()) {
  matrix.zoom(view.matrix, factor, around);
  redraw();
}

function stepHead(delta) {
  const { n_layers, n_heads } = data.cfg, all = n_layers * n_heads;
  const i = (Number(state.layer) * n_heads + Number(state.head) + delta + all) % all;
  Object.assign(state, { layer: String(Math.floor(i / n_heads)), head: String(i % n_heads) });
  update();
}

function stepLayer(delta) {
  const n = data.cfg.n_layers;
  state.layer = String((Number(state.layer) + delta + n) % n);
  update();
}

function stepPrompt(delta) {
  const i = view.promptIndex + delta;
  if (i < 0 || i >= data.prompts.length) return;
  state.prompt = data.prompts[i].hash;
  update(true);
}

function moveCell(dq, dk) {
  const n = view.prompt.tokens.length, cell = active() || { q: n - 1, k: 0 };
  pin({ q: Math.max(0, Math.min(n - 1, cell.q + dq)), k: Math.max(0, Math.min(n - 1, cell.k + dk)) });
}

function setShade(shade) {
  state.shade = shade;
  $("shade").value = shade;
  renderCell();
  saveUrl();
}

// ---- wire ----

function onKey(e) {
  if (!view.prompt || e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
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
  if (!actions[e.key]) return;
  e.preventDefault();
  actions[e.key]();
}

function wireCanvas(canvas) {
  canvas.addEventListener("mousemove", (e) => {
    if (!view.prompt) return;
    const cell = matrix.cellAt(view.matrix, e);
    if (cell?.q === view.hover?.q && cell?.k === view.hover?.k) return;
    view.hover = cell;
    redraw();
    renderCell();
  });
  canvas.addEventListener("mouseleave", () => {
    if (!view.prompt) return;
    view.hover = null;
    redraw();
    renderCell();
  });
  canvas.addEventListener("click", (e) => {
    if (!view.prompt) return;
    const cell = matrix.cellAt(view.matrix, e), p = view.pinned;
    pin(cell && p && cell.q === p.q && cell.k === p.k ? null : cell);
  });
  canvas.addEventListener("wheel", (e) => {
    if (!view.prompt) return;
    e.preventDefault();
    if (e.ctrlKey) return zoom(e.deltaY < 0 ? 1.25 : 0.8, matrix.cellAt(view.matrix, e));
    const px = (d) => (e.deltaMode ? d * 16 : d) / view.matrix.cell;  // lines -> px -> cells
    if (e.shiftKey) matrix.pan(view.matrix, px(e.deltaY), 0);
    else matrix.pan(view.matrix, px(e.deltaX), px(e.deltaY));
    redraw();
  }, { passive: false });
}

function wire() {
  view.matrix = matrix.createMatrix($("matrix"));
  wireCanvas($("matrix"));
  document.addEventListener("keydown", onKey);
  $("layer").addEventListener("change", (e) => { state.layer = e.target.value; update(); });
  $("head").addEventListener("change", (e) => { state.head = e.target.value; update(); });
  $("figure").addEventListener("change", (e) => { state.figure = e.target.value; renderControls(); renderFigure(); saveUrl(); });
  $("shade").addEventListener("change", (e) => setShade(e.target.value));
  $("scale").addEventListener("change", (e) => { state.scale = e.target.value; renderMatrix(); saveUrl(); });
  $("model").addEventListener("change", (e) => { location.href = singleUrl({ ...state, model: e.target.value, prompt: "" }); });
  $("prev-prompt").addEventListener("click", () => stepPrompt(-1));
  $("next-prompt").addEventListener("click", () => stepPrompt(1));
  $("zoom-in").addEventListener("click", () => zoom(1.5));
  $("zoom-out").addEventListener("click", () => zoom(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => zoom(0));
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  window.addEventListener("resize", () => view.prompt && renderMatrix());
  window.addEventListener("popstate", () => {
    Object.assign(state, readState("single"));
    view.pinned = pinnedFromUrl();
    update(true, false);
  });
  document.addEventListener("themechange", () => view.prompt && redraw());
}

startPage({
  load,
  render: () => {
    renderText();
    render();
    saveUrl();
  },
  wire,
});
