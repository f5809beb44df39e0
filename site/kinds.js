// Head kinds (build_index.py writes <model>/heads.json with kinds.py): a head's kinds as badges, the heads page's
// summary (kinds per layer, the labelled heads) and map (PCA of the fingerprints), and a head's similar heads;
// the colours, dots and picking the map shares with the scatter (scatter.js).
// Every definition, threshold and source shown comes from heads.json itself: kinds.py's KINDS, written once.
import { checkpointOf, fetchData, headKey, headKindsUrl, range } from "./data.js";
import { cssColor, el, formatNumber, renderLegend } from "./dom.js";
import { colourScale } from "./matrix.js";
import { headPageUrl, singleUrl } from "./url.js";

const loaded = new Map();  // model dir -> promise of its heads.json (null when it has none)

/** A model's heads.json, fetched once; null when build_index.py wrote none (no statistics yet). */
export function loadHeadKinds(model) {
  if (!loaded.has(model)) loaded.set(model, fetchData(headKindsUrl(model)));
  return loaded.get(model);
}

const kindOf = (info, name) => info.kinds.find((k) => k.name === name);

/** What one label means: its definition, its threshold and source, the score that passed it. */
function labelTitle(info, k) {
  const kind = kindOf(info, k.name);
  return `${k.name}: score ${formatNumber(k.score)} ${kind.op} threshold ${k.threshold}`
    + `${k.offset ? ` (offset ${k.offset})` : ""}\n${kind.doc}\nsource: ${kind.source}`;
}

/** A head's kinds as badges (nothing when it has none). */
export function kindBadges(info, layer, head) {
  const found = info?.heads[layer]?.[head]?.kinds ?? [];
  return el("span", { class: "kinds" }, found.map((k) => el("span", {
    class: "kind", title: labelTitle(info, k), dataset: { kind: k.name, score: String(k.score) },
  }, k.offset ? `${k.name} ${k.offset}` : k.name)));
}

/** Which prompts the kinds were measured on, in words. */
export function promptsLine(info) {
  const p = info.prompts;
  const weights = info.kinds.some((k) => k.name === "copying") ? " Copying and copy-suppression: from the weights." : "";
  return (p.source === "probe"
    ? `Measured on the probe set (${p.n_prompts} prompts, ${p.n_repeat_prompts} of them repeated random words; `
      + `patterns of ${p.n_shape_prompts}).`
    : `Measured on this model's own ${p.n_prompts} prompts (patterns of ${p.n_shape_prompts}): no probe set; `
      + "run compute_activations.py MODEL --probe for kinds that do not depend on the prompts.") + weights;
}

/** The summary: how many heads of each kind per layer, the table of labelled heads, the kinds' definitions. */
export function kindsSummary(model, info, headLink) {
  const nLayers = info.heads.length, names = info.kinds.map((k) => k.name);
  const count = (l, name) => info.heads[l].filter((h) => h.kinds.some((k) => k.name === name)).length;
  const counts = el("table", { class: "data kinds-counts" },
    el("thead", {}, el("tr", {}, el("th", {}, "layer"), names.map((n) => el("th", { title: kindOf(info, n).doc }, n)))),
    el("tbody", {}, range(nLayers).map((l) => el("tr", { dataset: { layer: l } }, el("td", {}, `${l}`),
      names.map((n) => el("td", { class: "num", dataset: { kind: n } }, count(l, n) || ""))))));
  const rows = info.heads.flatMap((row, l) => row.map((h, hd) => [l, hd, h]).filter(([, , h]) => h.kinds.length));
  const table = el("table", { class: "data kinds-heads" },
    el("thead", {}, el("tr", {}, el("th", {}, "head"), el("th", {}, "kinds (score)"))),
    el("tbody", {}, rows.map(([l, h, head]) => el("tr", { dataset: { head: headKey(l, h) } },
      el("td", {}, el("a", { href: headLink(l, h) }, headKey(l, h))),
      el("td", {}, head.kinds.map((k) => el("span", { class: "kind", title: labelTitle(info, k), dataset: { kind: k.name } },
        `${k.name}${k.offset ? ` ${k.offset}` : ""} ${formatNumber(k.score)}`)))))));
  const definitions = el("details", { class: "kinds-definitions" }, el("summary", {}, "what each kind means"),
    el("dl", {}, info.kinds.map((k) => [el("dt", {}, `${k.name}: ${k.feature} ${k.op} ${k.threshold}`),
      el("dd", {}, `${k.doc}. Source: ${k.source}.`)])));
  return el("div", { class: "kinds-summary" },
    el("p", { class: "muted" }, `${model}: ${rows.length} of ${nLayers * info.heads[0].length} heads labelled. `,
      promptsLine(info)),
    el("div", { class: "kinds-tables" }, counts, rows.length ? table : el("p", { class: "muted" }, "no head passes a threshold")),
    definitions);
}

/** The single view's panel: this head's kinds with their scores, and its most similar heads, each a link to the
 * single view (and to its head page). */
