// Heads page: a layer x head heatmap of one statistic per model (mean over prompts, or one prompt's values),
// a top-N list, a head's panel (its distribution over prompts, its highest and lowest prompts) and links that
// open a head in the single view or the grid. Nothing it fetches grows with the number of prompts: per-head
// summaries from stats.json, the panels from the statistic's heads.json, one prompt's values by one byte
// range of its table, prompts through the prompt index. Above it, the heads' kinds, and the map of heads (PCA of
// their fingerprints) or the scatter of heads (any two statistics), or both.
import {
  MODELS_URL, checkpointOf, fetchData, fetchEach, headKey, isStored, loadColormap, loadStatRow, openPromptIndex, range,
  rankHeads, statHeadsUrl, statMeans, statsUrl,
} from "./data.js";
import {
  $, debounce, el, fillSelect, formatNumber, histogramSvg, notForPage, oneLine, promptLabel, promptList, renderLegend, showError,
  startPage, svgEl,
} from "./dom.js";
import { drawMap, kindsSummary, loadHeadKinds, mapModels, mapPoints, pointColours, pointLabel } from "./kinds.js";
import { colourScale } from "./matrix.js";
import {
  SUMMARIES, axisShort, axisTitle, defaultAxes, drawScatter, scatterLabel, scatterPoints, summaryValue, valueText,
} from "./scatter.js";
import { changeState, go, gridUrl, headPageUrl, latest, pageUrl, readState, singleUrl, writeState } from "./url.js";

const DEFAULT_STAT = "induction_head";  // figures/head_stats.py; absent: the first statistic
const state = readState("heads");
const data = {
  models: [], model: null, stats: null, index: null, colormap: null, diverging: null,
  heads: null,         // the statistic's heads.json (per head: histogram, top and bottom prompts)
  prompt: null,        // the chosen prompt as the prompt index finds it, {row, record}; null when there is none
  other: new Map(),    // model dir -> promise of its stats.json (the model subtracted, the series)
  indexes: new Map(),  // model dir -> promise of its prompt index
  rows: new Map(),     // `${model}/${stat}/${row}` -> promise of that prompt's values, [layer][head]
};

// ---- load ----

async function load() {
  const [models, colormap, diverging] = await fetchEach([
    fetchData(MODELS_URL, "jsonl"), loadColormap(), loadColormap("RdBu"),
  ]);
  if (!models.length) throw new Error(`${MODELS_URL}: no models yet (run compute_activations.py)`);
  Object.assign(data, { models, colormap, diverging });
  if (!models.some((m) => m.model_dir === state.model)) state.model = models[0].model_dir;
  if (!["map", "scatter", "both"].includes(state.plot)) state.plot = "map";
  for (const key of ["xsum", "ysum", "csum"]) if (!(state[key] in SUMMARIES)) state[key] = "mean";
  await loadModel();
}

async function loadModel() {
  const [stats, index] = await fetchEach([fetchData(statsUrl(state.model)), promptIndex(state.model)]);
  Object.assign(data, { model: data.models.find((m) => m.model_dir === state.model), stats, index, heads: null });
  const names = Object.keys(stats?.stats || {});
  // the first screen shows the statistic with the most visible structure in most models: the induction heads
  if (!names.includes(state.stat)) state.stat = names.includes(DEFAULT_STAT) ? DEFAULT_STAT : names[0] || "";
  for (const key of ["x", "y", "cstat"]) if (!names.includes(state[key])) state[key] = "";  // "": the default
  data.prompt = (state.prompt && await index.find(state.prompt)) || await promptAt(index, 0);
  state.prompt = data.prompt?.record.hash ?? "";
}

/** A model's prompt index, opened once. */
function promptIndex(model) {
  if (!data.indexes.has(model)) data.indexes.set(model, Promise.resolve(openPromptIndex(model)));
  return data.indexes.get(model);
}

async function promptAt(index, row) {
  const [record] = row >= 0 && row < index.count ? await index.rows(row, 1) : [];
  return record ? { row, record } : null;
}

/** The statistic's heads.json, fetched when the statistic is chosen. */
async function loadHeads() {
  if (data.heads?.name !== state.stat) data.heads = { ...await fetchData(statHeadsUrl(state.model, state.stat)), name: state.stat };
}

