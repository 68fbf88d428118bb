import type { Logger } from 'pino';
import type { Endpoint } from '../cluster/endpoint.js';
import type { OutlierDetectionPolicy } from '../config/types.js';

/**
 * What one request (or connection) to an endpoint came to, as outlier detection sees it.
 * `gateway` is a 502/503/504 answered by the endpoint; `http5xx` any other 5xx; the last
 * three are failures the proxy saw itself (Envoy's local-origin errors).
 */
export type OutlierResult = 'success' | 'http5xx' | 'gateway' | 'connect-failure' | 'reset' | 'timeout';

export type EjectionReason = 'consecutive-5xx' | 'consecutive-gateway-errors' | 'success-rate';

/** Map an upstream status to a result: 502/503/504 `gateway`, other 5xx `http5xx`, anything else `success`. */
export function outlierResultForStatus(status: number): OutlierResult {
  if (status === 502 || status === 503 || status === 504) return 'gateway';
  if (status >= 500 && status <= 599) return 'http5xx';
  return 'success';
}

export interface OutlierDetectorOptions {
  policy: OutlierDetectionPolicy;
  service: string;
  log?: Logger;
  /** Called after an endpoint was ejected or returned to service. */
  onChange: (ep: Endpoint) => void;
  /** Called once per ejection (feeds `weft_upstream_ejections_total`). */
  onEject?: (ep: Endpoint, reason: EjectionReason) => void;
  now?: () => number;
  /** true: run no interval timer; the caller drives `tick()` (tests). Default false. */
  manual?: boolean;
}

/** Per-endpoint state that is nobody else's business. */
interface Monitor {
  consecutive5xx: number;
  consecutiveGateway: number;
  /** Requests and successes since the last interval tick (success-rate ejection). */
  intervalTotal: number;
  intervalSuccess: number;
  /** Ejections since the endpoint joined (for logs; ep.ejectionCount is the decaying multiplier). */
  ejectionsTotal: number;
}

/**
 * Passive health checking (Envoy outlier detection) for the endpoints of one service port.
 *
 * Consecutive errors, counted inline by `record()`, Envoy semantics:
 * - `consecutive5xx` counts every failure: any 5xx, and connect failures, resets and
 *   timeouts (Envoy maps those to 503/504 when local-origin errors are not split).
 * - `consecutiveGatewayErrors` counts 502/503/504 and connect failures, resets, timeouts;
 *   a non-gateway 5xx (500, 501, ...) breaks that streak but not the 5xx one.
 * - a success resets both. A threshold of 0 disables that detector.
 * - when a streak reaches its threshold the endpoint is ejected (if the ejection budget
 *   allows) and that streak restarts, ejected or not, so a blocked ejection is retried only
 *   after a fresh full streak.
 *
 * Ejection time is `baseEjectionTime * ep.ejectionCount`, capped at `maxEjectionTime`.
 * `ep.ejectionCount` is Envoy's backoff multiplier, not a lifetime total: it grows by one per
 * ejection (stopping once the cap is reached, so recovery is not slowed by a huge count) and
 * drops by one on every interval tick the endpoint spends in service. An endpoint that keeps
 * failing right after re-admission is ejected for longer each time; one that stays good for
 * a few intervals is forgiven.
 *
 * Re-admission: an endpoint is routable again as soon as `now >= ep.ejectedUntil`
 * (Endpoint.eligible); the interval tick (or the next `record()` for it) does the
 * bookkeeping: ejectedUntil back to 0, both streaks reset, onChange, a log line.
 *
 * maxEjectionPercent: at most `max(1, floor(n * pct / 100))` of the n endpoints are ejected at
 * once, and none when pct is 0. Plain Envoy allows `floor(n * pct / 100)`, which with Istio's
 * default of 10% never ejects anything in a service of fewer than 10 pods, a classic
 * surprise; the floor of one is Envoy's `always_eject_one_host`. Ejecting even the only
 * endpoint is safe: with panic routing (selectEligible) traffic still spreads over all ready
 * endpoints when too few are healthy, and with a panic threshold of 0 the service reports
 * no_healthy_upstream / uses its fallback, which is what that configuration asks for.
 *
 * Success-rate ejection, on each interval tick: among endpoints in service with at least
 * `successRateRequestVolume` requests in the interval, if at least `successRateMinimumHosts`
 * qualify, those whose success rate is below `mean - successRateStdevFactor * stdev`
 * (population stdev; the factor is a plain number, e.g. 1.9, not Envoy's x1000 integer)
 * are ejected, worst first. `successRateMinimumHosts: 0` disables it.
 *
 * A flapping endpoint that alternates success and failure never builds a streak of 2, so the
 * consecutive detectors leave it alone; only success-rate ejection (when its peers do
 * clearly better and traffic is high enough) takes it out. Failures that arrive while an
 * endpoint is ejected (responses still in flight) are ignored.
 *
 * The detector does not touch `ep.requests` / `ep.failures`: those totals belong to the
 * cluster; it keeps its own per-interval counters.
 */
