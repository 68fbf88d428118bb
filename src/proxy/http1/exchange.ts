/**
 * The HTTP/1.1 codec of one request: its parsed head, body framing, and the byte plumbing
 * between the downstream connection and a pooled upstream one. The L7 stages (route,
 * admission, attempt, retry, respond) are the pipeline's (../l7/call.ts); this class is its
 * request source and response sink for HTTP/1.1. The common path (one try, a pooled
 * connection, a Content-Length answer) allocates this object, its head strings and little else.
 */
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Cluster } from '../../cluster/cluster.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { HeaderModifier, RetryPolicy } from '../../config/types.js';
import { modifyHeaderLines, modifyHeaders } from '../l7/routes/filters.js';
import { WeftError } from '../../errors.js';
import type { ConnContext } from '../context.js';
import { L7Call, type CallHost } from '../l7/call.js';
import type { RequestView } from '../l7/request.js';
import { answerStatus, type Answer } from '../l7/respond.js';
import { canReplay, MAX_REPLAY_BODY_BYTES } from '../l7/retry.js';
import type { Downstream } from './downstream.js';
import type { EndpointPool, UpstreamConn, UpstreamUser } from './upstream.js';
import { headerObject, rawResponseHead, scanRequestHead, simpleResponse, withoutHeaders, type RequestHeadFields } from './head.js';

/** Requests whose body fits here are buffered, so that they can be retried. */
export const REPLAY_LIMIT = MAX_REPLAY_BODY_BYTES;
/** Body bytes buffered while no upstream connection is ready yet, before reading pauses. */
const BODY_HWM = 64 * 1024;
/**
 * An answer with a Content-Length up to this whose body comes in the same upstream read as
 * its head goes to the client as one buffer, head and body copied together: one plain write
 * instead of a corked pair flushed by `writev` (floor step 4, docs/benchmarks/l7-cost.md).
 */
const JOIN_BODY_BYTES = 16 * 1024;

/** What the HTTP/1.1 codec needs from the proxy that runs it, beyond the pipeline's host. */
export interface ExchangeHost extends CallHost {
  /** A coarse clock (ms), updated by the sweeper. */
  readonly clock: number;
  poolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): EndpointPool;
  malformed(down: Downstream, err: Error & { code?: string }): void;
  downstreamError(down: Downstream, err: Error): void;
  forget(down: Downstream): void;
  /** Upgraded connections (spliced) are tracked for shutdown. */
  spliced(a: Duplex, b: Duplex): void;
  /** The client spoke the HTTP/2 preface: serve the connection as HTTP/2 (`first`: bytes read so far). */
  acceptH2(sock: Duplex, ctx: ConnContext, first: Buffer): void;
}

const BODY_NONE = 0;
const BODY_LENGTH = 1;
const BODY_CHUNKED = 2;

const RESP_RAW = 0;
const RESP_CHUNKED = 1;
const RESP_NONE = 2;

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

/**
 * The request view of an HTTP/1.1 exchange. The header object is built on first use: routing
 * and authorization read method, authority and path on every request, the headers only when
 * a route matches on them or a JWT rule applies (building it was 3.5% of the L7 path's CPU).
 */
class Http1View implements RequestView {
  readonly method: string;
  readonly authority: string | undefined;
  readonly path: string;
  readonly grpc = false;
  private headers_: Record<string, string> | undefined = undefined;
  constructor(private readonly ex: Exchange) {
    this.method = ex.method;
    this.authority = ex.host;
    this.path = ex.path;
  }
  get headers(): Record<string, string> {
    return (this.headers_ ??= headerObject(this.ex.headers));
  }
}

export class Exchange extends L7Call implements UpstreamUser, RequestHeadFields {
  // --- the request head ---
  readonly down: Downstream;
  readonly ctx: ConnContext;
  readonly method: string;
  /** The request target as sent. */
  readonly path: string;
  readonly versionMinor: number;
  readonly headers: string[];
  readonly keepAlive: boolean;
  /**
   * An upgrade the destination allows (l7/upgrade.ts): the `Upgrade` value forwarded; the
   * connection is spliced only if the upstream answers 101. Undefined for every other
   * request (an Upgrade header it carried was dropped).
   */
  readonly upgrade: string | undefined;
  /** The head was refused by normalization (l7/normalize.ts): answered 400 and the connection closed. */
  rejectReason: string | undefined = undefined;
  readonly headRequest: boolean;
  readonly protocol = 'http/1.1';
  contentLength = -1;
  transferEncoding: string | undefined = undefined;
  lines = '';
  connClose = false;
  host: string | undefined = undefined;
  expect: string | undefined = undefined;
  requestId: string | undefined = undefined;
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
  private replayable = true;
  private wantFullBody = false;
  private waitingBody = false;
  private staleRetried = false;
  private upstreamHead: string | undefined = undefined;
  private view_: RequestView | undefined = undefined;
  /** The request target sent upstream when a route rewrote it (the access log keeps the received one). */
  private upstreamPath: string | undefined = undefined;

