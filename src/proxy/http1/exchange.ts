/**
 * One request through the forwarder, from its parsed head to the end of its answer:
 * admission (breaker, fallback), limits, the balancer, authorization, retries with budget
 * and backoff, per-try and whole-request timeouts, and the byte plumbing between the
 * downstream connection and a pooled upstream one. Written as a small state machine with
 * callbacks rather than promises: the common path (one try, a pooled connection, a
 * Content-Length answer) allocates this object, its head strings and little else.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Cluster } from '../../cluster/cluster.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { RetryPolicy } from '../../config/types.js';
import type { PickContext } from '../../balancer/types.js';
import { hashKey } from '../../balancer/hash.js';
import { HTTP_ERRORS, WeftError, type WeftErrorCode } from '../../errors.js';
import { outlierResultForStatus, type OutlierResult } from '../../health/outlier.js';
import { backoffDelay, isRetriable } from '../../resilience/retry.js';
import { admit, release, settle, type Admission } from '../route.js';
import type { ConnContext } from '../context.js';
import type { HttpProxyDeps } from '../http.js';
import type { Downstream } from './downstream.js';
import type { EndpointPool, UpstreamConn, UpstreamUser } from './upstream.js';
import { headerObject, rawRequestHead, scanRequestHead, simpleResponse, withoutHeaders, type RequestHeadFields } from './head.js';

/** Requests whose body fits here are buffered, so that they can be retried. */
export const REPLAY_LIMIT = 64 * 1024;
/** Body bytes buffered while no upstream connection is ready yet, before reading pauses. */
const BODY_HWM = 64 * 1024;

/** What the exchange needs from the proxy that runs it. */
export interface ExchangeHost {
  readonly deps: HttpProxyDeps;
  /** A coarse clock (ms), updated by the sweeper. */
  readonly clock: number;
  /** The proxy drains: answers say `connection: close`. */
  readonly draining: boolean;
  poolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): EndpointPool;
  requestStarted(): void;
  requestEnded(): void;
  /** Access log line and metrics for one answered request. */
  record(ex: Exchange, status: number, error?: WeftErrorCode, reason?: string): void;
  retried(cluster: Cluster): void;
  malformed(down: Downstream, err: Error & { code?: string }): void;
  downstreamError(down: Downstream, err: Error): void;
  /** A bug surfaced (an exception out of the forwarder's own code): logged and counted. */
  internalError(err: unknown): void;
  forget(down: Downstream): void;
  /** Upgraded connections (spliced) are tracked for shutdown. */
  spliced(a: Duplex, b: Duplex): void;
}

/** How one try ended without an answer for the client. */
interface AttemptFailure {
  kind: 'connect-failure' | 'reset' | 'timeout' | 'status';
  status?: number;
  error: WeftError;
  /** The retry budget was already charged for the retry this failure asks for. */
  paid?: boolean;
}

const BODY_NONE = 0;
const BODY_LENGTH = 1;
const BODY_CHUNKED = 2;

const RESP_RAW = 0;
const RESP_CHUNKED = 1;
const RESP_NONE = 2;

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
const EMPTY_PICK: PickContext = {};

/** The request as the authorizer sees it (the shape of the IncomingMessage fields it reads). */
export interface RequestView {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

export class Exchange implements UpstreamUser, RequestHeadFields {
  // --- the request head ---
  readonly down: Downstream;
  readonly method: string;
  readonly url: string;
  readonly versionMinor: number;
  readonly headers: string[];
  readonly keepAlive: boolean;
  readonly upgrade: boolean;
  readonly headRequest: boolean;
  contentLength = -1;
  transferEncoding: string | undefined = undefined;
  lines = '';
  connClose = false;
  host: string | undefined = undefined;
  expect: string | undefined = undefined;
  /** 0 none, 1 Content-Length, 2 chunked. */
  readonly bodyKind: number;

  // --- the request body ---
  private buffered: Buffer[] | null = null;
  private bufferedBytes = 0;
  bodyComplete: boolean;
  trailers: string[] | undefined = undefined;
  /** Bytes after an upgrade request's head (the new protocol's first bytes). */
  upgradeHead: Buffer | undefined = undefined;
  private continueSent = false;

