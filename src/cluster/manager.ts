import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Service, TrafficPolicy } from '../config/types.js';
import { serviceKey, type StateStore, type Target } from '../state/store.js';
import { Cluster, type ClusterOptions } from './cluster.js';
import type { PortRoutes } from '../proxy/l7/routes/table.js';

/** The policy for connections dialed straight at a pod: one endpoint, no balancing to speak of. */
const POD_POLICY: TrafficPolicy = {
  loadBalancer: { type: 'round-robin' },
  timeout: 0,
  connectionPool: { maxConnections: 1 << 30, maxPendingRequests: 1 << 30, maxRequests: 1 << 30, connectTimeout: 5000, idleTimeout: 3_600_000 },
};

/**
 * Keeps one Cluster per service port (and per directly-dialed pod port) in step with the
 * state store. A cluster survives config changes that keep its key, so endpoint statistics,
 * health and breaker state carry over.
 */
export class ClusterManager {
  private readonly clusters = new Map<string, Cluster>();
  private readonly log: Logger;

  constructor(
    private readonly state: StateStore,
    private readonly metrics: Metrics,
    log: Logger,
    private readonly now: () => number = Date.now,
    /** Worker threads' clusters follow the control thread's (src/workers/); the control thread's report changes. */
    private readonly roles: Pick<ClusterOptions, 'follower' | 'onHealthChange'> = {},
  ) {
    this.log = log.child({ component: 'clusters' });
  }

  /** The routes attached to a service port (`ns/name:port`), if any (the route stage reads them). */
  routesFor(key: string): PortRoutes | undefined {
    return this.state.routesFor(key);
  }

  /**
   * A route backend's cluster and fallback: service `name` of namespace `ns`, port `port`;
   * undefined when no such service port exists (500 no_backend).
   */
  forBackend(ns: string, name: string, port: number): { cluster: Cluster; fallback: Cluster | undefined } | undefined {
    const t = this.state.backendTarget(ns, name, port);
    if (t === undefined) return undefined;
    return { cluster: this.forTarget(t), fallback: this.fallbackFor(t.service, port) };
  }

  /** Rebuild from the current state: create, update and remove clusters. */
  sync(): void {
    const seen = new Set<string>();
    for (const s of this.state.allServices()) {
      for (const p of s.ports) {
        const key = `${serviceKey(s)}:${p.port}`;
        seen.add(key);
        const infos = this.state.endpointsOf(s, p);
        let c = this.clusters.get(key);
        if (c && c.protocol !== p.protocol) {
          c.stop();
          c = undefined;
        }
        if (!c) {
          c = new Cluster({ key, serviceName: serviceKey(s), protocol: p.protocol, policy: s.trafficPolicy, log: this.log, metrics: this.metrics, now: this.now, ...this.roles });
          this.clusters.set(key, c);
        }
        c.update(infos, s.trafficPolicy);
      }
    }
    // Pod-direct clusters are made on demand; drop those whose pod is gone.
    for (const [key, c] of this.clusters) {
      if (seen.has(key)) continue;
      if (key.startsWith('pod:')) {
        const target = this.state.resolve(...splitHostPort(key.slice(4)));
        if (target?.kind === 'pod') {
          c.update([this.state.endpointInfo(target.workload, target.port)], POD_POLICY);
          continue;
        }
      }
      c.stop();
      this.clusters.delete(key);
    }
  }

  /** The cluster serving a resolved target. */
  forTarget(t: Target): Cluster {
    const existing = this.clusters.get(t.key);
    if (existing) return existing;
    if (t.kind === 'service') {
      // sync() runs on every state change, so a miss here means a race with it: build now.
      this.sync();
      const c = this.clusters.get(t.key);
      if (c) return c;
      throw new Error(`no cluster for ${t.key}`);
    }
    const c = new Cluster({
      key: t.key,
      serviceName: `${t.workload.namespace}/${t.workload.name}`,
      protocol: t.protocol,
      policy: POD_POLICY,
      log: this.log,
      metrics: this.metrics,
      now: this.now,
      ...this.roles,
    });
    c.update([this.state.endpointInfo(t.workload, t.port)], POD_POLICY);
    this.clusters.set(t.key, c);
    return c;
  }

  /** The fallback cluster of a service port (same namespace, the port with the same number or the first). */
  fallbackFor(service: Service, port: number): Cluster | undefined {
    const fb = service.trafficPolicy.fallback;
    if (!fb) return undefined;
    const s = this.state.service(service.namespace, fb.service);
    if (!s || s.ports.length === 0) return undefined;
    const p = s.ports.find((x) => x.port === port) ?? s.ports[0]!;
    return this.clusters.get(`${serviceKey(s)}:${p.port}`);
  }

  get(key: string): Cluster | undefined {
    return this.clusters.get(key);
  }

  all(): IterableIterator<Cluster> {
    return this.clusters.values();
  }

  stop(): void {
    for (const c of this.clusters.values()) c.stop();
    this.clusters.clear();
  }
}

function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
}
