// Heads page: a layer x head heatmap of one statistic per model (mean over prompts, or one
// prompt's values), a top-N list, and clicks that open a head in the single view or the grid.
import {
  MODELS_URL, fetchData, fetchEach, isStored, loadColormap, loadStatTable, promptsUrl, range, rankHeads,
  statMeans, statsUrl,
} from "./data.js";
import { $, el, fillSelect, formatNumber, showError, startPage } from "./dom.js";
import { gridUrl, readState, singleUrl, writeState } from "./url.js";

const state = readState("heads");
const data = {
  models: [], model: null, stats: null, prompts: new Map(), table: null, colormap: null, diverging: null,
  other: new Map(),  // model dir -> promise of its stats.json (the model subtracted, the series)
  vsTable: null,     // the subtracted model's table of the statistic (one prompt's values)
};

// ---- load ----

async function load() {
  const [models, colormap, diverging] = await fetchEach([
    fetchData(MODELS_URL, "jsonl"), loadColormap(), loadColormap("RdBu"),
  ]);
  if (!models.length) throw new Error(`${MODELS_URL}: no models yet (run compute_activations.py)`);
  Object.assign(data, { models, colormap, diverging });
  if (!models.some((m) => m.model_dir === state.model)) state.model = models[0].model_dir;
  await loadModel();
}

async function loadModel() {
  const [stats, prompts] = await fetchEach([fetchData(statsUrl(state.model)), fetchData(promptsUrl(state.model), "jsonl")]);
  Object.assign(data, {
    model: data.models.find((m) => m.model_dir === state.model), stats, table: null,
    prompts: new Map(prompts.map((p) => [p.hash, p])),
  });
  const names = Object.keys(stats?.stats || {});
  if (!names.includes(state.stat)) state.stat = names[0] || "";
  if (stats && !stats.prompts.includes(state.prompt)) state.prompt = stats.prompts[0] || "";
}

/** The statistic's table (one prompt's values, and the best prompts of a head), fetched once per statistic. */
async function loadTable() {
  if (data.table?.name !== state.stat) data.table = await loadStatTable(state.model, data.stats, state.stat);
  data.vsTable = null;
  const vs = await vsStats();
  if (vs?.stats[state.stat] && state.over === "prompt") data.vsTable = await loadStatTable(state.vs, vs, state.stat);
}

/** Another model's stats.json, fetched once (null when it has none). */
function otherStats(model) {
  if (model === state.model) return Promise.resolve(data.stats);
  if (!data.other.has(model)) data.other.set(model, fetchData(statsUrl(model)));
  return data.other.get(model);
}

const vsStats = () => (state.vs ? otherStats(state.vs) : Promise.resolve(null));
const shape = (m) => `${m.n_layers} x ${m.n_heads}`;
const sameShape = () => data.models.filter((m) => shape(m) === shape(data.model));

/** Training step of a model: `name@step<N>` as compute_activations.py --checkpoint names it (NaN otherwise). */
const stepOf = (m) => Number(/@step(\d+)$/.exec(m.model_name ?? "")?.[1] ?? /[@_]step(\d+)$/.exec(m.model_dir)?.[1] ?? NaN);
const baseOf = (m) => (m.model_name ?? m.model_dir).replace(/@step\d+$/, "");

/** The models shown across checkpoints: this model's checkpoints by step, else every model of its shape. */
function seriesModels() {
  const same = sameShape(), base = baseOf(data.model);
  const checkpoints = same.filter((m) => !Number.isNaN(stepOf(m)) && baseOf(m) === base);
  return checkpoints.length > 1 ? checkpoints.sort((a, b) => stepOf(a) - stepOf(b)) : same;
}

// ---- what is shown ----

/** Whether a head is stored: in the chosen prompt, or (mean over prompts) in any prompt. */
function stored(layer, head) {
  const prompts = state.over === "mean" ? data.stats.prompts : [state.prompt];
  return prompts.some((hash) => !data.prompts.has(hash) || isStored(data.prompts.get(hash), data.model, layer, head));
}

