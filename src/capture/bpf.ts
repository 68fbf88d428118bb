/**
 * Typed access to the native addon (build/Release/weft_bpf.node). This is the only module
 * that loads it. Every failure of a syscall or of libbpf surfaces as a {@link BpfError}
 * carrying errno, its code (EPERM...) and the operation.
 *
 * Ownership: a {@link BpfObject} owns its program and map fds (closed by `close()`); a
 * {@link BpfMap} and a {@link BpfLink} each own one fd of their own. All close their fds when
 * garbage collected, but callers should close them: fds are a bounded resource.
 */
import { repoRoot as findRepoRoot } from '../repo-root.js';
import { existsSync, statfsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { isIPv4 } from 'node:net';
import { BpfError } from '../errors.js';
import { BPF_FS_MAGIC, type AttachTypeName, STRUCTS } from './constants.js';

/** The repository root, found from this file whether it runs from src/ (tsx, ts-node) or dist/src/. */
export const repoRoot: string = findRepoRoot();

/** Where the addon is built. */
export const addonPath = join(repoRoot, 'build', 'Release', 'weft_bpf.node');

// ---- the addon's shape ----

interface NativeMapInfo {
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

interface NativeBpfObject {
  load(): void;
  programFd(name: string): number;
  programNames(): string[];
  mapFd(name: string): number;
  mapNames(): string[];
  mapInfo(name: string): NativeMapInfo & { pinPath: string | null };
  close(): void;
}

interface NativeMapHandle {
  readonly fd: number;
  info(): NativeMapInfo & { id: number; name: string };
  update(key: Buffer, value: Buffer, flags: number): void;
  lookup(key: Buffer): Buffer | null;
  delete(key: Buffer): boolean;
  keys(): Buffer[];
  close(): void;
}

/** See native/splice.h. Sides: 0 is the first socket given to add(), 1 the second. */
interface NativeSplicer {
  add(fdA: number, fdB: number): number;
  bytes(id: number): [number, number];
  unsent(id: number, side: 0 | 1): number;
  shutdown(id: number, side: 0 | 1): number;
  arm(id: number, side: 0 | 1, watchFin: boolean): void;
  socketError(id: number, side: 0 | 1): number;
  remove(id: number): [number, number] | null;
  close(): void;
  readonly size: number;
}

interface NativeRingReader {
  drain(): number;
  close(): void;
}

interface Native {
  BpfObject: new (path: string, pinRoot?: string) => NativeBpfObject;
  RingReader: new (map: NativeMapHandle, recordSize: number, onRecords: (records: Buffer) => void) => NativeRingReader;
  MapHandle: new (fdOrPinPath: number | string) => NativeMapHandle;
  Splicer: new (inMap: NativeMapHandle, outMap: NativeMapHandle, peerMap: NativeMapHandle, onEvents: (events: Uint32Array) => void) => NativeSplicer;
  attachCgroup(progFd: number, cgroupPath: string, attachType: AttachTypeName): number;
  attachMap(progFd: number, mapFd: number, attachType: AttachTypeName): void;
  pin(fd: number, path: string): void;
  openPin(path: string): number;
  unpin(path: string): boolean;
  linkUpdate(linkFd: number, progFd: number): void;
  linkDetach(linkFd: number): void;
  linkInfo(linkFd: number): LinkInfo;
  progInfo(progFd: number): ProgInfo;
  closeFd(fd: number): void;
  mountBpffs(path: string): void;
  origDst(map: NativeMapHandle, socketFd: number): { ip: string; port: number; cgroupId: bigint; pid: number; tid: number } | null;
  attachTypes: Record<AttachTypeName, number>;
}

let native: Native | undefined;

/** The addon, loaded on first use (importing this module never fails for lack of a build). */
export function addon(): Native {
  if (!native) {
    if (!existsSync(addonPath)) throw new BpfError('load weft_bpf addon', 2, 'ENOENT', `${addonPath} is missing: run scripts/build.sh`);
    native = createRequire(import.meta.url)(addonPath) as Native;
  }
  return native;
}

interface NativeError extends Error {
  errno?: number;
  code?: string;
  op?: string;
  detail?: string;
}

/** Runs a native call, turning its errno errors into BpfError (TypeError/RangeError pass through). */
function sys<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toBpfError(err);
  }
}

