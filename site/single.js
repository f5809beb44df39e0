// Single view: one head's pattern drawn from the stored values, hover/pin a cell for its exact
// value, keys to step through cells, heads, layers and prompts. State lives in the URL.
import {
  FIGURES_URL, MODELS_URL, fetchData, fetchEach, figureOutputs, headKey, isStored, loadColormap, loadFigureError,
  loadFigureImage, loadValueNorms, modelCfgUrl, openPromptIndex, patternsUrl, promptIndexUrl, promptJsonUrl,
  promptStatsUrl, range, rankHeads, statMeans, statsUrl,
} from "./data.js";
import { $, cssColor, el, fillSelect, formatNumber, notForPage, promptLabel, renderLegend, showError, startPage } from "./dom.js";
import { download, figureScene, pngAsSvg, scenePng, sceneSvg } from "./export.js";
import { headKindsPanel, loadHeadKinds } from "./kinds.js";
import * as matrix from "./matrix.js";
import { NotStoredError, loadHead } from "./patterns.js";
import { changeState, go, gridUrl, headPageUrl, headsUrl, latest, pageUrl, readState, singleUrl, writeState } from "./url.js";

const state = readState("single");
const data = {
  models: [], figures: [], colormap: null, diverging: null, cfg: null, index: null, stats: null,
  byModel: new Map(),  // model dir -> promise of {cfg, index}: its config and prompt index
};
const view = {
  stored: [], place: -1,  // the rows of the prompts with stored patterns, the shown prompt's place among them
  prompt: null, promptStats: null, hover: null, pinned: null,
  a: null, b: null, diff: null,  // the shown patterns (loadSide), B only when comparing, diff = A - B
  matrices: null,                // {a, b, d}: matrix.js views of the three canvases
};
const VW = ["", "raw", "row"];
const B_CHOICES = 100;  // prompts B's prompt menu offers, around B's prompt
const weight = (v) => formatNumber(v, 5);  // an attention weight to its stored precision (3.1e-5)

// ---- load ----

async function load() {
  const [models, figures, colormap, diverging] = await fetchEach([
    fetchData(MODELS_URL, "jsonl"), fetchData(FIGURES_URL, "jsonl"), loadColormap(), loadColormap("RdBu"),
  ]);
  Object.assign(data, { models, figures, colormap, diverging });
  if (!state.model) state.model = models[0]?.model_dir ?? "";
  if (!state.model) throw new Error(`${MODELS_URL}: no models (run compute_activations.py)`);
  const [{ cfg, index }, stats] = await fetchEach([modelData(state.model), fetchData(statsUrl(state.model))]);
  Object.assign(data, { cfg, index, stats });
  if (!state.prompt) state.prompt = (await index.at((await index.storedRows()).slice(0, 1)))[0]?.hash ?? "";
  if (!state.prompt) throw new Error(`${promptIndexUrl(state.model)}: no prompt with stored patterns`);
  view.pinned = pinnedFromUrl();
  Object.assign(view, await loadPrompt());
  Object.assign(view, await loadSides(view.prompt));
}

const pinnedFromUrl = () => (state.q !== "" && state.k !== "" ? { q: Number(state.q), k: Number(state.k) } : null);

/** A model's config and prompt index, fetched once (B may be another model). */
function modelData(model) {
  if (!data.byModel.has(model)) {
    data.byModel.set(model, fetchEach([fetchData(modelCfgUrl(model)), openPromptIndex(model)])
      .then(([cfg, index]) => ({ cfg, index })));
  }
  return data.byModel.get(model);
}

/** A prompt's prompt.json (its whole text and its tokens); a prompt with statistics only has none: said so. */
async function promptJson(model, index, hash) {
  if ((await index.find(hash))?.record.stored === false) {
    throw new Error(`${model}: prompt ${hash} has statistics only, no stored patterns `
      + "(compute_activations.py --top K stores the patterns of each head's top prompts)");
  }
  return fetchData(promptJsonUrl(model, hash));
}

