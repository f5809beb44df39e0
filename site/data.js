// The data dir as the site reads it: one path function per file (datadir.py names the same paths, in the same
// order; tests/rules.json's "paths" table holds both), the one fetch helper, the list of files a data dir may
// lack, the search rule, statistic tables, head specs, checkpoint names and the rank rule.

// ---- paths: `model` is a model's directory name, as models.jsonl's "model_dir" ----

export const MODELS_URL = "models.jsonl";
export const FIGURES_URL = "figures.jsonl";
export const COLORMAPS_URL = "colormaps.json";
export const modelCfgUrl = (model) => `${model}/model_cfg.json`;
export const promptIndexUrl = (model) => `${model}/index/meta.json`;
export const indexHashesUrl = (model) => `${model}/index/hashes.json`;
export const indexHashShardUrl = (model, shard) => `${model}/index/by_hash/${shard}.json`;
export const indexRowsUrl = (model, chunk) => `${model}/index/rows/${chunk}.jsonl`;
export const indexWordsUrl = (model, shard) => `${model}/index/words/${shard}.json`;
export const indexOrderUrl = (model) => `${model}/index/by_tokens.u32`;
export const indexStoredUrl = (model) => `${model}/index/stored.json`;
export const indexShardsUrl = (model) => `${model}/index/shards.json`;
export const statsUrl = (model) => `${model}/stats.json`;
export const statTableUrl = (model, stat) => `${model}/stats/${stat}.f32`;
export const statHeadsUrl = (model, stat) => `${model}/stats/${stat}.heads.json`;
/** Every head's kinds, fingerprint, map position and nearest heads (kinds.py; see site/kinds.js). */
export const headKindsUrl = (model) => `${model}/heads.json`;
/** Where each head's examples and each example prompt's tokens sit in examples.bin (examples.py; see site/head.js). */
export const examplesIndexUrl = (model) => `${model}/examples.json`;
export const examplesUrl = (model) => `${model}/examples.bin`;
/** Where the sampled points and each head's PCA of its queries, keys and outputs sit in projections.bin (projections.py). */
export const projectionsIndexUrl = (model) => `${model}/projections.json`;
export const projectionsUrl = (model) => `${model}/projections.bin`;
/** Where each head's block (every statistic's summary, look-back, top tokens) sits in head_pages.bin (head_pages.py). */
export const headPagesIndexUrl = (model) => `${model}/head_pages.json`;
export const headPagesUrl = (model) => `${model}/head_pages.bin`;
export const promptDir = (model, hash) => `${model}/prompts/${hash}/`;
export const promptJsonUrl = (model, hash) => `${promptDir(model, hash)}prompt.json`;
export const patternsUrl = (model, hash) => `${promptDir(model, hash)}patterns.bin`;
export const promptStatsUrl = (model, hash) => `${promptDir(model, hash)}stats.json`;
export const valueNormsUrl = (model, hash) => `${promptDir(model, hash)}value_norms.f32`;
/** Every head's image of one figure output (`raw`, or `func.name` for a multi-figure): see loadFigureImage. */
export const figurePackUrl = (model, hash, output) => `${promptDir(model, hash)}${output}.pack`;
/** {"L<l>H<h>": traceback} of the heads a figure output failed on; only when one did. */
export const figureErrorsUrl = (model, hash, output) => `${promptDir(model, hash)}${output}.errors.json`;

// ---- which script writes each file, and which files a data dir may lack ----

