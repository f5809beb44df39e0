// Each page's state lives in its URL's query string, so a link reproduces the view; this module
// holds every page's parameters with their defaults and builds the links between the pages.
import { headKey } from "./data.js";

/** URL parameters of each page and their defaults (all strings; lists are comma separated). */
export const PAGES = {
  grid: {
    file: "index.html",
    defaults: {
      models: "",     // model dirs; default: the first model
      heads: "L*H*",  // head spec, see data.parseHeads
      prompts: "",    // prompt hashes; default: the first prompt
      figures: "",    // figure outputs; default: raw, else the first one
      q: "",          // prompt search
      order: "",      // prompt table order: "" (hash), "tokens" (shortest first), "-tokens" (longest first)
      page: "0",      // prompt table page
      size: "160",    // tile width in px
      cols: "",       // tiles per row ("" fills the width with `size`-wide tiles); 12 puts a GPT-2 layer on a row
      group: "",      // model | prompt | layer | head | figure | "" (none)
      sort: "",       // primary sort key (model | prompt | layer | head | figure | stat); "" keeps the natural order
      stat: "",       // statistic shown in captions, used by sort=stat and the range filter
      min: "",
      max: "",
      desc: "",       // "1": statistic sort descending
      controls: "",   // "hide": the controls fold into one summary line, the patterns get the screen
    },
  },
  single: {
    file: "single.html",
    defaults: {
      model: "", prompt: "", layer: "0", head: "0", figure: "raw",
      q: "", k: "",        // the pinned cell (query row, key column)
      shade: "row",        // the text is shaded by the active query row or key column ("col")
      scale: "linear",     // linear | sqrt | max
      vw: "",              // value-weighted: "" attention | "raw" alpha_ij * ||v_j W_O|| | "row" rows summing to 1
      bmodel: "", bprompt: "", blayer: "", bhead: "",  // the pinned pattern B (compare A, B, A - B); none: ""
    },
  },
  heads: {
    file: "heads.html",
    defaults: {
      model: "", stat: "",
      over: "mean",        // mean over prompts | prompt (one prompt's values)
      prompt: "",
      click: "panel",      // what clicking a head opens: panel (its distribution and top prompts) | page | single | grid
      top: "10", order: "desc",
      vs: "",              // a model of the same shape: show this model's values minus its values
      series: "",          // "1": the statistic across the models of the same shape (training checkpoints)
      panel: "",           // the head whose panel is open, as L<layer>H<head>; "" none
      map: "checkpoints",  // the map and the scatter of heads show: model (this one) | checkpoints (its checkpoints) | all
      colour: "kind",      // the map's and the scatter's points are coloured by: kind | layer | model | stat
      cstat: "",           // colour=stat: the statistic; "" the heatmap's
      csum: "mean",        // its summary over prompts: mean | std | min | max | a quantile 0.05 0.25 0.5 0.75 0.95
      plot: "map",         // the panel shows: map (PCA of the fingerprints) | scatter (two statistics) | both
      x: "", y: "",        // the scatter's statistics; "": induction_head and previous_token_head, else the first two
      xsum: "mean", ysum: "mean",  // their summaries over prompts, as csum
      xlog: "", ylog: "",  // "1": a log axis
    },
  },
  head: {
    file: "head.html",
    defaults: {
      model: "", head: "",  // head: L<layer>H<head>; "" the first
      stat: "",            // the statistic whose histogram and top prompts are open; "" the examples' statistic
      shade: "q",          // a token of an example shows: q what it attends to (its row) | k what attends to it
      pin: "",             // the token pinned by a click, as <prompt hash>:<position>; "" none
      sort: "mass",        // the top tokens by: mass (total attention) | mean (mass per occurrence)
      pcolor: "token",     // the projections' points are coloured by: token (the query's) | key (its key's token) |
                           // position (the query's) | weight (the head's largest weight there)
    },
  },
};

// Inside a self-contained file (embed.js) a page has no address of its own: attnEmbed keeps it and opens pages.
const embedded = () => globalThis.attnEmbed;

/** The page's state: each parameter read from the URL, else its default. */
export function readState(page) {
  const params = new URLSearchParams(embedded()?.search ?? location.search);
  return Object.fromEntries(Object.entries(PAGES[page].defaults).map(([k, v]) => [k, params.get(k) ?? v]));
}

/** The one way a page changes its state: merge the patch, run what must be redrawn or reloaded (in order,
 * awaiting those that return a promise), then write the URL with `save`, so it changes once the view shows it. */
export async function changeState(state, patch, renders, save) {
  Object.assign(state, patch);
  try {
    for (const render of renders) await render();
  } finally {
    save();
  }
}

/** The one guard against stale async results: each call of the returned function starts a run and returns
 * `current()`, true until a newer run starts. A load or render checks it after each wait and draws nothing
 * once a newer one (another key press, search or prompt) has begun. */
export function latest() {
  let runs = 0;
  return () => {
    const run = ++runs;
    return () => run === runs;
  };
}

/** Put `state` into the URL without reloading; `push` adds a history entry. */
export function writeState(page, state, push = false) {
  const url = pageUrl(page, state);
  if (embedded()) embedded().replace(url);
  else if (url !== `${location.pathname.split("/").pop() || PAGES[page].file}${location.search}`) {
    history[push ? "pushState" : "replaceState"](null, "", url);
  }
}

/** Open a page: a pageUrl, or a link's href. */
export function go(url) {
  if (embedded()) embedded().go(url);
  else location.href = url;
}

/** Link to a page with these parameters; values equal to their default are left out. */
export function pageUrl(page, params) {
  const { file, defaults } = PAGES[page];
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (key in defaults && value !== undefined && value !== null && String(value) !== defaults[key]) {
      query.set(key, String(value));
    }
  }
  const text = query.toString();
  return text ? `${file}?${text}` : file;
}

/** One head in the single view. */
export const singleUrl = ({ model, prompt, layer, head, figure }) => pageUrl("single", { model, prompt, layer, head, figure });

/** The grid showing these heads ([[layer, head]]) on these prompts, sorted by a statistic when given. */
export function gridUrl({ model, heads, prompts, figures, stat, desc }) {
  return pageUrl("grid", {
    models: model, heads: heads?.map(([l, h]) => headKey(l, h)).join(","), prompts: prompts?.join(","),
    figures, stat, sort: stat && heads ? "stat" : "", desc: desc ? "1" : "",
  });
}

/** A head's own page: what it does across the whole dataset. */
export const headPageUrl = ({ model, layer, head }) => pageUrl("head", { model, head: headKey(layer, head) });

/** The heads page of a model and statistic. */
export const headsUrl = ({ model, stat }) => pageUrl("heads", { model, stat });
