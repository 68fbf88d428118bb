/**
 * One agent per node, replaced without losing a connection (DESIGN.md "Replacing and
 * restarting the agent").
 *
 * The node's slot is its pin root: the running agent holds an exclusive flock on the pin root
 * directory for as long as it lives, and answers on a control socket in the state directory
 * (`<stateDir>/agent-<hash of the pin root>.sock`). A new agent that finds the lock taken
 * connects there and becomes the successor:
 *
 *   successor -> `hello`    old -> `welcome` + fds: the lock, and every listening socket
 *   successor -> `capture`  old stops syncing BPF maps and links  -> `capture-released`
 *   (the successor reconciles capture, gets its certificates, starts accepting on the sockets)
 *   successor -> `ready`    old closes its copies of the sockets  -> `released`
 *   (the old agent drains what it still serves and exits; the successor serves the control socket)
 *
 * The listening sockets are the same kernel sockets in both processes, so no connection that
 * reached a listen queue is lost when the old agent stops accepting: the queue is the
 * successor's too. Until `ready` both accept. If the successor goes away before `ready`, the
 * old agent takes capture back and carries on. A process that holds the lock but does not
 * answer (another program, an agent with another state directory) makes a new agent refuse to
 * start, naming the pid.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../telemetry/log.js';
import { closeFd, peerCred, recvFds, sendFds, tryLock, unixConnect, type SysError } from './fds.js';

/** A listening socket, by the name of the agent's listener (outbound, inbound, tunnel, admin, metrics). */
export interface HandedListener {
  name: string;
  host: string;
  port: number;
  fd: number;
}

/** What the running agent does when a successor asks (see the protocol above). */
export interface HandoverHost {
  /** The listening sockets to hand over (fds of this process; the successor gets its own copies). */
  listeners(): HandedListener[];
  /** The weft_agent slot this agent marks its connections with (the successor takes the other). */
  agentSlot(): number | undefined;
  /** The successor runs capture from now on: stop syncing maps and links. */
  releaseCapture(): void;
  /** The successor went away before it was ready: take capture back. */
  resumeCapture(): void;
  /** The successor accepts now: stop accepting (close this process's copies of the sockets). */
  stopAccepting(): Promise<void>;
  /** Told once `released` is sent: drain what this agent still serves, then exit. */
  handedOver(successor: { pid: number }): void;
}

export interface SlotOptions {
  pinRoot: string;
  stateDir: string;
  log: Logger;
  /** How long to wait for an agent that holds the lock to answer (it may be starting or exiting). Default 5 s. */
  waitMs?: number;
  /** Per message of the handover. Default 10 s. */
  replyTimeoutMs?: number;
}

/** A second agent that cannot be the successor of the one holding the pin root. */
export class SlotTakenError extends Error {
  constructor(
    message: string,
    readonly holders: number[],
  ) {
    super(message);
    this.name = 'SlotTakenError';
  }
}

const VERSION = 1;

/** The control socket of the agent on `pinRoot`. */
export function controlSocketPath(stateDir: string, pinRoot: string): string {
  const id = createHash('sha256').update(pinRoot).digest('hex').slice(0, 12);
  return join(stateDir, `agent-${id}.sock`);
}

type Msg = { op: string; [k: string]: unknown };

/**
 * The agent that ran on the node before this one, while it hands over: its listening
 * sockets (fds of this process now) and the two remaining steps of the protocol.
 */
export class Predecessor {
  private readonly sock: net.Socket;
  private buffered = '';
  private waiting?: { op: string; resolve: (m: Msg) => void; reject: (e: Error) => void };
  private gone = false;