// A 404 on an optional file is an answer (null), not an error: stats.json exists once build_index.py has
// statistics to aggregate (compute_activations.py computes them, render_figures.py adds a plug-in's), figure
// packs after render_figures.py, an .errors.json only where a figure failed. Any other failed fetch is an
// error naming the file and the script that writes it.
const FILES = [
  { path: /^models\.jsonl$/, writer: "build_index.py" },
  { path: /^figures\.jsonl$/, writer: "build_index.py" },
  { path: /^colormaps\.json$/, writer: "build_index.py" },
  { path: /^[^/]+\/index\/words\//, writer: "build_index.py", optional: true },  // missing: no word starts so
  { path: /^[^/]+\/index\//, writer: "build_index.py" },
  { path: /^[^/]+\/model_cfg\.json$/, writer: "compute_activations.py" },
  { path: /^[^/]+\/stats\.json$/, writer: "build_index.py", optional: true },  // none before any statistics
  { path: /^[^/]+\/stats\/[^/]+\.f32$/, writer: "build_index.py" },
  { path: /^[^/]+\/stats\/[^/]+\.heads\.json$/, writer: "build_index.py" },
  { path: /^[^/]+\/heads\.json$/, writer: "build_index.py", optional: true },  // none before any statistics
  // none in a data dir, or of a model, computed before head pages existed
  { path: /^[^/]+\/examples\.(json|bin)$/, writer: "compute_activations.py", optional: true },
  { path: /^[^/]+\/projections\.(json|bin)$/, writer: "compute_activations.py", optional: true },
  { path: /^[^/]+\/head_pages\.(json|bin)$/, writer: "build_index.py", optional: true },
  { path: /\/prompt\.json$/, writer: "compute_activations.py" },
  { path: /\/patterns\.bin$/, writer: "compute_activations.py" },
  { path: /\/value_norms\.f32$/, writer: "compute_activations.py", optional: true },  // older data dirs lack it
  { path: /\/prompts\/[^/]+\/stats\.json$/, writer: "render_figures.py", optional: true },
  { path: /\/prompts\/[^/]+\/[^/]+\.pack$/, writer: "render_figures.py", optional: true },
  { path: /\/prompts\/[^/]+\/[^/]+\.errors\.json$/, writer: "render_figures.py", optional: true },
];
const fileInfo = (path) => FILES.find((f) => f.path.test(path)) ?? {};

/** The one fetch: a failed request or an HTTP error status throws an error naming the path. */
export async function fetchOk(path, init) {
  let response;
  try {
    // inside a self-contained file (embed.js) the files are in memory and attnFetch serves them; elsewhere every
    // request is checked with the server (a static host that sends no Cache-Control would otherwise let the browser
    // reuse a changed index: a returning visitor saw 32 prompts of 34)
    response = await (globalThis.attnFetch ?? fetch)(path, { cache: "no-cache", ...init });
  } catch (e) {
    throw new Error(`${path}: ${e.message}`);
  }
  if (!response.ok) {
    const { writer } = fileInfo(path);
    const hint = response.status === 404 && writer ? ` (${writer} writes it)` : "";
    throw new Error(`${path}: HTTP ${response.status} ${response.statusText}${hint}`);
  }
  return response;
}

// The files of each stored prompt's dir, from its index row ("files"): an optional file not among them is known
// to be missing and is not asked for, so no page requests a file that is not there.
const promptFiles = new Map();  // prompt dir -> Set of file names

function noteFiles(model, rows) {
  for (const row of rows) if (row.files) promptFiles.set(promptDir(model, row.hash), new Set(row.files));
  return rows;
}

/** fetchOk, but null when an optional file is missing. */
async function fetchOptional(path, init) {
  const cut = path.lastIndexOf("/") + 1, known = promptFiles.get(path.slice(0, cut));
  if (known && !known.has(path.slice(cut)) && fileInfo(path).optional) return null;
  try {
    return await fetchOk(path, init);
  } catch (e) {
    if (fileInfo(path).optional && e.message.includes("HTTP 404")) return null;
    throw e;
  }
}

/** A data file parsed as "json", "jsonl", "text" or "bytes" (ArrayBuffer); null when an optional file is missing. */
export async function fetchData(path, as = "json") {
  const response = await fetchOptional(path);
  if (!response) return null;
  if (as === "bytes") return response.arrayBuffer();
  const text = await response.text();
  if (as === "text") return text;
  return as === "jsonl" ? parseJsonl(text, path) : parseJson(text, path);
}

/** A file an index lists (a word shard named in shards.json): missing, it is an error, not "nothing found". */
async function fetchListed(path) {
  try {
    return parseJson(await (await fetchOk(path)).text(), path);
  } catch (e) {
    const name = path.split("/").pop();
    const hint = name.startsWith("_") && e.message.includes("HTTP 404")
      ? "; this host drops files whose names start with '_' (GitHub Pages does without a .nojekyll file, which "
        + "build_index.py writes: copy it too)" : "";
    throw new Error(`${e.message}: the index lists it${hint}`);
  }
}

/** Wait for every fetch; if any failed, one error listing every failure (not just the first to arrive). */
export async function fetchEach(promises) {
  const results = await Promise.allSettled(promises);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) throw new Error(failed.join("\n"));
  return results.map((r) => r.value);
}

function parseJson(text, path) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${e.message})`);
  }
}

/** Rows of a JSONL text; a bad line names the file and the line number. */
function parseJsonl(text, path = "") {
  const lines = text.split("\n");
  return lines.flatMap((line, i) => (line.trim() ? [parseJson(line, `${path}:${i + 1}`)] : []));
}

// ---- the prompt index (prompt_index.write_index, run by build_index.py): every prompt's row in the order first
// indexed, the row order of the statistics tables, in chunks of meta.json's chunk_size rows, a word index and a hash
// index in shards; a page fetches the chunks and shards it shows, never the whole index. A row is prompt.json without
// its token lists, its text cut to meta.json's text_chars ("snippet": true when cut), "stored": whether its patterns
// are kept ----

const WORD = /[\p{L}\p{N}_]+/gu;  // lens.WORD
const MAX_CHUNKS = 256;  // chunks of rows kept in memory
const ORDER_BLOCK = 65536;  // entries of by_tokens.u32 fetched at once
const HASH_TERM = /^[0-9a-f]{6,16}$/;  // a search word that may also be the start of a prompt's hash

/** The word shard a word is in: its first two characters, those other than a-z and 0-9 as _<hex code point>
 * (lens.shard_name). */
export function shardName(word) {
  return [...word].slice(0, 2).map((c) => (/[a-z0-9]/.test(c) ? c : `_${c.codePointAt(0).toString(16)}`)).join("");
}

/** The words a query looks up: lowercased, each once (lens.search_words finds a prompt by the same rule). */
export function searchTerms(query) {
  return [...new Set(query.toLowerCase().match(WORD) ?? [])];
}

/** Whether a search term finds a word: the word starts with it and is in its shard, the only shard a search
 * reads (so a one-character term finds only that word: "t" is in shard "t", "the" in shard "th"). */
const wordFinds = (word, term) => word.startsWith(term) && shardName(word) === shardName(term);

/** Whether one search term finds a prompt by its words (lens.search_words) and hash: a word starts with the
 * term, or the term is 6-16 hex digits that start the hash. The rule termRows follows through the index's
 * shards (standalone.finds is its Python twin; tests/rules.json "search" holds the cases). */
export function termFinds(words, hash, term) {
  return words.some((word) => wordFinds(word, term)) || (HASH_TERM.test(term) && hash.startsWith(term));
}

/** A model's prompt index: {count, nStored, rows(start, n), at(rows), find(hash), matches(query),
 * search(query, limit), ordered(order, start, n, among), storedRows()}. Chunks are fetched once, when needed. */
export async function openPromptIndex(model) {
  const { count, chunk_size: size, n_stored: nStored } = await fetchData(promptIndexUrl(model));
  const chunks = new Map(), shards = new Map(), blocks = new Map(), once = new Map();
  const fetchOnce = (url, as) => {
    if (!once.has(url)) once.set(url, fetchData(url, as));
    return once.get(url);
  };

  /** Chunk k's rows, the most recently used MAX_CHUNKS kept. */
  function chunk(k) {
    const rows = chunks.get(k) ?? fetchData(indexRowsUrl(model, k), "jsonl").then((r) => noteFiles(model, r));
    chunks.delete(k);
    chunks.set(k, rows);
    if (chunks.size > MAX_CHUNKS) chunks.delete(chunks.keys().next().value);
    rows.catch(() => chunks.get(k) === rows && chunks.delete(k));
    return rows;
  }

  /** The records of these rows, in this order. */
  async function at(list) {
    const ks = [...new Set(list.filter((r) => r >= 0 && r < count).map((r) => Math.floor(r / size)))];
    const got = new Map(await Promise.all(ks.map(async (k) => [k, await chunk(k)])));
    return list.map((r) => {
      const record = r >= 0 && r < count ? got.get(Math.floor(r / size))[r % size] : undefined;
      if (!record) throw new Error(`${indexRowsUrl(model, Math.floor(r / size))}: no row ${r}; re-run build_index.py`);
      return record;
    });
  }

  const rows = (start, n) => {
    const from = Math.max(0, start), to = Math.min(count, start + n);
    return at(range(Math.max(0, to - from)).map((i) => from + i));
  };

  /** {hash: row} of the hashes starting as `hash` does (its shard, as a word's); {} when there is none. */
  async function hashShard(hash) {
    const shard = shardName(hash.toLowerCase());
    if (!(await fetchOnce(indexHashesUrl(model))).includes(shard)) return {};
    return fetchOnce(indexHashShardUrl(model, shard));
  }

  /** {row, record} of a prompt by its hash; null when the index does not have it. */
  async function find(hash) {
    const row = (await hashShard(hash))[hash];
    return row === undefined ? null : { row, record: (await at([row]))[0] };
  }

  /** The rows whose hash starts with `prefix`, ascending. */
  async function hashRows(prefix) {
    return Object.entries(await hashShard(prefix)).filter(([h]) => h.startsWith(prefix)).map(([, r]) => r)
      .sort((a, b) => a - b);
  }

  /** The rows a term finds (termFinds), ascending: those of the words in its shard that it finds, and those whose
   * hash starts with it when it looks like a hash. */
  async function termRows(term) {
    const shard = shardName(term);
    const names = await fetchOnce(indexShardsUrl(model));
    if (!names.includes(shard)) return HASH_TERM.test(term) ? hashRows(term) : [];  // no word starts so
    if (!shards.has(shard)) shards.set(shard, fetchListed(indexWordsUrl(model, shard)));
    const words = await shards.get(shard);
    const lists = Object.entries(words).filter(([word]) => wordFinds(word, term)).map(([, deltas]) => {
      let r = 0;
      return deltas.map((d) => (r += d));
    });
    if (HASH_TERM.test(term)) lists.push(await hashRows(term));
    if (lists.length === 1) return lists[0];
    return [...new Set(lists.flat())].sort((a, b) => a - b);
  }

  /** The rows matching a search, ascending; null for a query without words. Each word of the query starts a
   * word of the prompt's text or meta values (case-insensitive), or 6-16 hex digits start its hash. */
  async function matches(query) {
    const terms = searchTerms(query);
    if (!terms.length) return null;
    const lists = (await Promise.all(terms.map(termRows))).sort((a, b) => a.length - b.length);
    return lists.slice(1).reduce((found, list) => {
      const other = new Set(list);
      return found.filter((r) => other.has(r));
    }, lists[0]);
  }

  /** The first `limit` matches of a search as [{row, record}]. */
  async function search(query, limit = 100) {
    const found = ((await matches(query)) ?? []).slice(0, limit), records = await at(found);
    return found.map((row, i) => ({ row, record: records[i] }));
  }

  const orderBlock = (b) => {
    if (!blocks.has(b)) {
      blocks.set(b, fetchRange(indexOrderUrl(model), b * ORDER_BLOCK * 4, ORDER_BLOCK * 4).then((bytes) => new Uint32Array(bytes)));
    }
    return blocks.get(b);
  };

  /** Rows [start, start + n) in token order ("tokens": shortest first, "-tokens": longest first; ties in row
   * order), counting only the rows in `among` (a Set) when given: by_tokens.u32, ORDER_BLOCK entries at a time. */
  async function ordered(order, start, n, among = null) {
    const desc = order === "-tokens", nBlocks = Math.ceil(count / ORDER_BLOCK);
    if (!among) {
      const positions = range(Math.max(0, Math.min(n, count - start))).map((i) => (desc ? count - 1 - start - i : start + i));
      const got = new Map(await Promise.all([...new Set(positions.map((p) => Math.floor(p / ORDER_BLOCK)))]
        .map(async (b) => [b, await orderBlock(b)])));
      return positions.map((p) => got.get(Math.floor(p / ORDER_BLOCK))[p % ORDER_BLOCK]);
    }
    const out = [];
    let skip = start;
    for (let b = 0; b < nBlocks && out.length < n; b++) {
      const block = await orderBlock(desc ? nBlocks - 1 - b : b);
      for (let j = 0; j < block.length && out.length < n; j++) {
        const row = block[desc ? block.length - 1 - j : j];
        if (!among.has(row)) continue;
        if (skip > 0) skip--;
        else out.push(row);
      }
    }
    return out;
  }

  /** The rows of the prompts whose patterns are stored, ascending. */
  const storedRows = () => fetchOnce(indexStoredUrl(model));

  return { model, count, nStored, rows, at, find, matches, search, ordered, storedRows };
}

/** One head's value norms ||v_j W_O^h|| per key token (Float32Array of n_tokens, NaN where the head is not
 * stored) by a byte range of value_norms.f32 (float32 [n_layers, n_heads, n_tokens]); null when the prompt has
 * none (computed before compute_activations.py stored them). */
export async function loadValueNorms(model, hash, layer, head, nHeads, nTokens) {
  const url = valueNormsUrl(model, hash), start = (layer * nHeads + head) * nTokens * 4, size = nTokens * 4;
  const part = await fetchRange(url, start, size);
  if (!part) return null;
  if (part.byteLength !== size) {
    throw new Error(`${url}: too short for ${headKey(layer, head)}; re-run compute_activations.py --force`);
  }
  return new Float32Array(part);
}

/** Bytes [start, start + size) of a file by one HTTP Range request (shorter at the file's end); null when an
 * optional file is missing. A server without Range support answers the whole file: the part is cut from it. */
export async function fetchRange(path, start, size) {
  const response = await fetchOptional(path, { headers: { Range: `bytes=${start}-${start + size - 1}` } });
  if (!response) return null;
  const bytes = await response.arrayBuffer();
  return response.status === 206 ? bytes : bytes.slice(start, start + size);
}

const BLOCK_GAP = 16384;  // blocks at most this many bytes apart come in one request

/** JSON blocks of a file at [offset, length] byte ranges (examples.bin and head_pages.bin: one block per head and
 * per prompt), in the order asked; blocks close together come in one range request. Null when the file is missing. */
export async function fetchJsonBlocks(path, ranges) {
  const order = ranges.map((_, i) => i).sort((a, b) => ranges[a][0] - ranges[b][0]), runs = [];
  for (const i of order) {
    const [offset, length] = ranges[i], run = runs.at(-1);
    if (run && offset - run.end <= BLOCK_GAP) {
      run.end = Math.max(run.end, offset + length);
      run.items.push(i);
    } else runs.push({ start: offset, end: offset + length, items: [i] });
  }
  const out = new Array(ranges.length), decoder = new TextDecoder();
  for (const run of await Promise.all(runs.map(async (r) => ({ ...r, bytes: await fetchRange(path, r.start, r.end - r.start) })))) {
    if (!run.bytes) return null;
    for (const i of run.items) {
      const [offset, length] = ranges[i], at = offset - run.start;
      if (at + length > run.bytes.byteLength) {
        throw new Error(`${path}: too short for the block at ${offset}; re-run ${fileInfo(path).writer ?? "the script that wrote it"}`);
      }
      out[i] = parseJson(decoder.decode(new Uint8Array(run.bytes, at, length)), `${path} at ${offset}`);
    }
  }
  return out;
}

// ---- a head's examples (examples.py): examples.json {statistic, intervals, per_interval, top, keys_per_row, threshold,
// seed, n_prompts, n_layers, n_heads, heads: [[offset, length, data offset, data length] or null per head, layer-major],
// prompts: {hash: [offset, length]}}; examples.bin: a head's JSON block {count, boundaries, interval_counts, examples:
// [{hash, interval, value, n_tokens, entries, at}]}, the highest interval first, then its examples' sparse attention
// packed one after another; an example prompt's JSON block {hash, text, n_tokens, tokens} ----

const W_SCALE = 65535;  // examples.W_SCALE: a kept weight is stored as round(w * W_SCALE), a uint16

/** One example's sparse attention from its packed bytes at `at` (examples.pack_attention): n uint8 counts of the
 * entries in each query row, zero bytes up to a multiple of 4, m uint32 keys, m uint16 weights, little-endian.
 * {q, k, w} in (query, key) order; w to the nearest 1 / 65535, as examples.unpack_attention. */
export function unpackAttention(bytes, at, n, m) {
  const keysAt = at + n + ((4 - (n % 4)) % 4), weightsAt = keysAt + 4 * m;
  if (weightsAt + 2 * m > bytes.byteLength) throw new Error(`examples: ${m} entries past the end of their data`);
  const view = new DataView(bytes), q = [], k = [], w = [];
  for (let row = 0; row < n; row++) for (let j = view.getUint8(at + row); j > 0; j--) q.push(row);
  for (let i = 0; i < m; i++) {
    k.push(view.getUint32(keysAt + 4 * i, true));
    w.push(view.getUint16(weightsAt + 2 * i, true) / W_SCALE);
  }
  return { q, k, w };
}

/** A head's examples: {index: examples.json, block: its block with each example's q, k, w (null: no prompt gave the
 * head a value), prompts: Map(hash -> prompt block)}; null when the model has no examples.json. */
export async function loadHeadExamples(model, layer, head) {
  const index = await fetchData(examplesIndexUrl(model)), url = examplesUrl(model);
  if (!index) return null;
  const at = index.heads[layer * index.n_heads + head];
  if (!at) return { index, block: null, prompts: new Map() };
  const [blocks, packed] = await Promise.all([fetchJsonBlocks(url, [at.slice(0, 2)]), fetchRange(url, at[2], at[3])]);
  if (!blocks || !packed) throw new Error(`${url}: missing, but ${examplesIndexUrl(model)} is there; re-run compute_activations.py`);
  if (packed.byteLength !== at[3]) throw new Error(`${url}: too short for ${headKey(layer, head)}; re-run compute_activations.py`);
  const [block] = blocks;
  for (const e of block.examples) Object.assign(e, unpackAttention(packed, e.at, e.n_tokens, e.entries));
  const hashes = [...new Set(block.examples.map((e) => e.hash))].filter((h) => index.prompts[h]);
  const prompts = hashes.length ? await fetchJsonBlocks(url, hashes.map((h) => index.prompts[h])) : [];
  return { index, block, prompts: new Map(hashes.map((h, i) => [h, prompts[i]])) };
}

// ---- what a head reads and writes (projections.py): projections.json {size, per_prompt, seed, n_prompts, n_points,
// n_layers, n_heads, sets, dims, query_hook, key_hook, rotary, points: [offset, length], heads_at, head_bytes,
// page_bytes}; projections.bin: the points' JSON block {prompts: [{hash, n_tokens, tokens}], prompt, position}, then
// one record per head, layer-major, at heads_at + i * head_bytes: its first page_bytes are explained float32 [sets, 2],
// coordinates float16 [sets, points, 2], the largest weight uint16 [points] (w * W_SCALE), its key's position uint32
// [points], little-endian; the rest (means and components) is for Python ----

/** A float16's bits as a number (IEEE 754 half precision). */
export function halfFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1, exp = (bits >> 10) & 0x1f, frac = bits & 0x3ff;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return exp ? sign * 2 ** (exp - 15) * (1 + frac / 1024) : sign * 2 ** -14 * (frac / 1024);
}

/** A head's part of its record: {explained: [[pc1, pc2] per set], coords: [Float32Array(2 n) per set], weight, key}. */
export function unpackProjections(bytes, n, nSets) {
  const view = new DataView(bytes), coordsAt = 8 * nSets, weightsAt = coordsAt + 4 * n * nSets, keysAt = weightsAt + 2 * n;
  if (keysAt + 4 * n > bytes.byteLength) throw new Error(`projections: a head's record is shorter than ${keysAt + 4 * n} bytes`);
  const explained = range(nSets).map((s) => [view.getFloat32(8 * s, true), view.getFloat32(8 * s + 4, true)]);
  const coords = range(nSets).map((s) => Float32Array.from({ length: 2 * n },
    (_, i) => halfFloat(view.getUint16(coordsAt + 2 * (2 * n * s + i), true))));
  const weight = Float32Array.from({ length: n }, (_, i) => view.getUint16(weightsAt + 2 * i, true) / W_SCALE);
  const key = Uint32Array.from({ length: n }, (_, i) => view.getUint32(keysAt + 4 * i, true));
  return { explained, coords, weight, key };
}