export function headKindsPanel(model, info, layer, head, prompt) {
  if (!info) return el("p", { class: "muted" }, `${model} has no heads.json yet (build_index.py writes it)`);
  const mine = info.heads[layer][head];
  const link = ([m, l, h]) => singleUrl({ model: m, prompt, layer: l, head: h, figure: "raw" });
  return el("div", {},
    mine.kinds.length ? kindBadges(info, layer, head) : el("p", { class: "muted" }, "no kind: no score passes its threshold"),
    el("p", { class: "head-page-link" }, el("a", { href: headPageUrl({ model, layer, head }) },
      `${headKey(layer, head)}'s head page`), el("span", { class: "muted" }, ": what it does across all prompts")),
    el("h3", {}, "similar heads"),
    similarList(mine.nearest, link, ([m, l, h]) => headPageUrl({ model: m, layer: l, head: h })),
    el("p", { class: "muted" }, "cosine similarity of standardised fingerprints (", info.features.length,
      " features: the kinds' scores and attention by offset); the prompt is this one, where that model has it"));
}

/** Nearest heads ([model, layer, head, similarity]) as a list of links; `page`, when given, adds a head page link. */
function similarList(nearest, link, page) {
  return el("ol", { class: "similar-heads" }, nearest.map((n) => el("li", { dataset: { model: n[0], head: headKey(n[1], n[2]) } },
    el("a", { href: link(n) }, `${n[0]} ${headKey(n[1], n[2])}`), el("span", { class: "num mono" }, ` ${formatNumber(n[3])}`),
    page && el("a", { class: "page-link", href: page(n), title: "its head page" }, " head page"))));
}

/** The head page's kinds: every kind's score against its threshold (those it passes first), with its source. */
export function kindsTable(info, layer, head) {
  const mine = info.heads[layer][head], passed = new Map(mine.kinds.map((k) => [k.name, k]));
  const score = (kind) => mine.features?.[info.features.indexOf(kind.feature)] ?? null;
  const rows = [...info.kinds].sort((a, b) => passed.has(b.name) - passed.has(a.name));
  return el("div", {},
    mine.kinds.length ? kindBadges(info, layer, head) : el("p", { class: "muted" }, "no kind: no score passes its threshold"),
    el("table", { class: "data kinds-scores" },
      el("thead", {}, el("tr", {}, el("th", {}, "kind"), el("th", { class: "num" }, "score"), el("th", {}, "threshold"))),
      el("tbody", {}, rows.map((kind) => {
        const found = passed.get(kind.name);
        return el("tr", { class: found ? "passes" : "", title: `${kind.doc}\nsource: ${kind.source}`,
          dataset: { kind: kind.name, score: String(score(kind)), passes: found ? "1" : "" } },
        el("td", {}, found?.offset ? `${kind.name} (offset ${found.offset})` : kind.name),
        el("td", { class: "num mono" }, formatNumber(score(kind))),
        el("td", { class: "mono" }, `${kind.op} ${kind.threshold}`));
      }))),
    el("p", { class: "muted kinds-source" }, promptsLine(info), " Hover a row for its definition and source."));
}

/** The head page's similar heads anywhere in the data dir, each a link to its head page. */
export function similarHeads(info, layer, head) {
  const page = ([m, l, h]) => headPageUrl({ model: m, layer: l, head: h });
  return el("div", {}, similarList(info.heads[layer][head].nearest, page),
    el("p", { class: "muted" }, "cosine similarity of standardised fingerprints (", info.features.length,
      " features: the kinds' scores and attention by offset)"));
}

// ---- the map: every head of the chosen models at its fingerprint's first two principal components ----

const KIND_COLOURS = 6;  // --series-1 ... --series-6; further kinds cycle

/** The points of the map: [{model, layer, head, x, y, kinds, key}] of the given models' heads.json. */
export function mapPoints(entries) {
  return entries.flatMap(({ model, info }) => info.heads.flatMap((row, l) => row.map((h, hd) => ({
    model, layer: l, head: hd, x: h.xy[0], y: h.xy[1], kinds: h.kinds.map((k) => k.name),
  }))));
}

/** What a point is coloured by: its first kind, its layer or its model. */
function colourKey(p, by) {
  if (by === "layer") return `layer ${p.layer}`;
  if (by === "model") return p.model;
  return p.kinds[0] ?? "no kind";
}

/** How the map and the scatter colour their points, {of(p), faint(p), legend}: one colour per kind, layer or model
 * (by = "kind" | "layer" | "model"), or (by = "stat") the value `p.c` on `colormap` from the lowest to the highest,
 * titled `title`. Made once from every head shown, so a head has the same colour in both plots. */
export function pointColours(points, by, { colormap, title } = {}) {
  if (by === "stat") return valueColours(points, colormap, title);
  const keys = [...new Set(points.map((p) => colourKey(p, by)))].sort((a, b) => (a === "no kind") - (b === "no kind") || a.localeCompare(b));
  const colours = new Map(keys.map((k, i) => [k, k === "no kind" ? cssColor("--muted") : cssColor(`--series-${(i % KIND_COLOURS) + 1}`)]));
  return {
    of: (p) => colours.get(colourKey(p, by)),
    faint: (p) => colourKey(p, by) === "no kind",
    legend: mapLegend(keys.map((k) => [k, colours.get(k)])),
  };
}

