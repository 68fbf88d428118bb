import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import { randomIndex, type BalancerOptions } from './options.js';
import { firstUntried, triedSet } from './tried.js';
import { Xoshiro128 } from './prng.js';

/**
 * Plain round robin, weights ignored. The rotation starts at a random endpoint (so agents
 * started together do not all hit the first one) and survives set changes: it resumes
 * after the endpoint picked last when that one is still there, so every endpoint keeps
 * its turn in the cycle.
 */
export class RoundRobinBalancer implements Balancer {
  readonly type = 'round-robin';
  private readonly eps: Endpoint[] = [];
  private readonly rng: (() => number) | undefined;
  private readonly prng = new Xoshiro128();
  /** Index of the next pick; -1 before the first non-empty set. */
  private next = -1;
  private last: Endpoint | undefined;

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
    if (n === 0) return;
    if (this.next < 0) {
      this.next = randomIndex(this.random(), n);
      return;
    }
    const at = this.last === undefined ? -1 : eps.indexOf(this.last);
    this.next = at >= 0 ? (at + 1) % n : this.next % n;
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const eps = this.eps;
    const n = eps.length;
    if (n === 0) return undefined;
    let i = this.next;
    const tried = triedSet(ctx.tried);
    if (tried !== undefined) i = firstUntried(eps, n, i, tried);
    this.next = i + 1 === n ? 0 : i + 1;
    const ep = eps[i]!;
    this.last = ep;
    return ep;
  }
}