  // --- routing state ---
  started = false;
  private done = false;
  startedAt = 0;
  cluster: Cluster | undefined = undefined;
  ep: Endpoint | undefined = undefined;
  attempts = 0;
  private adm: Admission | undefined = undefined;
  private admOpen = false;
  private holdsRequest = false;
  private counted = false;
  private retries: RetryPolicy | undefined = undefined;
  private replayable = true;
  private wantFullBody = false;
  private maxAttempts = 1;
  private attemptNo = 0;
  private deadline = Infinity;
  private tryDeadline = Infinity;
  private hash: number | undefined = undefined;
  private tried: Set<Endpoint> | undefined = undefined;
  private lastFailure: AttemptFailure | undefined = undefined;
  private epActive = false;
  private t0 = 0;
  private gen = 0;
  private timer: NodeJS.Timeout | undefined = undefined;
  private backingOff = false;
  private waitingPool: EndpointPool | undefined = undefined;
  private waitingBody = false;
  private staleRetried = false;
  private upstreamHead: string | undefined = undefined;
  private view: (RequestView & { built: number }) | undefined = undefined;

  // --- the upstream side ---
  private up: UpstreamConn | undefined = undefined;
  private streaming = false;
  private requestWritten = false;
  private upPaused = false;

  // --- the answer ---
  private responseStarted = false;
  status = 0;
  private respMode = RESP_RAW;
  private closeAfter = false;

  constructor(down: Downstream, method: string, url: string, versionMinor: number, headers: string[], keepAlive: boolean, upgrade: boolean) {
    this.down = down;
    this.method = method;
    this.url = url;
    this.versionMinor = versionMinor;
    this.headers = headers;
    this.keepAlive = keepAlive;
    this.upgrade = upgrade;
    this.headRequest = method === 'HEAD';
    scanRequestHead(headers, this);
    // llhttp accepted the framing: a Transfer-Encoding on a request ends with chunked.
    this.bodyKind = this.transferEncoding !== undefined ? BODY_CHUNKED : this.contentLength > 0 ? BODY_LENGTH : BODY_NONE;
    this.bodyComplete = this.bodyKind === BODY_NONE;
  }

  private get host_(): ExchangeHost {
    return this.down.host;
  }

  get ctx(): ConnContext {
    return this.down.ctx;
  }

  get downSock(): Duplex {
    return this.down.sock;
  }

  // ---------------------------------------------------------------------------------------
  // Routing

  start(): void {
    this.started = true;
    const host = this.host_;
    host.requestStarted();
    this.counted = true;
    this.startedAt = performance.now();
    if (this.expect !== undefined && this.expect.toLowerCase() !== '100-continue') {
      this.answerStatus(417, 'bad_request', `unsupported expectation: ${this.expect}`);
      return;
    }
    const cluster = this.admitTarget();
    if (!cluster) return;
    if (!cluster.limits.tryStartRequest()) {
      this.releaseAdm();
      this.answerError(new WeftError('WEFT_ERR_OVERFLOW', `request limit reached for ${cluster.serviceName}`));
      return;
    }
    this.holdsRequest = true;
    const policy = cluster.policy;
    const retries = (this.retries = policy.retries);
    if (this.bodyKind !== BODY_NONE) {
      if (retries !== undefined && retries.attempts > 0 && this.bodyKind === BODY_LENGTH && this.contentLength <= REPLAY_LIMIT) this.wantFullBody = true;
      else this.replayable = false;
    }
    this.maxAttempts = 1 + (retries !== undefined && this.replayable ? retries.attempts : 0);
    this.deadline = policy.timeout > 0 ? this.startedAt + policy.timeout : Infinity;
    const hashOn = policy.loadBalancer.hashOn;
    if (hashOn?.header) {
      const v = this.headerValue(hashOn.header);
      if (v !== undefined) this.hash = hashKey(v);
    } else if (hashOn?.sourceIp) this.hash = hashKey(this.ctx.sourceIp);
    this.pickAndSend();
  }

