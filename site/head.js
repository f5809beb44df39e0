// Head page (head.html?model=M&head=L5H1): what one head does across the whole dataset. Its kinds and similar heads
// (heads.json), each statistic's mean, rank, quantiles, histogram and extreme prompts (its head_pages.bin block;
// stats.json where a data dir has none), examples across the range of its largest weight with the head's sparse
// attention drawn on their tokens (examples.bin), its queries, keys and outputs at sampled positions, each in 2-D by
// PCA (projections.bin), its top query and key tokens and look-back (head_pages.bin), and the same head in the
// model's training checkpoints. Each file may be missing: the page then says which command
// writes it. What it fetches is this head's blocks by byte range, never a whole file that grows with the prompts.
import {
  MODELS_URL, checkpointOf, examplesIndexUrl, examplesUrl, fetchData, fetchEach, fetchJsonBlocks, headKey,
  headPagesIndexUrl, headPagesUrl, isStored, loadColormap, loadHeadExamples, loadHeadProjections, loadProjectionPoints,
  openPromptIndex, projectionsIndexUrl, range, rankHeads, statHeadsUrl, statMeans, statsUrl,
} from "./data.js";
import {
  $, debounce, el, fillSelect, formatNumber, histogramSvg, notForPage, promptList, showError, startPage, svgEl,
  visibleToken,
} from "./dom.js";
import { kindBadges, kindsTable, loadHeadKinds, similarHeads } from "./kinds.js";
import {
  COLOURINGS, drawProjections, markPoint, pointInfo, projectionColours, projectionPoints, setTitle,
} from "./projections.js";
import { changeState, gridUrl, headPageUrl, latest, pageUrl, readState, singleUrl, writeState } from "./url.js";

const state = readState("head");
const data = {
  models: [], model: null,  // models.jsonl, and this model's row
  layer: 0, head: 0,
  kinds: null,              // heads.json; null when there is none
  pages: null,              // {index: head_pages.json, block: this head's block or null}; null without head_pages.json
  stats: null,              // stats.json (the statistics without a head page, and each checkpoint's); null without
  examples: null,           // {index: examples.json, block: this head's or null, prompts: Map(hash -> prompt block)}
  projections: null,        // {index: projections.json, points: its points' block, head: this head's record}
  projectionPoints: new Map(),  // model dir -> promise of {index, points} (null: no projections)
  colormap: null,           // the projections' colours by position or weight, fetched when first needed
  ranks: new Map(),         // statistic -> {rank, of}: this head's rank by mean among the model's (rankHeads)
  records: new Map(),       // an example's hash -> its prompt index row (null: not in the index)
  statHeads: new Map(),     // `${model}/${stat}` -> promise of that statistic's heads.json (no head page: its lists)
  indexes: new Map(),       // model dir -> promise of its prompt index
  otherStats: new Map(),    // model dir -> promise of its stats.json (the checkpoints)
};

// ---- load ----

async function load() {
  data.models = await fetchData(MODELS_URL, "jsonl");
  if (!data.models.length) throw new Error(`${MODELS_URL}: no models yet (run compute_activations.py)`);
  if (!data.models.some((m) => m.model_dir === state.model)) state.model = data.models[0].model_dir;
  await loadHead();
}

const loaded = latest();  // a load that a newer one (another head or model) overtook keeps nothing

/** This head's files: kinds, head page block, statistics, examples with their prompts, and whether each example's
 * patterns are stored (the head page block says; an older one without it, the prompt index). */
async function loadHead() {
  const current = loaded(), model = data.models.find((m) => m.model_dir === state.model);
  const [layer, head] = chosenHead(model), i = layer * model.n_heads + head;
  const [kinds, pages, stats, examples, projections] = await fetchEach([
    loadHeadKinds(state.model), loadHeadPage(state.model, model, i), modelStats(state.model),
    loadExamples(state.model, model, layer, head), loadProjections(state.model, model, layer, head), loadColours(),
  ]);
  const hashes = [...new Set(examples?.block?.examples.map((e) => e.hash) ?? [])];
  const patterns = pages?.block?.example_patterns;
  const found = patterns  // {record}: what isStored reads, without a prompt index chunk per example
    ? hashes.map((h) => ({ record: h in patterns ? { stored: true, heads: patterns[h] === "*" ? undefined : patterns[h] }
      : { stored: false } }))
    : await promptIndex(state.model).then((index) => Promise.all(hashes.map((h) => index.find(h))));
  if (!current()) return;
  Object.assign(data, { model, layer, head, kinds, pages, stats, examples, projections, ranks: headRanks(stats, layer, head) });
  data.records = new Map(hashes.map((h, j) => [h, found[j]?.record ?? null]));
  state.head = headKey(layer, head);
  if (!headStats().some((s) => s.name === state.stat)) state.stat = defaultStat();
}

