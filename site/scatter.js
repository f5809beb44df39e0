// The heads page's scatter, as Anthropic's HeadVis draws one: every head of the chosen models at two statistics
// of their stats.json, each a summary over prompts (the mean, a quantile, ...), on linear or log axes with ticks
// and titles. Its colours, dots and picking are the map's (kinds.js), so a head looks the same in both.
import { cssColor, formatNumber } from "./dom.js";
import { canvasContext, drawPoints, pickPoint, pointLabel } from "./kinds.js";

/** The summaries over prompts stats.json holds for each head (the URL's names), with their short labels. */
export const SUMMARIES = { mean: "mean", std: "std", min: "min", "0.05": "5%", "0.25": "25%", "0.5": "median",
  "0.75": "75%", "0.95": "95%", max: "max" };
const LONG = { mean: "mean over prompts", std: "std over prompts", min: "min over prompts", "0.05": "5% quantile",
  "0.25": "25% quantile", "0.5": "median", "0.75": "75% quantile", "0.95": "95% quantile", max: "max over prompts" };

/** One head's summary of a statistic in a model's stats.json (quantiles under "quantiles"); NaN where it has none. */
export function summaryValue(stats, name, summary, layer, head) {
  const stat = stats?.stats[name];
  const table = !stat || !(summary in SUMMARIES) ? null : summary.startsWith("0.") ? stat.quantiles?.[summary] : stat[summary];
  const value = table?.[layer]?.[head];
  return typeof value === "number" ? value : NaN;
}

/** The default axes [x, y]: induction against previous-token where a model has them, else its first two statistics. */
export function defaultAxes(names) {
  const x = names.includes("induction_head") ? "induction_head" : names[0] ?? "";
  const y = names.includes("previous_token_head") && x !== "previous_token_head" ? "previous_token_head"
    : names.find((n) => n !== x) ?? x;
  return [x, y];
}

/** An axis as its title and the hover name it: "induction_head (mean over prompts)", "induction_head mean". */
export const axisTitle = (name, summary) => `${name} (${LONG[summary]})`;
export const axisShort = (name, summary) => `${name} ${SUMMARIES[summary]}`;

/** The heads with a value on both axes, at those values: {points, missing (no value of x or y), nonPositive
 * (a value <= 0 on a log axis)}. `axes`: {x, xsum, xlog, y, ysum, ylog}; `statsOf`: model -> its stats.json. */
export function scatterPoints(heads, statsOf, axes) {
  const out = { points: [], missing: 0, nonPositive: 0 };
  for (const p of heads) {
    const stats = statsOf.get(p.model);
    const x = summaryValue(stats, axes.x, axes.xsum, p.layer, p.head), y = summaryValue(stats, axes.y, axes.ysum, p.layer, p.head);
    if (Number.isNaN(x) || Number.isNaN(y)) out.missing++;
    else if ((axes.xlog && x <= 0) || (axes.ylog && y <= 0)) out.nonPositive++;
    else out.points.push({ ...p, x, y });
  }
  return out;
}

/** A value as hovering shows it: the page's number format, in powers of ten where that would read 0.000. */
export const valueText = (v) => (v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(2) : formatNumber(v));

/** What hovering a scatter point shows: the head, its kinds, its x and y values. */
export const scatterLabel = (p, axes) => `${pointLabel(p)} \u00b7 x: ${axisShort(axes.x, axes.xsum)} ${valueText(p.x)}`
  + ` \u00b7 y: ${axisShort(axes.y, axes.ysum)} ${valueText(p.y)}`;

// ---- axes ----

/** A tick's text: as many decimals as the step needs, powers of ten for very small or large steps. */
function tickText(v, step, digits) {
  if (v === 0) return "0";
  return step >= 1e5 || step < 1e-4 ? Number(v.toPrecision(6)).toExponential() : v.toFixed(digits);
}

/** About `count` ticks from lo to hi at 1, 2 or 5 times a power of ten. */
function linearTicks(lo, hi, count) {
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw)), f = raw / mag;
  const step = mag * (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10), digits = Math.max(0, -Math.floor(Math.log10(step)));
  const ticks = [];
  for (let i = Math.ceil(lo / step); i * step <= hi; i++) ticks.push({ v: i * step, text: tickText(i * step, step, digits) });
  return ticks;
}

/** Ticks of a log axis from 10^lo to 10^hi: powers of ten (every k-th when there are many), with 2 and 5 times
 * them when fewer than three fit; linear ticks when the range is narrower still. */
function logTicks(lo, hi, count) {
  const all = [];
  for (let k = Math.floor(lo); k <= Math.ceil(hi); k++) {
    for (const m of [1, 2, 5]) if (k + Math.log10(m) >= lo && k + Math.log10(m) <= hi) all.push({ v: m * 10 ** k, m });
  }
  const powers = all.filter((t) => t.m === 1), every = Math.ceil(powers.length / count);
  const ticks = powers.length >= 3 ? powers.filter((_, i) => i % every === 0) : all;
  if (ticks.length < 2) return linearTicks(10 ** lo, 10 ** hi, count).filter((t) => t.v > 0);
  return ticks.map(({ v }) => ({ v, text: v >= 1e5 || v < 1e-3 ? v.toExponential(0) : String(Number(v.toPrecision(3))) }));
}

