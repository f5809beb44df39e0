// Figures for a paper: the single view's panels laid out once as a list of drawing items (title,
// captions, token labels, pattern images, colour bars with ticks), then written as SVG (real <text>
// labels, one pixel-exact image per pattern) or drawn into a PNG at 2x or 4x; and one head's rendered
// figure image as a standalone SVG.
import { range } from "./data.js";
import { formatNumber } from "./dom.js";
import { labelStep, labelText } from "./matrix.js";

const FONT = "'DejaVu Sans Mono', Menlo, Consolas, monospace";
const LABEL_SIZE = 11, CAPTION_SIZE = 12, TITLE_SIZE = 14;
const MATRIX = 480;  // units of a panel's matrix side at most; cells are at most 16 units
const BAR = 10, GAP = 24, PAD = 16;

/** The scene of a figure: {width, height, items}. `panels` are {caption, shown: {n, values, header},
 * tokens, colormap, colour (matrix.colourScale), rows: [q0, q1), cols: [k0, k1)}; colours are CSS colour strings. */
export function figureScene({ title, panels, colours }) {
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = `${LABEL_SIZE}px ${FONT}`;
  const items = [{ type: "rect", x: 0, y: 0, w: 0, h: 0, fill: colours.bg }];
  let x = PAD, bottom = 0;
  const top = PAD + TITLE_SIZE + 10;
  items.push({ type: "text", x: PAD, y: PAD + TITLE_SIZE, text: title, size: TITLE_SIZE, fill: colours.fg, weight: "bold" });
  for (const panel of panels) {
    const { width, height } = panelItems(panel, x, top, measure, colours, items);
    x += width + GAP;
    bottom = Math.max(bottom, top + height);
  }
  const width = Math.ceil(Math.max(x - GAP + PAD, PAD * 2 + measure.measureText(title).width * (TITLE_SIZE / LABEL_SIZE)));
  const height = Math.ceil(bottom + PAD);
  Object.assign(items[0], { w: width, h: height });
  return { width, height, items };
}

function panelItems(panel, x0, y0, measure, colours, items) {
  const [q0, q1] = panel.rows, [k0, k1] = panel.cols, count = Math.max(q1 - q0, k1 - k0);
  const cell = Math.min(16, MATRIX / count), step = labelStep(cell);
  const rowLabels = range(q0, q1).filter((i) => i % step === 0).map((i) => [i, labelText(measure, panel.tokens[i])]);
  const colLabels = range(k0, k1).filter((i) => i % step === 0).map((i) => [i, labelText(measure, panel.tokens[i])]);
  const widest = (labels) => Math.max(0, ...labels.map(([, t]) => measure.measureText(t).width));
  const left = Math.ceil(widest(rowLabels)) + 8, head = Math.ceil(widest(colLabels)) + 8;
  const mx = x0 + left, my = y0 + CAPTION_SIZE + 6 + head, w = (k1 - k0) * cell, h = (q1 - q0) * cell;
  items.push({ type: "text", x: x0, y: y0 + CAPTION_SIZE, text: panel.caption, size: CAPTION_SIZE, fill: colours.fg });
  for (const [i, text] of rowLabels) {
    items.push({ type: "text", x: mx - 4, y: my + (i - q0 + 0.5) * cell, text, size: LABEL_SIZE, fill: colours.fg,
      anchor: "end", middle: true, role: "row-label" });
  }
  for (const [i, text] of colLabels) {
    items.push({ type: "text", x: mx + (i - k0 + 0.5) * cell, y: my - 4, text, size: LABEL_SIZE, fill: colours.fg,
      rotate: -90, middle: true, role: "col-label" });
  }
  items.push({ type: "rect", x: mx, y: my, w, h, fill: colours.placeholder });
  items.push({ type: "image", x: mx, y: my, w, h, canvas: patternImage(panel) });
  const barY = my + h + 12;
  items.push({ type: "bar", x: mx, y: barY, w: Math.max(w, 120), h: BAR, colormap: panel.colormap, stroke: colours.muted });
  for (const v of ticks(panel.colour)) {
    const tx = mx + panel.colour.position(v) * Math.max(w, 120);
    items.push({ type: "line", x1: tx, y1: barY + BAR, x2: tx, y2: barY + BAR + 4, stroke: colours.fg });
    items.push({ type: "text", x: tx, y: barY + BAR + 6 + LABEL_SIZE, text: formatNumber(v, 2), size: LABEL_SIZE - 1,
      fill: colours.fg, anchor: "middle", role: "tick" });
  }
  return { width: left + Math.max(w, 120) + 20, height: my - y0 + h + 12 + BAR + 10 + LABEL_SIZE + 4 };
}

/** Five ticks from the scale's low end to its high end (0 in the middle when diverging). */
function ticks(colour) {
  return range(5).map((i) => colour.lo + ((colour.hi - colour.lo) * i) / 4);
}

