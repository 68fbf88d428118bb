import type { Duplex } from 'node:stream';
import type { Cluster } from '../cluster/cluster.js';
import type { Endpoint } from '../cluster/endpoint.js';
import type { Logger } from '../telemetry/log.js';
import type { ConnContext } from './context.js';
import { Downstream } from './http1/downstream.js';
import type { ExchangeHost } from './http1/exchange.js';
import { EndpointPool, PoolGroup } from './http1/upstream.js';
import type { L7Deps } from './l7/call.js';
import { L7Telemetry } from './l7/telemetry.js';
import { H2Front } from './http2/session.js';
import type { H2Host } from './http2/stream.js';
import { H2Pool } from './http2/upstream.js';

export type { L7Authorizer as HttpAuthorizer } from './l7/attempt.js';
export type HttpProxyDeps = L7Deps;

/** How often timeouts of idle connections are checked, and the coarse clock ticks. */
const SWEEP_MS = 1_000;

/**
 * L7: the connections of HTTP services. Each request goes through the protocol-free
 * pipeline (l7/: route, admission, attempt, retry, respond, telemetry) with a codec for its
 * protocol. HTTP/1.1 (http1/): one request at a time per connection, through a streaming
 * forwarder: llhttp parses heads strictly on both sides (request smuggling attempts, bad
 * chunking and obs-fold are refused with 400 `bad_request`, before anything reaches an
 * upstream), bodies are framed and copied without re-serializing, and upstream connections
 * are pooled per endpoint with the service's connection limits.
 */
export class HttpProxy implements ExchangeHost, H2Host {
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
  private readonly h2Pools = new Set<H2Pool>();
  private readonly h2PoolsByEp = new WeakMap<Endpoint, Map<string, H2Pool>>();
  private h2Front: H2Front | undefined;
  private readonly spliced_ = new Set<Duplex>();
  readonly telemetry: L7Telemetry;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private readonly sweeper: NodeJS.Timeout;

  constructor(deps: HttpProxyDeps) {
    this.deps = deps;
    this.log = deps.log;
    this.server = { closeIdleConnections: () => this.closeIdleConnections() };
    this.telemetry = new L7Telemetry(
      deps.metrics,
      deps.log,
      (ep) => deps.transport.securityOf(ep),
      (ctx, ep) => deps.transport.callerPrincipal?.(ctx, ep),
    );
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  /**
   * Serve HTTP on a redirected connection (a net.Socket, or a tunnel stream dressed as one).
   * HTTP/1.1 and HTTP/2 with prior knowledge are told apart by the connection preface (the
   * HTTP/1.1 downstream looks at the first bytes and hands an HTTP/2 connection to `acceptH2`).
   */
  accept(socket: Duplex, ctx: ConnContext): void {
    const d = new Downstream(socket, ctx, this);
    this.conns.add(d);
    if (this.draining) d.closeWhenIdle();
    socket.resume();
  }

  /** Serve an HTTP/2 connection; `first`: the bytes already read from it. */
  acceptH2(socket: Duplex, ctx: ConnContext, first?: Buffer): void {
    (this.h2Front ??= new H2Front(this)).accept(socket, ctx, first);
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

  /**
   * Drain hook (the agent is being replaced): from now on every answer carries
   * `connection: close` and its connection closes after it, so keep-alive clients move away
   * between requests. Idle HTTP/1.1 connections are left alone: closing one could race a
   * request the client is sending on it; they close on their next answer, or when the drain
   * time is up. HTTP/2 sessions get GOAWAY (session.close()): the client opens a new
   * connection for new streams, and the streams in flight finish.
   */
  drain(): void {
    this.draining = true;
    this.h2Front?.closeIdle();
  }

  /** Downstream connections open now. */
  get connections(): number {
    return this.conns.size;
  }

  /** Close connections with nothing in flight; the others close after their current answer. */
  closeIdleConnections(): void {
    this.draining = true;
    for (const d of this.conns) d.closeWhenIdle();
    this.h2Front?.closeIdle();
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
    for (const p of this.h2Pools) {
      if (!live.has(p.ep.id)) {
        this.h2Pools.delete(p);
        this.h2PoolsByEp.delete(p.ep);
        p.close();
      }
    }
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.closeIdleConnections();
    for (const p of this.pools) p.destroy();
    this.pools.clear();
    for (const p of this.h2Pools) p.destroy();
    this.h2Pools.clear();
    this.h2Front?.destroy();
    for (const s of this.spliced_) s.destroy();
    this.spliced_.clear();
  }

  // --- ExchangeHost ---

  poolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): EndpointPool {
    let byEp = this.poolsByEp.get(ep);
    if (byEp === undefined) this.poolsByEp.set(ep, (byEp = new Map()));
    const src = ctx.source;
    // Per calling pod: a tunnelled connection presents the pod's identity and describes the
    // pod to the peer agent (the CONNECT's `baggage`, for its metrics and access log).
    const key = src === undefined ? '' : src.serviceAccount + '\u0000' + src.namespace + '\u0000' + src.name;
    let pool = byEp.get(key);
    if (pool === undefined) {
      let group = this.groups.get(cluster);
      if (group === undefined) this.groups.set(cluster, (group = new PoolGroup(cluster, this.internalError)));
      const transport = this.deps.transport;
      const source = src;
      pool = new EndpointPool(ep, group, () => transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source }));
      byEp.set(key, pool);
      this.pools.add(pool);
    }
    return pool;
  }

  h2PoolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): H2Pool {
    let byEp = this.h2PoolsByEp.get(ep);
    if (byEp === undefined) this.h2PoolsByEp.set(ep, (byEp = new Map()));
    const src = ctx.source;
    const key = src === undefined ? '' : src.serviceAccount + '\u0000' + src.namespace + '\u0000' + src.name;
    let pool = byEp.get(key);
    if (pool === undefined) {
      const transport = this.deps.transport;
      const source = src;
      pool = new H2Pool(ep, cluster, () => transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source }), this.internalError);
      byEp.set(key, pool);
      this.h2Pools.add(pool);
    }
    return pool;
  }

  requestStarted(): void {
    this.inflight++;
  }

  requestEnded(): void {
    if (--this.inflight === 0 && this.idleWaiters.length > 0) for (const w of this.idleWaiters.splice(0)) w();
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
    for (const p of this.h2Pools) p.sweep(t);
  }
}
