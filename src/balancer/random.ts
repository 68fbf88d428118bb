import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import { randomIndex, type BalancerOptions } from './options.js';
import { firstUntried, triedSet } from './tried.js';
import { Xoshiro128 } from './prng.js';

/** Redraws before a retry falls back to a scan for an untried endpoint. */
const REDRAWS = 4;

/**
 * Uniform random choice. Weights are ignored on purpose, as Envoy's RANDOM does: a
 * weighted spread is what weighted-round-robin (exact, smooth) and least-request
 * (weighted draws) are for. Stateless between picks, so agents on many nodes do not
 * synchronise.
 */
export class RandomBalancer implements Balancer {
  readonly type = 'random';
  private readonly eps: Endpoint[] = [];
  private readonly rng: (() => number) | undefined;
  private readonly prng = new Xoshiro128();

  constructor(options: BalancerOptions = {}) {
    this.rng = options.random;
  }

  /** The injected source, else our own allocation-free generator. */
  private random(): number {
    return this.rng === undefined ? this.prng.next() : this.rng();
  }

  setEndpoints(endpoints: readonly Endpoint[]): void {
    const eps = this.eps;
    const n = endpoints.length;
    for (let i = 0; i < n; i++) eps[i] = endpoints[i]!;
    eps.length = n;
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const eps = this.eps;
    const n = eps.length;
    if (n === 0) return undefined;
    let i = randomIndex(this.random(), n);
    const tried = triedSet(ctx.tried);
    if (tried === undefined || !tried.has(eps[i]!)) return eps[i];
    for (let k = 0; k < REDRAWS; k++) {
      i = randomIndex(this.random(), n);
      if (!tried.has(eps[i]!)) return eps[i];
    }
    return eps[firstUntried(eps, n, i, tried)];
  }
}
