/**
 * The kernel side of capture, as the capture manager uses it: load the eBPF objects (their
 * maps pinned and shared under one pin root), sync the maps, attach the programs to pods'
 * cgroups with pinned BPF links, and read the original destination of accepted connections.
 *
 * Pins are the source of truth across agent restarts and upgrades:
 *   <pinRoot>/weft_dests, weft_config, ...     the maps (pinned by libbpf, LIBBPF_PIN_BY_NAME)
 *   <pinRoot>/links/<cgroupId>/<program>       one link per program per captured cgroup
 *   <pinRoot>/links/agent/agent_sockops        the link on the agent's own cgroup
 * close() leaves them in place, so captured pods stay captured while no agent runs; the next
 * agent adopts them (and moves them to its own programs) in attach().
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statSync, statfsSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { BpfError } from '../errors.js';
import {
  attachToMap,
  BpfLink,
  BpfMap,
  BpfObject,
  codecs,
  KernelSplicer,
  isBpffs,
  mountBpffs,
  origDstOf,
  progInfo,
  repoRoot,
  RingReader,
  unpin,
  type TypedMap,
  type IpPort,
  type LbEvent,
  type Refusal,
} from './bpf.js';
import { AGENT_PROGRAM, CGROUP2_SUPER_MAGIC, DST_F_LB, DST_F_REDIRECT, LB_SLOTS_MAX, MAP_NAMES, POD_F_STRICT, PROGRAMS, SPLICE, STRUCTS, type ProgramSpec } from './constants.js';
import { SocketSplicer, socketFd, type SpliceHandle, type SpliceOptions, type SpliceRefusal } from './splice.js';

export interface DatapathOptions {
  /** Where maps and links are pinned. Default `/sys/fs/bpf/weft`. */
  pinRoot?: string;
  /** Where the compiled objects are. Default `<repo>/build/bpf`. */
  objDir?: string;
  /** The agent's node address: redirected connections go to nodeIp:outboundPort. */
  nodeIp: string;
  outboundPort: number;
  /**
   * The agent's own cgroup v2 directory: weft_agent_sockops goes there, to mark the connections
   * this process opens (strict ingress admits them). Default: this process's cgroup, from
   * /proc/self/cgroup. `false`: none (then strict pods admit nothing from this agent).
   */
  agentCgroup?: string | false;
  /**
   * Which of the two weft_agent slots this agent registers in: 0, unless it takes over from an
   * agent that holds slot 0 (then 1), for both to be marked while the old one drains. An agent
   * that starts alone frees the other slot and the links an earlier agent left on its cgroup.
   */
  agentSlot?: 0 | 1;
  /** A predecessor still runs (a handover): its slot and link stay. */
  beside?: boolean;
  /**
   * Load the kernel splice of L4 connections (bpf/splice.bpf.c). Default true. When the kernel
   * refuses it, the datapath still opens, without it (see {@link Datapath.splicing}).
   */
  splice?: boolean;
  log?: pino.Logger;
}

export interface OrigDst {
  ip: string;
  port: number;
  /** cgroup v2 id of the calling pod: its captured pod-level cgroup, whichever cgroup below it the task was in. */
  cgroupId: bigint;
  /** tgid of the task that connected (root pid namespace). */
  pid: number;
}

/** A service port that connect4 balances itself (socket LB), and its backend slots. */
export interface BalancedPort {
  ip: string;
  port: number;
  /** 1..LB_SLOTS_MAX backends, one per slot: an endpoint with twice the weight fills twice the slots. */
  slots: IpPort[];
}

export const DEFAULT_PIN_ROOT = '/sys/fs/bpf/weft';
/** Where the bpffs is mounted when no bpffs holds the pin root. */
const BPFFS_MOUNT = '/sys/fs/bpf';
const ENOENT = 2;
const EINVAL = 22;
const ENOLINK = 67;
/** `<pinRoot>/links/agent/`: the agent's own link (not a cgroup id: attached() skips it). */
const AGENT_LINK_DIR = 'agent';

interface LoadedProgram {
  spec: ProgramSpec;
  fd: number;
  id: number;
}

type DestMap = TypedMap<IpPort, number>;
type IpMap = TypedMap<string, number>;