/** The head the URL names, [layer, head]; the first head when it names none or one this model does not have. */
function chosenHead(model) {
  const m = /^L(\d+)H(\d+)$/i.exec(state.head.trim());
  if (m && Number(m[1]) < model.n_layers && Number(m[2]) < model.n_heads) return [Number(m[1]), Number(m[2])];
  if (state.head) {
    showError(`head ${state.head}: ${state.model} has ${model.n_layers} layers x ${model.n_heads} heads; showing L0H0`);
  }
  return [0, 0];
}

function promptIndex(model) {
  if (!data.indexes.has(model)) data.indexes.set(model, Promise.resolve(openPromptIndex(model)));
  return data.indexes.get(model);
}

function modelStats(model) {
  if (!data.otherStats.has(model)) data.otherStats.set(model, fetchData(statsUrl(model)));
  return data.otherStats.get(model);
}

/** A file made for another shape of model (a model dir computed anew) is stale: said, not misread. */
function checkShape(url, index, model, writer) {
  if (index.n_layers !== model.n_layers || index.n_heads !== model.n_heads) {
    throw new Error(`${url}: made for ${index.n_layers} x ${index.n_heads} heads, the model has `
      + `${model.n_layers} x ${model.n_heads}; re-run ${writer}`);
  }
}

/** {index, block} of head_pages.json/.bin; null when the model has no head_pages.json. */
async function loadHeadPage(dir, model, i) {
  const index = await fetchData(headPagesIndexUrl(dir));
  if (!index) return null;
  checkShape(headPagesIndexUrl(dir), index, model, "build_index.py");
  const blocks = index.heads[i] ? await fetchJsonBlocks(headPagesUrl(dir), [index.heads[i]]) : null;
  return { index, block: blocks?.[0] ?? null, binMissing: !!index.heads[i] && !blocks };
}

/** A head's examples (data.loadHeadExamples), when examples.json was made for this model's shape. */
async function loadExamples(dir, model, layer, head) {
  const examples = await loadHeadExamples(dir, layer, head);
  if (examples) checkShape(examplesIndexUrl(dir), examples.index, model, "compute_activations.py");
  return examples;
}

/** A head's projections: the model's points (fetched once) and the head's record; null without projections.json. */
async function loadProjections(dir, model, layer, head) {
  if (!data.projectionPoints.has(dir)) data.projectionPoints.set(dir, loadProjectionPoints(dir));
  const shared = await data.projectionPoints.get(dir);
  if (!shared) return null;
  checkShape(projectionsIndexUrl(dir), shared.index, model, "compute_activations.py");
  return { ...shared, head: await loadHeadProjections(dir, shared.index, layer, head) };
}

/** The colormap, once the projections are coloured by a number (position, weight). */
async function loadColours() {
  if (!COLOURINGS[state.pcolor]) state.pcolor = "token";
  if (!data.colormap && (state.pcolor === "position" || state.pcolor === "weight")) data.colormap = await loadColormap();
}

// ---- what is shown ----

/** The model as compute_activations.py takes it: its name, and --checkpoint N for a training checkpoint. */
function modelArgs() {
  const { base, step } = checkpointOf(data.model.model_name ?? data.model.model_dir);
  return step === null ? base : `${base} --checkpoint ${step}`;
}
const here = () => ({ model: state.model, layer: data.layer, head: data.head });

/** The head's rank by mean in each statistic of stats.json, by the site's one rank rule (tied heads share one). */
function headRanks(stats, layer, head) {
  return new Map(Object.keys(stats?.stats ?? {}).map((name) => {
    const ranked = rankHeads(statMeans(stats, name)), me = ranked.find((r) => r.layer === layer && r.head === head);
    return [name, { rank: me?.rank ?? null, of: ranked.length }];
  }));
}

/** Every statistic of this head as {name, doc, mean, rank, of, quantiles, hist, top, bottom, prompts}: its head page
 * block, else stats.json (hist, top and bottom undefined: the opened statistic's heads.json brings them). */
function headStats() {
  const block = data.pages?.block, { layer: l, head: h } = data;
  if (block) {
    return Object.entries(block.stats).map(([name, s]) => ({ name, ...s, ...data.ranks.get(name), prompts: block.prompts }));
  }
  return Object.entries(data.stats?.stats ?? {}).map(([name, s]) => ({
    name, doc: s.doc, mean: s.mean[l][h], ...data.ranks.get(name),
    quantiles: Object.fromEntries(Object.entries(s.quantiles ?? {}).map(([q, table]) => [q, table[l][h]])),
  }));
}

/** The statistic opened first: the one the examples are chosen by, else the first. */
function defaultStat() {
  const names = headStats().map((s) => s.name), chosenBy = data.examples?.index.statistic;
  return names.includes(chosenBy) ? chosenBy : names[0] ?? "";
}

/** The statistic's heads.json (histogram, top and bottom prompts of every head), fetched once. */
function statHeads(name) {
  const key = `${state.model}/${name}`;
  if (!data.statHeads.has(key)) data.statHeads.set(key, fetchData(statHeadsUrl(state.model, name)));
  return data.statHeads.get(key);
}

const QUANTILES = [["0.05", "5%"], ["0.25", "25%"], ["0.5", "median"], ["0.75", "75%"], ["0.95", "95%"]];