export class OutlierDetector {
  readonly policy: OutlierDetectionPolicy;
  readonly service: string;
  private readonly log: Logger | undefined;
  private readonly onChange: (ep: Endpoint) => void;
  private readonly onEject: ((ep: Endpoint, reason: EjectionReason) => void) | undefined;
  private readonly now: () => number;
  private readonly monitors = new Map<Endpoint, Monitor>();
  private timer: NodeJS.Timeout | undefined;

  constructor(opts: OutlierDetectorOptions) {
    this.policy = opts.policy;
    this.service = opts.service;
    this.log = opts.log;
    this.onChange = opts.onChange;
    this.onEject = opts.onEject;
    this.now = opts.now ?? Date.now;
    if (!opts.manual) {
      this.timer = setInterval(() => this.tick(), Math.max(1, opts.policy.interval));
      this.timer.unref();
    }
  }

  /** Track new endpoints, forget removed ones; kept ones keep their streaks and ejections. */
  setEndpoints(eps: readonly Endpoint[]): void {
    const next = new Set(eps);
    for (const ep of this.monitors.keys()) if (!next.has(ep)) this.monitors.delete(ep);
    for (const ep of next) {
      if (!this.monitors.has(ep)) {
        this.monitors.set(ep, { consecutive5xx: 0, consecutiveGateway: 0, intervalTotal: 0, intervalSuccess: 0, ejectionsTotal: 0 });
      }
    }
  }

  /** Stop the interval timer. Ejections in force stay on the endpoints and expire by themselves. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Number of tracked endpoints currently ejected. */
  ejectedCount(now = this.now()): number {
    let n = 0;
    for (const ep of this.monitors.keys()) if (ep.ejectedUntil > now) n++;
    return n;
  }

  /** How many endpoints may be ejected at once (see the class comment). */
  maxEjections(): number {
    const pct = this.policy.maxEjectionPercent;
    if (!(pct > 0)) return 0;
    return Math.max(1, Math.floor((this.monitors.size * Math.min(pct, 100)) / 100));
  }

  /** Report the outcome of one request/connection to `ep`. Unknown endpoints are ignored. */
  record(ep: Endpoint, result: OutlierResult): void {
    const m = this.monitors.get(ep);
    if (!m) return;
    const now = this.now();
    if (ep.ejectedUntil !== 0) {
      if (ep.ejectedUntil > now) return;
      this.uneject(ep, m);
    }
    m.intervalTotal++;
    if (result === 'success') {
      m.intervalSuccess++;
      m.consecutive5xx = 0;
      m.consecutiveGateway = 0;
      return;
    }
    m.consecutive5xx++;
    if (result === 'http5xx') m.consecutiveGateway = 0;
    else m.consecutiveGateway++;

    const p = this.policy;
    if (p.consecutiveGatewayErrors > 0 && m.consecutiveGateway >= p.consecutiveGatewayErrors) {
      m.consecutiveGateway = 0;
      if (this.eject(ep, m, 'consecutive-gateway-errors', now)) return;
    }
    if (p.consecutive5xx > 0 && m.consecutive5xx >= p.consecutive5xx) {
      m.consecutive5xx = 0;
      this.eject(ep, m, 'consecutive-5xx', now);
    }
  }