/** The prompt's prompt.json, its place among the stored prompts and its statistics. */
async function loadPrompt() {
  const [found, stored, prompt, promptStats] = await fetchEach([
    data.index.find(state.prompt), data.index.storedRows(),
    promptJson(state.model, data.index, state.prompt),
    data.index.find(state.prompt).then(() => fetchData(promptStatsUrl(state.model, state.prompt))),  // after its row
  ]);
  return { stored, place: found ? stored.indexOf(found.row) : -1, prompt, promptStats };
}

/** Pattern A (the URL's model, prompt, layer, head) and, when one is pinned, pattern B. */
async function loadSides(prompt) {
  const a = loadSide(state.model, data.cfg, prompt, Number(state.layer), Number(state.head));
  const b = state.bmodel ? loadB() : null;
  return { a: await a, b: await b };
}

async function loadB() {
  const { cfg, index } = await modelData(state.bmodel);
  const prompt = await promptJson(state.bmodel, index, state.bprompt);
  return loadSide(state.bmodel, cfg, prompt, Number(state.blayer), Number(state.bhead));
}

/** One pattern as the page shows it: {model, cfg, prompt, layer, head, attention (stored values), norms,
 * shown (what is drawn: attention or value-weighted), problem (why nothing is drawn)}. */
async function loadSide(model, cfg, prompt, layer, head) {
  const side = { model, cfg, prompt, layer, head, attention: null, norms: null, shown: null, problem: null };
  if (!(layer >= 0 && layer < cfg.n_layers && head >= 0 && head < cfg.n_heads)) {
    side.problem = `${model} has no head ${headKey(layer, head)}: it has ${cfg.n_layers} layers x ${cfg.n_heads} heads`;
    return side;
  }
  side.attention = await loadPattern(model, cfg, prompt, layer, head);
  if (!side.attention) {
    side.problem = `${headKey(layer, head)} is not stored for this prompt (it stores ${prompt.heads ?? "other heads"}); `
      + "h / l / p move on";
    return side;
  }
  if (state.vw) {
    side.norms = await loadValueNorms(model, prompt.hash, layer, head, cfg.n_heads, side.attention.n);
    if (!side.norms || side.norms.some(Number.isNaN)) {
      side.problem = "no value norms stored (recompute with compute_activations.py)";
      return side;
    }
  }
  side.shown = state.vw ? matrix.valueWeighted(side.attention, side.norms, state.vw === "row") : side.attention;
  return side;
}

/** The head's stored pattern, or null when the prompt does not store this head. */
async function loadPattern(model, cfg, prompt, layer, head) {
  if (!isStored(prompt, cfg, layer, head)) return null;
  try {
    return await loadHead(patternsUrl(model, prompt.hash), layer, head);
  } catch (e) {
    if (!(e instanceof NotStoredError)) throw e;
    return null;
  }
}