  private headerValue(name: string): string | undefined {
    const lower = name.toLowerCase();
    let v: string | undefined;
    const h = this.headers;
    for (let i = 0; i < h.length; i += 2) {
      if (h[i]!.length === lower.length && h[i]!.toLowerCase() === lower) v = v === undefined ? h[i + 1]! : `${v},${h[i + 1]!}`;
    }
    return v;
  }

  private pickAndSend(): void {
    if (this.done) return;
    const cluster = this.cluster!;
    const ctx = this.tried !== undefined || this.hash !== undefined ? { hash: this.hash, tried: this.tried } : EMPTY_PICK;
    const ep = cluster.pick(ctx);
    if (ep === undefined) {
      this.lastFailure = { kind: 'connect-failure', error: new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${cluster.serviceName}`) };
      this.giveUp();
      return;
    }
    this.ep = ep;
    const authorize = this.host_.deps.authorize;
    if (authorize !== undefined && ep.info.local) {
      const gen = ++this.gen;
      let verdict: ReturnType<typeof authorize>;
      try {
        verdict = authorize(this.ctx, ep, this.authzView() as unknown as IncomingMessage);
      } catch (err) {
        verdict = Promise.reject(err);
      }
      if (verdict instanceof Promise) {
        verdict.then(
          (v) => {
            if (gen === this.gen && !this.done) this.afterAuthz(ep, v);
          },
          (err: Error) => {
            if (gen !== this.gen || this.done) return;
            this.host_.deps.log.error({ err }, 'authorization failed');
            this.releaseAdm();
            this.answerError(new WeftError('WEFT_ERR_DENIED', 'authorization failed'));
          },
        );
        return;
      }
      this.afterAuthz(ep, verdict);
      return;
    }
    this.afterAuthz(ep, undefined);
  }

  /** The request as the authorizer reads it; changes it makes to `headers` reach the upstream. */
  private authzView(): RequestView {
    if (this.view === undefined) {
      const headers = headerObject(this.headers);
      this.view = { method: this.method, url: this.url, headers, built: Object.keys(headers).length };
    }
    return this.view;
  }

  private afterAuthz(ep: Endpoint, denied: WeftError | undefined): void {
    if (denied !== undefined) {
      this.releaseAdm();
      this.answerError(denied);
      return;
    }
    const view = this.view;
    if (view !== undefined && Object.keys(view.headers).length !== view.built) {
      // The authorizer removed headers (a JWT that must not be forwarded).
      const gone = new Set<string>();
      for (let i = 0; i < this.headers.length; i += 2) {
        const k = this.headers[i]!.toLowerCase();
        if (!(k in view.headers)) gone.add(k);
      }
      this.lines = withoutHeaders(this.headers, this.lines, gone);
      view.built = Object.keys(view.headers).length;
      this.upstreamHead = undefined;
    }
    const cluster = this.cluster!;
    this.attempts++;
    if (this.attemptNo === 0) cluster.retryBudget?.recordRequest();
    ep.active++;
    this.epActive = true;
    const t0 = (this.t0 = performance.now());
    const perTry = this.retries?.perTryTimeout ?? 0;
    this.tryDeadline = perTry > 0 ? Math.min(this.deadline, t0 + perTry) : this.deadline;
    if (this.tryDeadline !== Infinity) this.armTimer(this.tryDeadline - t0);
    if (this.wantFullBody && !this.bodyComplete) {
      // Buffer the whole (small) body first, so that a retry can send it again.
      this.waitingBody = true;
      this.sendContinue();
      this.down.setBodyPaused(false);
      return;
    }
    this.acquire();
  }

  private acquire(): void {
    const ep = this.ep!;
    const pool = this.host_.poolFor(ep, this.cluster!, this.ctx);
    this.waitingPool = pool;
    if (!pool.acquire(this)) {
      this.waitingPool = undefined;
      this.endAttempt(undefined);
      this.releaseAdm();
      this.answerError(new WeftError('WEFT_ERR_OVERFLOW', `pending request limit reached for ${this.cluster!.serviceName}`));
    }
  }

  waitingFor(pool: EndpointPool): boolean {
    return this.waitingPool === pool && !this.done;
  }

  onConn(conn: UpstreamConn): void {
    this.waitingPool = undefined;
    this.up = conn;
    this.upPaused = false;
    if (!this.bodyComplete) this.sendContinue();
    const sock = conn.sock;
    sock.cork();
    sock.write((this.upstreamHead ??= this.buildUpstreamHead()), 'latin1');
    const buffered = this.buffered;
    if (buffered !== null) {
      for (let i = 0; i < buffered.length; i++) this.writeBody(sock, buffered[i]!);
      if (!this.replayable) {
        this.buffered = null;
        this.bufferedBytes = 0;
      }
    }
    if (this.bodyComplete) {
      this.writeBodyEnd(sock);
      this.requestWritten = true;
    } else {
      this.streaming = true;
      this.down.setBodyPaused(false);
    }
    sock.uncork();
  }

  private buildUpstreamHead(): string {
    let head = `${this.method} ${this.url} HTTP/1.1\r\n${this.lines}`;
    if (this.host === undefined) head += `host: ${this.ctx.origIp}:${this.ctx.origPort}\r\n`;
    if (this.bodyKind === BODY_LENGTH) head += `content-length: ${this.contentLength}\r\n`;
    else if (this.bodyKind === BODY_CHUNKED) head += `transfer-encoding: ${this.transferEncoding!}\r\n`;
    return `${head}\r\n`;
  }

  private writeBody(sock: Duplex, part: Buffer): boolean {
    if (this.bodyKind === BODY_CHUNKED) {
      sock.write(`${part.length.toString(16)}\r\n`, 'latin1');
      sock.write(part);
      return sock.write('\r\n', 'latin1');
    }
    return sock.write(part);
  }

  private writeBodyEnd(sock: Duplex): void {
    if (this.bodyKind !== BODY_CHUNKED) return;
    let end = '0\r\n';
    const t = this.trailers;
    if (t !== undefined) for (let i = 0; i < t.length; i += 2) end += `${t[i]!}: ${t[i + 1]!}\r\n`;
    sock.write(`${end}\r\n`, 'latin1');
  }

  /** `Expect: 100-continue`: tell the client to send its body once we are ready to read it. */
  private sendContinue(): void {
    if (this.continueSent || this.expect === undefined || this.versionMinor === 0) return;
    this.continueSent = true;
    this.down.sock.write('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');
  }

  onConnFailed(err: Error): void {
    this.waitingPool = undefined;
    const { kind, code } = classify(err);
    this.failAttempt({ kind, error: new WeftError(code, `${this.ep!.id}: ${err.message}`, { cause: err }) }, kind === 'connect-failure' ? 'connect-failure' : 'reset');
  }

  // ---------------------------------------------------------------------------------------
  // The request body, from the downstream

  onBodyChunk(part: Buffer, last: boolean): void {
    if (!this.done) {
      if (this.streaming) {
        if (!this.writeBody(this.up!.sock, part)) this.down.setBodyPaused(true);
      } else {
        (this.buffered ??= []).push(part);
        this.bufferedBytes += part.length;
        if (!this.wantFullBody && this.bufferedBytes >= BODY_HWM) this.down.setBodyPaused(true);
      }
    }
    if (last) this.onBodyEnd();
  }

  onBodyEnd(): void {
    this.bodyComplete = true;
    if (this.done) return;
    if (this.streaming) {
      this.streaming = false;
      this.writeBodyEnd(this.up!.sock);
      this.requestWritten = true;
    } else if (this.waitingBody) {
      this.waitingBody = false;
      this.acquire();
    }
  }

  /** The request body turned out malformed after the request went upstream. */
  onMalformedBody(): void {
    if (this.done) return;
    this.bodyComplete = true;
    this.closeAfter = true;
    this.dropUpstream();
    this.endAttempt(undefined);
    this.releaseAdm();
    if (this.responseStarted) {
      this.down.sock.destroy();
      this.complete(this.status, 'WEFT_ERR_BAD_REQUEST', 'malformed request body');
    } else this.answerError(new WeftError('WEFT_ERR_BAD_REQUEST', 'malformed request body'));
  }

  onUpstreamDrain(): void {
    if (this.streaming) this.down.setBodyPaused(false);
  }

  // ---------------------------------------------------------------------------------------
  // The response, from the upstream

  onInterim(conn: UpstreamConn): void {
    // 100 Continue is ours to send (see sendContinue); other 1xx go to HTTP/1.1 clients.
    if (conn.status === 100 || this.versionMinor === 0) return;
    this.down.sock.write(`HTTP/1.1 ${conn.status} ${conn.reason}\r\n${conn.lines}\r\n`, 'latin1');
  }

  onResponseHead(conn: UpstreamConn): boolean {
    const status = conn.status;
    const rp = this.retries;
    // Discard a retriable answer only when the retry will really happen (budget charged
    // now); otherwise the client gets the upstream's own answer.
    if (rp !== undefined && this.attemptNo < this.maxAttempts - 1 && status >= 300 && isRetriable(rp, { kind: 'status', status }) && performance.now() + rp.backoff.base < this.deadline && this.cluster!.retryBudget?.tryRetry()) {
      this.dropUpstream();
      this.endAttempt(outlierResultForStatus(status));
      this.lastFailure = { kind: 'status', status, paid: true, error: new WeftError('WEFT_ERR_UPSTREAM_RESET', `upstream answered ${status}`) };
      this.nextAttempt();
      return false;
    }
    this.responseStarted = true;
    this.status = status;
    const v10 = this.versionMinor === 0;
    let close = !this.keepAlive || !this.bodyComplete || this.down.closing || this.host_.draining;
    let head = `HTTP/1.1 ${status} ${conn.reason}\r\n${conn.lines}`;
    const te = conn.transferEncoding;
    if (this.headRequest || status === 204 || status === 304) {
      // No body; the framing headers still describe the entity.
      this.respMode = RESP_NONE;
      if (status !== 204) {
        if (conn.contentLength >= 0) head += `content-length: ${conn.contentLength}\r\n`;
        else if (te !== undefined && !v10) head += `transfer-encoding: ${te}\r\n`;
      }
    } else if (conn.contentLength >= 0 && te === undefined) {
      this.respMode = RESP_RAW;
      head += `content-length: ${conn.contentLength}\r\n`;
    } else if (v10) {
      // An HTTP/1.0 client reads until the connection closes.
      this.respMode = RESP_RAW;
      close = true;
    } else if (te === undefined || conn.chunked) {
      this.respMode = RESP_CHUNKED;
      head += te === undefined ? 'transfer-encoding: chunked\r\n' : `transfer-encoding: ${te}\r\n`;
    } else {
      // A transfer coding without chunked: the body runs to the end of the connection, here too.
      this.respMode = RESP_RAW;
      head += `transfer-encoding: ${te}\r\n`;
      close = true;
    }
    if (close) head += 'connection: close\r\n';
    else if (v10) head += 'connection: keep-alive\r\n';
    this.closeAfter = close;
    this.down.sock.write(`${head}\r\n`, 'latin1');
    return true;
  }

  onResponseBody(chunk: Buffer): void {
    if (this.respMode === RESP_NONE || this.done) return;
    const sock = this.down.sock;
    let ok: boolean;
    if (this.respMode === RESP_CHUNKED) {
      sock.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
      sock.write(chunk);
      ok = sock.write('\r\n', 'latin1');
    } else ok = sock.write(chunk);
    if (!ok && !this.upPaused && this.up !== undefined) {
      this.upPaused = true;
      this.up.sock.pause();
    }
  }

  onDownstreamDrain(): void {
    if (this.upPaused && this.up !== undefined) {
      this.upPaused = false;
      this.up.sock.resume();
    }
  }

  onResponseEnd(conn: UpstreamConn): void {
    if (this.respMode === RESP_CHUNKED) {
      let end = '0\r\n';
      const t = conn.trailers;
      if (t !== undefined) for (let i = 0; i < t.length; i += 2) end += `${t[i]!}: ${t[i + 1]!}\r\n`;
      this.down.sock.write(`${end}\r\n`, 'latin1');
    }
    this.up = undefined;
    if (this.upPaused) conn.sock.resume();
    const status = this.status;
    this.endAttempt(outlierResultForStatus(status));
    this.settleAdm(status < 500);
    conn.finish(conn.keepAlive && this.requestWritten);
    this.complete(status);
  }

  onUpstreamError(err: Error, responseBytes: boolean): void {
    const conn = this.up;
    this.up = undefined;
    if (this.done) return;
    if (this.responseStarted) {
      // Too late for an error answer: cut the client connection so it sees a truncated response.
      this.endAttempt('reset');
      this.settleAdm(false);
      this.down.sock.destroy();
      this.complete(this.status, 'WEFT_ERR_UPSTREAM_RESET', err.message);
      return;
    }
    // A kept-alive connection the server closed just as we reused it: once, try a fresh one
    // (only when nothing says the server saw the request, and it can be sent again).
    if (conn !== undefined && conn.served > 0 && !responseBytes && !this.staleRetried && this.replayable && !this.streaming && IDEMPOTENT.has(this.method)) {
      this.staleRetried = true;
      this.requestWritten = false;
      this.acquire();
      return;
    }
    this.streaming = false;
    const { kind, code } = classify(err);
    this.failAttempt({ kind, error: new WeftError(code, `${this.ep!.id}: ${err.message}`, { cause: err }) }, kind === 'connect-failure' ? 'connect-failure' : 'reset');
  }

  // ---------------------------------------------------------------------------------------
  // Tries, retries, timeouts

  private armTimer(ms: number): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.backingOff = false;
    this.timer = setTimeout(this.onTimer, Math.max(0, ms));
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    if (this.done) return;
    try {
      this.timerFired();
    } catch (err) {
      this.host_.internalError(err);
      this.down.sock.destroy();
    }
  };

  private timerFired(): void {
    if (this.backingOff) {
      this.backingOff = false;
      this.pickAndSend();
      return;
    }
    const whole = this.tryDeadline >= this.deadline;
    const ep = this.ep!;
    const ms = Math.round(whole ? this.deadline - this.startedAt : this.tryDeadline - this.t0);
    const err = new WeftError('WEFT_ERR_UPSTREAM_TIMEOUT', `upstream ${ep.id} did not answer within ${ms}ms`);
    this.waitingBody = false;
    this.dropUpstream();
    if (this.responseStarted) {
      this.endAttempt('timeout');
      this.settleAdm(false);
      this.down.sock.destroy();
      this.complete(this.status, err.code, err.message);
      return;
    }
    if (whole) {
      // The whole-request deadline is not retried.
      this.endAttempt('timeout');
      this.settleAdm(false);
      this.answerError(err);
      return;
    }
    this.failAttempt({ kind: 'timeout', error: err }, 'timeout');
  }

  /** Stop using the current upstream connection (or stop waiting for one). */
  private dropUpstream(): void {
    this.gen++;
    if (this.waitingPool !== undefined) {
      this.waitingPool.cancel(this);
      this.waitingPool = undefined;
    }
    const conn = this.up;
    this.up = undefined;
    this.streaming = false;
    if (conn !== undefined) conn.destroy();
  }

  /** The current try is over: report it to the endpoint's statistics (unless `result` is undefined). */
  private endAttempt(result: OutlierResult | undefined): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (!this.epActive) return;
    this.epActive = false;
    const ep = this.ep!;
    ep.active--;
    if (result !== undefined) this.cluster!.report(ep, result, performance.now() - this.t0);
  }

  private failAttempt(f: AttemptFailure, result: OutlierResult): void {
    this.endAttempt(result);
    this.lastFailure = f;
    const rp = this.retries;
    if (rp === undefined || this.attemptNo >= this.maxAttempts - 1) {
      this.settleAdm(false);
      this.answerError(f.error);
      return;
    }
    if (!isRetriable(rp, f.kind === 'status' ? { kind: 'status', status: f.status } : { kind: f.kind }) || performance.now() >= this.deadline) {
      this.giveUp();
      return;
    }
    this.nextAttempt();
  }

  private nextAttempt(): void {
    const rp = this.retries!;
    const cluster = this.cluster!;
    this.attemptNo++;
    if (this.attemptNo >= this.maxAttempts) {
      this.giveUp();
      return;
    }
    (this.tried ??= new Set()).add(this.ep!);
    if (!this.lastFailure?.paid && !cluster.retryBudget?.tryRetry()) {
      this.giveUp();
      return;
    }
    this.host_.retried(cluster);
    this.requestWritten = false;
    const delay = backoffDelay(this.attemptNo, rp.backoff.base, rp.backoff.max);
    if (performance.now() + delay >= this.deadline) {
      this.giveUp();
      return;
    }
    if (delay > 0) {
      if (this.timer !== undefined) clearTimeout(this.timer);
      this.backingOff = true;
      this.timer = setTimeout(this.onTimer, delay);
      return;
    }
    this.pickAndSend();
  }

  private giveUp(): void {
    this.settleAdm(false);
    const cluster = this.cluster!;
    this.answerError(this.lastFailure?.error ?? new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${cluster.serviceName}`));
  }

