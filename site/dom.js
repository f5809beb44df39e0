// The small DOM helpers the pages share: building elements, the one number format, the one error
// policy, the theme toggle, a head's histogram and top prompts (heads page, head page) and the pages' common shape
// (load, render, wire).

export const $ = (id) => document.getElementById(id);

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

/** Replace a <select>'s options; `label` turns a value into its text. */
export function fillSelect(select, values, current, label = String) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, selected: String(v) === String(current) }, label(v))));
}

/** The one number format: `digits` decimals (a statistic: 3; an attention weight: 5, its stored
 * precision), no decimals from 1000 on, and an en dash where there is no value. */
export function formatNumber(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(Number(v))) return "\u2013";
  return Math.abs(v) >= 1000 ? Number(v).toFixed(0) : Number(v).toFixed(digits);
}

/** A token with its whitespace made visible (space ·, newline ↵, tab →). */
export const visibleToken = (token) => oneLine(token.replace(/ /g, "\u00b7"));

/** Text on one line: newlines and tabs shown as ↵ and →. */
export const oneLine = (text) => text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");

/** A prompt's text as a label: on one line, whitespace runs as one space, cut to `chars` with an ellipsis. */
export function promptLabel(text, chars) {
  const line = text.replace(/\s+/g, " ");
  return line.length > chars ? `${line.slice(0, chars)}\u2026` : line;
}

/** Whether a key press belongs to a text field or a shortcut of the browser: a page's own keys ignore it. */
export const notForPage = (e) => e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey;

/** A colour bar from lo to hi in the colormap's colours (a 256-entry RGB table), each end labelled;
 * `empty` is said instead when there is no range. */
export function renderLegend(box, lo, hi, colormap, { digits = 3, suffix = "", empty = "" } = {}) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
    box.replaceChildren(...(empty ? [el("span", { class: "muted" }, empty)] : []));
    return;
  }
  const stops = colormap.filter((_, i) => i % 32 === 0 || i === 255).map((c) => `rgb(${c.join(",")})`);
  box.replaceChildren(el("span", { class: "mono" }, formatNumber(lo, digits)),
    el("span", { class: "legend-bar", style: { background: `linear-gradient(to right, ${stops.join(",")})` } }),
    el("span", { class: "mono" }, `${formatNumber(hi, digits)}${suffix}`));
}

/** A head's highest or lowest prompts ([[hash, value]]) as a list: value, snippet (`snippets`: {hash: {text,
 * n_tokens, stored}}), a link to `link(hash)` where the prompt's patterns are stored, else a "not stored" tag. */
export function promptList(title, entries, snippets, link) {
  return el("section", { class: "head-prompts", dataset: { list: title } },
    el("h3", {}, title),
    entries.length ? el("ol", {}, entries.map(([hash, value]) => {
      const p = snippets[hash], text = p ? oneLine(p.text) : hash, kept = p?.stored !== false;
      const tip = `${text}${p ? ` (${p.n_tokens} tokens)` : ""}\n${hash}: ${value}`;
      return el("li", { class: kept ? "" : "unstored", dataset: { hash, value: String(value) }, title: tip },
        el("span", { class: "num mono" }, formatNumber(value)),
        kept ? el("a", { class: "snippet", href: link(hash) }, text) : el("span", { class: "snippet" }, text),
        !kept && el("span", { class: "tag-not-stored" }, "not stored"));
    })) : el("p", { class: "muted" }, "no prompt has a value"));
}

// ---- charts: SVG built by hand (no library) ----

const SVG_NS = "http://www.w3.org/2000/svg";

/** Build an SVG element: svgEl("rect", {x, y, class}, child...). */
export function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