export class Datapath {
  private readonly log: pino.Logger;
  private readonly linksDir: string;
  /** Last synced content of each map, `key hex -> value hex`: a sync that changes nothing costs no syscall. */
  private readonly synced = new Map<string, Map<string, string>>();
  /** cgroupId -> program name -> program id the pinned link runs, as this process left it. */
  private readonly linked = new Map<bigint, Map<string, number>>();
  private splicer?: SocketSplicer;
  /** What setDestinations asked for, and the service ports balanced in connect4 ("ip:port"). */
  private redirects: { ip: string; port: number }[] = [];
  private balanced = new Set<string>();
  private lbReader?: RingReader;
  private refusedReader?: RingReader;
  private closed = false;

  private constructor(
    readonly pinRoot: string,
    private readonly objects: BpfObject[],
    private readonly programs: Map<string, LoadedProgram>,
    private readonly maps: {
      dests: DestMap;
      config: TypedMap<number, { nodeIp: string; outboundPort: number }>;
      tuple: BpfMap;
      pods: IpMap;
      cgroups: BpfMap;
      agent: BpfMap;
      probes: BpfMap;
      refused: BpfMap;
      lbSvcs: BpfMap;
      lbSlots: BpfMap;
      lbEvents: BpfMap;
      lbLost: BpfMap;
    },
    log: pino.Logger,
  ) {
    this.log = log;
    this.linksDir = join(pinRoot, 'links');
  }

  /**
   * Mounts the bpffs if needed, loads every object (reusing the maps already pinned under
   * the pin root, with their content), and writes the config map. Does not attach anything.
   */
  static open(opts: DatapathOptions): Datapath {
    const log = opts.log ?? pino({ level: 'silent' });
    const pinRoot = opts.pinRoot ?? DEFAULT_PIN_ROOT;
    const objDir = opts.objDir ?? join(repoRoot, 'build', 'bpf');
    preparePinRoot(pinRoot, log);

    const objects: BpfObject[] = [];
    const opened: BpfMap[] = [];
    try {
      const programs = new Map<string, LoadedProgram>();
      for (const spec of [...PROGRAMS, AGENT_PROGRAM]) {
        const obj = BpfObject.open(join(objDir, spec.object), pinRoot);
        objects.push(obj);
        obj.load();
        const fd = obj.programFd(spec.program);
        programs.set(spec.name, { spec, fd, id: progInfo(fd).id });
      }
      // Every object declares every map, all pinned by name: any object's handle is the same map.
      const map = (name: string): BpfMap => {
        const m = objects[0]!.map(name);
        opened.push(m);
        return m;
      };
      const maps = {
        dests: map(MAP_NAMES.dests).typed(codecs.dstKey, codecs.flags),
        config: map(MAP_NAMES.config).typed(codecs.u32, codecs.config),
        tuple: map(MAP_NAMES.tupleDst),
        pods: map(MAP_NAMES.pods).typed(codecs.ip4, codecs.flags),
        cgroups: map(MAP_NAMES.cgroups),
        agent: map(MAP_NAMES.agent),
        probes: map(MAP_NAMES.probes),
        refused: map(MAP_NAMES.refused),
        lbSvcs: map(MAP_NAMES.lbSvcs),
        lbSlots: map(MAP_NAMES.lbSlots),
        lbEvents: map(MAP_NAMES.lbEvents),
        lbLost: map(MAP_NAMES.lbLost),
      };
      const dp = new Datapath(pinRoot, objects, programs, maps, log);
      if (opts.splice ?? true) dp.splicer = openSplicer(join(objDir, SPLICE.object), pinRoot, objects, log);
      maps.config.set(0, { nodeIp: opts.nodeIp, outboundPort: opts.outboundPort });
      dp.readRefusals();
      const agentCgroup = opts.agentCgroup ?? ownCgroup();
      dp.agentSlot = opts.agentSlot ?? 0;
      if (!opts.beside) dp.forgetOtherAgents();
      if (agentCgroup !== false) dp.markAgent(agentCgroup);
      log.info(
        {
          pinRoot,
          nodeIp: opts.nodeIp,
          outboundPort: opts.outboundPort,
          programs: Object.fromEntries([...programs].map(([n, p]) => [n, p.id])),
          l4Splice: dp.splicing,
          agentCgroup: opts.agentCgroup === false ? null : agentCgroup,
        },
        'datapath loaded',
      );
      return dp;
    } catch (err) {
      for (const m of opened) m.close();
      for (const o of objects) o.close();
      throw err;
    }
  }

  /**
   * Full sync of the destinations map: every entry is redirected to the agent; entries not
   * given are removed. Invalid entries are skipped with a warning. Cheap when unchanged.
   */
  setDestinations(entries: { ip: string; port: number }[]): void {
    this.redirects = entries;
    this.syncDestinations();
  }