/** A model's sampled points: {index: projections.json, points: their block}; null when it has no projections. */
export async function loadProjectionPoints(model) {
  const index = await fetchData(projectionsIndexUrl(model));
  if (!index) return null;
  const blocks = await fetchJsonBlocks(projectionsUrl(model), [index.points]);
  if (!blocks) throw new Error(`${projectionsUrl(model)}: missing, but ${projectionsIndexUrl(model)} is there; re-run compute_activations.py`);
  return { index, points: blocks[0] };
}

/** One head's projections (unpackProjections) from its record: one range request of page_bytes. */
export async function loadHeadProjections(model, index, layer, head) {
  const url = projectionsUrl(model), at = index.heads_at + (layer * index.n_heads + head) * index.head_bytes;
  const bytes = await fetchRange(url, at, index.page_bytes);
  if (!bytes || bytes.byteLength !== index.page_bytes) throw new Error(`${url}: too short for ${headKey(layer, head)}; re-run compute_activations.py`);
  return unpackProjections(bytes, index.n_points, index.sets.length);
}

// ---- figures and colormaps ----

// A figure pack (storage.PackWriter): 16 bytes of header (magic, n_layers, n_heads), then n_layers * n_heads + 1
// little-endian uint64 offsets; head i = layer * n_heads + head is bytes [offset[i], offset[i + 1]).
const PACK_HEADER = 16;

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];  // storage.PNG_SIGNATURE

