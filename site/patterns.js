// Read patterns.bin in the browser: exact stored values, never colours read back from an image.
// Format (see lens.py): "ATTNPAT1", uint32 LE header length, JSON header, then one zlib
// chunk per head (layer-major) of uint16 LE values (value = q / scale), low bytes first.

const MAGIC = "ATTNPAT1";
const FIRST_BYTES = 1 << 16;
const files = new Map();

// Fetch a byte range; a server without Range support answers 200 with the whole file.
async function fetchRange(url, start, end) {
  const res = await fetch(url, { headers: { Range: `bytes=${start}-${end - 1}` } });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return { whole: res.status !== 206, bytes: new Uint8Array(await res.arrayBuffer()) };
}

function parseHeader(url, bytes) {
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== MAGIC) throw new Error(`${url}: not a pattern file`);
  const size = new DataView(bytes.buffer, bytes.byteOffset + 8, 4).getUint32(0, true);
  if (bytes.length < 12 + size) return { size };
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + size)));
  return { size, header };
}

// Open a pattern file once per URL: the header, plus the whole file when Range is unsupported.
export function openPatterns(url) {
  if (!files.has(url)) files.set(url, openUncached(url));
  return files.get(url);
}

async function openUncached(url) {
  let { whole, bytes } = await fetchRange(url, 0, FIRST_BYTES);
  let { size, header } = parseHeader(url, bytes);
  if (!header) {
    ({ whole, bytes } = await fetchRange(url, 0, 12 + size));
    header = parseHeader(url, bytes).header;
  }
  return { url, header, dataStart: 12 + size, file: whole ? bytes : null };
}

async function inflate(chunk) {
  const stream = new Blob([chunk]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The chunk of one head: sliced from the whole file, or fetched alone with a Range request.
async function headChunk(pf, i) {
  const start = pf.dataStart + pf.header.offsets[i];
  const end = pf.dataStart + pf.header.offsets[i + 1];
  if (pf.file) return pf.file.subarray(start, end);
  const { whole, bytes } = await fetchRange(pf.url, start, end);
  return whole ? bytes.subarray(start, end) : bytes;
}

// One head as a Float32Array of n*n values (row = query, column = key), upper triangle zero.
export async function loadHead(url, layer, head) {
  const pf = await openPatterns(url);
  const { n_layers, n_heads, n_tokens: n, scale, layout } = pf.header;
  if (!(layer >= 0 && layer < n_layers && head >= 0 && head < n_heads)) {
    throw new Error(`${url}: no head L${layer}H${head}`);
  }
  const raw = await inflate(await headChunk(pf, layer * n_heads + head));
  const m = raw.length / 2;
  const values = new Float32Array(n * n);
  let j = 0;
  for (let q = 0; q < n; q++) {
    const rowEnd = layout === "tril" ? q + 1 : n;
    for (let k = 0; k < rowEnd; k++, j++) values[q * n + k] = (raw[j] | (raw[m + j] << 8)) / scale;
  }
  return { n, values, header: pf.header };
}
