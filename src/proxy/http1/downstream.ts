/**
 * One downstream (client) connection: llhttp parses request heads, the forwarder frames
 * bodies itself where it can (a Content-Length body is handed on as it arrives, without a
 * parser callback or a copy), and requests are served one at a time, in order: pipelined
 * requests wait their turn (reading stops while one waits, so at most one read's worth of
 * them is ever buffered).
 */
import type { Duplex } from 'node:stream';
import type { ConnContext } from '../context.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { ConnTelemetry, TelemetryConn } from '../l7/telemetry.js';
import { closeParser, kOnBody, kOnHeaders, kOnHeadersComplete, kOnMessageComplete, METHODS, PARSE_BODY, requestParser, STOP_AFTER_HEAD, type NativeParser, type ParseError } from './llhttp.js';
import { Exchange, type ExchangeHost } from './exchange.js';
import { normalizeRequestTarget } from '../l7/normalize.js';
import { allowedUpgradeOffer, allowedUpgrades } from '../l7/upgrade.js';

/** A partial request head must complete within this (slowloris). */
export const HEADERS_TIMEOUT_MS = 30_000;
/** An idle keep-alive connection is closed after this. */
export const KEEPALIVE_TIMEOUT_MS = 60_000;

/** The HTTP/2 connection preface (RFC 9113 3.4): an h2c client with prior knowledge starts with it. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

const PAUSE_QUEUE = 1;
const PAUSE_BODY = 2;
const PAUSE_STOP = 4;
/** How long a closing connection keeps draining what the client still sends. */
const LINGER_MS = 2_000;

const BAD_REQUEST = 'HTTP/1.1 400 Bad Request\r\nx-weft-error: bad_request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n';
const HEAD_TOO_LARGE = 'HTTP/1.1 431 Request Header Fields Too Large\r\nx-weft-error: bad_request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n';
const HEAD_TIMEOUT = 'HTTP/1.1 408 Request Timeout\r\nx-weft-error: bad_request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n';

export class Downstream implements TelemetryConn {
  readonly sock: Duplex;
  readonly ctx: ConnContext;
  readonly host: ExchangeHost;
  /** Requests parsed and not yet answered, in order; the first one is being served. */
  private readonly queue: Exchange[] = [];
  /** The request whose body is arriving. */
  private parsing: Exchange | undefined;
  /** Content-Length body bytes of `parsing` still to come. */
  private rawRemaining = 0;
  private flushed: string[] | undefined;
  private flushedUrl = '';
  private readonly parser: NativeParser;
  private pauseMask = 0;
  private pumping = false;
  /** Parsing stopped for good (a parse error, an upgrade, or the connection is closing). */
  private stopped = false;
  /** The first bytes were looked at (HTTP/1.1 or the HTTP/2 preface); `prefix`: a partial preface so far. */
  private sniffed = false;
  private prefix: Buffer | undefined = undefined;
  /** A parse error to answer once the requests before it are answered. */
  private pendingError: string | undefined;
  /**
   * An upgrade request (or a CONNECT) in flight: the bytes after its head are held, not
   * parsed, until its answer says whether they belong to a new protocol (101: spliced) or
   * are more HTTP requests (any other answer: parsed and authorized one by one).
   */
  private upgrading: Exchange | undefined;
  /** The client half-closed while an upgrade request held its bytes. */
  private heldEnd = false;
  /** The socket was handed over to a splice (a 101). */
  private detached = false;
  private badVersion = false;
  /** After a close began: when to stop waiting for the client's side to close (coarse ms). */
  private lingerUntil = 0;
  /** The client half-closed, or the proxy drains: answer what is in flight, then close. */
  closing = false;
  closed = false;
  /** Coarse times (ms) for the sweeper: when a request head started arriving, when the connection went idle. */
  headStart = 0;
  idleSince: number;
  /** Access loggers and metric labels of this connection's requests (see L7Telemetry.record). */
  readonly telemetry = new Map<Endpoint | string, ConnTelemetry>();

  constructor(sock: Duplex, ctx: ConnContext, host: ExchangeHost) {
    this.sock = sock;
    this.ctx = ctx;
    this.host = host;
    this.idleSince = host.clock;
    const p = (this.parser = requestParser());
    p[kOnHeaders] = this.onHeaders;
    p[kOnHeadersComplete] = this.onHeadersComplete;
    p[kOnBody] = this.onBody;
    p[kOnMessageComplete] = this.onMessageComplete;
    // The client may half-close after its request: its answer still has to go out.
    (sock as Duplex & { allowHalfOpen: boolean }).allowHalfOpen = true;
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('error', this.onError);
    sock.on('close', this.onClose);
    sock.on('drain', this.onDrain);
  }

