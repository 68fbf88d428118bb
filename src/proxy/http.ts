import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import type { ClusterManager } from '../cluster/manager.js';
import type { Cluster } from '../cluster/cluster.js';
import type { Endpoint } from '../cluster/endpoint.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import { HTTP_ERRORS, WeftError, type WeftErrorCode } from '../errors.js';
import { type ConnContext, sourceLabels } from './context.js';
import { admit, release, settle, type Admission } from './route.js';
import type { Transport } from './transport.js';
import { hashKey } from '../balancer/hash.js';
import { outlierResultForStatus, type OutlierResult } from '../health/outlier.js';
import { backoffDelay, isRetriable } from '../resilience/retry.js';

/** Requests whose body fits here are buffered, so that they can be retried. */
const REPLAY_LIMIT = 64 * 1024;

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'http2-settings']);

export interface HttpAuthorizer {
  /** Runs on the destination's agent for local endpoints; returns a WeftError to answer with, or undefined. */
  (ctx: ConnContext, ep: Endpoint, req: http.IncomingMessage): Promise<WeftError | undefined> | WeftError | undefined;
}

export interface HttpProxyDeps {
  clusters: ClusterManager;
  transport: Transport;
  metrics: Metrics;
  log: Logger;
  authorize?: HttpAuthorizer;
}

const kCtx = Symbol('weft.ctx');
type CtxSocket = net.Socket & { [kCtx]?: ConnContext };

/** Upstream outcome of one attempt, before it is turned into a client answer. */
interface AttemptFailure {
  kind: 'connect-failure' | 'reset' | 'timeout' | 'status';
  status?: number;
  error: WeftError;
  /** The retry budget was already charged for the retry this failure asks for. */
  paid?: boolean;
}

/**
 * L7: HTTP/1.1 per request. node:http parses the downstream (strictly: conflicting
 * Content-Length/Transfer-Encoding and bad chunking are refused by llhttp); undici pools keep
 * upstream connections alive per endpoint. Each request goes through admission (breaker,
 * fallback), limits, the balancer, retries and timeouts.
 */
