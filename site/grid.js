// Grid view: choose models, heads, prompts and figures; see their images side by side.
// Everything the view shows is in the URL (url.js PAGES.grid), so a link reproduces it.
import {
  FIGURES_URL, MODELS_URL, fetchData, fetchEach, figureOutputs, formatHeads, headKey, isStored, loadFigureError,
  loadFigureImage, loadStatRows, openPromptIndex, parseHeads, range, statsUrl,
} from "./data.js";
import { $, debounce, el, formatNumber, notForPage, oneLine, showError, startPage } from "./dom.js";
import { kindBadges, loadHeadKinds } from "./kinds.js";
import { changeState, go, headPageUrl, headsUrl, latest, readState, singleUrl, writeState } from "./url.js";

const KEYS = ["model", "prompt", "layer", "head", "figure"];
const PAGE_SIZE = 100;
const CHUNK = 500;  // tiles added to the page at a time; more are added as the last ones scroll into view
const MAX_SELECT = 1000;  // "select all matching" cap: keeps the URL and the grid a sensible size

const state = readState("grid");
const data = {
  models: [],            // rows of models.jsonl
  outputs: [],           // [{output, figure}] of figures.jsonl
  indexes: new Map(),    // model dir -> promise of its prompt index (data.openPromptIndex)
  stats: new Map(),      // model dir -> its stats.json (null without statistics)
  table: null,           // the prompt index the table lists: the first selected model's
  search: null,          // {key, matches}: the table's search and its rows (null: no search)
  total: 0,              // rows the table pages through
  page: [],              // the records of the table's page
  chosen: new Map(),     // selected prompt hash -> Map(model dir -> {row, record}) of the selected models having it
  values: new Map(),     // `${model}/${stat}/${row}` -> one prompt's values of the statistic, [layer][head]
};
const list = (value) => (value ? value.split(",") : []);

/** The one way to change the state (url.changeState): load and draw, then write the URL. */
const setState = (patch, ...renders) => changeState(state, patch, renders, () => writeState("grid", state)).catch(showError);

/** A step of setState that loads: a failure is shown and the renders after it draw what there is. */
const loading = (...loads) => async () => {
  try {
    for (const load of loads) await load();
  } catch (e) {
    showError(e);
  }
};

/** The steps that reload the prompt table's page and show it. */
const RELOAD_TABLE = [loading(loadPage), renderPrompts];

// ---- load ----

async function load() {
  const [models, figures] = await fetchEach([fetchData(MODELS_URL, "jsonl"), fetchData(FIGURES_URL, "jsonl")]);
  if (!models.length) throw new Error(`${MODELS_URL}: no models yet (run compute_activations.py)`);
  data.models = models;
  data.outputs = figureOutputs(figures);
  const known = new Set(models.map((m) => m.model_dir));
  if (!list(state.models).some((m) => known.has(m))) state.models = models[0].model_dir;
  if (!state.figures && data.outputs.length) {
    state.figures = data.outputs.some((o) => o.output === "raw") ? "raw" : data.outputs[0].output;
  }
  await loadModels();
  if (!state.prompts && data.table?.count) {  // build_index.py names a prompt where the kinds show, if it can
    const first = models.find((m) => m.model_dir === list(state.models)[0]);
    state.prompts = first?.start_prompt ?? (await data.table.rows(0, 1))[0].hash;
  }
  await loadChosen();
}

/** A model's prompt index, opened once. */
function promptIndex(model) {
  if (!data.indexes.has(model)) {
    data.indexes.set(model, openPromptIndex(model).catch((e) => {
      data.indexes.delete(model);
      throw e;
    }));
  }
  return data.indexes.get(model);
}

/** Open the prompt index (and stats.json) of every selected model; the table lists the first one's prompts. */
async function loadModels() {
  const models = selectedModels();
  await fetchEach(models.flatMap((m) => [
    promptIndex(m.model_dir),
    !data.stats.has(m.model_dir) && fetchData(statsUrl(m.model_dir)).then((s) => data.stats.set(m.model_dir, s)),
  ]));
  data.table = models.length ? await promptIndex(models[0].model_dir) : null;
  await loadPage();
}

const pageLoaded = latest();