  /**
   * Full sync of the service ports that connect4 balances itself (socket LB) and their backend
   * slots. A port must also be a destination (setDestinations). Whatever is missing or half
   * written at a given moment (a slot, the slot count) makes connect4 send that connect to the
   * agent, which serves it: so the order below only keeps such moments short. Ports leaving
   * lose their flag first; ports entering get it last, once their slots are there.
   */
  setBalanced(ports: BalancedPort[]): void {
    this.checkOpen();
    const next = new Map<string, BalancedPort>();
    const slots = new Map<string, { key: Buffer; value: Buffer }>();
    const svcs = new Map<string, { key: Buffer; value: Buffer }>();
    for (const p of ports) {
      try {
        if (p.slots.length === 0 || p.slots.length > LB_SLOTS_MAX) throw new TypeError(`${p.slots.length} slots (1..${LB_SLOTS_MAX})`);
        const svcKey = codecs.dstKey.encode(p);
        const entries = p.slots.map((b, slot) => ({ key: codecs.lbSlotKey.encode({ ip: p.ip, port: p.port, slot }), value: codecs.lbBackend.encode(b) }));
        for (const e of entries) slots.set(e.key.toString('hex'), e);
        svcs.set(svcKey.toString('hex'), { key: svcKey, value: codecs.lbSvc.encode(p.slots.length) });
        next.set(`${p.ip}:${p.port}`, p);
      } catch (err) {
        this.log.warn({ ip: p.ip, port: p.port, err: (err as Error).message }, 'balanced service port skipped');
      }
    }
    const leaving = [...this.balanced].filter((k) => !next.has(k));
    if (leaving.length) {
      for (const k of leaving) this.balanced.delete(k);
      this.syncDestinations();
    }
    this.sync(MAP_NAMES.lbSlots, this.maps.lbSlots, slots);
    this.sync(MAP_NAMES.lbSvcs, this.maps.lbSvcs, svcs);
    const entering = [...next.keys()].filter((k) => !this.balanced.has(k));
    if (entering.length) {
      this.balanced = new Set(next.keys());
      this.syncDestinations();
    }
  }

  /**
   * Reads the events of balanced connections (opened, closed: struct weft_lb_event) as they
   * come, from the event loop, and those the ring holds already. Once per datapath.
   */
  onLbEvents(handler: (e: LbEvent) => void): void {
    this.checkOpen();
    if (this.lbReader) throw new Error('onLbEvents: a reader is registered already');
    const size = STRUCTS.weft_lb_event.size;
    this.lbReader = new RingReader(this.maps.lbEvents, size, (records) => {
      for (let off = 0; off + size <= records.length; off += size) handler(codecs.lbEvent(records, off));
    });
    this.lbReader.drain();
  }

  /** Stops reading the events (another agent reads them now: a ring has one reader). */
  offLbEvents(): void {
    this.lbReader?.close();
    this.lbReader = undefined;
  }

  /** Stops logging refused connects (another agent reads weft_refused now), or starts again. */
  readRefusedConnects(on: boolean): void {
    if (!on) {
      this.refusedReader?.close();
      this.refusedReader = undefined;
    } else if (!this.refusedReader) this.readRefusals();
  }

  /**
   * Forgets what this process last wrote: the next syncs read the maps and links from the
   * kernel again. For an agent that takes capture back after another agent ran it.
   */
  resync(): void {
    this.synced.clear();
    this.linked.clear();
  }

  /** Events the ring had no room for, since the maps were made (weft_lb_lost). */
  lbEventsLost(): number {
    const v = this.maps.lbLost.lookup(codecs.u32.encode(0));
    return v ? Number(codecs.u64.decode(v)) : 0;
  }

  private syncDestinations(): void {
    const desired = new Map<string, { key: Buffer; value: Buffer }>();
    const redirect = codecs.flags.encode(DST_F_REDIRECT);
    const balance = codecs.flags.encode(DST_F_REDIRECT | DST_F_LB);
    for (const e of this.redirects) {
      let key: Buffer;
      try {
        key = codecs.dstKey.encode(e);
      } catch (err) {
        this.log.warn({ ip: e.ip, port: e.port, err: (err as Error).message }, 'destination skipped');
        continue;
      }
      desired.set(key.toString('hex'), { key, value: this.balanced.has(`${e.ip}:${e.port}`) ? balance : redirect });
    }
    this.sync(MAP_NAMES.dests, this.maps.dests.map, desired);
  }

