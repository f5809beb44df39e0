// Heads page: a layer x head heatmap of one statistic per model (mean over prompts, or one
// prompt's values), a top-N list, and clicks that open a head in the single view or the grid.
import {
  MODELS_URL, applyTheme, el, fetchJsonOptional, fetchJsonl, fetchOk, loadColormap, promptsUrl, readState,
  showError, singleUrl, statTableUrl, statsUrl, stateQuery, themeToggle, writeState,
} from "./common.js";

const DEFAULTS = { model: "", stat: "", over: "mean", prompt: "", click: "single", top: "10", order: "desc" };
const $ = (id) => document.getElementById(id);

const state = readState(DEFAULTS);
const data = { models: [], stats: null, prompts: [], table: null, colormap: null };

// ---- data ----

async function loadModel() {
  const [stats, prompts] = await Promise.all([
    fetchJsonOptional(statsUrl(state.model)),
    fetchJsonl(promptsUrl(state.model)).catch(() => []),
  ]);
  Object.assign(data, { stats, prompts, table: null });
  const names = Object.keys(stats?.stats || {});
  if (!names.includes(state.stat)) state.stat = names[0] || "";
  if (stats && !stats.prompts.includes(state.prompt)) state.prompt = stats.prompts[0] || "";
}

/** The statistic's [prompts, layers, heads] float32 table, fetched once per statistic. */
async function loadTable() {
  if (!data.stats || !state.stat) return;
  if (data.table?.stat === state.stat) return;
  const values = new Float32Array(await (await fetchOk(statTableUrl(state.model, state.stat))).arrayBuffer());
  data.table = { stat: state.stat, values };
}

/** Values shown, [layer][head]: the mean over prompts, or the chosen prompt's row of the table. */
function shownValues() {
  const { n_layers: nL, n_heads: nH } = data.stats;
  if (state.over === "mean") return data.stats.stats[state.stat].mean.map((row) => row.map((v) => v ?? NaN));
  const p = data.stats.prompts.indexOf(state.prompt), v = data.table.values;
  return Array.from({ length: nL }, (_, l) => Array.from({ length: nH }, (_, h) => v[(p * nL + l) * nH + h]));
}

/** The prompt where a head's statistic is highest (lowest when listing the lowest), for opening it. */
function bestPrompt(layer, head) {
  if (state.over === "prompt") return state.prompt;
  const { n_layers: nL, n_heads: nH, prompts } = data.stats, v = data.table.values, sign = state.order === "asc" ? -1 : 1;
  let best = 0, bestValue = -Infinity;
  for (let p = 0; p < prompts.length; p++) {
    const x = sign * v[(p * nL + layer) * nH + head];
    if (x > bestValue) [best, bestValue] = [p, x];
  }
  return prompts[best];
}

/** The prompts where a head scores highest, for the grid (at most `n`). */
function topPrompts(layer, head, n = 12) {
  if (state.over === "prompt") return [state.prompt];
  const { n_layers: nL, n_heads: nH, prompts } = data.stats, v = data.table.values, sign = state.order === "asc" ? -1 : 1;
  return prompts.map((hash, p) => [sign * v[(p * nL + layer) * nH + head], hash])
    .filter(([x]) => !Number.isNaN(x)).sort((a, b) => b[0] - a[0]).slice(0, n).map(([, hash]) => hash);
}

// ---- links ----

function headUrl(layer, head) {
  if (state.click === "grid") return gridUrl([[layer, head]], topPrompts(layer, head));
  return singleUrl({ model: state.model, prompt: bestPrompt(layer, head), layer, head, figure: "raw" });
}

function gridUrl(heads, prompts) {
  return `index.html?${stateQuery({
    models: state.model, heads: heads.map(([l, h]) => `L${l}H${h}`).join(","), prompts: prompts.join(","),
    stat: state.stat, sort: "stat", desc: state.order === "desc" ? "1" : "",
  })}`;
}

// ---- drawing ----

const fmt = (v) => (Number.isNaN(v) ? "\u2013" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));

