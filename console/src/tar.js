// Packs files into a `.tar.gz` in the browser, as `kube app publish DIR` does: a ustar
// archive of regular files and directories with relative paths, gzip-compressed with
// CompressionStream. KUBE judges every entry again when it receives the bundle.

const enc = new TextEncoder();
const BLOCK = 512;

/** Writes `text` into `buf` at `off`, within `len` bytes (refused when longer). */
function put(buf, off, len, text) {
  const b = typeof text === 'string' ? enc.encode(text) : text;
  if (b.length > len) throw new Error(`tar field too long: ${text}`);
  buf.set(b, off);
}

/** An octal field: digits, zero-padded, then NUL. */
function octal(buf, off, len, n) {
  put(buf, off, len, n.toString(8).padStart(len - 1, '0') + '\0');
}

/** Splits a path into ustar's `prefix` (≤ 155 bytes) and `name` (≤ 100 bytes) at a slash. */
function splitPath(path) {
  const bytes = enc.encode(path);
  if (bytes.length <= 100) return { name: path, prefix: '' };
  for (let i = path.length - 1; i > 0; i -= 1) {
    if (path[i] !== '/') continue;
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (enc.encode(prefix).length <= 155 && enc.encode(name).length <= 100 && name) {
      return { name, prefix };
    }
  }
  throw new Error(`${path}: the path is too long for a bundle (at most 100 bytes after the last folder, 255 in all)`);
}

function header(path, { size, dir, mtime }) {
  const h = new Uint8Array(BLOCK);
  const { name, prefix } = splitPath(dir ? `${path}/` : path);
  put(h, 0, 100, name);
  octal(h, 100, 8, dir ? 0o755 : 0o644);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, Math.max(0, Math.floor(mtime)));
  h.fill(0x20, 148, 156); // the checksum counts its own field as spaces
  h[156] = dir ? 0x35 : 0x30; // '5' directory, '0' regular file
  put(h, 257, 6, 'ustar\0');
  put(h, 263, 2, '00');
  put(h, 345, 155, prefix);
  let sum = 0;
  for (const b of h) sum += b;
  put(h, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

/** Refuses what KUBE would refuse anyway, naming the entry, before any upload. */
export function checkPath(path) {
  if (!path || path.startsWith('/')) throw new Error(`${path || '(empty)'}: not a relative path`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\\]/.test(path)) throw new Error(`${path}: a control character or backslash in the name`);
  for (const part of path.split('/')) {
    if (part === '..' || part === '.' || part === '') throw new Error(`${path}: "${part}" in the path`);
  }
}

/**
 * A `.tar.gz` (Uint8Array) of `files`: `[{path, file}]` with `path` relative (`a/b.txt`) and
 * `file` a Blob/File; `dirs` lists extra (possibly empty) directories. Parents get
 * directory entries of their own.
 */
export async function tarGz(files, dirs = []) {
  if (!files.length) throw new Error('the folder has no files');
  const seenDirs = new Set();
  const seenFiles = new Set();
  const parts = [];
  const now = Date.now() / 1000;
  const addDir = (d) => {
    if (!d || seenDirs.has(d)) return;
    const parent = d.includes('/') ? d.slice(0, d.lastIndexOf('/')) : '';
    addDir(parent);
    seenDirs.add(d);
    parts.push(header(d, { size: 0, dir: true, mtime: now }));
  };
  const sorted = [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (const d of [...dirs].sort()) {
    checkPath(d);
    addDir(d);
  }
  for (const { path, file } of sorted) {
    checkPath(path);
    if (seenFiles.has(path)) throw new Error(`${path}: appears twice`);
    seenFiles.add(path);
    if (path.includes('/')) addDir(path.slice(0, path.lastIndexOf('/')));
    const mtime = file.lastModified ? file.lastModified / 1000 : now;
    parts.push(header(path, { size: file.size, dir: false, mtime }));
    parts.push(file);
    const pad = (BLOCK - (file.size % BLOCK)) % BLOCK;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(BLOCK * 2)); // end of archive
  const gz = new Blob(parts).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(gz).arrayBuffer());
}
