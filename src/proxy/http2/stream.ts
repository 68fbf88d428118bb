/**
 * The HTTP/2 codec of one call (one downstream stream): the L7 pipeline's request source and
 * response sink for HTTP/2 (../l7/call.ts runs the stages). Upstream, a call goes out as an
 * HTTP/2 stream on a pooled session (`protocol: http2 | grpc`, upstream.ts) or as an
 * HTTP/1.1 request on the HTTP/1.1 pool (`protocol: http`: h2c clients, HTTP/1.1 servers).
 *
 * gRPC: the call's deadline is `grpc-timeout` (the smaller of it and the request timeout);
 * the request timeout bounds only the wait for the response head, so a long stream is not
 * cut unless the call set a deadline. A trailers-only answer's `grpc-status` decides retries;
 * the trailers' `grpc-status` counts for outlier detection and the breaker.
 *
 * The request body is held while it is small (at most MAX_REPLAY_BODY_BYTES): a retry
 * sends it again, also for a client-streaming call whose messages are still coming.
 */
import http2, { type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Cluster } from '../../cluster/cluster.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import { WeftError } from '../../errors.js';
import type { HeaderModifier } from '../../config/types.js';
import { modifyHeaderObject } from '../l7/routes/filters.js';
import type { ConnContext } from '../context.js';
import type { EndpointPool, UpstreamConn, UpstreamUser } from '../http1/upstream.js';
import { L7Call, type CallHost } from '../l7/call.js';
import type { RequestView } from '../l7/request.js';
import { grpcTrailersOnly, type Answer } from '../l7/respond.js';
import { canReplay, MAX_REPLAY_BODY_BYTES } from '../l7/retry.js';
import type { H2Session } from './session.js';
import type { H2Conn, H2Pool, H2PoolUser } from './upstream.js';

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_FLAG_END_STREAM } = http2.constants;

export interface H2Host extends CallHost {
  /** HTTP/1.1 upstream pool (protocol `http`). */
  poolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): EndpointPool;
  /** HTTP/2 upstream pool (protocol `http2`, `grpc`). */
  h2PoolFor(ep: Endpoint, cluster: Cluster, ctx: ConnContext): H2Pool;
}

/** Headers that are not forwarded: connection-specific (RFC 9113 8.2.2), and HTTP/1.1 framing. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings']);
/** Body chunks waiting for an upstream before the client's stream is paused. */
const BODY_HWM = 64 * 1024;

/** `grpc-timeout` (e.g. `100m`, `5S`) in ms; 0 when absent or malformed. */
export function parseGrpcTimeout(v: string | string[] | undefined): number {
  if (typeof v !== 'string') return 0;
  const m = /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) return 0;
  const n = Number(m[1]);
  const ms = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }[m[2] as 'H'] * n;
  return ms > 0 ? Math.max(1, Math.ceil(ms)) : 0;
}

export class H2Call extends L7Call implements H2PoolUser, UpstreamUser {
  readonly ctx: ConnContext;
  readonly conn: H2Session;
  readonly method: string;
  readonly path: string;
  readonly authority: string | undefined;
  readonly protocol = 'h2';
  protected readonly callHost: H2Host;
  private readonly down: ServerHttp2Stream;
  private reqHeaders: IncomingHttpHeaders;
  /** The request target sent upstream when a route rewrote it (the access log keeps the received one). */
  private upstreamPath: string | undefined = undefined;
  /** Upstream speaks HTTP/2 (else HTTP/1.1). */
  private readonly upstreamH2: boolean;
  private view_: RequestView | undefined = undefined;
  private removed: readonly string[] | undefined = undefined;

  // --- the request body ---
  private chunks: Buffer[] = [];
  /** Chunks of `chunks` written to the current upstream. */
  private written = 0;
  private bodyBytes = 0;
  private bodyComplete: boolean;
  /** Every body byte so far is still in `chunks` (the request can be replayed). */
  private held = true;
  private downPaused = false;