/** Values shown, [layer][head]: the mean over prompts, or the chosen prompt's row of the table; NaN where missing. */
function ownValues() {
  if (state.over === "mean") return statMeans(data.stats, state.stat);
  const { n_layers: nL, n_heads: nH } = data.stats;
  return range(nL).map((l) => range(nH).map((h) => data.table.at(state.prompt, l, h)));
}

/** The subtracted model's values, the same way (the same prompt when one prompt is shown). */
function vsValues(vs) {
  if (state.over === "mean") return statMeans(vs, state.stat);
  return range(vs.n_layers).map((l) => range(vs.n_heads).map((h) => data.vsTable.at(state.prompt, l, h)));
}

/** Why this model cannot be compared with the "minus" model (null when it can). */
function vsProblem(vs) {
  const other = data.models.find((m) => m.model_dir === state.vs);
  if (!other) return `minus ${state.vs}: no such model in ${MODELS_URL}`;
  if (shape(other) !== shape(data.model)) {
    return `cannot compare: ${state.model} has ${shape(data.model)} heads (layers x heads), ${state.vs} has ${shape(other)}`;
  }
  if (!vs?.stats[state.stat]) return `cannot compare: ${state.vs} has no ${state.stat} values (run render_figures.py on it)`;
  return null;
}

/** What the heatmap shows: {values, a, b, problem}; with "minus", values = a - b. */
async function shownValues() {
  const a = ownValues();
  if (!state.vs) return { values: a, a };
  const vs = await vsStats(), problem = vsProblem(vs);
  if (problem) return { values: a, a, problem };
  const b = vsValues(vs);
  return { values: a.map((row, l) => row.map((v, h) => v - b[l][h])), a, b };
}

/** The prompts where a head's statistic is best (highest, or lowest when listing the lowest), best first. */
function bestPrompts(layer, head, n) {
  if (state.over === "prompt") return [state.prompt];
  const sign = state.order === "asc" ? 1 : -1;
  return data.stats.prompts.map((hash, p) => [data.table.atRow(p, layer, head), hash])
    .filter(([v]) => !Number.isNaN(v)).sort((a, b) => sign * (a[0] - b[0])).slice(0, n).map(([, hash]) => hash);
}

/** Where clicking a head goes: the single view on its best prompt, or the grid on its 12 best. */
function headUrl(layer, head) {
  if (state.click === "grid") return topGridUrl([[layer, head]], bestPrompts(layer, head, 12));
  const prompt = bestPrompts(layer, head, 1)[0] ?? state.prompt;
  return singleUrl({ model: state.model, prompt, layer, head, figure: "raw" });
}

const topGridUrl = (heads, prompts) => gridUrl({
  model: state.model, heads, prompts, stat: state.stat, desc: state.order === "desc",
});

// ---- render ----

async function render() {
  renderControls();
  if (!data.stats || !state.stat) {
    $("heatmap").replaceChildren(el("p", { class: "notice" },
      `${state.model} has no head statistics yet: run render_figures.py (it writes ${statsUrl(state.model)}).`));
    $("legend").replaceChildren();
    $("top-list").replaceChildren();
    writeState("heads", state);
    return;
  }
  await loadTable();
  const shown = await shownValues();
  $("vs-problem").textContent = shown.problem ?? "";
  $("vs-problem").classList.toggle("hidden", !shown.problem);
  const ranked = rankHeads(shown.values, state.order === "desc");
  renderHeatmap(shown, ranked);
  renderTop(ranked);
  await renderSeries();
  writeState("heads", state);  // last: tests and users see the URL change once the view shows it
}

function colour(v, lo, hi, colormap = data.colormap) {
  return colormap[Math.max(0, Math.min(255, Math.round(((v - lo) / (hi - lo || 1)) * 255)))];
}