  /**
   * The client half-closed (or the proxy drains) and no request is queued after the one
   * being answered: that answer is the last and says `connection: close`. Requests the
   * client pipelined before its FIN are still answered.
   */
  get lastBeforeClose(): boolean {
    return this.closing && this.queue.length <= 1 && this.parsing === undefined;
  }

  /** Nothing in flight and no request partly received. */
  get idle(): boolean {
    return this.queue.length === 0 && this.parsing === undefined && this.headStart === 0;
  }

  private readonly onData = (chunk: Buffer): void => {
    try {
      this.consume(chunk);
    } catch (err) {
      // A bug of ours: this connection's state cannot be trusted any more.
      this.host.internalError(err);
      this.sock.destroy();
    }
  };

  private consume(chunk: Buffer): void {
    if (!this.sniffed) {
      const c = this.sniff(chunk);
      if (c === undefined) return;
      chunk = c;
    }
    if (this.stopped) {
      // After an upgrade request, the bytes belong to the upgraded protocol; otherwise the
      // connection is closing and what still arrives is read and dropped (lingering close).
      const up = this.upgrading;
      if (up !== undefined) up.upgradeHead = up.upgradeHead ? Buffer.concat([up.upgradeHead, chunk]) : chunk;
      return;
    }
    if (this.parsing === undefined && this.headStart === 0) this.headStart = this.host.clock || 1;
    const len = chunk.length;
    let off = 0;
    while (off < len) {
      if (this.rawRemaining > 0) {
        const n = Math.min(this.rawRemaining, len - off);
        const part = off === 0 && n === len ? chunk : chunk.subarray(off, off + n);
        off += n;
        this.rawRemaining -= n;
        const ex = this.parsing!;
        if (this.rawRemaining === 0) this.parsing = undefined;
        ex.onBodyChunk(part, this.rawRemaining === 0);
        continue;
      }
      const ret = this.parser.execute(off === 0 ? chunk : chunk.subarray(off));
      if (typeof ret !== 'number') {
        this.parseError(ret);
        break;
      }
      off += ret;
      if (this.badVersion) {
        this.badVersion = false;
        this.parseError(Object.assign(new Error('HTTP version not supported'), { code: 'HPE_INVALID_VERSION', bytesParsed: off }));
        break;
      }
      if (this.upgrading !== undefined) {
        // llhttp stopped after the upgrade request's head: the rest is the new protocol's.
        this.stopped = true;
        if (off < len) this.upgrading.upgradeHead = chunk.subarray(off);
        this.setPause(PAUSE_STOP, true);
        break;
      }
      if (ret === 0 && this.rawRemaining === 0) break;
    }
    // Requests are started only after the whole read was parsed: a request whose body turns
    // out malformed in the same read never reaches an upstream.
    this.pump();
  }

  /**
   * The connection's first bytes: the HTTP/2 preface hands the connection to the HTTP/2
   * codec (undefined returned); anything else is HTTP/1.1 (the bytes to parse returned).
   */
  private sniff(chunk: Buffer): Buffer | undefined {
    const data = this.prefix === undefined ? chunk : Buffer.concat([this.prefix, chunk]);
    this.prefix = undefined;
    if (data[0] === 0x50) {
      const n = Math.min(data.length, H2_PREFACE.length);
      if (data.compare(H2_PREFACE, 0, n, 0, n) === 0) {
        if (n < H2_PREFACE.length) {
          this.prefix = data;
          return undefined;
        }
        this.sniffed = true;
        const sock = this.sock;
        sock.pause();
        this.detach();
        this.host.acceptH2(sock, this.ctx, data);
        return undefined;
      }
    }
    this.sniffed = true;
    return data;
  }

  private readonly onHeaders = (h: string[], url: string): void => {
    const ex = this.parsing;
    if (ex !== undefined) {
      // Trailers of a chunked body.
      ex.trailers = ex.trailers ? ex.trailers.concat(h) : h;
      return;
    }
    this.flushed = this.flushed ? this.flushed.concat(h) : h;
    this.flushedUrl += url;
  };