  // --- the upstream side ---
  private waitingPool: EndpointPool | undefined = undefined;
  private up: UpstreamConn | undefined = undefined;
  private streaming = false;
  private requestWritten = false;
  private upPaused = false;

  // --- the answer ---
  private respMode = RESP_RAW;
  private closeAfter = false;
  /** The response head, held until its body's first bytes (same read) to leave with them. */
  private heldHead: string | undefined = undefined;
  /** The client's socket was corked during the current upstream read (uncorked at its end). */
  private corked = false;

  constructor(down: Downstream, method: string, url: string, versionMinor: number, headers: string[], keepAlive: boolean, upgrade: string | undefined) {
    super();
    this.down = down;
    this.ctx = down.ctx;
    this.method = method;
    this.path = url;
    this.versionMinor = versionMinor;
    this.headers = headers;
    this.keepAlive = keepAlive;
    this.headRequest = method === 'HEAD';
    scanRequestHead(headers, this);
    if (this.requestId === undefined) {
      // Envoy's x-request-id: made here when the caller sent none, and passed upstream, so that
      // both agents and the application log the same id (docs/access-log.md).
      const id = randomUUID();
      this.requestId = id;
      headers.push('x-request-id', id);
      this.lines += `x-request-id: ${id}\r\n`;
    }
    // llhttp accepted the framing: a Transfer-Encoding on a request ends with chunked.
    this.bodyKind = this.transferEncoding !== undefined ? BODY_CHUNKED : this.contentLength > 0 ? BODY_LENGTH : BODY_NONE;
    this.bodyComplete = this.bodyKind === BODY_NONE;
    // An upgrade request with a body is served as plain HTTP (no upgrade type sends one by default).
    this.upgrade = this.bodyKind === BODY_NONE && method !== 'CONNECT' ? upgrade : undefined;
  }

  protected get callHost(): ExchangeHost {
    return this.down.host;
  }

  get conn(): Downstream {
    return this.down;
  }

  get authority(): string | undefined {
    return this.host;
  }

  get downSock(): Duplex {
    return this.down.sock;
  }

  readStart(): void {}

  /** The upstream read is done: a head still held leaves alone, and what was corked goes out. */
  readEnd(): void {
    const held = this.heldHead;
    const sock = this.down.sock;
    if (held !== undefined) {
      this.heldHead = undefined;
      if (!sock.destroyed) sock.write(held, 'latin1');
    }
    if (this.corked) {
      this.corked = false;
      sock.uncork();
    }
  }

  /**
   * Several writes for the client in this upstream read: let them leave together at its end.
   * Only between `readStart` and `readEnd` (the upstream connection calls both around every
   * parse of response bytes).
   */
  private corkDown(): Duplex {
    const sock = this.down.sock;
    if (!this.corked) {
      this.corked = true;
      sock.cork();
    }
    return sock;
  }

  // ---------------------------------------------------------------------------------------
  // The pipeline's hooks

  view(): RequestView {
    return (this.view_ ??= new Http1View(this));
  }

  protected headerValue(name: string): string | undefined {
    const lower = name.toLowerCase();
    let v: string | undefined;
    const h = this.headers;
    for (let i = 0; i < h.length; i += 2) {
      if (h[i]!.length === lower.length && h[i]!.toLowerCase() === lower) v = v === undefined ? h[i + 1]! : `${v},${h[i + 1]!}`;
    }
    return v;
  }

  protected override refuseEarly(): Answer | undefined {
    const t = this.ctx.target;
    const protocol = t.kind === 'service' ? t.port.protocol : t.protocol;
    if (protocol === 'http2' || protocol === 'grpc') return answerStatus(505, 'bad_request', `this destination speaks ${protocol}: HTTP/2 only (prior knowledge)`);
    if (this.rejectReason !== undefined) return answerStatus(400, 'bad_request', this.rejectReason);
    if (this.expect !== undefined && this.expect.toLowerCase() !== '100-continue') return answerStatus(417, 'bad_request', `unsupported expectation: ${this.expect}`);
    return undefined;
  }

