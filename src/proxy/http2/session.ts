/**
 * Downstream HTTP/2 (h2c with prior knowledge): one node:http2 session per client
 * connection; every stream is one call through the L7 pipeline (stream.ts).
 *
 * Limits, so that a hostile client costs one session and nothing else:
 * - SETTINGS_MAX_CONCURRENT_STREAMS (streams beyond it are refused; a client that keeps
 *   opening them is sent GOAWAY ENHANCE_YOUR_CALM by node after `maxSessionRejectedStreams`);
 * - SETTINGS_MAX_HEADER_LIST_SIZE and `maxSessionMemory` (an HPACK bomb or an oversized header
 *   list cannot grow the session's memory past it: the session is torn down);
 * - malformed frame sequences are protocol errors: GOAWAY PROTOCOL_ERROR (nghttp2);
 * - streams the client resets before they are answered (rapid reset, CVE-2023-44487) are
 *   counted per session: past RESET_LIMIT in RESET_WINDOW_MS the session gets GOAWAY
 *   ENHANCE_YOUR_CALM and is closed.
 */
import http2, { type Http2Server, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { ConnContext } from '../context.js';
import type { ConnTelemetry, TelemetryConn } from '../l7/telemetry.js';
import { H2Call, type H2Host } from './stream.js';

const noop = (): void => {};

/** The HTTP/2 connection preface (RFC 9113 3.4). */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const H2_MAX_CONCURRENT_STREAMS = 256;
export const H2_MAX_HEADER_LIST_SIZE = 64 * 1024;
/** MB of memory a session may use (HPACK tables, buffered frames) before it is torn down. */
export const H2_MAX_SESSION_MEMORY_MB = 16;
/** Streams reset by the client before their answer, per window, before GOAWAY. */
export const RESET_LIMIT = 200;
export const RESET_WINDOW_MS = 1_000;
/** An idle session is closed after this. */
export const H2_IDLE_MS = 60_000;

/** One client's HTTP/2 connection. */
export class H2Session implements TelemetryConn {
  readonly telemetry = new Map<Endpoint | string, ConnTelemetry>();
  readonly calls = new Set<H2Call>();
  private resets = 0;
  private windowStart = 0;

  constructor(
    readonly session: ServerHttp2Session,
    readonly ctx: ConnContext,
    private readonly front: H2Front,
  ) {}

  /** A stream was reset by the client before it was answered. */
  clientReset(): void {
    const now = performance.now();
    if (now - this.windowStart > RESET_WINDOW_MS) {
      this.windowStart = now;
      this.resets = 0;
    }
    if (++this.resets > RESET_LIMIT && !this.session.destroyed) {
      this.front.host.deps.log.warn({ src_ip: this.ctx.sourceIp, resets: this.resets }, 'http2 stream reset flood: GOAWAY');
      this.session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      this.session.destroy();
    }
  }
}

export class H2Front {
  private readonly server: Http2Server;
  private readonly sessions = new Set<H2Session>();
  /** The context of the connection being handed to the server (set around `emit('connection')`). */
  private pendingCtx: ConnContext | undefined;

  constructor(readonly host: H2Host) {
    this.server = http2.createServer({
      maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
      maxHeaderListPairs: 256,
      maxSessionRejectedStreams: 100,
      maxSessionInvalidFrames: 100,
      peerMaxConcurrentStreams: H2_MAX_CONCURRENT_STREAMS,
      settings: { maxConcurrentStreams: H2_MAX_CONCURRENT_STREAMS, maxHeaderListSize: H2_MAX_HEADER_LIST_SIZE, enablePush: false },
    });
    this.server.on('session', (s: ServerHttp2Session) => this.onSession(s));
    this.server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => this.onStream(stream, headers));
    this.server.on('sessionError', (err: Error) => host.deps.log.debug({ err: err.message }, 'http2 session error'));
  }

  /** Serve `sock` as HTTP/2; `first`: bytes already read from it (the preface). */
  accept(sock: Duplex, ctx: ConnContext, first?: Buffer): void {
    // The session reports its own errors; the socket's are the same ones.
    sock.on('error', noop);
    sock.pause();
    if (first !== undefined && first.length > 0) sock.unshift(first);
    this.pendingCtx = ctx;
    try {
      this.server.emit('connection', sock);
    } finally {
      this.pendingCtx = undefined;
    }
  }

  private onSession(s: ServerHttp2Session): void {
    const ctx = this.pendingCtx;
    if (ctx === undefined) {
      s.destroy();
      return;
    }
    const hs = new H2Session(s, ctx, this);
    (s as ServerHttp2Session & { weft?: H2Session }).weft = hs;
    this.sessions.add(hs);
    s.setTimeout(H2_IDLE_MS, () => {
      if (hs.calls.size === 0) s.close();
    });
    s.on('error', (err) => this.host.deps.log.debug({ err: err.message, src_ip: ctx.sourceIp }, 'http2 downstream session error'));
    s.on('frameError', (type: number, code: number) => this.host.deps.log.debug({ type, code, src_ip: ctx.sourceIp }, 'http2 frame error'));
    s.once('close', () => {
      this.sessions.delete(hs);
      for (const c of [...hs.calls]) c.clientGone();
    });
    if (this.host.draining) s.close();
  }

  private onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const hs = (stream.session as (ServerHttp2Session & { weft?: H2Session }) | undefined)?.weft;
    if (hs === undefined) {
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    stream.on('error', noop);
    if (stream.destroyed || stream.closed) {
      // Reset by the client in the same read as its HEADERS: gone before it could be served.
      if (stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) hs.clientReset();
      return;
    }
    try {
      const call = new H2Call(hs, stream, headers, this.host);
      hs.calls.add(call);
      call.start();
    } catch (err) {
      this.host.internalError(err);
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    }
  }

  get active(): number {
    return this.sessions.size;
  }

  /** Draining: every session gets GOAWAY and closes after its streams. */
  closeIdle(): void {
    for (const s of this.sessions) s.session.close();
  }

  destroy(): void {
    for (const s of this.sessions) s.session.destroy();
  }
}
