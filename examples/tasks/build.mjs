#!/usr/bin/env node
// Builds the tasks app into dist/: index.html and sw.js under fixed names, every other asset
// as `name.<16 hex of its SHA-256>.ext` (KUBE serves those as immutable), a `.br` and a `.gz`
// beside each (KUBE picks one by Accept-Encoding), and the first-load budget at the end.
//
// Automerge's wasm is its own asset, loaded by main.js through the slim entry points, so the
// JavaScript stays small and the wasm is compiled while it streams in.

import { build, transform } from 'esbuild';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.join(HERE, 'src');
const DIST = path.join(HERE, 'dist');
// The repository's client, used from source so a change there needs no `npm install` here.
// Outside the repository (the app copied as a template) the installed @kube/client is used.
const CLIENT = path.resolve(HERE, '..', '..', 'client');
const CLIENT_ENTRY = path.join(CLIENT, 'index.js');
const COMPRESS_CACHE = path.join(HERE, 'node_modules', '.cache', 'kube-tasks-compressed');
const BUDGET = 1024 * 1024; // first load, brotli bytes: index.html + js + css + wasm
const require = createRequire(import.meta.url);

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** `name.<16 hex>.ext`; KUBE's immutable rule wants a digit among them (16 letters a–f in a
 * row is a 1-in-7-million chance; take more digits of the hash then). */
function hashedName(name, ext, bytes) {
  const hex = sha256(bytes);
  let n = 16;
  while (!/[0-9]/.test(hex.slice(0, n))) n++;
  return `${name}.${hex.slice(0, n)}.${ext}`;
}

/**
 * One copy of everything: `@automerge/automerge` and `@automerge/automerge-repo` resolve to
 * their slim entry points (no base64 wasm inside, no environment guessing), and every bare
 * import made by the client's source resolves from this folder, never from client/node_modules.
 */
const oneCopy = {
  name: 'one-copy',
  setup(b) {
    b.onResolve({ filter: /^@automerge\/automerge(-repo)?$/ }, (args) =>
      b.resolve(`${args.path}/slim`, { kind: args.kind, resolveDir: HERE }));
    if (existsSync(CLIENT_ENTRY)) {
      b.onResolve({ filter: /^@kube\/client$/ }, () => ({ path: CLIENT_ENTRY }));
      b.onResolve({ filter: /^[^./]/ }, (args) => {
        const inClient = args.resolveDir.startsWith(CLIENT + path.sep)
          || args.resolveDir === CLIENT;
        if (!inClient || args.resolveDir.includes(`${path.sep}node_modules${path.sep}`)) return undefined;
        return b.resolve(args.path, { kind: args.kind, resolveDir: HERE });
      });
    }
  },
};

/** Fails the build when two copies of a package, or a base64-inlined wasm, got in. */
function checkOneCopy(metafile) {
  const inputs = Object.keys(metafile.inputs);
  const problems = [];
  for (const pkg of ['@automerge/automerge', '@automerge/automerge-repo', '@kube/client']) {
    const roots = new Set();
    for (const p of inputs) {
      const i = p.lastIndexOf(`node_modules/${pkg}/`);
      if (i >= 0) roots.add(p.slice(0, i));
    }
    if (roots.size > 1) problems.push(`${pkg} is bundled ${roots.size} times: ${[...roots].join(', ')}`);
  }
  if (existsSync(CLIENT_ENTRY) && inputs.some((p) => p.includes('node_modules/@kube/client/'))) {
    problems.push('@kube/client was bundled from node_modules as well as from ../../client');
  }
  for (const p of inputs) {
    if (/automerge_wasm_bg_base64|fullfat_/.test(p)) problems.push(`${p}: the base64-inlined wasm entry point was bundled`);
  }
  if (problems.length) throw new Error(`bundle check:\n  ${problems.join('\n  ')}`);
}