  protected override planReplay(retries: RetryPolicy | undefined): boolean {
    if (this.bodyKind !== BODY_NONE) {
      // A small Content-Length body is buffered whole before the first try, so that a retry can send it again.
      if (retries !== undefined && retries.attempts > 0 && canReplay(this.method, this.contentLength, this.bodyKind === BODY_CHUNKED)) this.wantFullBody = true;
      else this.replayable = false;
    }
    return this.replayable;
  }

  protected canReplayNow(): boolean {
    return this.replayable;
  }

  protected removeHeaders(names: readonly string[]): void {
    const gone = new Set(names);
    this.lines = withoutHeaders(this.lines, gone);
    this.upstreamHead = undefined;
  }

  protected editRequest(target: string | undefined, mods: readonly HeaderModifier[]): void {
    if (target !== undefined) this.upstreamPath = target;
    if (mods.length === 0) return;
    let edited: string[] = this.headers;
    for (const m of mods) edited = modifyHeaders(edited, m);
    // The body's framing was read from the received head and stays as it was.
    const { contentLength, transferEncoding } = this;
    this.headers.length = 0;
    for (const x of edited) this.headers.push(x);
    scanRequestHead(this.headers, this);
    this.contentLength = contentLength;
    this.transferEncoding = transferEncoding;
    this.view_ = undefined;
    this.upstreamHead = undefined;
  }

  protected send(_ep: Endpoint): void {
    if (this.wantFullBody && !this.bodyComplete) {
      // Buffer the whole (small) body first, so that a retry can send it again.
      this.waitingBody = true;
      this.sendContinue();
      this.down.setBodyPaused(false);
      return;
    }
    this.acquire();
  }

  protected override prepareRetry(): void {
    this.requestWritten = false;
  }

  private acquire(): void {
    const pool = this.callHost.poolFor(this.ep!, this.cluster!, this.ctx);
    this.waitingPool = pool;
    if (!pool.acquire(this)) {
      this.waitingPool = undefined;
      this.refuse(new WeftError('WEFT_ERR_OVERFLOW', `pending request limit reached for ${this.cluster!.serviceName}`));
    }
  }

  /** Stop using the current upstream connection (or stop waiting for one). */
  protected dropUpstream(): void {
    this.gen++;
    this.waitingBody = false;
    if (this.waitingPool !== undefined) {
      this.waitingPool.cancel(this);
      this.waitingPool = undefined;
    }
    const conn = this.up;
    this.up = undefined;
    this.streaming = false;
    if (conn !== undefined) conn.destroy();
  }

  protected writeAnswer(a: Answer): void {
    const close = !this.keepAlive || !this.bodyComplete || this.down.lastBeforeClose || this.callHost.draining || this.rejectReason !== undefined;
    this.closeAfter = close;
    const sock = this.down.sock;
    if (sock.writable) {
      let extra = a.header === '' ? 'content-type: text/plain\r\n' : `content-type: text/plain\r\nx-weft-error: ${a.header}\r\n`;
      if (a.headers !== undefined) for (const [k, v] of a.headers) extra += `${k}: ${v}\r\n`;
      sock.write(simpleResponse(a.status, extra, a.header === '' ? `${a.message}\n` : `${a.header}: ${a.message}\n`, { head: this.headRequest, close, keepAlive10: this.versionMinor === 0 }));
    }
  }

  protected cut(): void {
    this.down.sock.destroy();
  }

  protected finished(): void {
    this.buffered = null;
    this.down.exchangeDone(this, this.closeAfter);
  }

  // ---------------------------------------------------------------------------------------
  // The upstream connection (UpstreamUser)

  waitingFor(pool: EndpointPool): boolean {
    return this.waitingPool === pool && !this.done;
  }