function toBpfError(err: unknown): unknown {
  const e = err as NativeError;
  if (e instanceof Error && typeof e.errno === 'number' && typeof e.code === 'string' && typeof e.op === 'string') {
    return new BpfError(e.op, e.errno, e.code, e.detail?.trim() || undefined);
  }
  return err;
}

// ---- objects ----

export interface MapInfo {
  /** enum bpf_map_type */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export interface ProgInfo {
  id: number;
  name: string;
  type: number;
  /** The program's tag (hash of its instructions), hex. */
  tag: string;
}

export interface LinkInfo {
  id: number;
  progId: number;
  /** enum bpf_link_type (3: cgroup). */
  type: number;
  /** For cgroup links: the cgroup's id, 0n once the cgroup is gone (the link is defunct). */
  cgroupId?: bigint;
  /** For cgroup links: enum bpf_attach_type. */
  attachType?: number;
}

/** One ELF object of programs and maps (libbpf's bpf_object). */
export class BpfObject {
  private constructor(
    private readonly obj: NativeBpfObject,
    readonly path: string,
  ) {}

  /**
   * Opens (does not load) an object. With `pinRoot`, maps declared with
   * LIBBPF_PIN_BY_NAME are pinned there, or reused when a compatible pin already exists.
   */
  static open(path: string, pinRoot?: string): BpfObject {
    const a = addon();
    return new BpfObject(
      sys(() => new a.BpfObject(path, pinRoot)),
      path,
    );
  }

  /** Creates (or reuses) the maps and loads the programs through the verifier. */
  load(): this {
    sys(() => this.obj.load());
    return this;
  }

  /** The fd of a loaded program, owned by this object. */
  programFd(name: string): number {
    return sys(() => this.obj.programFd(name));
  }

  programNames(): string[] {
    return sys(() => this.obj.programNames());
  }

  /** The fd of a map, owned by this object (see {@link map} for one of your own). */
  mapFd(name: string): number {
    return sys(() => this.obj.mapFd(name));
  }

  mapNames(): string[] {
    return sys(() => this.obj.mapNames());
  }

  /** The map's definition, available before load(). */
  mapInfo(name: string): MapInfo & { pinPath: string | null } {
    return sys(() => this.obj.mapInfo(name));
  }

  /** A map handle with its own fd: it outlives this object's close(). */
  map(name: string): BpfMap {
    return BpfMap.fromFd(this.mapFd(name));
  }

  /** Closes the program and map fds. Attached links and pins keep what they use alive. */
  close(): void {
    this.obj.close();
  }
}

/** The native handle behind each BpfMap, for origDstOf (kept off the public surface). */
const mapHandles = new WeakMap<BpfMap, NativeMapHandle>();

/** BPF_ANY / BPF_NOEXIST / BPF_EXIST */
export const UpdateFlags = { ANY: 0, NOEXIST: 1, EXIST: 2 } as const;

/** One map, through its own fd. Keys and values are Buffers of exactly the map's sizes. */
export class BpfMap {
  readonly info: MapInfo & { id: number; name: string };

  private constructor(private readonly handle: NativeMapHandle) {
    this.info = handle.info();
    mapHandles.set(this, handle);
  }

  /** A handle on the map behind `fd` (duplicated: the caller keeps its own fd). */
  static fromFd(fd: number): BpfMap {
    const a = addon();
    return new BpfMap(sys(() => new a.MapHandle(fd)));
  }

  /** Opens a pinned map. */
  static fromPin(path: string): BpfMap {
    const a = addon();
    return new BpfMap(sys(() => new a.MapHandle(path)));
  }

  get fd(): number {
    return this.handle.fd;
  }

  update(key: Buffer, value: Buffer, flags: number = UpdateFlags.ANY): void {
    sys(() => this.handle.update(key, value, flags));
  }

  lookup(key: Buffer): Buffer | undefined {
    return sys(() => this.handle.lookup(key)) ?? undefined;
  }

  /** True when the key was there. */
  delete(key: Buffer): boolean {
    return sys(() => this.handle.delete(key));
  }

  /** Every key (a snapshot; the kernel may change the map meanwhile). */
  keys(): Buffer[] {
    return sys(() => this.handle.keys());
  }

  /** Decoded view with codecs for keys and values. */
  typed<K, V>(key: Codec<K>, value: Codec<V>): TypedMap<K, V> {
    return new TypedMap(this, key, value);
  }

