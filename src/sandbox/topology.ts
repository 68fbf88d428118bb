/**
 * The test network on one machine (DESIGN.md, "Test topology on one machine").
 *
 * - a node is a network namespace with a bridge (`weftbr0`, holding the node address) and no
 *   link to the machine's own network;
 * - a pod is a network namespace whose `eth0` is a veth to its node's bridge, plus cgroup v2
 *   directories laid out as the kubelet and containerd make them: the pod cgroup below the
 *   node's QoS cgroup (`<cgroupRoot>/<node>/kubepods.slice/kubepods-burstable.slice/<pod>` for
 *   the systemd cgroup driver, `<cgroupRoot>/<node>/kubepods/burstable/<pod>` for cgroupfs), and
 *   below it one cgroup per container (`cri-containerd-<id>.scope`, or `<id>` for cgroupfs),
 *   `pause` holding a pause process from the start. A pod process joins its container's
 *   cgroup first, then enters the pod's namespace with nsenter (`ip netns exec` would remount
 *   /sys and hide cgroup and bpf fs);
 * - two nodes are joined by a veth pair with routes to each other's pod subnet.
 *
 * Every name starts with the topology id (`<prefix><6 hex>`, prefix default `weft-t`). Each
 * resource is recorded when it is made, so `destroy()` removes exactly what exists even after
 * a half-built topology; process exit and SIGINT/SIGTERM/SIGHUP destroy every live topology
 * synchronously; `Topology.sweep(prefix)` removes what a SIGKILLed run left, sparing
 * topologies whose owner process is still alive (an owner file in /run/weft-sandbox).
 *
 * All commands leave this process's own namespaces alone: links are created inside the node
 * namespaces (`ip -n`), never in the machine's namespace.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isIPv4 } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { exec, execOk, execQuietSync, killGroup, type ExecResult } from './exec.js';
import { backendScriptPath } from './backend.js';

export type { ExecResult } from './exec.js';

export interface TopologyOptions {
  /** Start of every netns, cgroup and pin name. Must contain 'weft'. Default 'weft-t'. */
  prefix?: string;
  /** Progress and cleanup messages, and echoed process output. Default: progress to stderr when WEFT_TOPO_DEBUG is set, else silent. */
  log?: (msg: string) => void;
}

export interface SpawnOpts {
  env?: NodeJS.ProcessEnv;
  /**
   * Pod processes: the container whose cgroup the process runs in (made on first use).
   * Default `app`. Node processes: a cgroup directory to run in (default: this process's).
   */
  container?: string;
  cgroup?: string;
  cwd?: string;
  /** Written to stdin, which is then closed. Default: stdin is /dev/null. */
  input?: string;
  /** Name used when echoing output. Default: the command's base name. */
  label?: string;
  /**
   * Forward each output line to the topology's `log` (stderr when none was given).
   * WEFT_TOPO_ECHO=1 turns this on for every process.
   */
  echo?: boolean;
}

export interface ManagedProcess {
  child: ChildProcess;
  /** Pid of the process, also its process-group id (it leads its own group). */
  pid: number;
  /** Signal the whole process group. Default SIGTERM. A no-op once the process has exited. */
  kill(signal?: NodeJS.Signals | number): void;
  /** Exit code, or null when ended by a signal or when it could not start. Never rejects. */
  exited: Promise<number | null>;
  /** stdout and stderr interleaved as received (the last 4 MiB). */
  output(): string;
  /**
   * Resolves with the matched text once the output (all of it so far, then as it grows)
   * matches `re`. Rejects if the process ends first or after `timeoutMs` (default 10000),
   * with the output tail in the message.
   */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
}

export interface CurlResult {
  /** HTTP status of the final response; 0 when there was none (see `code`, `stderr`). */
  status: number;
  /** Response headers, names in lower case; repeated headers joined with ', '. */
  headers: Record<string, string>;
  body: string;
  /** curl's exit code: 0 ok, 7 connection refused, 28 timeout, 56 reset... */
  code: number;
  stderr: string;
}

/** What `connectNodes` made: the link device in each node and its address. */
/** The kubelet's cgroup driver, which decides how pod and container cgroups are named. */
export type CgroupDriver = 'systemd' | 'cgroupfs';

/** The container a pod process runs in when none is named. */
export const DEFAULT_CONTAINER = 'app';

export interface NodeLink {
  a: { node: TopoNode; dev: string; ip: string };
  b: { node: TopoNode; dev: string; ip: string };
}

const BRIDGE = 'weftbr0';
const NETNS_DIR = '/run/netns';
const OWNER_DIR = '/run/weft-sandbox';
const BPF_FS = '/sys/fs/bpf';
const OUTPUT_CAP = 4 * 1024 * 1024;
const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/;
const PREFIX_RE = /^[A-Za-z0-9._-]*weft[A-Za-z0-9._-]*$/;
const ID_RANDOM_HEX = 6;

// ---------------------------------------------------------------------------------------
// IPv4 arithmetic

function ipToInt(ip: string): number {
  if (!isIPv4(ip)) throw new Error(`not an IPv4 address: ${ip}`);
  return ip.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join('.');
}

function networkOf(ipInt: number, prefixLen: number): number {
  const size = 2 ** (32 - prefixLen);
  return Math.floor(ipInt / size) * size;
}

