// Heads page: a layer x head heatmap of one statistic per model (mean over prompts, or one
// prompt's values), a top-N list, and clicks that open a head in the single view or the grid.
import {
  MODELS_URL, fetchData, fetchEach, isStored, loadColormap, loadStatTable, promptsUrl, range, rankHeads,
  statMeans, statsUrl,
} from "./data.js";
import { $, el, fillSelect, formatNumber, showError, startPage } from "./dom.js";
import { gridUrl, readState, singleUrl, writeState } from "./url.js";

const state = readState("heads");
const data = { models: [], model: null, stats: null, prompts: new Map(), table: null, colormap: null };

// ---- load ----

async function load() {
  const [models, colormap] = await fetchEach([fetchData(MODELS_URL, "jsonl"), loadColormap()]);
  if (!models.length) throw new Error(`${MODELS_URL}: no models yet (run compute_activations.py)`);
  Object.assign(data, { models, colormap });
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
}

// ---- what is shown ----

/** Whether a head is stored: in the chosen prompt, or (mean over prompts) in any prompt. */
function stored(layer, head) {
  const prompts = state.over === "mean" ? data.stats.prompts : [state.prompt];
  return prompts.some((hash) => !data.prompts.has(hash) || isStored(data.prompts.get(hash), data.model, layer, head));
}

/** Values shown, [layer][head]: the mean over prompts, or the chosen prompt's row of the table; NaN where missing. */
function shownValues() {
  if (state.over === "mean") return statMeans(data.stats, state.stat);
  const { n_layers: nL, n_heads: nH } = data.stats;
  return range(nL).map((l) => range(nH).map((h) => data.table.at(state.prompt, l, h)));
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
  const ranked = rankHeads(shownValues(), state.order === "desc");
  renderHeatmap(shownValues(), ranked);
  renderTop(ranked);
  writeState("heads", state);  // last: tests and users see the URL change once the view shows it
}

function colour(v, lo, hi) {
  return data.colormap[Math.max(0, Math.min(255, Math.round(((v - lo) / (hi - lo || 1)) * 255)))];
}

function renderHeatmap(values, ranked) {
  const { n_layers: nL, n_heads: nH } = data.stats;
  const finite = values.flat().filter((v) => !Number.isNaN(v));
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const rank = new Map(ranked.map((h) => [`${h.layer},${h.head}`, h.rank]));
  const width = $("heatmap").parentElement.clientWidth - 40;
  const size = Math.max(14, Math.min(52, Math.floor(width / nH)));
  const grid = el("div", { class: "heatmap-grid", style: { gridTemplateColumns: `32px repeat(${nH}, ${size}px)`, gridAutoRows: `${size}px` } });
  grid.append(el("span", { class: "heat-label muted" }, "L\\H"), ...range(nH).map((h) => el("span", { class: "heat-label muted" }, `${h}`)));
  for (let l = 0; l < nL; l++) {
    grid.append(el("span", { class: "heat-label row-label muted" }, `${l}`));
    for (let h = 0; h < nH; h++) grid.append(heatCell(l, h, values[l][h], rank.get(`${l},${h}`), ranked.length, lo, hi, size));
  }
  $("heatmap").replaceChildren(grid);
  renderLegend(lo, hi);
}

function heatCell(l, h, v, rank, of, lo, hi, size) {
  const kept = stored(l, h);
  const text = !kept ? "not stored" : formatNumber(v);
  const info = `L${l}H${h}: ${text}${rank ? ` (rank ${rank} / ${of})` : ""}`;
  const c = kept && !Number.isNaN(v) ? colour(v, lo, hi) : null;
  const kind = !kept ? "not-stored" : !c ? "no-value" : c[0] * 0.3 + c[1] * 0.59 + c[2] * 0.11 > 120 ? "on-light" : "";
  return el("a", {
    class: `heat ${kind}`.trim(), href: headUrl(l, h), title: info, dataset: { layer: l, head: h, value: String(v) },
    style: c ? { background: `rgb(${c.join(", ")})` } : {},
    onmouseenter: () => { $("hover-info").textContent = info; },
  }, size >= 40 ? text : "");
}

function renderLegend(lo, hi) {
  if (!Number.isFinite(lo)) {
    $("legend").replaceChildren(el("span", { class: "muted" }, "no values for this statistic here"));
    return;
  }
  const stops = data.colormap.filter((_, i) => i % 32 === 0 || i === 255).map((c) => `rgb(${c.join(",")})`);
  $("legend").replaceChildren(el("span", { class: "mono" }, formatNumber(lo)),
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
  for (const id of ["stat", "over", "click", "top", "order"]) {
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
      "?": () => $("help").classList.toggle("hidden"),
    };
    if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
  });
  window.addEventListener("resize", () => data.table && render());
}

startPage({ load, render, wire });
