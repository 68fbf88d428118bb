import type { Logger } from 'pino';
import type { CircuitBreakerPolicy } from '../config/types.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

/** `ok`: send normally. `probe`: send as a half-open probe (report with wasProbe=true). `open`: refuse (503 circuit_open). */
export type BreakerAdmission = 'ok' | 'probe' | 'open';

export interface CircuitBreakerOptions {
  policy: CircuitBreakerPolicy;
  service: string;
  log?: Logger;
  /** Called on every transition, including the lazy open -> half-open one. */
  onStateChange?: (state: BreakerState, prev: BreakerState) => void;
  now?: () => number;
  /**
   * A worker's breaker (src/workers/): verdicts go to the control thread's breaker, which
   * sees every worker's and decides; this one follows its state (adopt()) and only counts
   * its own half-open probes.
   */
  forward?: (ok: boolean, wasProbe: boolean) => void;
}

/** The part of a breaker's state a worker follows. */
export interface BreakerFollow {
  state: BreakerState;
  openUntil: number;
  trips: number;
}

/** What config_dump shows. */
export interface BreakerSnapshot {
  state: BreakerState;
  consecutiveFailures: number;
  /** Consecutive trips without a successful probe (the open-duration exponent). */
  trips: number;
  /** When the current open period ends (ms since epoch); 0 unless open. */
  openUntil: number;
  probesInFlight: number;
}

/**
 * Failure accrual for one service (linkerd2-proxy's consecutive-failures breaker).
 *
 * - closed: every request passes; `policy.consecutiveFailures` failures in a row (with no
 *   success between) trip it open. 0 never trips.
 * - open: every request is refused for the open duration: `openDuration * 2^(trips-1)`,
 *   capped at `maxOpenDuration`, where trips counts consecutive trips without a success.
 * - half-open: once the open duration elapsed, up to `halfOpenRequests` (at least 1)
 *   concurrent probes pass; everything else is still refused. A successful probe closes the breaker and
 *   resets the backoff; a failed probe re-opens it for twice as long.
 *
 * The open -> half-open step needs no timer: `state` and `acquire()` compute it from the
 * clock (and fire onStateChange when they notice it).
 *
 * Every `acquire()` that returned `ok` or `probe` must be answered by exactly one of
 * `onSuccess`, `onFailure` or `release` with the matching wasProbe, or a probe slot leaks.
 * While closed, every result counts towards the streak (a straggling probe's too). While
 * open or half-open, results of requests admitted before the trip change nothing (the
 * breaker already decided); only probes move it out of half-open.
 */
export class CircuitBreaker {
  readonly policy: CircuitBreakerPolicy;
  readonly service: string;
  private readonly log: Logger | undefined;
  private readonly onStateChange: ((state: BreakerState, prev: BreakerState) => void) | undefined;
  private readonly now: () => number;
  private current: BreakerState = 'closed';
  private failures = 0;
  private tripCount = 0;
  private openUntilMs = 0;
  private probes = 0;
  private readonly forward: ((ok: boolean, wasProbe: boolean) => void) | undefined;

  constructor(opts: CircuitBreakerOptions) {
    this.forward = opts.forward;
    this.policy = opts.policy;
    this.service = opts.service;
    this.log = opts.log;
    this.onStateChange = opts.onStateChange;
    this.now = opts.now ?? Date.now;
  }

  /** The state now (an elapsed open period reads as half-open). */
  get state(): BreakerState {
    this.refresh();
    return this.current;
  }

  get consecutiveFailures(): number {
    return this.failures;
  }

  get trips(): number {
    return this.tripCount;
  }

  /** End of the current open period, ms since epoch; 0 when not open. */
  get openUntil(): number {
    this.refresh();
    return this.current === 'open' ? this.openUntilMs : 0;
  }

  get probesInFlight(): number {
    return this.probes;
  }

  snapshot(): BreakerSnapshot {
    const state = this.state;
    return {
      state,
      consecutiveFailures: this.failures,
      trips: this.tripCount,
      openUntil: state === 'open' ? this.openUntilMs : 0,
      probesInFlight: this.probes,
    };
  }

  /** May a request go out now? */
  acquire(): BreakerAdmission {
    this.refresh();
    if (this.current === 'closed') return 'ok';
    if (this.current === 'open') return 'open';
    if (this.probes >= Math.max(1, this.policy.halfOpenRequests)) return 'open';
    this.probes++;
    return 'probe';
  }

  onSuccess(wasProbe: boolean): void {
    if (wasProbe) this.releaseProbe();
    if (this.forward) return this.forward(true, wasProbe);
    this.refresh();
    if (this.current === 'closed') {
      this.failures = 0;
    } else if (wasProbe && this.current === 'half-open') {
      this.failures = 0;
      this.tripCount = 0;
      this.openUntilMs = 0;
      this.transition('closed', 'probe succeeded');
    }
  }

  onFailure(wasProbe: boolean): void {
    if (wasProbe) this.releaseProbe();
    if (this.forward) return this.forward(false, wasProbe);
    this.refresh();
    if (this.current === 'closed') {
      this.failures++;
      const limit = this.policy.consecutiveFailures;
      if (limit > 0 && this.failures >= limit) this.trip(`${this.failures} consecutive failures`);
    } else if (wasProbe && this.current === 'half-open') {
      this.trip('probe failed');
    }
  }

  /** What a worker needs to follow this breaker. */
  follow(): BreakerFollow {
    const state = this.state;
    return { state, openUntil: state === 'open' ? this.openUntilMs : 0, trips: this.tripCount };
  }

  /** A worker's breaker takes the control thread's decision (an elapsed open period still reads as half-open here). */
  adopt(f: BreakerFollow): void {
    this.tripCount = f.trips;
    this.openUntilMs = f.openUntil;
    this.failures = 0;
    this.transition(f.state, 'decided by the control thread');
  }

  /** The request ended without a verdict (client went away, cancelled before sending). */
  release(wasProbe: boolean): void {
    if (wasProbe) this.releaseProbe();
  }

  private releaseProbe(): void {
    if (this.probes > 0) this.probes--;
  }

  private openDuration(): number {
    const base = Math.max(0, this.policy.openDuration);
    const cap = this.policy.maxOpenDuration > 0 ? this.policy.maxOpenDuration : Infinity;
    // 2^30 already dwarfs any sane cap; bounding the exponent keeps the number finite.
    return Math.min(base * 2 ** Math.min(this.tripCount - 1, 30), cap);
  }

  private trip(why: string): void {
    this.tripCount++;
    const duration = this.openDuration();
    this.openUntilMs = this.now() + duration;
    this.failures = 0;
    this.transition('open', why, duration);
  }

  private refresh(): void {
    if (this.current === 'open' && this.now() >= this.openUntilMs) this.transition('half-open', 'open duration elapsed');
  }

  private transition(to: BreakerState, reason: string, openMs?: number): void {
    const prev = this.current;
    if (prev === to) return;
    this.current = to;
    const fields = { service: this.service, from: prev, to, reason, trips: this.tripCount, openMs };
    if (to === 'open') this.log?.warn(fields, 'circuit breaker opened');
    else this.log?.info(fields, `circuit breaker ${to}`);
    this.onStateChange?.(to, prev);
  }
}