/** Another model's stats.json, fetched once (null when it has none). */
function otherStats(model) {
  if (model === state.model) return Promise.resolve(data.stats);
  if (!data.other.has(model)) data.other.set(model, fetchData(statsUrl(model)));
  return data.other.get(model);
}

/** A prompt's values of the statistic in a model: one row of its table, fetched once. */
function rowValues(model, stats, row) {
  const key = `${model}/${state.stat}/${row}`;
  if (!data.rows.has(key)) {
    data.rows.set(key, loadStatRow(model, stats, state.stat, row).catch((e) => { data.rows.delete(key); throw e; }));
  }
  return data.rows.get(key);
}

const vsStats = () => (state.vs ? otherStats(state.vs) : Promise.resolve(null));
const shape = (m) => `${m.n_layers} x ${m.n_heads}`;
const sameShape = () => data.models.filter((m) => shape(m) === shape(data.model));
const noValues = (stats) => range(stats.n_layers).map(() => range(stats.n_heads).map(() => NaN));

/** A model's training step (compute_activations.py --checkpoint), null when it is not a checkpoint. */
const stepOf = (m) => checkpointOf(m.model_dir).step;

/** The models shown across checkpoints: this model's checkpoints by step, else every model of its shape. */
function seriesModels() {
  const same = sameShape(), base = checkpointOf(data.model.model_dir).base;
  const checkpoints = same.filter((m) => stepOf(m) !== null && checkpointOf(m.model_dir).base === base);
  return checkpoints.length > 1 ? checkpoints.sort((a, b) => stepOf(a) - stepOf(b)) : same;
}

// ---- what is shown ----

/** Whether the chosen prompt stores a head ("mean over prompts": statistics exist whether or not patterns do). */
function stored(layer, head) {
  return state.over === "mean" || !data.prompt || isStored(data.prompt.record, data.model, layer, head);
}

/** Values shown, [layer][head]: the mean over prompts, or the chosen prompt's row of the table; NaN where missing. */
function ownValues() {
  if (state.over === "mean") return statMeans(data.stats, state.stat);
  return data.prompt ? rowValues(state.model, data.stats, data.prompt.row) : noValues(data.stats);
}

/** The subtracted model's values, the same way (the same prompt, found in its own index, when one prompt is shown). */
async function vsValues(vs) {
  if (state.over === "mean") return statMeans(vs, state.stat);
  const found = data.prompt && await (await promptIndex(state.vs)).find(state.prompt);
  return found ? rowValues(state.vs, vs, found.row) : noValues(vs);
}

/** Why this model cannot be compared with the "minus" model (null when it can). */
function vsProblem(vs) {
  const other = data.models.find((m) => m.model_dir === state.vs);
  if (!other) return `minus ${state.vs}: no such model in ${MODELS_URL}`;
  if (shape(other) !== shape(data.model)) {
    return `cannot compare: ${state.model} has ${shape(data.model)} heads (layers x heads), ${state.vs} has ${shape(other)}`;
  }
  if (!vs?.stats[state.stat]) return `cannot compare: ${state.vs} has no ${state.stat} values: ${STATS_HINT}`;
  return null;
}

/** What the heatmap shows: {values, a, b, problem}; with "minus", values = a - b. */
async function shownValues() {
  const a = await ownValues();
  if (!state.vs) return { values: a, a };
  const vs = await vsStats(), problem = vsProblem(vs);
  if (problem) return { values: a, a, problem };
  const b = await vsValues(vs);
  return { values: a.map((row, l) => row.map((v, h) => v - b[l][h])), a, b };
}

const isKept = (hash) => data.heads.prompts[hash]?.stored !== false;

/** The stored prompts where a head's statistic is best (highest, or lowest when listing the lowest), best first. */
function bestPrompts(layer, head, n) {
  if (state.over === "prompt") return [state.prompt];
  const listed = data.heads.heads[layer][head][state.order === "asc" ? "bottom" : "top"];
  return listed.map(([hash]) => hash).filter(isKept).slice(0, n);
}

/** The head's own page, the single view on its best prompt, or the grid on its 12 best. */
function openUrl(layer, head, click = state.click) {
  if (click === "page") return headPageUrl({ model: state.model, layer, head });
  if (click === "grid") return topGridUrl([[layer, head]], bestPrompts(layer, head, 12));
  const prompt = bestPrompts(layer, head, 1)[0] ?? state.prompt;
  return singleUrl({ model: state.model, prompt, layer, head, figure: "raw" });
}