  /** Full sync of the pods map (read by the strict ingress program). */
  setPods(entries: { ip: string; strict: boolean }[]): void {
    const desired = new Map<string, { key: Buffer; value: Buffer }>();
    for (const e of entries) {
      let key: Buffer;
      try {
        key = codecs.ip4.encode(e.ip);
      } catch (err) {
        this.log.warn({ ip: e.ip, err: (err as Error).message }, 'pod skipped');
        continue;
      }
      desired.set(key.toString('hex'), { key, value: codecs.flags.encode(e.strict ? POD_F_STRICT : 0) });
    }
    this.sync(MAP_NAMES.pods, this.maps.pods.map, desired);
  }

  /**
   * Full sync of the pods' probe ports (pod ip:port): strict ingress admits connections from
   * the node address to these, the kubelet's probes, and to no other port of the pod.
   */
  setProbes(entries: IpPort[]): void {
    const desired = new Map<string, { key: Buffer; value: Buffer }>();
    const value = codecs.flags.encode(0);
    for (const e of entries) {
      let key: Buffer;
      try {
        key = codecs.dstKey.encode(e);
      } catch (err) {
        this.log.warn({ ip: e.ip, port: e.port, err: (err as Error).message }, 'probe port skipped');
        continue;
      }
      desired.set(key.toString('hex'), { key, value });
    }
    this.sync(MAP_NAMES.probes, this.maps.probes, desired);
  }

  /**
   * Captures the pod whose cgroup v2 directory is `cgroupPath`. Idempotent: links already
   * pinned for this cgroup are adopted, and moved to the programs this process loaded when
   * they run others (an upgrade, atomic per link). `strict` (default false) adds or removes
   * the ingress link. On failure, links created by this call are removed again.
   *
   * The cgroup becomes a pod connect4 attributes callers to (weft_cgroups) before any link
   * is made: a task in it or in any cgroup below it (the containers) is this pod. The pod
   * cgroup must not be inside another captured one (the outer one would take its callers).
   */
  attach(cgroupPath: string, opts?: { strict?: boolean }): { cgroupId: bigint } {
    this.checkOpen();
    const cgroupId = cgroupIdOf(cgroupPath);
    if (statfsSync(cgroupPath).type !== CGROUP2_SUPER_MAGIC) throw new BpfError('attach', EINVAL, 'EINVAL', `${cgroupPath} is not a cgroup v2 directory`);
    const strict = opts?.strict ?? false;
    const dir = join(this.linksDir, String(cgroupId));
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    let linked = this.linked.get(cgroupId);
    if (!linked) this.linked.set(cgroupId, (linked = new Map()));
    const cgKey = codecs.u64.encode(cgroupId);
    if (!this.maps.cgroups.lookup(cgKey)) this.maps.cgroups.update(cgKey, codecs.flags.encode(0));

    const created: string[] = [];
    try {
      for (const spec of PROGRAMS) {
        if (spec.strictOnly && !strict) {
          this.unlink(cgroupId, spec.name);
          continue;
        }
        if (this.ensureLink(cgroupPath, cgroupId, dir, spec, linked)) created.push(spec.name);
      }
    } catch (err) {
      for (const name of created.reverse()) {
        try {
          this.unlink(cgroupId, name);
        } catch (e) {
          this.log.warn({ cgroupId: String(cgroupId), program: name, err: (e as Error).message }, 'rollback of a link failed');
        }
      }
      throw err;
    }
    if (created.length) this.log.debug({ cgroupPath, cgroupId: String(cgroupId), created }, 'links created');
    return { cgroupId };
  }

  /** Releases a cgroup: detaches and unpins its links. No-op when nothing is pinned for it. */
  detach(cgroupId: bigint): void {
    this.checkOpen();
    const dir = join(this.linksDir, String(cgroupId));
    if (!existsSync(dir)) {
      this.maps.cgroups.delete(codecs.u64.encode(cgroupId));
      this.linked.delete(cgroupId);
      return;
    }
    // Reverse attach order: connect4 goes first, so nothing is redirected without sockops.
    const order = new Map(PROGRAMS.map((p, i) => [p.name as string, PROGRAMS.length - i]));
    const names = readdirSync(dir).sort((a, b) => (order.get(a) ?? PROGRAMS.length + 1) - (order.get(b) ?? PROGRAMS.length + 1));
    let first: unknown;
    for (const name of names) {
      try {
        this.unlink(cgroupId, name);
      } catch (err) {
        first ??= err;
      }
    }
    if (first) throw first;
    rmdirSync(dir);
    // Last: connect4 is gone, nothing asks for this pod any more.
    this.maps.cgroups.delete(codecs.u64.encode(cgroupId));
    this.linked.delete(cgroupId);
  }

