/**
 * Per-listener caps on open downstream connections (outbound 15001, inbound 15006, tunnel
 * 15008), so that one flooding client cannot take every file descriptor and the memory of
 * the agent that all pods of the node depend on. The kernel-level accept goes on; a
 * connection over the cap is closed at once, counted in
 * `weft_downstream_connections_rejected_total{listener}`, and logged at most once a second
 * per listener. `weft_downstream_connections{listener}` is the open count.
 *
 * A cap is the agent's, not a thread's: with worker threads (src/workers/) every thread
 * accepts on the same listeners, so the open counts live in one SharedArrayBuffer
 * ({@link SharedConnCounts}) that every thread reads and writes with Atomics. Each thread
 * counts its own connections in a slot of its own (so the control thread can zero the slot of
 * a worker that died, whose sockets the kernel closed with it) and checks the sum of all slots
 * at accept, twice:
 * - before Node makes a socket (`server.maxConnections`, read by Node's accept as "are we
 *   full", answers from the sum): a flood beyond the cap costs a close of the fd, nothing more;
 * - then exactly: the thread adds one to its slot and sums again; over the cap, it takes the
 *   one back and closes the socket before any listener sees it. Two threads racing for the
 *   last place may both refuse (never both admit): the cap is never exceeded.
 */
import type net from 'node:net';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';

export type ListenerName = 'outbound' | 'inbound' | 'tunnel';
const NAMES: readonly ListenerName[] = ['outbound', 'inbound', 'tunnel'];
const L = NAMES.length;

/**
 * The agent's open downstream connections per listener and thread, and the caps, shared by
 * every thread: Int32 words `[cap per listener][slot 0: open per listener][slot 1: ...]`.
 * Slot 0 is the control thread's, slot i worker i's.
 */
export class SharedConnCounts {
  readonly words: Int32Array;

  constructor(
    readonly buffer: SharedArrayBuffer,
    /** This thread's slot. */
    readonly slot: number,
  ) {
    this.words = new Int32Array(buffer);
  }

  /** A buffer for `threads` threads (the control thread included), caps unlimited. */
  static create(threads: number): SharedConnCounts {
    const c = new SharedConnCounts(new SharedArrayBuffer(4 * L * (threads + 1)), 0);
    for (let i = 0; i < L; i++) c.words[i] = 0x7fffffff;
    return c;
  }

  get threads(): number {
    return this.words.length / L - 1;
  }

  cap(listener: ListenerName): number {
    return Atomics.load(this.words, NAMES.indexOf(listener));
  }

  setCap(listener: ListenerName, max: number): void {
    Atomics.store(this.words, NAMES.indexOf(listener), Math.min(max, 0x7fffffff));
  }

  /** Open connections of `listener` in every thread. */
  total(listener: ListenerName): number {
    const i = NAMES.indexOf(listener);
    let n = 0;
    for (let s = 1; s < this.words.length / L; s++) n += Atomics.load(this.words, s * L + i);
    return n;
  }

  /** Open connections of every listener in the worker threads (slots 1..). */
  workers(): number {
    let n = 0;
    for (let w = 2 * L; w < this.words.length; w++) n += Atomics.load(this.words, w);
    return n;
  }

  /** Takes a place for one connection in this thread's slot: false (nothing taken) when the agent is at the cap. */
  take(listener: ListenerName): boolean {
    const i = NAMES.indexOf(listener);
    Atomics.add(this.words, (this.slot + 1) * L + i, 1);
    if (this.total(listener) <= this.cap(listener)) return true;
    Atomics.sub(this.words, (this.slot + 1) * L + i, 1);
    return false;
  }

  give(listener: ListenerName): void {
    Atomics.sub(this.words, (this.slot + 1) * L + NAMES.indexOf(listener), 1);
  }

  /** A worker thread ended: its sockets closed with it, its counts go (control thread only). */
  clearSlot(slot: number): void {
    for (let i = 0; i < L; i++) Atomics.store(this.words, (slot + 1) * L + i, 0);
  }
}

export class DownstreamCaps {
  private readonly lastLog = new Map<ListenerName, number>();
  readonly shared: SharedConnCounts;

  constructor(
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /** The agent's shared counts (worker threads); default: this thread's alone. */
    shared?: SharedConnCounts,
  ) {
    this.shared = shared ?? SharedConnCounts.create(1);
  }

  /**
   * Cap `server` at the agent's cap for `name` (set here when `max` is given: the control
   * thread; a worker follows the caps in the shared buffer) and count its connections.
   */
  attach(name: ListenerName, server: net.Server, max?: number): void {
    const { shared, metrics } = this;
    if (max !== undefined) shared.setCap(name, max);
    const labels = { listener: name };
    this.metrics.downstreamConnections.set(labels, 0);
    this.metrics.downstreamRejected.inc(labels, 0);
    const s = server as net.Server & { _connections: number };
    // Node's accept closes the fd without making a socket when `_connections >= maxConnections`:
    // true exactly when the agent's connections (every thread's) are at the cap.
    Object.defineProperty(server, 'maxConnections', {
      configurable: true,
      get: () => s._connections + Math.max(0, shared.cap(name) - shared.total(name)),
      set: () => undefined,
    });
    const refuse = (remoteAddress?: string): void => {
      this.metrics.downstreamRejected.inc(labels);
      const now = Date.now();
      if (now - (this.lastLog.get(name) ?? 0) < 1000) return;
      this.lastLog.set(name, now);
      this.log.warn({ listener: name, max: shared.cap(name), src_ip: remoteAddress }, 'downstream connection refused: the listener is at agent.maxDownstreamConnections');
    };
    // The exact check, before any 'connection' listener (the proxy, TLS, HTTP) sees the socket.
    const emit = server.emit;
    server.emit = function (this: net.Server, event: string | symbol, ...args: unknown[]): boolean {
      if (event !== 'connection') return emit.call(this, event, ...args);
      const socket = args[0] as net.Socket;
      if (!shared.take(name)) {
        refuse(socket.remoteAddress);
        socket.destroy();
        return false;
      }
      socket.once('close', () => {
        shared.give(name);
        metrics.downstreamConnections.dec(labels);
      });
      metrics.downstreamConnections.inc(labels);
      return emit.call(this, event, ...args);
    } as typeof server.emit;
    server.on('drop', (d?: { remoteAddress?: string }) => refuse(d?.remoteAddress));
  }

  /** New caps from a config change (control thread; the workers read them from the shared buffer); connections already open stay. */
  apply(limits: Record<ListenerName, number>): void {
    for (const name of NAMES) this.shared.setCap(name, limits[name]);
  }
}