  constructor(
    fd: number,
    readonly pid: number,
    readonly listeners: HandedListener[],
    /** The weft_agent slot it marks its connections with. */
    readonly agentSlot: number | undefined,
    private readonly replyTimeoutMs: number,
    private readonly log: Logger,
  ) {
    this.sock = new net.Socket({ fd, readable: true, writable: true });
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d: string) => this.onData(d));
    this.sock.on('error', (err) => this.log.debug({ err: err.message }, 'control connection to the previous agent'));
    this.sock.on('close', () => {
      this.gone = true;
      this.waiting?.resolve({ op: 'gone' });
      this.waiting = undefined;
    });
  }

  /** The previous agent stops syncing BPF maps and links: capture is this agent's. */
  async releaseCapture(): Promise<void> {
    await this.request({ op: 'capture' }, 'capture-released');
  }

  /** This agent accepts now: the previous one stops accepting, and drains. Resolves once it has. */
  async ready(): Promise<void> {
    await this.request({ op: 'ready' }, 'released');
    this.sock.end();
  }

  /** This agent gives up (its start-up failed): the previous one carries on as before. */
  abandon(): void {
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buffered += d;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      let m: Msg;
      try {
        m = JSON.parse(line) as Msg;
      } catch {
        this.log.warn({ line: line.slice(0, 200) }, 'unreadable message from the previous agent');
        continue;
      }
      const w = this.waiting;
      this.waiting = undefined;
      if (!w) continue;
      if (m.op === w.op) w.resolve(m);
      else w.reject(new Error(`the previous agent (pid ${this.pid}) answered ${JSON.stringify(m)} to a handover step`));
    }
  }

  /** One step. A previous agent that is gone (it crashed, or exited) has nothing left to coordinate: that is not an error. */
  private request(msg: Msg, expect: string): Promise<Msg> {
    if (this.gone) return Promise.resolve({ op: 'gone' });
    return new Promise<Msg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`the previous agent (pid ${this.pid}) did not answer '${msg.op}' within ${this.replyTimeoutMs} ms`));
      }, this.replyTimeoutMs);
      const done =
        <T>(f: (v: T) => void) =>
        (v: T) => {
          clearTimeout(timer);
          f(v);
        };
      this.waiting = { op: expect, resolve: done(resolve), reject: done(reject) };
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }
}

/**
 * This agent's hold on the node: the pin-root lock, the listening sockets it inherited from
 * the agent it replaces (if any), and, once it serves, the control socket its own successor
 * will call.
 */
export class NodeSlot {
  readonly socketPath: string;
  private server?: net.Server;
  private successor?: { sock: net.Socket; pid: number; captureReleased: boolean; ready: boolean };
  private readonly inherited: HandedListener[];
  private closed = false;

  private constructor(
    private readonly lockFd: number,
    private readonly opts: SlotOptions,
    readonly predecessor: Predecessor | undefined,
  ) {
    this.socketPath = controlSocketPath(opts.stateDir, opts.pinRoot);
    this.inherited = [...(predecessor?.listeners ?? [])];
  }

  /**
   * Takes the node's slot: the lock when it is free (a first start, or after a crash: the
   * kernel released the dead agent's lock), else a handover from the agent that holds it.
   * Throws {@link SlotTakenError} when the holder does not answer as a weft agent does.
   * `pinRoot` must exist.
   */
  static async acquire(opts: SlotOptions): Promise<NodeSlot> {
    const { pinRoot, stateDir, log } = opts;
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const path = controlSocketPath(stateDir, pinRoot);
    if (path.length > 107) throw new Error(`the control socket path ${path} is longer than a unix socket path may be (107): use a shorter stateDir`);
    const deadline = Date.now() + (opts.waitMs ?? 5_000);
    let lastWhy = '';
    for (;;) {
      const fd = openSync(pinRoot, 'r');
      let keep = false;
      try {
        if (tryLock(fd)) {
          // Nobody runs here: what a crashed agent left of its control socket is stale.
          rmSync(path, { force: true });
          keep = true;
          log.info({ pinRoot }, 'pin root locked: no other agent runs on this node');
          return new NodeSlot(fd, opts, undefined);
        }
      } finally {
        if (!keep) closeSync(fd);
      }
      try {
        const { lockFd, predecessor } = NodeSlot.handshake(path, opts);
        log.info({ pinRoot, predecessor: predecessor.pid, listeners: predecessor.listeners.map((l) => `${l.name} ${l.host}:${l.port}`) }, 'taking over from the running agent');
        return new NodeSlot(lockFd, opts, predecessor);
      } catch (err) {
        const e = err as SysError;
        // Not listening (yet, or any more): the holder is starting or exiting. Anything else is final.
        if (e.code !== 'ENOENT' && e.code !== 'ECONNREFUSED' && e.code !== 'ECONNRESET' && e.code !== 'EPIPE' && e.code !== 'EOF') throw refusal(pinRoot, path, e.message);
        lastWhy = `${e.code}: ${e.message}`;
      }
      if (Date.now() > deadline) throw refusal(pinRoot, path, `nothing answers there (${lastWhy})`);
      await sleep(100);
    }
  }