  close(): void {
    this.handle.close();
  }
}

// ---- codecs for the structs of bpf/weft.h ----

export interface Codec<T> {
  size: number;
  encode(v: T): Buffer;
  decode(b: Buffer): T;
}

const LE = endianness() === 'LE';

function writeU32Host(b: Buffer, v: number, off: number): void {
  if (LE) b.writeUInt32LE(v >>> 0, off);
  else b.writeUInt32BE(v >>> 0, off);
}
function readU32Host(b: Buffer, off: number): number {
  return LE ? b.readUInt32LE(off) : b.readUInt32BE(off);
}
function readU64Host(b: Buffer, off: number): bigint {
  return LE ? b.readBigUInt64LE(off) : b.readBigUInt64BE(off);
}
function writeU64Host(b: Buffer, v: bigint, off: number): void {
  if (LE) b.writeBigUInt64LE(v, off);
  else b.writeBigUInt64BE(v, off);
}

/** Writes a dotted IPv4 address in network order. */
export function writeIp4(b: Buffer, ip: string, off: number): void {
  if (!isIPv4(ip)) throw new TypeError(`not an IPv4 address: ${ip}`);
  const parts = ip.split('.');
  for (let i = 0; i < 4; i++) b[off + i] = Number(parts[i]);
}

export function readIp4(b: Buffer, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new TypeError(`not a port: ${port}`);
  return port;
}

export interface IpPort {
  ip: string;
  port: number;
}

export interface OrigDstValue {
  cgroupId: bigint;
  ip: string;
  port: number;
  pid: number;
  tid: number;
}

export interface ConfigValue {
  nodeIp: string;
  outboundPort: number;
}

/** {ip, port} keys: struct weft_dst_key and struct weft_tuple_key share this layout. */
const ipPortKey = (layout: typeof STRUCTS.weft_dst_key | typeof STRUCTS.weft_tuple_key): Codec<IpPort> => ({
  size: layout.size,
  encode: ({ ip, port }) => {
    const b = Buffer.alloc(layout.size);
    writeIp4(b, ip, layout.fields.ip);
    b.writeUInt16BE(checkPort(port), layout.fields.port);
    return b;
  },
  decode: (b) => ({ ip: readIp4(b, layout.fields.ip), port: b.readUInt16BE(layout.fields.port) }),
});

/** A u32 flags value (weft_dst_val, weft_pod_val, weft_cgroup_val, weft_probe_val), host order. */
const flagsValue: Codec<number> = {
  size: 4,
  encode: (v) => {
    const b = Buffer.alloc(4);
    writeU32Host(b, v, 0);
    return b;
  },
  decode: (b) => readU32Host(b, 0),
};

const O = STRUCTS.weft_orig_dst.fields;
const C = STRUCTS.weft_config.fields;
const LS = STRUCTS.weft_lb_slot_key.fields;
const LB = STRUCTS.weft_lb_backend.fields;
const EV = STRUCTS.weft_lb_event.fields;
const AT = STRUCTS.weft_agent_task.fields;
const RF = STRUCTS.weft_refusal.fields;

/** The agent process as bpf_get_ns_current_pid_tgid() names it (struct weft_agent_task). */
export interface AgentTask {
  /** Device and inode of the agent's pid namespace (stat /proc/self/ns/pid). */
  pidnsDev: bigint;
  pidnsIno: bigint;
  /** The agent's pid in that namespace (process.pid). */
  tgid: number;
}

/** A record of weft_refused (struct weft_refusal): a connect connect4 refused. */
export interface Refusal {
  /** The calling task's own cgroup. */
  cgroupId: bigint;
  /** Its tgid in the root pid namespace. */
  pid: number;
  /** Where it was going. */
  dst: IpPort;
}

/** A socket-LB slot: which backend slot `slot` of a service port holds. */
export interface LbSlotKey extends IpPort {
  slot: number;
}

/** A record of weft_lb_events (struct weft_lb_event). */
export interface LbEvent {
  /** LB_EV_OPEN or LB_EV_CLOSE */
  type: number;
  cookie: bigint;
  cgroupId: bigint;
  durationNs: bigint;
  bytesSent: number;
  bytesReceived: number;
  /** The service VIP:port the client dialed. */
  orig: IpPort;
  /** The endpoint connect4 chose. */
  backend: IpPort;
  client: IpPort;
}

export const codecs = {
  dstKey: ipPortKey(STRUCTS.weft_dst_key),
  tupleKey: ipPortKey(STRUCTS.weft_tuple_key),
  flags: flagsValue,
  /** An IPv4 address key (weft_pods), network order. */
  ip4: {
    size: 4,
    encode: (ip: string) => {
      const b = Buffer.alloc(4);
      writeIp4(b, ip, 0);
      return b;
    },
    decode: (b: Buffer) => readIp4(b, 0),
  } satisfies Codec<string>,
  /** The array index key (u32, host order). */
  u32: flagsValue,
  /** A counter value (u64, host order). */
  u64: {
    size: 8,
    encode: (v: bigint) => {
      const b = Buffer.alloc(8);
      writeU64Host(b, v, 0);
      return b;
    },
    decode: (b: Buffer) => readU64Host(b, 0),
  } satisfies Codec<bigint>,
  config: {
    size: STRUCTS.weft_config.size,
    encode: ({ nodeIp, outboundPort }: ConfigValue) => {
      const b = Buffer.alloc(STRUCTS.weft_config.size);
      writeIp4(b, nodeIp, C.node_ip);
      b.writeUInt16BE(checkPort(outboundPort), C.outbound_port);
      return b;
    },
    decode: (b: Buffer): ConfigValue => ({ nodeIp: readIp4(b, C.node_ip), outboundPort: b.readUInt16BE(C.outbound_port) }),
  } satisfies Codec<ConfigValue>,
  lbSvc: {
    size: STRUCTS.weft_lb_svc.size,
    encode: (slots: number) => {
      const b = Buffer.alloc(STRUCTS.weft_lb_svc.size);
      writeU32Host(b, slots, STRUCTS.weft_lb_svc.fields.slots);
      return b;
    },
    decode: (b: Buffer) => readU32Host(b, STRUCTS.weft_lb_svc.fields.slots),
  } satisfies Codec<number>,
  lbSlotKey: {
    size: STRUCTS.weft_lb_slot_key.size,
    encode: ({ ip, port, slot }: LbSlotKey) => {
      const b = Buffer.alloc(STRUCTS.weft_lb_slot_key.size);
      writeIp4(b, ip, LS.ip);
      b.writeUInt16BE(checkPort(port), LS.port);
      if (LE) b.writeUInt16LE(slot, LS.slot);
      else b.writeUInt16BE(slot, LS.slot);
      return b;
    },
    decode: (b: Buffer): LbSlotKey => ({ ip: readIp4(b, LS.ip), port: b.readUInt16BE(LS.port), slot: LE ? b.readUInt16LE(LS.slot) : b.readUInt16BE(LS.slot) }),
  } satisfies Codec<LbSlotKey>,
  lbBackend: {
    size: STRUCTS.weft_lb_backend.size,
    encode: ({ ip, port }: IpPort) => {
      const b = Buffer.alloc(STRUCTS.weft_lb_backend.size);
      writeIp4(b, ip, LB.ip);
      b.writeUInt16BE(checkPort(port), LB.port);
      return b;
    },
    decode: (b: Buffer): IpPort => ({ ip: readIp4(b, LB.ip), port: b.readUInt16BE(LB.port) }),
  } satisfies Codec<IpPort>,
  agentTask: {
    size: STRUCTS.weft_agent_task.size,
    encode: (v: AgentTask) => {
      const b = Buffer.alloc(STRUCTS.weft_agent_task.size);
      writeU64Host(b, v.pidnsDev, AT.pidns_dev);
      writeU64Host(b, v.pidnsIno, AT.pidns_ino);
      writeU32Host(b, v.tgid, AT.tgid);
      return b;
    },
    decode: (b: Buffer): AgentTask => ({ pidnsDev: readU64Host(b, AT.pidns_dev), pidnsIno: readU64Host(b, AT.pidns_ino), tgid: readU32Host(b, AT.tgid) }),
  } satisfies Codec<AgentTask>,
  /** Decodes the record at `off` of a batch from weft_refused. */
  refusal: (b: Buffer, off = 0): Refusal => ({
    cgroupId: readU64Host(b, off + RF.cgroup_id),
    pid: readU32Host(b, off + RF.pid),
    dst: { ip: readIp4(b, off + RF.ip), port: b.readUInt16BE(off + RF.port) },
  }),
  /** Decodes the record at `off` of a batch from the ring (decode only: the kernel writes them). */
  lbEvent: (b: Buffer, off = 0): LbEvent => ({
    type: readU32Host(b, off + EV.type),
    cookie: readU64Host(b, off + EV.cookie),
    cgroupId: readU64Host(b, off + EV.cgroup_id),
    durationNs: readU64Host(b, off + EV.duration_ns),
    bytesSent: Number(readU64Host(b, off + EV.bytes_sent)),
    bytesReceived: Number(readU64Host(b, off + EV.bytes_received)),
    orig: { ip: readIp4(b, off + EV.orig_ip), port: b.readUInt16BE(off + EV.orig_port) },
    backend: { ip: readIp4(b, off + EV.backend_ip), port: b.readUInt16BE(off + EV.backend_port) },
    client: { ip: readIp4(b, off + EV.client_ip), port: b.readUInt16BE(off + EV.client_port) },
  }),
  origDst: {
    size: STRUCTS.weft_orig_dst.size,
    encode: (v: OrigDstValue) => {
      const b = Buffer.alloc(STRUCTS.weft_orig_dst.size);
      writeU64Host(b, v.cgroupId, O.cgroup_id);
      writeIp4(b, v.ip, O.ip);
      b.writeUInt16BE(checkPort(v.port), O.port);
      writeU32Host(b, v.pid, O.pid);
      writeU32Host(b, v.tid, O.tid);
      return b;
    },
    decode: (b: Buffer): OrigDstValue => ({
      cgroupId: readU64Host(b, O.cgroup_id),
      ip: readIp4(b, O.ip),
      port: b.readUInt16BE(O.port),
      pid: readU32Host(b, O.pid),
      tid: readU32Host(b, O.tid),
    }),
  } satisfies Codec<OrigDstValue>,
};

/** A map seen through codecs. */
export class TypedMap<K, V> {
  constructor(
    readonly map: BpfMap,
    private readonly key: Codec<K>,
    private readonly value: Codec<V>,
  ) {}