  /**
   * Admits the request to its target's cluster (route.ts: breaker, fallback) and holds the
   * admission until settled or released; or answers the refusal and returns undefined.
   */
  private admitTarget(): Cluster | undefined {
    let adm: Admission;
    try {
      adm = admit(this.host_.deps.clusters, this.ctx.target);
    } catch (err) {
      this.answerError(asWeftError(err));
      return undefined;
    }
    this.adm = adm;
    this.admOpen = true;
    return (this.cluster = adm.cluster);
  }

  private settleAdm(ok: boolean): void {
    if (!this.admOpen) return;
    this.admOpen = false;
    settle(this.adm!, ok);
  }

  private releaseAdm(): void {
    if (!this.admOpen) return;
    this.admOpen = false;
    release(this.adm!);
  }

  // ---------------------------------------------------------------------------------------
  // Ends

  /** The client connection went away before the answer was complete. */
  onDownstreamClosed(): void {
    if (this.done) return;
    this.dropUpstream();
    // Not the endpoint's fault: no outlier report, no breaker verdict.
    this.endAttempt(undefined);
    this.releaseAdm();
    this.complete(this.responseStarted ? this.status : 0, undefined, 'client closed the connection');
  }

  private answerError(err: WeftError): void {
    const m = HTTP_ERRORS[err.code] ?? { header: 'upstream_reset', status: 503 };
    this.answerStatus(m.status, m.header, err.message, err.code);
  }