/** One head's image from its figure pack, as a PNG Blob, by two range requests:
 * its two offsets, then its bytes. Null when it has none: the output is not rendered for this prompt, or the
 * figure failed on this head (loadFigureError says why). */
export async function loadFigureImage(model, hash, layer, head, nHeads, output) {
  const url = figurePackUrl(model, hash, output);
  const offsets = await fetchRange(url, PACK_HEADER + 8 * (layer * nHeads + head), 16);
  if (!offsets) return null;
  const view = offsets.byteLength === 16 ? new DataView(offsets) : null;
  const [start, end] = view ? [0, 8].map((at) => Number(view.getBigUint64(at, true))) : [1, 0];
  if (end < start) throw new Error(`${url}: truncated or corrupt at ${headKey(layer, head)}; re-run render_figures.py --force`);
  if (end === start) return null;
  const bytes = await fetchRange(url, start, end - start);
  if (bytes.byteLength !== end - start) throw new Error(`${url}: truncated at ${headKey(layer, head)}; re-run render_figures.py --force`);
  // Packs hold PNG only: anything else (an SVG could carry a script into this origin) is refused, not shown.
  const head8 = new Uint8Array(bytes, 0, Math.min(8, bytes.byteLength));
  if (!PNG_SIGNATURE.every((b, i) => head8[i] === b)) {
    throw new Error(`${url}: ${headKey(layer, head)} is not a PNG image; packs hold PNG only (re-run render_figures.py --force)`);
  }
  return new Blob([bytes], { type: "image/png" });
}

