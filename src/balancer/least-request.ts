import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import type { BalancerOptions } from './options.js';
import { triedSet } from './tried.js';
import { TwoChoices } from './two-choices.js';

/**
 * Least request by power of two choices (Envoy's LEAST_REQUEST, choice count 2): draw two
 * distinct endpoints, take the one with fewer `active` (in-flight requests; open
 * connections on a TCP service, which makes this least-connections). O(1) per pick.
 *
 * Weights: candidates are drawn with probability proportional to weight and compared on
 * active/weight, so an idle service spreads in proportion to weight and a loaded one
 * evens out load per unit of weight. Ties go to the first draw.
 */
export class LeastRequestBalancer implements Balancer {
  readonly type = 'least-request';
  private readonly choices: TwoChoices;

  constructor(options: BalancerOptions = {}) {
    this.choices = new TwoChoices(options.random);
  }

  setEndpoints(endpoints: readonly Endpoint[]): void {
    this.choices.setEndpoints(endpoints);
  }

  pick(ctx: PickContext): Endpoint | undefined {
    const set = this.choices.set;
    const n = set.size;
    if (n === 0) return undefined;
    const eps = set.eps;
    if (n === 1) return eps[0];
    const tried = triedSet(ctx.tried);
    const a = this.choices.first(tried);
    const b = this.choices.second(a, tried);
    const ea = eps[a]!;
    if (b === a) return ea;
    const eb = eps[b]!;
    if (set.uniform) return eb.active < ea.active ? eb : ea;
    // eb.active / wb < ea.active / wa, without dividing.
    const w = set.weights;
    return eb.active * w[a]! < ea.active * w[b]! ? eb : ea;
  }
}