  /** cgroupId -> names of the programs pinned for it (what a restarted agent adopts). */
  attached(): Map<bigint, string[]> {
    const out = new Map<bigint, string[]>();
    if (!existsSync(this.linksDir)) return out;
    for (const entry of readdirSync(this.linksDir, { withFileTypes: true })) {
      if (!entry.isDirectory() || !/^\d+$/.test(entry.name)) continue;
      out.set(BigInt(entry.name), readdirSync(join(this.linksDir, entry.name)).sort());
    }
    return out;
  }

  /**
   * The original destination of a connection the agent accepted, read (and removed) from
   * the tuple map by the socket's peer address. Undefined when the connection was not
   * redirected (or the socket has no fd, or is no longer connected).
   */
  origDst(socket: Socket): OrigDst | undefined {
    this.checkOpen();
    return lookupOrigDst(this.maps.tuple, socket);
  }

  /** Whether L4 connections can be spliced in the kernel ({@link splice}). */
  get splicing(): boolean {
    return this.splicer !== undefined && !this.closed;
  }

  /**
   * Splices two connected TCP sockets of this process in the kernel (bpf/splice.bpf.c): the
   * bytes of each go to the other without reaching user space, FIN and RST are passed on, and
   * both sockets are destroyed when the connection ends, after which `opts.onEnd` reports the
   * bytes moved. Nothing may have been read from either socket. Returns why not (the caller
   * keeps both sockets, paused, and pipes them itself) when splicing is off or refused: the
   * maps are full, a socket is closing, or it is not a kernel TCP socket.
   */
  splice(down: Socket, up: Socket, opts: SpliceOptions): SpliceHandle | SpliceRefusal | 'off' {
    if (!this.splicer || this.closed) return 'off';
    return this.splicer.splice(down, up, opts);
  }