/** The traceback of a head a figure output failed on; null when it did not fail there. */
export async function loadFigureError(model, hash, layer, head, output) {
  const errors = await fetchData(figureErrorsUrl(model, hash, output));
  return errors?.[headKey(layer, head)] ?? null;
}

/** Every image output of the figure records (figures.jsonl), as [{output, figure}]. */
export function figureOutputs(figures) {
  return figures
    .filter((f) => f.kind !== "statistic")
    .flatMap((f) => f.outputs.map((output) => ({ output, figure: f })));
}

/** A colormap as [[r, g, b] x 256] from colormaps.json: the tables the images are drawn with. */
export async function loadColormap(name = "viridis") {
  const table = (await fetchData(COLORMAPS_URL))[name];
  if (!table) throw new Error(`${COLORMAPS_URL}: no colormap ${name}; re-run build_index.py`);
  return table.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)));
}

// ---- statistics: stats.json ({n_prompts, n_layers, n_heads, top_k, stats: {name: {doc, mean, std, min, max,
// count, quantiles}}}, [layer][head] tables), stats/<name>.heads.json (per head: histogram, top and bottom
// prompts) and stats/<name>.f32 (float32 [prompts, layers, heads], NaN where missing; row r = the prompt
// index's row r) ----

/** One prompt's values of a statistic as [layer][head] (NaN where missing): row `row` of its table, by one
 * byte range (the table grows with the prompts; a page never downloads it whole). */