/** The table's page of records: the search's matching rows (run again only when the search changed) or all
 * rows, in hash or token order. */
async function loadPage() {
  const current = pageLoaded(), index = data.table;
  if (!index) {
    Object.assign(data, { search: null, total: 0, page: [] });
    return;
  }
  const key = `${index.model}\n${state.q}`;
  const search = data.search?.key === key ? data.search : { key, matches: await index.matches(state.q) };
  const total = search.matches ? search.matches.length : index.count;
  const page = Math.min(Math.max(0, Math.floor(+state.page) || 0), Math.max(0, Math.ceil(total / PAGE_SIZE) - 1));
  const records = await index.at(await tableRows(index, search.matches, page * PAGE_SIZE, PAGE_SIZE));
  if (!current()) return;  // a newer search or page is loading
  Object.assign(data, { search, total, page: records });
  state.page = String(page);
}

/** Rows [start, start + n) of the table: of the search's matches when searching, in hash or token order. */
function tableRows(index, matches, start, n) {
  if (state.order) return index.ordered(state.order, start, n, matches && new Set(matches));
  if (matches) return matches.slice(start, start + n);
  return range(Math.max(0, Math.min(n, index.count - start))).map((i) => start + i);
}

const chosenLoaded = latest();

/** Each selected prompt's row in every selected model's index, then the statistic's values of those rows. */
async function loadChosen() {
  const current = chosenLoaded(), hashes = [...new Set(list(state.prompts))], models = selectedModels();
  const found = await Promise.all(models.map(async (m) => {
    const index = await promptIndex(m.model_dir);
    return Promise.all(hashes.map((h) => index.find(h)));
  }));
  if (!current()) return;
  data.chosen = new Map(hashes.map((h, i) => [h, new Map(models.flatMap((m, j) => (found[j][i] ? [[m.model_dir, found[j][i]]] : [])))]));
  await loadValues();
}

/** The chosen statistic's values of the selected prompts, by byte ranges of its table (never the whole table). */
async function loadValues() {
  if (!state.stat) return;
  await fetchEach(selectedModels().map(async (m) => {
    const stats = data.stats.get(m.model_dir), key = (row) => `${m.model_dir}/${state.stat}/${row}`;
    if (!stats?.stats?.[state.stat]) return;
    const rows = [...data.chosen.values()].map((byModel) => byModel.get(m.model_dir)?.row)
      .filter((row) => row !== undefined && !data.values.has(key(row)));
    if (!rows.length) return;
    for (const [row, values] of await loadStatRows(m.model_dir, stats, state.stat, rows)) data.values.set(key(row), values);
  }));
}

const selectedModels = () => {
  const chosen = new Set(list(state.models));
  return data.models.filter((m) => chosen.has(m.model_dir));
};

/** The largest layer x head shape among the selected models (the picker's size). */
function headShape() {
  const models = selectedModels();
  return [Math.max(1, ...models.map((m) => m.n_layers)), Math.max(1, ...models.map((m) => m.n_heads))];
}

/** The heads of the spec that the selected models have (a spec kept from a larger model still works). */
function selectedHeads() {
  const [nL, nH] = headShape();
  try {
    return parseHeads(state.heads, nL, nH, false);
  } catch {
    return [];  // renderHeads shows why the spec is wrong
  }
}

// ---- render ----

function render() {
  renderModels();
  renderHeads();
  renderFigures();
  renderPrompts();
  renderLayout();
  applySize();
  renderControlsShown();
  renderGrid();
}

/** The controls, or (controls=hide) one line saying what they select, so the patterns get the screen. */
function renderControlsShown() {
  const hide = state.controls === "hide";
  $("controls").classList.toggle("hidden", hide);
  $("controls-summary").classList.toggle("hidden", !hide);
  $("toggle-controls").textContent = hide ? "show controls" : "hide controls";
  if (!hide) return;
  const prompts = list(state.prompts).length;
  $("controls-summary").textContent = [
    `models ${list(state.models).join(", ")}`, `heads ${state.heads}`, `figures ${state.figures || "–"}`,
    `${prompts} prompt${prompts === 1 ? "" : "s"}`, state.group && `group by ${state.group}`,
    state.sort && `sort by ${state.sort}${state.desc ? " (descending)" : ""}`, state.stat && `statistic ${state.stat}`,
  ].filter(Boolean).join(" · ");
}