/** An axis from pixel `from` to `to` over the values (their log10 on a log axis): {domain, ticks, at(v)}. The
 * values' range gets 5% more on each side; a constant axis (all values equal) is centred in 10% around its value
 * (half a decade on a log axis), so its points sit in the middle, not on an edge. */
export function axisScale(values, log, from, to, count) {
  const t = log ? Math.log10 : (v) => v;
  let lo = Infinity, hi = -Infinity;
  for (const v of values) [lo, hi] = [Math.min(lo, t(v)), Math.max(hi, t(v))];
  if (!values.length) [lo, hi] = [0, 1];
  const pad = lo === hi ? (log ? 0.5 : Math.abs(lo) * 0.1 || 1) : (hi - lo) * 0.05;
  [lo, hi] = [lo - pad, hi + pad];
  return {
    domain: log ? [10 ** lo, 10 ** hi] : [lo, hi],
    ticks: log ? logTicks(lo, hi, count) : linearTicks(lo, hi, count),
    at: (v) => from + ((t(v) - lo) / (hi - lo)) * (to - from),
  };
}

/** Grid lines and tick labels at the ticks, the two axis lines and their titles. */
function drawAxes(ctx, { xs, ys, frame: [left, top, right, bottom], x, y, H }) {
  ctx.lineWidth = 1;
  ctx.strokeStyle = cssColor("--border");
  ctx.fillStyle = cssColor("--muted");
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const t of xs.ticks) {
    const px = Math.round(xs.at(t.v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(px, top);
    ctx.lineTo(px, bottom + 4);
    ctx.stroke();
    ctx.fillText(t.text, px, bottom + 6);
  }
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const t of ys.ticks) {
    const py = Math.round(ys.at(t.v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left - 4, py);
    ctx.lineTo(right, py);
    ctx.stroke();
    ctx.fillText(t.text, left - 6, py);
  }
  ctx.strokeStyle = cssColor("--muted");
  ctx.beginPath();
  ctx.moveTo(left + 0.5, top);
  ctx.lineTo(left + 0.5, bottom + 0.5);
  ctx.lineTo(right, bottom + 0.5);
  ctx.stroke();
  ctx.fillStyle = cssColor("--fg");
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  ctx.fillText(`${x.title}${x.log ? ", log" : ""}`, (left + right) / 2, H - 3);
  ctx.save();
  ctx.translate(4, (top + bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "top";
  ctx.fillText(`${y.title}${y.log ? ", log" : ""}`, 0, 0);
  ctx.restore();
}

/** Draw the scatter: axes (x, y: {title, log}), then the points in `colours` (kinds.pointColours). Returns
 * {pick(x, y)}. The canvas's data-points counts the points, data-frame is the plot's pixel box (left, top, right,
 * bottom) and data-x-domain, data-y-domain the values at its edges, so a value's place can be checked. */
export function drawScatter(canvas, points, { x, y, colours }) {
  const { ctx, W, H } = canvasContext(canvas);
  ctx.font = `11px ${getComputedStyle(canvas).fontFamily}`;
  const top = 10, right = W - 16, bottom = H - 38;
  const ys = axisScale(points.map((p) => p.y), y.log, bottom, top, Math.max(2, Math.floor((bottom - top) / 45)));
  const left = Math.ceil(26 + Math.max(0, ...ys.ticks.map((t) => ctx.measureText(t.text).width)));
  const xs = axisScale(points.map((p) => p.x), x.log, left, right, Math.max(2, Math.floor((right - left) / 90)));
  const frame = [left, top, right, bottom];
  drawAxes(ctx, { xs, ys, frame, x, y, H });
  for (const p of points) Object.assign(p, { px: xs.at(p.x), py: ys.at(p.y) });
  drawPoints(ctx, points, colours);
  if (!points.length) {
    ctx.fillStyle = cssColor("--muted");
    ctx.textBaseline = "middle";
    ctx.fillText("no head has a value of both", (left + right) / 2, (top + bottom) / 2);
  }
  Object.assign(canvas.dataset, {
    points: String(points.length), frame: frame.join(","), xDomain: xs.domain.join(","), yDomain: ys.domain.join(","),
  });
  canvas.setAttribute("aria-label", `scatter of ${points.length} heads: x ${x.title}${x.log ? " (log)" : ""} from `
    + `${valueText(xs.domain[0])} to ${valueText(xs.domain[1])}, y ${y.title}${y.log ? " (log)" : ""} from `
    + `${valueText(ys.domain[0])} to ${valueText(ys.domain[1])}`);
  return { pick: (px, py) => pickPoint(points, px, py) };
}
