#!/usr/bin/env node
// Builds the operator console into dist/, the three files the kube binary embeds
// (kube/src/admin/console.rs) and serves on the admin listener:
//
//   dist/index.html   src/index.html, copied
//   dist/console.js   src/main.js and its imports (uPlot included), bundled and minified
//   dist/console.css  src/style.css, then uPlot's CSS, minified
//
// The output depends only on the sources and the pinned esbuild and uPlot, so it is the same
// on every machine. `node build.mjs --check` builds into a temporary dir and fails when any
// file differs from dist/ (dist/ is committed: the Rust build needs no Node).
//
// The console is served under a CSP without 'unsafe-inline' or 'unsafe-eval'; the build
// refuses output that would break under it (inline script or style, eval) or is too large.

import { build, transform } from 'esbuild';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.join(HERE, 'src');
const DIST = path.join(HERE, 'dist');
const FILES = ['index.html', 'console.js', 'console.css'];
const BUDGET = 150 * 1024; // bytes, the three files together
const require = createRequire(import.meta.url);

async function buildInto(out) {
  await mkdir(out, { recursive: true });
  const uplotVersion = require('uplot/package.json').version;
  // uPlot's own header comment is not a legal comment esbuild keeps; its notice goes first.
  const notice = `/*! KUBE console. Includes uPlot ${uplotVersion}, (c) Leon Sorokin, MIT License. */`;
  const js = await build({
    entryPoints: [path.join(SRC, 'main.js')],
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2022',
    platform: 'browser',
    sourcemap: false,
    legalComments: 'eof',
    charset: 'ascii',
    write: false,
    logLevel: 'warning',
    absWorkingDir: HERE,
    banner: { js: notice },
  });
  const script = js.outputFiles[0].contents;

  const style = await readFile(path.join(SRC, 'style.css'), 'utf8');
  const uplotCss = await readFile(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  const css = await transform(`${notice}\n${style}\n${uplotCss}\n`, {
    loader: 'css',
    minify: true,
    target: ['chrome110', 'firefox110', 'safari16'],
    legalComments: 'inline',
    charset: 'ascii',
  });

  const html = await readFile(path.join(SRC, 'index.html'), 'utf8');

  checkCsp(html, Buffer.from(script).toString('utf8'), css.code);
  const outputs = {
    'index.html': Buffer.from(html),
    'console.js': Buffer.from(script),
    'console.css': Buffer.from(css.code),
  };
  const total = Object.values(outputs).reduce((n, b) => n + b.length, 0);
  if (total > BUDGET) throw new Error(`dist is ${total} bytes, over the budget of ${BUDGET}`);
  for (const [name, bytes] of Object.entries(outputs)) await writeFile(path.join(out, name), bytes);
  return outputs;
}

/** What the console's Content-Security-Policy would block, refused at build time. */
function checkCsp(html, js, css) {
  const problems = [];
  if (/<style[\s>]/i.test(html)) problems.push('index.html: a <style> element (style-src \'self\' only)');
  if (/\sstyle\s*=/i.test(html)) problems.push('index.html: a style="" attribute');
  if (/\son[a-z]+\s*=/i.test(html)) problems.push('index.html: an inline event handler attribute');
  for (const m of html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)) {
    if (!/\ssrc=/.test(m[1]) || m[2].trim()) problems.push('index.html: an inline <script>');
  }
  if (/(?:src|href)\s*=\s*["']?(?:https?:)?\/\//i.test(html)) problems.push('index.html: a URL of another origin');
  if (/\beval\s*\(|\bnew\s+Function\s*\(/.test(js)) problems.push('console.js: eval or new Function (no \'unsafe-eval\')');
  if (/@import|url\(\s*["']?(?:https?:)?\/\//i.test(css)) problems.push('console.css: an @import or a URL of another origin');
  if (problems.length) throw new Error(`CSP check:\n  ${problems.join('\n  ')}`);
}

async function main() {
  const check = process.argv.includes('--check');
  if (!check) {
    const outputs = await buildInto(DIST);
    const sizes = Object.entries(outputs).map(([n, b]) => `${n} ${b.length}`);
    console.log(`built dist/: ${sizes.join(', ')} bytes`);
    return;
  }
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'kube-console-'));
  try {
    const outputs = await buildInto(tmp);
    const stale = [];
    for (const name of FILES) {
      let committed = null;
      try {
        committed = await readFile(path.join(DIST, name));
      } catch {
        stale.push(`dist/${name} is missing`);
        continue;
      }
      if (!committed.equals(outputs[name])) stale.push(`dist/${name} differs from a build of src/`);
    }
    let present = [];
    try {
      present = await readdir(DIST);
    } catch {
      present = [];
    }
    for (const extra of present.filter((n) => !FILES.includes(n))) stale.push(`dist/${extra} is not a build output`);
    if (stale.length) {
      console.error(`console: dist/ is not built from the sources (run: cd console && npm run build):\n  ${stale.join('\n  ')}`);
      process.exitCode = 1;
      return;
    }
    console.log('dist/ matches a build of src/');
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e.message || e);
  process.exitCode = 1;
});