export class HttpProxy {
  readonly server: http.Server;
  private readonly pools = new Map<string, { pool: Pool; ep: Endpoint }>();
  private readonly deps: HttpProxyDeps;
  private readonly log: Logger;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(deps: HttpProxyDeps) {
    this.deps = deps;
    this.log = deps.log;
    this.server = http.createServer({ keepAlive: true, requireHostHeader: false, maxHeaderSize: 64 * 1024, keepAliveTimeout: 60_000, headersTimeout: 30_000, requestTimeout: 0 });
    this.server.on('request', (req, res) => {
      this.inflight++;
      res.once('close', () => {
        if (--this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
      this.handle(req, res).catch((err) => {
        this.log.error({ err }, 'http proxy internal error');
        if (!res.headersSent) this.answerError(res, new WeftError('WEFT_ERR_UPSTREAM_RESET', 'internal error'));
        else res.destroy();
      });
    });
    this.server.on('upgrade', (req, socket, head) => this.handleUpgrade(req, socket as net.Socket, head));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      const ctx = (socket as CtxSocket)[kCtx];
      this.log.warn({ err: err.message, code: err.code, src_ip: ctx?.sourceIp, dst: ctx ? `${ctx.origIp}:${ctx.origPort}` : undefined }, 'malformed request refused');
      if ((socket as net.Socket).writable && err.code !== 'ECONNRESET') {
        socket.end('HTTP/1.1 400 Bad Request\r\nx-weft-error: bad_request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      } else socket.destroy();
    });
  }

  /** Serve HTTP on a redirected connection. */
  accept(socket: net.Socket, ctx: ConnContext): void {
    (socket as CtxSocket)[kCtx] = ctx;
    this.server.emit('connection', socket);
  }

  /** Requests in flight (for draining). */
  get active(): number {
    return this.inflight;
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Drop upstream pools of endpoints that left their service. */
  prune(live: Set<string>): void {
    for (const [id, p] of this.pools) {
      if (!live.has(id)) {
        this.pools.delete(id);
        void p.pool.close().catch(() => undefined);
      }
    }
  }

  async close(): Promise<void> {
    this.server.closeIdleConnections?.();
    await Promise.all([...this.pools.values()].map((p) => p.pool.close().catch(() => undefined)));
    this.pools.clear();
  }

  private poolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): Pool {
    const key = `${ep.id}|${ctx.source ? `${ctx.source.namespace}/${ctx.source.serviceAccount}` : '-'}`;
    let entry = this.pools.get(key);
    if (!entry || entry.ep !== ep) {
      const transport = this.deps.transport;
      const source = ctx.source ? { namespace: ctx.source.namespace, serviceAccount: ctx.source.serviceAccount } : undefined;
      const timeoutMs = cluster.policy.connectionPool.connectTimeout;
      const pool = new Pool(`http://${ep.id}`, {
        connections: cluster.policy.connectionPool.maxConnections,
        pipelining: 1,
        keepAliveTimeout: 60_000,
        keepAliveMaxTimeout: 600_000,
        headersTimeout: 0,
        bodyTimeout: 0,
        connect: ((_opts: unknown, cb: (err: Error | null, socket: Duplex | null) => void) => {
          transport.connect(ep, { timeoutMs, source }).then(
            (s) => cb(null, s),
            (e: Error) => cb(e, null),
          );
        }) as unknown as Pool.Options['connect'],
      });
      entry = { pool, ep };
      this.pools.set(key, entry);
    }
    return entry.pool;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    const ctx = (req.socket as CtxSocket)[kCtx]!;
    const { metrics } = this.deps;
    let adm: Admission;
    try {
      adm = admit(this.deps.clusters, ctx.target);
    } catch (err) {
      this.finish(req, res, ctx, undefined, undefined, err as WeftError, started, 0);
      return;
    }
    const cluster = adm.cluster;
    if (!cluster.limits.tryStartRequest()) {
      release(adm);
      this.finish(req, res, ctx, cluster, undefined, new WeftError('WEFT_ERR_OVERFLOW', `request limit reached for ${cluster.serviceName}`), started, 0);
      return;
    }
    let ended = false;
    res.once('close', () => {
      if (!ended) {
        ended = true;
        cluster.limits.endRequest();
      }
    });

    const policy = cluster.policy;
    const retries = policy.retries;
    const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
    let body: Buffer | null | http.IncomingMessage = null;
    let replayable = true;
    if (hasBody) {
      const len = Number(req.headers['content-length'] ?? NaN);
      if (retries && retries.attempts > 0 && Number.isFinite(len) && len <= REPLAY_LIMIT) body = await readBody(req);
      else {
        body = req;
        replayable = false;
      }
    }

    const hashOn = policy.loadBalancer.hashOn;
    let hash: number | undefined;
    if (hashOn?.header) {
      const v = req.headers[hashOn.header.toLowerCase()];
      if (v !== undefined) hash = hashKey(Array.isArray(v) ? v.join(',') : v);
    } else if (hashOn?.sourceIp) hash = hashKey(ctx.sourceIp);

    const headers = forwardHeaders(req.rawHeaders);
    const tried = new Set<Endpoint>();
    const maxAttempts = 1 + (retries && replayable ? retries.attempts : 0);
    const deadline = policy.timeout > 0 ? started + policy.timeout : Infinity;
    let lastFailure: AttemptFailure | undefined;
    let lastEp: Endpoint | undefined;
    let attempts = 0;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      if (attempt > 0) {
        if (!lastFailure?.paid && !cluster.retryBudget?.tryRetry()) break;
        metrics.retries.inc({ destination_service: cluster.serviceName });
        const delay = backoffDelay(attempt, retries!.backoff.base, retries!.backoff.max);
        if (performance.now() + delay >= deadline) break;
        await sleep(delay);
        if (res.destroyed) break;
      }
      const ep = cluster.pick({ hash, tried });
      if (!ep) {
        lastFailure = { kind: 'connect-failure', error: new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${cluster.serviceName}`) };
        break;
      }
      tried.add(ep);
      lastEp = ep;
      if (this.deps.authorize && ep.info.local) {
        const denied = await this.deps.authorize(ctx, ep, req);
        if (denied) {
          release(adm);
          this.finish(req, res, ctx, cluster, ep, denied, started, attempts);
          return;
        }
      }
      attempts++;
      if (attempt === 0) cluster.retryBudget?.recordRequest();
      const perTry = retries?.perTryTimeout ?? 0;
      const tryDeadline = Math.min(deadline, perTry > 0 ? performance.now() + perTry : Infinity);
      const isLast = attempt === maxAttempts - 1;
      const outcome = await this.attempt(req, res, ctx, cluster, ep, headers, body, tryDeadline, deadline, isLast || !retries, started, attempts, adm);
      if (outcome === undefined) return; // answered (success or a non-retriable failure)
      lastFailure = outcome;
      if (!retries || !isRetriable(retries, outcome.kind === 'status' ? { kind: 'status', status: outcome.status } : { kind: outcome.kind })) break;
      if (performance.now() >= deadline) break;
    }
    settle(adm, false);
    const err = lastFailure?.error ?? new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${cluster.serviceName}`);
    this.finish(req, res, ctx, cluster, lastEp, err, started, attempts);
  }

  /**
   * One attempt on one endpoint. Resolves undefined once the client has been answered,
   * or with the failure when the caller may retry (nothing was sent to the client yet).
   */
  private attempt(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    ctx: ConnContext,
    cluster: Cluster,
    ep: Endpoint,
    headers: string[],
    body: Buffer | null | http.IncomingMessage,
    tryDeadline: number,
    deadline: number,
    final: boolean,
    started: number,
    attempts: number,
    adm: Admission,
  ): Promise<AttemptFailure | undefined> {
    const pool = this.poolFor(ep, cluster, ctx);
    const t0 = performance.now();
    ep.active++;
    return new Promise((resolve) => {
      let done = false;
      let headersSent = false;
      let abortFn: ((reason?: Error) => void) | undefined;
      let timer: NodeJS.Timeout | undefined;
      let timedOut = false;
      const end = () => {
        if (timer) clearTimeout(timer);
        ep.active--;
      };
      const fail = (f: AttemptFailure, result: OutlierResult) => {
        if (done) return;
        done = true;
        end();
        cluster.report(ep, result, performance.now() - t0);
        if (headersSent) {
          // Too late for an error answer: cut the client connection so it sees a truncated response.
          settle(adm, false);
          res.destroy();
          this.logAccess(req, ctx, cluster, ep, res.statusCode, started, attempts, f.error.code);
          resolve(undefined);
          return;
        }
        if (final) {
          settle(adm, false);
          this.finish(req, res, ctx, cluster, ep, f.error, started, attempts);
          resolve(undefined);
        } else resolve(f);
      };
      const remaining = tryDeadline - performance.now();
      if (Number.isFinite(remaining)) {
        timer = setTimeout(() => {
          timedOut = true;
          abortFn?.(new WeftError('WEFT_ERR_UPSTREAM_TIMEOUT', 'timeout'));
          // A per-try timeout is retriable; the whole-request deadline is not.
          fail({ kind: 'timeout', error: new WeftError('WEFT_ERR_UPSTREAM_TIMEOUT', `upstream ${ep.id} did not answer within ${Math.round(deadline === tryDeadline ? deadline - started : remaining)}ms`) }, 'timeout');
          if (deadline === tryDeadline) final = true;
        }, Math.max(0, remaining));
      }
      res.once('close', () => {
        if (!done && !res.writableFinished) abortFn?.(new Error('client closed'));
      });
      const handler: Dispatcher.DispatchHandler = {
        onConnect: (abort) => {
          abortFn = abort as (reason?: Error) => void;
          if (timedOut) abort(new Error('timeout'));
        },
        onHeaders: (statusCode, rawHeaders, resume) => {
          if (done) return false;
          // Discard a retriable answer only when the retry will really happen (budget
          // charged now); otherwise the client gets the upstream's own answer.
          const rp = cluster.policy.retries;
          if (!final && rp && isRetriable(rp, { kind: 'status', status: statusCode }) && performance.now() + rp.backoff.base < deadline && cluster.retryBudget?.tryRetry()) {
            done = true;
            end();
            cluster.report(ep, outlierResultForStatus(statusCode), performance.now() - t0);
            abortFn?.(new Error('retrying'));
            resolve({ kind: 'status', status: statusCode, paid: true, error: new WeftError('WEFT_ERR_UPSTREAM_RESET', `upstream answered ${statusCode}`) });
            return false;
          }
          headersSent = true;
          (res as http.ServerResponse & { _weftStatus?: number })._weftStatus = statusCode;
          res.writeHead(statusCode, responseHeaders(rawHeaders as unknown as Buffer[]));
          res.on('drain', () => resume());
          return true;
        },
        onData: (chunk) => res.write(chunk),
        onComplete: () => {
          if (done) return;
          done = true;
          end();
          const status = res.statusCode;
          settle(adm, status < 500);
          cluster.report(ep, outlierResultForStatus(status), performance.now() - t0);
          res.end();
          this.logAccess(req, ctx, cluster, ep, status, started, attempts);
          resolve(undefined);
        },
        onError: (err: Error & { code?: string }) => {
          if (done) return;
          if (timedOut) return;
          const { kind, code } = classify(err);
          fail({ kind, error: new WeftError(code, `${ep.id}: ${err.message}`, { cause: err }) }, kind === 'connect-failure' ? 'connect-failure' : 'reset');
        },
      };
      try {
        pool.dispatch({ path: req.url ?? '/', method: req.method as Dispatcher.HttpMethod, headers, body: body as Buffer | null, idempotent: false, blocking: false, upgrade: null }, handler);
      } catch (err) {
        fail({ kind: 'reset', error: new WeftError('WEFT_ERR_UPSTREAM_RESET', (err as Error).message) }, 'reset');
      }
    });
  }

  private answerError(res: http.ServerResponse, err: WeftError): number {
    const m = HTTP_ERRORS[err.code] ?? { header: 'upstream_reset', status: 503 };
    if (res.headersSent) {
      res.destroy();
      return m.status;
    }
    const body = `${m.header}: ${err.message}\n`;
    res.writeHead(m.status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), 'x-weft-error': m.header });
    res.end(body);
    return m.status;
  }

  private finish(req: http.IncomingMessage, res: http.ServerResponse, ctx: ConnContext, cluster: Cluster | undefined, ep: Endpoint | undefined, err: WeftError, started: number, attempts: number): void {
    const status = this.answerError(res, err);
    this.logAccess(req, ctx, cluster, ep, status, started, attempts, err.code, err.message);
    // Drain an unread request body so the connection stays usable.
    if (!req.complete) req.resume();
  }

  private logAccess(req: http.IncomingMessage, ctx: ConnContext, cluster: Cluster | undefined, ep: Endpoint | undefined, status: number, started: number, attempts: number, error?: WeftErrorCode, reason?: string): void {
    const secs = (performance.now() - started) / 1000;
    const service = cluster?.serviceName ?? (ctx.target.kind === 'service' ? `${ctx.target.service.namespace}/${ctx.target.service.name}` : 'unknown');
    const src = sourceLabels(ctx);
    const code = String(status);
    const security = ep ? this.deps.transport.securityOf(ep) : 'none';
    this.deps.metrics.requests.inc({ ...src, destination_service: service, destination_workload: ep?.info.workload ?? 'unknown', response_code: code, connection_security_policy: security });
    this.deps.metrics.requestDuration.observe({ ...src, destination_service: service, response_code: code }, secs);
    this.log.info(
      {
        src_workload: ctx.source ? `${ctx.source.namespace}/${ctx.source.name}` : undefined,
        src_ip: ctx.sourceIp,
        method: req.method,
        path: req.url,
        host: req.headers.host,
        dst: `${ctx.origIp}:${ctx.origPort}`,
        dst_service: service,
        dst_workload: ep ? `${ep.info.namespace}/${ep.info.workload}` : undefined,
        endpoint: ep?.id,
        status,
        attempts,
        duration_ms: Math.round(secs * 100000) / 100,
        error: error ? HTTP_ERRORS[error]?.header ?? error : undefined,
        reason,
        security,
      },
      'access',
    );
  }

  /** WebSocket and other upgrades: an L4 splice to one endpoint after forwarding the request head. */
  private handleUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const ctx = (socket as CtxSocket)[kCtx]!;
    let adm: Admission;
    try {
      adm = admit(this.deps.clusters, ctx.target);
    } catch (err) {
      const m = HTTP_ERRORS[(err as WeftError).code] ?? { header: 'no_healthy_upstream', status: 503 };
      socket.end(`HTTP/1.1 ${m.status} ${http.STATUS_CODES[m.status]}\r\nx-weft-error: ${m.header}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
      return;
    }
    const cluster = adm.cluster;
    const ep = cluster.pick({});
    if (!ep) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nx-weft-error: no_healthy_upstream\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    ep.active++;
    this.deps.transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source: ctx.source }).then(
      (up) => {
        settle(adm, true);
        let headText = `${req.method} ${req.url} HTTP/1.1\r\n`;
        for (let i = 0; i < req.rawHeaders.length; i += 2) headText += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
        up.write(headText + '\r\n');
        if (head.length) up.write(head);
        socket.pipe(up);
        up.pipe(socket);
        const close = () => {
          socket.destroy();
          up.destroy();
        };
        socket.on('error', close);
        up.on('error', close);
        up.once('close', () => {
          ep.active--;
          socket.end();
        });
      },
      (err: Error) => {
        ep.active--;
        settle(adm, false);
        cluster.report(ep, 'connect-failure', 0);
        this.log.warn({ endpoint: ep.id, err: err.message }, 'upgrade connect failed');
        socket.end('HTTP/1.1 503 Service Unavailable\r\nx-weft-error: connect_failure\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      },
    );
  }
}

function isGateway(status: number): boolean {
  return status === 502 || status === 503 || status === 504;
}

function classify(err: Error & { code?: string }): { kind: 'connect-failure' | 'reset'; code: WeftErrorCode } {
  if (err instanceof WeftError && err.code === 'WEFT_ERR_CONNECT_FAILURE') return { kind: 'connect-failure', code: 'WEFT_ERR_CONNECT_FAILURE' };
  const c = err.code ?? '';
  if (c === 'ECONNREFUSED' || c === 'EHOSTUNREACH' || c === 'ENETUNREACH' || c === 'UND_ERR_CONNECT_TIMEOUT' || c === 'ETIMEDOUT') {
    return { kind: 'connect-failure', code: 'WEFT_ERR_CONNECT_FAILURE' };
  }
  return { kind: 'reset', code: 'WEFT_ERR_UPSTREAM_RESET' };
}

/** Request headers to send upstream: hop-by-hop ones (and those named in Connection) removed. */
export function forwardHeaders(raw: string[]): string[] {
  let extra: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === 'connection') {
      for (const t of raw[i + 1]!.split(',')) {
        const n = t.trim().toLowerCase();
        if (n && n !== 'close' && n !== 'keep-alive') (extra ??= new Set()).add(n);
      }
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(k) || extra?.has(k) || k === 'expect') continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

function responseHeaders(raw: Buffer[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toString('latin1');
    const lk = k.toLowerCase();
    if (HOP_BY_HOP.has(lk)) continue;
    out.push(k, raw[i + 1]!.toString('latin1'));
  }
  return out;
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
