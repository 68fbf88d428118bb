import type { Logger } from 'pino';
import type { ActiveHealth } from '../cluster/endpoint.js';
import type { HealthCheckPolicy } from '../config/types.js';
import { probeFor, type Probe, type ProbeTarget } from './probe.js';

/** The verdict of one probe stream, shared by every subscriber of the target. */
export interface TargetHealth {
  health: ActiveHealth;
  /** Consecutive results of the current streak (one of the two is 0). */
  successes: number;
  failures: number;
  /** Why the last check failed; '' after a success. */
  lastError: string;
  /** When the last check finished (ms since epoch, from the scheduler's clock); 0 before the first. */
  lastCheckAt: number;
}

export type TargetListener = (state: Readonly<TargetHealth>) => void;

export interface HealthCheckSchedulerOptions {
  log?: Logger;
  now?: () => number;
  /** Uniform [0, 1): the stagger and the jitter. Default Math.random. */
  random?: () => number;
  /** Replaces the TCP/HTTP probes (tests). Default: `probeFor(policy)`. */
  probe?: Probe;
  /** Replaces the timers (tests drive them by hand). Default: unref'd global timers. */
  timers?: SchedulerTimers;
}

/** The two timer calls the scheduler makes; a fake records the delays and fires them at will. */
export interface SchedulerTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: SchedulerTimers = {
  setTimeout(fn, ms) {
    const h = setTimeout(fn, ms);
    h.unref();
    return h;
  },
  clearTimeout(h) {
    clearTimeout(h as NodeJS.Timeout);
  },
};

/** Everything that makes two checks the same check. Two subscribers with equal keys share one probe stream. */
export function policyKey(policy: HealthCheckPolicy): string {
  return [policy.type, policy.type === 'http' ? policy.path || '/' : '', policy.interval, policy.timeout, policy.unhealthyThreshold, policy.healthyThreshold, policy.jitter].join('|');
}

interface Target extends ProbeTarget {
  key: string;
  policy: HealthCheckPolicy;
  listeners: Set<TargetListener>;
  state: TargetHealth;
  timer: unknown;
  inflight: AbortController | undefined;
  stopped: boolean;
}

/**
 * Apply one probe result to a target's streaks. `unknown` becomes `healthy` on the first
 * success (a new pod should not wait healthyThreshold intervals for traffic it already gets,
 * since `unknown` is served anyway) but needs the full unhealthyThreshold to turn unhealthy.
 */
export function applyResult(state: TargetHealth, ok: boolean, error: string, policy: HealthCheckPolicy, now: number): void {
  state.lastCheckAt = now;
  if (ok) {
    state.successes++;
    state.failures = 0;
    state.lastError = '';
    if (state.health === 'unknown' || (state.health === 'unhealthy' && state.successes >= policy.healthyThreshold)) {
      state.health = 'healthy';
    }
  } else {
    state.failures++;
    state.successes = 0;
    state.lastError = error;
    if (state.health !== 'unhealthy' && state.failures >= policy.unhealthyThreshold) state.health = 'unhealthy';
  }
}

/**
 * Runs health checks once per (ip:port, policy) however many clusters subscribe: two
 * services that select the same pod with the same check policy do not probe it twice.
 * A target's probe stream starts with its first subscriber and stops with its last.
 *
 * Timing: the first check of a target fires at a random point within the first interval
 * (so a thousand endpoints discovered at once do not fire together); each next check is
 * scheduled `interval + random * jitter * interval` after the previous one finished, so a
 * slow check never overlaps the next one.
 */
export class HealthCheckScheduler {
  private readonly targets = new Map<string, Target>();
  private readonly log: Logger | undefined;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly probe: Probe | undefined;
  private readonly timers: SchedulerTimers;

  constructor(opts: HealthCheckSchedulerOptions = {}) {
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.probe = opts.probe;
    this.timers = opts.timers ?? realTimers;
  }

  /** Number of probe streams running (one per distinct ip:port + policy). */
  get size(): number {
    return this.targets.size;
  }

  /**
   * Receive the verdict for `ip:port` under `policy` after every check. A subscriber that
   * joins a target already checked gets its current verdict synchronously, before this
   * returns. Returns the unsubscribe function (idempotent).
   */
  subscribe(ip: string, port: number, policy: HealthCheckPolicy, listener: TargetListener): () => void {
    const key = `${ip}:${port}|${policyKey(policy)}`;
    let t = this.targets.get(key);
    if (!t) {
      t = {
        key,
        ip,
        port,
        policy,
        listeners: new Set(),
        state: { health: 'unknown', successes: 0, failures: 0, lastError: '', lastCheckAt: 0 },
        timer: undefined,
        inflight: undefined,
        stopped: false,
      };
      this.targets.set(key, t);
      this.schedule(t, this.random() * Math.max(1, policy.interval));
      this.log?.debug({ target: key }, 'health check target started');
    }
    const target = t;
    target.listeners.add(listener);
    if (target.state.lastCheckAt !== 0) listener(target.state);
    return () => {
      if (!target.listeners.delete(listener) || target.listeners.size > 0) return;
      this.drop(target);
    };
  }

  /** Stop every probe stream (agent shutdown). Subscribers are not notified. */
  stop(): void {
    for (const t of [...this.targets.values()]) this.drop(t);
  }

  private drop(t: Target): void {
    t.stopped = true;
    if (t.timer !== undefined) this.timers.clearTimeout(t.timer);
    t.timer = undefined;
    t.inflight?.abort();
    t.inflight = undefined;
    if (this.targets.get(t.key) === t) this.targets.delete(t.key);
    this.log?.debug({ target: t.key }, 'health check target stopped');
  }

  private schedule(t: Target, delayMs: number): void {
    t.timer = this.timers.setTimeout(() => this.run(t), Math.max(0, delayMs));
  }

  private run(t: Target): void {
    t.timer = undefined;
    if (t.stopped) return;
    const ac = new AbortController();
    t.inflight = ac;
    const probe = this.probe ?? probeFor(t.policy);
    // Through a then, so a probe that throws synchronously is a failed check, not a crash.
    Promise.resolve()
      .then(() => probe(t, t.policy, ac.signal))
      .catch((err: unknown) => ({ ok: false, error: err instanceof Error ? err.message : String(err) }))
      .then((res) => {
        if (t.stopped) return;
        t.inflight = undefined;
        applyResult(t.state, res.ok, res.error, t.policy, this.now());
        for (const l of [...t.listeners]) {
          try {
            l(t.state);
          } catch (err) {
            this.log?.error({ err, target: t.key }, 'health check subscriber threw');
          }
        }
        if (!t.stopped) this.schedule(t, Math.max(1, t.policy.interval) * (1 + this.random() * Math.max(0, t.policy.jitter)));
      });
  }
}

let shared: HealthCheckScheduler | undefined;

/**
 * The agent-wide scheduler that ActiveHealthCheckers use unless given their own. `opts`
 * (a logger, say) only count on the first call, which creates it.
 */
export function sharedHealthCheckScheduler(opts?: HealthCheckSchedulerOptions): HealthCheckScheduler {
  shared ??= new HealthCheckScheduler(opts);
  return shared;
}
