/**
 * The L4 fast path: two connected TCP sockets of the agent spliced in the kernel
 * (bpf/splice.bpf.c). Once spliced, every byte received on one socket goes out of the other
 * without reaching user space; the agent only hears about FIN and errors, and reads byte
 * counters from a BPF map.
 *
 * What this module keeps true:
 * - Node reads nothing while a pair is spliced: both streams are paused and libuv's read is
 *   stopped, so there is nothing in Node's buffers to lose or reorder. A pair is only spliced
 *   when Node holds no byte of either socket (the L4 proxy reads none before it splices).
 * - FIN travels after the bytes before it: when one side reads EOF, the other is shut down for
 *   writing only once its send queue has taken every byte the kernel moved toward it (counted
 *   by the verdict program, compared with the socket's TCP_INFO and SIOCOUTQ).
 * - Half-close works both ways; the pair ends when both directions have ended, or at the first
 *   error (RST), which is passed on the way the userspace pipe passes it.
 * - Idle timeout by the counters: a pair whose counters did not move for the timeout is closed.
 * - The sockets belong to this process: if it dies, the kernel closes them (and takes them out
 *   of the maps), so the connections die with the agent. A restarted agent cannot adopt them.
 */
import net from 'node:net';
import type pino from 'pino';
import { BpfError } from '../errors.js';
import { EPOLL, type KernelSplicer } from './bpf.js';

export type SpliceEnd = 'downstream_close' | 'upstream_close' | 'idle_timeout';

export interface SpliceResult {
  /** Which side ended the connection first (the first FIN or error), or the idle timeout. */
  reason: SpliceEnd;
  /** Bytes moved from the first socket (downstream) to the second (upstream), and back. */
  sent: number;
  received: number;
  /** The errno code when a side ended with an error (ECONNRESET...). */
  error?: string;
}

export interface SpliceOptions {
  /** Close the pair when no byte moved either way for this long (ms); 0: never. */
  idleTimeoutMs?: number;
  /** Called once, after both sockets were destroyed. */
  onEnd: (r: SpliceResult) => void;
}

export interface SpliceHandle {
  /** Bytes moved so far each way. */
  bytes(): { sent: number; received: number };
  /** Ends the splice now: both sockets are destroyed, onEnd runs. */
  close(): void;
}

/** Why a pair could not be spliced (the caller then pipes in user space). */
export type SpliceRefusal = 'not_tcp' | 'buffered' | 'closing' | 'full' | 'not_established' | 'error';

type Side = 0 | 1;

/** How long a FIN may wait for the bytes before it to be taken by the other socket, without progress. */
const FLUSH_STALL_MS = 30_000;
const FLUSH_RETRY_MAX_MS = 50;

interface Pair {
  id: number;
  sock: [net.Socket, net.Socket];
  eof: [boolean, boolean];
  shut: [boolean, boolean];
  first?: Side;
  ended: boolean;
  /** The final counts, once ended. */
  final?: [number, number];
  opts: SpliceOptions;
  idleMs: number;
  /** Both counters added, at the last idle check, and when they last moved. */
  lastTotal: number;
  lastActive: number;
  timers: Set<NodeJS.Timeout>;
  onClose: [() => void, () => void];
}

const noop = (): void => {};

/** What splice() touches of Node's handle of a net.Socket (libuv's TCP handle). */
interface TcpHandle {
  fd?: number;
  /** Node's own record of whether libuv is reading. */
  reading?: boolean;
  readStart?: () => number;
  readStop?: () => number;
}

function handleOf(s: net.Socket): TcpHandle | undefined {
  return (s as unknown as { _handle?: TcpHandle })._handle;
}

