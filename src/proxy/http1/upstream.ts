/**
 * Upstream HTTP/1.1 connections, pooled per endpoint (and per source identity, which picks
 * the tunnel's client certificate). A connection carries one request at a time; its
 * response head is parsed with llhttp, a Content-Length body is then copied through as it
 * arrives (no parser callback, no copy), a chunked or EOF-delimited one is de-framed by
 * llhttp. Connections come from `Transport.connect`, so they may be plain sockets or tunnel
 * streams: only Duplex methods are used.
 */
import type { Duplex } from 'node:stream';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { Cluster } from '../../cluster/cluster.js';
import { closeParser, kOnBody, kOnHeaders, kOnHeadersComplete, kOnMessageComplete, PARSE_BODY, responseParser, SKIP_BODY, STOP_AFTER_HEAD, type NativeParser, type ParseError } from './llhttp.js';
import { endsChunked, scanResponseHead, type ResponseHeadFields } from './head.js';

const EMPTY = Buffer.alloc(0);

/** Idle upstream connections are closed after this long (or the server's Keep-Alive hint minus a margin). */
export const UPSTREAM_IDLE_MS = 60_000;
/** Margin under the server's `Keep-Alive: timeout`, so that we never reuse a connection it is closing. */
const HINT_MARGIN_MS = 1_000;

/** The request an upstream connection serves; the Exchange implements it. */
export interface UpstreamUser {
  /** The pool handed over a connection (the user asked for one and still wants it). */
  onConn(conn: UpstreamConn): void;
  /** Connecting for this user failed. */
  onConnFailed(err: Error): void;
  /** True while this user waits for a connection from `pool`. */
  waitingFor(pool: EndpointPool): boolean;
  /** A 1xx answer (other than 101) arrived. */
  onInterim(conn: UpstreamConn): void;
  /** The final response head arrived: true to forward it, false when the user drops it (a retry). */
  onResponseHead(conn: UpstreamConn): boolean;
  onResponseBody(chunk: Buffer): void;
  onResponseEnd(conn: UpstreamConn): void;
  /** The connection failed while serving this user. `responseBytes`: some of the response had arrived. */
  onUpstreamError(err: Error, responseBytes: boolean): void;
  onUpstreamDrain(): void;
  /** The response has no body whatever its head says (the request was HEAD). */
  readonly headRequest: boolean;
  /** The request asks for an (allowed) upgrade: a 101 answer is expected, not a protocol error. */
  readonly upgrade?: string | undefined;
  /**
   * The upstream answered 101 to the upgrade request: the user takes the socket
   * (`conn.handOver()`); `rest` are the bytes after the 101 head.
   */
  onSwitched?(conn: UpstreamConn, headers: readonly string[], rest: Buffer): void;
  /** The client's connection (destroyed when serving this user hit a bug of ours). */
  readonly downSock: Duplex;
  /**
   * Around each read of response bytes (every callback above happens between the two): the
   * user batches what it writes for the client, so that a head and body in one read leave in
   * one write.
   */
  readStart(): void;
  readEnd(): void;
}

export class UpstreamConn implements ResponseHeadFields {
  readonly sock: Duplex;
  readonly pool: EndpointPool;
  user: UpstreamUser | undefined;
  /** Requests served so far (0 while serving the first). */
  served = 0;
  /** When an idle connection stops being reusable (performance.now() ms). */
  idleUntil = 0;
  dead = false;

  // The current response head.
  status = 0;
  reason = '';
  versionMinor = 1;
  keepAlive = true;
  contentLength = -1;
  transferEncoding: string | undefined = undefined;
  lines = '';
  connClose = false;
  keepAliveHintMs = -1;
  /** Body framed by llhttp (chunked, or until EOF). */
  chunked = false;
  trailers: string[] | undefined = undefined;

  private readonly parser: NativeParser;
  private rawRemaining = 0;
  private parserBody = false;
  private interim = false;
  private responseBytes = false;
  private inData = false;
  private releaseAfterData = false;
  private flushed: string[] | undefined;
  /** The head of a 101 answer, until the bytes after it are known. */
  private switchHeaders: string[] | undefined;

  constructor(sock: Duplex, pool: EndpointPool) {
    this.sock = sock;
    this.pool = pool;
    const p = (this.parser = responseParser());
    p[kOnHeaders] = this.onHeaders;
    p[kOnHeadersComplete] = this.onHeadersComplete;
    p[kOnBody] = this.onBody;
    p[kOnMessageComplete] = this.onMessageComplete;
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('error', this.onError);
    sock.on('close', this.onClose);
    sock.on('drain', this.onDrain);
  }

  /** Start serving `user`: reset the per-response state. */
  assign(user: UpstreamUser): void {
    this.user = user;
    this.responseBytes = false;
    this.rawRemaining = 0;
    this.parserBody = false;
    this.interim = false;
    this.trailers = undefined;
  }

