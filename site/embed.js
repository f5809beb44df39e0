// A self-contained view (build_index.py --html, notebook.py attention_view): the site's own pages and
// modules and the data they read, all inside one HTML document that fetches nothing. standalone.py inlines
// this script there, with the files as JSON (#attn-files: {text: {path: text}, base64: {path: bytes}}) and
// the panes to show (#attn-panes: [{url, home, height}]). Each pane is an iframe; a page is written into it
// from its HTML, its modules run from blob: URLs, and data.js's fetch is answered from memory (byte ranges
// included, as serve.py answers them). Navigation between pages opens them in the pane whose home they are.

const { text: TEXTS, base64: BASE64 } = JSON.parse(document.getElementById("attn-files").textContent);
const PANES = JSON.parse(document.getElementById("attn-panes").textContent);
const bytes = new Map();
const moduleUrls = new Map();
const IMPORT = /(\b(?:from|import)\s*)"\.\/([\w.-]+\.js)"/g;  // the site's imports: from "./data.js"
// The address of a single-pane file opened on its own is kept after '#', so a reload or a link reopens the view.
const OWN_ADDRESS = window.top === window && PANES.length === 1;

/** A file's bytes, decoded from the JSON on first use; undefined when the file is not embedded. */
function fileBytes(path) {
  if (!bytes.has(path)) {
    if (path in TEXTS) bytes.set(path, new TextEncoder().encode(TEXTS[path]));
    else if (path in BASE64) bytes.set(path, decodeBase64(BASE64[path]));
    else return undefined;
  }
  return bytes.get(path);
}

function decodeBase64(b64) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(b64);  // 5x the loop's speed where browsers have it
  const binary = atob(b64), out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

function fileText(path) {
  if (!(path in TEXTS)) throw new Error(`${path}: not in this file`);
  return TEXTS[path];
}

/** A site module as a blob: URL, its imports of other site modules pointing at their blob: URLs. */
function moduleUrl(path) {
  if (!moduleUrls.has(path)) {
    const source = fileText(path).replace(IMPORT, (_, head, dep) => `${head}"${moduleUrl(dep)}"`);
    moduleUrls.set(path, URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
  }
  return moduleUrls.get(path);
}

/** A page's HTML with its stylesheet inlined, its module from a blob: URL, no preloads (they would fetch),
 * and first a script that hands the frame its fetch and address (enterFrame). */
function pageHtml(file, pane) {
  const doc = new DOMParser().parseFromString(fileText(file), "text/html");
  doc.querySelectorAll('link[rel="modulepreload"], link[rel="preload"]').forEach((link) => link.remove());
  for (const link of doc.querySelectorAll('link[rel="stylesheet"]')) {
    const style = doc.createElement("style");
    style.textContent = fileText(link.getAttribute("href"));
    link.replaceWith(style);
  }
  for (const script of doc.querySelectorAll("script[src]")) script.setAttribute("src", moduleUrl(script.getAttribute("src")));
  const enter = doc.createElement("script");
  enter.textContent = `parent.attnEnterFrame(window, ${pane});`;
  doc.head.prepend(enter);
  return `<!doctype html>\n${doc.documentElement.outerHTML}`;
}

/** fetch() for a page: the embedded file as a Response of the page's own realm; a Range header gets a 206 with
 * its part (a-b, a- and -n, as serve.py), 416 past the end, the whole file when malformed; a file not embedded
 * is a 404. */
function serve(win, path, init) {
  const name = decodeURIComponent(String(path).split(/[?#]/)[0].replace(/^\.\//, ""));
  const data = fileBytes(name);
  if (!data) return Promise.resolve(new win.Response("", { status: 404, statusText: "Not Found" }));
  const range = /^bytes=(\d*)-(\d*)$/i.exec((new win.Headers(init?.headers).get("Range") ?? "").trim());
  const [first, last] = range ? [range[1], range[2]].map((g) => (g ? Number(g) : null)) : [null, null];
  if (first === null ? last === null : last !== null && first > last) {
    return Promise.resolve(new win.Response(data, { status: 200 }));
  }
  const size = data.length;
  const start = first ?? Math.max(0, size - last);
  const end = first !== null && last !== null ? Math.min(last, size - 1) : size - 1;
  if (start >= size) {
    return Promise.resolve(new win.Response("", { status: 416, statusText: "Range Not Satisfiable" }));
  }
  return Promise.resolve(new win.Response(data.subarray(start, end + 1), {
    status: 206, headers: { "Content-Range": `bytes ${start}-${end}/${size}` },
  }));
}

/** The page file and query of a link or pageUrl result ("single.html?model=m", or a link's absolute href). */
function parseAddress(url) {
  const u = new URL(url, "http://embedded/");
  return { file: u.pathname.split("/").pop() || "index.html", search: u.search };
}

function go(from, url) {
  const { file, search } = parseAddress(url);
  if (!(file in TEXTS)) throw new Error(`${file}: not in this file`);
  const pane = PANES.find((p) => p.home === file) ?? from;
  show(pane, file + search);
  if (OWN_ADDRESS) history.pushState(null, "", `#${pane.url}`);
}

/** Called by each page before its modules run: data.js's fetch and url.js's address come from here. */
window.attnEnterFrame = (win, index) => {
  const pane = PANES[index];
  win.attnFetch = (path, init) => serve(win, path, init);
  win.attnEmbed = {
    search: parseAddress(pane.url).search,
    replace(url) {
      pane.url = url;
      this.search = parseAddress(url).search;
      if (OWN_ADDRESS) history.replaceState(null, "", `#${url}`);
    },
    go: (url) => go(pane, url),
  };
  win.addEventListener("click", (e) => {  // after the page's own handlers: links between pages open here
    const a = e.target.closest?.("a[href]");
    if (!a || e.defaultPrevented || a.hasAttribute("download")) return;
    if (!(parseAddress(a.getAttribute("href")).file in TEXTS)) return;
    e.preventDefault();
    go(pane, a.getAttribute("href"));
  });
};

/** Open a page in a pane: a fresh iframe (a fresh realm: the page's modules run again) written from its HTML. */
function show(pane, url) {
  pane.url = url;
  const frame = document.createElement("iframe");
  frame.title = parseAddress(url).file;
  pane.box.replaceChildren(frame);
  frame.contentDocument.open();
  frame.contentDocument.write(pageHtml(parseAddress(url).file, PANES.indexOf(pane)));
  frame.contentDocument.close();
}

for (const pane of PANES) {
  pane.box = document.createElement("div");
  pane.box.className = "attn-pane";
  pane.box.style.height = pane.height;
  document.body.append(pane.box);
}
const START = PANES[0].url;  // where the back button ends: the address the file was written with
if (OWN_ADDRESS && location.hash.length > 1) PANES[0].url = location.hash.slice(1);
PANES.forEach((pane) => show(pane, pane.url));
if (OWN_ADDRESS) window.addEventListener("popstate", () => show(PANES[0], location.hash.slice(1) || START));