  /**
   * Closes every fd. Pins stay: captured pods stay captured until an agent detaches them.
   * Spliced connections end (their sockets are this process's).
   */
  close(): void {
    if (this.closed) return;
    this.splicer?.close();
    this.lbReader?.close();
    this.refusedReader?.close();
    if (this.markedAgent) {
      // This process opens nothing more: its slot is free (for the next handover).
      try {
        this.maps.agent.update(codecs.u32.encode(this.agentSlot), Buffer.alloc(STRUCTS.weft_agent_task.size));
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'freeing the agent slot failed');
      }
    }
    this.closed = true;
    const { dests, config, tuple, pods, cgroups, agent, probes, refused, lbSvcs, lbSlots, lbEvents, lbLost } = this.maps;
    for (const m of [dests.map, config.map, tuple, pods.map, cgroups, agent, probes, refused, lbSvcs, lbSlots, lbEvents, lbLost]) m.close();
    for (const o of this.objects) o.close();
  }

  /** Detaches every cgroup, removes the links and maps under the pin root, then closes. */
  destroy(): void {
    this.checkOpen();
    let first: unknown;
    for (const id of this.attached().keys()) {
      try {
        this.detach(id);
      } catch (err) {
        first ??= err;
      }
    }
    try {
      this.unlinkAgent();
    } catch (err) {
      first ??= err;
    }
    this.close();
    for (const name of Object.values(MAP_NAMES)) unpin(join(this.pinRoot, name));
    for (const dir of [this.linksDir, this.pinRoot]) {
      try {
        rmdirSync(dir);
      } catch (err) {
        // The pin root may be the bpffs root or hold pins of others: leave it.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') first ??= err;
      }
    }
    if (first) throw first;
  }

  // ---- internals ----

  /**
   * Registers this process as the agent (weft_agent) and puts weft_agent_sockops on its cgroup,
   * so the connections it opens are admitted into strict pods. An earlier agent's link on
   * another cgroup is replaced.
   */
  private markAgent(cgroupPath: string): void {
    const ns = statSync('/proc/self/ns/pid', { bigint: true });
    this.maps.agent.update(codecs.u32.encode(this.agentSlot), codecs.agentTask.encode({ pidnsDev: ns.dev, pidnsIno: ns.ino, tgid: process.pid }));
    this.markedAgent = true;
    const cgroupId = cgroupIdOf(cgroupPath);
    if (statfsSync(cgroupPath).type !== CGROUP2_SUPER_MAGIC) throw new BpfError('attach', EINVAL, 'EINVAL', `agent cgroup ${cgroupPath} is not a cgroup v2 directory`);
    // One link per agent cgroup: the two agents of a handover may run in two (two pods).
    const dir = join(this.linksDir, AGENT_LINK_DIR, String(cgroupId));
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.ensureLink(cgroupPath, cgroupId, dir, AGENT_PROGRAM, new Map());
  }

  /** Which weft_agent slot this agent holds. */
  agentSlot: 0 | 1 = 0;
  private markedAgent = false;

  /**
   * An agent that starts alone: whatever agent registered before it is gone (its slot is
   * freed) and so are the links on the cgroups earlier agents ran in.
   */
  private forgetOtherAgents(): void {
    const other = this.agentSlot === 0 ? 1 : 0;
    this.maps.agent.update(codecs.u32.encode(other), Buffer.alloc(STRUCTS.weft_agent_task.size));
    this.unlinkAgent();
  }

  /** Removes the links on agent cgroups (destroy, or an agent starting alone). */
  private unlinkAgent(): void {
    const root = join(this.linksDir, AGENT_LINK_DIR);
    if (!existsSync(root)) return;
    for (const entry of readdirSync(root, { withFileTypes: true })) {
      if (entry.isDirectory()) this.unlinkAgentAt(join(root, entry.name));
    }
    // The layout before one link per cgroup: root/agent_sockops.
    this.unlinkAgentAt(root);
  }

  private unlinkAgentAt(dir: string): void {
    const pinPath = join(dir, AGENT_PROGRAM.name);
    if (existsSync(pinPath)) {
      const link = BpfLink.fromPin(pinPath);
      try {
        link.detach();
      } catch (err) {
        if ((err as BpfError).errno !== ENOLINK) throw err;
      } finally {
        link.close();
      }
      unpin(pinPath);
    }
    if (existsSync(dir)) rmdirSync(dir);
  }

  /**
   * Logs every connect that connect4 refused because its caller could not be attributed to a
   * captured pod (bpf/connect4.bpf.c): the process, its cgroup and where it was going.
   */
  private readRefusals(): void {
    const size = STRUCTS.weft_refusal.size;
    const log = this.log;
    this.refusedReader = new RingReader(this.maps.refused, size, (records) => {
      for (let off = 0; off + size <= records.length; off += size) {
        const r: Refusal = codecs.refusal(records, off);
        log.warn(
          { pid: r.pid, cgroupId: String(r.cgroupId), cgroup: cgroupOfPid(r.pid), dst: `${r.dst.ip}:${r.dst.port}` },
          'connect refused: the caller is below a captured pod cgroup but cannot be attributed to a pod',
        );
      }
    });
    this.refusedReader.drain();
  }

  private checkOpen(): void {
    if (this.closed) throw new BpfError('datapath', 9, 'EBADF', 'the datapath is closed');
  }

  /**
   * Makes the map hold exactly `desired`. The first sync reads what the kernel holds (the
   * maps outlive agents); later ones diff against what this process last wrote.
   */
  private sync(name: string, map: BpfMap, desired: Map<string, { key: Buffer; value: Buffer }>): void {
    this.checkOpen();
    let current = this.synced.get(name);
    if (!current) {
      current = new Map();
      for (const key of map.keys()) {
        const v = map.lookup(key);
        if (v) current.set(key.toString('hex'), v.toString('hex'));
      }
      this.synced.set(name, current);
    }
    let added = 0;
    let removed = 0;
    // Deletions first: room for the additions when the map is near full.
    for (const hex of [...current.keys()]) {
      if (desired.has(hex)) continue;
      map.delete(Buffer.from(hex, 'hex'));
      current.delete(hex);
      removed++;
    }
    for (const [hex, { key, value }] of desired) {
      const vhex = value.toString('hex');
      if (current.get(hex) === vhex) continue;
      map.update(key, value);
      current.set(hex, vhex);
      added++;
    }
    if (added || removed) this.log.debug({ map: name, added, removed, size: current.size }, 'map synced');
  }

  /** Ensures the pinned link of one program for one cgroup; true when it had to be created. */
  private ensureLink(cgroupPath: string, cgroupId: bigint, dir: string, spec: ProgramSpec, linked: Map<string, number>): boolean {
    const prog = this.programs.get(spec.name)!;
    const pinPath = join(dir, spec.name);
    const pinned = existsSync(pinPath);
    if (pinned && linked.get(spec.name) === prog.id) return false;

    if (pinned) {
      const link = BpfLink.fromPin(pinPath);
      try {
        const info = link.info();
        if (info.cgroupId === cgroupId) {
          if (info.progId === prog.id) {
            linked.set(spec.name, prog.id);
            return false;
          }
          try {
            link.update(prog.fd);
            this.log.info({ cgroupId: String(cgroupId), program: spec.name, from: info.progId, to: prog.id }, 'link moved to the loaded program');
            linked.set(spec.name, prog.id);
            return false;
          } catch (err) {
            if ((err as BpfError).errno !== ENOLINK) throw err;
          }
        }
        // Defunct (its cgroup is gone: id 0) or pinned for another cgroup: replace it.
        this.log.warn({ cgroupId: String(cgroupId), program: spec.name, linkCgroupId: String(info.cgroupId) }, 'replacing a stale link pin');
        try {
          link.detach();
        } catch {
          /* defunct links may refuse; unpinning releases them */
        }
      } finally {
        link.close();
      }
      unpin(pinPath);
    }

    const link = BpfLink.attachCgroup(prog.fd, cgroupPath, spec.attachType);
    try {
      link.pin(pinPath);
    } catch (err) {
      try {
        link.detach();
      } catch {
        /* closing the last fd detaches it anyway */
      }
      throw err;
    } finally {
      link.close();
    }
    linked.set(spec.name, prog.id);
    return true;
  }

  /** Detaches and unpins one program's link of one cgroup, if pinned. */
  private unlink(cgroupId: bigint, name: string): void {
    const pinPath = join(this.linksDir, String(cgroupId), name);
    this.linked.get(cgroupId)?.delete(name);
    if (!existsSync(pinPath)) return;
    const link = BpfLink.fromPin(pinPath);
    try {
      link.detach();
    } catch (err) {
      // A defunct link (cgroup removed) has nothing left to detach.
      if ((err as BpfError).errno !== ENOLINK) throw err;
    } finally {
      link.close();
    }
    unpin(pinPath);
  }
}