  /**
   * The user is done with this connection. Reusable only when the whole exchange went
   * through cleanly (request fully written, response fully read, keep-alive on both sides).
   */
  finish(reusable: boolean): void {
    this.user = undefined;
    if (!reusable || this.dead) {
      this.destroy();
      return;
    }
    this.served++;
    const hint = this.keepAliveHintMs;
    const idle = hint >= 0 ? Math.min(UPSTREAM_IDLE_MS, hint - HINT_MARGIN_MS) : UPSTREAM_IDLE_MS;
    if (idle <= 0) {
      this.destroy();
      return;
    }
    this.idleUntil = performance.now() + idle;
    // Bytes after the response in the same read would belong to no request: decide once the read is done.
    if (this.inData) this.releaseAfterData = true;
    else this.pool.release(this);
  }

  destroy(): void {
    if (this.dead) return;
    this.dead = true;
    this.user = undefined;
    this.sock.destroy();
  }

  /** Can an idle connection take a request now? */
  usable(now: number): boolean {
    return !this.dead && now < this.idleUntil && !this.sock.destroyed && this.sock.readable;
  }

  private readonly onData = (chunk: Buffer): void => {
    const user = this.user;
    if (user === undefined) {
      // An idle connection has nothing to say; whatever it sent cannot be matched to a request.
      this.destroy();
      return;
    }
    this.responseBytes = true;
    user.readStart();
    this.inData = true;
    try {
      this.consume(chunk);
    } catch (err) {
      // A bug of ours: neither this connection nor the client's can be trusted any more.
      this.pool.group.internalError(err);
      this.releaseAfterData = false;
      this.destroy();
      user.downSock.destroy();
    } finally {
      this.inData = false;
      user.readEnd();
    }
    if (this.releaseAfterData) {
      this.releaseAfterData = false;
      this.pool.release(this);
    }
  };

  private consume(chunk: Buffer): void {
    const len = chunk.length;
    let off = 0;
    while (off < len) {
      const user = this.user;
      if (user === undefined || this.dead) {
        if (off < len && !this.dead) {
          // Bytes past the end of the response: the connection cannot be trusted.
          this.releaseAfterData = false;
          this.destroy();
        }
        return;
      }
      if (this.rawRemaining > 0) {
        const n = Math.min(this.rawRemaining, len - off);
        const part = off === 0 && n === len ? chunk : chunk.subarray(off, off + n);
        off += n;
        this.rawRemaining -= n;
        user.onResponseBody(part);
        if (this.rawRemaining === 0 && this.user === user) user.onResponseEnd(this);
        continue;
      }
      const ret = this.parser.execute(off === 0 ? chunk : chunk.subarray(off));
      if (typeof ret !== 'number') {
        this.protocolError(ret);
        return;
      }
      off += ret;
      const switched = this.switchHeaders;
      if (switched !== undefined) {
        this.switchHeaders = undefined;
        user.onSwitched!(this, switched, off < len ? chunk.subarray(off) : EMPTY);
        return;
      }
      if (ret === 0 && this.rawRemaining === 0) break;
    }
  }

  /**
   * The connection switched protocols: it leaves the pool (its slot is freed) and the
   * caller owns the socket, with no listener of ours left on it.
   */
  handOver(): Duplex {
    const sock = this.sock;
    sock.off('data', this.onData);
    sock.off('end', this.onEnd);
    sock.off('error', this.onError);
    sock.off('close', this.onClose);
    sock.off('drain', this.onDrain);
    this.dead = true;
    this.user = undefined;
    this.releaseAfterData = false;
    closeParser(this.parser);
    this.pool.closed(this);
    return sock;
  }

  private protocolError(err: ParseError): void {
    const user = this.user;
    const had = this.responseBytes;
    this.destroy();
    user?.onUpstreamError(Object.assign(new Error(`malformed response from ${this.pool.ep.id}: ${err.code}`), { code: err.code }), had && this.status >= 200);
  }

  private readonly onHeaders = (h: string[], _url: string): void => {
    if (this.parserBody) this.trailers = this.trailers ? this.trailers.concat(h) : h;
    else this.flushed = this.flushed ? this.flushed.concat(h) : h;
  };