/** 1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, ... 21st. */
function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ones === 1 ? "st" : ones === 2 ? "nd" : ones === 3 ? "rd" : "th";
  return `${n}${suffix}`;
}

/** A missing file: what it holds, the command that writes it, and what that command needs. */
function missingNote(file, what, command, why) {
  return el("div", { class: "notice missing", dataset: { missing: file } },
    el("p", {}, `${file} is missing: ${what}. To make it, run`), el("code", { class: "command" }, command),
    el("p", { class: "muted" }, `${why} Add --save-path DIR when the data dir is not attn_data.`));
}

/** The command that computes the model's prompts (their statistics, examples and head pages): what writes a
 * model's files when it has no statistics yet. */
const computeCommand = () => `python compute_activations.py ${modelArgs()} PROMPTS`;
const COMPUTE_WHY = "PROMPTS: your prompts file; it ends by running build_index.py.";

function headPagesMissing() {
  const what = `${state.model} has no head pages (per head: each statistic's summary, the top tokens and the look-back)`;
  if (!data.stats) return missingNote(headPagesIndexUrl(state.model), what, computeCommand(), COMPUTE_WHY);
  return missingNote(headPagesIndexUrl(state.model), what, "python build_index.py", "It gathers them from the "
    + "statistics; the look-back and top tokens come from compute_activations.py runs since head pages exist.");
}

// ---- render ----

const rendered = latest();

/** The one way to change the state (url.changeState): the URL is written once the view shows it. */
const setState = (patch, ...steps) => changeState(state, patch, steps, () => writeState("head", state)).catch(showError);

async function render() {
  const current = rendered();
  renderControls();
  renderKinds();
  renderStats();
  renderProjections();
  renderExamples();
  renderLookback();
  renderTokens();
  await renderCheckpoints(current);
}

/** Another statistic opened: its row, the checkpoints' column and the heads page link follow it. */
async function renderStatChoice() {
  renderControls();
  renderStats();
  await renderCheckpoints(rendered());
}

function renderControls() {
  fillSelect($("model"), data.models.map((m) => m.model_dir), state.model);
  const heads = range(data.model.n_layers).flatMap((l) => range(data.model.n_heads).map((h) => headKey(l, h)));
  fillSelect($("head"), heads, state.head);
  const i = heads.indexOf(state.head);
  $("prev-head").disabled = i <= 0;
  $("next-head").disabled = i >= heads.length - 1;
  $("title").textContent = `${state.model} ${state.head}`;
  document.title = `${state.head} ${state.model}: attention lens`;
  const stored = storedExamples();
  $("grid-link").href = gridUrl({ model: state.model, heads: [[data.layer, data.head]], prompts: stored.slice(0, 12) });
  $("heads-link").href = pageUrl("heads", { model: state.model, stat: state.stat, panel: state.head });
  $("single-link").href = singleUrl({ ...here(), prompt: stored[0], figure: "raw" });
}

// ---- kinds and similar heads ----

function renderKinds() {
  if (!data.kinds) {
    const what = "the heads' kinds and their similar heads, which build_index.py measures once the model has statistics";
    const note = data.stats ? missingNote(`${state.model}/heads.json`, what, "python build_index.py", "")
      : missingNote(`${state.model}/heads.json`, what, computeCommand(), COMPUTE_WHY);
    $("kinds").replaceChildren(note);
    $("similar").replaceChildren(el("p", { class: "muted" }, "no heads.json: see kinds above"));
    return;
  }
  $("kinds").replaceChildren(kindsTable(data.kinds, data.layer, data.head));
  $("similar").replaceChildren(similarHeads(data.kinds, data.layer, data.head));
}

// ---- statistics: one row each, the opened one with its histogram and prompts ----

function renderStats() {
  const list = headStats(), box = $("stats");
  const source = data.pages?.block ? `over ${data.pages.block.n_prompts} prompts` : "";
  $("stats-note").textContent = source;
  const notes = [];
  if (!data.pages) notes.push(headPagesMissing());
  else if (data.pages.binMissing) {
    notes.push(missingNote(headPagesUrl(state.model), "the blocks head_pages.json points into", "python build_index.py", ""));
  }
  if (!list.length) {
    box.replaceChildren(...notes, el("p", { class: "notice" }, `${state.model} has no statistics yet (${statsUrl(state.model)}).`));
    return;
  }
  if (!data.pages?.block) notes.push(el("p", { class: "muted" }, `Means, ranks and quantiles from ${statsUrl(state.model)}.`));
  box.replaceChildren(...notes, el("table", { class: "data stats-table head-stats" },
    el("thead", {}, el("tr", {}, el("th", {}, "statistic"), el("th", { class: "num" }, "mean"),
      el("th", { title: "among the model's heads, by mean (1st: the highest)" }, "rank"),
      QUANTILES.map(([, label]) => el("th", { class: "num" }, label)), el("th", {}, "over prompts"))),
    el("tbody", {}, list.flatMap((s) => statRows(s)))));
}