function toggleControls() {
  setState({ controls: state.controls === "hide" ? "" : "hide" }, renderControlsShown);
}

function renderModels() {
  const chosen = new Set(list(state.models));
  $("models").replaceChildren(...data.models.map((m) => el("label", { class: "choice" },
    el("input", {
      type: "checkbox", value: m.model_dir, checked: chosen.has(m.model_dir),
      onchange: (e) => toggleModel(m.model_dir, e.target.checked),
    }),
    ` ${m.model_name ?? m.model_dir} `,
    el("span", { class: "muted" }, `${m.n_layers}\u00d7${m.n_heads}, ${m.n_prompts ?? "?"} prompts`),
  )));
}

function renderHeads() {
  const [nL, nH] = headShape();
  const spec = $("heads-spec");
  if (document.activeElement !== spec) spec.value = state.heads;
  try {
    parseHeads(state.heads, nL, nH);
    $("heads-error").textContent = "";
  } catch (e) {
    $("heads-error").textContent = e.message;
  }
  const on = new Set(selectedHeads().map(([l, h]) => `${l},${h}`));
  const picker = $("head-picker");
  const size = nL > 6 || nL * nH > 400 ? 10 : 16;  // a GPT-2's 12 layers or more get a smaller picker
  picker.classList.toggle("small", size < 16);
  picker.style.gridTemplateColumns = `auto repeat(${nH}, ${size}px)`;
  picker.replaceChildren(
    el("div", { class: "pick-label", dataset: { all: "1" }, title: "all / none" }, "*"),
    ...range(nH).map((h) => el("div", { class: "pick-label", dataset: { h }, title: `head ${h} in every layer` }, h)),
    ...range(nL).flatMap((l) => [
      el("div", { class: "pick-label", dataset: { l }, title: `every head of layer ${l}` }, `L${l}`),
      ...range(nH).map((h) => el("div", {
        class: on.has(`${l},${h}`) ? "pick on" : "pick", dataset: { l, h }, title: headKey(l, h),
      })),
    ]),
  );
}

function renderFigures() {
  const chosen = new Set(list(state.figures));
  if (!data.outputs.length) {
    $("figures").replaceChildren(el("div", { class: "muted" }, "no figures registered: run render_figures.py"));
    return;
  }
  $("figures").replaceChildren(...data.outputs.map(({ output, figure }) => el("label", {
    class: "choice", title: figure.doc || "",
  },
  el("input", {
    type: "checkbox", value: output, checked: chosen.has(output),
    onchange: (e) => {
      const next = data.outputs.map((o) => o.output)
        .filter((o) => (o === output ? e.target.checked : chosen.has(o)));
      setState({ figures: next.join(",") }, renderFigures, renderGrid);
    },
  }),
  ` ${output}`)));
}

// ---- the prompt table ----

function renderPrompts() {
  const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  const chosen = new Set(list(state.prompts));
  $("prompt-table").tBodies[0].replaceChildren(...data.page.map((p) => el("tr", {
    class: chosen.has(p.hash) ? "selected" : null, dataset: { hash: p.hash },
  },
  el("td", { class: "check" }, el("input", { type: "checkbox", checked: chosen.has(p.hash), tabindex: -1 })),
  el("td", { class: "text", title: fullText(p) }, oneLine(p.text)),
  el("td", { class: "num" }, p.n_tokens),
  el("td", { class: "meta mono" }, metaText(p.meta)))));
  $("prompt-count").textContent = `${chosen.size} selected \u00b7 ${data.total} of ${data.table?.count ?? 0} match`;
  $("page-info").textContent = `page ${+state.page + 1} / ${pages}`;
  $("sort-tokens").textContent = { tokens: "tokens \u2191", "-tokens": "tokens \u2193" }[state.order] ?? "tokens";
  $("prev-page").disabled = +state.page <= 0;
  $("next-page").disabled = +state.page >= pages - 1;
}

/** A row's text as far as the index has it (its first characters when "snippet"). */
const fullText = (record) => (record.snippet ? `${record.text}\u2026` : record.text);

