#!/usr/bin/env node
// The `weft` command: runs the compiled TypeScript (npm run build writes dist/).
import { main } from '../dist/src/cli.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