function statRows(s) {
  const open = s.name === state.stat;
  const row = el("tr", {
    class: open ? "selected" : "", title: `${s.doc}\nclick: its histogram over prompts and its highest and lowest prompts`,
    dataset: { stat: s.name, mean: String(s.mean), rank: String(s.rank ?? "") },
    onclick: () => setState({ stat: s.name }, renderStatChoice),
  },
  el("td", {}, el("span", { class: "stat-name" }, s.name)),
  el("td", { class: "num mono" }, formatNumber(s.mean)),
  el("td", { class: "rank" }, s.rank ? `${ordinal(s.rank)} of ${s.of}` : "\u2013"),
  QUANTILES.map(([q]) => el("td", { class: "num mono", dataset: { q, value: String(s.quantiles?.[q] ?? "") } },
    formatNumber(s.quantiles?.[q]))),
  el("td", { class: "spark" }, sparkline(s.hist)));
  return open ? [row, el("tr", { class: "stat-detail" }, el("td", { colspan: 4 + QUANTILES.length }, statDetail(s)))] : [row];
}

/** A histogram as a row-sized chart; nothing when it is not known yet. */
function sparkline(hist) {
  if (!hist) return "";
  const W = 90, H = 20, top = Math.max(...hist.counts, 1), n = hist.counts.length;
  const chart = svgEl("svg", { class: "sparkline", viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true" });
  hist.counts.forEach((c, i) => chart.append(svgEl("rect", {
    x: (i * W) / n, y: H - (c / top) * H, width: Math.max(W / n - 0.5, 0.5), height: (c / top) * H,
  })));
  return chart;
}

/** The opened statistic: its definition, histogram over prompts, and highest and lowest prompts. */
function statDetail(s) {
  const box = el("div", { class: "stat-detail-body", dataset: { stat: s.name } }, el("p", { class: "muted" }, s.doc));
  const fill = (hist, top, bottom, prompts) => {
    const count = hist ? hist.counts.reduce((a, b) => a + b, 0) : 0;
    const link = (hash) => singleUrl({ ...here(), prompt: hash, figure: "raw" });
    box.append(histogramSvg(hist, s.mean),
      el("p", { class: "hist-caption muted" }, `${count} prompts have a value; dashed line: the mean`),
      el("div", { class: "stat-lists" }, promptList("highest", top, prompts, link), promptList("lowest", bottom, prompts, link)));
  };
  if (s.hist !== undefined) fill(s.hist, s.top, s.bottom, s.prompts);
  else {
    statHeads(s.name).then((heads) => {
      const mine = heads?.heads[data.layer][data.head];
      if (mine) fill(mine.hist, mine.top, mine.bottom, heads.prompts);
    }).catch(showError);
  }
  return box;
}

// ---- examples: each prompt's tokens shaded by this head's attention from or to the active token ----

const exampleData = new WeakMap();  // an example's element -> {ex, tokens, rows, cols, peak}

function renderExamples() {
  const box = $("examples"), ex = data.examples;
  $("examples-legend").classList.toggle("hidden", !ex?.block);
  renderExamplesLegend();
  if (!ex) {
    const what = `${state.model} has no examples (prompts across each head's range, with its attention)`;
    box.replaceChildren(data.stats
      ? missingNote(examplesIndexUrl(state.model), what, `python compute_activations.py ${modelArgs()} --examples`,
        "It chooses them from the statistics already computed (no PROMPTS) and runs those prompts again for their "
        + "attention; a run with PROMPTS chooses them at its end.")
      : missingNote(examplesIndexUrl(state.model), what, computeCommand(), COMPUTE_WHY));
    return;
  }
  if (!ex.block) {
    box.replaceChildren(el("p", { class: "notice" }, `${examplesIndexUrl(state.model)} has no examples of ${state.head}: `
      + "no prompt gave it a value"));
    return;
  }
  const { index, block } = ex, groups = [];
  for (let q = index.intervals; q >= 1; q--) {
    const shown = block.examples.filter((e) => e.interval === q);
    if (shown.length) groups.push(intervalSection(q, shown));
  }
  box.replaceChildren(el("p", { class: "muted examples-about" }, examplesAbout()), ...groups, notStoredNote());
}

function examplesAbout() {
  const { index, block } = data.examples;
  return `Each prompt has a value: ${index.statistic}, this head's largest attention weight in it (the first query `
    + `and first key left out). ${block.count} prompts fall in ${index.intervals} intervals at the quantiles of that `
    + `value; the highest shows its ${index.top} highest prompts, the others ${index.per_interval} drawn at random `
    + `(seed ${index.seed}). Stored: each query's ${index.keys_per_row} largest weights of at least ${index.threshold}.`;
}

/** An interval's heading (its range of values, how many prompts it holds) and its examples. */
function intervalSection(q, shown) {
  const { index, block } = data.examples, b = block.boundaries, n = index.intervals;
  const span = q === 1 ? `below ${formatNumber(b[0])}` : q === n ? `${formatNumber(b[n - 2])} and above`
    : `${formatNumber(b[q - 2])} to ${formatNumber(b[q - 1])}`;
  const name = q === n ? "highest" : q === 1 ? "lowest" : `interval ${q}`;
  return el("section", { class: "interval", dataset: { interval: q } },
    el("h3", {}, `${name} (${q} of ${n}): ${span}`,
      el("span", { class: "muted" }, ` \u00b7 ${shown.length} of ${block.interval_counts[q - 1]} prompts shown`)),
    shown.map(exampleCard));
}

function exampleCard(ex) {
  const prompt = data.examples.prompts.get(ex.hash);
  if (!prompt) {
    return el("article", { class: "example", dataset: { hash: ex.hash } },
      el("p", { class: "notice" }, `${ex.hash}: its tokens are not in ${examplesUrl(state.model)}; re-run compute_activations.py`));
  }
  const rows = new Map(), cols = new Map();
  let peak = null;
  ex.q.forEach((q, i) => {
    const k = ex.k[i], w = ex.w[i];
    if (!rows.has(q)) rows.set(q, new Map());
    if (!cols.has(k)) cols.set(k, new Map());
    rows.get(q).set(k, w);
    cols.get(k).set(q, w);
    if (q >= 1 && k >= 1 && (!peak || w > peak.w)) peak = { q, k, w };
  });
  const record = data.records.get(ex.hash);
  const stored = !!record && isStored(record, data.model, data.layer, data.head);
  const link = stored
    ? el("a", { class: "single-link", href: pageUrl("single", { ...here(), prompt: ex.hash, figure: "raw", q: peak?.q, k: peak?.k }) },
      "single view")
    : el("span", { class: "tag-not-stored", title: "its patterns are not stored: see the note below the examples" }, "not stored");
  const card = el("article", { class: "example", dataset: { hash: ex.hash, interval: ex.interval, value: String(ex.value) } },
    el("header", { class: "row" }, el("span", { class: "mono value", title: "this head's largest weight in the prompt" },
      formatNumber(ex.value)), el("span", { class: "muted" }, `${ex.n_tokens} tokens`), link,
    el("span", { class: "muted mono hash" }, ex.hash)),
    el("div", { class: "example-tokens" }, prompt.tokens.map((t, i) => el("span", { class: "tok", dataset: { i } },
      t.replace(/\n/g, "\u21b5\n")))),
    el("p", { class: "example-note muted" }));
  exampleData.set(card, { ex, tokens: prompt.tokens, rows, cols, peak });
  shade(card, restingToken(card));
  return card;
}

/** The token an example shows when none is hovered: the pinned one, else the query (or key) of its largest weight. */
function restingToken(card) {
  const { ex, peak } = exampleData.get(card), [hash, pos] = state.pin.split(":");
  if (hash === ex.hash && Number(pos) < ex.n_tokens) return Number(pos);
  return peak ? (state.shade === "q" ? peak.q : peak.k) : 0;
}

/** Shade an example's tokens by the active token's attention: its row (what it attends to) or its column (what
 * attends to it), darkest at the largest weight; each token's stored weight is its data-w, the unlisted have none. */
function shade(card, pos) {
  const { ex, tokens, rows, cols } = exampleData.get(card), byQuery = state.shade === "q";
  const weights = (byQuery ? rows : cols).get(pos) ?? new Map();
  const max = Math.max(0, ...weights.values()), spans = card.querySelector(".example-tokens").children;
  const pinned = state.pin === `${ex.hash}:${pos}`;
  for (let i = 0; i < spans.length; i++) {
    const w = weights.get(i), span = spans[i], rel = w !== undefined && max > 0 ? w / max : 0;
    if (w === undefined) delete span.dataset.w;
    else span.dataset.w = String(w);
    span.style.setProperty("--w", rel.toFixed(3));
    span.classList.toggle("is-strong", rel > 0.6);
    span.classList.toggle("is-active", i === pos);
    span.classList.toggle("is-pinned", i === pos && pinned);
    span.title = `${i}: ${JSON.stringify(tokens[i])}${w === undefined ? "" : ` \u00b7 ${formatNumber(w, 5)}`}`;
  }
  card.dataset.active = String(pos);
  const who = `${byQuery ? "query" : "key"} ${pos} \u201c${visibleToken(tokens[pos] ?? "")}\u201d${pinned ? " (pinned)" : ""}`;
  card.querySelector(".example-note").textContent = weights.size
    ? `${who}: ${byQuery ? `attends to ${weights.size} stored key${weights.size === 1 ? "" : "s"}`
      : `attended by ${weights.size} stored quer${weights.size === 1 ? "y" : "ies"}`}, darkest ${formatNumber(max, 5)}`
    : `${who}: no stored weight (none of at least ${data.examples.index.threshold})`;
}

function renderExamplesLegend() {
  const mode = (value, label) => el("button", {
    type: "button", class: state.shade === value ? "mode on" : "mode", dataset: { shade: value },
    "aria-pressed": String(state.shade === value), onclick: () => setState({ shade: value }, renderExamples),
  }, label);
  $("examples-legend").replaceChildren(
    el("span", { class: "row" }, "hover or tap a token to see", mode("q", "what it attends to"), mode("k", "what attends to it")),
    el("span", { class: "muted", id: "shade-legend" }, state.shade === "q"
      ? "the token is a query (outlined); keys shaded by its attention to them, darkest = its largest weight"
      : "the token is a key (outlined); queries shaded by the attention they give it, darkest = the largest; "
        + "only weights among a query's stored ones"),
    el("span", { class: "muted" }, "click pins a token; unshaded: not stored (below the threshold or the row's top keys)"));
}

/** What to run when some examples have no stored patterns (no single view to open). */
function notStoredNote() {
  const hashes = data.examples.block.examples.map((e) => e.hash);
  if (hashes.every((h) => data.records.get(h) && isStored(data.records.get(h), data.model, data.layer, data.head))) return null;
  return el("div", { class: "notice not-stored-note" },
    "Examples marked \u201cnot stored\u201d have no stored patterns, so no single view. To store the full patterns of "
    + "every head's example prompts, run", el("code", { class: "command" },
      `python compute_activations.py ${modelArgs()} --examples --examples-patterns`),
    "(with --save-path DIR when the data dir is not attn_data).");
}

function storedExamples() {
  return (data.examples?.block?.examples ?? []).map((e) => e.hash)
    .filter((h) => data.records.get(h) && isStored(data.records.get(h), data.model, data.layer, data.head));
}

/** Hovering a token shades its example; leaving the example returns it to its resting token; a click pins. */
function wireExamples() {
  const box = $("examples"), cardOf = (e) => e.target.closest?.(".example");
  box.addEventListener("mouseover", (e) => {
    const tok = e.target.closest?.(".tok"), card = cardOf(e);
    if (tok && card && exampleData.has(card)) shade(card, Number(tok.dataset.i));
  });
  box.addEventListener("mouseout", (e) => {
    const card = cardOf(e);
    if (card && exampleData.has(card) && !card.contains(e.relatedTarget)) shade(card, restingToken(card));
  });
  box.addEventListener("click", (e) => {
    const tok = e.target.closest?.(".tok"), card = cardOf(e);
    if (!tok || !card || !exampleData.has(card)) return;
    const pin = `${card.dataset.hash}:${tok.dataset.i}`;
    setState({ pin: state.pin === pin ? "" : pin }, reshade);
  });
}

/** Every example back to its resting token (after a pin or unpin). */
function reshade() {
  for (const card of document.querySelectorAll("#examples .example")) {
    if (exampleData.has(card)) shade(card, restingToken(card));
  }
}

// ---- what it reads and writes: three scatters of the same sampled positions (site/projections.js) ----

let projectionPlots = { canvases: {}, drawn: {} };  // the scatters drawn: canvas and drawProjections' record by set

function renderProjections() {
  const box = $("projections"), p = data.projections;
  projectionPlots = { canvases: {}, drawn: {} };
  if (!p) {
    const what = `${state.model} has no projections (each head's queries, keys and outputs at sampled positions)`;
    box.replaceChildren(data.stats
      ? missingNote(projectionsIndexUrl(state.model), what, `python compute_activations.py ${modelArgs()} --projections`,
        "It samples positions over the prompts already computed (no PROMPTS) and runs those prompts again for the "
        + "heads' vectors; a run with PROMPTS computes them at its end.")
      : missingNote(projectionsIndexUrl(state.model), what, computeCommand(), COMPUTE_WHY));
    return;
  }
  const points = projectionPoints(p.points, p.head), colours = projectionColours(points, state.pcolor, data.colormap);
  const canvases = Object.fromEntries(p.index.sets.map((set) => [set, el("canvas", {
    class: "map-canvas projection-canvas", role: "img", dataset: { set },
  })]));
  const choice = el("select", { id: "projection-colour", onchange: (e) => setState({ pcolor: e.target.value }, loadColours, renderProjections) },
    Object.entries(COLOURINGS).map(([value, label]) => el("option", { value, selected: value === state.pcolor }, label)));
  box.replaceChildren(el("p", { class: "muted projections-about" }, projectionsAbout(points)),
    el("div", { class: "row" }, el("label", {}, "colour by ", choice), colours.legend),
    el("div", { class: "projection-plots" }, p.index.sets.map((set) => el("figure", { class: "projection-plot" },
      el("figcaption", {}, setTitle(set)), canvases[set]))),
    el("p", { class: "projection-hover", id: "projection-hover" }, "hover a point: its token in context"));
  projectionPlots = { canvases, drawn: drawProjections(canvases, p.index, p.head, points, colours) };
}

function projectionsAbout(points) {
  const { index, points: block } = data.projections, first = points.filter((p) => p.key === 0).length;
  const rotation = !index.rotary ? "" : index.query_hook === "hook_rot_q" ? ", after the rotary embedding, as the scores use them"
    : " (before the rotary embedding: TransformerLens has no hook after it for this model)";
  return `${points.length} query positions, at most ${index.per_prompt} from each of ${block.prompts.length} prompts drawn `
    + `from ${index.n_prompts} (seed ${index.seed}), the same for every head. Queries and keys are ${index.query_hook} and `
    + `${index.key_hook}${rotation}; the key is that of the position the head attends to most. Each plot is its own PCA; `
    + `nearby points are vectors alike, not tokens alike. ${first} of ${points.length} points attend most to the first `
    + "token, so their keys are one point.";
}

/** The point under the mouse in any of the scatters: ringed in all three, its token in context below them (data-*
 * say which). */
function wireProjections() {
  const box = $("projections");
  box.addEventListener("mousemove", (e) => {
    const set = e.target.dataset?.set, hover = $("projection-hover"), { canvases, drawn } = projectionPlots;
    if (!set || !drawn[set] || !hover) return;
    const p = drawn[set].pick(e.offsetX, e.offsetY);
    e.target.style.cursor = p ? "crosshair" : "";
    if (!p) return;
    markPoint(canvases, drawn, p.i);
    hover.replaceChildren(...pointInfo(p, data.projections.points));
    Object.assign(hover.dataset, { set, point: String(p.i), position: String(p.position), token: p.token, key: String(p.key) });
  });
}

// ---- look-back and top tokens (the head page block) ----

/** Why a head page has no look-back or token tallies: the runs that computed the prompts kept no totals. */
/** Why the head page has no look-back or token totals: no head page at all, a model too big for token totals,
 * or prompts computed before the totals were kept. */
function missingTotals(what) {
  if (!data.pages?.block) return el("p", { class: "muted" }, "no head page: see the statistics");
  if (what === "token tallies" && data.pages.block.tokens_skipped) {
    return el("p", { class: "muted" }, "No token tallies for this model: its heads x vocabulary is past the limit "
      + "the totals are kept to (2^27 entries; docs/data.md). The look-back is kept.");
  }
  return el("div", { class: "muted" }, `No ${what} in ${headPagesUrl(state.model)}: the model's prompts were computed `
    + "before compute_activations.py kept the totals it comes from. To compute them again, run",
  el("code", { class: "command" }, `${computeCommand()} --force`));
}

/** A look-back bin's distances: 0, 1, 2-3, ..., the last open-ended. */
function binLabel(edges, i) {
  if (i === edges.length - 1) return `\u2265 ${edges[i]}`;
  const label = edges[i + 1] - edges[i] === 1 ? `${edges[i]}` : `${edges[i]}\u2013${edges[i + 1] - 1}`;
  return edges[i] === 0 && edges[i + 1] === 1 ? `${label} (itself)` : edges[i] === 1 && edges[i + 1] === 2 ? `${label} (previous)` : label;
}

function renderLookback() {
  const box = $("lookback"), lookback = data.pages?.block?.lookback;
  if (!lookback) {
    box.replaceChildren(missingTotals("look-back"));
    return;
  }
  const { edges, share } = lookback, last = Math.max(2, share.findLastIndex((v) => v > 0));
  const top = Math.max(...share, 1e-12);
  box.replaceChildren(el("div", { class: "bars lookback-bars" }, share.slice(0, last + 1).map((v, i) => [
    el("span", { class: "bar-label mono" }, binLabel(edges, i)),
    el("span", { class: "bar-track" }, el("span", { class: "bar", style: { width: `${(100 * v) / top}%` }, dataset: { share: String(v) } })),
    el("span", { class: "bar-value mono" }, `${formatNumber(100 * v, 1)}%`),
  ])), el("p", { class: "muted" }, `share of this head's attention by distance from query to key (query minus key, in `
    + `tokens), over ${lookback.prompts} prompts${last < share.length - 1 ? `; none at ${edges[last + 1]} or more` : ""}`));
}

function renderTokens() {
  const box = $("tokens"), tokens = data.pages?.block?.tokens;
  if (!tokens) {
    box.replaceChildren(missingTotals("token tallies"));
    return;
  }
  const byMean = state.sort === "mean" && tokens.query_by_mean;
  box.replaceChildren(
    el("p", { class: "muted" }, `Over ${tokens.prompts} prompts, the first query and first key left out; mean = mass / `
      + "count, the weight per occurrence. ", byMean ? `By mean: of the tokens seen at least ${tokens.min_count} times, those with the highest.`
      : "By mass: the tokens with the most attention in all."),
    tokenTable("query", "as query: the attention it gives", byMean ? tokens.query_by_mean : tokens.query),
    tokenTable("key", "as key: the attention it receives", byMean ? tokens.key_by_mean : tokens.key));
}

/** One side's tokens, sorted by the chosen column (a list chosen by mass re-sorted when there is no list by mean). */
function tokenTable(side, caption, entries) {
  const rows = entries.map(([token, count, mass]) => ({ token, count, mass, mean: mass / count }))
    .sort((a, b) => b[state.sort] - a[state.sort] || b.mass - a.mass);
  const sortBy = (key, label, title) => el("th", { class: "num" }, el("button", {
    type: "button", class: state.sort === key ? "link sort on" : "link sort", title, dataset: { sort: key },
    onclick: () => setState({ sort: key }, renderTokens),
  }, `${label}${state.sort === key ? " \u25bc" : ""}`));
  return el("div", { class: "token-table-wrap" }, el("h3", {}, caption),
    el("div", { class: "token-scroll" }, el("table", { class: "data token-table", dataset: { side } },
      el("thead", {}, el("tr", {}, el("th", {}, "token"), el("th", { class: "num" }, "count"),
        sortBy("mean", "mean", "sort by mean weight per occurrence"), sortBy("mass", "mass", "sort by total attention mass"))),
      el("tbody", {}, rows.length ? rows.map((r) => el("tr", { dataset: { token: r.token, count: r.count, mass: String(r.mass) } },
        el("td", { class: "token mono", title: JSON.stringify(r.token) }, visibleToken(r.token)),
        el("td", { class: "num mono" }, String(r.count)),
        el("td", { class: "num mono" }, formatNumber(r.mean)),
        el("td", { class: "num mono" }, formatNumber(r.mass)))) : el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none"))))));
}

// ---- the same head in the model's other training checkpoints ----

/** The models that are training checkpoints of this one (compute_activations.py --checkpoint), by step; the model
 * without a step (the final one) last. */
function checkpointModels() {
  const base = checkpointOf(state.model).base, shape = (m) => `${m.n_layers} x ${m.n_heads}`;
  const step = (m) => checkpointOf(m.model_dir).step ?? Infinity;
  return data.models.filter((m) => checkpointOf(m.model_dir).base === base && shape(m) === shape(data.model))
    .sort((a, b) => step(a) - step(b));
}

async function renderCheckpoints(current) {
  const models = checkpointModels(), box = $("checkpoints");
  $("checkpoints-section").classList.toggle("hidden", models.length < 2);
  if (models.length < 2) return;
  const [kinds, stats] = await Promise.all([fetchEach(models.map((m) => loadHeadKinds(m.model_dir))),
    fetchEach(models.map((m) => modelStats(m.model_dir)))]);
  if (!current()) return;
  const { layer: l, head: h } = data, best = data.kinds?.heads[l][h].best ?? {};
  box.replaceChildren(el("table", { class: "data checkpoints-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "checkpoint"), el("th", {}, "kinds"),
      el("th", { class: "num", title: `${state.stat}: mean over prompts` }, state.stat || "statistic"),
      el("th", { title: "the head of that checkpoint most like this one (cosine similarity of fingerprints)" }, "most like it"))),
    el("tbody", {}, models.map((m, i) => {
      const dir = m.model_dir, step = checkpointOf(dir).step, mean = stats[i]?.stats[state.stat]?.mean[l]?.[h];
      const like = best[dir];
      return el("tr", { class: dir === state.model ? "selected" : "", dataset: { model: dir } },
        el("td", {}, el("a", { href: headPageUrl({ model: dir, layer: l, head: h }) }, step === null ? dir : `step ${step}`)),
        el("td", {}, kinds[i] ? kindBadges(kinds[i], l, h) : el("span", { class: "muted" }, "no heads.json")),
        el("td", { class: "num mono" }, formatNumber(mean)),
        el("td", {}, like && dir !== state.model ? el("a", { href: headPageUrl({ model: dir, layer: like[0], head: like[1] }) },
          `${like[0] === l && like[1] === h ? "itself" : headKey(like[0], like[1])} ${formatNumber(like[2])}`) : ""));
    }))),
  el("p", { class: "muted" }, `${state.head} in each checkpoint of ${checkpointOf(state.model).base}; each links to its head page.`));
}

// ---- wire ----

/** Another head (or model): reload its files, then draw. */
const chooseHead = (patch) => setState({ pin: "", ...patch }, loadHead, render);

function stepHead(delta) {
  const heads = [...$("head").options].map((o) => o.value), i = heads.indexOf(state.head) + delta;
  if (i >= 0 && i < heads.length) chooseHead({ head: heads[i] });
}

function wire() {
  $("model").addEventListener("change", (e) => {
    const m = data.models.find((x) => x.model_dir === e.target.value);
    const has = data.layer < m.n_layers && data.head < m.n_heads;  // else its first head, without a complaint
    chooseHead({ model: m.model_dir, head: has ? state.head : "" });
  });
  $("head").addEventListener("change", (e) => chooseHead({ head: e.target.value }));
  $("prev-head").addEventListener("click", () => stepHead(-1));
  $("next-head").addEventListener("click", () => stepHead(1));
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  wireExamples();
  wireProjections();
  for (const [target, event] of [[window, "resize"], [document, "themechange"]]) {  // canvases follow width and theme
    target.addEventListener(event, debounce(() => data.projections && renderProjections(), 100));
  }
  document.addEventListener("keydown", (e) => {
    if (notForPage(e)) return;
    const actions = {
      ArrowLeft: () => stepHead(-1), ArrowRight: () => stepHead(1),
      s: () => setState({ shade: state.shade === "q" ? "k" : "q" }, renderExamples),
      Escape: () => state.pin && setState({ pin: "" }, reshade),
      "?": () => $("help").classList.toggle("hidden"),
    };
    if (actions[e.key]) {
      e.preventDefault();
      actions[e.key]();
    }
  });
}

startPage({ load, render: () => setState({}, render), wire });