/** Brotli (quality 11) and gzip (level 9) of `bytes`, kept by hash: the wasm takes seconds. */
async function compress(bytes) {
  const key = sha256(bytes);
  const br = path.join(COMPRESS_CACHE, `${key}.br`);
  const gz = path.join(COMPRESS_CACHE, `${key}.gz`);
  if (existsSync(br) && existsSync(gz)) return { br: await readFile(br), gz: await readFile(gz) };
  const out = {
    br: zlib.brotliCompressSync(bytes, {
      params: {
        [zlib.constants.BROTLI_PARAM_QUALITY]: 11,
        [zlib.constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
      },
    }),
    gz: zlib.gzipSync(bytes, { level: 9 }),
  };
  await mkdir(COMPRESS_CACHE, { recursive: true });
  await writeFile(br, out.br);
  await writeFile(gz, out.gz);
  return out;
}

async function main() {
  const started = Date.now();

  // Automerge's wasm, under its own hash.
  const wasmBytes = await readFile(require.resolve('@automerge/automerge/automerge.wasm'));
  const wasmName = hashedName('automerge', 'wasm', wasmBytes);

  const common = {
    bundle: true,
    write: false,
    minify: true,
    legalComments: 'eof',
    logLevel: 'warning',
    absWorkingDir: HERE,
  };

  const css = await build({ ...common, entryPoints: [path.join(SRC, 'style.css')], outfile: 'style.css' });
  const cssBytes = Buffer.from(css.outputFiles[0].contents);
  const cssName = hashedName('style', 'css', cssBytes);

  const js = await build({
    ...common,
    entryPoints: [path.join(SRC, 'main.js')],
    outfile: 'main.js',
    format: 'esm',
    platform: 'browser',
    target: ['es2022', 'chrome111', 'firefox115', 'safari16.4'],
    metafile: true,
    plugins: [oneCopy],
    define: { __AUTOMERGE_WASM__: JSON.stringify(`/${wasmName}`) },
  });
  checkOneCopy(js.metafile);
  const jsBytes = Buffer.from(js.outputFiles[0].contents);
  const jsName = hashedName('main', 'js', jsBytes);

  const template = await readFile(path.join(SRC, 'index.html'), 'utf8');
  const html = Buffer.from(template
    .replaceAll('%STYLE%', `/${cssName}`)
    .replaceAll('%MAIN%', `/${jsName}`)
    .replaceAll('%WASM%', `/${wasmName}`));
  for (const token of ['%STYLE%', '%MAIN%', '%WASM%']) {
    if (!template.includes(token)) throw new Error(`src/index.html has no ${token}`);
  }

  // The service worker: unhashed (browsers look for it under one name), the precache list and
  // a version derived from it built in.
  const precache = ['/', `/${jsName}`, `/${cssName}`, `/${wasmName}`];
  const sw = await transform(await readFile(path.join(SRC, 'sw.js'), 'utf8'), {
    minify: true,
    loader: 'js',
    target: 'es2022',
    define: {
      __PRECACHE__: JSON.stringify(precache),
      __VERSION__: JSON.stringify(sha256(precache.join('\n') + html).slice(0, 16)),
    },
  });
  const swBytes = Buffer.from(sw.code);

  const files = [
    { name: 'index.html', bytes: html, firstLoad: true },
    { name: jsName, bytes: jsBytes, firstLoad: true },
    { name: cssName, bytes: cssBytes, firstLoad: true },
    { name: wasmName, bytes: wasmBytes, firstLoad: true },
    { name: 'sw.js', bytes: swBytes, firstLoad: false },
  ];

  await rm(DIST, { recursive: true, force: true });
  await mkdir(DIST, { recursive: true });
  for (const f of files) {
    Object.assign(f, await compress(f.bytes));
    await writeFile(path.join(DIST, f.name), f.bytes);
    await writeFile(path.join(DIST, `${f.name}.br`), f.br);
    await writeFile(path.join(DIST, `${f.name}.gz`), f.gz);
  }

  const kib = (n) => `${(n / 1024).toFixed(1)} KiB`.padStart(11);
  const width = Math.max(...files.map((f) => f.name.length));
  console.log(`${'file'.padEnd(width)}         raw      brotli        gzip`);
  for (const f of files) {
    console.log(`${f.name.padEnd(width)} ${kib(f.bytes.length)} ${kib(f.br.length)} ${kib(f.gz.length)}${f.firstLoad ? '' : '  (not in the first load)'}`);
  }
  const first = files.filter((f) => f.firstLoad);
  const total = first.reduce((n, f) => n + f.br.length, 0);
  const raw = first.reduce((n, f) => n + f.bytes.length, 0);
  const verdict = total <= BUDGET ? 'within' : 'OVER';
  console.log(`first load: ${total} bytes brotli (${kib(total).trim()}; ${kib(raw).trim()} raw), ${verdict} the budget of ${kib(BUDGET).trim()}`);
  console.log(`built ${path.relative(process.cwd(), DIST) || '.'} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (total > BUDGET) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e?.stack || String(e));
  process.exit(1);
});
