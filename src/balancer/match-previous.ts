import type { Endpoint } from '../cluster/endpoint.js';

/** How far ahead in the previous list an endpoint is looked for before it counts as moved or new. */
const LOOKAHEAD = 8;

/**
 * For each of `next[0..n)`, its index in `prev[0..m)`, or -1 when it is new: written to
 * `out`. O(n + m) when the two lists keep their relative order (the cluster filters one
 * ordered list on each health change: endpoints leave and come back in place); a Map over
 * the endpoints passed over handles anything else, so a reordered list is still matched
 * exactly. Avoids building a 10,000-entry Map on every health change.
 */
export function matchPrevious(prev: readonly Endpoint[], m: number, next: readonly Endpoint[], n: number, out: Int32Array): void {
  let skipped: Map<Endpoint, number> | undefined;
  let misses = 0;
  let j = 0;
  for (let i = 0; i < n; i++) {
    const ep = next[i]!;
    let found = -1;
    const end = j + LOOKAHEAD < m ? j + LOOKAHEAD : m;
    for (let k = j; k < end; k++) {
      if (prev[k] === ep) {
        found = k;
        break;
      }
    }
    if (found < 0) {
      out[i] = -1;
      misses++;
      continue;
    }
    // Entries passed over are gone, or moved later in the list: kept for the misses.
    for (let k = j; k < found; k++) (skipped ??= new Map()).set(prev[k]!, k);
    out[i] = found;
    j = found + 1;
  }
  if (misses === 0) return;
  for (let k = j; k < m; k++) (skipped ??= new Map()).set(prev[k]!, k);
  if (skipped === undefined) return;
  for (let i = 0; i < n && misses > 0; i++) {
    if (out[i] !== -1) continue;
    misses--;
    const k = skipped.get(next[i]!);
    if (k !== undefined) out[i] = k;
  }
}
