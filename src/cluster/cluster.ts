import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Protocol, TrafficPolicy } from '../config/types.js';
import { Endpoint, type ActiveHealth, type EndpointInfo } from './endpoint.js';
import type { Balancer, PickContext } from '../balancer/types.js';
import { createBalancer } from '../balancer/index.js';
import { ActiveHealthChecker } from '../health/active-checker.js';
import { OutlierDetector, type OutlierResult } from '../health/outlier.js';
import { selectEligible } from '../health/panic.js';
import { CircuitBreaker, type BreakerFollow } from '../resilience/circuit-breaker.js';
import { ConnectionLimits } from '../resilience/limits.js';
import { RetryBudget } from '../resilience/retry.js';

export interface ClusterOptions {
  key: string;
  /** `ns/name` of the service (the `destination_service` label), or `pod:ip:port`. */
  serviceName: string;
  protocol: Protocol;
  policy: TrafficPolicy;
  log: Logger;
  metrics: Metrics;
  now?: () => number;
  /**
   * A worker thread's cluster (src/workers/): no health checks and no outlier detection of
   * its own. Outcomes and breaker verdicts go to the control thread, whose cluster sees every
   * worker's and decides; this one follows (adoptHealth). Balancer state stays per worker.
   */
  follower?: ClusterFollower;
  /** The control thread's cluster: called after health, ejection or breaker state changed, for the workers. */
  onHealthChange?: (c: Cluster) => void;
}

export interface ClusterFollower {
  outcome(cluster: string, endpoint: string, result: OutlierResult, latencyMs: number): void;
  verdict(cluster: string, ok: boolean, wasProbe: boolean): void;
}

/** What workers follow of a cluster: each endpoint's active health and ejection, and the breaker. */
export interface ClusterHealth {
  key: string;
  /** [endpoint id, active health, ejected until (ms since epoch)] */
  endpoints: Array<[string, ActiveHealth, number]>;
  breaker?: BreakerFollow;
}

const DEFAULT_PANIC_THRESHOLD = 50;

/**
 * One service port as the data plane serves it: its endpoints (with their live statistics),
 * the balancer over the eligible ones, active health checks, outlier detection, the circuit
 * breaker and connection-pool limits. linkerd2-proxy's "concrete" stage: the proxy asks it
 * for an endpoint and reports each outcome back.
 */
export class Cluster {
  readonly key: string;
  readonly serviceName: string;
  readonly protocol: Protocol;
  policy: TrafficPolicy;
  readonly endpoints = new Map<string, Endpoint>();
  private balancer: Balancer;
  private checker?: ActiveHealthChecker;
  private outlier?: OutlierDetector;
  breaker?: CircuitBreaker;
  limits: ConnectionLimits;
  retryBudget?: RetryBudget;
  private eligible: Endpoint[] = [];
  panic = false;
  private readonly log: Logger;
  private readonly metrics: Metrics;
  private readonly now: () => number;
  private policyJson: string;
  /** Earliest ejection expiry among eligible-set exclusions: refresh then. */
  private nextExpiry = Infinity;
  private readonly follower: ClusterFollower | undefined;
  private readonly onHealthChange: ((c: Cluster) => void) | undefined;

  constructor(opts: ClusterOptions) {
    this.follower = opts.follower;
    this.onHealthChange = opts.onHealthChange;
    this.key = opts.key;
    this.serviceName = opts.serviceName;
    this.protocol = opts.protocol;
    this.policy = opts.policy;
    this.log = opts.log.child({ cluster: opts.key });
    this.metrics = opts.metrics;
    this.now = opts.now ?? Date.now;
    this.policyJson = '';
    this.balancer = createBalancer(opts.policy.loadBalancer);
    this.limits = new ConnectionLimits(opts.policy.connectionPool);
    this.applyPolicy(opts.policy);
  }