function metaText(meta) {
  if (!meta || !Object.keys(meta).length) return "";
  return Object.entries(meta).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ");
}

// ---- layout ----

function renderLayout() {
  const option = (value, label, current) => el("option", { value, selected: value === current }, label);
  $("size").value = state.size;
  $("cols").value = state.cols;
  $("group").replaceChildren(option("", "nothing", state.group), ...KEYS.map((k) => option(k, k, state.group)));
  const statNames = [...new Set(selectedModels().flatMap((m) => Object.keys(data.stats.get(m.model_dir)?.stats ?? {})))];
  const sortKeys = statNames.length ? [...KEYS, "stat"] : KEYS;
  $("sort").replaceChildren(option("", "natural order", state.sort), ...sortKeys.map((k) => option(k, k, state.sort)));
  $("stat").replaceChildren(option("", statNames.length ? "none" : "none computed", state.stat),
    ...statNames.map((s) => option(s, s, state.stat)));
  $("stat").disabled = !statNames.length;
  for (const node of document.querySelectorAll(".stat-only")) node.classList.toggle("hidden", !state.stat);
  $("stat-min").value = state.min;
  $("stat-max").value = state.max;
  $("desc").checked = state.desc === "1";
  $("heads-link").href = headsUrl({ model: list(state.models)[0], stat: state.stat });
}

function applySize() {
  const cols = Math.round(+state.cols);
  $("grid").style.setProperty("--tile-size", `${Math.max(40, +state.size || 160)}px`);
  $("grid").style.gridTemplateColumns = cols > 0 ? `repeat(${cols}, minmax(0, 1fr))` : "";
  $("size").disabled = cols > 0;
  refitImages();
}

// ---- tiles ----

/** Every (model, prompt, head, figure output) the state selects, filtered by the statistic range and sorted. */
function tiles() {
  const heads = selectedHeads();
  const outputs = data.outputs.filter((o) => list(state.figures).includes(o.output));
  const prompts = [...new Set(list(state.prompts))];
  const out = [];
  for (const m of selectedModels()) {
    for (const hash of prompts) {
      const found = data.chosen.get(hash)?.get(m.model_dir);
      if (!found) continue;
      for (const [layer, head] of heads) {
        if (layer >= m.n_layers || head >= m.n_heads) continue;
        const stored = isStored(found.record, m, layer, head);
        for (const o of outputs) {
          out.push({ model: m.model_dir, nHeads: m.n_heads, prompt: hash, row: found.row, layer, head, figure: o.output, stored });
        }
      }
    }
  }
  if (state.stat) {
    for (const t of out) t.value = data.values.get(`${t.model}/${state.stat}/${t.row}`)?.[t.layer]?.[t.head] ?? NaN;
  }
  return sortTiles(filterTiles(out));
}

function filterTiles(all) {
  const min = state.min === "" ? -Infinity : Number(state.min);
  const max = state.max === "" ? Infinity : Number(state.max);
  if (!state.stat || (min === -Infinity && max === Infinity)) return all;
  return all.filter((t) => t.value >= min && t.value <= max);
}

/** Order: the group key, then the sort key, then model, prompt, layer, head, figure; NaN statistics last. */
function sortTiles(all) {
  const rank = {
    model: new Map(data.models.map((m, i) => [m.model_dir, i])),
    prompt: new Map(list(state.prompts).map((h, i) => [h, i])),
    figure: new Map(data.outputs.map((o, i) => [o.output, i])),
  };
  const keyOf = {
    model: (t) => rank.model.get(t.model), prompt: (t) => rank.prompt.get(t.prompt),
    layer: (t) => t.layer, head: (t) => t.head, figure: (t) => rank.figure.get(t.figure),
    stat: (t) => (Number.isNaN(t.value) ? Infinity : state.desc === "1" ? -t.value : t.value),
  };
  const order = [...new Set([state.group, state.sort, ...KEYS].filter((k) => keyOf[k] && (k !== "stat" || state.stat)))];
  return all.sort((a, b) => {
    for (const k of order) {
      const d = keyOf[k](a) - keyOf[k](b);
      if (d) return d;
    }
    return 0;
  });
}

