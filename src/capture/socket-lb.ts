/**
 * Socket LB: plain-TCP service ports where the agent has nothing to add are balanced by
 * connect4 itself, as Cilium's socket LB and Kmesh do. The client pod then connects straight
 * to the endpoint: no agent, no extra hop, no byte copied. This module decides which service
 * ports qualify, keeps their backend slots in step with the clusters' health state, and turns
 * the kernel's connection events into the same metrics and access-log lines the L4 proxy
 * writes.
 *
 * A service port is balanced in the kernel only when all of this holds; otherwise (and the
 * moment it stops holding) its connections go to the agent as before:
 * - protocol tcp (L7 needs the agent), and no TCPRoute attached (its weighted split over
 *   other services is the agent's);
 * - no authorization policy (ALLOW or DENY) selects any of its endpoints' workloads: the agent
 *   would allow every connection anyway. Strict ingress on an endpoint pod admits such a
 *   connection by its flow, which sockops records before the SYN leaves (bpf/ingress.bpf.c);
 * - every endpoint is reached in plain TCP without the agent: on this node, or outside the
 *   mesh (a meshed pod on another node is reached through the mTLS tunnel, and its strict
 *   ingress only admits agents);
 * - a balancer the kernel can play: round-robin, random, weighted-round-robin (a random pick
 *   over slots, an endpoint's weight being its number of slots). least-request, peak-ewma and
 *   hashing need the agent;
 * - no outlier detection and no circuit breaker: both feed on outcomes that only the agent
 *   sees. Active health checks work (the agent runs them; only endpoints eligible for new
 *   traffic get slots, panic mode included);
 * - at least one eligible endpoint: with none, the agent answers (fallback service, or a reset).
 * What a balanced connection loses, compared with the L4 proxy: a connect failure is not
 * retried on another endpoint (the client sees it, as with kube-proxy), connection-pool limits
 * are not enforced, and the endpoint sees the client pod's address instead of the node's.
 */
import { sourceLabelsOf, type SourceLabels } from '../telemetry/labels.js';
import type { Workload } from '../config/types.js';
import type { ClusterManager } from '../cluster/manager.js';
import type { Cluster } from '../cluster/cluster.js';
import type { Endpoint } from '../cluster/endpoint.js';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { IpPort, LbEvent } from './bpf.js';
import { LB_EV_CLOSE, LB_EV_OPEN, LB_SLOTS_MAX } from './constants.js';
import type { BalancedPort, Datapath } from './datapath.js';

export interface SocketLbDeps {
  state: StateStore;
  clusters: ClusterManager;
  datapath: Datapath;
  /** Whether any authorization policy selects this workload. */
  governed: (w: Workload) => boolean;
  /** The pod whose cgroup opened a connection (CaptureManager.workloadByCgroupId). */
  workloadByCgroupId: (id: bigint) => Workload | undefined;
  metrics: Metrics;
  log: Logger;
  /** How often health state is read into the slots (ms). Default 250. */
  intervalMs?: number;
  now?: () => number;
}

const KERNEL_BALANCERS = new Set(['round-robin', 'random', 'weighted-round-robin']);

type Labels = SourceLabels & { destination_service: string; connection_security_policy: 'none' };

/** Why a service port is not balanced in the kernel, or undefined when it is eligible. */
export function ineligibility(c: Cluster, governed: (ep: Endpoint) => boolean): string | undefined {
  if (c.protocol !== 'tcp') return 'http';
  if (c.key.startsWith('pod:')) return 'pod';
  const p = c.policy;
  if (!KERNEL_BALANCERS.has(p.loadBalancer.type)) return `balancer ${p.loadBalancer.type}`;
  if (p.outlierDetection) return 'outlier detection';
  if (p.circuitBreaker) return 'circuit breaker';
  const eps = [...c.endpoints.values()];
  if (eps.length > LB_SLOTS_MAX) return `more than ${LB_SLOTS_MAX} endpoints`;
  if (eps.some((ep) => !ep.info.local && ep.info.meshed)) return 'endpoint on another node (tunnel)';
  if (eps.some(governed)) return 'authorization policy';
  return undefined;
}