/** The shown region of a pattern as an image with one pixel per cell; masked cells stay transparent. */
function patternImage({ shown, colormap, colour, rows: [q0, q1], cols: [k0, k1] }) {
  const canvas = document.createElement("canvas");
  canvas.width = k1 - k0;
  canvas.height = q1 - q0;
  const ctx = canvas.getContext("2d"), pixels = ctx.createImageData(canvas.width, canvas.height);
  const { n, values, header } = shown;
  for (let q = q0; q < q1; q++) {
    for (let k = k0; k < (header.layout === "tril" ? Math.min(k1, q + 1) : k1); k++) {
      const c = colormap[colour.index(values[q * n + k])];
      pixels.data.set([c[0], c[1], c[2], 255], 4 * ((q - q0) * canvas.width + (k - k0)));
    }
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

const escape = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const num = (v) => String(Math.round(v * 100) / 100);
const stops = (colormap) => range(17).map((i) => colormap[Math.min(255, i * 16)]);

/** The scene as an SVG document. */
export function sceneSvg({ width, height, items }) {
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" `
    + `font-family="${escape(FONT)}">`];
  let gradients = 0;
  for (const it of items) {
    if (it.type === "rect") out.push(`<rect x="${num(it.x)}" y="${num(it.y)}" width="${num(it.w)}" height="${num(it.h)}" fill="${it.fill}"/>`);
    if (it.type === "line") out.push(`<line x1="${num(it.x1)}" y1="${num(it.y1)}" x2="${num(it.x2)}" y2="${num(it.y2)}" stroke="${it.stroke}"/>`);
    if (it.type === "image") {
      out.push(`<image x="${num(it.x)}" y="${num(it.y)}" width="${num(it.w)}" height="${num(it.h)}" preserveAspectRatio="none" `
        + `style="image-rendering: pixelated" image-rendering="optimizeSpeed" href="${it.canvas.toDataURL("image/png")}"/>`);
    }
    if (it.type === "bar") {
      const id = `bar${gradients++}`;
      out.push(`<linearGradient id="${id}">${stops(it.colormap).map((c, i) => `<stop offset="${i / 16}" stop-color="rgb(${c.join(",")})"/>`).join("")}</linearGradient>`);
      out.push(`<rect x="${num(it.x)}" y="${num(it.y)}" width="${num(it.w)}" height="${it.h}" fill="url(#${id})" stroke="${it.stroke}" stroke-width="0.5"/>`);
    }
    if (it.type === "text") {
      const attrs = [`x="${num(it.x)}"`, `y="${num(it.y)}"`, `font-size="${it.size}"`, `fill="${it.fill}"`];
      if (it.anchor) attrs.push(`text-anchor="${it.anchor}"`);
      if (it.middle) attrs.push(`dominant-baseline="central"`);
      if (it.weight) attrs.push(`font-weight="${it.weight}"`);
      if (it.rotate) attrs.push(`transform="rotate(${it.rotate} ${num(it.x)} ${num(it.y)})"`);
      if (it.role) attrs.push(`class="${it.role}"`);
      out.push(`<text ${attrs.join(" ")} xml:space="preserve">${escape(it.text)}</text>`);
    }
  }
  out.push("</svg>");
  return out.join("\n");
}

/** A PNG (ArrayBuffer) as an <svg> holding it, drawn pixelated at its own size: byte for byte what
 * lens.png_as_svg writes (and render_figures.py --export-svg). */
export function pngAsSvg(png) {
  const view = new DataView(png), w = view.getUint32(16), h = view.getUint32(20);  // IHDR, after the signature
  const bytes = new Uint8Array(png);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">`
    + `<image width="${w}" height="${h}" style="image-rendering:pixelated" preserveAspectRatio="none" `
    + `href="data:image/png;base64,${btoa(binary)}"/></svg>`;
}

/** The scene drawn at `scale` device pixels per unit, as a PNG blob. */
export function scenePng({ width, height, items }, scale) {
  const canvas = document.createElement("canvas");
  canvas.width = width * scale;
  canvas.height = height * scale;
  const ctx = canvas.getContext("2d");
  ctx.scale(scale, scale);
  for (const it of items) {
    if (it.type === "rect") {
      ctx.fillStyle = it.fill;
      ctx.fillRect(it.x, it.y, it.w, it.h);
    } else if (it.type === "line") {
      ctx.strokeStyle = it.stroke;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(it.x1, it.y1);
      ctx.lineTo(it.x2, it.y2);
      ctx.stroke();
    } else if (it.type === "image") {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(it.canvas, it.x, it.y, it.w, it.h);
    } else if (it.type === "bar") {
      const gradient = ctx.createLinearGradient(it.x, 0, it.x + it.w, 0);
      stops(it.colormap).forEach((c, i) => gradient.addColorStop(i / 16, `rgb(${c.join(",")})`));
      ctx.fillStyle = gradient;
      ctx.fillRect(it.x, it.y, it.w, it.h);
    } else if (it.type === "text") {
      ctx.save();
      ctx.font = `${it.weight ?? "normal"} ${it.size}px ${FONT}`;
      ctx.fillStyle = it.fill;
      ctx.textAlign = it.anchor === "end" ? "right" : it.anchor === "middle" ? "center" : "left";
      ctx.textBaseline = it.middle ? "middle" : "alphabetic";
      ctx.translate(it.x, it.y);
      if (it.rotate) ctx.rotate((it.rotate * Math.PI) / 180);
      ctx.fillText(it.text, 0, 0);
      ctx.restore();
    }
  }
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

/** Save a blob as a file through the browser's download. */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  Object.assign(a, { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