/** The colour range of values: lowest to highest, or (a difference) centred on 0. */
function valueRange(values, centred) {
  const finite = values.flat().filter((v) => !Number.isNaN(v));
  if (!centred) return [Math.min(...finite), Math.max(...finite)];
  const m = Math.max(...finite.map(Math.abs));
  return [-m, m];
}

function renderHeatmap({ values, a, b }, ranked) {
  const { n_layers: nL, n_heads: nH } = data.stats;
  const [lo, hi] = valueRange(values, !!b), colormap = b ? data.diverging : data.colormap;
  const rank = new Map(ranked.map((h) => [`${h.layer},${h.head}`, h.rank]));
  const width = $("heatmap").parentElement.clientWidth - 40;
  const size = Math.max(14, Math.min(52, Math.floor(width / nH)));
  const grid = el("div", { class: "heatmap-grid", style: { gridTemplateColumns: `32px repeat(${nH}, ${size}px)`, gridAutoRows: `${size}px` } });
  grid.append(el("span", { class: "heat-label muted" }, "L\\H"), ...range(nH).map((h) => el("span", { class: "heat-label muted" }, `${h}`)));
  for (let l = 0; l < nL; l++) {
    grid.append(el("span", { class: "heat-label row-label muted" }, `${l}`));
    for (let h = 0; h < nH; h++) {
      const why = b ? ` = ${formatNumber(a[l][h])} \u2212 ${formatNumber(b[l][h])} (${state.vs})` : "";
      grid.append(heatCell(l, h, values[l][h], rank.get(`${l},${h}`), ranked.length, lo, hi, size, colormap, why));
    }
  }
  $("heatmap").replaceChildren(grid);
  renderLegend($("legend"), lo, hi, colormap);
}

function heatCell(l, h, v, rank, of, lo, hi, size, colormap = data.colormap, why = "") {
  const kept = stored(l, h);
  const text = !kept ? "not stored" : formatNumber(v);
  const info = `L${l}H${h}: ${text}${kept ? why : ""}${rank ? ` (rank ${rank} / ${of})` : ""}`;
  const c = kept && !Number.isNaN(v) ? colour(v, lo, hi, colormap) : null;
  const kind = !kept ? "not-stored" : !c ? "no-value" : c[0] * 0.3 + c[1] * 0.59 + c[2] * 0.11 > 120 ? "on-light" : "";
  return el("a", {
    class: `heat ${kind}`.trim(), href: headUrl(l, h), title: info, dataset: { layer: l, head: h, value: String(v) },
    style: c ? { background: `rgb(${c.join(", ")})` } : {},
    onmouseenter: () => { $("hover-info").textContent = info; },
  }, size >= 40 ? text : "");
}

function renderLegend(box, lo, hi, colormap = data.colormap) {
  if (!Number.isFinite(lo)) {
    box.replaceChildren(el("span", { class: "muted" }, "no values for this statistic here"));
    return;
  }
  const stops = colormap.filter((_, i) => i % 32 === 0 || i === 255).map((c) => `rgb(${c.join(",")})`);
  box.replaceChildren(el("span", { class: "mono" }, formatNumber(lo)),
    el("span", { class: "legend-bar", style: { background: `linear-gradient(to right, ${stops.join(",")})` } }),
    el("span", { class: "mono" }, formatNumber(hi)));
}

