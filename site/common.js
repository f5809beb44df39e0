// What the site's pages share: fetching, the data dir's path scheme (mirrors lens.py),
// state kept in the URL, a small element builder and the dark-mode toggle.

// ---- fetching -------------------------------------------------------------

/** GET a URL; a failed request names the path and the HTTP status. */
export async function fetchOk(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error(`${path}: ${e.message}`);
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${response.statusText}`);
  return response;
}

export async function fetchText(path) {
  return (await fetchOk(path)).text();
}

export async function fetchJson(path) {
  const text = await fetchText(path);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${e.message})`);
  }
}

/** Rows of a JSONL file; a bad line names the file and the line number. */
export async function fetchJsonl(path) {
  return parseJsonl(await fetchText(path), path);
}

export function parseJsonl(text, path = "") {
  const rows = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i].trim()) continue;
    try {
      rows.push(JSON.parse(lines[i]));
    } catch (e) {
      throw new Error(`${path}:${i + 1}: not valid JSON (${e.message})`);
    }
  }
  return rows;
}

/** Like fetchJson, but `fallback` when the file does not exist (optional indexes such as stats.json). */
export async function fetchJsonOptional(path, fallback = null) {
  const response = await fetch(path);
  if (response.status === 404) return fallback;
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${response.statusText}`);
  return JSON.parse(await response.text());
}

// ---- path scheme: one function per path, as lens.prompt_dir builds them in Python ----
// `model` is the model's directory name (lens.model_dir_name), as listed in models.jsonl's "model_dir".

export const MODELS_URL = "models.jsonl";
export const FIGURES_URL = "figures.jsonl";
export const modelDir = (model) => `${model}/`;
export const modelCfgUrl = (model) => `${model}/model_cfg.json`;
export const promptsUrl = (model) => `${model}/prompts.jsonl`;
export const statsUrl = (model) => `${model}/stats.json`;
export const statTableUrl = (model, stat) => `${model}/stats/${stat}.f32`;
export const promptDir = (model, hash) => `${model}/prompts/${hash}/`;
export const promptJsonUrl = (model, hash) => `${promptDir(model, hash)}prompt.json`;
export const patternsUrl = (model, hash) => `${promptDir(model, hash)}patterns.bin`;
export const promptStatsUrl = (model, hash) => `${promptDir(model, hash)}stats.json`;
export const headDir = (model, hash, layer, head) => `${promptDir(model, hash)}L${layer}/H${head}/`;
/** Image of one figure output (`raw`, or `func.name` for a multi-figure) in its figure's format. */
export const imageUrl = (model, hash, layer, head, output, format = "svg") =>
  `${headDir(model, hash, layer, head)}${output}.${format}`;
export const errorUrl = (model, hash, layer, head, output) =>
  `${headDir(model, hash, layer, head)}${output}.error.txt`;

/** Every image output of the figure records (figures.jsonl), as [{output, format, figure}]. */
export function figureOutputs(figures) {
  return figures
    .filter((f) => f.kind !== "statistic")
    .flatMap((f) => f.outputs.map((output) => ({ output, format: f.format || "svg", figure: f })));
}

// ---- URL state: every view's state lives in the query string, so a link reproduces it ----

/** The page's state: each key of `defaults` read from the URL, else its default (all strings). */
export function readState(defaults) {
  const params = new URLSearchParams(location.search);
  const state = {};
  for (const [key, value] of Object.entries(defaults)) state[key] = params.get(key) ?? value;
  return state;
}

/** Put `state` into the URL (values equal to their default are left out), without reloading. */
export function writeState(state, defaults = {}, push = false) {
  const url = `${location.pathname}?${stateQuery(state, defaults)}`;
  if (url !== `${location.pathname}${location.search}`) {
    history[push ? "pushState" : "replaceState"](null, "", url);
  }
}

export function stateQuery(state, defaults = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(state)) {
    if (value !== undefined && value !== null && String(value) !== String(defaults[key] ?? "")) {
      params.set(key, String(value));
    }
  }
  return params.toString();
}

/** Link to the single view of one head (the URL parameters are fixed: other pages build these too). */
export function singleUrl({ model, prompt, layer, head, figure }) {
  return `single.html?${new URLSearchParams({ model, prompt, layer, head, figure })}`;
}

// ---- heads: the `L0-3H*,L5H1` selection syntax ----

/** Heads named by a spec like `L0-3H*,L5H1,L*H0`, as sorted [layer, head] pairs; throws on bad syntax
 * and, when `strict`, on a layer or head the model does not have (else those parts select nothing). */
export function parseHeads(spec, nLayers, nHeads, strict = true) {
  const chosen = new Set();
  for (const part of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^L([0-9*]+(?:-[0-9]+)?)H([0-9*]+(?:-[0-9]+)?)$/i.exec(part.replace(/\s+/g, ""));
    if (!m) throw new Error(`"${part}" is not a head spec (try L0-3H*, L5H1, L*H0)`);
    for (const l of parseRange(m[1], nLayers, "layer", strict)) {
      for (const h of parseRange(m[2], nHeads, "head", strict)) chosen.add(l * nHeads + h);
    }
  }
  return [...chosen].sort((a, b) => a - b).map((i) => [Math.floor(i / nHeads), i % nHeads]);
}

function parseRange(text, n, what, strict) {
  if (text === "*") return range(n);
  const [a, b] = text.split("-").map(Number);
  const last = Number.isNaN(b) || b === undefined ? a : b;
  if (a > last) throw new Error(`${what} range ${text} runs backwards`);
  if (a >= n && strict) throw new Error(`no ${what} ${a}: ${what}s are 0-${n - 1}`);
  return range(Math.min(last, n - 1) + 1).filter((i) => i >= a);  // a range may run past the end: L8-99H*
}

/** The shortest spec for a set of heads: whole layers as `L0-3H*`, the rest per head. */
export function formatHeads(heads, nLayers, nHeads) {
  const byLayer = Array.from({ length: nLayers }, () => []);
  for (const [l, h] of heads) byLayer[l].push(h);
  const parts = [];
  let l = 0;
  while (l < nLayers) {
    if (byLayer[l].length === nHeads) {
      let end = l;
      while (end + 1 < nLayers && byLayer[end + 1].length === nHeads) end++;
      parts.push(end > l ? `L${l}-${end}H*` : `L${l}H*`);
      l = end + 1;
      continue;
    }
    for (const h of byLayer[l]) parts.push(`L${l}H${h}`);
    l++;
  }
  return parts.join(",");
}

export const range = (n) => Array.from({ length: n }, (_, i) => i);

// ---- DOM ----

/** Build an element: el("a", {href, class: "x", onclick: f, dataset: {k: v}}, "text", child, [more]). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** A token with its whitespace made visible (space ·, newline ↵, tab →). */
export function visibleToken(token) {
  return token.replace(/ /g, "\u00b7").replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
}

/** Show an error message at the top of the page (and in the console). */
export function showError(message) {
  console.error(message);
  let box = document.getElementById("errors");
  if (!box) {
    box = el("div", { id: "errors", class: "errors", role: "alert" });
    document.body.prepend(box);
  }
  box.append(el("div", {}, String(message)));
}

export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// ---- theme: light/dark follows the system unless the toggle chose one (a preference, not view state) ----

const THEMES = ["auto", "light", "dark"];

export function applyTheme(theme = localStorage.getItem("theme") || "auto") {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

/** A button cycling auto -> light -> dark, for the page header. */
export function themeToggle() {
  const label = () => `theme: ${localStorage.getItem("theme") || "auto"}`;
  const button = el("button", { type: "button", class: "theme-toggle", title: "light / dark / follow the system" }, label());
  button.addEventListener("click", () => {
    const next = THEMES[(THEMES.indexOf(localStorage.getItem("theme") || "auto") + 1) % THEMES.length];
    localStorage.setItem("theme", next);
    applyTheme(next);
    button.textContent = label();
  });
  applyTheme();
  return button;
}

// ---- colormaps: the same tables as lens.colormap_table, for pages that draw from values ----

// viridis anchors as in lens.py, interpolated to 256 entries the same way.
const VIRIDIS_ANCHORS =
  "440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d " +
  "2f6b8e 2c728e 297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a " +
  "3fbc73 4ec36b 5ec962 70cf57 84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725";

/** A 256-entry [[r, g, b], ...] table linearly interpolated between hex anchor colours. */
export function colormapFromAnchors(anchors) {
  const rgb = anchors.trim().split(/\s+/).map((h) => [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)));
  return range(256).map((i) => {
    const x = (i / 255) * (rgb.length - 1), j = Math.min(rgb.length - 2, Math.floor(x)), t = x - j;
    return [0, 1, 2].map((c) => Math.round(rgb[j][c] * (1 - t) + rgb[j + 1][c] * t));
  });
}

/** A colormap as [[r, g, b] x 256]: from the data dir's colormaps.json ({name: ["#rrggbb" x 256]}, written by
 * render_figures.py) when present, else built-in viridis. */
export async function loadColormap(name = "viridis") {
  const tables = await fetchJsonOptional("colormaps.json").catch(() => null);
  const table = tables?.[name];
  if (!table) return colormapFromAnchors(VIRIDIS_ANCHORS);
  return table.map((c) => (typeof c === "string" ? [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)) : c));
}
