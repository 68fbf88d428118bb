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
// - prom-client requires @opentelemetry/api (~20 ms to evaluate) in processCpuTotal.js only
//   for exemplars on the process CPU counters, which weft does not turn on: the bundle requires
//   it there on first use instead (lazyOtel below; the build fails if that line changes).
// - dist/bundle.meta.json (esbuild's metafile, not shipped): which source file went into which
//   output, for test/unit/startup-imports.test.ts.
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'bundle');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

/** prom-client's processCpuTotal.js, with @opentelemetry/api required where it is used. */
const lazyOtel = {
  name: 'weft-lazy-otel',
  setup(b) {
    b.onLoad({ filter: /[\\/]prom-client[\\/]lib[\\/]metrics[\\/]processCpuTotal\.js$/ }, ({ path }) => {
      const text = readFileSync(path, 'utf8');
      const eager = "const OtelApi = require('@opentelemetry/api');";
      if (!text.includes(eager)) throw new Error(`bundle: ${path} no longer has "${eager}": look again at lazyOtel in scripts/bundle.js`);
      const lazy = "let otelApi;\nconst OtelApi = {\n\tget trace() { return (otelApi ??= require('@opentelemetry/api')).trace; },\n\tget context() { return (otelApi ??= require('@opentelemetry/api')).context; },\n};";
      const out = text.replace(eager, lazy);
      if (/OtelApi\.(?!trace\b|context\b)/.test(out)) throw new Error(`bundle: ${path} uses more of @opentelemetry/api than trace and context: look again at lazyOtel in scripts/bundle.js`);
      return { contents: out, loader: 'js' };
    });
  },
};

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
  plugins: [lazyOtel],
  // CommonJS packages bundled into ESM call require() (node builtins, their own files): give
  // them Node's, made for this file.
  banner: { js: "import { createRequire as __weftCreateRequire } from 'node:module';\nconst require = __weftCreateRequire(import.meta.url);" },
});

copyFileSync(join(root, 'dist', 'src', 'config', 'schema-validator.cjs'), join(out, 'schema-validator.cjs'));
writeFileSync(join(root, 'dist', 'bundle.meta.json'), JSON.stringify(result.metafile));