  /** Apply a (possibly changed) traffic policy; components whose config did not change keep their state. */
  private applyPolicy(policy: TrafficPolicy): void {
    const json = JSON.stringify(policy);
    if (json === this.policyJson) return;
    const prev = this.policyJson ? (JSON.parse(this.policyJson) as TrafficPolicy) : undefined;
    this.policyJson = json;
    this.policy = policy;
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

    if (!prev || !same(prev.loadBalancer, policy.loadBalancer)) this.balancer = createBalancer(policy.loadBalancer);
    if (!prev || !same(prev.connectionPool, policy.connectionPool)) this.limits = new ConnectionLimits(policy.connectionPool);

    const follower = this.follower;
    const changed = (): void => {
      this.refresh();
      this.onHealthChange?.(this);
    };
    if (!prev || !same(prev.healthCheck, policy.healthCheck)) {
      this.checker?.stop();
      this.checker = policy.healthCheck && !follower ? new ActiveHealthChecker({ policy: policy.healthCheck, service: this.serviceName, log: this.log, onChange: changed, now: this.now }) : undefined;
      if (!policy.healthCheck) for (const ep of this.endpoints.values()) ep.health = 'unknown';
    }
    if (!prev || !same(prev.outlierDetection, policy.outlierDetection)) {
      this.outlier?.stop();
      this.outlier =
        policy.outlierDetection && !follower
          ? new OutlierDetector({
              policy: policy.outlierDetection,
              service: this.serviceName,
              log: this.log,
              now: this.now,
              onChange: changed,
              onEject: (_ep, reason) => this.metrics.ejections.inc({ destination_service: this.serviceName, reason }),
            })
          : undefined;
      if (!policy.outlierDetection) for (const ep of this.endpoints.values()) ep.ejectedUntil = 0;
    }
    if (!prev || !same(prev.circuitBreaker, policy.circuitBreaker)) {
      this.breaker = policy.circuitBreaker
        ? new CircuitBreaker({
            policy: policy.circuitBreaker,
            service: this.serviceName,
            // The control thread logs its decisions; a worker only follows them.
            log: follower ? undefined : this.log,
            now: this.now,
            forward: follower ? (ok, probe) => follower.verdict(this.key, ok, probe) : undefined,
            onStateChange: (state) => {
              this.metrics.circuitOpen.set({ destination_service: this.serviceName }, state === 'closed' ? 0 : 1);
              if (!follower) this.onHealthChange?.(this);
            },
          })
        : undefined;
      this.metrics.circuitOpen.set({ destination_service: this.serviceName }, 0);
    }
    if (!prev || !same(prev.retries, policy.retries)) {
      this.retryBudget = policy.retries ? new RetryBudget({ ...policy.retries.budget, now: this.now }) : undefined;
    }
  }

  /** Discovery changed: new endpoint set and/or policy. Endpoints that stay keep their statistics. */
  update(infos: EndpointInfo[], policy: TrafficPolicy): void {
    this.applyPolicy(policy);
    const seen = new Set<string>();
    for (const info of infos) {
      const id = `${info.ip}:${info.port}`;
      seen.add(id);
      const ep = this.endpoints.get(id);
      if (ep) ep.info = info;
      else this.endpoints.set(id, new Endpoint(info));
    }
    for (const id of this.endpoints.keys()) if (!seen.has(id)) this.endpoints.delete(id);
    const all = [...this.endpoints.values()];
    // A meshed pod on another node is not probed from here: the probe would cross the link in
    // plaintext, around the tunnel. Passive outlier detection covers it; its own node's agent
    // serves it only while it is alive.
    this.checker?.setEndpoints(all.filter((ep) => ep.info.local || !ep.info.meshed));
    this.outlier?.setEndpoints(all);
    this.refresh();
  }

  /** Recompute the eligible set after a health, readiness or ejection change. */
  refresh(): void {
    const now = this.now();
    const all = [...this.endpoints.values()];
    const threshold = this.policy.outlierDetection?.panicThreshold ?? DEFAULT_PANIC_THRESHOLD;
    let { endpoints, panic } = selectEligible(all, now, threshold);
    // Panic spreads load when a few healthy endpoints would be overloaded; with none healthy
    // there is no one to protect, and the service has no healthy upstream (or its fallback serves).
    if (panic && !all.some((e) => e.eligible(now))) {
      endpoints = [];
      panic = false;
    }
    if (panic !== this.panic) {
      this.log.warn(
        { service: this.serviceName, healthy: all.filter((e) => e.eligible(now)).length, total: all.length },
        panic ? 'panic mode: too few healthy endpoints, spreading over all ready ones' : 'left panic mode',
      );
    }
    this.panic = panic;
    this.eligible = endpoints;
    this.balancer.setEndpoints(endpoints);
    let next = Infinity;
    for (const ep of all) if (ep.ejectedUntil > now && ep.ejectedUntil < next) next = ep.ejectedUntil;
    this.nextExpiry = next;
    this.metrics.healthyEndpoints.set({ destination_service: this.serviceName }, panic ? all.filter((e) => e.eligible(now)).length : endpoints.length);
  }

