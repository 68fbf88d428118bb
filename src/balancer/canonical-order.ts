import type { Endpoint } from '../cluster/endpoint.js';
import { murmur3 } from './hash.js';
import { growF64, growI32 } from './weights.js';

/** Endpoint slots are packed below a 32-bit hash in one double: 2^21 slots at most. */
export const MAX_SLOTS = 1 << 21;
const SLOT_SCALE = MAX_SLOTS;
const ORDER_SEED = 0x5bd1e995;

/**
 * Sorts endpoint slots into an order that depends only on the endpoints' ids, not on the
 * order discovery listed them in: agents on different nodes build the same hash tables and
 * so send a key to the same endpoint. Sorted by a hash of the id (a fast numeric sort),
 * ties by the id itself.
 */
export class CanonicalOrder {
  /** Slots in canonical order. */
  order = new Int32Array(16);
  private keys = new Float64Array(16);

  compute(eps: readonly Endpoint[], n: number): Int32Array {
    if (n > MAX_SLOTS) throw new RangeError(`hash balancers support at most ${MAX_SLOTS} endpoints, got ${n}`);
    const keys = (this.keys = growF64(this.keys, n));
    const order = (this.order = growI32(this.order, n));
    for (let i = 0; i < n; i++) keys[i] = murmur3(eps[i]!.id, ORDER_SEED) * SLOT_SCALE + i;
    const sorted = keys.subarray(0, n).sort();
    for (let i = 0; i < n; i++) {
      const key = sorted[i]!;
      order[i] = key - Math.floor(key / SLOT_SCALE) * SLOT_SCALE;
    }
    // Equal id hashes (about one pair in 10^5 endpoints^2 / 2^32): order those by id.
    for (let i = 1; i < n; i++) {
      if (Math.floor(sorted[i]! / SLOT_SCALE) !== Math.floor(sorted[i - 1]! / SLOT_SCALE)) continue;
      let j = i;
      while (j > 0 && sameHash(sorted, j) && eps[order[j]!]!.id < eps[order[j - 1]!]!.id) {
        const t = order[j]!;
        order[j] = order[j - 1]!;
        order[j - 1] = t;
        j--;
      }
    }
    return order;
  }
}

function sameHash(sorted: Float64Array, j: number): boolean {
  return Math.floor(sorted[j]! / SLOT_SCALE) === Math.floor(sorted[j - 1]! / SLOT_SCALE);
}
