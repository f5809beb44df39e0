// The head page's projections (projections.py): what a head reads and writes, as three scatters of the same sampled
// query positions: its query vectors, the key vectors of the positions it attends to most and its outputs z W_O, each
// reduced to 2-D by its own PCA. Points are coloured by a token (a hue hashed from the token: the same token has the
// same colour in every head), by position or by the head's largest weight; hovering names the point in its context.
import { cssColor, el, formatNumber, visibleToken } from "./dom.js";
import { pointColours } from "./kinds.js";
import { drawScatter } from "./scatter.js";

/** What the points can be coloured by (the URL's pcolor), with the legend's words. */
export const COLOURINGS = { token: "query token", key: "key token", position: "query position", weight: "largest weight" };
const TITLES = { query: "query: what it looks for", key: "key it attends to most", output: "output z W_O: what it writes" };
const TOP_TOKENS = 10;  // the tokens coloured; the others are grey
const CONTEXT = 4;  // tokens shown on each side of a hovered point's token
const RADIUS = 2.5;

/** Every point as {i, prompt, position, key, weight, token, keyToken}, from the points' block and a head's record. */
export function projectionPoints(block, head) {
  return block.prompt.map((p, i) => {
    const tokens = block.prompts[p].tokens, position = block.position[i], key = head.key[i];
    return { i, prompt: p, position, key, weight: head.weight[i], token: tokens[position], keyToken: tokens[key] };
  });
}

/** A stable colour for a token: hue and lightness from the FNV-1a hash of its text, so a token looks the same in every
 * head and plot (two tokens may look alike: there are more tokens than colours). */
function tokenColour(token) {
  let h = 0x811c9dc5;
  for (let i = 0; i < token.length; i++) h = Math.imul(h ^ token.charCodeAt(i), 0x01000193);
  h >>>= 0;
  return `hsl(${h % 360}, 70%, ${h & 0x10000 ? 38 : 58}%)`;
}

/** Colours by a token field: the TOP_TOKENS most frequent in their hashed hue, the others grey (drawn first). */
function tokenColours(points, field) {
  const counts = new Map();
  for (const p of points) counts.set(p[field], (counts.get(p[field]) ?? 0) + 1);
  const top = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, TOP_TOKENS);
  const colours = new Map(top.map(([t]) => [t, tokenColour(t)])), grey = cssColor("--muted");
  const others = points.length - top.reduce((n, [, c]) => n + c, 0);
  return {
    of: (p) => colours.get(p[field]) ?? grey,
    faint: (p) => !colours.has(p[field]),
    radius: RADIUS,
    legend: el("div", { class: "map-legend" }, top.map(([t, c]) => el("span", { class: "map-key", dataset: { key: t } },
      el("span", { class: "swatch", style: { background: colours.get(t) } }), el("span", { class: "mono" }, visibleToken(t)),
      el("span", { class: "muted" }, String(c)))),
    others > 0 && el("span", { class: "map-key", dataset: { key: "" } }, el("span", { class: "swatch", style: { background: grey } }),
      `${others} others`)),
  };
}

/** The colours of `by` (COLOURINGS): tokens by hashed hue, position and weight on the colormap. */
export function projectionColours(points, by, colormap) {
  if (by === "token" || by === "key") return tokenColours(points, by === "key" ? "keyToken" : "token");
  for (const p of points) p.c = by === "position" ? p.position : p.weight;
  return { ...pointColours(points, "stat", { colormap, title: COLOURINGS[by] }), radius: RADIUS };
}

/** Draw each set's scatter on its canvas ({set: canvas}); returns {set: {pick(x, y), placed, image}}: its points as
 * drawn (copies of `points` at that set's coordinates, so `colours`, made from `points`, colours them alike) and the
 * drawing's pixels, which markPoint draws over. */
export function drawProjections(canvases, index, head, points, colours) {
  const drawn = {};
  index.sets.forEach((set, s) => {
    const xy = head.coords[s], [e1, e2] = head.explained[s], canvas = canvases[set];
    const placed = points.map((p) => ({ ...p, x: xy[2 * p.i], y: xy[2 * p.i + 1] }));
    const axis = (n, e) => ({ title: `PC${n} (${formatNumber(100 * e, 1)}% of the variance)`, log: false });
    const { pick } = drawScatter(canvas, placed, { x: axis(1, e1), y: axis(2, e2), colours });
    canvas.setAttribute("aria-label", `${TITLES[set]}: ${placed.length} points, PCA`);
    drawn[set] = { pick, placed, image: canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height) };
  });
  return drawn;
}

/** Ring point i (null: none) in every scatter, over the drawing: the same position's query, key and output (each
 * canvas's data-marked says which). */
export function markPoint(canvases, drawn, i) {
  for (const [set, { placed, image }] of Object.entries(drawn)) {
    const ctx = canvases[set].getContext("2d");
    ctx.putImageData(image, 0, 0);
    canvases[set].dataset.marked = i === null ? "" : String(i);
    if (i === null) continue;
    ctx.strokeStyle = cssColor("--fg");
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(placed[i].px, placed[i].py, 7, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

export const setTitle = (set) => TITLES[set] ?? set;

/** A token in its context: CONTEXT tokens either side, the token itself marked. */
function inContext(tokens, at, cls) {
  const from = Math.max(0, at - CONTEXT), to = Math.min(tokens.length, at + CONTEXT + 1);
  return el("span", { class: "projection-context mono" }, from > 0 && "\u2026",
    tokens.slice(from, to).map((t, j) => el("span", { class: from + j === at ? `tok ${cls}` : "" }, visibleToken(t))),
    to < tokens.length && "\u2026");
}

/** What hovering a point shows: the query token in its context, the key it attends to most in its, the weight. */
export function pointInfo(p, block) {
  const { tokens, hash } = block.prompts[p.prompt];
  return [
    el("span", {}, `query ${p.position} `, inContext(tokens, p.position, "is-query")),
    el("span", {}, ` attends most to key ${p.key} `, inContext(tokens, p.key, "is-key")),
    el("span", { class: "muted" }, ` weight ${formatNumber(p.weight, 4)} \u00b7 prompt ${hash}`),
  ];
}
