// The single view's canvas: one head's pattern drawn cell by cell from its stored values, token labels
// on both axes, zoom and pan, the active cell's crosshair. The page keeps which cell is hovered or pinned.
// First the pure computations on values the pages share (value-weighted, A - B, colour scales): no DOM, so
// tests/rules.json "matrix" checks them against numpy and lens.quantize.
import { cssColor, visibleToken } from "./dom.js";

const LABEL_FONT = "11px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
const LABEL_MAX = 110;  // px of the widest axis label; longer tokens are cut with an ellipsis
const MIN_LABEL_CELL = 11;  // px: below this cell size only every k-th token gets a label
const MAX_CELL = 48;

/** A matrix view on a canvas; `setPattern` gives it something to draw. */
export function createMatrix(canvas) {
  return { canvas, pattern: null, tokens: [], image: null, size: 0, cell: 0, fitCell: 0, ox: 0, oy: 0, fit: true, margin: 0 };
}

// ---- values ----

/** One head's pattern {n, values, header} as value-weighted attention, alpha_qk * ||v_k W_O|| (Kobayashi et al.
 * 2020; figures/value_weighted.py), each row divided by its sum when `rows`. */
export function valueWeighted(pattern, norms, rows) {
  const { n, values } = pattern, out = new Float32Array(n * n);
  for (let q = 0; q < n; q++) {
    let sum = 0;
    for (let k = 0; k < n; k++) {
      out[q * n + k] = values[q * n + k] * norms[k];
      sum += out[q * n + k];
    }
    if (rows && sum > 0) for (let k = 0; k < n; k++) out[q * n + k] /= sum;
  }
  return { ...pattern, values: out };
}

/** A - B of two patterns of the same n, cell by cell; lower-triangular only when both are. */
export function difference(a, b) {
  const values = new Float32Array(a.n * a.n);
  for (let i = 0; i < values.length; i++) values[i] = a.values[i] - b.values[i];
  const layout = a.header.layout === "tril" && b.header.layout === "tril" ? "tril" : "full";
  return { n: a.n, values, header: { ...a.header, layout } };
}

/** How values map to a colormap's 256 entries, {lo, hi, position(v) in 0-1, index(v) in 0-255}, over every array
 * given (panels that share a scale); NaN is no value. `scale`: "linear" or "sqrt" over 0-1 for `unit` values
 * (attention, rows summing to 1), else over 0 to the largest |value|; "max": 0 to the largest |value|; "range":
 * the smallest to the largest value (the heads page). `diverging` centres 0 (A - B, one model minus another): -m
 * to m, m the largest |value| (1 for unit linear or sqrt), |v| scaled alike on both sides. Linear scales are
 * lens.quantize's rule, the images' own. */
export function colourScale(valueArrays, scale, { unit = true, diverging = false } = {}) {
  let max = 0, least = Infinity, most = -Infinity;
  for (const values of valueArrays) {
    for (const v of values) {
      if (Math.abs(v) > max) max = Math.abs(v);
      if (v < least) least = v;
      if (v > most) most = v;
    }
  }
  const top = ((scale === "linear" || scale === "sqrt") && unit ? 1 : max) || 1;
  const shape = (t) => (scale === "sqrt" ? Math.sqrt(t) : t);
  const clamp = (t) => Math.max(0, Math.min(1, t));
  let lo = 0, hi = top, position = (v) => shape(clamp(v / top));
  if (diverging) {
    lo = -top;
    position = (v) => 0.5 + 0.5 * Math.sign(v) * shape(Math.min(1, Math.abs(v) / top));
  } else if (scale === "range") {
    [lo, hi] = [least, most];
    position = (v) => clamp((v - least) / (most - least || 1));
  }
  return { lo, hi, scale, diverging, position, index: (v) => Math.round(position(v) * 255) };
}

/** Colour the pattern once into an n x n image (one pixel per cell) with a [[r, g, b] x 256] colormap
 * through a colourScale. */