/** A tile's prompt as its model's index has it. */
const record = (tile) => data.chosen.get(tile.prompt).get(tile.model).record;

function groupLabel(tile, key) {
  if (key === "model") return tile.model;
  if (key === "prompt") return oneLine(record(tile).text);
  if (key === "layer") return `layer ${tile.layer}`;
  if (key === "head") return `head ${tile.head}`;
  return tile.figure;
}

let imageObserver = null;
let moreObserver = null;
let firstImageMarked = false;
let imageUrls = [];  // the tiles' Blob URLs, revoked when the grid is rebuilt

/** Rebuild the grid: tiles are added CHUNK at a time and load their image when near the viewport. */
function renderGrid() {
  const all = tiles();
  const grid = $("grid");
  imageObserver?.disconnect();
  moreObserver?.disconnect();
  grid.replaceChildren();
  imageUrls.forEach((url) => URL.revokeObjectURL(url));
  imageUrls = [];
  imageObserver = new IntersectionObserver(onTilesVisible, { rootMargin: "300px 0px" });
  const models = new Set(all.map((t) => t.model));
  $("summary").textContent = `${all.length} image${all.length === 1 ? "" : "s"}`;
  $("grid-info").textContent = all.length ? "" : emptyReason();
  let shown = 0;
  let lastGroup = null;
  const addChunk = () => {
    const nodes = [];
    for (const t of all.slice(shown, shown + CHUNK)) {
      const group = state.group ? groupLabel(t, state.group) : null;
      if (group !== null && group !== lastGroup) nodes.push(el("h3", { class: "group-title" }, group));
      lastGroup = group;
      nodes.push(tileElement(t, models.size > 1));
    }
    shown += CHUNK;
    grid.append(...nodes);
    for (const node of nodes) if (node.classList.contains("tile")) imageObserver.observe(node);
    if (shown < all.length) {
      const sentinel = el("div", { class: "more muted" }, `${all.length - shown} more\u2026`);
      grid.append(sentinel);
      moreObserver = new IntersectionObserver((entries) => {
        if (!entries.some((e) => e.isIntersecting)) return;
        moreObserver.disconnect();
        sentinel.remove();
        addChunk();
      }, { rootMargin: "600px 0px" });
      moreObserver.observe(sentinel);
    }
  };
  addChunk();
}

function emptyReason() {
  if (!selectedModels().length) return "Select a model.";
  if (!list(state.prompts).length) return "Select prompts in the table above.";
  if (!selectedHeads().length) return "Select heads (picker or spec like L0-3H*).";
  if (!list(state.figures).length) return "Select a figure.";
  return "No image matches the statistic range.";
}

const tileData = new WeakMap();

function tileElement(t, showModel) {
  const prompt = record(t);
  const where = headKey(t.layer, t.head);
  const node = el("a", {
    class: "tile", href: singleUrl({ model: t.model, prompt: t.prompt, layer: t.layer, head: t.head, figure: t.figure }),
    title: `${t.model} ${where} ${t.figure}\n${fullText(prompt)}`,
    dataset: { model: t.model, prompt: t.prompt, layer: t.layer, head: t.head, figure: t.figure },
  },
  el("div", { class: "frame" }),
  el("div", { class: "caption" },
    el("div", {},
      t.value !== undefined ? el("span", { class: "stat" }, formatNumber(t.value)) : null,
      el("span", {
        class: "where head-page-link", role: "link", title: `${where}'s head page: what it does across all prompts`,
        dataset: { href: headPageUrl(t) }, onclick: openHeadPage,
      }, where), tileKinds(t), ` \u00b7 ${t.figure}`,
      showModel ? el("span", { class: "muted" }, ` \u00b7 ${t.model}`) : null),
    el("div", { class: "caption-text" }, oneLine(prompt.text))));
  tileData.set(node, t);
  return node;
}

/** A tile's head label opens the head's page (a link inside the tile's link would be invalid HTML); with Ctrl or
 * Cmd, in a new tab. */
function openHeadPage(e) {
  e.preventDefault();
  e.stopPropagation();
  if (e.ctrlKey || e.metaKey) window.open(e.currentTarget.dataset.href);
  else go(e.currentTarget.dataset.href);
}