/** A - B on the same cells, or {problem} when they cannot be compared. */
function compareSides(a, b) {
  if (!a.shown || !b.shown) return { problem: `A \u2212 B needs both patterns: ${(a.shown ? b : a).problem}` };
  const na = a.shown.n, nb = b.shown.n;
  if (na !== nb) {
    return { problem: `cannot compare: A has ${na} tokens, B has ${nb}; pin a B on a prompt of ${na} tokens `
      + "(the same prompt, or another of the same length)" };
  }
  return { shown: matrix.difference(a.shown, b.shown), problem: null };
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

const setState = (patch, ...renders) => changeState(state, patch, renders, saveUrl).catch(showError);

/** "prompt i/n" among the stored prompts, else its hash. */
const promptNumber = () => (view.place >= 0 ? `prompt ${view.place + 1}/${view.stored.length}` : state.prompt);

const promptTitle = () => `${promptNumber()}: ${promptLabel(view.prompt.text, 60)}`;

function renderControls() {
  const { cfg } = data, names = data.models.map((m) => m.model_dir);
  fillSelect($("model"), names.includes(state.model) ? names : [state.model, ...names], state.model);
  fillSelect($("layer"), range(cfg.n_layers), state.layer);
  fillSelect($("head"), range(cfg.n_heads), state.head);
  const outputs = figureOutputs(data.figures).map((o) => o.output);
  fillSelect($("figure"), outputs.includes(state.figure) ? outputs : [state.figure, ...outputs], state.figure);
  for (const id of ["scale", "shade", "vw"]) $(id).value = state[id];
  const i = view.place;
  $("prompt-label").textContent = promptTitle();
  $("prompt-label").title = view.prompt.text;
  $("prev-prompt").disabled = i <= 0;
  $("next-prompt").disabled = i < 0 || i >= view.stored.length - 1;
  $("title").textContent = `${state.model} ${headKey(state.layer, state.head)}`;
  document.title = `${headKey(state.layer, state.head)} ${state.model}: attention lens`;
  // the grid shows every head of this prompt, the view one usually comes from
  $("grid-link").href = gridUrl({ model: state.model, prompts: [state.prompt], figures: state.figure });
  $("heads-link").href = headsUrl({ model: state.model });
  $("head-link").href = headPageUrl({ model: state.model, layer: state.layer, head: state.head });
  renderBControls();
}

function renderBControls() {
  const b = view.b;
  $("b-bar").classList.toggle("hidden", !b);
  $("compare").textContent = b ? "compare: unpin B" : "compare: pin as B";
  if (!b) return;
  const names = data.models.map((m) => m.model_dir), n = view.a.attention?.n ?? view.prompt.tokens.length;
  fillSelect($("b-model"), names.includes(b.model) ? names : [b.model, ...names], b.model);
  modelData(b.model).then(({ index }) => bChoices(index, b.prompt.hash)).then((prompts) => {
    const hashes = prompts.map((p) => p.hash);
    fillSelect($("b-prompt"), hashes.includes(b.prompt.hash) ? hashes : [b.prompt.hash, ...hashes], b.prompt.hash,
      (hash) => {
        const p = prompts.find((r) => r.hash === hash) ?? b.prompt;
        return `${p.n_tokens} tok${p.n_tokens === n ? "" : " \u2260"}: ${promptLabel(p.text, 40)}`;
      });
  }).catch(showError);
  fillSelect($("b-layer"), range(b.cfg.n_layers), state.blayer);
  fillSelect($("b-head"), range(b.cfg.n_heads), state.bhead);
  const same = b.prompt.tokens.length === view.prompt.tokens.length
    && b.prompt.tokens.every((t, j) => t === view.prompt.tokens[j]);
  $("b-note").textContent = same ? "same tokens as A" : "B's tokens differ from A's: cells are compared by position";
}

/** B's prompt menu: up to B_CHOICES stored prompts of B's model, around B's prompt (index rows). */
async function bChoices(index, hash) {
  const [stored, found] = await Promise.all([index.storedRows(), index.find(hash)]);
  const at = Math.max(0, stored.findIndex((r) => r >= (found?.row ?? 0)));
  const start = Math.max(0, Math.min(at - B_CHOICES / 2, stored.length - B_CHOICES));
  return index.at(stored.slice(start, start + B_CHOICES));
}

/** The panels drawn: A alone, or A, B and A - B; each {id, matrix, side}. */
function panels() {
  const a = { id: "a", matrix: view.matrices.a, side: view.a };
  if (!view.b) return [a];
  return [a, { id: "b", matrix: view.matrices.b, side: view.b }, { id: "d", matrix: view.matrices.d, side: view.diff }];
}

/** The colour scales: A and B share one so their colours compare; A - B is diverging, centred on 0. */
function colourScales() {
  const unit = state.vw !== "raw";
  const shown = [view.a, view.b].filter((s) => s?.shown).map((s) => s.shown.values);
  const scales = { a: matrix.colourScale(shown, state.scale, { unit }) };
  scales.b = scales.a;
  if (view.diff?.shown) scales.d = matrix.colourScale([view.diff.shown.values], state.scale, { unit, diverging: true });
  return scales;
}

function renderMatrix() {
  view.diff = view.b ? compareSides(view.a, view.b) : null;
  const shown = panels(), scales = colourScales();
  view.scales = scales;
  $("matrix-wrap").classList.toggle("compare", shown.length > 1);
  $("matrix-wrap").parentElement.classList.toggle("comparing", shown.length > 1);
  const box = $("matrix-wrap").getBoundingClientRect(), gap = 10;
  const width = (box.width - gap * (shown.length - 1)) / shown.length;
  const size = Math.max(200, Math.floor(Math.min(width, window.innerHeight - box.top - 12 - (shown.length > 1 ? 50 : 24))));
  for (const { id, matrix: m, side } of shown) {
    const tokens = id === "b" ? side.prompt.tokens : view.prompt.tokens;
    const colormap = id === "d" ? data.diverging : data.colormap;
    matrix.setPattern(m, side.shown, side.shown ? tokens.slice(0, side.shown.n) : tokens, colormap, scales[id]);
    matrix.layout(m, size);
    const note = $(id === "a" ? "not-stored" : `not-stored-${id}`);
    note.classList.toggle("hidden", !side.problem);
    note.textContent = side.problem ?? "";
    $(`caption-${id}`).textContent = caption(id, side);
    const scale = side.shown && scales[id];
    renderLegend($(`legend-${id}`), scale?.lo, scale?.hi, colormap, { suffix: scale?.scale === "sqrt" ? " (sqrt)" : "" });
  }
  redraw();
}

function caption(id, side) {
  if (id === "d") return "A \u2212 B";
  const what = state.vw === "raw" ? "\u03b1\u00b7\u2016v W_O\u2016" : state.vw === "row" ? "\u03b1\u00b7\u2016v W_O\u2016, rows sum to 1" : "";
  return `${id.toUpperCase()}: ${side.model} ${headKey(side.layer, side.head)} \u00b7 `
    + `${id === "a" ? promptNumber() : side.prompt.hash.slice(0, 10)} `
    + `(${side.prompt.tokens.length} tokens)${what ? ` \u00b7 ${what}` : ""}`;
}

const active = () => view.hover || view.pinned;
const redraw = () => {
  for (const { matrix: m } of panels()) matrix.draw(m, active(), !!view.pinned);
};

/** Show a value with its exact float in data-value ("" and no data-value when there is none). */
function showValue(id, values, n, cell) {
  const node = $(id);
  delete node.dataset.value;
  if (!values || cell.q >= n || cell.k >= n) {
    node.textContent = "\u2013";
    return;
  }
  const v = values[cell.q * n + cell.k];
  node.textContent = weight(v);
  node.dataset.value = String(v);
}

function renderCell() {
  const cell = active(), { tokens } = view.prompt, { a, b } = view;
  $("pinned").textContent = view.pinned ? `pinned at q${view.pinned.q} k${view.pinned.k} (Esc unpins)` : "";
  $("cell-label").textContent = state.vw ? (state.vw === "row" ? "value-weighted (row sums to 1)" : "value-weighted") : "attention";
  $("cell-vw").classList.toggle("hidden", !state.vw);
  $("cell-cmp").classList.toggle("hidden", !b);
  for (const id of ["cell-q", "cell-k", "cell-value", "cell-note", "cell-attn", "cell-norm", "cell-b", "cell-d"]) {
    $(id).textContent = "";
    delete $(id).dataset.value;
  }
  const missing = a.attention ? "no value norms" : "not stored";
  if (!cell) {
    $("cell-value").textContent = a.shown ? "hover over the pattern" : missing;
    shadeText(null);
    return;
  }
  $("cell-q").textContent = `${cell.q} ${JSON.stringify(tokens[cell.q])}`;
  $("cell-k").textContent = `${cell.k} ${JSON.stringify(tokens[cell.k])}`;
  Object.assign($("cell-value").dataset, { q: cell.q, k: cell.k });
  if (b) {
    showValue("cell-b", b.shown?.values, b.shown?.n, cell);
    showValue("cell-d", view.diff.shown?.values, view.diff.shown?.n, cell);
  }
  if (!a.shown) {
    $("cell-value").textContent = missing;
    shadeText(null);
    return;
  }
  const { n, header } = a.shown;
  showValue("cell-value", a.shown.values, n, cell);
  if (state.vw) {
    showValue("cell-attn", a.attention.values, n, cell);
    $("cell-norm").textContent = formatNumber(a.norms[cell.k], 5);
    $("cell-norm").dataset.value = String(a.norms[cell.k]);
  }
  $("cell-note").textContent = header.layout === "tril" && cell.k > cell.q ? "(masked: key after query)" : "";
  shadeText(cell);
}

// ---- export: the shown panels as a figure ----

function exportScene() {
  const zoomed = $("export-range").value === "zoom";
  const shown = panels().filter((p) => p.side.shown);
  if (!shown.length) throw new Error("nothing to export: no pattern is shown");
  const what = state.vw === "raw" ? "value-weighted \u03b1\u00b7\u2016v W_O\u2016"
    : state.vw === "row" ? "value-weighted, rows sum to 1" : "attention";
  const text = view.prompt.text.replace(/\s+/g, " ");
  const title = `${state.model} ${headKey(state.layer, state.head)} \u00b7 ${what} \u00b7 "${promptLabel(text, 60)}"`;
  return figureScene({
    title,
    colours: { bg: cssColor("--export-bg"), fg: cssColor("--export-fg"), muted: cssColor("--export-muted"),
      placeholder: cssColor("--export-empty") },
    panels: shown.map(({ id, matrix: m, side }) => {
      const n = side.shown.n, all = { rows: [0, n], cols: [0, n] };
      return {
        caption: shown.length > 1 ? caption(id, side) : "rows: queries, columns: keys",
        shown: side.shown, tokens: m.tokens, colormap: id === "d" ? data.diverging : data.colormap,
        colour: view.scales[id], ...(zoomed ? matrix.visibleRange(m) : all),
      };
    }),
  });
}

async function exportView(scale) {
  const scene = exportScene();
  const name = `${state.model}_${headKey(state.layer, state.head)}_${state.prompt.slice(0, 8)}`
    + `${state.vw ? `_vw-${state.vw}` : ""}${view.b ? `_vs_${state.bmodel}_${headKey(state.blayer, state.bhead)}` : ""}`;
  if (!scale) download(new Blob([sceneSvg(scene)], { type: "image/svg+xml" }), `${name}.svg`);
  else download(await scenePng(scene, scale), `${name}@${scale}x.png`);
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
  const on = cell && view.a.shown;
  $("shade-note").textContent = on
    ? `shaded by ${byRow ? `query ${cell.q}'s attention to each key` : `each query's attention to key ${cell.k}`} (darkest = max)`
    : "";
  const { n, values } = view.a.shown ?? {};
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
  renderKinds(state.model, layer, head);
  $("stats-panel").classList.toggle("hidden", !stats && !promptStats);
  // stats.json's "#code" names the code that computed its values: not a statistic
  const rows = Object.keys(stats?.stats || promptStats || {}).filter((name) => !name.startsWith("#")).map((name) => {
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

const kindsShown = latest();

/** The head's kinds and similar heads (heads.json), unless another head is shown by the time it arrives. */
function renderKinds(model, layer, head) {
  const current = kindsShown();
  loadHeadKinds(model).then((info) => {
    if (!current()) return;
    $("head-kinds").replaceChildren(headKindsPanel(model, info, layer, head, state.prompt));
    $("head-kinds").dataset.head = headKey(layer, head);
  }).catch(showError);
}

// ---- the rendered figure image ----

const figureShown = latest();
let figureImageUrl = null;  // the shown image's Blob URL, revoked when another replaces it

function renderFigure() {
  showFigure(figureShown()).catch(showError);
}

function replaceFigure(...nodes) {
  if (figureImageUrl) URL.revokeObjectURL(figureImageUrl);
  figureImageUrl = null;
  $("figure-view").replaceChildren(...nodes);
}

/** The head's image, read from its figure pack, with an SVG download; a failed figure shows its error text, an
 * image never rendered says so. Nothing is shown when another head or figure was asked for meanwhile. */
async function showFigure(current) {
  if (!view.a.attention) {
    replaceFigure(el("p", { class: "not-stored" }, "not stored"));
    return;
  }
  const chosen = figureOutputs(data.figures).find((o) => o.output === state.figure) || { output: state.figure };
  const args = [state.model, state.prompt, Number(state.layer), Number(state.head)];
  const image = await loadFigureImage(...args, data.cfg.n_heads, chosen.output);
  const error = image ? null : await loadFigureError(...args, chosen.output);
  if (!current()) return;
  if (!image) {
    replaceFigure(error === null ? el("p", { class: "no-image" }, `no ${chosen.output} image for this head`)
      : el("pre", { class: "figure-error" }, error));
    return;
  }
  const url = URL.createObjectURL(image);
  const name = `${state.model}_${headKey(state.layer, state.head)}_${state.prompt.slice(0, 8)}_${chosen.output}.svg`;
  const save = async () => download(image.type === "image/png"
    ? new Blob([pngAsSvg(await image.arrayBuffer())], { type: "image/svg+xml" }) : image, name);
  replaceFigure(el("img", { src: url, alt: `${chosen.output} figure` }),
    el("p", { class: "muted" }, chosen.figure?.doc ?? "", " ", el("button", {
      type: "button", id: "figure-svg", title: "this head's image as a standalone SVG", onclick: () => save().catch(showError),
    }, "SVG")));
  figureImageUrl = url;
}

// ---- moving: cells, heads, layers, prompts ----

const updated = latest();

/** Load what a key or control changed (the prompt when `prompt`, else only the head), then render. */
async function update(prompt = false, push = true) {
  const current = updated();
  let loaded;
  try {
    loaded = prompt ? await loadPrompt() : { prompt: view.prompt };
    Object.assign(loaded, await loadSides(loaded.prompt));
  } catch (e) {
    showError(e);
    return;
  }
  if (!current()) return;  // a newer key press is loading: only its head gets drawn
  Object.assign(view, loaded);
  const n = view.prompt.tokens.length;
  if (view.pinned) view.pinned = { q: Math.min(view.pinned.q, n - 1), k: Math.min(view.pinned.k, n - 1) };
  if (prompt) renderText();
  render();
  saveUrl(push);
}

function pin(cell) {
  view.pinned = cell;
  view.hover = null;
  if (cell) for (const { matrix: m } of panels()) matrix.scrollTo(m, cell);
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
  for (const { matrix: m } of panels()) matrix.zoom(m, factor, around);
  redraw();
}

function stepHead(delta) {
  const { n_layers, n_heads } = data.cfg, all = n_layers * n_heads;
  const i = (Number(state.layer) * n_heads + Number(state.head) + delta + all) % all;
  setState({ layer: String(Math.floor(i / n_heads)), head: String(i % n_heads) }, update);
}

function stepLayer(delta) {
  const n = data.cfg.n_layers;
  setState({ layer: String((Number(state.layer) + delta + n) % n) }, update);
}

/** The next (previous) prompt with stored patterns, in index order. */
async function stepPrompt(delta) {
  const row = view.stored[view.place + delta];
  if (view.place < 0 || row === undefined) return;
  let prompt;
  try {
    prompt = (await data.index.at([row]))[0].hash;
  } catch (e) {
    showError(e);
    return;
  }
  setState({ prompt }, () => update(true));
}

function moveCell(dq, dk) {
  const n = view.prompt.tokens.length, cell = active() || { q: n - 1, k: 0 };
  pin({ q: Math.max(0, Math.min(n - 1, cell.q + dq)), k: Math.max(0, Math.min(n - 1, cell.k + dk)) });
}

function setShade(shade) {
  setState({ shade }, () => { $("shade").value = shade; }, renderCell);
}

// ---- wire ----

function onKey(e) {
  if (!view.prompt || notForPage(e)) return;
  const step = e.shiftKey ? 10 : 1;
  const actions = {
    ArrowUp: () => moveCell(-step, 0), ArrowDown: () => moveCell(step, 0),
    ArrowLeft: () => moveCell(0, -step), ArrowRight: () => moveCell(0, step),
    h: () => stepHead(1), H: () => stepHead(-1), l: () => stepLayer(1), L: () => stepLayer(-1),
    p: () => stepPrompt(1), P: () => stepPrompt(-1),
    r: () => setShade(state.shade === "row" ? "col" : "row"),
    v: () => setVw(VW[(VW.indexOf(state.vw) + 1) % VW.length]), b: toggleCompare,
    "+": () => zoom(1.5), "=": () => zoom(1.5), "-": () => zoom(1 / 1.5), 0: () => zoom(0),
    Escape: () => pin(null), "?": () => $("help").classList.toggle("hidden"),
    g: () => go($("grid-link").href),
  };
  if (!actions[e.key]) return;
  e.preventDefault();
  actions[e.key]();
}

function wireCanvas(m) {
  const { canvas } = m;
  canvas.addEventListener("mousemove", (e) => {
    if (!view.prompt) return;
    const cell = matrix.cellAt(m, e);
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
    const cell = matrix.cellAt(m, e), p = view.pinned;
    pin(cell && p && cell.q === p.q && cell.k === p.k ? null : cell);
  });
  canvas.addEventListener("wheel", (e) => {
    if (!view.prompt) return;
    e.preventDefault();
    if (e.ctrlKey) return zoom(e.deltaY < 0 ? 1.25 : 0.8, matrix.cellAt(m, e));
    const px = (d) => (e.deltaMode ? d * 16 : d) / m.cell;  // lines -> px -> cells
    for (const { matrix: other } of panels()) {
      if (e.shiftKey) matrix.pan(other, px(e.deltaY), 0);
      else matrix.pan(other, px(e.deltaX), px(e.deltaY));
    }
    redraw();
  }, { passive: false });
}

/** Pin the shown pattern as B (compare), or unpin B. */
function toggleCompare() {
  const b = view.b ? { bmodel: "", bprompt: "", blayer: "", bhead: "" }
    : { bmodel: state.model, bprompt: state.prompt, blayer: state.layer, bhead: state.head };
  setState(b, update);
}

/** Pattern B's model, prompt, layer or head changed. */
function setB(patch) {
  setState(patch, update);
}

/** A becomes B and B becomes A. */
function swapAB() {
  const a = { model: state.model, prompt: state.prompt, layer: state.layer, head: state.head };
  const b = { model: state.bmodel, prompt: state.bprompt, layer: state.blayer, head: state.bhead };
  if (b.model !== a.model) {  // another model's page: load it afresh
    go(pageUrl("single", { ...state, ...b, bmodel: a.model, bprompt: a.prompt, blayer: a.layer, bhead: a.head }));
    return;
  }
  setState({ ...b, bmodel: a.model, bprompt: a.prompt, blayer: a.layer, bhead: a.head }, () => update(true));
}

function setVw(vw) {
  setState({ vw }, update);
}

function wire() {
  view.matrices = { a: matrix.createMatrix($("matrix")), b: matrix.createMatrix($("matrix-b")), d: matrix.createMatrix($("matrix-d")) };
  Object.values(view.matrices).forEach(wireCanvas);
  document.addEventListener("keydown", onKey);
  $("layer").addEventListener("change", (e) => setState({ layer: e.target.value }, update));
  $("head").addEventListener("change", (e) => setState({ head: e.target.value }, update));
  $("figure").addEventListener("change", (e) => setState({ figure: e.target.value }, renderControls, renderFigure));
  $("shade").addEventListener("change", (e) => setShade(e.target.value));
  $("scale").addEventListener("change", (e) => setState({ scale: e.target.value }, renderMatrix));
  $("vw").addEventListener("change", (e) => setVw(e.target.value));
  $("export-svg").addEventListener("click", () => exportView(0).catch(showError));
  $("export-png2").addEventListener("click", () => exportView(2).catch(showError));
  $("export-png4").addEventListener("click", () => exportView(4).catch(showError));
  $("compare").addEventListener("click", toggleCompare);
  $("b-unpin").addEventListener("click", toggleCompare);
  $("b-swap").addEventListener("click", swapAB);
  $("b-model").addEventListener("change", (e) => setB({ bmodel: e.target.value }));
  $("b-prompt").addEventListener("change", (e) => setB({ bprompt: e.target.value }));
  $("b-layer").addEventListener("change", (e) => setB({ blayer: e.target.value }));
  $("b-head").addEventListener("change", (e) => setB({ bhead: e.target.value }));
  $("model").addEventListener("change", (e) => go(singleUrl({ ...state, model: e.target.value, prompt: "" })));
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

startPage({ load, render: () => setState({}, renderText, render), wire });