export function setPattern(m, pattern, tokens, colormap, colour) {
  Object.assign(m, { pattern, tokens, image: null });
  if (!pattern) return;
  const { n, values, header } = pattern;
  const image = document.createElement("canvas");
  image.width = image.height = n;
  const ctx = image.getContext("2d");
  const pixels = ctx.createImageData(n, n);
  for (let q = 0; q < n; q++) {
    const end = header.layout === "tril" ? q + 1 : n;  // cells after the query stay transparent
    for (let k = 0; k < end; k++) {
      const c = colormap[colour.index(values[q * n + k])], o = 4 * (q * n + k);
      pixels.data.set([c[0], c[1], c[2], 255], o);
    }
  }
  ctx.putImageData(pixels, 0, 0);
  m.image = image;
}

/** An axis label: the token with visible whitespace, cut with an ellipsis past LABEL_MAX px in ctx's font. */
export function labelText(ctx, token) {
  let text = visibleToken(token);
  if (ctx.measureText(text).width <= LABEL_MAX) return text;
  while (text.length > 1 && ctx.measureText(text + "\u2026").width > LABEL_MAX) text = text.slice(0, -1);
  return text + "\u2026";
}

const cells = (m) => (m.size - m.margin) / m.cell;  // how many rows (and columns) are visible

/** Every k-th token gets a label when cells are `cell` px: the screen and exported figures thin alike. */
export const labelStep = (cell) => Math.ceil(MIN_LABEL_CELL / cell);

/** The rows and columns in view, as [first, end) each (all of them when fitted). */
export function visibleRange(m) {
  const n = m.tokens.length, span = cells(m);
  const part = (o) => [Math.max(0, Math.floor(o + 1e-9)), Math.min(n, Math.ceil(o + span - 1e-9))];
  return { rows: part(m.oy), cols: part(m.ox) };
}

/** Size the canvas to `size` px square, leave room for the labels and (when fitting) fit every cell. */
export function layout(m, size) {
  const ctx = m.canvas.getContext("2d");
  ctx.font = LABEL_FONT;
  const widest = Math.min(LABEL_MAX, Math.max(0, ...m.tokens.map((t) => ctx.measureText(visibleToken(t)).width)));
  m.margin = Math.ceil(widest) + 12;
  const dpr = window.devicePixelRatio || 1;
  m.canvas.style.width = m.canvas.style.height = `${size}px`;
  m.canvas.width = m.canvas.height = Math.round(size * dpr);
  m.size = size;
  m.fitCell = (size - m.margin) / Math.max(1, m.tokens.length);
  if (m.fit || m.cell < m.fitCell) Object.assign(m, { cell: m.fitCell, ox: 0, oy: 0, fit: true });
  clampOffset(m);
}

function clampOffset(m) {
  const max = Math.max(0, m.tokens.length - cells(m));
  m.ox = Math.max(0, Math.min(max, m.ox));
  m.oy = Math.max(0, Math.min(max, m.oy));
}

/** Draw the visible part, the labels, and the active cell ({q, k}, or null; `pinned` colours its frame). */
export function draw(m, cell, pinned) {
  const { canvas } = m, ctx = canvas.getContext("2d");
  const n = m.tokens.length, cs = m.cell, ml = m.margin, span = cells(m);
  Object.assign(canvas.dataset, { marginLeft: ml, marginTop: ml, cell: cs, ox: m.ox, oy: m.oy });
  ctx.setTransform(canvas.width / m.size, 0, 0, canvas.width / m.size, 0, 0);
  ctx.clearRect(0, 0, m.size, m.size);
  ctx.fillStyle = cssColor("--placeholder");
  ctx.fillRect(ml, ml, Math.min(span, n) * cs, Math.min(span, n) * cs);
  if (m.image) {
    ctx.imageSmoothingEnabled = false;
    const w = Math.min(span, n - m.ox), h = Math.min(span, n - m.oy);
    ctx.drawImage(m.image, m.ox, m.oy, w, h, ml, ml, w * cs, h * cs);
  }
  drawLabels(m, ctx, cell);
  if (cell && cell.q < n && cell.k < n) drawCrosshair(m, ctx, cell, pinned);
}