  // --- the upstream ---
  private waiting: H2Pool | EndpointPool | undefined = undefined;
  private upConn: H2Conn | undefined = undefined;
  private up: ClientHttp2Stream | undefined = undefined;
  private h1: UpstreamConn | undefined = undefined;
  private h1Chunked = false;
  private requestWritten = false;
  private upTrailers: IncomingHttpHeaders | undefined = undefined;

  readonly headRequest: boolean;
  /** x-request-id (docs/access-log.md). */
  readonly requestId: string;

  constructor(session: H2Session, down: ServerHttp2Stream, headers: IncomingHttpHeaders, host: H2Host) {
    super();
    this.conn = session;
    this.ctx = session.ctx;
    this.down = down;
    const rid = headers['x-request-id'];
    if (typeof rid === 'string' && rid !== '') this.requestId = rid;
    else {
      // Envoy's x-request-id: made here when the caller sent none, and passed upstream (docs/access-log.md).
      this.requestId = randomUUID();
      headers['x-request-id'] = this.requestId;
    }
    this.reqHeaders = headers;
    this.callHost = host;
    this.method = (headers[':method'] as string | undefined) ?? 'GET';
    this.path = (headers[':path'] as string | undefined) ?? '/';
    this.authority = (headers[':authority'] as string | undefined) ?? (headers.host as string | undefined);
    this.headRequest = this.method === 'HEAD';
    const ct = headers['content-type'];
    this.grpc = typeof ct === 'string' && ct.startsWith('application/grpc');
    this.timeoutUntilHead = true;
    this.callTimeout = parseGrpcTimeout(headers['grpc-timeout']);
    const target = this.ctx.target;
    const protocol = target.kind === 'service' ? target.port.protocol : target.protocol;
    this.upstreamH2 = protocol !== 'http';
    this.bodyComplete = down.readableEnded || (down as unknown as { endAfterHeaders?: boolean }).endAfterHeaders === true;
    if (!this.bodyComplete) {
      down.on('data', this.onDownData);
      down.on('end', this.onDownEnd);
    }
    down.on('close', this.onDownClose);
  }

  // ---------------------------------------------------------------------------------------
  // The pipeline's hooks

  view(): RequestView {
    return (this.view_ ??= { method: this.method, authority: this.authority, path: this.path, headers: this.reqHeaders, grpc: this.grpc });
  }

  protected headerValue(name: string): string | undefined {
    const v = this.reqHeaders[name.toLowerCase()];
    return Array.isArray(v) ? v.join(',') : v;
  }

  protected canReplayNow(): boolean {
    return canReplay(this.method, this.bodyBytes, !this.held);
  }

  protected removeHeaders(names: readonly string[]): void {
    this.removed = names;
  }

  protected editRequest(target: string | undefined, mods: readonly HeaderModifier[]): void {
    if (target !== undefined) {
      this.upstreamPath = target;
      this.reqHeaders = { ...this.reqHeaders, ':path': target };
    }
    for (const m of mods) {
      const edited = modifyHeaderObject(this.reqHeaders, m);
      // A Host rewrite is :authority in HTTP/2.
      if (m.set.some((h) => h.name.toLowerCase() === 'host')) {
        edited[':authority'] = edited.host as string;
        delete edited.host;
      }
      this.reqHeaders = edited;
    }
    this.view_ = undefined;
  }

  protected send(ep: Endpoint): void {
    this.written = 0;
    this.requestWritten = false;
    if (this.upstreamH2) {
      const pool = this.callHost.h2PoolFor(ep, this.cluster!, this.ctx);
      this.waiting = pool;
      if (!pool.acquire(this)) {
        this.waiting = undefined;
        this.refuse(new WeftError('WEFT_ERR_OVERFLOW', `pending request limit reached for ${this.cluster!.serviceName}`));
      }
      return;
    }
    const pool = this.callHost.poolFor(ep, this.cluster!, this.ctx);
    this.waiting = pool;
    if (!pool.acquire(this)) {
      this.waiting = undefined;
      this.refuse(new WeftError('WEFT_ERR_OVERFLOW', `pending request limit reached for ${this.cluster!.serviceName}`));
    }
  }