function parseCidr(cidr: string): { network: number; prefixLen: number } {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new Error(`not an IPv4 CIDR: ${cidr}`);
  const prefixLen = Number(m[2]);
  if (prefixLen > 32) throw new Error(`bad prefix length in ${cidr}`);
  return { network: networkOf(ipToInt(m[1]!), prefixLen), prefixLen };
}

// ---------------------------------------------------------------------------------------
// cgroup v2 and process helpers

let cgroup2MountCache: string | undefined;

/** The cgroup v2 mount point, from /proc/mounts (`/sys/fs/cgroup/unified` on hybrid hosts). */
export function cgroup2Mount(): string {
  if (cgroup2MountCache) return cgroup2MountCache;
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[2] === 'cgroup2')
    .map((f) => f[1]!.replace(/\\040/g, ' '));
  const mount = mounts.find((m) => m === '/sys/fs/cgroup') ?? mounts.find((m) => m.startsWith('/sys/fs/cgroup')) ?? mounts[0];
  if (!mount) throw new Error('no cgroup2 filesystem in /proc/mounts');
  cgroup2MountCache = mount;
  return mount;
}

/** The cgroup v2 path (as in the `0::` line of /proc/PID/cgroup) of a process, or undefined. */
export function cgroupOfPid(pid: number): string | undefined {
  try {
    const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('0::'));
    return line?.slice(3);
  } catch {
    return undefined;
  }
}