  set(k: K, v: V, flags: number = UpdateFlags.ANY): void {
    this.map.update(this.key.encode(k), this.value.encode(v), flags);
  }

  get(k: K): V | undefined {
    const b = this.map.lookup(this.key.encode(k));
    return b ? this.value.decode(b) : undefined;
  }

  delete(k: K): boolean {
    return this.map.delete(this.key.encode(k));
  }

  keys(): K[] {
    return this.map.keys().map((b) => this.key.decode(b));
  }

  /** Key/value pairs; keys deleted between listing and reading are skipped. */
  entries(): [K, V][] {
    const out: [K, V][] = [];
    for (const kb of this.map.keys()) {
      const vb = this.map.lookup(kb);
      if (vb) out.push([this.key.decode(kb), this.value.decode(vb)]);
    }
    return out;
  }
}

// ---- links ----

const linkFinalizer = new FinalizationRegistry<number>((fd) => {
  try {
    addon().closeFd(fd);
  } catch {
    /* already closed */
  }
});

/** A BPF link (here: a program attached to a cgroup), through its own fd. */
export class BpfLink {
  private _fd: number;

  private constructor(fd: number) {
    this._fd = fd;
    linkFinalizer.register(this, fd, this);
  }

  /** Attaches a program to a cgroup v2 directory with a BPF link (bpf_link_create). */
  static attachCgroup(progFd: number, cgroupPath: string, attachType: AttachTypeName): BpfLink {
    const a = addon();
    return new BpfLink(sys(() => a.attachCgroup(progFd, cgroupPath, attachType)));
  }