  protected dropUpstream(): void {
    this.gen++;
    const w = this.waiting;
    if (w !== undefined) {
      this.waiting = undefined;
      w.cancel(this as never);
    }
    const up = this.up;
    if (up !== undefined) {
      this.up = undefined;
      this.releaseConn();
      if (!up.destroyed) up.close(NGHTTP2_CANCEL);
    }
    const h1 = this.h1;
    if (h1 !== undefined) {
      this.h1 = undefined;
      h1.destroy();
    }
    this.resumeDown();
  }

  protected writeAnswer(a: Answer): void {
    const d = this.down;
    if (d.destroyed || d.headersSent) return;
    if (this.grpc) {
      d.respond(grpcTrailersOnly(a), { endStream: true });
      return;
    }
    const h: OutgoingHttpHeaders = { ':status': a.status, 'content-type': 'text/plain' };
    if (a.header !== '') h['x-weft-error'] = a.header;
    if (a.headers !== undefined) for (const [k, v] of a.headers) h[k] = v;
    d.respond(h);
    d.end(this.headRequest ? undefined : a.header === '' ? `${a.message}\n` : `${a.header}: ${a.message}\n`);
  }

  protected cut(): void {
    if (!this.down.destroyed) this.down.close(NGHTTP2_INTERNAL_ERROR);
  }

  protected finished(): void {
    this.chunks = [];
    this.conn.calls.delete(this);
    // The rest of the request body, if any, is not wanted.
    if (!this.bodyComplete && !this.down.destroyed) this.down.resume();
  }

  // ---------------------------------------------------------------------------------------
  // The request body, from the client's stream

  private readonly onDownData = (chunk: Buffer): void => {
    if (this.done) return;
    this.bodyBytes += chunk.length;
    this.chunks.push(chunk);
    if (this.held && this.bodyBytes > MAX_REPLAY_BODY_BYTES) this.held = false;
    this.flushBody();
    if (!this.held) {
      // Too large to replay: keep only what the upstream has not taken yet.
      this.chunks.splice(0, this.written);
      this.written = 0;
    }
    if (this.chunks.length - this.written > 0 && this.pendingBytes() >= BODY_HWM) this.pauseDown();
  };

  private pendingBytes(): number {
    let n = 0;
    for (let i = this.written; i < this.chunks.length; i++) n += this.chunks[i]!.length;
    return n;
  }

  private readonly onDownEnd = (): void => {
    this.bodyComplete = true;
    if (!this.done) this.flushBody();
  };

  private readonly onDownClose = (): void => {
    if (this.done) return;
    // The client reset the stream (or the session went away) before its answer.
    if (this.down.rstCode !== undefined && this.down.rstCode !== http2.constants.NGHTTP2_NO_ERROR) this.conn.clientReset();
    this.clientGone();
  };

  private readonly onDownDrain = (): void => {
    if (this.up !== undefined && this.up.isPaused()) this.up.resume();
    if (this.h1 !== undefined) this.h1.sock.resume();
  };

  private pauseDown(): void {
    if (!this.downPaused) {
      this.downPaused = true;
      this.down.pause();
    }
  }

  private resumeDown(): void {
    if (this.downPaused) {
      this.downPaused = false;
      this.down.resume();
    }
  }

  /** Write the body chunks the current upstream has not had yet (and its end, once known). */
  private flushBody(): void {
    const up = this.up;
    if (up !== undefined) {
      let ok = true;
      while (this.written < this.chunks.length) ok = up.write(this.chunks[this.written++]!);
      if (this.bodyComplete && !this.requestWritten) {
        this.requestWritten = true;
        up.end();
      }
      if (!ok) this.pauseDown();
      else this.resumeDown();
      return;
    }
    const h1 = this.h1;
    if (h1 !== undefined) {
      const sock = h1.sock;
      let ok = true;
      while (this.written < this.chunks.length) {
        const c = this.chunks[this.written++]!;
        if (this.h1Chunked) {
          sock.write(`${c.length.toString(16)}\r\n`, 'latin1');
          sock.write(c);
          ok = sock.write('\r\n', 'latin1');
        } else ok = sock.write(c);
      }
      if (this.bodyComplete && !this.requestWritten) {
        this.requestWritten = true;
        if (this.h1Chunked) sock.write('0\r\n\r\n', 'latin1');
      }
      if (!ok) this.pauseDown();
      else this.resumeDown();
    }
  }

