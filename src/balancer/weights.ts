import type { Endpoint } from '../cluster/endpoint.js';

/** An endpoint's weight as the weighted balancers read it: a positive finite number, else 0. */
export function weightOf(ep: Endpoint): number {
  const w = ep.weight;
  return w > 0 && w < Infinity ? w : 0;
}

/** `a` if it holds `n` values, else a bigger array (contents not kept). */
export function growF64(a: Float64Array<ArrayBuffer>, n: number): Float64Array<ArrayBuffer> {
  return a.length >= n ? a : new Float64Array(Math.max(n, a.length * 2, 16));
}

export function growI32(a: Int32Array<ArrayBuffer>, n: number): Int32Array<ArrayBuffer> {
  return a.length >= n ? a : new Int32Array(Math.max(n, a.length * 2, 16));
}

/**
 * The candidates of a weighted balancer, in reused arrays: the endpoints with a positive
 * weight. An endpoint of weight 0 is drained (gets no new traffic) unless every endpoint
 * has weight 0, in which case all count as weight 1.
 */
export class WeightedSet {
  readonly eps: Endpoint[] = [];
  weights = new Float64Array(16);
  size = 0;
  total = 0;
  max = 0;
  min = 0;
  /** Every candidate has the same weight: algorithms take their unweighted fast path. */
  uniform = true;

  set(endpoints: readonly Endpoint[]): void {
    const all = endpoints.length;
    this.weights = growF64(this.weights, all);
    const eps = this.eps;
    const weights = this.weights;
    let n = 0;
    let total = 0;
    let max = 0;
    let min = Infinity;
    for (let i = 0; i < all; i++) {
      const ep = endpoints[i]!;
      const w = weightOf(ep);
      if (w === 0) continue;
      eps[n] = ep;
      weights[n] = w;
      n++;
      total += w;
      if (w > max) max = w;
      if (w < min) min = w;
    }
    if (n === 0 && all > 0) {
      for (let i = 0; i < all; i++) {
        eps[i] = endpoints[i]!;
        weights[i] = 1;
      }
      n = all;
      total = all;
      max = min = 1;
    }
    eps.length = n;
    this.size = n;
    this.total = total;
    this.max = max;
    this.min = n === 0 ? 0 : min;
    this.uniform = max === min;
  }
}

/**
 * Walker/Vose alias table: O(n) build, O(1) weighted draw from one uniform number.
 * Buffers are reused across builds.
 */
export class AliasTable {
  private prob = new Float64Array(16);
  private alias = new Int32Array(16);
  private scaled = new Float64Array(16);
  private small = new Int32Array(16);
  private large = new Int32Array(16);
  private size = 0;

  build(weights: Float64Array, n: number, total: number): void {
    this.prob = growF64(this.prob, n);
    this.alias = growI32(this.alias, n);
    this.scaled = growF64(this.scaled, n);
    this.small = growI32(this.small, n);
    this.large = growI32(this.large, n);
    const { prob, alias, scaled, small, large } = this;
    let ns = 0;
    let nl = 0;
    for (let i = 0; i < n; i++) {
      const p = (weights[i]! * n) / total;
      scaled[i] = p;
      if (p < 1) small[ns++] = i;
      else large[nl++] = i;
    }
    while (ns > 0 && nl > 0) {
      const l = small[--ns]!;
      const g = large[--nl]!;
      prob[l] = scaled[l]!;
      alias[l] = g;
      const rest = scaled[g]! + scaled[l]! - 1;
      scaled[g] = rest;
      if (rest < 1) small[ns++] = g;
      else large[nl++] = g;
    }
    // Whatever is left is 1 up to rounding error.
    while (nl > 0) {
      const g = large[--nl]!;
      prob[g] = 1;
      alias[g] = g;
    }
    while (ns > 0) {
      const l = small[--ns]!;
      prob[l] = 1;
      alias[l] = l;
    }
    this.size = n;
  }

  /** An index drawn with probability weight/total, from one uniform `r` in [0, 1). */
  sample(r: number): number {
    const n = this.size;
    const u = r * n;
    let i = Math.floor(u);
    if (i >= n) i = n - 1;
    return u - i < this.prob[i]! ? i : this.alias[i]!;
  }
}