/** The head's histogram over prompts as SVG bars, with its range, the largest count, the mean and this prompt. */
export function histogramSvg(hist, mean, value) {
  if (!hist) return el("p", { class: "notice" }, "no prompt has a value for this head");
  const W = 400, H = 120, L = 34, R = 6, T = 6, B = 18;
  const counts = hist.hi > hist.lo ? hist.counts : [hist.counts.reduce((a, b) => a + b, 0)];
  const top = Math.max(...counts), bw = (W - L - R) / counts.length, span = hist.hi - hist.lo;
  const x = (v) => L + ((v - hist.lo) / (span || 1)) * (W - L - R), y = (c) => T + (1 - c / top) * (H - T - B);
  const chart = svgEl("svg", { class: "head-hist", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `histogram of ${counts.length} bins from ${formatNumber(hist.lo)} to ${formatNumber(hist.hi)}` });
  counts.forEach((c, i) => {
    const a = hist.lo + (i * span) / counts.length, b = hist.lo + ((i + 1) * span) / counts.length;
    chart.append(svgEl("rect", { class: "bar", x: L + i * bw + 0.5, y: y(c), width: Math.max(bw - 1, 0.5), height: H - B - y(c),
      "data-count": c }, svgEl("title", {}, `${formatNumber(a)} to ${formatNumber(b)}: ${c} prompt${c === 1 ? "" : "s"}`)));
  });
  chart.append(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svgEl("text", { x: L, y: H - 4, "text-anchor": "start" }, formatNumber(hist.lo)),
    svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" }, formatNumber(hist.hi)),
    svgEl("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, String(top)),
    svgEl("text", { x: L - 4, y: H - B, "text-anchor": "end" }, "0"));
  for (const [v, cls, label] of [[mean, "mark-mean", "mean"], [value, "mark-prompt", "this prompt"]]) {
    if (Number.isFinite(v) && span > 0) {
      chart.append(svgEl("line", { class: cls, x1: x(v), y1: T, x2: x(v), y2: H - B },
        svgEl("title", {}, `${label}: ${formatNumber(v)}`)));
    }
  }
  return chart;
}

export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// ---- the error policy: every failure is shown at the top of the page (and in the console), never
// swallowed; a file the data dir may lack is not a failure (data.js says which). A page that cannot
// load shows why; a failure after that (one head, one table) is shown and the rest keeps working. ----

export function showError(error) {
  const message = error instanceof Error ? error.message : String(error);
  console.error(message);
  let box = $("errors");
  if (!box) {
    box = el("div", { id: "errors", class: "errors", role: "alert" });
    document.body.prepend(box);
  }
  for (const line of message.split("\n")) box.append(el("div", {}, line));
}

/** Every page's shape: wire the controls, load the data, render; body[data-ready] marks it settled. */
export async function startPage({ load, render, wire }) {
  $("theme").append(themeToggle());
  wire();
  try {
    await load();
    await render();
  } catch (e) {
    showError(e);
  }
  document.body.dataset.ready = "1";
}

// ---- theme: light/dark follows the system unless the toggle chose one (a preference, not view state) ----

const THEMES = ["auto", "light", "dark"];

function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

/** A button cycling auto -> light -> dark, for the page header; fires "themechange" on the document. */
function themeToggle() {
  const current = () => localStorage.getItem("theme") || "auto";
  const button = el("button", { type: "button", class: "theme-toggle", title: "light / dark / follow the system" },
    `theme: ${current()}`);
  button.addEventListener("click", () => {
    const next = THEMES[(THEMES.indexOf(current()) + 1) % THEMES.length];
    localStorage.setItem("theme", next);
    applyTheme(next);
    button.textContent = `theme: ${next}`;
    document.dispatchEvent(new Event("themechange"));
  });
  applyTheme(current());
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    document.dispatchEvent(new Event("themechange"));
  });
  return button;
}

/** A colour variable of style.css resolved to "rgb(...)" for the current theme (canvas code needs it). */
export function cssColor(name) {
  let probe = $("css-probe");
  if (!probe) {
    probe = el("span", { id: "css-probe", hidden: true });
    document.body.append(probe);
  }
  probe.style.color = `var(${name})`;
  return getComputedStyle(probe).color;
}