export async function loadStatRow(model, stats, name, row) {
  const { n_layers: nL, n_heads: nH } = stats, url = statTableUrl(model, name), size = nL * nH * 4;
  const part = await fetchRange(url, row * size, size);
  if (part.byteLength !== size) {
    throw new Error(`${url}: no row ${row} (${statsUrl(model)} says ${stats.n_prompts} prompts); re-run build_index.py`);
  }
  const values = new Float32Array(part);
  return range(nL).map((l) => Array.from(values.subarray(l * nH, (l + 1) * nH)));
}

/** Several prompts' values of a statistic as Map(row -> [layer][head]): one byte range per run of consecutive rows. */
export async function loadStatRows(model, stats, name, rows) {
  const { n_layers: nL, n_heads: nH } = stats, url = statTableUrl(model, name), size = nL * nH * 4;
  const sorted = [...new Set(rows)].sort((a, b) => a - b), runs = [];
  for (const r of sorted) {
    if (runs.length && runs.at(-1).end === r) runs.at(-1).end++;
    else runs.push({ start: r, end: r + 1 });
  }
  const out = new Map();
  await Promise.all(runs.map(async ({ start, end }) => {
    const part = await fetchRange(url, start * size, (end - start) * size);
    if (part.byteLength !== (end - start) * size) {
      throw new Error(`${url}: no row ${end - 1} (${statsUrl(model)} says ${stats.n_prompts} prompts); re-run build_index.py`);
    }
    for (let r = start; r < end; r++) {
      const values = new Float32Array(part, (r - start) * size, nL * nH);
      out.set(r, range(nL).map((l) => Array.from(values.subarray(l * nH, (l + 1) * nH))));
    }
  }));
  return out;
}