  // ---------------------------------------------------------------------------------------
  // HTTP/2 upstream

  onSession(c: H2Conn): void {
    this.waiting = undefined;
    const headers: OutgoingHttpHeaders = {};
    const h = this.reqHeaders;
    const removed = this.removed;
    for (const k in h) {
      if (HOP.has(k) || (removed !== undefined && removed.includes(k))) continue;
      if (k === 'te' && h[k] !== 'trailers') continue;
      headers[k] = h[k];
    }
    if (headers[':authority'] === undefined) headers[':authority'] = (h.host as string | undefined) ?? this.authority ?? `${this.ctx.origIp}:${this.ctx.origPort}`;
    let up: ClientHttp2Stream;
    try {
      up = c.session.request(headers, { endStream: this.bodyComplete && this.chunks.length === 0 });
    } catch (err) {
      c.release();
      this.tryFailed(err as Error);
      return;
    }
    this.upConn = c;
    this.up = up;
    if (this.bodyComplete && this.chunks.length === 0) this.requestWritten = true;
    const gen = this.gen;
    up.on('response', (rh: IncomingHttpHeaders, flags: number) => {
      if (gen === this.gen) this.onH2Response(up, rh, flags);
    });
    up.on('trailers', (t: IncomingHttpHeaders) => {
      if (gen === this.gen) this.upTrailers = t;
    });
    up.on('end', () => {
      if (gen === this.gen) this.onH2End();
    });
    up.on('error', () => {});
    up.on('close', () => {
      if (gen !== this.gen || this.up !== up) return;
      this.up = undefined;
      this.releaseConn();
      if (this.done) return;
      this.upstreamFailed(Object.assign(new Error(`stream reset by ${this.ep!.id} (code ${up.rstCode ?? 0})`), { code: 'ECONNRESET' }));
    });
    this.flushBody();
  }

  onSessionFailed(err: Error): void {
    this.waiting = undefined;
    if (err instanceof WeftError && err.code === 'WEFT_ERR_OVERFLOW') {
      this.refuse(err);
      return;
    }
    this.tryFailed(err);
  }

  private releaseConn(): void {
    const c = this.upConn;
    if (c !== undefined) {
      this.upConn = undefined;
      c.release();
    }
  }

  private onH2Response(up: ClientHttp2Stream, rh: IncomingHttpHeaders, flags: number): void {
    if (this.done) return;
    const status = Number(rh[':status'] ?? 0);
    const trailersOnly = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
    const g = rh['grpc-status'];
    const grpcStatus = g !== undefined ? Number(g) : undefined;
    if (!this.responseHead(status, trailersOnly ? grpcStatus : undefined)) return;
    let out: OutgoingHttpHeaders = {};
    for (const k in rh) if (!HOP.has(k)) out[k] = rh[k];
    if (this.responseEdits !== undefined) out = modifyHeaderObject(out, this.responseEdits);
    const d = this.down;
    if (d.destroyed) return;
    if (trailersOnly) {
      d.respond(out, { endStream: true });
      this.up = undefined;
      this.releaseConn();
      this.responseDone(grpcStatus);
      return;
    }
    d.respond(out, { waitForTrailers: true });
    // Body bytes may arrive in the same read as the head, before 'response' is emitted: the
    // stream stays paused (no 'data' listener) until the head went out.
    const gen = this.gen;
    up.on('data', (chunk: Buffer) => {
      if (gen === this.gen && !this.done && !d.write(chunk)) up.pause();
    });
    d.once('wantTrailers', () => {
      const t = this.upTrailers;
      const tr: OutgoingHttpHeaders = {};
      if (t !== undefined) for (const k in t) if (!HOP.has(k) && k[0] !== ':') tr[k] = t[k];
      try {
        d.sendTrailers(tr);
      } catch {
        d.close();
      }
    });
  }