/** Colours on a colormap (the heatmap's scale, lowest to highest value); a point without a value is muted. */
function valueColours(points, colormap, title) {
  const scale = colourScale([points.map((p) => p.c)], "range"), none = cssColor("--muted");
  const missing = points.filter((p) => Number.isNaN(p.c)).length, bar = el("span", { class: "legend" });
  renderLegend(bar, scale.lo, scale.hi, colormap, { empty: "no values" });
  return {
    of: (p) => (Number.isNaN(p.c) ? none : `rgb(${colormap[scale.index(p.c)].join(", ")})`),
    faint: (p) => Number.isNaN(p.c),
    outline: cssColor("--muted"),  // a colormap's darkest colours vanish on a dark background otherwise
    legend: el("div", { class: "map-legend value-legend", dataset: { lo: String(scale.lo), hi: String(scale.hi) } },
      el("span", {}, `colour: ${title}`), bar, missing > 0 && el("span", { class: "map-key", dataset: { key: "no value" } },
        el("span", { class: "swatch", style: { background: none } }), `${missing} without a value`)),
  };
}

/** A canvas sized to its box for the screen's pixel ratio: {ctx, W, H} in CSS pixels. */
export function canvasContext(canvas) {
  const dpr = window.devicePixelRatio || 1, W = canvas.clientWidth, H = canvas.clientHeight;
  canvas.width = W * dpr;
  canvas.height = H * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, W, H);
  return { ctx, W, H };
}

/** Draw points (each given px, py) as dots in `colours` (of radius colours.radius, else 4), the faint ones first so
 * the coloured stay on top. */
export function drawPoints(ctx, points, colours) {
  const order = [...points.filter((p) => colours.faint(p)), ...points.filter((p) => !colours.faint(p))];
  ctx.lineWidth = 1;
  ctx.strokeStyle = colours.outline;
  for (const p of order) {
    ctx.fillStyle = colours.of(p);
    ctx.beginPath();
    ctx.arc(p.px, p.py, colours.radius ?? 4, 0, 2 * Math.PI);
    ctx.fill();
    if (colours.outline) ctx.stroke();
  }
}

/** The point drawn nearest a canvas position (px, py), within 8 px; null when none is. */
export function pickPoint(points, x, y) {
  let best = null, bestD = 8 * 8;
  for (const p of points) {
    const d = (p.px - x) ** 2 + (p.py - y) ** 2;
    if (d < bestD) [best, bestD] = [p, d];
  }
  return best;
}

/** Draw the map on a canvas: training paths (same head, checkpoints by step), then the points in `colours`
 * (pointColours); returns {pick(x, y)}: the point under a canvas position, for hover and click. */
export function drawMap(canvas, points, colours) {
  const { ctx, W, H } = canvasContext(canvas), pad = 14;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * pad), sy = (y) => H - pad - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * pad);
  ctx.strokeStyle = cssColor("--border");
  ctx.lineWidth = 1;
  for (const path of trainingPaths(points)) {
    ctx.beginPath();
    path.forEach((p, i) => (i ? ctx.lineTo(sx(p.x), sy(p.y)) : ctx.moveTo(sx(p.x), sy(p.y))));
    ctx.stroke();
  }
  for (const p of points) Object.assign(p, { px: sx(p.x), py: sy(p.y) });
  drawPoints(ctx, points, colours);
  canvas.dataset.points = String(points.length);
  return { pick: (x, y) => pickPoint(points, x, y) };
}

/** Each head's points across the checkpoints of one model, ordered by step (only where there are two or more). */
function trainingPaths(points) {
  const paths = new Map();
  for (const p of points.filter((q) => checkpointOf(q.model).step !== null)) {
    const key = `${checkpointOf(p.model).base} ${headKey(p.layer, p.head)}`;
    if (!paths.has(key)) paths.set(key, []);
    paths.get(key).push(p);
  }
  const step = (p) => checkpointOf(p.model).step;
  return [...paths.values()].filter((ps) => ps.length > 1).map((ps) => ps.sort((a, b) => step(a) - step(b)));
}

/** The models the map shows: this one, the checkpoints of its base model (with it), or every model. */
export function mapModels(models, model, which) {
  if (which === "all") return models;
  if (which === "model") return [model];
  const same = models.filter((m) => checkpointOf(m).base === checkpointOf(model).base);
  return same.length ? same : [model];
}

/** A legend of the map's colours, [[key, colour]]. */
function mapLegend(keys) {
  return el("div", { class: "map-legend" }, keys.map(([k, c]) => el("span", { class: "map-key", dataset: { key: k } },
    el("span", { class: "swatch", style: { background: c } }), k)));
}

/** What hovering a point shows: the head and its kinds. */
export const pointLabel = (p) => `${p.model} ${headKey(p.layer, p.head)}: ${p.kinds.join(", ") || "no kind"}`;