function colour(v, lo, hi) {
  if (Number.isNaN(v)) return null;
  const c = data.colormap[Math.max(0, Math.min(255, Math.round(((v - lo) / (hi - lo || 1)) * 255)))];
  return c;
}

function rankOf(values) {
  const flat = values.flat().map((v, i) => [v, i]).filter(([v]) => !Number.isNaN(v));
  flat.sort((a, b) => (state.order === "asc" ? a[0] - b[0] : b[0] - a[0]));
  return flat;
}

function renderHeatmap(values) {
  const { n_layers: nL, n_heads: nH } = data.stats;
  const finite = values.flat().filter((v) => !Number.isNaN(v));
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const ranked = rankOf(values), rank = new Map(ranked.map(([, i], r) => [i, r + 1]));
  const width = $("heatmap").parentElement.clientWidth - 40;
  const cell = Math.max(14, Math.min(52, Math.floor(width / nH)));
  const showText = cell >= 40;
  const grid = el("div", { class: "heatmap-grid", style: { gridTemplateColumns: `32px repeat(${nH}, ${cell}px)`, gridAutoRows: `${cell}px` } });
  grid.append(el("span", { class: "corner muted" }, "L\\H"), ...Array.from({ length: nH }, (_, h) => el("span", { class: "col-label muted" }, `${h}`)));
  for (let l = 0; l < nL; l++) {
    grid.append(el("span", { class: "row-label muted" }, `${l}`));
    for (let h = 0; h < nH; h++) {
      const v = values[l][h], c = colour(v, lo, hi);
      const info = `L${l}H${h}: ${fmt(v)}${rank.has(l * nH + h) ? ` (rank ${rank.get(l * nH + h)} / ${ranked.length})` : ""}`;
      grid.append(el("a", {
        class: `cell${c ? "" : " missing"}${c && c[0] * 0.3 + c[1] * 0.59 + c[2] * 0.11 > 120 ? " light" : ""}`,
        href: headUrl(l, h), title: info, dataset: { layer: l, head: h, value: String(v) },
        style: c ? { background: `rgb(${c[0]}, ${c[1]}, ${c[2]})` } : {},
        onmouseenter: () => { $("hover-info").textContent = info; },
      }, showText ? fmt(v) : ""));
    }
  }
  $("heatmap").replaceChildren(grid);
  renderLegend(lo, hi);
  return ranked;
}

function renderLegend(lo, hi) {
  if (!Number.isFinite(lo)) {
    $("legend").replaceChildren(el("span", { class: "muted" }, "no values for this statistic here"));
    return;
  }
  const stops = data.colormap.filter((_, i) => i % 32 === 0 || i === 255).map((c) => `rgb(${c.join(",")})`);
  $("legend").replaceChildren(el("span", { class: "mono" }, fmt(lo)),
    el("span", { class: "bar", style: { background: `linear-gradient(to right, ${stops.join(",")})` } }),
    el("span", { class: "mono" }, fmt(hi)));
}