/**
 * One slot per endpoint when weights are equal; else each endpoint gets slots in proportion to
 * its weight (at least one, LB_SLOTS_MAX in all at most). Sorted by address: the same set of
 * endpoints always gives the same table, so an unchanged set writes nothing.
 */
export function slotsFor(eps: Endpoint[]): IpPort[] {
  const sorted = [...eps].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const weights = sorted.map((e) => Math.max(1, Math.round(e.weight || 1)));
  const g = weights.reduce((a, b) => gcd(a, b));
  let counts = weights.map((w) => w / g);
  const total = counts.reduce((a, b) => a + b, 0);
  if (total > LB_SLOTS_MAX) counts = counts.map((c) => Math.max(1, Math.floor((c * LB_SLOTS_MAX) / total)));
  const out: IpPort[] = [];
  sorted.forEach((e, i) => {
    for (let k = 0; k < counts[i]! && out.length < LB_SLOTS_MAX; k++) out.push({ ip: e.info.ip, port: e.info.port });
  });
  return out;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

export class SocketLb {
  private readonly log: Logger;
  /** Access-log lines go out as the L4 proxy's do. */
  private readonly access: Logger;
  private readonly now: () => number;
  private timer?: NodeJS.Timeout;
  private lastSig = '';
  private status = new Map<string, { vip: string; port: number; balanced: boolean; reason?: string; slots?: number }>();
  /** Labels of the balanced connections open now, by socket cookie: a close counts where its open did. */
  private readonly open = new Map<bigint, { labels: Labels; endpoint?: Endpoint }>();
  private lost = 0;

  constructor(private readonly deps: SocketLbDeps) {
    this.log = deps.log.child({ component: 'socket-lb' });
    this.access = deps.log.child({ component: 'tcp' });
    this.now = deps.now ?? Date.now;
  }

  start(): void {
    // The counter outlives agents: only what is lost from now on is news.
    this.lost = this.deps.datapath.lbEventsLost();
    this.deps.datapath.onLbEvents((e) => this.onEvent(e));
    this.sync();
    this.timer = setInterval(() => this.sync(), this.deps.intervalMs ?? 250);
    this.timer.unref();
  }

  /**
   * Stops following health state. The kernel keeps balancing as it was: like the pinned links,
   * the maps outlive the agent, so balanced ports keep working while no agent runs (a restart,
   * an upgrade); the next agent takes them over.
   */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Another agent balances from now on: stop syncing and stop reading the kernel's events. */
  release(): void {
    this.stop();
    this.deps.datapath.offLbEvents();
  }

  /** Take balancing back (after {@link release}): the maps are read afresh, as another agent left them. */
  resume(): void {
    this.lastSig = '';
    this.start();
  }

  /** Recomputes which ports the kernel balances and over which endpoints; cheap when nothing changed. */
  sync(): void {
    const { state, clusters, governed } = this.deps;
    const now = this.now();
    const isGoverned = (ep: Endpoint): boolean => {
      const w = state.workload(ep.info.namespace, ep.info.workload);
      return w !== undefined && governed(w);
    };
    const ports: BalancedPort[] = [];
    const status = new Map<string, { vip: string; port: number; balanced: boolean; reason?: string; slots?: number }>();
    for (const s of state.allServices()) {
      for (const p of s.ports) {
        const c = clusters.get(`${s.namespace}/${s.name}:${p.port}`);
        if (!c || c.protocol !== 'tcp') continue;
        // A TCPRoute splits connections by weight over other services: the agent does that.
        let reason = state.routesFor(c.key) !== undefined ? 'TCPRoute' : ineligibility(c, isGoverned);
        let slots: IpPort[] = [];
        if (!reason) {
          const all = [...c.endpoints.values()];
          // As the cluster balances: endpoints eligible for new traffic, or in panic every ready one.
          const eligible = c.empty ? [] : c.panic ? all.filter((ep) => ep.info.ready) : all.filter((ep) => ep.eligible(now));
          if (eligible.length === 0) reason = 'no eligible endpoint';
          else slots = slotsFor(eligible);
        }
        status.set(c.key, { vip: s.vip, port: p.port, balanced: !reason, reason, slots: reason ? undefined : slots.length });
        if (!reason) ports.push({ ip: s.vip, port: p.port, slots });
      }
    }
    const sig = JSON.stringify(ports);
    this.status = status;
    this.checkLost();
    if (sig === this.lastSig) return;
    try {
      this.deps.datapath.setBalanced(ports);
      this.lastSig = sig;
      this.log.debug({ balanced: ports.map((p) => `${p.ip}:${p.port}/${p.slots.length}`) }, 'socket LB synced');
    } catch (err) {
      this.deps.metrics.agentErrors.inc({ kind: 'capture' });
      this.log.error({ err: (err as Error).message }, 'syncing the socket LB maps failed');
    }
  }

  private checkLost(): void {
    let lost: number;
    try {
      lost = this.deps.datapath.lbEventsLost();
    } catch {
      return;
    }
    if (lost > this.lost) {
      this.log.warn({ lost: lost - this.lost }, 'socket LB events lost (the ring was full): some balanced connections are missing from the metrics');
      this.lost = lost;
    }
  }

  /** For /config_dump. */
  describe(): unknown {
    return { ports: Object.fromEntries(this.status), openConnections: this.open.size, eventsLost: this.lost };
  }

  private onEvent(e: LbEvent): void {
    if (e.type === LB_EV_OPEN) {
      const ctx = this.context(e);
      this.open.set(e.cookie, ctx);
      this.deps.metrics.tcpOpened.inc(ctx.labels);
      return;
    }
    if (e.type !== LB_EV_CLOSE) return;
    const ctx = this.open.get(e.cookie) ?? this.context(e);
    this.open.delete(e.cookie);
    const { metrics } = this.deps;
    metrics.tcpClosed.inc(ctx.labels);
    metrics.tcpSent.inc(ctx.labels, e.bytesSent);
    metrics.tcpReceived.inc(ctx.labels, e.bytesReceived);
    const src = this.deps.workloadByCgroupId(e.cgroupId);
    const ep = ctx.endpoint;
    this.access.info(
      {
        direction: 'outbound',
        src_workload: src ? `${src.namespace}/${src.name}` : undefined,
        src_ip: e.client.ip,
        dst: `${e.orig.ip}:${e.orig.port}`,
        dst_service: ctx.labels.destination_service,
        dst_workload: ep ? `${ep.info.namespace}/${ep.info.workload}` : undefined,
        endpoint: `${e.backend.ip}:${e.backend.port}`,
        protocol: 'tcp',
        sent_bytes: e.bytesSent,
        received_bytes: e.bytesReceived,
        duration_ms: Number(e.durationNs / 1_000_000n),
        close: 'closed',
        security: 'none',
        socket_lb: true,
        response_flags: '-',
      },
      'access',
    );
  }

  private context(e: LbEvent): { labels: Labels; endpoint?: Endpoint } {
    const src = this.deps.workloadByCgroupId(e.cgroupId);
    const target = this.deps.state.resolve(e.orig.ip, e.orig.port);
    const service = target?.kind === 'service' ? `${target.service.namespace}/${target.service.name}` : 'unknown';
    const endpoint = target ? this.deps.clusters.get(target.key)?.endpoints.get(`${e.backend.ip}:${e.backend.port}`) : undefined;
    return {
      labels: { ...sourceLabelsOf(src), destination_service: service, connection_security_policy: 'none' },
      endpoint,
    };
  }
}
