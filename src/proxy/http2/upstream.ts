/**
 * Upstream HTTP/2 connections, pooled per endpoint (and per source identity, which picks the
 * tunnel's client certificate): each connection multiplexes streams up to the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS; a new connection is opened only when every one is full,
 * within the cluster's `maxConnections`, and a call waits (within `maxPendingRequests`) when
 * none can be opened. `maxRequests` (checked by the pipeline for every call) counts streams.
 * Connections come from `Transport.connect`, so they may be plain sockets or tunnel streams.
 */
import http2, { type ClientHttp2Session } from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Cluster } from '../../cluster/cluster.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import { WeftError } from '../../errors.js';

/** An idle upstream session is closed after this long. */
export const H2_IDLE_MS = 60_000;
/** Streams per upstream session until the server's SETTINGS arrive (RFC 9113 recommends >= 100). */
const INITIAL_STREAMS = 100;

export interface H2PoolUser {
  /** A session with room for one more stream (the user asked for one and still wants it). */
  onSession(s: H2Conn): void;
  onSessionFailed(err: Error): void;
}

export class H2Conn {
  active = 0;
  dead = false;
  idleSince = performance.now();
  constructor(
    readonly session: ClientHttp2Session,
    readonly pool: H2Pool,
  ) {}

  get capacity(): number {
    const max = this.session.remoteSettings?.maxConcurrentStreams;
    return max === undefined ? INITIAL_STREAMS : Math.min(max, 1 << 20);
  }

  /** A stream of this session ended. */
  release(): void {
    this.active--;
    if (this.active === 0) this.idleSince = performance.now();
    this.pool.wake();
  }
}

export class H2Pool {
  private readonly conns: H2Conn[] = [];
  private readonly waiters: H2PoolUser[] = [];
  private connecting = 0;

  constructor(
    readonly ep: Endpoint,
    readonly cluster: Cluster,
    private readonly connect: () => Promise<Duplex>,
    private readonly internalError: (err: unknown) => void,
  ) {}

  private get limits() {
    return this.cluster.limits;
  }

  /** Hand `user` a session now or later; false when the pending limit is reached. */
  acquire(user: H2PoolUser): boolean {
    const c = this.free();
    if (c !== undefined) {
      c.active++;
      user.onSession(c);
      return true;
    }
    if (!this.limits.tryAddPending()) return false;
    this.waiters.push(user);
    this.maybeOpen();
    return true;
  }

  cancel(user: H2PoolUser): void {
    const i = this.waiters.indexOf(user);
    if (i >= 0) {
      this.waiters.splice(i, 1);
      this.limits.removePending();
    }
  }

  private free(): H2Conn | undefined {
    for (const c of this.conns) if (!c.dead && !c.session.closed && !c.session.destroyed && c.active < c.capacity) return c;
    return undefined;
  }

  /** Open a connection if the waiters need more room than the sessions being opened will give. */
  private maybeOpen(): void {
    if (this.waiters.length <= this.connecting * INITIAL_STREAMS) return;
    if (!this.limits.tryOpenConnection()) {
      // At the cluster's connection limit: waiters wait for a stream to end on a session of
      // this pool, or fail when there is none.
      if (this.conns.length === 0 && this.connecting === 0) this.failWaiters(new WeftError('WEFT_ERR_OVERFLOW', `connection limit reached for ${this.cluster.serviceName}`));
      return;
    }
    this.connecting++;
    this.connect().then(
      (sock) => {
        this.connecting--;
        let session: ClientHttp2Session;
        try {
          session = http2.connect(`http://${this.ep.info.ip}:${this.ep.info.port}`, { createConnection: () => sock, maxSessionMemory: 64, settings: { enablePush: false } });
        } catch (err) {
          this.limits.closeConnection();
          sock.destroy();
          this.failWaiters(err as Error);
          return;
        }
        const c = new H2Conn(session, this);
        this.conns.push(c);
        const gone = () => {
          if (c.dead) return;
          c.dead = true;
          this.limits.closeConnection();
          const i = this.conns.indexOf(c);
          if (i >= 0) this.conns.splice(i, 1);
          this.wake();
        };
        session.on('close', gone);
        session.on('goaway', gone);
        session.on('error', gone);
        // Streams can start before the server's SETTINGS arrive; more once they do.
        session.on('remoteSettings', () => this.wake());
        this.wake();
      },
      (err: Error) => {
        this.connecting--;
        this.limits.closeConnection();
        this.failWaiters(err);
      },
    );
  }

  private failWaiters(err: Error): void {
    // Waiters that the sessions being opened cannot serve either fail now.
    const failed = this.waiters.splice(this.connecting * INITIAL_STREAMS);
    for (const w of failed) {
      this.limits.removePending();
      try {
        w.onSessionFailed(err);
      } catch (e) {
        this.internalError(e);
      }
    }
  }

  /** Serve waiters from sessions with room; open more if they need it. */
  wake(): void {
    while (this.waiters.length > 0) {
      const c = this.free();
      if (c === undefined) break;
      const w = this.waiters.shift()!;
      this.limits.removePending();
      c.active++;
      try {
        w.onSession(c);
      } catch (err) {
        this.internalError(err);
      }
    }
    if (this.waiters.length > 0) this.maybeOpen();
  }

  /** Close sessions idle for too long. */
  sweep(now: number): void {
    for (const c of [...this.conns]) if (c.active === 0 && now - c.idleSince >= H2_IDLE_MS) c.session.close();
  }

  /** Stop: sessions finish their streams, then close. */
  close(): void {
    for (const c of this.conns) c.session.close();
  }

  destroy(): void {
    for (const c of [...this.conns]) c.session.destroy();
    for (const w of this.waiters.splice(0)) {
      this.limits.removePending();
      w.onSessionFailed(new Error('proxy closing'));
    }
  }
}
