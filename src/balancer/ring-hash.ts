import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import { randomHash, type BalancerOptions } from './options.js';
import { CanonicalOrder, MAX_SLOTS } from './canonical-order.js';
import { murmur3 } from './hash.js';
import { growF64, growI32, WeightedSet } from './weights.js';
import { Xoshiro128 } from './prng.js';

/** Default minimum number of points on the ring (Envoy's default). */
export const DEFAULT_MIN_RING_SIZE = 1024;
/** Hard cap on ring points (Envoy's default maximum). */
export const MAX_RING_SIZE = 8 * 1024 * 1024;
/** Up to 2^18 lookup buckets (1 MiB). */
const MAX_BUCKET_BITS = 18;

export interface RingHashOptions extends BalancerOptions {
  /** Minimum ring size (default 1024). Raise it for a smoother spread over many endpoints. */
  minRingSize?: number;
}

/**
 * Consistent hashing on a Ketama-style ring: every endpoint puts points ("virtual nodes")
 * on a 32-bit circle at murmur3(id, i); a key goes to the owner of the first point at or
 * after its hash (a bucket index, then a binary search within the bucket: O(1) expected).
 *
 * Points per endpoint = round(scale x weight), at least 1. `scale` is chosen for a ring of
 * about 2 x minRingSize points, with at least one point for the lightest endpoint, and is
 * then kept across set changes while the ring stays between minRingSize and about 16 x
 * minRingSize (so for any single change short of halving or growing the set many times
 * over). Because an endpoint's points then depend only on its own id and weight,
 * removing an endpoint moves exactly the keys it owned and adding one moves only keys to
 * it. Ring positions and tie-breaks depend on ids only, so every agent builds the same ring.
 *
 * Without a hash in the context the pick is a random point (weight-proportional). With
 * `tried`, the walk continues clockwise to the next endpoint not tried.
 */
export class RingHashBalancer implements Balancer {
  readonly type = 'ring-hash';
  private readonly rng: (() => number) | undefined;
  private readonly prng = new Xoshiro128();
  private readonly minRingSize: number;
  private readonly set = new WeightedSet();
  private readonly canonical = new CanonicalOrder();
  /** Points per unit of weight; 0 until the first build. */
  private scale = 0;
  private rank = new Int32Array(16);
  private keys = new Float64Array(16);
  private ringHash = new Uint32Array(16);
  private ringOwner = new Int32Array(16);
  private ringSize = 0;
  /**
   * Lookup accelerator: bucket b (the top `bucketBits` bits of a hash) starts at ring index
   * bucketStart[b]. A pick searches one bucket, about one point, instead of the whole ring:
   * a binary search's unpredictable branches cost more than the rest of the pick.
   */
  private bucketStart = new Int32Array(16);
  private bucketShift = 31;

  constructor(options: RingHashOptions = {}) {
    this.rng = options.random;
    const min = Math.floor(options.minRingSize ?? DEFAULT_MIN_RING_SIZE);
    this.minRingSize = Math.min(Math.max(min, 1), MAX_RING_SIZE);
  }

  /** The injected source, else our own allocation-free generator. */
  private random(): number {
    return this.rng === undefined ? this.prng.next() : this.rng();
  }

  /** Number of points on the ring (for tests, benchmarks and config_dump). */
  get size(): number {
    return this.ringSize;
  }

  setEndpoints(endpoints: readonly Endpoint[]): void {
    const set = this.set;
    set.set(endpoints);
    const n = set.size;
    if (n === 0) {
      this.ringSize = 0;
      return;
    }
    const eps = set.eps;
    const weights = set.weights;
    const scale = this.chooseScale(set.total, set.min);

    const order = this.canonical.compute(eps, n);
    const rank = (this.rank = growI32(this.rank, n));
    for (let r = 0; r < n; r++) rank[order[r]!] = r;

    let points = 0;
    for (let i = 0; i < n; i++) points += Math.max(1, Math.round(scale * weights[i]!));
    const keys = (this.keys = growF64(this.keys, points));
    let k = 0;
    for (let i = 0; i < n; i++) {
      const id = eps[i]!.id;
      const count = Math.max(1, Math.round(scale * weights[i]!));
      const tag = rank[i]!;
      // Point hash above, owner's canonical rank below: one numeric sort orders both,
      // and equal point hashes fall to the same endpoint in every agent.
      for (let v = 0; v < count; v++) keys[k++] = murmur3(id, v) * MAX_SLOTS + tag;
    }
    const sorted = keys.subarray(0, points).sort();
    if (this.ringHash.length < points) {
      this.ringHash = new Uint32Array(Math.max(points, this.ringHash.length * 2));
      this.ringOwner = new Int32Array(this.ringHash.length);
    }
    const ringHash = this.ringHash;
    const ringOwner = this.ringOwner;
    for (let p = 0; p < points; p++) {
      // Split without `%`: on doubles above 2^31 it is a slow fmod call.
      const key = sorted[p]!;
      const hash = Math.floor(key / MAX_SLOTS);
      ringHash[p] = hash;
      ringOwner[p] = order[key - hash * MAX_SLOTS]!;
    }
    this.ringSize = points;
    this.indexBuckets(points);
  }

  private indexBuckets(points: number): void {
    const bits = Math.min(MAX_BUCKET_BITS, Math.max(1, Math.ceil(Math.log2(points))));
    const buckets = 2 ** bits;
    const shift = 32 - bits;
    const start = (this.bucketStart = growI32(this.bucketStart, buckets + 1));
    const ringHash = this.ringHash;
    const width = 2 ** shift;
    let p = 0;
    for (let b = 0; b < buckets; b++) {
      const low = b * width;
      while (p < points && ringHash[p]! < low) p++;
      start[b] = p;
    }
    start[buckets] = points;
    this.bucketShift = shift;
  }

  /** Keeps the current scale while it still gives a ring of sensible size: see the class doc. */
  private chooseScale(total: number, minWeight: number): number {
    const min = this.minRingSize;
    const upper = Math.min(MAX_RING_SIZE, Math.max(16 * min, (4 * total) / minWeight));
    const s = this.scale;
    const planned = s * total;
    if (s > 0 && planned >= min && planned <= upper && s * minWeight >= 0.5) return s;
    const fresh = Math.min(Math.max((2 * min) / total, 1 / minWeight), MAX_RING_SIZE / total);
    this.scale = fresh;
    return fresh;
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const size = this.ringSize;
    if (size === 0) return undefined;
    const h = ctx.hash === undefined ? randomHash(this.random()) : ctx.hash >>> 0;
    const ringHash = this.ringHash;
    // The first point at or after h lies in h's bucket, or is the first of a later one.
    const b = h >>> this.bucketShift;
    let lo = this.bucketStart[b]!;
    let hi = this.bucketStart[b + 1]!;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ringHash[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    if (lo === size) lo = 0;
    const eps = this.set.eps;
    const ringOwner = this.ringOwner;
    const ep = eps[ringOwner[lo]!]!;
    const tried = ctx.tried;
    if (tried === undefined || tried.size === 0 || !tried.has(ep)) return ep;
    let p = lo;
    for (let k = 1; k < size; k++) {
      p = p + 1 === size ? 0 : p + 1;
      const other = eps[ringOwner[p]!]!;
      if (other !== ep && !tried.has(other)) return other;
    }
    return ep;
  }
}