  private readonly onHeadersComplete = (
    major: number,
    minor: number,
    headers: string[] | undefined,
    method: number,
    url: string | undefined,
    _status: unknown,
    _reason: unknown,
    upgrade: boolean,
    keepAlive: boolean,
  ): number => {
    if (headers === undefined) {
      headers = this.flushed ?? [];
      url = this.flushedUrl + (url ?? '');
      this.flushed = undefined;
      this.flushedUrl = '';
    }
    this.headStart = 0;
    if (major !== 1) {
      this.badVersion = true;
      return STOP_AFTER_HEAD;
    }
    const name = METHODS[method] ?? 'GET';
    // One normalized target and Host for authorization and the upstream (l7/normalize.ts).
    const norm = normalizeRequestTarget(name, url ?? '/', headers);
    const offer = upgrade && norm.ok && name !== 'CONNECT' ? allowedUpgradeOffer(headers, allowedUpgrades(this.ctx.target)) : undefined;
    const ex = new Exchange(this, name, norm.ok ? norm.url : (url ?? '/'), minor, headers, keepAlive, offer);
    if (!norm.ok) ex.rejectReason = norm.reason;
    else if (name === 'CONNECT') ex.rejectReason = 'CONNECT is not supported through the mesh';
    this.queue.push(ex);
    // llhttp stops after an upgrade request (after its body, if any): the bytes after it are
    // held while an allowed upgrade waits for its answer, or dropped after a refused CONNECT.
    // A disallowed upgrade is a plain request (its Upgrade header is not forwarded), and
    // parsing goes on past it.
    if (ex.upgrade !== undefined || name === 'CONNECT') {
      this.upgrading = ex;
      return PARSE_BODY;
    }
    if (ex.bodyKind === 0) return PARSE_BODY;
    this.parsing = ex;
    if (ex.bodyKind === 1) {
      this.rawRemaining = ex.contentLength;
      return STOP_AFTER_HEAD;
    }
    return PARSE_BODY;
  };

  private readonly onBody = (chunk: Buffer): void => {
    this.parsing?.onBodyChunk(chunk, false);
  };

  private readonly onMessageComplete = (): void => {
    if (this.rawRemaining > 0) return; // a Content-Length body follows raw
    const ex = this.parsing;
    if (ex !== undefined && ex.bodyKind === 2) {
      this.parsing = undefined;
      ex.onBodyEnd();
    }
  };

  private parseError(err: ParseError): void {
    this.stopped = true;
    this.setPause(PAUSE_STOP, true);
    this.pendingError ??= err.code === 'HPE_HEADER_OVERFLOW' ? HEAD_TOO_LARGE : BAD_REQUEST;
    this.host.malformed(this, err);
    // Only a chunked body can fail after its head was queued: that request goes no further
    // (if it already went upstream, the exchange aborts it there).
    const ex = this.parsing;
    this.parsing = undefined;
    this.rawRemaining = 0;
    if (ex !== undefined) {
      if (ex.started) ex.onMalformedBody();
      else this.queue.splice(this.queue.indexOf(ex), 1);
    }
    if (this.queue.length === 0) this.answerPendingError();
  }

  private answerPendingError(): void {
    const answer = this.pendingError;
    if (answer === undefined || this.closed) return;
    this.pendingError = undefined;
    this.closeGracefully(answer);
  }

  /**
   * Stop serving: write `last` (if any), end our side, and keep reading (dropping the bytes)
   * until the client closes or a short grace period ends, so that a client still sending
   * does not get a reset that could destroy the answer before it reads it.
   */
  private closeGracefully(last?: string): void {
    this.stopped = true;
    this.queue.length = 0;
    this.parsing = undefined;
    this.rawRemaining = 0;
    this.lingerUntil = this.host.clock + LINGER_MS;
    this.setPause(PAUSE_STOP | PAUSE_QUEUE | PAUSE_BODY, false);
    if (!this.sock.writable) this.sock.destroy();
    else if (last !== undefined) this.sock.end(last);
    else this.sock.end();
  }

