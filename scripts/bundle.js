// The agent as users run it (bin/weft.js, the image): the tsc output of the CLI and of the
// worker thread, bundled by esbuild into a few ESM files in dist/bundle/. A restarted agent
// must serve within 500 ms (issue 16); unbundled, ~250 modules cost it ~100 ms of resolution
// (stat and package.json reads) and per-module loading before it listens
// (docs/benchmarks/startup.md). Run by scripts/build.sh after tsc.
//
// - Code splitting keeps what the agent imports lazily (`import()`: the identity modules and
//   @peculiar/x509, jose, the Kubernetes client) in chunks of their own, loaded on first use.
// - What the code loads with createRequire (yaml, ajv, prom-client's util, node:http as
//   CommonJS, the native addon) is left to Node at run time: from dist/bundle/ Node finds
//   node_modules and build/ as it does from dist/src/ (same depth under the repository).
// - The precompiled config validator (dist/src/config/schema-validator.cjs) is copied beside
//   the bundle: src/config/schema.ts requires it from next to itself.
// - dist/bundle.meta.json (esbuild's metafile, not shipped): which source file went into which
//   output, for test/unit/startup-imports.test.ts.
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'bundle');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const result = await build({
  absWorkingDir: root,
  entryPoints: { cli: 'dist/src/cli.js', worker: 'dist/src/workers/worker.js' },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node26',
  chunkNames: 'chunk-[hash]',
  sourcemap: 'linked',
  metafile: true,
  logLevel: 'warning',
  // CommonJS packages bundled into ESM call require() (node builtins, their own files): give
  // them Node's, made for this file.
  banner: { js: "import { createRequire as __weftCreateRequire } from 'node:module';\nconst require = __weftCreateRequire(import.meta.url);" },
});

copyFileSync(join(root, 'dist', 'src', 'config', 'schema-validator.cjs'), join(out, 'schema-validator.cjs'));
writeFileSync(join(root, 'dist', 'bundle.meta.json'), JSON.stringify(result.metafile));