function renderTop(ranked) {
  const top = ranked.slice(0, Number(state.top) || 10);
  $("top-list").replaceChildren(el("table", { class: "data top-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "head"), el("th", {}, state.stat))),
    el("tbody", {}, top.map(({ layer, head, value, rank }) => el("tr", { onclick: () => { location.href = headUrl(layer, head); } },
      el("td", { class: "num" }, `${rank}`),
      el("td", {}, el("a", { href: headUrl(layer, head) }, `L${layer}H${head}`)),
      el("td", { class: "num" }, formatNumber(value)))))));
  const heads = top.map((h) => [h.layer, h.head]);
  $("top-grid").href = topGridUrl(heads, [state.prompt]);
  $("top-grid").textContent = `open these ${heads.length} heads in the grid (prompt ${promptIndex() + 1})`;
  $("top-grid").classList.toggle("hidden", !heads.length);
}

const promptIndex = () => (data.stats ? data.stats.prompts.indexOf(state.prompt) : -1);

function renderControls() {
  fillSelect($("model"), data.models.map((m) => m.model_dir), state.model);
  fillSelect($("stat"), Object.keys(data.stats?.stats || {}), state.stat);
  for (const id of ["over", "click", "top", "order"]) $(id).value = state[id];
  const others = sameShape().map((m) => m.model_dir).filter((m) => m !== state.model);
  fillSelect($("vs"), ["", ...(state.vs && !others.includes(state.vs) ? [state.vs] : []), ...others], state.vs,
    (m) => m || "nothing");
  $("series").checked = state.series === "1";
  const i = promptIndex(), n = data.stats?.prompts.length ?? 0;
  const text = data.prompts.get(state.prompt)?.text.replace(/\s+/g, " ") ?? state.prompt;
  $("prompt-label").textContent = `prompt ${i + 1}/${n}: ${text.slice(0, 40)}${text.length > 40 ? "\u2026" : ""}`;
  $("prompt-label").title = text;
  $("prompt-picker").classList.toggle("dim", state.over === "mean");
  $("prev-prompt").disabled = i <= 0;
  $("next-prompt").disabled = i >= n - 1;
  $("stat-doc").textContent = data.stats?.stats[state.stat]?.doc || "";
  $("grid-link").href = gridUrl({ model: state.model, stat: state.stat });
  $("single-link").href = singleUrl({ model: state.model, prompt: state.prompt, layer: 0, head: 0, figure: "raw" });
}

// ---- wire ----

/** Change the state, load what that needs and render; a failure is shown and the page stays as it was. */
async function update(patch, reload = false) {
  Object.assign(state, patch);
  try {
    if (reload) await loadModel();
    await render();
  } catch (e) {
    showError(e);
  }
}

function stepPrompt(delta) {
  const prompts = data.stats?.prompts || [], i = promptIndex() + delta;
  if (i >= 0 && i < prompts.length) update({ prompt: prompts[i], over: "prompt" });
}

function stepStat(delta) {
  const names = Object.keys(data.stats?.stats || {});
  if (names.length) update({ stat: names[(names.indexOf(state.stat) + delta + names.length) % names.length] });
}

function wire() {
  $("model").addEventListener("change", (e) => update({ model: e.target.value }, true));
  $("series").addEventListener("change", (e) => update({ series: e.target.checked ? "1" : "" }));
  for (const id of ["stat", "over", "click", "top", "order", "vs"]) {
    $(id).addEventListener("change", (e) => update({ [id]: e.target.value }));
  }
  $("prev-prompt").addEventListener("click", () => stepPrompt(-1));
  $("next-prompt").addEventListener("click", () => stepPrompt(1));
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
    const actions = {
      s: () => stepStat(1), S: () => stepStat(-1), n: () => stepPrompt(1), p: () => stepPrompt(-1),
      m: () => update({ over: state.over === "mean" ? "prompt" : "mean" }),
      c: () => update({ series: state.series ? "" : "1" }),
      "?": () => $("help").classList.toggle("hidden"),
    };
    if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
  });
  window.addEventListener("resize", () => data.table && render());
}

// ---- across checkpoints: one small heatmap per model of this shape, and the top heads against the step ----