/** A tile's head's kinds (heads.json, fetched once per model), filled in when they arrive. */
function tileKinds(t) {
  const slot = el("span", { class: "tile-kinds" });
  loadHeadKinds(t.model).then((info) => slot.replaceChildren(kindBadges(info, t.layer, t.head))).catch(showError);
  return slot;
}

function onTilesVisible(entries) {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    imageObserver.unobserve(entry.target);
    loadImage(entry.target).catch(showError);
  }
}

/** A tile's image, read from its figure pack (two range requests), or what stands in for it. */
async function loadImage(node) {
  const t = tileData.get(node);
  const frame = node.querySelector(".frame");
  if (!t.stored) {
    frame.replaceChildren(el("div", { class: "not-stored" }, "not stored", el("br"), headKey(t.layer, t.head)));
    return;
  }
  const image = await loadFigureImage(t.model, t.prompt, t.layer, t.head, t.nHeads, t.figure);
  if (!frame.isConnected) return;  // the grid was rebuilt meanwhile
  if (!image) {
    await showMissing(frame, t);
    return;
  }
  const img = el("img", { alt: `${headKey(t.layer, t.head)} ${t.figure}`, decoding: "async", draggable: "false" });
  img.addEventListener("load", () => {
    if (!firstImageMarked) {
      firstImageMarked = true;
      performance.mark("first-image");  // read by the browser tests and bench/bench_site.py
    }
    fitImage(frame);
  });
  img.addEventListener("error", () => showMissing(frame, t).catch(showError));
  img.src = URL.createObjectURL(image);
  imageUrls.push(img.src);
  frame.replaceChildren(img);
}

/** Show a tile's image as is when the tile is at least its size, else shrink it into a canvas by averaging:
 * a browser shrinks a pixelated image by skipping rows and columns, which can hide a one-token stripe. */
function fitImage(frame) {
  const img = frame.querySelector("img");
  if (!img?.naturalWidth) return;
  frame.querySelector("canvas")?.remove();
  const width = Math.round(frame.clientWidth * devicePixelRatio);
  img.classList.toggle("hidden", img.naturalWidth > width);
  if (img.naturalWidth <= width) return;
  const full = el("canvas", { width: img.naturalWidth, height: img.naturalHeight });
  full.getContext("2d").drawImage(img, 0, 0);  // 1:1, so every pixel is exact
  const small = el("canvas", { width, height: Math.max(1, Math.round((width * img.naturalHeight) / img.naturalWidth)) });
  const ctx = small.getContext("2d");
  ctx.imageSmoothingQuality = "high";  // area averaging: a 1-pixel line stays visible, dimmer
  ctx.drawImage(full, 0, 0, small.width, small.height);
  frame.append(small);
}

const refitImages = debounce(() => document.querySelectorAll(".tile .frame").forEach(fitImage), 150);

/** A failed figure shows its error text; an image never rendered shows a grey placeholder naming it. */
async function showMissing(frame, t) {
  const text = await loadFigureError(t.model, t.prompt, t.layer, t.head, t.figure);
  frame.replaceChildren(text === null
    ? el("div", { class: "no-image" }, "no image", el("br"), t.figure)
    : el("div", { class: "figure-error", title: text }, `figure failed:\n${text}`));
}

// ---- wire ----

function toggleModel(model, on) {
  const chosen = list(state.models).filter((m) => m !== model);
  if (on) chosen.push(model);
  const models = data.models.map((m) => m.model_dir).filter((m) => chosen.includes(m)).join(",");
  return setState({ models }, loading(loadModels, loadChosen), renderHeads, renderPrompts, renderLayout, renderGrid);
}

function applyHeadSpec() {
  const [nL, nH] = headShape();
  const spec = $("heads-spec").value.replace(/\s+/g, "");
  try {
    parseHeads(spec, nL, nH);
  } catch (e) {
    $("heads-error").textContent = e.message;  // a typing mistake: said next to the field, not a page error
    return;
  }
  setState({ heads: spec }, renderHeads, renderGrid);
}

