import type { Endpoint } from '../cluster/endpoint.js';
import { randomIndex } from './options.js';
import { firstUntried } from './tried.js';
import { AliasTable, WeightedSet } from './weights.js';
import { Xoshiro128 } from './prng.js';

/** Draws before giving up on finding an untried (or a second, distinct) candidate. */
const DRAWS = 8;

/**
 * The sampling half of "power of two choices" (least-request, peak-ewma): draws two
 * distinct candidates, uniformly or in proportion to weight (an alias table, O(1) either
 * way), avoiding endpoints a retry has already tried.
 */
export class TwoChoices {
  readonly set = new WeightedSet();
  private readonly alias = new AliasTable();
  private readonly prng = new Xoshiro128();
  /** Draws follow weight (false: uniform, weights left to the caller's cost). */
  private weighted = false;

  /**
   * @param rng uniform source in [0, 1); undefined: an internal xoshiro128** generator.
   * @param weightedDraws draw in proportion to weight (default true).
   */
  constructor(
    private readonly rng: (() => number) | undefined,
    private readonly weightedDraws = true,
  ) {}

  /** The injected source, else our own allocation-free generator. */
  private random(): number {
    return this.rng === undefined ? this.prng.next() : this.rng();
  }

  setEndpoints(endpoints: readonly Endpoint[]): void {
    const set = this.set;
    set.set(endpoints);
    this.weighted = this.weightedDraws && !set.uniform;
    if (this.weighted) this.alias.build(set.weights, set.size, set.total);
  }

  private draw(): number {
    return this.weighted ? this.alias.sample(this.random()) : randomIndex(this.random(), this.set.size);
  }

  /** The first candidate; with `tried`, redrawn, then scanned for, until untried (if any is). */
  first(tried: ReadonlySet<Endpoint> | undefined): number {
    const set = this.set;
    let i = this.draw();
    if (tried === undefined) return i;
    const eps = set.eps;
    for (let k = 0; k < DRAWS && tried.has(eps[i]!); k++) i = this.draw();
    return tried.has(eps[i]!) ? firstUntried(eps, set.size, i, tried) : i;
  }

  /** A second candidate, distinct from `a` and untried; `a` when none turns up. */
  second(a: number, tried: ReadonlySet<Endpoint> | undefined): number {
    const set = this.set;
    const n = set.size;
    if (tried === undefined && !this.weighted) {
      // Exactly uniform over the others: no wasted draws.
      const j = randomIndex(this.random(), n - 1);
      return j >= a ? j + 1 : j;
    }
    const eps = set.eps;
    for (let k = 0; k < DRAWS; k++) {
      const j = this.draw();
      if (j !== a && (tried === undefined || !tried.has(eps[j]!))) return j;
    }
    // One endpoint holds most of the weight, or most have been tried: scan from a random
    // place, so a comparison still happens whenever another candidate exists.
    let j = randomIndex(this.random(), n);
    for (let k = 0; k < n; k++) {
      if (j !== a && (tried === undefined || !tried.has(eps[j]!))) return j;
      j = j + 1 === n ? 0 : j + 1;
    }
    return a;
  }
}