  onConn(conn: UpstreamConn): void {
    this.waitingPool = undefined;
    this.up = conn;
    this.upPaused = false;
    if (!this.bodyComplete) this.sendContinue();
    const sock = conn.sock;
    const head = (this.upstreamHead ??= this.buildUpstreamHead());
    const buffered = this.buffered;
    if (buffered === null && this.bodyComplete && this.bodyKind !== BODY_CHUNKED) {
      // The head is the whole request: one write, nothing to cork.
      sock.write(head, 'latin1');
      this.requestWritten = true;
      return;
    }
    sock.cork();
    sock.write(head, 'latin1');
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
    let head = `${this.method} ${this.upstreamPath ?? this.path} HTTP/1.1\r\n${this.lines}`;
    if (this.host === undefined) head += `host: ${this.ctx.origIp}:${this.ctx.origPort}\r\n`;
    if (this.upgrade !== undefined) {
      const settings = this.upgrade.toLowerCase().includes('h2c') ? this.headerValue('http2-settings') : undefined;
      head += settings !== undefined ? `connection: upgrade, http2-settings\r\nhttp2-settings: ${settings}\r\n` : 'connection: upgrade\r\n';
      head += `upgrade: ${this.upgrade}\r\n`;
    }
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
    this.tryFailed(err);
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
    this.malformedRequest('malformed request body');
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
    if (!this.responseHead(status, undefined)) return false;
    const v10 = this.versionMinor === 0;
    let close = !this.keepAlive || !this.bodyComplete || this.down.lastBeforeClose || this.callHost.draining;
    let head = `HTTP/1.1 ${status} ${conn.reason}\r\n${this.responseEdits === undefined ? conn.lines : modifyHeaderLines(conn.lines, this.responseEdits)}`;
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
    if (this.respMode === RESP_RAW && te === undefined && conn.contentLength > 0 && conn.contentLength <= JOIN_BODY_BYTES) this.heldHead = `${head}\r\n`;
    else this.corkDown().write(`${head}\r\n`, 'latin1');
    return true;
  }

  onResponseBody(chunk: Buffer): void {
    if (this.respMode === RESP_NONE || this.done) return;
    let ok: boolean;
    const held = this.heldHead;
    if (held !== undefined) {
      // Head and body in one buffer, one write (the head is latin1: a byte per character).
      this.heldHead = undefined;
      const n = held.length;
      const both = Buffer.allocUnsafe(n + chunk.length);
      both.write(held, 0, n, 'latin1');
      chunk.copy(both, n);
      ok = this.down.sock.write(both);
    } else if (this.respMode === RESP_CHUNKED) {
      const sock = this.corkDown();
      sock.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
      sock.write(chunk);
      ok = sock.write('\r\n', 'latin1');
    } else ok = this.down.sock.write(chunk);
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
      // One write: within an upstream read it joins what is corked; at the upstream's EOF it goes alone.
      this.down.sock.write(`${end}\r\n`, 'latin1');
    }
    this.up = undefined;
    if (this.upPaused) conn.sock.resume();
    // The connection goes back to the pool before the next request on this client connection starts.
    // A connection that was asked to upgrade and did not is not reused.
    conn.finish(conn.keepAlive && this.requestWritten && this.upgrade === undefined);
    this.responseDone(undefined);
  }

  onUpstreamError(err: Error, responseBytes: boolean): void {
    const conn = this.up;
    this.up = undefined;
    if (this.done) return;
    // A kept-alive connection the server closed just as we reused it: once, try a fresh one
    // (only when nothing says the server saw the request, and it can be sent again).
    if (!this.responseStarted && conn !== undefined && conn.served > 0 && !responseBytes && !this.staleRetried && this.replayable && !this.streaming && IDEMPOTENT.has(this.method)) {
      this.staleRetried = true;
      this.requestWritten = false;
      this.acquire();
      return;
    }
    this.streaming = false;
    this.upstreamFailed(err);
  }

  /** The client connection went away before the answer was complete. */
  onDownstreamClosed(): void {
    this.clientGone();
  }

  // ---------------------------------------------------------------------------------------
  // Upgrades (WebSocket): the request went the pipeline's way (route, authz, balancer, pool);
  // on a 101 the connection becomes an L4 splice to that endpoint

  /**
   * The upstream answered 101 to the upgrade request: pass the answer on and splice the two
   * connections. `rest` are the upstream's bytes after its 101 head (the new protocol's).
   */
  onSwitched(conn: UpstreamConn, headers: readonly string[], rest: Buffer): void {
    const host = this.callHost;
    const ep = this.ep!;
    const up = conn.handOver();
    this.up = undefined;
    this.endTry('success');
    this.settleAdm(true);
    this.responseStarted = true;
    this.status = 101;
    const down = this.down;
    const sock = down.sock;
    const { ended } = down.detach();
    const first = this.upgradeHead;
    this.upgradeHead = undefined;
    sock.write(rawResponseHead(101, conn.reason, headers), 'latin1');
    if (rest.length > 0) sock.write(rest);
    if (first !== undefined && first.length > 0) up.write(first);
    if (ended) up.end();
    // The splice holds the endpoint busy until it closes (least-request, draining).
    ep.active++;
    sock.pipe(up);
    up.pipe(sock);
    sock.resume();
    up.resume();
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
    this.complete(101);
  }
}