  private readonly onHeadersComplete = (
    _major: number,
    minor: number,
    headers: string[] | undefined,
    _method: unknown,
    _url: unknown,
    status: number,
    reason: string,
    upgrade: boolean,
    keepAlive: boolean,
  ): number => {
    if (headers === undefined) {
      headers = this.flushed ?? [];
      this.flushed = undefined;
    }
    const user = this.user;
    if (user === undefined) return STOP_AFTER_HEAD;
    this.status = status;
    this.reason = reason;
    this.versionMinor = minor;
    this.keepAlive = keepAlive;
    this.contentLength = -1;
    this.transferEncoding = undefined;
    this.connClose = false;
    this.keepAliveHintMs = -1;
    scanResponseHead(headers, this);
    if (status < 200) {
      if (status === 101 && user.upgrade !== undefined && user.onSwitched !== undefined) {
        this.switchHeaders = headers;
        return STOP_AFTER_HEAD;
      }
      if (status === 101 || upgrade) {
        // Switching protocols on a request that did not ask to: nothing sensible to forward.
        this.protocolError(Object.assign(new Error('unexpected 101'), { code: 'HPE_UNEXPECTED_101', bytesParsed: 0 }));
        return STOP_AFTER_HEAD;
      }
      this.interim = true;
      user.onInterim(this);
      return PARSE_BODY;
    }
    this.chunked = this.transferEncoding !== undefined && endsChunked(this.transferEncoding);
    if (!user.onResponseHead(this)) return STOP_AFTER_HEAD;
    if (user.headRequest || status === 204 || status === 304) return SKIP_BODY;
    if (this.contentLength > 0 && this.transferEncoding === undefined) {
      this.rawRemaining = this.contentLength;
      return STOP_AFTER_HEAD;
    }
    this.parserBody = true;
    return PARSE_BODY;
  };

  private readonly onBody = (chunk: Buffer): void => {
    this.user?.onResponseBody(chunk);
  };

  private readonly onMessageComplete = (): void => {
    if (this.interim) {
      this.interim = false;
      return;
    }
    if (this.rawRemaining > 0) return; // the head of a Content-Length body: the bytes follow raw
    if (this.switchHeaders !== undefined) return; // a 101: what follows is the new protocol
    const user = this.user;
    if (user !== undefined && !this.dead) user.onResponseEnd(this);
  };

  private readonly onEnd = (): void => {
    const user = this.user;
    if (user !== undefined && this.parserBody) {
      // A body delimited by the end of the connection ends here (llhttp checks the framing allowed it).
      user.readStart();
      try {
        const err = this.parser.finish();
        if (err) this.protocolError(err);
      } finally {
        user.readEnd();
      }
      return;
    }
    if (user !== undefined) {
      const had = this.responseBytes;
      this.destroy();
      user.onUpstreamError(Object.assign(new Error(`${this.pool.ep.id} closed the connection`), { code: 'UPSTREAM_EOF' }), had);
      return;
    }
    this.destroy();
  };

  private readonly onError = (err: Error): void => {
    const user = this.user;
    const had = this.responseBytes;
    this.destroy();
    user?.onUpstreamError(err, had);
  };

  private readonly onClose = (): void => {
    const user = this.user;
    const had = this.responseBytes;
    this.dead = true;
    this.user = undefined;
    closeParser(this.parser);
    this.pool.closed(this);
    try {
      user?.onUpstreamError(Object.assign(new Error(`connection to ${this.pool.ep.id} closed`), { code: 'ECONNRESET' }), had);
    } catch (err) {
      this.pool.group.internalError(err);
      user?.downSock.destroy();
    }
  };

  private readonly onDrain = (): void => {
    this.user?.onUpstreamDrain();
  };
}

export type Connector = () => Promise<Duplex>;

/**
 * The upstream pools of one cluster: they share its `maxConnections` (and
 * `maxPendingRequests`) limits, so a pool that needs a connection while the cluster is at
 * its limit may take the place of an idle one elsewhere.
 */
export class PoolGroup {
  readonly pools = new Set<EndpointPool>();
  constructor(
    readonly cluster: Cluster,
    /** Where exceptions out of the forwarder's own code go (logged and counted). */
    readonly internalError: (err: unknown) => void,
  ) {}

  /** Close one idle connection of another pool to make room; true if one was closed. */
  evictIdle(except: EndpointPool): boolean {
    for (const p of this.pools) if (p !== except && p.closeOneIdle()) return true;
    return false;
  }

  /** Capacity came free: let a pool with waiting requests open a connection. */
  wake(): void {
    for (const p of this.pools) if (p.hasWaiters() && p.openForWaiter()) return;
  }

  hasWaitersElsewhere(except: EndpointPool): boolean {
    for (const p of this.pools) if (p !== except && p.hasWaiters()) return true;
    return false;
  }
}

/** Connections to one endpoint: a LIFO of idle ones, and a FIFO of requests waiting for one. */
export class EndpointPool {
  readonly ep: Endpoint;
  private readonly idle: UpstreamConn[] = [];
  private readonly all = new Set<UpstreamConn>();
  private waiters: UpstreamUser[] = [];
  private connecting = 0;
  private closedPool = false;

  constructor(
    ep: Endpoint,
    readonly group: PoolGroup,
    private readonly connector: Connector,
  ) {
    this.ep = ep;
    group.pools.add(this);
  }