  /**
   * The interval sweep: return expired ejections to service, decay the multipliers of
   * endpoints in service, then run success-rate ejection over the interval's counters and
   * start new ones. Runs on a timer every `policy.interval` unless `manual`.
   */
  tick(now = this.now()): void {
    for (const [ep, m] of this.monitors) {
      if (ep.ejectedUntil !== 0 && ep.ejectedUntil <= now) this.uneject(ep, m);
      else if (ep.ejectedUntil === 0 && ep.ejectionCount > 0) ep.ejectionCount--;
    }
    this.successRateSweep(now);
    for (const m of this.monitors.values()) {
      m.intervalTotal = 0;
      m.intervalSuccess = 0;
    }
  }

  private successRateSweep(now: number): void {
    const p = this.policy;
    if (!(p.successRateMinimumHosts > 0)) return;
    const volume = Math.max(1, p.successRateRequestVolume);
    const rates: Array<{ ep: Endpoint; m: Monitor; rate: number }> = [];
    for (const [ep, m] of this.monitors) {
      if (ep.ejectedUntil > now || m.intervalTotal < volume) continue;
      rates.push({ ep, m, rate: (100 * m.intervalSuccess) / m.intervalTotal });
    }
    if (rates.length < p.successRateMinimumHosts) return;
    let sum = 0;
    for (const r of rates) sum += r.rate;
    const mean = sum / rates.length;
    let sq = 0;
    for (const r of rates) sq += (r.rate - mean) ** 2;
    const stdev = Math.sqrt(sq / rates.length);
    const threshold = mean - p.successRateStdevFactor * stdev;
    rates.sort((a, b) => a.rate - b.rate);
    for (const r of rates) {
      if (r.rate >= threshold) break;
      this.eject(r.ep, r.m, 'success-rate', now, `success rate ${r.rate.toFixed(1)}% < threshold ${threshold.toFixed(1)}% (mean ${mean.toFixed(1)}%)`);
    }
  }

  private eject(ep: Endpoint, m: Monitor, reason: EjectionReason, now: number, detail?: string): boolean {
    if (ep.ejectedUntil > now) return false;
    const p = this.policy;
    const ejected = this.ejectedCount(now);
    const max = this.maxEjections();
    if (ejected >= max) {
      this.log?.debug({ endpoint: ep.id, service: this.service, reason, ejected, maxEjections: max }, 'outlier ejection skipped: maxEjectionPercent reached');
      return false;
    }
    const base = Math.max(0, p.baseEjectionTime);
    const cap = p.maxEjectionTime > 0 ? p.maxEjectionTime : Infinity;
    // Stop growing once base*count covers the cap, as Envoy does, so decay works in a few intervals.
    const maxMultiplier = base > 0 && cap !== Infinity ? Math.max(1, Math.ceil(cap / base)) : Infinity;
    if (ep.ejectionCount < maxMultiplier) ep.ejectionCount++;
    const duration = Math.min(base * ep.ejectionCount, cap);
    ep.ejectedUntil = now + duration;
    ep.ejectionReason = reason;
    m.ejectionsTotal++;
    m.consecutive5xx = 0;
    m.consecutiveGateway = 0;
    this.log?.warn(
      {
        endpoint: ep.id,
        service: this.service,
        reason,
        detail,
        ejectionMs: duration,
        multiplier: ep.ejectionCount,
        ejections: m.ejectionsTotal,
      },
      'endpoint ejected',
    );
    this.onEject?.(ep, reason);
    this.onChange(ep);
    return true;
  }

  private uneject(ep: Endpoint, m: Monitor): void {
    const reason = ep.ejectionReason;
    ep.ejectedUntil = 0;
    m.consecutive5xx = 0;
    m.consecutiveGateway = 0;
    m.intervalTotal = 0;
    m.intervalSuccess = 0;
    this.log?.info({ endpoint: ep.id, service: this.service, reason: `ejection for ${reason} expired`, multiplier: ep.ejectionCount }, 'endpoint returned to service');
    this.onChange(ep);
  }
}
