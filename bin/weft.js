#!/usr/bin/env -S node --max-semi-space-size=4
// The `weft` command: runs the agent's bundle, dist/bundle/ (npm run build writes it: tsc, then
// scripts/bundle.js). The Node.js flags on the first line are the agent's (src/node-flags.ts says why); run with
// `node` directly, pass them too: `node --max-semi-space-size=4 bin/weft.js agent ...`.
import { enableCompileCache } from 'node:module';

// V8's compiled code for the bundle's files, kept on disk (NODE_COMPILE_CACHE, by default a
// directory under the OS temp dir): an agent restarted after a crash loads them faster
// (docs/benchmarks/startup.md). Best effort: a cache that cannot be written is skipped.
enableCompileCache?.();
// Imported after: modules loaded before the cache is enabled are not cached.
const { main } = await import('../dist/bundle/cli.js');

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