/**
 * Loads the splice object (its maps private to this process) and attaches its verdict program
 * to its socket map. Undefined, with a warning, when the kernel refuses: L4 then stays in user
 * space. The object joins `objects`, closed with the datapath.
 */
function openSplicer(path: string, pinRoot: string, objects: BpfObject[], log: pino.Logger): SocketSplicer | undefined {
  if (!existsSync(path)) {
    log.warn({ path }, 'no splice object: L4 connections use the userspace pipe');
    return undefined;
  }
  let obj: BpfObject | undefined;
  const maps: BpfMap[] = [];
  try {
    obj = BpfObject.open(path, pinRoot);
    obj.load();
    const m = (name: string): BpfMap => {
      const map = obj!.map(name);
      maps.push(map);
      return map;
    };
    const inMap = m(SPLICE.maps.in);
    attachToMap(obj.programFd(SPLICE.program), inMap, SPLICE.attachType);
    let splicer: SocketSplicer | undefined;
    const kernel = new KernelSplicer({ in: inMap, out: m(SPLICE.maps.out), peer: m(SPLICE.maps.peer) }, (ev) => splicer?.onEvents(ev));
    splicer = new SocketSplicer(kernel, log);
    objects.push(obj);
    return splicer;
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'the kernel refused the L4 splice: L4 connections use the userspace pipe');
    obj?.close();
    return undefined;
  } finally {
    // The splicer holds dups of the map fds it needs.
    for (const m of maps) m.close();
  }
}

/**
 * The L4 splice of one worker thread (src/workers/): a splice object of its own (its socket
 * maps and verdict program are private to the object, so each thread has its own), watched
 * from the thread's own event loop. A socket can only be spliced by the thread whose event
 * loop owns it: each thread splices what it accepted. Undefined (with a warning) when the
 * kernel refuses: that thread pipes in user space.
 */
export class ThreadSplice {
  private constructor(
    private readonly obj: BpfObject,
    private readonly splicer: SocketSplicer,
  ) {}

  static open(opts: { pinRoot: string; objDir?: string; log: pino.Logger }): ThreadSplice | undefined {
    const objects: BpfObject[] = [];
    const splicer = openSplicer(join(opts.objDir ?? join(repoRoot, 'build', 'bpf'), SPLICE.object), opts.pinRoot, objects, opts.log);
    return splicer && new ThreadSplice(objects[0]!, splicer);
  }

  get size(): number {
    return this.splicer.size;
  }

  splice(down: Socket, up: Socket, opts: SpliceOptions): SpliceHandle | SpliceRefusal {
    return this.splicer.splice(down, up, opts);
  }

  /** Ends every spliced pair of this thread and closes the object. */
  close(): void {
    this.splicer.close();
    this.obj.close();
  }
}