/** Where clicking a head goes: its panel on this page (a link, so it opens in a new tab too), or openUrl. */
const headUrl = (layer, head) => (state.click === "panel" ? pageUrl("heads", { ...state, panel: headKey(layer, head) })
  : openUrl(layer, head));

/** A plain click on a head opens its panel in place; other clicks (new tab, the other modes) follow the link. */
function clickHead(event, layer, head) {
  if (state.click !== "panel" || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  setState({ panel: headKey(layer, head) }, render);
}

const topGridUrl = (heads, prompts) => gridUrl({
  model: state.model, heads, prompts, stat: state.stat, desc: state.order === "desc",
});

/** The head whose panel is open, [layer, head], or null. */
function panelHead() {
  const m = /^L(\d+)H(\d+)$/.exec(state.panel);
  const [l, h] = m ? [Number(m[1]), Number(m[2])] : [];
  return m && l < data.stats.n_layers && h < data.stats.n_heads ? [l, h] : null;
}

// ---- render ----

// where statistics come from (site/data.js FILES): said when a model has none
const STATS_HINT = "compute_activations.py computes them (render_figures.py a plug-in's added later) and "
  + "build_index.py writes the tables";

const rendered = latest();  // a render that a newer one overtook while it waited draws nothing
let drawn = () => false;  // whether the render that drew last is still the latest

/** The one way to change the state (url.changeState): the URL is written once the latest render has drawn. */
const setState = (patch, ...steps) => changeState(state, patch, steps, () => {
  if (drawn()) writeState("heads", state);
}).catch(showError);

async function render() {
  const current = rendered();
  renderControls();
  if (!data.stats || !state.stat) {
    $("heatmap").replaceChildren(el("p", { class: "notice" },
      `${state.model} has no head statistics yet: ${STATS_HINT} (${statsUrl(state.model)}).`));
    for (const id of ["legend", "top-list", "head-panel"]) $(id).replaceChildren();
    $("head-panel").classList.add("hidden");
    $("kinds-view").classList.add("hidden");
    showHovered();
    drawn = current;
    return;
  }
  await loadHeads();
  await renderKinds(current);  // after loadHeads: its head links open what a click on the heatmap opens
  const shown = await shownValues();
  if (!current()) return;
  $("vs-problem").textContent = shown.problem ?? "";
  $("vs-problem").classList.toggle("hidden", !shown.problem);
  const ranked = rankHeads(shown.values, state.order === "desc");
  renderHeatmap(shown, ranked);
  renderTop(ranked);
  renderPanel(shown.a);
  await renderSeries();
  if (!current()) return;
  showHovered();
  drawn = current;  // setState writes the URL now: tests and users see it change once the view shows it
}

// ---- #hover-info: the value of the heatmap cell last hovered, kept up to date as the view changes ----

let hovered = null;  // that cell's data-hover: `L<l>H<h>`, or `<model> L<l>H<h>` on a small heatmap

function hover(key) {
  hovered = key;
  showHovered();
}

/** #hover-info shows the hovered cell's title as drawn now: after another prompt, statistic or model, the new
 * value, not the one hovered before the change. */
function showHovered() {
  const cell = [...document.querySelectorAll("[data-hover]")].find((c) => c.dataset.hover === hovered);
  $("hover-info").textContent = cell?.title ?? "";
}

// ---- the heads' kinds: the summary; the map and the scatter of heads (site/kinds.js, site/scatter.js) ----

let plots = {};  // the plots drawn: {map, scatter}, each {pick(x, y), label(point)} or null when hidden

/** The scatter's axes, {x, xsum, xlog, y, ysum, ylog}: the URL's choice, else scatter.defaultAxes. */
function scatterAxes() {
  const [x, y] = defaultAxes(Object.keys(data.stats?.stats || {}));
  return {
    x: state.x || x, xsum: state.xsum, xlog: state.xlog === "1", y: state.y || y, ysum: state.ysum, ylog: state.ylog === "1",
  };
}

/** The statistic colour=stat shows: the URL's choice, else the heatmap's. */
const colourStat = () => state.cstat || state.stat;

const PLOT_TITLES = { map: "map of heads", scatter: "scatter of heads", both: "map and scatter of heads" };

async function renderKinds(current) {
  const info = await loadHeadKinds(state.model);
  $("kinds-view").classList.toggle("hidden", !info);
  if (!info) return;
  $("kinds-summary").replaceChildren(el("h2", {}, "kinds of heads"), kindsSummary(state.model, info, headUrl));
  const models = mapModels(data.models.map((m) => m.model_dir), state.model, state.map);
  const needStats = state.plot !== "map" || state.colour === "stat";  // the map alone needs only heads.json
  const [infos, stats] = await Promise.all([
    fetchEach(models.map(loadHeadKinds)), fetchEach(needStats ? models.map(otherStats) : []),
  ]);
  if (!current()) return;
  const statsOf = new Map(stats.map((st, i) => [models[i], st]));
  const heads = mapPoints(models.map((model, i) => ({ model, info: infos[i] })).filter((e) => e.info));
  if (state.colour === "stat") {
    for (const p of heads) p.c = summaryValue(statsOf.get(p.model), colourStat(), state.csum, p.layer, p.head);
  }
  // one set of colours for both plots, made from every head shown, so a head has the same colour in each
  const colours = pointColours(heads, state.colour, { colormap: data.colormap, title: axisTitle(colourStat(), state.csum) });
  $("plot-title").textContent = PLOT_TITLES[state.plot];
  $("map-box").classList.toggle("hidden", state.plot === "scatter");
  $("scatter-box").classList.toggle("hidden", state.plot === "map");
  plots = {
    map: state.plot === "scatter" ? null : { ...drawMap($("map-canvas"), heads, colours), label: pointLabel },
    scatter: state.plot === "map" ? null : renderScatter(heads, statsOf, colours),
  };
  $("map-legend").replaceChildren(colours.legend);
  showPoint(null);
}

/** The scatter of `heads` at the chosen statistics, and the line saying how many it leaves out and why. */
function renderScatter(heads, statsOf, colours) {
  const axes = scatterAxes(), { points, missing, nonPositive } = scatterPoints(heads, statsOf, axes);
  const drawn = drawScatter($("scatter-canvas"), points, {
    x: { title: axisTitle(axes.x, axes.xsum), log: axes.xlog }, y: { title: axisTitle(axes.y, axes.ysum), log: axes.ylog },
    colours,
  });
  $("scatter-note").textContent = [`${points.length} of ${heads.length} heads`,
    missing && `${missing} without a value of x or y, left out`,
    nonPositive && `${nonPositive} with a value \u2264 0 on a log axis, left out`].filter(Boolean).join("; ");
  return { ...drawn, label: (p) => scatterLabel(p, axes) };
}

/** The line under the plots names the point hovered (its data-* the head and its plot coordinates), or nothing. */
function showPoint(p, plot) {
  const box = $("map-hover");
  const colour = state.colour === "stat" && p ? ` \u00b7 colour: ${axisShort(colourStat(), state.csum)} ${valueText(p.c)}` : "";
  box.textContent = p ? `${plots[plot].label(p)}${colour}` : "\u00a0";
  Object.assign(box.dataset, p ? { plot, model: p.model, head: headKey(p.layer, p.head), x: String(p.x), y: String(p.y) }
    : { plot: "", model: "", head: "", x: "", y: "" });
}

/** A point under the mouse: hovering names it; clicking a map point opens it as "click opens" says (the head page
 * or the single view), a scatter point its head page. */
function wirePlots() {
  for (const plot of ["map", "scatter"]) {
    const canvas = $(`${plot}-canvas`), at = (e) => plots[plot]?.pick(e.offsetX, e.offsetY);
    canvas.addEventListener("mousemove", (e) => {
      const p = at(e);
      showPoint(p, plot);
      canvas.style.cursor = p ? "pointer" : "";
    });
    canvas.addEventListener("mouseleave", () => showPoint(null));
    canvas.addEventListener("click", (e) => {
      const p = at(e);
      const page = plot === "scatter" || state.click === "page";
      if (p && page) go(headPageUrl({ model: p.model, layer: p.layer, head: p.head }));
      // the probe's prompts have the same hash in every model; another model's single view picks its own otherwise
      else if (p) location.href = singleUrl({ model: p.model, prompt: state.prompt, layer: p.layer, head: p.head, figure: "raw" });
    });
  }
}

function renderHeatmap({ values, a, b }, ranked) {
  const { n_layers: nL, n_heads: nH } = data.stats;
  // lowest to highest value, or (a difference) centred on 0
  const colour = colourScale([values.flat()], "range", { diverging: !!b }), colormap = b ? data.diverging : data.colormap;
  const rank = new Map(ranked.map((h) => [headKey(h.layer, h.head), h.rank]));
  const width = $("heatmap").parentElement.clientWidth - 40;
  const size = Math.max(14, Math.min(52, Math.floor(width / nH)));
  const grid = el("div", { class: "heatmap-grid", style: { gridTemplateColumns: `32px repeat(${nH}, ${size}px)`, gridAutoRows: `${size}px` } });
  grid.append(el("span", { class: "heat-label muted" }, "L\\H"), ...range(nH).map((h) => el("span", { class: "heat-label muted" }, `${h}`)));
  for (let l = 0; l < nL; l++) {
    grid.append(el("span", { class: "heat-label row-label muted" }, `${l}`));
    for (let h = 0; h < nH; h++) {
      const why = b ? ` = ${formatNumber(a[l][h])} \u2212 ${formatNumber(b[l][h])} (${state.vs})` : "";
      grid.append(heatCell({
        layer: l, head: h, value: values[l][h], rank: rank.get(headKey(l, h)), of: ranked.length, colour, colormap, size, why,
      }));
    }
  }
  $("heatmap").replaceChildren(grid);
  renderLegend($("legend"), colour.lo, colour.hi, colormap, { empty: "no values for this statistic here" });
}

/** One head's cell: its value in the colour scale's colour (and as a number when the cell is `size` >= 40 px wide),
 * its rank among `of` heads and `why` (how a difference was made) in its title, a link to what a click opens. */
function heatCell({ layer, head, value, rank, of, colour, colormap, size, why = "" }) {
  const kept = stored(layer, head), key = headKey(layer, head);
  const text = !kept ? "not stored" : formatNumber(value);
  const info = `${key}: ${text}${kept ? why : ""}${rank ? ` (rank ${rank} / ${of})` : ""}`;
  const c = kept && !Number.isNaN(value) ? colormap[colour.index(value)] : null;
  const kind = !kept ? "not-stored" : !c ? "no-value" : c[0] * 0.3 + c[1] * 0.59 + c[2] * 0.11 > 120 ? "on-light" : "";
  const open = state.panel === key ? "open" : "";
  return el("a", {
    class: `heat ${kind} ${open}`.trim(), href: headUrl(layer, head), title: info,
    dataset: { layer, head, value: String(value), hover: key }, style: c ? { background: `rgb(${c.join(", ")})` } : {},
    onmouseenter: () => hover(key), onclick: (e) => clickHead(e, layer, head),
  }, size >= 40 ? text : "");
}

function renderTop(ranked) {
  const top = ranked.slice(0, Number(state.top) || 10);
  const follow = (e, layer, head) => {
    clickHead(e, layer, head);
    if (!e.defaultPrevented && !e.target.closest("a")) go(headUrl(layer, head));
  };
  $("top-list").replaceChildren(el("table", { class: "data top-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "head"), el("th", {}, state.stat))),
    el("tbody", {}, top.map(({ layer, head, value, rank }) => el("tr", {
      class: state.panel === headKey(layer, head) ? "selected" : "", onclick: (e) => follow(e, layer, head),
    },
    el("td", { class: "num" }, `${rank}`),
    el("td", {}, el("a", { href: headUrl(layer, head) }, headKey(layer, head))),
    el("td", { class: "num" }, formatNumber(value)))))));
  const heads = top.map((h) => [h.layer, h.head]);
  $("top-grid").href = topGridUrl(heads, [state.prompt]);
  $("top-grid").textContent = `open these ${heads.length} heads in the grid (prompt ${(data.prompt?.row ?? -1) + 1})`;
  $("top-grid").classList.toggle("hidden", !heads.length);
}

function renderControls() {
  fillSelect($("model"), data.models.map((m) => m.model_dir), state.model);
  fillSelect($("stat"), Object.keys(data.stats?.stats || {}), state.stat);
  for (const id of ["over", "click", "top", "order", "map", "colour", "plot", "xsum", "ysum", "csum"]) $(id).value = state[id];
  const names = Object.keys(data.stats?.stats || {}), axes = scatterAxes();
  fillSelect($("x"), names, axes.x);
  fillSelect($("y"), names, axes.y);
  fillSelect($("cstat"), names, colourStat());
  $("xlog").checked = axes.xlog;
  $("ylog").checked = axes.ylog;
  $("colour-stat").classList.toggle("hidden", state.colour !== "stat");
  const others = sameShape().map((m) => m.model_dir).filter((m) => m !== state.model);
  fillSelect($("vs"), ["", ...(state.vs && !others.includes(state.vs) ? [state.vs] : []), ...others], state.vs,
    (m) => m || "nothing");
  $("series").checked = state.series === "1";
  const i = data.prompt?.row ?? -1, n = data.index?.count ?? 0;
  const text = oneLine(data.prompt?.record.text ?? state.prompt);
  $("prompt-label").textContent = `prompt ${i + 1}/${n}: ${promptLabel(text, 40)}`;
  $("prompt-label").title = text;
  $("prompt-picker").classList.toggle("dim", state.over === "mean");
  $("prev-prompt").disabled = i <= 0;
  $("next-prompt").disabled = i >= n - 1;
  $("stat-doc").textContent = data.stats?.stats[state.stat]?.doc || "";
  $("grid-link").href = gridUrl({ model: state.model, stat: state.stat });
  $("single-link").href = singleUrl({ model: state.model, prompt: state.prompt, layer: 0, head: 0, figure: "raw" });
}

// ---- a head's panel: its distribution over prompts and its highest and lowest prompts ----

function renderPanel(own) {
  const head = panelHead(), box = $("head-panel");
  box.classList.toggle("hidden", !head);
  if (!head) {
    box.replaceChildren();
    return;
  }
  const [l, h] = head, info = data.heads.heads[l][h], stat = data.stats.stats[state.stat];
  const at = (table) => table?.[l]?.[h] ?? NaN;
  const value = state.over === "prompt" ? at(own) : NaN;
  box.dataset.head = headKey(l, h);
  box.replaceChildren(...[
    el("h2", { class: "row" }, el("span", {}, `${headKey(l, h)} \u00b7 ${state.stat}`), el("span", { class: "spacer" }),
      el("button", { type: "button", class: "link panel-close", title: "close (Esc)", onclick: () => setState({ panel: "" }, render) }, "\u00d7")),
    histogramSvg(info.hist, at(stat.mean), value),
    el("p", { class: "hist-caption muted" }, `${at(stat.count)} of ${data.stats.n_prompts} prompts have a value`,
      Number.isNaN(value) ? "" : ` \u00b7 this prompt: ${formatNumber(value)}`),
    headNumbers(stat, at),
    el("p", { class: "head-links" }, el("a", { class: "head-page-link", href: openUrl(l, h, "page") }, "head page"), " \u00b7 ",
      el("a", { href: openUrl(l, h, "single") }, "single view"), " \u00b7 ",
      el("a", { href: openUrl(l, h, "grid") }, "grid of its top prompts")),
    headPrompts("highest", info.top, l, h),
    headPrompts("lowest", info.bottom, l, h),
    notStoredNote([...info.top, ...info.bottom]),
  ].filter(Boolean));
}

/** The quantiles from min to max (one row, read like a box plot), then mean and std, as labelled numbers. */
function headNumbers(stat, at) {
  const q = stat.quantiles ?? {};
  const items = [["min", stat.min], ["5%", q["0.05"]], ["25%", q["0.25"]], ["median", q["0.5"]], ["75%", q["0.75"]],
    ["95%", q["0.95"]], ["max", stat.max], ["mean", stat.mean], ["std", stat.std]];
  return el("dl", { class: "head-numbers" }, items.map(([label, table]) => el("div", {
    dataset: { key: label, value: String(at(table)) },
  }, el("dt", {}, label), el("dd", { class: "mono" }, formatNumber(at(table))))));
}

/** One list of prompts with their values; a stored prompt links to the single view on this head. */
function headPrompts(title, entries, layer, head) {
  const link = (hash) => singleUrl({ model: state.model, prompt: hash, layer, head, figure: "raw" });
  return promptList(title, entries, data.heads.prompts, link);
}

/** What to run when some listed prompts have statistics but no stored patterns. */
function notStoredNote(entries) {
  if (entries.every(([hash]) => isKept(hash))) return null;
  const k = data.stats.top_k ?? 10, name = data.model.model_name ?? data.model.model_dir;
  return el("p", { class: "notice not-stored-note" }, "The prompts marked \u201cnot stored\u201d have statistics but no ",
    `stored patterns. To store the patterns of every head's top ${k} prompts, run`,
    el("code", { class: "command" }, `python compute_activations.py ${name} PROMPTS --top ${k}`),
    "with the same prompts file (PROMPTS) and the same --save-path.");
}

// ---- wire ----

async function choosePrompt(found) {
  if (!found) return;
  data.prompt = found;
  await setState({ prompt: found.record.hash, over: "prompt" }, render);
}

async function stepPrompt(delta) {
  if (!data.index) return;
  try {
    await choosePrompt(await promptAt(data.index, (data.prompt?.row ?? -1) + delta));
  } catch (e) {
    showError(e);
  }
}

function stepStat(delta) {
  const names = Object.keys(data.stats?.stats || {});
  if (names.length) setState({ stat: names[(names.indexOf(state.stat) + delta + names.length) % names.length] }, render);
}

/** Arrow keys move the open panel to the neighbouring head. */
function movePanel(dl, dh) {
  const head = data.stats && panelHead();
  if (!head) return false;
  const l = Math.min(Math.max(head[0] + dl, 0), data.stats.n_layers - 1);
  const h = Math.min(Math.max(head[1] + dh, 0), data.stats.n_heads - 1);
  setState({ panel: headKey(l, h) }, render);
  return true;
}

/** The prompt search: the index's matches under the box, a click chooses one. */
async function searchPrompts(query) {
  const box = $("prompt-results");
  if (!query.trim() || !data.index) {
    box.classList.add("hidden");
    return;
  }
  const found = await data.index.search(query, 12);
  box.replaceChildren(...(found.length ? found.map((f) => el("button", {
    type: "button", class: "prompt-result", title: f.record.text, dataset: { hash: f.record.hash },
    onclick: () => { box.classList.add("hidden"); $("prompt-search").value = ""; choosePrompt(f); },
  }, el("span", { class: "muted mono" }, `${f.row + 1}`), ` ${promptLabel(f.record.text, 80)}`))
    : [el("span", { class: "muted" }, "no prompt matches")]));
  box.classList.remove("hidden");
}

function wire() {
  $("model").addEventListener("change", (e) => setState({ model: e.target.value }, loadModel, render));
  $("series").addEventListener("change", (e) => setState({ series: e.target.checked ? "1" : "" }, render));
  wirePlots();
  for (const id of ["xsum", "ysum", "csum"]) fillSelect($(id), Object.keys(SUMMARIES), state[id], (k) => SUMMARIES[k]);
  const selects = ["stat", "over", "click", "top", "order", "vs", "map", "colour", "plot", "x", "y", "xsum", "ysum", "cstat", "csum"];
  for (const id of selects) {
    $(id).addEventListener("change", (e) => setState({ [id]: e.target.value }, render));
  }
  for (const id of ["xlog", "ylog"]) {
    $(id).addEventListener("change", (e) => setState({ [id]: e.target.checked ? "1" : "" }, render));
  }
  $("prev-prompt").addEventListener("click", () => stepPrompt(-1));
  $("next-prompt").addEventListener("click", () => stepPrompt(1));
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  $("prompt-search").addEventListener("input", debounce((e) => searchPrompts(e.target.value).catch(showError), 150));
  $("prompt-search").addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.target.value = ""; $("prompt-results").classList.add("hidden"); e.target.blur(); }
  });
  document.addEventListener("keydown", (e) => {
    if (notForPage(e)) return;
    const actions = {
      s: () => stepStat(1), S: () => stepStat(-1), n: () => stepPrompt(1), p: () => stepPrompt(-1),
      m: () => setState({ over: state.over === "mean" ? "prompt" : "mean" }, render),
      c: () => setState({ series: state.series ? "" : "1" }, render),
      "/": () => $("prompt-search").focus(),
      "?": () => $("help").classList.toggle("hidden"),
      Escape: () => state.panel && setState({ panel: "" }, render),
      ArrowLeft: () => movePanel(0, -1), ArrowRight: () => movePanel(0, 1),
      ArrowUp: () => movePanel(-1, 0), ArrowDown: () => movePanel(1, 0),
    };
    if (actions[e.key] && actions[e.key]() !== false) e.preventDefault();
  });
  window.addEventListener("resize", () => data.heads && render());
  document.addEventListener("themechange", () => data.heads && render());  // the plots' canvas colours follow the theme
}