function drawLabels(m, ctx, cell) {
  const { tokens } = m, cs = m.cell, ml = m.margin, span = cells(m);
  const step = labelStep(cs);
  const colours = { fg: cssColor("--fg"), accent: cssColor("--accent"), muted: cssColor("--muted") };
  const colour = (hot) => (hot ? colours.accent : step > 1 ? colours.muted : colours.fg);
  ctx.font = LABEL_FONT;
  ctx.textBaseline = "middle";
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, ml, m.size, m.size - ml);
  ctx.clip();
  ctx.textAlign = "right";
  for (let i = Math.floor(m.oy); i < Math.min(tokens.length, Math.ceil(m.oy + span)); i++) {
    const hot = cell?.q === i;
    if (!hot && i % step) continue;
    ctx.fillStyle = colour(hot);
    ctx.fillText(labelText(ctx, tokens[i]), ml - 4, ml + (i - m.oy + 0.5) * cs);
  }
  ctx.restore();
  ctx.save();
  ctx.beginPath();
  ctx.rect(ml, 0, m.size - ml, ml);
  ctx.clip();
  ctx.textAlign = "left";
  for (let i = Math.floor(m.ox); i < Math.min(tokens.length, Math.ceil(m.ox + span)); i++) {
    const hot = cell?.k === i;
    if (!hot && i % step) continue;
    ctx.save();
    ctx.translate(ml + (i - m.ox + 0.5) * cs, ml - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.fillStyle = colour(hot);
    ctx.fillText(labelText(ctx, tokens[i]), 0, 0);
    ctx.restore();
  }
  ctx.restore();
}

function drawCrosshair(m, ctx, cell, pinned) {
  const cs = m.cell, ml = m.margin, width = Math.min(cells(m), m.tokens.length) * cs;
  const x = ml + (cell.k - m.ox) * cs, y = ml + (cell.q - m.oy) * cs;
  ctx.save();
  ctx.beginPath();
  ctx.rect(ml, ml, width, width);
  ctx.clip();
  ctx.fillStyle = cssColor("--crosshair");
  ctx.fillRect(ml, y, width, cs);
  ctx.fillRect(x, ml, cs, width);
  ctx.restore();
  ctx.lineWidth = 2;
  ctx.strokeStyle = cssColor(pinned ? "--pinned" : "--cursor");
  ctx.strokeRect(x - 1, y - 1, cs + 2, cs + 2);
  ctx.fillStyle = cssColor("--accent");
  ctx.fillRect(ml - 3, y, 3, cs);
  ctx.fillRect(x, ml - 3, cs, 3);
}

/** The cell ({q, k}) under a mouse event, or null outside the matrix. */
export function cellAt(m, event) {
  const r = m.canvas.getBoundingClientRect();
  const x = event.clientX - r.left - m.margin, y = event.clientY - r.top - m.margin;
  if (x < 0 || y < 0) return null;
  const k = Math.floor(m.ox + x / m.cell), q = Math.floor(m.oy + y / m.cell);
  return q < m.tokens.length && k < m.tokens.length ? { q, k } : null;
}

/** Pan so a cell is visible (when zoomed in). */
export function scrollTo(m, { q, k }) {
  const span = cells(m);
  if (k < m.ox) m.ox = k;
  if (k + 1 > m.ox + span) m.ox = k + 1 - span;
  if (q < m.oy) m.oy = q;
  if (q + 1 > m.oy + span) m.oy = q + 1 - span;
  clampOffset(m);
}

/** Pan by a number of cells. */
export function pan(m, dk, dq) {
  m.ox += dk;
  m.oy += dq;
  clampOffset(m);
}

/** Zoom by `factor` (0: fit) keeping the cell `around` (else the centre) in place. */
export function zoom(m, factor, around) {
  const span = cells(m);
  const cq = around ? around.q + 0.5 : m.oy + span / 2, ck = around ? around.k + 0.5 : m.ox + span / 2;
  const fy = (cq - m.oy) / span, fx = (ck - m.ox) / span;
  m.cell = Math.max(m.fitCell, Math.min(MAX_CELL, factor ? m.cell * factor : m.fitCell));
  m.fit = m.cell <= m.fitCell + 1e-9;
  const newSpan = cells(m);
  m.oy = cq - fy * newSpan;
  m.ox = ck - fx * newSpan;
  clampOffset(m);
}