  /** Serve queued requests in order, one at a time. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (!this.closed && this.queue.length > 0 && !this.queue[0]!.started) {
        const ex = this.queue[0]!;
        ex.start();
      }
    } finally {
      this.pumping = false;
    }
    if (this.pendingError !== undefined && this.queue.length === 0) this.answerPendingError();
    this.setPause(PAUSE_QUEUE, this.queue.length > 1);
  }

  /** The exchange answered (or gave up): serve the next one, or close. */
  exchangeDone(ex: Exchange, close: boolean): void {
    const i = this.queue.indexOf(ex);
    if (i >= 0) this.queue.splice(i, 1);
    this.idleSince = this.host.clock;
    if (this.detached || this.closed || this.lingerUntil !== 0) return;
    if (this.upgrading === ex) {
      this.upgrading = undefined;
      // Not switched: the connection stays HTTP, and what the client sent after the upgrade
      // request is parsed (and each request authorized) like any other.
      if (!close) {
        this.resumeAfterUpgrade(ex);
        return;
      }
    }
    // An answer sent before the request's body was read always closes (Exchange sets `close`).
    if (close || (this.closing && this.queue.length === 0 && this.parsing === undefined)) {
      this.closeGracefully();
      return;
    }
    this.pump();
  }

  private resumeAfterUpgrade(ex: Exchange): void {
    const held = ex.upgradeHead;
    ex.upgradeHead = undefined;
    const ended = this.heldEnd;
    this.heldEnd = false;
    this.stopped = false;
    this.setPause(PAUSE_STOP, false);
    if (held !== undefined && held.length > 0) this.consume(held);
    else this.pump();
    if (ended && !this.closed) this.onEnd();
  }

  /** Pause or resume reading for request-body backpressure. */
  setBodyPaused(paused: boolean): void {
    this.setPause(PAUSE_BODY, paused);
  }

  private setPause(reason: number, on: boolean): void {
    const before = this.pauseMask;
    const after = on ? before | reason : before & ~reason;
    if (after === before) return;
    this.pauseMask = after;
    if (before === 0) this.sock.pause();
    else if (after === 0) this.sock.resume();
  }

  /**
   * Hand the socket over (an upgrade that switched): no more parsing, no listeners of ours.
   * `ended`: the client already half-closed its side.
   */
  detach(): { ended: boolean } {
    const ended = this.heldEnd;
    this.detached = true;
    this.stopped = true;
    this.upgrading = undefined;
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('drain', this.onDrain);
    this.sock.off('close', this.onClose);
    this.sock.off('error', this.onError);
    closeParser(this.parser);
    this.host.forget(this);
    this.queue.length = 0;
    this.pauseMask = 0;
    return { ended };
  }

  /** Close when idle; otherwise after the request in flight. */
  closeWhenIdle(): void {
    this.closing = true;
    if (this.idle && !this.stopped) this.closeGracefully();
  }

  /** Called about once a second: headers, keep-alive and lingering-close timeouts. */
  sweep(now: number): void {
    if (this.closed) return;
    if (this.stopped) {
      if (this.lingerUntil !== 0 && now >= this.lingerUntil) this.sock.destroy();
      return;
    }
    if (this.queue.length > 0 || this.parsing !== undefined) return;
    if (this.headStart !== 0) {
      if (now - this.headStart >= HEADERS_TIMEOUT_MS) this.closeGracefully(HEAD_TIMEOUT);
    } else if (now - this.idleSince >= KEEPALIVE_TIMEOUT_MS) this.sock.destroy();
  }

  private readonly onEnd = (): void => {
    if (this.stopped) {
      // An upgrade request waits for its answer: its outcome decides what the end means.
      if (this.upgrading !== undefined && this.lingerUntil === 0) this.heldEnd = true;
      // Our side is closing too (or the socket was handed over): done.
      else if (this.lingerUntil !== 0) this.sock.destroy();
      return;
    }
    this.closing = true;
    if (this.parsing !== undefined) {
      // The client stopped sending in the middle of a request body: that request cannot complete.
      this.parseError(Object.assign(new Error('request body cut short'), { code: 'HPE_INVALID_EOF_STATE', bytesParsed: 0 }));
      return;
    }
    if (this.queue.length === 0) {
      if (this.pendingError !== undefined) this.answerPendingError();
      else this.closeGracefully();
    }
  };

  private readonly onError = (err: Error): void => {
    this.host.downstreamError(this, err);
  };

  private readonly onClose = (): void => {
    this.closed = true;
    this.stopped = true;
    const q = this.queue.splice(0);
    closeParser(this.parser);
    this.host.forget(this);
    for (const ex of q) {
      if (!ex.started) continue;
      try {
        ex.onDownstreamClosed();
      } catch (err) {
        this.host.internalError(err);
      }
    }
  };

  private readonly onDrain = (): void => {
    const ex = this.queue[0];
    if (ex !== undefined) ex.onDownstreamDrain();
  };
}
