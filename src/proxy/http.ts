import type http from 'node:http';
import type { Duplex } from 'node:stream';
import type { ClusterManager } from '../cluster/manager.js';
import type { Cluster } from '../cluster/cluster.js';
import type { Endpoint } from '../cluster/endpoint.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import { HTTP_ERRORS, type WeftError, type WeftErrorCode } from '../errors.js';
import type { ConnContext } from './context.js';
import type { Transport } from './transport.js';
import { Downstream } from './http1/downstream.js';
import type { Exchange, ExchangeHost } from './http1/exchange.js';
import { EndpointPool, PoolGroup } from './http1/upstream.js';

export interface HttpAuthorizer {
  /**
   * Runs on the destination's agent for local endpoints; returns a WeftError to answer with,
   * or undefined. Return a value (not a promise) when no asynchronous work is needed: the
   * request then goes on without waiting for a microtask. `req` carries `method`, `url` and
   * `headers` (lower-case names) only; a header the authorizer deletes from `req.headers` is
   * not forwarded.
   */
  (ctx: ConnContext, ep: Endpoint, req: http.IncomingMessage): Promise<WeftError | undefined> | WeftError | undefined;
}

export interface HttpProxyDeps {
  clusters: ClusterManager;
  transport: Transport;
  metrics: Metrics;
  log: Logger;
  authorize?: HttpAuthorizer;
}

/** How often timeouts of idle connections are checked, and the coarse clock ticks. */
const SWEEP_MS = 1_000;

interface RequestLabels {
  requests: Record<string, string>;
  duration: Record<string, string>;
  /** Requests counted since the last flush to prom-client. */
  pending: number;
}

/** Per client connection: the access logger and metric labels, per endpoint (or service) and status. */
export interface ConnTelemetry {
  log: Logger | undefined;
  byStatus: Map<number, RequestLabels>;
}

function targetName(ctx: ConnContext): string {
  return ctx.target.kind === 'service' ? `${ctx.target.service.namespace}/${ctx.target.service.name}` : 'unknown';
}

/**
 * L7: HTTP/1.1, one request at a time per connection, through a streaming forwarder (see
 * http1/): llhttp parses heads strictly on both sides (request smuggling attempts, bad
 * chunking and obs-fold are refused with 400 `bad_request`, before anything reaches an
 * upstream), bodies are framed and copied without re-serializing, and upstream connections
 * are pooled per endpoint with the service's connection limits. Each request goes through
 * admission (breaker, fallback), limits, the balancer, authorization, retries and timeouts
 * (http1/exchange.ts), and ends with one access-log line and its metrics.
 */
export class HttpProxy implements ExchangeHost {
  readonly deps: HttpProxyDeps;
  /** Kept for callers of the node:http-based proxy: `server.closeIdleConnections()`. */
  readonly server: { closeIdleConnections(): void };
  clock = Math.round(performance.now());
  draining = false;
  private readonly log: Logger;
  private readonly conns = new Set<Downstream>();
  private readonly pools = new Set<EndpointPool>();
  private readonly poolsByEp = new WeakMap<Endpoint, Map<string, EndpointPool>>();
  private readonly groups = new WeakMap<Cluster, PoolGroup>();
  private readonly spliced_ = new Set<Duplex>();
  private readonly labels = new Map<string, RequestLabels>();
  private readonly accessLogs = new Map<string, Logger>();
  private readonly dirty: RequestLabels[] = [];
  private flushScheduled = false;
  private readonly retryLabels = new WeakMap<Cluster, Record<string, string>>();
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private readonly sweeper: NodeJS.Timeout;