function lookupOrigDst(tuple: BpfMap, socket: Socket): OrigDst | undefined {
  const fd = socketFd(socket);
  if (fd === undefined) return undefined;
  try {
    const v = origDstOf(tuple, fd);
    return v && { ip: v.ip, port: v.port, cgroupId: v.cgroupId, pid: v.pid };
  } catch (err) {
    // The client is already gone: nothing to proxy.
    if ((err as BpfError).syscallCode === 'ENOTCONN') return undefined;
    throw err;
  }
}

/**
 * Read access to the original destinations without loading anything: for a process other
 * than the one that owns the Datapath (an out-of-process proxy, tests).
 */
export class OrigDstTable {
  private constructor(private readonly map: BpfMap) {}

  /** Opens `<pinRoot>/weft_tuple_dst`. */
  static open(pinRoot: string = DEFAULT_PIN_ROOT): OrigDstTable {
    return new OrigDstTable(BpfMap.fromPin(join(pinRoot, MAP_NAMES.tupleDst)));
  }

  /** As {@link Datapath.origDst}: the entry is removed once read. */
  lookup(socket: Socket): OrigDst | undefined {
    return lookupOrigDst(this.map, socket);
  }

  close(): void {
    this.map.close();
  }
}

/** Shorthand for {@link OrigDstTable.open}. */
export function openOrigDstMap(pinRoot: string = DEFAULT_PIN_ROOT): OrigDstTable {
  return OrigDstTable.open(pinRoot);
}

/**
 * The id of a cgroup v2 directory: its inode number, which is what
 * bpf_get_current_cgroup_id() returns for tasks in it. Throws BpfError ENOENT naming the path.
 */
export function cgroupIdOf(path: string): bigint {
  try {
    const st = statSync(path, { bigint: true });
    if (!st.isDirectory()) throw new BpfError('cgroupIdOf', 20, 'ENOTDIR', path);
    return st.ino;
  } catch (err) {
    if (err instanceof BpfError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new BpfError('cgroupIdOf', -(e.errno ?? -ENOENT), e.code ?? 'ENOENT', `cgroup ${path}`);
  }
}

/** This process's cgroup v2 directory, from /proc/self/cgroup and the cgroup2 mount. */
export function ownCgroup(): string {
  const rel = cgroupOfPid(process.pid);
  if (rel === undefined) throw new BpfError('ownCgroup', ENOENT, 'ENOENT', 'no cgroup v2 entry in /proc/self/cgroup');
  return join(cgroup2Mount(), rel);
}

/** The cgroup v2 path (`0::` line of /proc/PID/cgroup) of a process, or undefined when it is gone. */
function cgroupOfPid(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('0::'))
      ?.slice(3);
  } catch {
    return undefined;
  }
}

/** Where the cgroup v2 hierarchy is mounted, from /proc/mounts (first cgroup2 entry). */
export function cgroup2Mount(): string {
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, mountPoint, fsType] = line.split(' ');
    if (fsType === 'cgroup2' && mountPoint) return unescapeMount(mountPoint);
  }
  throw new BpfError('cgroup2Mount', ENOENT, 'ENOENT', 'no cgroup2 filesystem in /proc/mounts');
}

/** /proc/mounts escapes space, tab, newline and backslash as \ooo. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Makes the pin root (and its links directory) on a bpffs, mounting one if needed. Idempotent. */
export function preparePinRoot(pinRoot: string = DEFAULT_PIN_ROOT, log: pino.Logger = pino({ level: 'silent' })): void {
  ensureBpffs(pinRoot, log);
  mkdirSync(join(pinRoot, 'links'), { recursive: true, mode: 0o700 });
}

/** Mounts the bpffs on /sys/fs/bpf when the pin root is not on one already. */
function ensureBpffs(pinRoot: string, log: pino.Logger): void {
  // The nearest existing ancestor tells which filesystem the pin root will be on.
  let probe = pinRoot;
  while (!existsSync(probe)) probe = join(probe, '..');
  if (isBpffs(probe)) return;
  if (pinRoot !== BPFFS_MOUNT && !pinRoot.startsWith(BPFFS_MOUNT + '/')) throw new BpfError('mount bpf', EINVAL, 'EINVAL', `pin root ${pinRoot} is not on a bpffs`);
  if (!isBpffs(BPFFS_MOUNT)) {
    mkdirSync(BPFFS_MOUNT, { recursive: true });
    mountBpffs(BPFFS_MOUNT);
    log.info({ path: BPFFS_MOUNT }, 'mounted the bpffs');
  }
}