  /** Opens a pinned link. */
  static fromPin(path: string): BpfLink {
    const a = addon();
    return new BpfLink(sys(() => a.openPin(path)));
  }

  get fd(): number {
    if (this._fd < 0) throw new BpfError('bpf link', 9, 'EBADF', 'link is closed');
    return this._fd;
  }

  /** Pins the link: it then outlives this process. */
  pin(path: string): void {
    sys(() => addon().pin(this.fd, path));
  }

  /** Replaces the link's program atomically (no moment without a program). */
  update(progFd: number): void {
    sys(() => addon().linkUpdate(this.fd, progFd));
  }

  /** Detaches the program now, whatever pins or fds still hold the link. */
  detach(): void {
    sys(() => addon().linkDetach(this.fd));
  }

  info(): LinkInfo {
    return sys(() => addon().linkInfo(this.fd));
  }

  close(): void {
    if (this._fd < 0) return;
    const fd = this._fd;
    this._fd = -1;
    linkFinalizer.unregister(this);
    sys(() => addon().closeFd(fd));
  }
}

// ---- the kernel splice (bpf/splice.bpf.c) ----

/** Attaches a socket-map program (sk_skb, sk_msg) to a map: it stays as long as the map lives. */
export function attachToMap(progFd: number, map: BpfMap, attachType: AttachTypeName): void {
  sys(() => addon().attachMap(progFd, map.fd, attachType));
}

/** epoll bits the splicer reports (uapi values). */
export const EPOLL = { ERR: 0x8, HUP: 0x10, RDHUP: 0x2000 } as const;

/**
 * The addon's Splicer (native/splice.h): pairs of socket fds spliced in the kernel, their byte
 * counters, and one event source for FIN and errors on them. The policy (when to shut down,
 * when to give up) is src/capture/splice.ts's.
 */
export class KernelSplicer {
  private readonly native: NativeSplicer;