  /** hello -> welcome + fds, synchronously (nothing else to do meanwhile). */
  private static handshake(path: string, opts: SlotOptions): { lockFd: number; predecessor: Predecessor } {
    const fd = unixConnect(path);
    const fds: number[] = [];
    try {
      sendFds(fd, Buffer.from(JSON.stringify({ op: 'hello', version: VERSION, pid: process.pid, pinRoot: opts.pinRoot }) + '\n'), []);
      const timeout = opts.replyTimeoutMs ?? 10_000;
      let text = '';
      while (!text.includes('\n')) {
        const got = recvFds(fd, 65536, timeout);
        fds.push(...got.fds);
        if (got.data.length === 0) throw Object.assign(new Error('the agent closed the control connection'), { code: 'EOF' });
        text += got.data.toString('utf8');
      }
      const m = JSON.parse(text.slice(0, text.indexOf('\n'))) as Msg;
      if (m.op === 'refused') throw new Error(`the running agent refused the handover: ${String(m.reason)}`);
      if (m.op !== 'welcome' || !Array.isArray(m.listeners)) throw new Error(`unexpected answer ${text.slice(0, 200)}`);
      const specs = m.listeners as Omit<HandedListener, 'fd'>[];
      if (fds.length !== specs.length + 1) throw new Error(`the handover carried ${fds.length} fds for ${specs.length} listeners and the lock`);
      const [lockFd, ...listenerFds] = fds;
      const listeners = specs.map((s, i) => ({ name: String(s.name), host: String(s.host), port: Number(s.port), fd: listenerFds[i]! }));
      fds.length = 0;
      return { lockFd: lockFd!, predecessor: new Predecessor(fd, Number(m.pid), listeners, typeof m.agentSlot === 'number' ? m.agentSlot : undefined, timeout, opts.log) };
    } catch (err) {
      for (const f of fds) closeFd(f);
      closeFd(fd);
      throw err;
    }
  }

  /**
   * The inherited listening socket for this listener, if the previous agent had one on the
   * same address (port 0 asks for any port: the previous agent's). Given out once; the caller
   * owns it (`server.listen({ fd })`). Undefined: bind a socket of your own.
   */
  inherit(name: string, host: string, port: number): number | undefined {
    const i = this.inherited.findIndex((l) => l.name === name && l.host === host && (port === 0 || l.port === port));
    if (i < 0) return undefined;
    return this.inherited.splice(i, 1)[0]!.fd;
  }

  /** Closes the inherited sockets nobody took (a listener this agent no longer has, or moved). */
  dropUnclaimed(): void {
    for (const l of this.inherited.splice(0)) {
      this.opts.log.warn({ listener: l.name, address: `${l.host}:${l.port}` }, 'the previous agent listened where this one does not: socket closed');
      closeFd(l.fd);
    }
  }