  /** True when no endpoint may take traffic. */
  get empty(): boolean {
    if (this.now() >= this.nextExpiry) this.refresh();
    return this.eligible.length === 0;
  }

  pick(ctx: PickContext): Endpoint | undefined {
    if (this.now() >= this.nextExpiry) this.refresh();
    return this.balancer.pick(ctx);
  }

  /** A request or connection to `ep` finished. */
  report(ep: Endpoint, result: OutlierResult, latencyMs: number): void {
    ep.requests++;
    if (result !== 'success') ep.failures++;
    if (result === 'success' || result === 'http5xx' || result === 'gateway') this.balancer.observe?.(ep, latencyMs, this.now());
    if (this.follower) this.follower.outcome(this.key, ep.id, result, latencyMs);
    else this.outlier?.record(ep, result);
  }

  /** An outcome a worker saw: the outlier detector counts it (the worker's balancer already did). */
  recordRemote(endpointId: string, result: OutlierResult): void {
    const ep = this.endpoints.get(endpointId);
    if (!ep) return;
    ep.requests++;
    if (result !== 'success') ep.failures++;
    this.outlier?.record(ep, result);
  }

  /** For the workers: each endpoint's health and ejection, and the breaker's state. */
  health(changedOnly = false): ClusterHealth {
    const endpoints: ClusterHealth['endpoints'] = [];
    for (const ep of this.endpoints.values()) {
      // A new worker's endpoints start unchecked and not ejected: only the others need saying
      // (at 10,000 endpoints the whole list is ~1 MB that a worker would keep).
      if (changedOnly && ep.health === 'unknown' && ep.ejectedUntil === 0) continue;
      endpoints.push([ep.id, ep.health, ep.ejectedUntil]);
    }
    return { key: this.key, endpoints, breaker: this.breaker?.follow() };
  }

  /** A worker follows what the control thread decided. */
  adoptHealth(h: ClusterHealth): void {
    for (const [id, health, ejectedUntil] of h.endpoints) {
      const ep = this.endpoints.get(id);
      if (!ep) continue;
      ep.health = health;
      ep.ejectedUntil = ejectedUntil;
    }
    if (h.breaker && this.breaker) this.breaker.adopt(h.breaker);
    this.refresh();
  }

  get balancerType(): string {
    return this.balancer.type;
  }

  stop(): void {
    this.checker?.stop();
    this.outlier?.stop();
  }

  /** For /config_dump. */
  describe(): Record<string, unknown> {
    const now = this.now();
    return {
      key: this.key,
      service: this.serviceName,
      protocol: this.protocol,
      loadBalancer: this.balancer.type,
      panic: this.panic,
      circuitBreaker: this.breaker ? { state: this.breaker.state } : { state: 'disabled' },
      endpoints: [...this.endpoints.values()].map((ep) => ({
        address: ep.id,
        workload: `${ep.info.namespace}/${ep.info.workload}`,
        node: ep.info.node,
        weight: ep.info.weight,
        ready: ep.info.ready,
        health: ep.health,
        lastCheckError: ep.lastCheckError || undefined,
        ejected: ep.ejectedUntil > now,
        ejectedUntil: ep.ejectedUntil > now ? new Date(ep.ejectedUntil).toISOString() : undefined,
        ejectionCount: ep.ejectionCount,
        ejectionReason: ep.ejectionReason || undefined,
        eligible: ep.eligible(now),
        active: ep.active,
        requests: ep.requests,
        failures: ep.failures,
        rttEwmaMs: ep.rttEwma ? Math.round(ep.rttEwma * 100) / 100 : undefined,
      })),
    };
  }
}