  private onH2End(): void {
    if (this.done || !this.responseStarted) return;
    const t = this.upTrailers;
    const g = t?.['grpc-status'];
    this.up = undefined;
    this.releaseConn();
    this.down.end();
    this.responseDone(g !== undefined ? Number(g) : undefined);
  }

  // ---------------------------------------------------------------------------------------
  // HTTP/1.1 upstream (UpstreamUser)

  get downSock(): Duplex {
    return this.down;
  }

  /** Corked around each read of response bytes, so that what one read brings leaves in one write. */
  readStart(): void {
    this.down.cork();
  }

  readEnd(): void {
    this.down.uncork();
  }

  waitingFor(pool: EndpointPool): boolean {
    return this.waiting === pool && !this.done;
  }

  onConn(conn: UpstreamConn): void {
    this.waiting = undefined;
    this.h1 = conn;
    const authority = (this.reqHeaders[':authority'] as string | undefined) ?? this.authority;
    let head = `${this.method} ${this.upstreamPath ?? this.path} HTTP/1.1\r\nhost: ${authority ?? `${this.ctx.origIp}:${this.ctx.origPort}`}\r\n`;
    const h = this.reqHeaders;
    const removed = this.removed;
    for (const k in h) {
      if (k[0] === ':' || HOP.has(k) || k === 'te' || k === 'content-length' || (removed !== undefined && removed.includes(k))) continue;
      const v = h[k];
      if (Array.isArray(v)) for (const x of v) head += `${k}: ${x}\r\n`;
      else if (v !== undefined) head += `${k}: ${v}\r\n`;
    }
    if (this.bodyComplete) {
      this.h1Chunked = false;
      if (this.bodyBytes > 0 || this.method === 'POST' || this.method === 'PUT') head += `content-length: ${this.bodyBytes}\r\n`;
    } else {
      this.h1Chunked = true;
      head += 'transfer-encoding: chunked\r\n';
    }
    const sock = conn.sock;
    sock.cork();
    sock.write(`${head}\r\n`, 'latin1');
    this.flushBody();
    if (this.bodyComplete) this.requestWritten = true;
    sock.uncork();
  }

  onConnFailed(err: Error): void {
    this.waiting = undefined;
    this.tryFailed(err);
  }

  onInterim(): void {}

  onResponseHead(conn: UpstreamConn): boolean {
    if (!this.responseHead(conn.status, undefined)) return false;
    let out: OutgoingHttpHeaders = { ':status': conn.status };
    for (const line of conn.lines.split('\r\n')) {
      const i = line.indexOf(':');
      if (i <= 0) continue;
      const k = line.slice(0, i).trim().toLowerCase();
      if (HOP.has(k)) continue;
      const v = line.slice(i + 1).trim();
      const prev = out[k];
      out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [String(prev), v];
    }
    if (conn.contentLength >= 0) out['content-length'] = conn.contentLength;
    if (this.responseEdits !== undefined) out = modifyHeaderObject(out, this.responseEdits);
    const noBody = this.headRequest || conn.status === 204 || conn.status === 304;
    if (!this.down.destroyed) this.down.respond(out, { endStream: noBody });
    return true;
  }

  onResponseBody(chunk: Buffer): void {
    if (this.done || this.down.destroyed) return;
    if (!this.down.write(chunk) && this.h1 !== undefined) this.h1.sock.pause();
  }

  onResponseEnd(conn: UpstreamConn): void {
    this.h1 = undefined;
    conn.sock.resume();
    if (!this.down.destroyed && !this.down.writableEnded) this.down.end();
    conn.finish(conn.keepAlive && this.requestWritten);
    this.responseDone(undefined);
  }

  onUpstreamError(err: Error): void {
    this.h1 = undefined;
    if (this.done) return;
    this.upstreamFailed(err);
  }

  onUpstreamDrain(): void {
    this.resumeDown();
  }
}
