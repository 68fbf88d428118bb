import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/**
 * The weft repository (or image) root: the nearest directory above this module whose
 * package.json is weft's. The same from src/ (tap's TypeScript loader) and dist/src/ (compiled).
 */
export function repoRoot(): string {
  if (cached !== undefined) return cached;
  const here = dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'weft') return (cached = dir);
    } catch {
      /* no package.json here: keep climbing */
    }
    if (dirname(dir) === dir) throw new Error(`cannot find the weft repository above ${here}`);
  }
}
