import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import { randomHash, type BalancerOptions } from './options.js';
import { CanonicalOrder } from './canonical-order.js';
import { murmur3 } from './hash.js';
import { growF64, growI32, WeightedSet } from './weights.js';
import { Xoshiro128 } from './prng.js';

/** Default lookup table size (Envoy's default), a prime. */
export const DEFAULT_TABLE_SIZE = 65537;
const OFFSET_SEED = 0x2545f491;
const SKIP_SEED = 0x9e3779b9;

export interface MaglevOptions extends BalancerOptions {
  /** Lookup table size; a prime, else the next prime above it is used (default 65537). */
  tableSize?: number;
}

/**
 * Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M
 * where each endpoint claims slots in the order of its own permutation
 * (offset + j x skip) mod M, endpoints taking turns; pick = table[hash mod M], O(1).
 * Removing one of N endpoints moves about 1/N of keys (its own, plus a little churn).
 *
 * Weights as Envoy: an endpoint takes a turn in a round only when its claims so far are
 * below round x weight/maxWeight, so slots are shared in proportion to weight.
 * Endpoints take turns in an id-derived order, so every agent builds the same table.
 * Keep M well above the number of endpoints (Google suggests 100x): at 10,000 endpoints the
 * default table gives each 6 or 7 slots, a +-8% spread.
 *
 * Without a hash in the context the pick is a random slot (weight-proportional). With
 * `tried`, the walk continues to the next slot whose endpoint has not been tried.
 */
export class MaglevBalancer implements Balancer {
  readonly type = 'maglev';
  private readonly rng: (() => number) | undefined;
  private readonly prng = new Xoshiro128();
  /** Table size M, prime. */
  readonly tableSize: number;
  private readonly set = new WeightedSet();
  private readonly canonical = new CanonicalOrder();
  /** Allocated at the first non-empty set (256 KiB at the default size). */
  private table = new Int32Array(0);
  private built = false;
  private position = new Int32Array(16);
  private skip = new Int32Array(16);
  private share = new Float64Array(16);
  private claimed = new Float64Array(16);

  constructor(options: MaglevOptions = {}) {
    this.rng = options.random;
    this.tableSize = nextPrime(Math.max(2, Math.floor(options.tableSize ?? DEFAULT_TABLE_SIZE)));
  }

  /** The injected source, else our own allocation-free generator. */
  private random(): number {
    return this.rng === undefined ? this.prng.next() : this.rng();
  }

  setEndpoints(endpoints: readonly Endpoint[]): void {
    const set = this.set;
    set.set(endpoints);
    const n = set.size;
    this.built = n > 0;
    if (n === 0) return;
    const M = this.tableSize;
    const eps = set.eps;
    const weights = set.weights;
    const position = (this.position = growI32(this.position, n));
    const skip = (this.skip = growI32(this.skip, n));
    const share = (this.share = growF64(this.share, n));
    const claimed = (this.claimed = growF64(this.claimed, n));
    for (let i = 0; i < n; i++) {
      const id = eps[i]!.id;
      position[i] = murmur3(id, OFFSET_SEED) % M;
      skip[i] = (murmur3(id, SKIP_SEED) % (M - 1)) + 1;
      share[i] = weights[i]! / set.max;
      claimed[i] = 0;
    }
    const order = this.canonical.compute(eps, n);
    if (this.table.length !== M) this.table = new Int32Array(M);
    const table = this.table;
    table.fill(-1);
    let filled = 0;
    for (let round = 1; filled < M; round++) {
      for (let r = 0; r < n && filled < M; r++) {
        const s = order[r]!;
        if (round * share[s]! < claimed[s]!) continue;
        claimed[s] = claimed[s]! + 1;
        const step = skip[s]!;
        let p = position[s]!;
        while (table[p]! >= 0) {
          p += step;
          if (p >= M) p -= M;
        }
        table[p] = s;
        p += step;
        position[s] = p >= M ? p - M : p;
        filled++;
      }
    }
  }

  pick(ctx: PickContext): Endpoint | undefined {
    if (!this.built) return undefined;
    const M = this.tableSize;
    const h = ctx.hash === undefined ? randomHash(this.random()) : ctx.hash >>> 0;
    const table = this.table;
    const eps = this.set.eps;
    const at = h % M;
    const ep = eps[table[at]!]!;
    const tried = ctx.tried;
    if (tried === undefined || tried.size === 0 || !tried.has(ep)) return ep;
    let p = at;
    for (let k = 1; k < M; k++) {
      p = p + 1 === M ? 0 : p + 1;
      const other = eps[table[p]!]!;
      if (other !== ep && !tried.has(other)) return other;
    }
    return ep;
  }
}

/** The smallest prime >= n (n >= 2). */
export function nextPrime(n: number): number {
  for (let c = n; ; c++) if (isPrime(c)) return c;
}

function isPrime(n: number): boolean {
  if (n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}