  private answerStatus(status: number, header: string, message: string, code?: WeftErrorCode): void {
    if (this.done) return;
    this.dropUpstream();
    this.endAttempt(undefined);
    if (this.responseStarted) {
      this.down.sock.destroy();
      this.complete(this.status, code, message);
      return;
    }
    const close = !this.keepAlive || !this.bodyComplete || this.down.closing || this.host_.draining || this.upgrade;
    this.closeAfter = close;
    this.status = status;
    const sock = this.down.sock;
    if (sock.writable) {
      sock.write(simpleResponse(status, `content-type: text/plain\r\nx-weft-error: ${header}\r\n`, `${header}: ${message}\n`, { head: this.headRequest, close, keepAlive10: this.versionMinor === 0 }));
    }
    this.complete(status, code ?? 'WEFT_ERR_BAD_REQUEST', message);
  }

  private complete(status: number, error?: WeftErrorCode, reason?: string): void {
    if (this.done) return;
    this.done = true;
    this.gen++;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.holdsRequest) {
      this.holdsRequest = false;
      this.cluster!.limits.endRequest();
    }
    const host = this.host_;
    if (this.counted) {
      this.counted = false;
      host.requestEnded();
    }
    this.buffered = null;
    host.record(this, status, error, reason);
    this.down.exchangeDone(this, this.closeAfter);
  }