/** A statistic's mean over prompts as [layer][head] numbers (NaN where missing). */
export function statMeans(stats, name) {
  return stats.stats[name].mean.map((row) => row.map((v) => v ?? NaN));
}

/** The one rank rule: heads with a value, best first (ties keep layer-major order), each ranked
 * 1 + the number of heads strictly better, so tied heads share a rank on every page. */
export function rankHeads(values, descending = true) {
  const sign = descending ? -1 : 1;
  const all = values.flatMap((row, layer) => row.map((value, head) => ({ layer, head, value })))
    .filter((h) => !Number.isNaN(h.value))
    .sort((a, b) => sign * (a.value - b.value));
  let rank = 0;
  return all.map((h, i) => {
    if (i === 0 || h.value !== all[i - 1].value) rank = i + 1;
    return { ...h, rank };
  });
}

// ---- heads: the `L0-3H*,L5H1,L*H0` syntax of the grid's URL and of prompt.json's "heads" ----

/** One head's name, `L<layer>H<head>`: a head spec of one head, and the key of a head on every page. */
export const headKey = (layer, head) => `L${layer}H${head}`;

/** Heads named by a spec like `L0-3H*,L5H1,L*H0`, as sorted [layer, head] pairs (lens.parse_heads;
 * tests/rules.json holds the cases both must agree on). Throws on bad syntax and, when `strict`, on a layer or
 * head the model does not have (lenient: those select nothing). */