  /** `onEvents` gets batches of [id, side, epoll events] triples. */
  constructor(maps: { in: BpfMap; out: BpfMap; peer: BpfMap }, onEvents: (events: Uint32Array) => void) {
    const a = addon();
    const h = (m: BpfMap) => mapHandles.get(m)!;
    this.native = sys(() => new a.Splicer(h(maps.in), h(maps.out), h(maps.peer), onEvents));
  }

  /** Splices two connected TCP socket fds (dups are kept). Throws BpfError: E2BIG when full, EOPNOTSUPP when a socket is not established. */
  add(fdA: number, fdB: number): number {
    return sys(() => this.native.add(fdA, fdB));
  }

  /** Bytes the kernel moved so far: [received on A and sent to B, received on B and sent to A]. */
  bytes(id: number): [number, number] {
    return sys(() => this.native.bytes(id));
  }

  /** Bytes moved toward `side` that its send queue has not taken yet (<= 0: none). */
  unsent(id: number, side: 0 | 1): number {
    return sys(() => this.native.unsent(id, side));
  }

  /** shutdown(SHUT_WR) of one side; returns errno, 0 when it worked. */
  shutdown(id: number, side: 0 | 1): number {
    return sys(() => this.native.shutdown(id, side));
  }

  /** Re-arms the one-shot watch of a side: FIN and errors, or (watchFin false) errors and hang-up only. */
  arm(id: number, side: 0 | 1, watchFin: boolean): void {
    sys(() => this.native.arm(id, side, watchFin));
  }

  /** The pending socket error of a side (SO_ERROR, which clears it), 0 when none. */
  socketError(id: number, side: 0 | 1): number {
    return sys(() => this.native.socketError(id, side));
  }

  /** Takes a pair out of the kernel and closes its dups; the final byte counts, or undefined when unknown. */
  remove(id: number): [number, number] | undefined {
    return sys(() => this.native.remove(id)) ?? undefined;
  }

  get size(): number {
    return this.native.size;
  }

  /** Removes every pair and stops watching. */
  close(): void {
    this.native.close();
  }
}

// ---- ring buffers ----

/**
 * Reads a BPF ring buffer of fixed-size records from the event loop (native/ring.h): batches
 * of records, back to back in one Buffer, as they come. Does not keep the process alive.
 */
export class RingReader {
  private readonly native: NativeRingReader;

  constructor(map: BpfMap, recordSize: number, onRecords: (records: Buffer) => void) {
    const a = addon();
    this.native = sys(() => new a.RingReader(mapHandles.get(map)!, recordSize, onRecords));
  }

  /** Hands what the ring holds now to onRecords (synchronously); the number of records. */
  drain(): number {
    return this.native.drain();
  }

  close(): void {
    this.native.close();
  }
}

// ---- misc ----

/** Removes a pin (the object lives on while other pins or fds hold it). False when absent. */
export function unpin(path: string): boolean {
  return sys(() => addon().unpin(path));
}

export function progInfo(progFd: number): ProgInfo {
  return sys(() => addon().progInfo(progFd));
}

/** True when `path` is on a bpffs. */
export function isBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/** mount -t bpf bpf PATH (mode 0700), via mount(2). */
export function mountBpffs(path: string): void {
  sys(() => addon().mountBpffs(path));
}

/**
 * The original destination recorded for the peer of `socketFd` in a weft_tuple_dst map, or
 * undefined. The entry is deleted once read.
 */
export function origDstOf(tupleMap: BpfMap, socketFd: number): OrigDstValue | undefined {
  const handle = mapHandles.get(tupleMap)!;
  const r = sys(() => addon().origDst(handle, socketFd));
  return r ?? undefined;
}
