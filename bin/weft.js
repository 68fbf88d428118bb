#!/usr/bin/env -S node --max-semi-space-size=4
// The `weft` command: runs the compiled TypeScript (npm run build writes dist/).
// The Node.js flags on the first line are the agent's (src/node-flags.ts says why); run with
// `node` directly, pass them too: `node --max-semi-space-size=4 bin/weft.js agent ...`.
import { main } from '../dist/src/cli.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