  private get limits() {
    return this.group.cluster.limits;
  }

  get size(): number {
    return this.all.size + this.connecting;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  /**
   * A connection for `user`: handed over now (`onConn` called before this returns), or later
   * when one is made or freed. Returns false when the request must be refused (overflow:
   * the connection limit is reached and the pending queue is full).
   */
  acquire(user: UpstreamUser): boolean {
    if (!this.closedPool) {
      const now = performance.now();
      while (this.idle.length > 0) {
        const c = this.idle.pop()!;
        if (c.usable(now)) {
          c.assign(user);
          user.onConn(c);
          return true;
        }
        c.destroy();
      }
    }
    if (this.open(user)) return true;
    if (!this.limits.tryAddPending()) return false;
    this.waiters.push(user);
    // Nothing of ours will ever free up: take the place of an idle connection elsewhere.
    if (this.all.size === 0 && this.connecting === 0 && this.group.evictIdle(this)) this.openForWaiter();
    return true;
  }

  /** The user stopped waiting (timeout, client gone). */
  cancel(user: UpstreamUser): void {
    const i = this.waiters.indexOf(user);
    if (i >= 0) {
      this.waiters.splice(i, 1);
      this.limits.removePending();
    }
  }

  hasWaiters(): boolean {
    return this.waiters.length > 0;
  }

  /** Open a connection for the first waiter if the limit allows. */
  openForWaiter(): boolean {
    const user = this.waiters[0];
    if (user === undefined) return false;
    if (!this.limits.tryOpenConnection()) return false;
    this.waiters.shift();
    this.limits.removePending();
    this.connect(user);
    return true;
  }

  private open(user: UpstreamUser): boolean {
    if (!this.limits.tryOpenConnection()) return false;
    this.connect(user);
    return true;
  }

  private connect(user: UpstreamUser): void {
    this.connecting++;
    let connecting: Promise<Duplex>;
    try {
      connecting = this.connector();
    } catch (err) {
      connecting = Promise.reject(err);
    }
    connecting.then(
      (sock) => {
        this.connecting--;
        const c = new UpstreamConn(sock, this);
        this.all.add(c);
        if (this.closedPool) {
          c.destroy();
          if (user.waitingFor(this)) user.onConnFailed(new Error('upstream pool closed'));
          return;
        }
        if (user.waitingFor(this)) {
          c.assign(user);
          user.onConn(c);
        } else {
          // The user gave up meanwhile: the connection serves the queue, or waits idle.
          c.idleUntil = performance.now() + UPSTREAM_IDLE_MS;
          this.release(c);
        }
      },
      (err: Error) => {
        this.connecting--;
        this.limits.closeConnection();
        if (user.waitingFor(this)) user.onConnFailed(err);
        this.group.wake();
      },
    );
  }

  /** A connection finished a request cleanly: serve the next waiter, or keep it idle. */
  release(c: UpstreamConn): void {
    if (c.dead) return;
    if (this.closedPool) {
      c.destroy();
      return;
    }
    const next = this.waiters.shift();
    if (next !== undefined) {
      this.limits.removePending();
      c.assign(next);
      next.onConn(c);
      return;
    }
    if (this.group.hasWaitersElsewhere(this) && this.limits.connections >= this.limitMax()) {
      // Another endpoint's requests wait for capacity that this idle connection holds.
      c.destroy();
      return;
    }
    this.idle.push(c);
  }

  private limitMax(): number {
    return this.group.cluster.policy.connectionPool.maxConnections;
  }

  /** A connection closed (whatever the reason). */
  closed(c: UpstreamConn): void {
    if (!this.all.delete(c)) return;
    const i = this.idle.indexOf(c);
    if (i >= 0) this.idle.splice(i, 1);
    this.limits.closeConnection();
    if (this.waiters.length > 0 && this.openForWaiter()) return;
    this.group.wake();
  }

  closeOneIdle(): boolean {
    const c = this.idle.shift();
    if (c === undefined) return false;
    c.destroy();
    return true;
  }

  /** Close idle connections past their time. */
  sweep(now: number): void {
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const c = this.idle[i]!;
      if (!c.usable(now)) {
        this.idle.splice(i, 1);
        c.destroy();
      }
    }
  }

  /** No new requests; idle connections close now, busy ones when their request ends. */
  close(): void {
    this.closedPool = true;
    this.group.pools.delete(this);
    for (const c of this.idle.splice(0)) c.destroy();
    for (const u of this.waiters.splice(0)) {
      this.limits.removePending();
      u.onConnFailed(new Error('upstream pool closed'));
    }
  }

  /** Close everything, busy connections included. */
  destroy(): void {
    this.close();
    for (const c of [...this.all]) c.destroy();
  }
}