  /** Answer successors on the control socket. Call once this agent serves (after its predecessor released). */
  async serve(host: HandoverHost): Promise<void> {
    if (this.closed || this.server) return;
    const { log } = this.opts;
    // The lock is ours: whatever is at the path is a leftover of an agent before us.
    rmSync(this.socketPath, { force: true });
    const server = (this.server = net.createServer((sock) => this.onSuccessor(sock, host)));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: this.socketPath }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => log.error({ err: err.message }, 'control socket error'));
    log.debug({ path: this.socketPath }, 'control socket: a successor may take over');
  }

  /**
   * Stop answering successors. libuv removes the path as it closes the listening socket, at
   * once; the connection of a successor in the middle of its handover stays.
   */
  async stopServing(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    s.close();
  }

  /** At exit: the control socket goes, and the lock with the last process holding it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stopServing();
    this.successor?.sock.destroy();
    this.dropUnclaimed();
    closeSync(this.lockFd);
  }

  private onSuccessor(sock: net.Socket, host: HandoverHost): void {
    const { log } = this.opts;
    const handle = (sock as unknown as { _handle?: { fd?: number } })._handle;
    const fd = handle?.fd ?? -1;
    let cred: { pid: number; uid: number };
    try {
      cred = peerCred(fd);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'control connection without credentials: closed');
      sock.destroy();
      return;
    }
    const say = (m: Msg) => {
      if (!sock.destroyed) sock.write(JSON.stringify(m) + '\n');
    };
    if (cred.uid !== (process.getuid?.() ?? 0)) {
      log.warn({ pid: cred.pid, uid: cred.uid }, 'control connection from another user: refused');
      say({ op: 'refused', reason: `uid ${cred.uid} is not the agent's` });
      sock.end();
      return;
    }
    if (this.successor) {
      log.warn({ pid: cred.pid, successor: this.successor.pid }, 'a second successor: refused (a handover is in progress)');
      say({ op: 'refused', reason: `a handover to pid ${this.successor.pid} is in progress` });
      sock.end();
      return;
    }
    const me = { sock, pid: cred.pid, captureReleased: false, ready: false };
    this.successor = me;
    sock.setEncoding('utf8');
    let buffered = '';
    const onMessage = async (m: Msg) => {
      switch (m.op) {
        case 'hello': {
          const listeners = host.listeners();
          const welcome = { op: 'welcome', version: VERSION, pid: process.pid, agentSlot: host.agentSlot(), listeners: listeners.map(({ name, host, port }) => ({ name, host, port })) };
          log.info({ successor: cred.pid, listeners: listeners.map((l) => `${l.name} ${l.host}:${l.port}`) }, 'a new agent takes over: handing over the listening sockets');
          // Nothing was written on this socket through Node: the fds go out first, in order.
          sendFds(fd, Buffer.from(JSON.stringify(welcome) + '\n'), [this.lockFd, ...listeners.map((l) => l.fd)]);
          return;
        }
        case 'capture':
          me.captureReleased = true;
          host.releaseCapture();
          log.info({ successor: cred.pid }, 'capture handed over: the new agent syncs maps and links from now on');
          say({ op: 'capture-released' });
          return;
        case 'ready':
          me.ready = true;
          await host.stopAccepting();
          // Before `released`: the successor binds the control socket path once it hears it.
          await this.stopServing();
          say({ op: 'released' });
          log.info({ successor: cred.pid }, 'handed over: the new agent accepts every new connection; draining');
          host.handedOver({ pid: cred.pid });
          return;
        default:
          log.warn({ op: m.op }, 'unknown control message');
      }
    };
    sock.on('data', (d: string) => {
      buffered += d;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        let m: Msg;
        try {
          m = JSON.parse(line) as Msg;
        } catch {
          log.warn({ line: line.slice(0, 200) }, 'unreadable control message: connection closed');
          sock.destroy();
          return;
        }
        onMessage(m).catch((err: Error) => {
          log.error({ err: err.message, op: m.op }, 'handover step failed');
          sock.destroy();
        });
      }
    });
    sock.on('error', (err) => log.debug({ err: err.message }, 'control connection error'));
    sock.on('close', () => {
      if (this.successor === me) this.successor = undefined;
      if (me.ready) return;
      log.warn({ successor: cred.pid }, 'the new agent went away before it was ready: this agent carries on');
      if (me.captureReleased) host.resumeCapture();
    });
  }
}

/** The message of a refused start: who holds the pin root, and what to do. */
function refusal(pinRoot: string, socketPath: string, why: string): SlotTakenError {
  const holders = lockHolders(pinRoot);
  const who = holders.length ? holders.map((pid) => `pid ${pid}${describePid(pid)}`).join(', ') : 'a process this pid namespace cannot see';
  return new SlotTakenError(
    `another agent holds the pin root ${pinRoot} (${who}) and cannot hand over to this one: ${why} at ${socketPath}. ` +
      `Two agents on one pin root would undo each other's capture; stop ${holders.length ? `pid ${holders.join(', ')}` : 'it'} first, or give this agent its own --pin-root`,
    holders,
  );
}

/**
 * The processes that hold the pin root: those with it open (the agent, or two during a
 * handover: the lock is one open file shared by both), else the pid /proc/locks gives, which
 * names the process that took the lock first, even after it handed it on.
 */
export function lockHolders(path: string): number[] {
  const open = pidsWithOpen(path);
  if (open.length) return open;
  return lockOwners(path).filter((pid) => existsSync(`/proc/${pid}`));
}

function pidsWithOpen(path: string): number[] {
  const out: number[] = [];
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    return out;
  }
  let pids: string[] = [];
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return out;
  }
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) === real) {
          out.push(Number(pid));
          break;
        }
      } catch {
        /* gone meanwhile */
      }
    }
  }
  return out;
}

/** The pids /proc/locks gives for an flock on `path`. */
function lockOwners(path: string): number[] {
  let ino: bigint;
  let dev: string;
  try {
    const st = statSync(path, { bigint: true });
    ino = st.ino;
    // /proc/locks writes the device as major:minor in hex (glibc's dev_t encoding here).
    const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn);
    const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn);
    dev = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
  } catch {
    return [];
  }
  const out = new Set<number>();
  let text = '';
  try {
    text = readFileSync('/proc/locks', 'utf8');
  } catch {
    return [];
  }
  // "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK') continue;
    const pid = Number(f[4]);
    const id = f[5]?.split(':');
    if (id?.length === 3 && `${id[0]}:${id[1]}` === dev && BigInt(id[2]!) === ino && pid > 0) out.add(pid);
  }
  return [...out];
}

function describePid(pid: number): string {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    return cmd ? ` "${cmd.length > 160 ? cmd.slice(0, 160) + '...' : cmd}"` : '';
  } catch {
    return existsSync(`/proc/${pid}`) ? '' : ' (gone)';
  }
}
