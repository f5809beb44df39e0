// Read patterns.bin in the browser: exact stored values, never colours read back from an image.
// Format 2: "ATTNPAT2", a uint64 LE byte offset of the JSON footer, one zlib stream per stored head,
// then the footer (to the end of the file): {n_layers, n_heads, n_tokens, scale, layout,
// heads: [flat index layer * n_heads + head of each stored head], chunks: [[start, size] absolute]}.
// Format 1: "ATTNPAT1", a uint32 LE header length, a JSON header with "offsets" (relative to the end
// of the header), every head stored, layer-major. A stream holds the head's lower triangle ("tril")
// or whole matrix ("full") row by row as uint16 LE (value = q / scale), all low bytes, then all high bytes.
import { fetchOk } from "./data.js";

/** Asking for a head the file does not store (compute_activations.py --heads). */
export class NotStoredError extends Error {}

const files = new Map();

/** A byte range [start, end) (end omitted: to the end of the file); a server without Range support
 * answers 200 with the whole file, which is then kept. */
async function fetchRange(url, start, end) {
  const response = await fetchOk(url, { headers: { Range: `bytes=${start}-${end === undefined ? "" : end - 1}` } });
  return { whole: response.status !== 206, bytes: new Uint8Array(await response.arrayBuffer()) };
}

const text = (bytes) => new TextDecoder().decode(bytes);

function parseJson(url, bytes) {
  try {
    return JSON.parse(text(bytes));
  } catch (e) {
    throw new Error(`${url}: damaged pattern file (${e.message}); re-run compute_activations.py --force`);
  }
}

/** Open a pattern file once per URL: {header, chunks: Map(flat head index -> [start, end]), file}. */
function openPatterns(url) {
  if (!files.has(url)) files.set(url, openUncached(url));
  return files.get(url);
}

async function openUncached(url) {
  const first = await fetchRange(url, 0, 16);
  const magic = text(first.bytes.subarray(0, 8));
  if (first.bytes.length < 16 || !["ATTNPAT1", "ATTNPAT2"].includes(magic)) {
    throw new Error(`${url}: not a pattern file`);
  }
  const view = new DataView(first.bytes.buffer, first.bytes.byteOffset);
  const file = first.whole ? first.bytes : null;
  const slice = async (start, end) => (file ? file.subarray(start, end) : (await fetchRange(url, start, end)).bytes);
  if (magic === "ATTNPAT2") {
    const footer = parseJson(url, await slice(Number(view.getBigUint64(8, true))));
    const chunks = new Map(footer.heads.map((i, j) => [i, [footer.chunks[j][0], footer.chunks[j][0] + footer.chunks[j][1]]]));
    return { url, header: footer, chunks, file };
  }
  const size = view.getUint32(8, true);
  const header = parseJson(url, await slice(12, 12 + size));
  const at = (i) => 12 + size + header.offsets[i];
  const chunks = new Map(header.offsets.slice(0, -1).map((_, i) => [i, [at(i), at(i + 1)]]));
  return { url, header, chunks, file };
}

async function inflate(url, chunk) {
  const stream = new Blob([chunk]).stream().pipeThrough(new DecompressionStream("deflate"));
  try {
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new Error(`${url}: damaged pattern file (${e.message}); re-run compute_activations.py --force`);
  }
}

/** One head as {n, values: Float32Array n*n (row = query, column = key; zero above the diagonal when
 * causal), header}; throws NotStoredError for a head the file does not hold. */
export async function loadHead(url, layer, head) {
  const pf = await openPatterns(url);
  const { n_layers, n_heads, n_tokens: n, scale, layout } = pf.header;
  if (!(layer >= 0 && layer < n_layers && head >= 0 && head < n_heads)) {
    throw new Error(`${url}: no head L${layer}H${head} (the model has ${n_layers} x ${n_heads})`);
  }
  const span = pf.chunks.get(layer * n_heads + head);
  if (!span) throw new NotStoredError(`${url}: L${layer}H${head} is not stored`);
  const raw = await inflate(url, pf.file ? pf.file.subarray(...span) : (await fetchRange(url, ...span)).bytes);
  const m = raw.length / 2;
  const values = new Float32Array(n * n);
  let j = 0;
  for (let q = 0; q < n; q++) {
    const rowEnd = layout === "tril" ? q + 1 : n;
    for (let k = 0; k < rowEnd; k++, j++) values[q * n + k] = (raw[j] | (raw[m + j] << 8)) / scale;
  }
  return { n, values, header: pf.header };
}