function cgroupPopulated(dir: string): boolean {
  try {
    return /^populated 1$/m.test(readFileSync(join(dir, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

/** Kill every process in a cgroup subtree (cgroup.kill, or SIGKILL pid by pid on old kernels). */
function killCgroupTree(dir: string): void {
  if (!existsSync(dir)) return;
  try {
    writeFileSync(join(dir, 'cgroup.kill'), '1');
    return;
  } catch {
    // no cgroup.kill before Linux 5.14: fall through
  }
  const visit = (d: string): void => {
    try {
      for (const pid of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // already gone
        }
      }
      for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) visit(join(d, e.name));
    } catch {
      // removed meanwhile
    }
  };
  visit(dir);
}

/** rmdir a cgroup subtree, deepest first. Returns the errors (an empty list when all went). */
function rmdirCgroupTree(dir: string): Error[] {
  const errors: Error[] = [];
  const visit = (d: string): void => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') errors.push(err as Error);
      return;
    }
    for (const e of entries) if (e.isDirectory()) visit(join(d, e.name));
    try {
      rmdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') errors.push(err as Error);
    }
  };
  visit(dir);
  return errors;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Kill what is in a cgroup subtree, wait until it is empty, remove it. */
async function removeCgroupTree(dir: string, timeoutMs = 5_000): Promise<Error[]> {
  if (!existsSync(dir)) return [];
  killCgroupTree(dir);
  const deadline = Date.now() + timeoutMs;
  while (cgroupPopulated(dir) && Date.now() < deadline) await sleep(10);
  let errors = rmdirCgroupTree(dir);
  // A cgroup whose last task just exited can stay busy for a moment.
  while (errors.length > 0 && existsSync(dir) && Date.now() < deadline) {
    await sleep(20);
    errors = rmdirCgroupTree(dir);
  }
  return errors;
}

function removeCgroupTreeSync(dir: string, timeoutMs = 3_000): void {
  if (!existsSync(dir)) return;
  killCgroupTree(dir);
  const deadline = Date.now() + timeoutMs;
  while (cgroupPopulated(dir) && Date.now() < deadline) sleepSync(10);
  while (rmdirCgroupTree(dir).length > 0 && existsSync(dir) && Date.now() < deadline) sleepSync(20);
}

/** SIGKILL every process inside a network namespace (processes we did not spawn included). */
async function killNetnsPids(netns: string): Promise<void> {
  const r = await exec('ip', ['netns', 'pids', netns], { timeoutMs: 10_000 });
  for (const pid of r.stdout.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function killNetnsPidsSync(netns: string): void {
  let out = '';
  try {
    out = execFileSync('ip', ['netns', 'pids', netns], { encoding: 'utf8', timeout: 5_000, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return;
  }
  for (const pid of out.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Start time of a process (field 22 of /proc/PID/stat), to tell a pid from its reuse. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function ownerAlive(ownerFile: string): boolean {
  try {
    const [pid, start] = readFileSync(ownerFile, 'utf8').trim().split(' ');
    return processStartTime(Number(pid)) === start;
  } catch {
    return false;
  }
}

function listNetns(): string[] {
  try {
    return readdirSync(NETNS_DIR);
  } catch {
    return [];
  }
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------
// Spawned processes

const LOG_TAIL = 2_000;

interface Waiter {
  re: RegExp;
  resolve: (s: string) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

class Managed implements ManagedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<number | null>;
  #out = '';
  #hasExited = false;
  #closed = false;
  #waiters = new Set<Waiter>();
  readonly #label: string;

  constructor(argv: string[], opts: SpawnOpts, label: string, log: ((line: string) => void) | undefined) {
    this.#label = label;
    this.child = spawn(argv[0]!, argv.slice(1), {
      detached: true, // its own process group, so kill() reaches the nsenter'd command's children too
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: opts.env,
      cwd: opts.cwd,
    });
    this.pid = this.child.pid ?? -1;
    let pending = '';
    const onData = (b: Buffer): void => {
      const text = b.toString('utf8');
      this.#out += text;
      if (this.#out.length > OUTPUT_CAP) this.#out = this.#out.slice(-OUTPUT_CAP);
      if (log) {
        pending += text;
        const lines = pending.split('\n');
        pending = lines.pop()!;
        for (const line of lines) log(`[${label}:${this.pid}] ${line}`);
      }
      for (const w of this.#waiters) {
        const m = w.re.exec(this.#out);
        if (m) this.#settle(w, () => w.resolve(m[0]));
      }
    };
    this.child.stdout!.on('data', onData);
    this.child.stderr!.on('data', onData);
    if (opts.input !== undefined) {
      this.child.stdin!.on('error', () => {});
      this.child.stdin!.end(opts.input);
    }
    this.exited = new Promise((resolve) => {
      this.child.on('error', (err) => {
        this.#out += `\n[spawn error: ${err.message}]\n`;
        this.#hasExited = true;
        resolve(null);
        this.#failWaiters('could not start');
      });
      this.child.on('exit', (code) => {
        this.#hasExited = true;
        resolve(code);
        // Output can still arrive after 'exit'; 'close' normally follows at once.
        setTimeout(() => this.#failWaiters(`exited with ${code ?? this.child.signalCode}`), 200).unref();
      });
    });
    this.child.on('close', () => {
      this.#closed = true;
      this.#failWaiters(`exited with ${this.child.exitCode ?? this.child.signalCode}`);
    });
  }

  get hasExited(): boolean {
    return this.#hasExited;
  }

  kill(signal: NodeJS.Signals | number = 'SIGTERM'): void {
    if (this.#hasExited || this.pid < 0) return;
    killGroup(this.pid, signal);
  }

  output(): string {
    return this.#out;
  }

  waitFor(re: RegExp, timeoutMs = 10_000): Promise<string> {
    const once = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
    const m = once.exec(this.#out);
    if (m) return Promise.resolve(m[0]);
    if (this.#closed || (this.#hasExited && this.pid < 0)) {
      return Promise.reject(new Error(`${this.#label} (pid ${this.pid}) ended before printing ${re}: ${this.#tail()}`));
    }
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        re: once,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#settle(w, () => reject(new Error(`${this.#label} (pid ${this.pid}) did not print ${re} within ${timeoutMs}ms: ${this.#tail()}`)));
        }, timeoutMs),
      };
      this.#waiters.add(w);
    });
  }

  #settle(w: Waiter, fn: () => void): void {
    clearTimeout(w.timer);
    this.#waiters.delete(w);
    fn();
  }

  #failWaiters(why: string): void {
    for (const w of this.#waiters) {
      const m = w.re.exec(this.#out);
      this.#settle(w, () => (m ? w.resolve(m[0]) : w.reject(new Error(`${this.#label} (pid ${this.pid}) ${why} before printing ${w.re}: ${this.#tail()}`))));
    }
  }

  #tail(): string {
    return this.#out.length > LOG_TAIL ? `...${this.#out.slice(-LOG_TAIL)}` : this.#out;
  }
}

/** Wait for a managed process to exit, at most `ms`; true when it did. */
async function exitedWithin(p: Managed, ms: number): Promise<boolean> {
  if (p.hasExited) return true;
  let timer: NodeJS.Timeout | undefined;
  const done = await Promise.race([
    p.exited.then(() => true),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), ms);
    }),
  ]);
  clearTimeout(timer);
  return done;
}

// The pod wrapper: join the cgroup while still a plain `sh`, so nothing of the command ever
// runs outside it, then exec nsenter, which execs the command (the pid stays the same).
// Node processes given a cgroup use it too.
const POD_WRAPPER = 'echo $$ > "$1/cgroup.procs" || { echo "weft-topology: cannot join cgroup $1" >&2; exit 125; }; ' + 'ns=$2; shift 2; exec nsenter --net="$ns" -- "$@"';

// ---------------------------------------------------------------------------------------
// Exit hooks

const live = new Set<Topology>();
let hooksInstalled = false;

function destroyAllSync(): void {
  for (const t of [...live]) t.destroySync();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  // 'exit' also fires when the process dies of an uncaught exception or unhandled rejection.
  process.on('exit', destroyAllSync);
  process.on('uncaughtExceptionMonitor', () => {
    if (process.listenerCount('uncaughtException') === 0) destroyAllSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      destroyAllSync();
      process.removeListener(sig, onSignal);
      // Re-raise: with no other listener this ends the process as the signal would have;
      // with others (tap's signal-exit counts listeners) they see it again without us.
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

// ---------------------------------------------------------------------------------------
// Topology

export class Topology {
  readonly id: string;
  readonly cgroupRoot: string;
  readonly nodes: TopoNode[] = [];
  readonly #log: (msg: string) => void;
  readonly #echoLog: (line: string) => void;
  readonly #echoAll: boolean;
  // What exists, recorded as it is made; destroy() works from these.
  readonly #netns: string[] = [];
  readonly #cgroups: string[] = [];
  readonly #paths: string[] = [];
  readonly #procs = new Set<Managed>();
  readonly #execPids = new Set<number>();
  readonly #cleanups: Array<() => void | Promise<void>> = [];
  #linkCount = 0;
  #destroying: Promise<void> | undefined;
  #destroyed = false;

  private constructor(id: string, log: ((msg: string) => void) | undefined) {
    this.id = id;
    this.cgroupRoot = join(cgroup2Mount(), id);
    const stderr = (m: string): void => void process.stderr.write(`${m}\n`);
    this.#log = log ?? (process.env.WEFT_TOPO_DEBUG ? stderr : () => {});
    this.#echoLog = log ?? stderr;
    this.#echoAll = Boolean(process.env.WEFT_TOPO_ECHO);
  }

  /**
   * `/sys/fs/bpf/<id>`: where tests should pin this topology's BPF objects. Not created
   * here; removed (recursively) by destroy() and by sweep().
   */
  get bpfRoot(): string {
    return join(BPF_FS, this.id);
  }

  /** Make an empty topology: its cgroup root and owner file. */
  static async create(opts: TopologyOptions = {}): Promise<Topology> {
    const prefix = opts.prefix ?? 'weft-t';
    if (!PREFIX_RE.test(prefix)) throw new Error(`topology prefix must contain 'weft' and only [A-Za-z0-9._-]: ${prefix}`);
    const taken = (id: string): boolean => existsSync(join(cgroup2Mount(), id)) || existsSync(join(OWNER_DIR, `${id}.owner`)) || listNetns().some((n) => n.startsWith(id));
    let id: string;
    do id = prefix + randomBytes(ID_RANDOM_HEX / 2).toString('hex');
    while (taken(id));

    const topo = new Topology(id, opts.log);
    live.add(topo);
    installExitHooks();
    try {
      mkdirSync(OWNER_DIR, { recursive: true });
      const owner = join(OWNER_DIR, `${id}.owner`);
      topo.#paths.push(owner);
      writeFileSync(owner, `${process.pid} ${processStartTime(process.pid)}\n`);
      topo.#cgroups.push(topo.cgroupRoot);
      mkdirSync(topo.cgroupRoot);
      topo.#paths.push(topo.bpfRoot);
    } catch (err) {
      await topo.destroy().catch(() => {});
      throw err;
    }
    topo.#log(`topology ${id}: created (cgroup ${topo.cgroupRoot})`);
    return topo;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** All pods of all nodes. */
  get pods(): TopoPod[] {
    return this.nodes.flatMap((n) => n.pods);
  }

  /**
   * A node: netns `<id>-<name>` with lo up, bridge `weftbr0` holding `address/prefixLen`
   * (default /24), ip_forward on, and a cgroup dir `<cgroupRoot>/<name>` for its pods.
   */
  async addNode(name: string, opts: { address: string; prefixLen?: number; cgroupDriver?: CgroupDriver }): Promise<TopoNode> {
    this.#checkLive();
    if (!NAME_RE.test(name)) throw new Error(`bad node name ${JSON.stringify(name)}: use [a-z0-9-]`);
    if (this.nodes.some((n) => n.name === name)) throw new Error(`node ${name} exists`);
    const prefixLen = opts.prefixLen ?? 24;
    if (!Number.isInteger(prefixLen) || prefixLen < 8 || prefixLen > 30) throw new Error(`bad prefixLen ${prefixLen}`);
    ipToInt(opts.address);

    const driver = opts.cgroupDriver ?? 'systemd';
    if (driver !== 'systemd' && driver !== 'cgroupfs') throw new Error(`bad cgroupDriver ${JSON.stringify(driver)}: systemd or cgroupfs`);
    const netns = await this.makeNetns(`${this.id}-${name}`);
    const nodeCgroup = this.makeCgroup(join(this.cgroupRoot, name));
    // The kubelet's QoS level (Burstable): the parent of the pod cgroups, removed with the node's.
    const qos = join(nodeCgroup, ...(driver === 'systemd' ? ['kubepods.slice', 'kubepods-burstable.slice'] : ['kubepods', 'burstable']));
    mkdirSync(qos, { recursive: true });
    const node = new TopoNode(this, name, netns, opts.address, prefixLen, qos, nodeCgroup, driver);
    this.nodes.push(node);
    await this.ipBatch(netns, ['link set lo up', `link add ${BRIDGE} type bridge`, `addr add ${opts.address}/${prefixLen} dev ${BRIDGE}`, `link set ${BRIDGE} up`]);
    await this.sysctl(netns, ['net.ipv4.ip_forward=1']);
    this.#log(`topology ${this.id}: node ${name} (${netns}) ${opts.address}/${prefixLen}`);
    return node;
  }

  /**
   * Join two nodes with a veth pair (`wl<k>` in both), addresses `.1` and `.2` of `subnet`
   * (default the next 10.78.0.<4k>/30), and a route in each to the other's pod subnet
   * (which holds its node address). Both forward, so pods reach the other node's pods.
   */
  async connectNodes(a: TopoNode, b: TopoNode, opts: { subnet?: string } = {}): Promise<NodeLink> {
    this.#checkLive();
    if (a === b) throw new Error('cannot connect a node to itself');
    if (a.topology !== this || b.topology !== this) throw new Error('nodes of another topology');
    const k = this.#linkCount++;
    const { network, prefixLen } = parseCidr(opts.subnet ?? `10.78.${Math.floor((k * 4) / 256)}.${(k * 4) % 256}/30`);
    if (prefixLen > 30) throw new Error(`subnet ${opts.subnet} has no room for two addresses`);
    const aIp = intToIp(network + 1);
    const bIp = intToIp(network + 2);
    const dev = `wl${k}`;
    await execOk('ip', ['-n', a.netns, 'link', 'add', dev, 'type', 'veth', 'peer', 'name', dev, 'netns', b.netns]);
    await this.ipBatch(a.netns, [`addr add ${aIp}/${prefixLen} dev ${dev}`, `link set ${dev} up`, `route add ${b.podSubnet} via ${bIp} dev ${dev}`]);
    await this.ipBatch(b.netns, [`addr add ${bIp}/${prefixLen} dev ${dev}`, `link set ${dev} up`, `route add ${a.podSubnet} via ${aIp} dev ${dev}`]);
    await this.sysctl(a.netns, ['net.ipv4.ip_forward=1']);
    await this.sysctl(b.netns, ['net.ipv4.ip_forward=1']);
    this.#log(`topology ${this.id}: link ${a.name}(${aIp}) <-> ${b.name}(${bIp}) on ${dev}`);
    return { a: { node: a, dev, ip: aIp }, b: { node: b, dev, ip: bIp } };
  }

  /** Extra cleanup for destroy(), run last-registered first, after the processes are killed. */
  registerCleanup(fn: () => void | Promise<void>): void {
    this.#cleanups.push(fn);
  }

  /** Remove this file or directory (recursively) on destroy, also from the exit hooks. */
  trackPath(path: string): void {
    this.#paths.push(path);
  }

  /**
   * Remove everything: kill spawned processes (SIGTERM to each process group, SIGKILL after
   * 2s), run the registered cleanups, kill whatever else is in the pod cgroups and the
   * namespaces, rmdir the cgroups, delete the namespaces and tracked paths. Idempotent;
   * rejects with an AggregateError listing what could not be removed, after trying it all.
   */
  destroy(): Promise<void> {
    this.#destroying ??= this.#destroyAsync();
    return this.#destroying;
  }

  async #destroyAsync(): Promise<void> {
    const errors: unknown[] = [];
    for (const pid of this.#execPids) killGroup(pid, 'SIGKILL');
    const procs = [...this.#procs];
    for (const p of procs) p.kill('SIGTERM');
    const slow = (await Promise.all(procs.map(async (p) => ((await exitedWithin(p, 2_000)) ? undefined : p)))).filter((p): p is Managed => p !== undefined);
    for (const p of slow) p.kill('SIGKILL');
    await Promise.all(slow.map((p) => exitedWithin(p, 2_000)));

    for (const fn of [...this.#cleanups].reverse()) {
      try {
        await fn();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#cleanups.length = 0;

    for (const ns of this.#netns) await killNetnsPids(ns);
    // Children before parents: the root comes first in #cgroups and is removed last.
    for (const dir of [...this.#cgroups].reverse()) errors.push(...(await removeCgroupTree(dir)));
    for (const ns of [...this.#netns].reverse()) {
      if (!existsSync(join(NETNS_DIR, ns))) continue;
      const r = await exec('ip', ['netns', 'del', ns], { timeoutMs: 10_000 });
      if (r.code !== 0 && existsSync(join(NETNS_DIR, ns))) errors.push(new Error(`ip netns del ${ns}: ${r.stderr.trim()}`));
    }
    for (const path of [...this.#paths].reverse()) {
      try {
        rmSync(path, { recursive: true, force: true });
      } catch (err) {
        errors.push(err);
      }
    }
    this.#destroyed = true;
    live.delete(this);
    this.#log(`topology ${this.id}: destroyed${errors.length ? ` with ${errors.length} errors` : ''}`);
    if (errors.length) throw new AggregateError(errors, `topology ${this.id}: destroy left things behind`);
  }

  /**
   * The same as destroy(), synchronously, for process-exit hooks: SIGKILL at once, and
   * registered cleanups that return a promise do not get to finish.
   * @internal
   */
  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    live.delete(this);
    for (const pid of this.#execPids) killGroup(pid, 'SIGKILL');
    for (const p of this.#procs) p.kill('SIGKILL');
    for (const fn of [...this.#cleanups].reverse()) {
      try {
        const r = fn();
        if (r instanceof Promise) r.catch(() => {});
      } catch {
        // best effort on the way out
      }
    }
    for (const ns of this.#netns) killNetnsPidsSync(ns);
    for (const dir of [...this.#cgroups].reverse()) removeCgroupTreeSync(dir);
    for (const ns of [...this.#netns].reverse()) if (existsSync(join(NETNS_DIR, ns))) execQuietSync('ip', ['netns', 'del', ns]);
    for (const path of [...this.#paths].reverse()) {
      try {
        rmSync(path, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
  }

  /**
   * Remove what crashed runs of this class left with that prefix: network namespaces (and
   * the processes in them), cgroup trees (and their processes), `/sys/fs/bpf/<id>*`. Only
   * names a Topology makes are touched, `<prefix><6 hex>` then nothing or '-', so
   * another tool's `weft-test-...` is safe from sweep('weft-t'); and topologies whose owner
   * process is alive (this one included) are spared, so concurrent test runs coexist.
   */
  static async sweep(prefix: string, log: (msg: string) => void = () => {}): Promise<void> {
    if (!PREFIX_RE.test(prefix)) throw new Error(`sweep prefix must contain 'weft': ${prefix}`);
    const idRe = new RegExp(`^${escapeRe(prefix)}[0-9a-f]{${ID_RANDOM_HEX}}(?=$|-)`);
    const ownerRe = new RegExp(`^(${escapeRe(prefix)}[0-9a-f]{${ID_RANDOM_HEX}})\\.owner$`);
    const owners = listDir(OWNER_DIR).flatMap((f) => ownerRe.exec(f)?.[1] ?? []);
    const alive = new Set(owners.filter((id) => ownerAlive(join(OWNER_DIR, `${id}.owner`))));
    const stale = (name: string): boolean => {
      const id = idRe.exec(name)?.[0];
      return id !== undefined && !alive.has(id);
    };

    for (const ns of listNetns().filter(stale)) {
      log(`sweep: netns ${ns}`);
      await killNetnsPids(ns);
      await exec('ip', ['netns', 'del', ns], { timeoutMs: 10_000 });
    }
    const mount = cgroup2Mount();
    for (const dir of listDir(mount).filter(stale)) {
      const path = join(mount, dir);
      if (!statSync(path).isDirectory()) continue;
      log(`sweep: cgroup ${path}`);
      await removeCgroupTree(path);
    }
    for (const entry of listDir(BPF_FS).filter(stale)) {
      log(`sweep: ${join(BPF_FS, entry)}`);
      rmSync(join(BPF_FS, entry), { recursive: true, force: true });
    }
    for (const id of owners.filter((o) => !alive.has(o))) rmSync(join(OWNER_DIR, `${id}.owner`), { force: true });
  }

  // ---- internals shared with nodes and pods -------------------------------------------

  /** @internal */
  async makeNetns(name: string): Promise<string> {
    this.#checkLive();
    if (this.#netns.includes(name) || existsSync(join(NETNS_DIR, name))) throw new Error(`netns ${name} exists`);
    this.#netns.push(name);
    await execOk('ip', ['netns', 'add', name]);
    return name;
  }

  /** @internal */
  makeCgroup(dir: string): string {
    this.#checkLive();
    this.#cgroups.push(dir);
    mkdirSync(dir);
    return dir;
  }

  /** @internal */
  async ipBatch(netns: string, commands: string[]): Promise<void> {
    await execOk('ip', ['-n', netns, '-batch', '-'], { input: `${commands.join('\n')}\n` });
  }

  /** @internal */
  async sysctl(netns: string, settings: string[]): Promise<void> {
    await execOk('nsenter', [`--net=${join(NETNS_DIR, netns)}`, '--', 'sysctl', '-q', '-w', ...settings]);
  }

  /** @internal */
  spawnManaged(argv: string[], opts: SpawnOpts, label: string): ManagedProcess {
    this.#checkLive();
    const p = new Managed(argv, opts, label, opts.echo || this.#echoAll ? this.#echoLog : undefined);
    this.#procs.add(p);
    void p.exited.then(() => this.#procs.delete(p));
    return p;
  }

  /** @internal Run to completion; destroy() kills it if it is still running. */
  async execManaged(argv: string[], opts: { timeoutMs?: number; input?: string }): Promise<ExecResult> {
    this.#checkLive();
    let pid: number | undefined;
    try {
      return await exec(argv[0]!, argv.slice(1), {
        timeoutMs: opts.timeoutMs,
        input: opts.input,
        onSpawn: (child) => {
          pid = child.pid!;
          this.#execPids.add(pid);
        },
      });
    } finally {
      if (pid !== undefined) this.#execPids.delete(pid);
    }
  }

  #checkLive(): void {
    if (this.#destroyed || this.#destroying) throw new Error(`topology ${this.id} is destroyed`);
  }

  /** @internal */
  get log(): (msg: string) => void {
    return this.#log;
  }
}

export class TopoNode {
  readonly topology: Topology;
  readonly name: string;
  readonly netns: string;
  readonly address: string;
  readonly prefixLen: number;
  /** The bridge that holds the node address and the pods' veths, inside the node netns. */
  readonly bridge: string = BRIDGE;
  /**
   * The parent of the pod cgroups, the kubelet's Burstable QoS cgroup:
   * `<cgroupRoot>/<node>/kubepods.slice/kubepods-burstable.slice` (systemd driver) or
   * `<cgroupRoot>/<node>/kubepods/burstable` (cgroupfs).
   */
  readonly cgroup: string;
  /** `<cgroupRoot>/<node>`: everything of this node's, the QoS tree and the agent's cgroup. */
  readonly nodeCgroup: string;
  readonly cgroupDriver: CgroupDriver;
  readonly pods: TopoPod[] = [];
  #vethCount = 0;
  #agentCgroup: string | undefined;

  /** @internal */
  constructor(topology: Topology, name: string, netns: string, address: string, prefixLen: number, cgroup: string, nodeCgroup: string, driver: CgroupDriver) {
    this.topology = topology;
    this.name = name;
    this.netns = netns;
    this.address = address;
    this.prefixLen = prefixLen;
    this.cgroup = cgroup;
    this.nodeCgroup = nodeCgroup;
    this.cgroupDriver = driver;
  }

  /**
   * `<cgroupRoot>/<node>/weft-agent`: a cgroup of its own for the node's agent (made on first
   * use), as a DaemonSet pod has; the agent marks the connections it opens from there.
   */
  get agentCgroup(): string {
    if (!this.#agentCgroup) {
      const dir = join(this.nodeCgroup, 'weft-agent');
      if (!existsSync(dir)) mkdirSync(dir);
      this.#agentCgroup = dir;
    }
    return this.#agentCgroup;
  }

  /** `/run/netns/<netns>`, for nsenter --net=. */
  get netnsPath(): string {
    return join(NETNS_DIR, this.netns);
  }

  /** The pod subnet, e.g. '10.77.0.0/24'. */
  get podSubnet(): string {
    return `${intToIp(networkOf(ipToInt(this.address), this.prefixLen))}/${this.prefixLen}`;
  }

  /**
   * A pod: netns `<id>-<node>-<name>`, `eth0` with `ip/<node prefixLen>` and a default route
   * via the node address, lo up; its veth peer `vp<k>` (alias = pod name) on the node bridge;
   * cgroup `<cgroupRoot>/<node>/<name>`.
   */
  async addPod(name: string, opts: { ip: string }): Promise<TopoPod> {
    if (!NAME_RE.test(name)) throw new Error(`bad pod name ${JSON.stringify(name)}: use [a-z0-9-]`);
    if (this.pods.some((p) => p.name === name)) throw new Error(`pod ${name} exists on ${this.name}`);
    const ipInt = ipToInt(opts.ip);
    if (networkOf(ipInt, this.prefixLen) !== networkOf(ipToInt(this.address), this.prefixLen) || opts.ip === this.address) {
      throw new Error(`pod ip ${opts.ip} is not a free address of ${this.podSubnet}`);
    }
    if (this.topology.pods.some((p) => p.ip === opts.ip)) throw new Error(`pod ip ${opts.ip} is taken`);

    const t = this.topology;
    const netns = await t.makeNetns(`${this.netns}-${name}`);
    const cgroup = t.makeCgroup(join(this.cgroup, name));
    const pod = new TopoPod(this, name, netns, opts.ip, cgroup);
    // The sandbox container, as containerd starts it first: it holds the pod together.
    pod.spawn('sleep', ['infinity'], { container: 'pause', label: `${name}:pause` });
    this.pods.push(pod);
    const veth = `vp${this.#vethCount++}`;
    await execOk('ip', ['-n', this.netns, 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    await t.ipBatch(this.netns, [`link set ${veth} alias ${name}`, `link set ${veth} master ${BRIDGE}`, `link set ${veth} up`]);
    await t.ipBatch(netns, ['link set lo up', `addr add ${opts.ip}/${this.prefixLen} dev eth0`, 'link set eth0 up', `route add default via ${this.address} dev eth0`]);
    t.log(`topology ${t.id}: pod ${this.name}/${name} (${netns}) ${opts.ip} cgroup ${cgroup}`);
    return pod;
  }

  /** A process in the node netns (the agent runs here), in `opts.cgroup` or else this process's cgroup. */
  spawn(cmd: string, args: string[], opts: SpawnOpts = {}): ManagedProcess {
    const argv = opts.cgroup ? ['sh', '-c', POD_WRAPPER, 'weft-node', opts.cgroup, this.netnsPath, cmd, ...args] : ['nsenter', `--net=${this.netnsPath}`, '--', cmd, ...args];
    return this.topology.spawnManaged(argv, opts, opts.label ?? `${this.name}:${baseName(cmd)}`);
  }

  /** Run to completion in the node netns, in `opts.cgroup` or else this process's cgroup. Default timeout 30s. */
  exec(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string; cgroup?: string } = {}): Promise<ExecResult> {
    const argv = opts.cgroup ? ['sh', '-c', POD_WRAPPER, 'weft-node', opts.cgroup, this.netnsPath, cmd, ...args] : ['nsenter', `--net=${this.netnsPath}`, '--', cmd, ...args];
    return this.topology.execManaged(argv, opts);
  }
}

export class TopoPod {
  readonly node: TopoNode;
  readonly name: string;
  readonly netns: string;
  readonly ip: string;
  /** Absolute cgroup v2 directory of the pod (what the agent captures); containers are below it. */
  readonly cgroup: string;
  readonly #containers = new Map<string, string>();

  /** @internal */
  constructor(node: TopoNode, name: string, netns: string, ip: string, cgroup: string) {
    this.node = node;
    this.name = name;
    this.netns = netns;
    this.ip = ip;
    this.cgroup = cgroup;
  }

  get netnsPath(): string {
    return join(NETNS_DIR, this.netns);
  }

  /** The cgroup path as /proc/PID/cgroup shows it (`0::<this>`), e.g. '/weft-t3fa9c1/node-a/api-0'. */
  get cgroupPath(): string {
    return this.cgroup.slice(cgroup2Mount().length) || '/';
  }

  /** The cgroup id the kernel reports to BPF (bpf_get_current_cgroup_id): the directory's inode. */
  cgroupId(): bigint {
    return statSync(this.cgroup, { bigint: true }).ino;
  }

  /**
   * The cgroup of one of the pod's containers, made on first use, named as containerd names
   * it under the node's cgroup driver: `cri-containerd-<64 hex>.scope` (systemd) or
   * `<64 hex>` (cgroupfs), the id derived from the pod and container names.
   */
  containerCgroup(container: string = DEFAULT_CONTAINER): string {
    let dir = this.#containers.get(container);
    if (!dir) {
      if (!NAME_RE.test(container)) throw new Error(`bad container name ${JSON.stringify(container)}: use [a-z0-9-]`);
      const id = createHash('sha256').update(`${this.node.topology.id}/${this.node.name}/${this.name}/${container}`).digest('hex');
      dir = join(this.cgroup, this.node.cgroupDriver === 'systemd' ? `cri-containerd-${id}.scope` : id);
      if (!existsSync(dir)) mkdirSync(dir);
      this.#containers.set(container, dir);
    }
    return dir;
  }

  /** A process in one of the pod's containers: it joins the container's cgroup before running anything, then enters the netns. */
  spawn(cmd: string, args: string[], opts: SpawnOpts = {}): ManagedProcess {
    return this.node.topology.spawnManaged(this.#argv(cmd, args, opts.container), opts, opts.label ?? `${this.name}:${baseName(cmd)}`);
  }

  /** Run to completion in the pod (a container's cgroup, the pod's netns). Default timeout 30s. */
  exec(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string; container?: string; cgroup?: string } = {}): Promise<ExecResult> {
    return this.node.topology.execManaged(opts.cgroup ? this.#argvIn(opts.cgroup, cmd, args) : this.#argv(cmd, args, opts.container), opts);
  }

  /**
   * curl from inside the pod: `curl -sS -i --noproxy '*' --max-time 5 [args] url`
   * (no --max-time added when args carry one). Do not pass -o or -w: the output is parsed.
   */
  async curl(url: string, args: string[] = []): Promise<CurlResult> {
    const hasMaxTime = args.some((a) => a === '-m' || a === '--max-time' || a.startsWith('--max-time='));
    const argv = ['-sS', '-i', '--noproxy', '*', ...(hasMaxTime ? [] : ['--max-time', '5']), ...args, url];
    const r = await this.exec('curl', argv, { timeoutMs: 60_000 });
    return { ...parseCurlOutput(r.stdout), code: r.code ?? -1, stderr: r.stderr };
  }

  /**
   * Start the sample backend (./backend.ts) in this pod with plain node, running the
   * compiled dist file (built with tsc if missing or stale), and wait for its listen line.
   */
  async spawnBackend(opts: { name?: string; port: number; tcpEchoPort?: number; grpcPort?: number; host?: string; timeoutMs?: number }): Promise<ManagedProcess> {
    const script = await backendScriptPath();
    const name = opts.name ?? this.name;
    const args = [script, '--name', name, '--port', String(opts.port)];
    if (opts.tcpEchoPort !== undefined) args.push('--tcp-echo-port', String(opts.tcpEchoPort));
    if (opts.grpcPort !== undefined) args.push('--grpc-port', String(opts.grpcPort));
    if (opts.host !== undefined) args.push('--host', opts.host);
    const p = this.spawn(process.execPath, args, { label: `${this.name}:backend` });
    await p.waitFor(new RegExp(`backend ${escapeRe(name)} listening on `), opts.timeoutMs ?? 15_000);
    return p;
  }

  #argv(cmd: string, args: string[], container?: string): string[] {
    return this.#argvIn(this.containerCgroup(container), cmd, args);
  }

  /** In the pod's netns, in any cgroup (an attack test's own choice). */
  #argvIn(cgroup: string, cmd: string, args: string[]): string[] {
    return ['sh', '-c', POD_WRAPPER, 'weft-pod', cgroup, this.netnsPath, cmd, ...args];
  }
}

function baseName(cmd: string): string {
  return cmd.slice(cmd.lastIndexOf('/') + 1);
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Parse `curl -i` output: skips 1xx interim responses, keeps the final one. */
export function parseCurlOutput(out: string): { status: number; headers: Record<string, string>; body: string } {
  let rest = out;
  for (;;) {
    const m = /^HTTP\/[\d.]+ (\d{3})[^\r\n]*\r?\n/.exec(rest);
    if (!m) return { status: 0, headers: {}, body: rest };
    const end = rest.search(/\r?\n\r?\n/);
    const head = end < 0 ? rest : rest.slice(0, end);
    const sep = end < 0 ? '' : /\r?\n\r?\n/.exec(rest.slice(end))![0];
    const body = end < 0 ? '' : rest.slice(end + sep.length);
    const status = Number(m[1]);
    if (status >= 100 && status < 200 && /^HTTP\//.test(body)) {
      rest = body;
      continue;
    }
    const headers: Record<string, string> = {};
    for (const line of head.split(/\r?\n/).slice(1)) {
      const i = line.indexOf(':');
      if (i <= 0) continue;
      const key = line.slice(0, i).trim().toLowerCase();
      const value = line.slice(i + 1).trim();
      headers[key] = key in headers ? `${headers[key]}, ${value}` : value;
    }
    return { status, headers, body };
  }
}
