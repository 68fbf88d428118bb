/**
 * Where default.yaml (the embedded config that `npm start` uses as a template) lives. tsc
 * does not copy it to dist/, so from dist/src/config/ look back at the source tree.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Absolute path of src/config/default.yaml, from either src/ or dist/src/. */
export function defaultConfigPath(): string {
  const candidates = [fileURLToPath(new URL('./default.yaml', import.meta.url)), fileURLToPath(new URL('../../../src/config/default.yaml', import.meta.url))];
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}