export function parseHeads(spec, nLayers, nHeads, strict = true) {
  const chosen = new Set();
  for (const part of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^L([0-9]+(?:-[0-9]+)?|\*)H([0-9]+(?:-[0-9]+)?|\*)$/i.exec(part.replace(/\s+/g, ""));
    if (!m) throw new Error(`"${part}" is not a head spec (try L0-3H*, L5H1, L*H0)`);
    for (const l of parseRange(m[1], nLayers, "layer", strict)) {
      for (const h of parseRange(m[2], nHeads, "head", strict)) chosen.add(l * nHeads + h);
    }
  }
  if (strict && !chosen.size) throw new Error(`"${spec}" names no head`);
  return [...chosen].sort((a, b) => a - b).map((i) => [Math.floor(i / nHeads), i % nHeads]);
}

function parseRange(text, n, what, strict) {
  if (text === "*") return range(n);
  const [a, b = a] = text.split("-").map(Number);
  if (a > b) throw new Error(`${what}s ${text} run backwards`);
  if (b >= n && strict) throw new Error(`${what}s ${text} out of range (the model's ${what}s are 0-${n - 1})`);
  return range(Math.min(b, n - 1) + 1).filter((i) => i >= a);  // lenient: a spec kept from a larger model
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
    for (const h of byLayer[l]) parts.push(headKey(l, h));
    l++;
  }
  return parts.join(",");
}

/** Whether a prompt (its index row or prompt.json) stores a head: "heads" names the stored heads; without it, all are. */
export function isStored(prompt, model, layer, head) {
  if (prompt.stored === false) return false;  // a prompt with statistics only
  if (!prompt.heads) return true;
  if (!prompt.storedHeads) {
    prompt.storedHeads = new Set(parseHeads(prompt.heads, model.n_layers, model.n_heads, false)
      .map(([l, h]) => l * model.n_heads + h));
  }
  return prompt.storedHeads.has(layer * model.n_heads + head);
}

// ---- checkpoints: compute_activations.py --checkpoint N names a model `<name>@step<N>`, its dir `<dir>_step<N>`
// (lens.model_dir_name turns @ into _); tests/rules.json "checkpoints" holds the cases ----

/** A model dir (or name) as a training checkpoint: {base, step}, base the dir (name) of the model it is a
 * checkpoint of; {base: itself, step: null} when it is none. */
export function checkpointOf(model) {
  const m = /^(.+)[@_]step(\d+)$/.exec(model);
  return m ? { base: m[1], step: Number(m[2]) } : { base: model, step: null };
}

/** The integers [0, a), or [a, b) when b is given. */
export function range(a, b) {
  const [start, end] = b === undefined ? [0, a] : [a, b];
  return Array.from({ length: Math.max(0, end - start) }, (_, i) => start + i);
}
