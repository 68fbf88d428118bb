import type { Logger } from 'pino';
import type { Endpoint } from '../cluster/endpoint.js';
import type { HealthCheckPolicy } from '../config/types.js';
import { sharedHealthCheckScheduler, type HealthCheckScheduler, type TargetHealth } from './scheduler.js';

export interface ActiveHealthCheckerOptions {
  policy: HealthCheckPolicy;
  /** `namespace/name:port` or however the cluster names itself; goes into log lines. */
  service: string;
  log?: Logger;
  /** Called after an endpoint's `health` changed (not on every check). */
  onChange: (ep: Endpoint) => void;
  /** Kept for symmetry with the other health classes; check timestamps come from the scheduler's clock. */
  now?: () => number;
  /** Where probes run; default the agent-wide shared scheduler (dedupes across clusters). */
  scheduler?: HealthCheckScheduler;
}

/**
 * Active health checks for the endpoints of one service port. The probing itself is done by
 * a {@link HealthCheckScheduler}, shared by every cluster of the agent, so an endpoint that
 * two services select with the same policy is probed once; this class maps the shared
 * verdicts onto its own Endpoint objects and reports the transitions.
 *
 * Per endpoint it writes `health`, `checkSuccesses`, `checkFailures` and `lastCheckError`.
 * An endpoint removed by `setEndpoints`, and all of them on `stop()`, go back to
 * `health: 'unknown'` (served) without an `onChange` call: the caller is changing the set
 * anyway, and a stopped checker must not leave endpoints stuck unhealthy.
 */
export class ActiveHealthChecker {
  readonly policy: HealthCheckPolicy;
  readonly service: string;
  private readonly log: Logger | undefined;
  private readonly onChange: (ep: Endpoint) => void;
  private readonly scheduler: HealthCheckScheduler;
  private readonly subs = new Map<Endpoint, () => void>();
  private stopped = false;

  constructor(opts: ActiveHealthCheckerOptions) {
    this.policy = opts.policy;
    this.service = opts.service;
    this.log = opts.log;
    this.onChange = opts.onChange;
    this.scheduler = opts.scheduler ?? sharedHealthCheckScheduler();
  }

  /** Start checking new endpoints, stop checking removed ones; kept ones keep their state. */
  setEndpoints(eps: readonly Endpoint[]): void {
    if (this.stopped) return;
    const next = new Set(eps);
    for (const [ep, unsubscribe] of this.subs) {
      if (next.has(ep)) continue;
      unsubscribe();
      this.subs.delete(ep);
      resetHealth(ep);
    }
    for (const ep of next) {
      if (this.subs.has(ep)) continue;
      // Registered before subscribing: a target already checked calls back synchronously.
      this.subs.set(ep, () => {});
      const unsubscribe = this.scheduler.subscribe(ep.info.ip, ep.info.port, this.policy, (s) => this.apply(ep, s));
      this.subs.set(ep, unsubscribe);
    }
  }

  /** Stop every check of this checker; endpoints return to `unknown`. */
  stop(): void {
    this.stopped = true;
    for (const [ep, unsubscribe] of this.subs) {
      unsubscribe();
      resetHealth(ep);
    }
    this.subs.clear();
  }

  private apply(ep: Endpoint, s: Readonly<TargetHealth>): void {
    if (!this.subs.has(ep)) return;
    const prev = ep.health;
    ep.health = s.health;
    ep.checkSuccesses = s.successes;
    ep.checkFailures = s.failures;
    ep.lastCheckError = s.lastError;
    if (prev === s.health) return;
    const reason = s.health === 'unhealthy' ? `${s.failures} consecutive failed checks: ${s.lastError}` : `${s.successes} consecutive successful checks`;
    const fields = { endpoint: ep.id, service: this.service, from: prev, to: s.health, check: this.policy.type, reason };
    if (s.health === 'unhealthy') this.log?.warn(fields, 'endpoint failed health checks');
    else this.log?.info(fields, 'endpoint passed health checks');
    this.onChange(ep);
  }
}

function resetHealth(ep: Endpoint): void {
  ep.health = 'unknown';
  ep.checkSuccesses = 0;
  ep.checkFailures = 0;
  ep.lastCheckError = '';
}