  // ---------------------------------------------------------------------------------------
  // Upgrades (WebSocket): an L4 splice to one endpoint after the request head

  startUpgrade(): void {
    this.started = true;
    this.startedAt = performance.now();
    if (this.method === 'CONNECT') {
      this.answerStatus(400, 'bad_request', 'CONNECT is not supported through the mesh');
      return;
    }
    const host = this.host_;
    const cluster = this.admitTarget();
    if (!cluster) return;
    const ep = cluster.pick(EMPTY_PICK);
    if (ep === undefined) {
      this.releaseAdm();
      this.answerError(new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${cluster.serviceName}`));
      return;
    }
    this.ep = ep;
    const authorize = host.deps.authorize;
    const go = (denied: WeftError | undefined) => {
      if (this.done || this.down.closed) return;
      if (denied !== undefined) {
        this.releaseAdm();
        this.answerError(denied);
        return;
      }
      this.connectUpgrade(ep);
    };
    if (authorize !== undefined && ep.info.local) {
      let verdict: ReturnType<typeof authorize>;
      try {
        verdict = authorize(this.ctx, ep, this.authzView() as unknown as IncomingMessage);
      } catch (err) {
        verdict = Promise.reject(err);
      }
      if (verdict instanceof Promise) verdict.then(go, () => go(new WeftError('WEFT_ERR_DENIED', 'authorization failed')));
      else go(verdict);
    } else go(undefined);
  }

  private connectUpgrade(ep: Endpoint): void {
    const host = this.host_;
    const cluster = this.cluster!;
    ep.active++;
    this.attempts = 1;
    const t0 = performance.now();
    const src = this.ctx.source;
    host.deps.transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source: src ? { namespace: src.namespace, serviceAccount: src.serviceAccount } : undefined }).then(
      (up) => {
        const down = this.down;
        if (down.closed || this.done) {
          ep.active--;
          this.releaseAdm();
          up.destroy();
          return;
        }
        this.settleAdm(true);
        cluster.report(ep, 'success', performance.now() - t0);
        const sock = down.sock;
        const first = this.upgradeHead;
        down.detach();
        up.cork();
        up.write(rawRequestHead(this.method, this.url, this.view ? viewHeaders(this.headers, this.view.headers) : this.headers), 'latin1');
        if (first !== undefined && first.length > 0) up.write(first);
        up.uncork();
        this.done = true;
        // The access line waits for the upstream's answer to the upgrade request.
        up.once('data', (d: Buffer) => host.record(this, statusOf(d)));
        sock.pipe(up);
        up.pipe(sock);
        sock.resume();
        host.spliced(sock, up);
        const close = () => {
          sock.destroy();
          up.destroy();
        };
        sock.on('error', close);
        up.on('error', close);
        sock.once('close', () => up.destroy());
        up.once('close', () => {
          ep.active--;
          sock.end();
        });
      },
      (err: Error) => {
        ep.active--;
        cluster.report(ep, 'connect-failure', performance.now() - t0);
        this.settleAdm(false);
        host.deps.log.warn({ endpoint: ep.id, err: err.message }, 'upgrade connect failed');
        this.answerError(new WeftError('WEFT_ERR_CONNECT_FAILURE', `${ep.id}: ${err.message}`, { cause: err }));
      },
    );
  }
}

/** Raw headers minus those the authorizer removed from its view. */
function viewHeaders(raw: string[], kept: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() in kept) out.push(raw[i]!, raw[i + 1]!);
  return out;
}

function statusOf(d: Buffer): number {
  // "HTTP/1.1 101 ..."
  if (d.length >= 12 && d[0] === 0x48) {
    const n = Number(d.toString('latin1', 9, 12));
    if (Number.isInteger(n)) return n;
  }
  return 0;
}

function asWeftError(err: unknown): WeftError {
  return err instanceof WeftError ? err : new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', (err as Error).message);
}

function classify(err: Error & { code?: string }): { kind: 'connect-failure' | 'reset'; code: WeftErrorCode } {
  if (err instanceof WeftError && err.code === 'WEFT_ERR_CONNECT_FAILURE') return { kind: 'connect-failure', code: 'WEFT_ERR_CONNECT_FAILURE' };
  const c = err.code ?? '';
  if (c === 'ECONNREFUSED' || c === 'EHOSTUNREACH' || c === 'ENETUNREACH' || c === 'ETIMEDOUT') return { kind: 'connect-failure', code: 'WEFT_ERR_CONNECT_FAILURE' };
  return { kind: 'reset', code: 'WEFT_ERR_UPSTREAM_RESET' };
}