// ---- across checkpoints: one small heatmap per model of this shape, and the top heads against the step ----

async function renderSeries() {
  const box = $("series-view");
  box.classList.toggle("hidden", state.series !== "1");
  if (state.series !== "1") return;
  const models = seriesModels();
  const stats = await fetchEach(models.map((m) => otherStats(m.model_dir)));
  const means = stats.map((st) => (st?.stats[state.stat] ? statMeans(st, state.stat) : null));
  const colour = colourScale([means.filter(Boolean).flat(2)], "range");  // one scale for every model
  const size = Math.max(8, Math.min(22, Math.floor(150 / data.model.n_heads)));
  const maps = models.map((m, i) => el("figure", { class: "series-map", dataset: { model: m.model_dir } },
    el("figcaption", { class: "mono" }, stepOf(m) === null ? m.model_dir : `step ${stepOf(m)}`),
    means[i] ? smallHeatmap(m, means[i], colour, size) : el("p", { class: "notice" }, `no ${state.stat}`)));
  const legend = el("div", { class: "legend" });
  renderLegend(legend, colour.lo, colour.hi, data.colormap, { empty: "no values for this statistic here" });
  box.replaceChildren(el("h2", {}, `${state.stat} (mean over prompts) across ${models.length} models of shape `
    + `${shape(data.model)}`), el("div", { class: "series-row" }, maps), legend, seriesChart(models, means));
}