async function renderSeries() {
  const box = $("series-view");
  box.classList.toggle("hidden", state.series !== "1");
  if (state.series !== "1") return;
  const models = seriesModels();
  const stats = await fetchEach(models.map((m) => otherStats(m.model_dir)));
  const means = stats.map((st) => (st?.stats[state.stat] ? statMeans(st, state.stat) : null));
  const [lo, hi] = valueRange(means.filter(Boolean).flat(), false);
  const size = Math.max(8, Math.min(22, Math.floor(150 / data.model.n_heads)));
  const maps = models.map((m, i) => el("figure", { class: "series-map", dataset: { model: m.model_dir } },
    el("figcaption", { class: "mono" }, Number.isNaN(stepOf(m)) ? m.model_dir : `step ${stepOf(m)}`),
    means[i] ? smallHeatmap(m, means[i], lo, hi, size) : el("p", { class: "notice" }, `no ${state.stat}`)));
  const legend = el("div", { class: "legend" });
  renderLegend(legend, lo, hi);
  box.replaceChildren(el("h2", {}, `${state.stat} (mean over prompts) across ${models.length} models of shape `
    + `${shape(data.model)}`), el("div", { class: "series-row" }, maps), legend, seriesChart(models, means));
}

function smallHeatmap(model, values, lo, hi, size) {
  const grid = el("div", { class: "heatmap-grid small", style: {
    gridTemplateColumns: `repeat(${model.n_heads}, ${size}px)`, gridAutoRows: `${size}px` } });
  values.forEach((row, l) => row.forEach((v, h) => {
    const c = Number.isNaN(v) ? null : colour(v, lo, hi);
    const info = `${model.model_dir} L${l}H${h}: ${formatNumber(v)}`;
    grid.append(el("a", {
      class: c ? "heat" : "heat no-value", title: info, href: singleUrl({ model: model.model_dir, prompt: state.prompt, layer: l, head: h }),
      dataset: { layer: l, head: h, value: String(v) }, style: c ? { background: `rgb(${c.join(", ")})` } : {},
      onmouseenter: () => { $("hover-info").textContent = info; },
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
  const steps = models.map((m, i) => (Number.isNaN(stepOf(m)) ? i : stepOf(m)));
  const values = top.flatMap(({ layer, head }) => means.map((v) => v?.[layer][head] ?? NaN)).filter((v) => !Number.isNaN(v));
  const [lo, hi] = [Math.min(...values), Math.max(...values)];
  const W = 560, H = 220, L = 48, R = 90, T = 10, B = 30;
  const sx = (s) => L + ((s - steps[0]) / (steps.at(-1) - steps[0] || 1)) * (W - L - R);
  const sy = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, ...children) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    node.append(...children);
    return node;
  };
  const chart = svg("svg", { class: "series-chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
  chart.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const v of [lo, (lo + hi) / 2, hi]) chart.append(svg("text", { x: L - 4, y: sy(v) + 4, "text-anchor": "end" }, formatNumber(v)));
  steps.forEach((s) => chart.append(svg("text", { x: sx(s), y: H - B + 16, "text-anchor": "middle" }, String(s))));
  chart.append(svg("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" },
    steps.every((s, i) => s === i) ? "model" : "training step"));
  top.forEach(({ layer, head }, i) => {
    const ys = means.map((v) => v?.[layer][head] ?? NaN);
    const points = steps.map((s, j) => [s, ys[j]]).filter(([, v]) => !Number.isNaN(v));
    const style = `stroke: var(--series-${i + 1}); fill: var(--series-${i + 1})`;
    chart.append(svg("polyline", {
      points: points.map(([s, v]) => `${sx(s)},${sy(v)}`).join(" "), style, "data-head": `L${layer}H${head}`,
      "data-values": JSON.stringify(ys.map((v) => (Number.isNaN(v) ? null : v))),
    }), svg("text", { x: W - R + 6, y: sy(points.at(-1)[1]) + 4, style: `fill: var(--series-${i + 1})` }, `L${layer}H${head}`));
  });
  return chart;
}

startPage({ load, render, wire });