  constructor(deps: HttpProxyDeps) {
    this.deps = deps;
    this.log = deps.log;
    this.server = { closeIdleConnections: () => this.closeIdleConnections() };
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  /** Serve HTTP on a redirected connection (a net.Socket, or a tunnel stream dressed as one). */
  accept(socket: Duplex, ctx: ConnContext): void {
    const d = new Downstream(socket, ctx, this);
    this.conns.add(d);
    if (this.draining) d.closeWhenIdle();
    socket.resume();
  }

  /** Requests in flight (for draining). */
  get active(): number {
    return this.inflight;
  }

  /**
   * Resolves when no request is in flight. For draining: from this call on, answers carry
   * `connection: close`, so keep-alive clients move away instead of sending more requests.
   */
  idle(): Promise<void> {
    this.draining = true;
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Close connections with nothing in flight; the others close after their current answer. */
  closeIdleConnections(): void {
    this.draining = true;
    for (const d of this.conns) d.closeWhenIdle();
  }

  /** Drop upstream pools of endpoints that left their service. */
  prune(live: Set<string>): void {
    for (const p of this.pools) {
      if (!live.has(p.ep.id)) {
        this.pools.delete(p);
        this.poolsByEp.delete(p.ep);
        p.close();
      }
    }
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.closeIdleConnections();
    for (const p of this.pools) p.destroy();
    this.pools.clear();
    for (const s of this.spliced_) s.destroy();
    this.spliced_.clear();
  }

  // --- ExchangeHost ---

  poolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): EndpointPool {
    let byEp = this.poolsByEp.get(ep);
    if (byEp === undefined) this.poolsByEp.set(ep, (byEp = new Map()));
    const src = ctx.source;
    const key = src === undefined ? '' : src.serviceAccount + '\u0000' + src.namespace;
    let pool = byEp.get(key);
    if (pool === undefined) {
      let group = this.groups.get(cluster);
      if (group === undefined) this.groups.set(cluster, (group = new PoolGroup(cluster, this.internalError)));
      const transport = this.deps.transport;
      const source = src ? { namespace: src.namespace, serviceAccount: src.serviceAccount } : undefined;
      pool = new EndpointPool(ep, group, () => transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source }));
      byEp.set(key, pool);
      this.pools.add(pool);
    }
    return pool;
  }

  requestStarted(): void {
    this.inflight++;
  }

  requestEnded(): void {
    if (--this.inflight === 0 && this.idleWaiters.length > 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  retried(cluster: Cluster): void {
    let l = this.retryLabels.get(cluster);
    if (l === undefined) this.retryLabels.set(cluster, (l = { destination_service: cluster.serviceName }));
    this.deps.metrics.retries.inc(l);
  }

  record(ex: Exchange, status: number, error?: WeftErrorCode, reason?: string): void {
    const secs = (performance.now() - ex.startedAt) / 1000;
    const down = ex.down;
    const ep = ex.ep;
    // Per connection, then per endpoint (or service) and status: the labels and the logger
    // are found without building a key on the common path.
    const where: Endpoint | string = ep ?? ex.cluster?.serviceName ?? targetName(down.ctx);
    let byWhere = down.telemetry.get(where);
    if (byWhere === undefined) down.telemetry.set(where, (byWhere = { log: undefined, byStatus: new Map() }));
    let labels = byWhere.byStatus.get(status);
    if (labels === undefined) byWhere.byStatus.set(status, (labels = this.labelsFor(ex, status)));
    // The counter is added up per event-loop turn (one prom-client call per label set), the
    // histogram takes every value.
    if (labels.pending++ === 0) this.dirty.push(labels);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushCounts);
    }
    this.deps.metrics.requestDuration.observe(labels.duration, secs);
    if (!this.log.isLevelEnabled('info')) return;
    (byWhere.log ??= this.accessLogFor(ex)).info(
      {
        method: ex.method,
        path: ex.url,
        host: ex.host,
        status,
        attempts: ex.attempts,
        duration_ms: Math.round(secs * 100000) / 100,
        error: error ? (HTTP_ERRORS[error]?.header ?? error) : undefined,
        reason,
      },
      'access',
    );
  }

  private readonly flushCounts = (): void => {
    this.flushScheduled = false;
    const requests = this.deps.metrics.requests;
    for (const l of this.dirty) {
      requests.inc(l.requests, l.pending);
      l.pending = 0;
    }
    this.dirty.length = 0;
  };

  private labelsFor(ex: Exchange, status: number): RequestLabels {
    const ctx = ex.ctx;
    const ep = ex.ep;
    const service = ex.cluster?.serviceName ?? targetName(ctx);
    const security = ep ? this.deps.transport.securityOf(ep) : 'none';
    const workload = ep?.info.workload ?? 'unknown';
    const src = ctx.source;
    // On the destination side of the tunnel the caller is known by its verified principal.
    const srcNs = src?.namespace ?? ctx.peer?.namespace;
    const key = `${srcNs ?? ''}\u0000${src?.name ?? ''}\u0000${service}\u0000${workload}\u0000${status}\u0000${security}`;
    let labels = this.labels.get(key);
    if (labels === undefined) {
      const source_workload = src?.name ?? 'unknown';
      const source_namespace = srcNs ?? 'unknown';
      const response_code = String(status);
      labels = {
        requests: { source_workload, source_namespace, destination_service: service, destination_workload: workload, response_code, connection_security_policy: security },
        duration: { source_workload, source_namespace, destination_service: service, response_code },
        pending: 0,
      };
      // Label values are bounded (workloads x services x codes); the cap only guards memory.
      if (this.labels.size >= 10_000) this.labels.clear();
      this.labels.set(key, labels);
    }
    return labels;
  }

  /**
   * A child logger with the fields that do not change from request to request on a
   * connection to one endpoint bound: pino serializes them once, not once per line.
   */
  private accessLogFor(ex: Exchange): Logger {
    const ctx = ex.ctx;
    const ep = ex.ep;
    const src = ctx.source;
    const src_workload = src ? `${src.namespace}/${src.name}` : undefined;
    const dst = `${ctx.origIp}:${ctx.origPort}`;
    const dst_service = ex.cluster?.serviceName ?? targetName(ctx);
    const key = `${src_workload ?? ''}\u0000${ctx.sourceIp}\u0000${dst}\u0000${dst_service}\u0000${ep?.id ?? ''}`;
    let log = this.accessLogs.get(key);
    if (log === undefined) {
      if (this.accessLogs.size >= 4096) this.accessLogs.clear();
      log = this.log.child({
        src_workload,
        src_ip: ctx.sourceIp,
        dst,
        dst_service,
        dst_workload: ep ? `${ep.info.namespace}/${ep.info.workload}` : undefined,
        endpoint: ep?.id,
        security: ep ? this.deps.transport.securityOf(ep) : 'none',
      });
      this.accessLogs.set(key, log);
    }
    return log;
  }

  malformed(down: Downstream, err: Error & { code?: string }): void {
    const ctx = down.ctx;
    this.log.warn({ err: err.message, code: err.code, src_ip: ctx.sourceIp, dst: `${ctx.origIp}:${ctx.origPort}` }, 'malformed request refused');
  }

  downstreamError(down: Downstream, err: Error): void {
    this.log.debug({ err: err.message, src_ip: down.ctx.sourceIp }, 'downstream socket error');
  }

  readonly internalError = (err: unknown): void => {
    this.deps.metrics.agentErrors.inc({ kind: 'proxy' });
    this.log.error({ err }, 'http proxy internal error');
  };

  forget(down: Downstream): void {
    this.conns.delete(down);
  }

  spliced(a: Duplex, b: Duplex): void {
    this.spliced_.add(a);
    this.spliced_.add(b);
    a.once('close', () => this.spliced_.delete(a));
    b.once('close', () => this.spliced_.delete(b));
  }

  private sweep(): void {
    const now = (this.clock = Math.round(performance.now()));
    for (const d of this.conns) d.sweep(now);
    const t = performance.now();
    for (const p of this.pools) p.sweep(t);
  }
}