function smallHeatmap(model, values, colour, size) {
  const grid = el("div", { class: "heatmap-grid small", style: {
    gridTemplateColumns: `repeat(${model.n_heads}, ${size}px)`, gridAutoRows: `${size}px` } });
  values.forEach((row, l) => row.forEach((v, h) => {
    const c = Number.isNaN(v) ? null : data.colormap[colour.index(v)];
    const key = `${model.model_dir} ${headKey(l, h)}`;
    grid.append(el("a", {
      class: c ? "heat" : "heat no-value", title: `${key}: ${formatNumber(v)}`,
      href: singleUrl({ model: model.model_dir, prompt: state.prompt, layer: l, head: h }),
      dataset: { layer: l, head: h, value: String(v), hover: key }, style: c ? { background: `rgb(${c.join(", ")})` } : {},
      onmouseenter: () => hover(key),
    }));
  }));
  return grid;
}

const SERIES_COLOURS = 6;  // --series-1 ... --series-6 in style.css

/** One line per top head (ranked in the last model) against the step, as an SVG chart. */
function seriesChart(models, means) {
  const last = means.findLastIndex(Boolean);
  if (last < 0) return el("p", { class: "muted" }, "no values");
  const top = rankHeads(means[last], state.order === "desc").slice(0, SERIES_COLOURS);
  const steps = models.map((m, i) => stepOf(m) ?? i);
  const values = top.flatMap(({ layer, head }) => means.map((v) => v?.[layer][head] ?? NaN)).filter((v) => !Number.isNaN(v));
  const [lo, hi] = [Math.min(...values), Math.max(...values)];
  const W = 560, H = 220, L = 48, R = 90, T = 10, B = 30;
  const sx = (s) => L + ((s - steps[0]) / (steps.at(-1) - steps[0] || 1)) * (W - L - R);
  const sy = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  const chart = svgEl("svg", { class: "series-chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
  chart.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const v of [lo, (lo + hi) / 2, hi]) chart.append(svgEl("text", { x: L - 4, y: sy(v) + 4, "text-anchor": "end" }, formatNumber(v)));
  steps.forEach((s) => chart.append(svgEl("text", { x: sx(s), y: H - B + 16, "text-anchor": "middle" }, String(s))));
  chart.append(svgEl("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" },
    steps.every((s, i) => s === i) ? "model" : "training step"));
  top.forEach(({ layer, head }, i) => {
    const ys = means.map((v) => v?.[layer][head] ?? NaN);
    const points = steps.map((s, j) => [s, ys[j]]).filter(([, v]) => !Number.isNaN(v));
    const style = `stroke: var(--series-${i + 1}); fill: var(--series-${i + 1})`;
    chart.append(svgEl("polyline", {
      points: points.map(([s, v]) => `${sx(s)},${sy(v)}`).join(" "), style, "data-head": headKey(layer, head),
      "data-values": JSON.stringify(ys.map((v) => (Number.isNaN(v) ? null : v))),
    }), svgEl("text", { x: W - R + 6, y: sy(points.at(-1)[1]) + 4, style: `fill: var(--series-${i + 1})` }, headKey(layer, head)));
  });
  return chart;
}

startPage({ load, render: () => setState({}, render), wire });