/** Toggle a cell, a layer row, a head column or everything; the spec is rewritten in its shortest form. */
function onPickerClick(event) {
  const target = event.target.closest("[data-l],[data-h],[data-all]");
  if (!target) return;
  const [nL, nH] = headShape();
  const { l, h } = target.dataset;
  const group = range(nL).flatMap((li) => range(nH).map((hi) => [li, hi]))
    .filter(([li, hi]) => (l === undefined || +l === li) && (h === undefined || +h === hi));
  const on = new Set(selectedHeads().map(([li, hi]) => li * nH + hi));
  const allOn = group.every(([li, hi]) => on.has(li * nH + hi));
  for (const [li, hi] of group) allOn ? on.delete(li * nH + hi) : on.add(li * nH + hi);
  const heads = [...on].sort((a, b) => a - b).map((i) => [Math.floor(i / nH), i % nH]);
  setState({ heads: formatHeads(heads, nL, nH) }, renderHeads, renderGrid);
}

/** Select these prompts: load their rows in each model's index and their values, then show them. */
function choose(prompts) {
  return setState({ prompts: prompts.join(",") }, loading(loadChosen), renderPrompts, renderGrid);
}

function selectPrompts(records) {
  const chosen = list(state.prompts);
  const seen = new Set(chosen);
  for (const record of records) if (!seen.has(record.hash)) chosen.push(record.hash);
  return choose(chosen);
}

/** "select all matching": the table's first MAX_SELECT rows. */
async function selectMatching() {
  const index = data.table;
  if (!index) return;
  try {
    await selectPrompts(await index.at(await tableRows(index, data.search?.matches, 0, MAX_SELECT)));
  } catch (e) {
    showError(e);
  }
}

function onPromptClick(event) {
  const tr = event.target.closest("tr[data-hash]");
  if (!tr) return;
  const chosen = list(state.prompts);
  const hash = tr.dataset.hash;
  choose(chosen.includes(hash) ? chosen.filter((h) => h !== hash) : [...chosen, hash]);
}

function wire() {
  $("heads-spec").addEventListener("keydown", (e) => e.key === "Enter" && applyHeadSpec());
  $("heads-spec").addEventListener("change", applyHeadSpec);
  $("head-picker").addEventListener("click", onPickerClick);
  $("search").value = state.q;
  $("search").addEventListener("input", debounce(() => setState({ q: $("search").value, page: "0" }, ...RELOAD_TABLE), 120));
  $("select-page").addEventListener("click", () => selectPrompts(data.page));
  $("select-matching").addEventListener("click", selectMatching);
  $("clear-prompts").addEventListener("click", () => choose([]));
  $("prev-page").addEventListener("click", () => setState({ page: String(Math.max(0, +state.page - 1)) }, ...RELOAD_TABLE));
  $("next-page").addEventListener("click", () => setState({ page: String(+state.page + 1) }, ...RELOAD_TABLE));
  $("prompt-table").tBodies[0].addEventListener("click", onPromptClick);
  $("sort-tokens").addEventListener("click", () => {
    const order = { "": "tokens", tokens: "-tokens", "-tokens": "" }[state.order] ?? "";
    setState({ order, page: "0" }, ...RELOAD_TABLE);
  });
  $("size").addEventListener("input", () => setState({ size: $("size").value }, applySize));
  $("cols").addEventListener("input", debounce(() => setState({ cols: $("cols").value }, applySize), 200));
  $("group").addEventListener("change", () => setState({ group: $("group").value }, renderGrid));
  $("sort").addEventListener("change", () => setState({ sort: $("sort").value }, renderGrid));
  $("stat").addEventListener("change", () => setState({ stat: $("stat").value }, loading(loadValues), renderLayout, renderGrid));
  const onRange = debounce(() => setState({ min: $("stat-min").value.trim(), max: $("stat-max").value.trim() }, renderGrid), 250);
  $("stat-min").addEventListener("input", onRange);
  $("stat-max").addEventListener("input", onRange);
  $("desc").addEventListener("change", () => setState({ desc: $("desc").checked ? "1" : "" }, renderGrid));
  $("toggle-controls").addEventListener("click", toggleControls);
  $("controls-summary").addEventListener("click", toggleControls);
  document.addEventListener("keydown", (e) => {
    if (e.key === "c" && !notForPage(e)) {
      toggleControls();
    }
  });
}

startPage({ load, render: () => setState({}, render), wire });