function renderTop(ranked) {
  const nH = data.stats.n_heads, top = ranked.slice(0, Number(state.top) || 10);
  $("top-list").replaceChildren(el("table", { class: "data top-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "head"), el("th", {}, state.stat))),
    el("tbody", {}, top.map(([v, i], r) => {
      const l = Math.floor(i / nH), h = i % nH;
      return el("tr", { onclick: () => { location.href = headUrl(l, h); } },
        el("td", { class: "num" }, `${r + 1}`),
        el("td", {}, el("a", { href: headUrl(l, h) }, `L${l}H${h}`)),
        el("td", { class: "num" }, fmt(v)));
    }))));
  const heads = top.map(([, i]) => [Math.floor(i / nH), i % nH]);
  $("top-grid").href = gridUrl(heads, [state.prompt]);
  $("top-grid").textContent = `open these ${heads.length} heads in the grid (prompt ${promptIndex() + 1})`;
  $("top-grid").classList.toggle("hidden", !heads.length);
}

function promptIndex() {
  return data.stats ? data.stats.prompts.indexOf(state.prompt) : -1;
}

function renderControls() {
  const fill = (select, values, current) => select.replaceChildren(
    ...values.map((v) => el("option", { value: v, selected: v === current }, v)));
  fill($("model"), data.models.map((m) => m.model_dir), state.model);
  fill($("stat"), Object.keys(data.stats?.stats || {}), state.stat);
  for (const id of ["over", "click", "top", "order"]) $(id).value = state[id];
  const i = promptIndex(), n = data.stats?.prompts.length ?? 0;
  const text = data.prompts.find((p) => p.hash === state.prompt)?.text.replace(/\s+/g, " ") ?? state.prompt;
  $("prompt-label").textContent = `prompt ${i + 1}/${n}: ${text.slice(0, 40)}${text.length > 40 ? "\u2026" : ""}`;
  $("prompt-label").title = text;
  $("prompt-picker").classList.toggle("dim", state.over === "mean");
  $("prev-prompt").disabled = i <= 0;
  $("next-prompt").disabled = i >= n - 1;
  $("stat-doc").textContent = data.stats?.stats[state.stat]?.doc || "";
  $("grid-link").href = `index.html?${stateQuery({ models: state.model, stat: state.stat })}`;
  $("single-link").href = singleUrl({ model: state.model, prompt: state.prompt, layer: 0, head: 0, figure: "raw" });
}

async function render() {
  if (!data.stats) {
    renderControls();
    $("heatmap").replaceChildren(el("p", { class: "placeholder" },
      `${state.model} has no head statistics yet: run render_figures.py (it writes ${statsUrl(state.model)}).`));
    writeState(state, DEFAULTS);
    document.body.dataset.ready = "1";
    return;
  }
  try {
    await loadTable();
  } catch (e) {
    showError(e.message);
    return;
  }
  renderControls();
  renderTop(renderHeatmap(shownValues()));
  writeState(state, DEFAULTS);  // last: tests and users see the URL change once the view shows it
  document.body.dataset.ready = "1";
}

// ---- events ----

async function setModel(model) {
  state.model = model;
  try {
    await loadModel();
  } catch (e) {
    showError(e.message);
    return;
  }
  render();
}

function stepPrompt(delta) {
  const prompts = data.stats?.prompts || [], i = promptIndex() + delta;
  if (i < 0 || i >= prompts.length) return;
  Object.assign(state, { prompt: prompts[i], over: "prompt" });
  render();
}

function stepStat(delta) {
  const names = Object.keys(data.stats?.stats || {});
  if (!names.length) return;
  state.stat = names[(names.indexOf(state.stat) + delta + names.length) % names.length];
  render();
}

function wire() {
  $("model").addEventListener("change", (e) => setModel(e.target.value));
  for (const id of ["stat", "over", "click", "top", "order"]) {
    $(id).addEventListener("change", (e) => { state[id] = e.target.value; render(); });
  }
  $("prev-prompt").addEventListener("click", () => stepPrompt(-1));
  $("next-prompt").addEventListener("click", () => stepPrompt(1));
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
    const actions = {
      s: () => stepStat(1), S: () => stepStat(-1), n: () => stepPrompt(1), p: () => stepPrompt(-1),
      m: () => { state.over = state.over === "mean" ? "prompt" : "mean"; render(); },
      "?": () => $("help").classList.toggle("hidden"),
    };
    if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
  });
  window.addEventListener("resize", () => data.stats && renderHeatmap(shownValues()));
}

async function start() {
  try {
    data.models = await fetchJsonl(MODELS_URL);
    if (!data.models.length) throw new Error(`${MODELS_URL}: no models (run build_index.py)`);
    if (!data.models.some((m) => m.model_dir === state.model)) state.model = data.models[0].model_dir;
    data.colormap = await loadColormap();
    await loadModel();
  } catch (e) {
    showError(e.message);
    return;
  }
  render();
}

applyTheme();
$("theme").append(themeToggle());
wire();
start();
