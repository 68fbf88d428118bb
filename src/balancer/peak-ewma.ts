import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import type { BalancerOptions } from './options.js';
import { triedSet } from './tried.js';
import { TwoChoices } from './two-choices.js';

/** Decay time constant of the latency estimate, ms (Linkerd's default). */
export const DEFAULT_DECAY_MS = 10_000;
/** Estimate for an endpoint with no sample yet, ms: optimistic, so newcomers get tried. */
export const DEFAULT_RTT_MS = 30;
/** Picks between clock reads (observe() also advances the clock). */
const CLOCK_EVERY = 16;

export interface PeakEwmaOptions extends BalancerOptions {
  /** Time constant tau of the decay, ms (default 10s). */
  decayMs?: number;
  /** Latency assumed for an endpoint never observed, ms (default 30). */
  defaultRttMs?: number;
}

/**
 * Peak-EWMA (Finagle, Linkerd, tower): power of two choices on
 * cost = latency estimate x (active + 1) / weight. Weight reads as relative capacity: a
 * weight-3 endpoint is as cheap as a weight-1 one with the same latency when it carries
 * three times the requests. Candidates are drawn uniformly (the weight is in the cost).
 * Like any latency-driven balancer, a lightly loaded service goes mostly to the cheapest
 * endpoint rather than in proportion to weight.
 *
 * The estimate lives on the Endpoint (`rttEwma`, `rttStamp`) and is fed by `observe`:
 * - peak-sensitive: a sample above the estimate replaces it, so a slowdown counts at once;
 * - otherwise it moves toward the sample with weight 1 - e^(-dt/tau), dt being the time
 *   since the previous sample: a time-based average, independent of request rate.
 * At pick time the estimate is decayed toward 0 by the time since its last sample (read,
 * not written back): an endpoint shunned for being slow looks cheaper as time passes,
 * gets a probe request, and either jumps back up (still slow) or earns traffic again.
 * An endpoint never observed costs `defaultRttMs`, so new endpoints are tried early.
 *
 * Reading the clock costs more than the rest of a pick on some hosts (Date.now is ~100ns
 * without a vDSO clock), and the decay only needs a resolution far below tau: the pick
 * uses the latest of the `now` given to observe() and a clock read every 16 picks.
 * observe()'s `now` must come from the same clock as `options.now` (ms since the epoch).
 */
export class PeakEwmaBalancer implements Balancer {
  readonly type = 'peak-ewma';
  private readonly choices: TwoChoices;
  private readonly now: () => number;
  private readonly tau: number;
  private readonly defaultRtt: number;
  private clock = 0;
  private picksSinceClock = CLOCK_EVERY;

  constructor(options: PeakEwmaOptions = {}) {
    // Uniform draws: the weight is already in the cost.
    this.choices = new TwoChoices(options.random, false);
    this.now = options.now ?? Date.now;
    this.tau = options.decayMs ?? DEFAULT_DECAY_MS;
    this.defaultRtt = options.defaultRttMs ?? DEFAULT_RTT_MS;
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
    if (++this.picksSinceClock >= CLOCK_EVERY) {
      this.picksSinceClock = 0;
      const now = this.now();
      if (now > this.clock) this.clock = now;
    }
    const now = this.clock;
    const ca = this.estimate(ea, now) * (ea.active + 1);
    const cb = this.estimate(eb, now) * (eb.active + 1);
    if (set.uniform) return cb < ca ? eb : ea;
    const w = set.weights;
    return cb * w[a]! < ca * w[b]! ? eb : ea;
  }

  /** The latency estimate of `ep` at `now`, ms: decayed toward 0 since its last sample. */
  estimate(ep: Endpoint, now: number): number {
    if (ep.rttStamp === 0) return this.defaultRtt;
    const dt = now - ep.rttStamp;
    return dt > 0 ? ep.rttEwma * Math.exp(-dt / this.tau) : ep.rttEwma;
  }

  observe(ep: Endpoint, latencyMs: number, now: number): void {
    if (!(latencyMs >= 0) || latencyMs === Infinity) return;
    if (ep.rttStamp === 0 || latencyMs > ep.rttEwma) {
      ep.rttEwma = latencyMs;
    } else {
      const dt = now - ep.rttStamp;
      const keep = dt > 0 ? Math.exp(-dt / this.tau) : 1;
      ep.rttEwma = ep.rttEwma * keep + latencyMs * (1 - keep);
    }
    ep.rttStamp = now;
    if (now > this.clock) this.clock = now;
  }
}