/** The fd of a connected net.Socket (libuv's handle), or undefined. */
export function socketFd(s: net.Socket): number | undefined {
  const fd = handleOf(s)?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

export class SocketSplicer {
  private readonly pairs = new Map<number, Pair>();
  private idleTimer?: NodeJS.Timeout;
  private idleTick = 0;
  private closed = false;
  private fullLogged = false;

  constructor(
    private readonly kernel: KernelSplicer,
    private readonly log: pino.Logger,
  ) {}

  /** Connections spliced right now. */
  get size(): number {
    return this.pairs.size;
  }

  /**
   * Splices `down` and `up` (connected TCP sockets of this process, nothing read from either
   * yet). On success the splicer owns both sockets: it destroys them and calls `opts.onEnd`
   * when the connection ends. When it cannot, returns why, and both sockets are the caller's
   * again, paused, readable as before (pipe or resume them).
   */
  splice(down: net.Socket, up: net.Socket, opts: SpliceOptions): SpliceHandle | SpliceRefusal {
    if (this.closed || !(down instanceof net.Socket) || !(up instanceof net.Socket)) return 'not_tcp';
    const fdDown = socketFd(down);
    const fdUp = socketFd(up);
    if (fdDown === undefined || fdUp === undefined) return 'not_tcp';
    for (const s of [down, up]) {
      if (s.destroyed || s.readableEnded || s.writableEnded || s.connecting) return 'closing';
      // Bytes Node holds would have to be written by Node first, racing the kernel's own writes.
      if (s.readableLength > 0 || s.writableLength > 0) return 'buffered';
    }
    // Stop libuv's reads (pause() alone keeps reading until the stream's buffer is full), the
    // way Node's own pause does for its handle, `reading` flag included.
    const stopped: TcpHandle[] = [];
    for (const s of [down, up]) {
      s.pause();
      const h = handleOf(s)!;
      if (h.reading) {
        h.readStop?.();
        h.reading = false;
        stopped.push(h);
      }
    }
    let id: number;
    try {
      id = this.kernel.add(fdDown, fdUp);
    } catch (err) {
      // Back as it was: the stream may have a read in progress (an upstream reads from its
      // connect on), which it would wait for forever if the handle stayed stopped.
      for (const h of stopped) {
        h.readStart?.();
        h.reading = true;
      }
      return this.refusal(err);
    }
    const now = Date.now();
    const pair: Pair = {
      id,
      sock: [down, up],
      eof: [false, false],
      shut: [false, false],
      ended: false,
      opts,
      idleMs: opts.idleTimeoutMs ?? 0,
      lastTotal: 0,
      lastActive: now,
      timers: new Set(),
      onClose: [() => this.onSocketClosed(pair, 0), () => this.onSocketClosed(pair, 1)],
    };
    this.pairs.set(id, pair);
    // Someone else destroying a socket (the agent stopping) ends the pair; errors cannot come
    // from Node's I/O (it does none) but a destroy(err) must not go unhandled.
    down.once('close', pair.onClose[0]);
    up.once('close', pair.onClose[1]);
    up.on('error', noop);
    if (pair.idleMs > 0) this.scheduleIdle();
    return {
      bytes: () => {
        const [sent, received] = pair.final ?? this.kernel.bytes(id);
        return { sent, received };
      },
      close: () => this.end(pair, 'downstream_close', 'abort'),
    };
  }

  /** Ends every pair (their sockets are destroyed) and stops. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of [...this.pairs.values()]) this.end(p, p.first === 1 ? 'upstream_close' : 'downstream_close', 'abort');
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.kernel.close();
  }

  /** Batches from the addon: [id, side, events]... */
  onEvents(ev: Uint32Array): void {
    for (let i = 0; i + 2 < ev.length; i += 3) {
      const pair = this.pairs.get(ev[i]!);
      if (pair && !pair.ended) this.onEvent(pair, ev[i + 1] as Side, ev[i + 2]!);
    }
  }

  // ---- internals ----

  private refusal(err: unknown): SpliceRefusal {
    const code = err instanceof BpfError ? err.syscallCode : undefined;
    if (code === 'E2BIG') {
      if (!this.fullLogged) this.log.warn({ spliced: this.pairs.size }, 'splice maps full: new L4 connections use the userspace pipe');
      this.fullLogged = true;
      return 'full';
    }
    // A socket that already got its FIN (CLOSE_WAIT) or a reset cannot join a socket map.
    if (code === 'EOPNOTSUPP' || code === 'ENOTCONN') return 'not_established';
    this.log.warn({ err: (err as Error).message }, 'splice failed: using the userspace pipe');
    return 'error';
  }

  private onEvent(pair: Pair, side: Side, events: number): void {
    if (events & EPOLL.ERR) {
      const errno = this.kernel.socketError(pair.id, side);
      this.end(pair, side === 0 ? 'downstream_close' : 'upstream_close', 'abort', side, errno);
      return;
    }
    if (!(events & (EPOLL.RDHUP | EPOLL.HUP))) return;
    if (!pair.eof[side]) {
      pair.eof[side] = true;
      pair.first ??= side;
      this.shutWhenFlushed(pair, (1 - side) as Side);
    } else if (!pair.shut[side]) {
      // Hang-up after its FIN, though we never shut it down: the socket is gone (reset).
      this.end(pair, side === 0 ? 'downstream_close' : 'upstream_close', 'abort', side);
      return;
    }
    if (pair.ended) return;
    // Shut down both ways already: nothing more to hear from this side. Otherwise keep
    // listening for errors and the hang-up that our own shutdown of it will bring.
    if (!pair.shut[side]) this.kernel.arm(pair.id, side, false);
    this.maybeDone(pair);
  }

  /** Shuts `side` down for writing once it has taken every byte the kernel moved toward it. */
  private shutWhenFlushed(pair: Pair, side: Side): void {
    let last = Number.POSITIVE_INFINITY;
    let since = Date.now();
    let delay = 0;
    const attempt = (): void => {
      if (pair.ended) return;
      let unsent: number;
      try {
        unsent = this.kernel.unsent(pair.id, side);
      } catch {
        unsent = 0; // the socket is gone: nothing left to wait for
      }
      if (unsent > 0) {
        const now = Date.now();
        if (unsent < last) {
          last = unsent;
          since = now;
        } else if (now - since > FLUSH_STALL_MS) {
          this.log.warn({ unsent, side }, 'spliced bytes not taken by the peer socket: closing the connection');
          this.end(pair, pair.first === 1 ? 'upstream_close' : 'downstream_close', 'abort');
          return;
        }
        delay = Math.min(FLUSH_RETRY_MAX_MS, delay * 2 || 1);
        this.later(pair, attempt, delay);
        return;
      }
      this.kernel.shutdown(pair.id, side);
      pair.shut[side] = true;
      this.maybeDone(pair);
    };
    attempt();
  }

  private later(pair: Pair, fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      pair.timers.delete(t);
      fn();
    }, ms);
    pair.timers.add(t);
  }

  private maybeDone(pair: Pair): void {
    if (!pair.ended && pair.eof[0] && pair.eof[1] && pair.shut[0] && pair.shut[1]) this.end(pair, pair.first === 1 ? 'upstream_close' : 'downstream_close', 'graceful');
  }

  private onSocketClosed(pair: Pair, side: Side): void {
    if (pair.ended) return;
    this.end(pair, side === 0 ? 'downstream_close' : 'upstream_close', 'abort', side);
  }

  /**
   * Takes the pair out of the kernel, destroys both sockets and reports. On an abort caused by
   * one side, the other is treated as the userspace pipe treats it: a failed upstream resets
   * the client; a failed client closes the upstream.
   */
  private end(pair: Pair, reason: SpliceEnd, how: 'graceful' | 'abort', culprit?: Side, errno?: number): void {
    if (pair.ended) return;
    pair.ended = true;
    this.pairs.delete(pair.id);
    for (const t of pair.timers) clearTimeout(t);
    pair.timers.clear();
    let bytes: [number, number] = [0, 0];
    try {
      bytes = this.kernel.remove(pair.id) ?? bytes;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'splice removal failed');
    }
    pair.final = bytes;
    const [down, up] = pair.sock;
    down.off('close', pair.onClose[0]);
    up.off('close', pair.onClose[1]);
    if (how === 'abort' && culprit === 1) down.resetAndDestroy();
    else down.destroy();
    up.destroy();
    const error = errno ? errnoCode(errno) : undefined;
    pair.opts.onEnd({ reason, sent: bytes[0], received: bytes[1], ...(error ? { error } : {}) });
  }

  private scheduleIdle(): void {
    let min = Number.POSITIVE_INFINITY;
    for (const p of this.pairs.values()) if (p.idleMs > 0) min = Math.min(min, p.idleMs);
    const tick = Math.max(25, Math.min(1000, Math.floor(min / 4)));
    if (this.idleTimer && tick >= this.idleTick) return;
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTick = tick;
    this.idleTimer = setInterval(() => this.checkIdle(), tick);
    this.idleTimer.unref();
  }

  private checkIdle(): void {
    const now = Date.now();
    let any = false;
    for (const p of [...this.pairs.values()]) {
      if (p.idleMs <= 0) continue;
      any = true;
      let total: number;
      try {
        const [a, b] = this.kernel.bytes(p.id);
        total = a + b;
      } catch {
        continue;
      }
      if (total !== p.lastTotal) {
        p.lastTotal = total;
        p.lastActive = now;
      } else if (now - p.lastActive >= p.idleMs) {
        this.end(p, 'idle_timeout', 'abort');
      }
    }
    if (!any && this.idleTimer) {
      clearInterval(this.idleTimer);
      this.idleTimer = undefined;
    }
  }
}

const ERRNO_CODES: Record<number, string> = { 32: 'EPIPE', 104: 'ECONNRESET', 110: 'ETIMEDOUT', 113: 'EHOSTUNREACH', 111: 'ECONNREFUSED' };

function errnoCode(errno: number): string {
  return ERRNO_CODES[errno] ?? `errno ${errno}`;
}
