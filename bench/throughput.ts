/**
 * Throughput and connection rate through the real capture path.
 *
 * One node namespace (bridge 10.77.0.1/24) with two pods: `client-0` (namespace `bench`,
 * meshed: the agent's eBPF programs sit on its cgroup) and `backend-0` (nginx serving a
 * static 1 KiB body, in the unmeshed namespace `plain`, so that every scenario reaches the
 * very same backend the same way and `direct` is a plain pod-to-pod connection).
 *
 * The proxy must be what limits. This machine has two cores, so: core 1 runs the proxy under
 * test, alone; core 0 runs wrk and the backend (nginx, which needs about a third of what a
 * proxy needs per request). On a machine with more cores the same split holds: the client
 * and the backend never share the proxy's core. Every proxied row reports the proxy's CPU
 * per request (utime + stime of its process tree over the measured run / requests), so a
 * row is comparable even when the client side, not the proxy, ran out first.
 *
 *   direct     client-0 -> 10.77.0.20:8080 (no proxy; the agent runs, the pod IP is not redirected)
 *   weft L7    client-0 -> VIP 10.96.0.80:80 (protocol http) -> connect4 -> agent :15001 -> backend
 *   weft L4    client-0 -> VIP 10.96.0.81:80 (protocol tcp)  -> connect4 (socket LB) -> backend
 *   nginx      client-0 -> 10.77.0.1:18080 -> nginx on the node -> backend
 *   haproxy    client-0 -> 10.77.0.1:18081 -> haproxy on the node -> backend
 *   fastify    client-0 -> 10.77.0.1:18082 -> @fastify/http-proxy on the node -> backend
 *   pipe       client-0 -> 10.77.0.1:18083 -> a raw Node.js TCP pipe (no parsing) -> backend: Node's floor
 *   l7all      as weft L7, but the agent is not pinned: it may use every core and runs its
 *              default number of workers (one per core it may use); its CPU over the run's
 *              wall time is the number of cores it used
 *
 * weft L4's service (protocol tcp, an unmeshed endpoint on this node, round-robin, no
 * policy) qualifies for socket LB (src/capture/socket-lb.ts): connect4 rewrites the connect
 * to the backend itself, so the data path is direct's and the agent is off it. Were it not
 * eligible (or WEFT_L4_SOCKET_LB=0), it would go connect4 -> agent :15001 -> backend; the
 * bench reads the agent's /config_dump, and counts balanced connections during a warm-up, to
 * say which path L4 took.
 *
 * Rounds: single 10 s runs on this kind of machine are bimodal (the same path measured twice
 * differs by up to ~15%), so one run of A against one run of B compares noise. Each scenario
 * is measured in `rounds` rounds instead, alternating: direct, weft L4 and weft L7 take turns
 * while one agent runs (direct too, so that the client's cgroup carries the eBPF programs in
 * both halves of the L4 vs direct ratio), in the order direct, L4, L7 in odd rounds and L7,
 * L4, direct in even ones; then the peers, each started afresh on the proxy core for its
 * turn. A scenario's figure is its median round.
 *
 * The peers are dialed on the node address: "a proxy on the node" without weft's capture,
 * which is the cost weft adds and they do not have.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { AGENT_NODE_FLAGS } from '../src/node-flags.js';
import { Topology, type ManagedProcess, type TopoNode, type TopoPod } from '../src/sandbox/topology.js';
import { startAgent, type RunningAgent } from './lib/agent.js';
import { prepareStaticBackend, startPeer, type PeerName } from './lib/peers.js';
import { cgroupCpuSeconds, coreTimes, coreUse, cpusAllowed, kernelThreadCpuSeconds, treeCpuSeconds, treePeakRssMb, treeRssMb, waitQuiet } from './lib/proc.js';
import { nodeGet, waitHttp, type Running } from './lib/spawn.js';
import { runWrk, type WrkOptions, type WrkResult } from './lib/wrk.js';

export const CLIENT_CPU = 0;
export const PROXY_CPU = 1;

const NODE_IP = '10.77.0.1';
const CLIENT_IP = '10.77.0.10';
const BACKEND_IP = '10.77.0.20';
const BACKEND_PORT = 8080;
const L7_VIP = '10.96.0.80';
const L4_VIP = '10.96.0.81';
const BODY_BYTES = 1024;

export type ScenarioKey = 'direct' | 'l7' | 'l7all' | 'l4' | 'nginx' | 'haproxy' | 'pipe' | 'fastify';
export const SCENARIOS: readonly ScenarioKey[] = ['direct', 'l7', 'l7all', 'l4', 'nginx', 'haproxy', 'pipe', 'fastify'];
export const SCENARIO_NAMES: Record<ScenarioKey, string> = {
  direct: 'direct',
  l7: 'weft L7',
  l7all: 'weft L7, workers unpinned',
  l4: 'weft L4',
  nginx: 'nginx',
  haproxy: 'haproxy',
  pipe: 'Node.js pipe (no parsing)',
  fastify: '@fastify/http-proxy',
};

const PEER_PORTS: Record<PeerName, number> = { nginx: 18080, haproxy: 18081, fastify: 18082, pipe: 18083 };
/** Every core of the machine, as taskset takes it: the unpinned agent's. */
const ALL_CPUS = `0-${cpus().length - 1}`;

/** wrk's figures as the report keeps them (without the raw text). */
export type WrkFigures = Omit<WrkResult, 'bytesRead'> & { bytesRead: string };

/** What one measured run gives: wrk's figures and what the proxy used meanwhile. */
export interface RunFigures {
  error?: string;
  wrk?: WrkFigures;
  /** CPU seconds the proxy (its whole process tree) used during the measured run. */
  proxyCpuS?: number;
  /** proxyCpuS per 1000 requests. */
  cpuPer1000?: number;
  /** proxyCpuS per request, µs. */
  cpuUsPerReq?: number;
  /** proxyCpuS over the run's wall time: how many cores the proxy used. */
  coresUsed?: number;
  /** Proxy RSS at the end of the run, and its peak, MiB. */
  rssMb?: number;
  peakRssMb?: number;
  /** How busy each core was during the measured run, and CPU used by anything else. */
  cores?: RunCores;
  /** Measured runs made (a run disturbed by other work on the machine is made again once). */
  attempts?: number;
}

/** One measured round of a scenario. */
export interface RoundResult extends RunFigures {
  /** 1-based. */
  round: number;
  /** The warm-up before this round's measured run, s. */
  warmupS: number;
}

/**
 * A scenario over its rounds. The top-level figures (wrk, CPU, RSS, cores, attempts) are
 * those of the median round, so that req/s, p50 and p99 come from one and the same run.
 */
export interface ScenarioResult extends RunFigures {
  key: ScenarioKey;
  name: string;
  url: string;
  /** Cores the proxy was allowed on (should be the proxy core). */
  proxyCpus?: string;
  /** Every round, in the order they ran (failed ones included). */
  rounds?: RoundResult[];
  /** The round the figures above come from (1-based). */
  medianRound?: number;
  /** Whether the agent ran during the measurement (direct: its eBPF programs on the client's cgroup). */
  agentRunning?: boolean;
}

/** Which path weft L4 took, from the agent's /config_dump and its balanced-connection count. */
export interface L4Path {
  socketLb: boolean;
  /** The agent's own words: why the port is not balanced in the kernel. */
  reason?: string;
  /** Backend slots of the balanced port. */
  slots?: number;
  /** Balanced connections the agent counted open during an L4 warm-up (wrk holds `connections`). */
  openDuringWarmup?: number;
}

export interface RunCores {
  /** Busy share (0..1) of the client core and of the proxy core. */
  clientBusy: number;
  proxyBusy: number;
  proxySoftirq: number;
  /**
   * CPU used during the run by tasks that are neither the proxy, nor the pods (wrk, the
   * backend), nor kernel threads, nor this process, in cores (CPU s / s): other work on
   * the machine.
   */
  foreignCores: number;
  /** How long the run waited for a quiet machine before its warm-up, ms; whether it got one. */
  quietWaitMs: number;
  quiet: boolean;
}

export interface ConnRateResult {
  key: 'direct' | 'l7' | 'l4';
  name: string;
  url: string;
  error?: string;
  /** New connections per second (one request per connection). */
  connPerSec?: number;
  p50Ms?: number;
  p99Ms?: number;
  errors?: number;
  cpuPer1000?: number;
  /** CPU used by other work on the machine during the run, in cores. */
  foreignCores?: number;
}

export interface ThroughputOptions {
  durationS: number;
  /** Warm-up before the first run against a process (each scenario's first round; a freshly started peer). */
  warmupS: number;
  /** Warm-up before later rounds against the same, already warm process. */
  roundWarmupS: number;
  /** Alternating rounds per scenario (the median round is reported). */
  rounds: number;
  connections: number;
  connRateDurationS: number;
  /** Scenarios to run (default all). */
  only: readonly ScenarioKey[];
  connRate: boolean;
  workDir: string;
  agentLogLevel?: string;
  /** Longest wait for a quiet machine before each run, ms. */
  quietTimeoutMs: number;
  /** Measure a run again when other work disturbed it. */
  retryDisturbed: boolean;
  log: (msg: string) => void;
}

/** More than this much CPU (in cores) used by other work during a run makes it disturbed. */
const FOREIGN_LIMIT = 0.1;
/** A core busier than this before a run means other work is on the machine. */
const QUIET_BUSY = 0.15;

export interface ThroughputReport {
  scenarios: ScenarioResult[];
  connectionRate: ConnRateResult[];
  notes: string[];
  /** Rounds per scenario this run asked for. */
  rounds?: number;
  l4Path?: L4Path;
  setupError?: string;
}

function agentConfig(node: TopoNode, client: TopoPod, backend: TopoPod, stateDir: string): string {
  return stringify({
    node: { name: node.name, address: node.address },
    mesh: { trustDomain: 'cluster.local' },
    ports: { outbound: 15001, inbound: 15006, tunnel: 15008, admin: 15000, metrics: 15020 },
    ca: {},
    stateDir,
    namespaces: [
      { name: 'bench', labels: { 'weft.io/mesh': 'enabled' } },
      { name: 'plain', labels: {} },
    ],
    workloads: [
      { name: client.name, namespace: 'bench', node: node.name, ip: client.ip, serviceAccount: 'client', labels: { app: 'client' }, cgroup: client.cgroup },
      { name: backend.name, namespace: 'plain', node: node.name, ip: backend.ip, serviceAccount: 'backend', labels: { app: 'backend' }, cgroup: backend.cgroup },
    ],
    services: [
      { name: 'backend-l7', namespace: 'plain', vip: L7_VIP, ports: [{ name: 'http', port: 80, targetPort: BACKEND_PORT, protocol: 'http' }], selector: { app: 'backend' } },
      { name: 'backend-l4', namespace: 'plain', vip: L4_VIP, ports: [{ name: 'tcp', port: 80, targetPort: BACKEND_PORT, protocol: 'tcp' }], selector: { app: 'backend' } },
    ],
  });
}

/**
 * Ephemeral ports and TIME_WAIT reuse: the connection-rate runs open tens of thousands. The
 * ports the proxies listen on are reserved, or an upstream connection of the agent (in the
 * node namespace) could hold 10.77.0.1:18080 when nginx comes to bind it.
 */
async function tuneNetns(topo: Topology, netns: string): Promise<void> {
  await topo.sysctl(netns, ['net.ipv4.ip_local_port_range=1024 65535', 'net.ipv4.ip_local_reserved_ports=8080,15000-15020,18080-18083', 'net.ipv4.tcp_tw_reuse=1']);
}

/** Until the backend answers (nginx prints nothing when it is up). */
async function waitBackend(client: TopoPod, backend: ManagedProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const r = await client.curl(`http://${BACKEND_IP}:${BACKEND_PORT}/`, ['--max-time', '2']);
    if (r.status === 200) return;
    if (backend.child.exitCode !== null || backend.child.signalCode !== null || Date.now() > deadline)
      throw new Error(`the backend (nginx) did not come up: status ${r.status}, curl ${r.code} ${r.stderr.trim()} ${backend.output().slice(-400)}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function checkAnswer(client: TopoPod, url: string): Promise<void> {
  const r = await client.curl(url, ['--max-time', '5']);
  if (r.status !== 200) throw new Error(`${url} answered status ${r.status} (curl ${r.code} ${r.stderr.trim()}) ${r.body.slice(0, 200)}`);
  const len = Number(r.headers['content-length'] ?? r.body.length);
  if (len < BODY_BYTES) throw new Error(`${url} answered ${len} bytes, not the ${BODY_BYTES} the bench asks for`);
}

/** The L4 service port's cluster, as the agent names it in /config_dump. */
const L4_CLUSTER = 'plain/backend-l4:80';

/**
 * The median round: the middle one by req/s (of an even count, the lower middle), so that
 * every figure reported comes from one real run. Failed rounds do not count; with none left,
 * the scenario failed.
 */
export function medianRound(rounds: readonly RoundResult[]): RoundResult | undefined {
  const ok = rounds.filter((r) => r.wrk && r.error === undefined).sort((a, b) => a.wrk!.reqPerSec - b.wrk!.reqPerSec);
  return ok.length ? ok[(ok.length - 1) >> 1] : undefined;
}

/** A scenario's result from its rounds: the median round's figures, and every round. */
export function summarize(base: ScenarioResult, rounds: RoundResult[]): ScenarioResult {
  const m = medianRound(rounds);
  if (!m) return { ...base, rounds, error: rounds.find((r) => r.error)?.error ?? 'no round was measured' };
  return {
    ...base,
    wrk: m.wrk,
    proxyCpuS: m.proxyCpuS,
    cpuPer1000: m.cpuPer1000,
    cpuUsPerReq: m.cpuUsPerReq,
    coresUsed: m.coresUsed,
    rssMb: m.rssMb,
    peakRssMb: m.peakRssMb,
    cores: m.cores,
    attempts: m.attempts,
    rounds,
    medianRound: m.round,
  };
}

/** What the agent's /config_dump says of the L4 service port (socketLb: SocketLb.describe()). */
async function readL4Path(node: TopoNode): Promise<L4Path> {
  const r = await nodeGet(node, 'http://127.0.0.1:15000/config_dump');
  if (r.status !== 200) throw new Error(`/config_dump answered ${r.status}`);
  const dump = JSON.parse(r.body) as {
    socketLb?: 'disabled' | { ports?: Record<string, { balanced?: boolean; reason?: string; slots?: number }>; openConnections?: number };
  };
  const lb = dump.socketLb;
  if (lb === undefined || lb === 'disabled') return { socketLb: false, reason: 'socket LB disabled in the agent (WEFT_L4_SOCKET_LB=0, or no capture)' };
  const port = lb.ports?.[L4_CLUSTER];
  if (!port) return { socketLb: false, reason: `${L4_CLUSTER} is not among the socket LB's ports` };
  if (!port.balanced) return { socketLb: false, reason: port.reason ?? 'not balanced' };
  return { socketLb: true, slots: port.slots, openDuringWarmup: lb.openConnections };
}

/** Run every scenario (and the connection-rate runs) on a topology of its own. */
export async function runThroughput(o: ThroughputOptions): Promise<ThroughputReport> {
  const report: ThroughputReport = { scenarios: [], connectionRate: [], notes: [] };
  const topo = await Topology.create({ prefix: 'weft-bench' });
  topo.trackPath(o.workDir);
  let agent: RunningAgent | undefined;
  try {
    const node = await topo.addNode('node-a', { address: NODE_IP });
    const client = await node.addPod('client-0', { ip: CLIENT_IP });
    const backendPod = await node.addPod('backend-0', { ip: BACKEND_IP });
    for (const ns of [node.netns, client.netns, backendPod.netns]) await tuneNetns(topo, ns);

    // The backend on the client's core: the proxy's core holds the proxy alone.
    mkdirSync(o.workDir, { recursive: true });
    const backendArgv = prepareStaticBackend(join(o.workDir, 'backend'), BACKEND_PORT, BODY_BYTES);
    const backend: ManagedProcess = backendPod.spawn('taskset', ['-c', String(CLIENT_CPU), ...backendArgv], { label: 'backend' });
    await waitBackend(client, backend);
    report.notes.push(
      `backend: nginx serving a static ${BODY_BYTES}-byte file (one worker, keep-alive, no access log) in the backend pod, on core ${CLIENT_CPU} with wrk (pinned to ${cpusAllowed(backend.pid)}). ` +
        `This machine has ${cpus().length} cores: the proxy gets core ${PROXY_CPU} to itself, the client and the backend share core ${CLIENT_CPU}`,
    );

    const stateDir = join(o.workDir, 'agent-state');
    const configFile = join(o.workDir, 'weft-throughput.yaml');
    writeFileSync(configFile, agentConfig(node, client, backendPod, stateDir));

    let agentRuns = 0;
    const launchAgent = async (cpu: number | string = PROXY_CPU): Promise<RunningAgent> => {
      const a = await startAgent(node, {
        configFile,
        pinRoot: join(topo.bpfRoot, 'throughput'),
        stateDir,
        logFile: join(o.workDir, `agent-throughput-${++agentRuns}.log`),
        cpu,
        logLevel: o.agentLogLevel,
      });
      const dump = JSON.parse((await nodeGet(node, 'http://127.0.0.1:15000/config_dump')).body) as { capture: Array<{ workload: string; captured: boolean; error?: string }> };
      const cap = dump.capture.find((c) => c.workload === 'bench/client-0');
      if (!cap?.captured) {
        await a.stop();
        throw new Error(`client-0 is not captured: ${JSON.stringify(cap)}`);
      }
      return a;
    };
    report.notes.push(
      `weft agent: \`node ${AGENT_NODE_FLAGS.join(' ')} bin/weft.js agent\` (the agent's Node.js flags, src/node-flags.ts) pinned to core ${PROXY_CPU}, log level ${o.agentLogLevel ?? 'default (info: one access-log line per request, to a file)'}; client-0 captured (eBPF on its cgroup)`,
    );

    const scenarioUrl = (k: ScenarioKey): string => {
      switch (k) {
        case 'direct':
          return `http://${BACKEND_IP}:${BACKEND_PORT}/`;
        case 'l7':
        case 'l7all':
          return `http://${L7_VIP}/`;
        case 'l4':
          return `http://${L4_VIP}/`;
        default:
          return `http://${NODE_IP}:${PEER_PORTS[k]}/`;
      }
    };

    const podCgroups = [client.cgroup, backendPod.cgroup];
    const podsCpu = (): number => podCgroups.reduce((sum, d) => sum + cgroupCpuSeconds(d), 0);

    interface RunExtras {
      /** Warm-up before the measured run, s (default o.warmupS). */
      warmupS?: number;
      /** A process of ours that is not under test but runs (the agent during direct): its CPU is not "other work". */
      bystanderPid?: number;
      /** Called halfway through the warm-up, while wrk holds its connections open. */
      duringWarmup?: () => Promise<void>;
    }

    /** One measured wrk run, with what the cores did meanwhile. */
    const measuredRun = async (url: string, proxyPid: number | undefined, wrkOpts: WrkOptions, x: RunExtras = {}) => {
      const q = await waitQuiet(QUIET_BUSY, o.quietTimeoutMs);
      const warmupS = Math.min(x.warmupS ?? o.warmupS, wrkOpts.durationS);
      if (warmupS > 0) {
        const warm = runWrk(client, url, { ...wrkOpts, durationS: warmupS });
        if (x.duringWarmup) {
          await new Promise((r) => setTimeout(r, (warmupS * 1000) / 2));
          await x.duringWarmup().catch((err: unknown) => o.log(`  (during the warm-up: ${(err as Error).message})`));
        }
        await warm;
      }
      const cpu0 = proxyPid ? treeCpuSeconds(proxyPid) : 0;
      const bystander0 = x.bystanderPid ? treeCpuSeconds(x.bystanderPid) : 0;
      const pods0 = podsCpu();
      const self0 = process.cpuUsage();
      const kthreads0 = kernelThreadCpuSeconds();
      const cores0 = coreTimes();
      const t0 = performance.now();
      const w = await runWrk(client, url, wrkOpts);
      const seconds = (performance.now() - t0) / 1000;
      const use = coreUse(cores0, coreTimes(), seconds);
      const proxyCpuS = proxyPid ? treeCpuSeconds(proxyPid) - cpu0 : 0;
      const bystanderCpuS = x.bystanderPid ? treeCpuSeconds(x.bystanderPid) - bystander0 : 0;
      const kthreads = kernelThreadCpuSeconds() - kthreads0;
      const self = process.cpuUsage(self0);
      const foreign = use.taskSeconds - proxyCpuS - bystanderCpuS - (podsCpu() - pods0) - kthreads - (self.user + self.system) / 1e6;
      const cores: RunCores = {
        clientBusy: use.busy[CLIENT_CPU] ?? Number.NaN,
        proxyBusy: use.busy[PROXY_CPU] ?? Number.NaN,
        proxySoftirq: use.softirq[PROXY_CPU] ?? Number.NaN,
        foreignCores: Math.max(0, foreign) / seconds,
        quietWaitMs: q.waitedMs,
        quiet: q.quiet,
      };
      return { w, proxyCpuS, cores, seconds };
    };

    /** One round of scenario `k`: a measured run (made again once if other work disturbed it). */
    const measureRound = async (k: ScenarioKey, round: number, proxyPid: number | undefined, x: RunExtras): Promise<RoundResult> => {
      const url = scenarioUrl(k);
      const warmupS = Math.min(x.warmupS ?? o.warmupS, o.durationS);
      const res: RoundResult = { round, warmupS };
      const name = `${SCENARIO_NAMES[k]}${o.rounds > 1 ? ` (round ${round}/${o.rounds})` : ''}`;
      try {
        const wrkOpts: WrkOptions = { cpu: CLIENT_CPU, connections: o.connections, durationS: o.durationS };
        let run = await measuredRun(url, proxyPid, wrkOpts, x);
        res.attempts = 1;
        if (o.retryDisturbed && run.cores.foreignCores > FOREIGN_LIMIT) {
          o.log(`  ${name}: other work used ${run.cores.foreignCores.toFixed(2)} cores during the run: measuring again`);
          // The process is warm by now: the short warm-up will do.
          const again = await measuredRun(url, proxyPid, wrkOpts, { ...x, warmupS: o.roundWarmupS, duringWarmup: undefined });
          res.attempts = 2;
          if (again.cores.foreignCores < run.cores.foreignCores) run = again;
        }
        const { w } = run;
        res.cores = run.cores;
        if (proxyPid) {
          res.proxyCpuS = run.proxyCpuS;
          res.cpuPer1000 = w.requests > 0 ? (run.proxyCpuS / w.requests) * 1000 : undefined;
          res.cpuUsPerReq = w.requests > 0 ? (run.proxyCpuS / w.requests) * 1e6 : undefined;
          res.coresUsed = run.seconds > 0 ? run.proxyCpuS / run.seconds : undefined;
          res.rssMb = treeRssMb(proxyPid);
          res.peakRssMb = treePeakRssMb(proxyPid);
        }
        const { raw: _raw, ...rest } = w;
        res.wrk = rest;
        o.log(
          `  ${name}: ${w.reqPerSec.toFixed(0)} req/s, p50 ${w.p50Ms.toFixed(2)} ms, p99 ${w.p99Ms.toFixed(2)} ms, errors ${w.errors}` +
            (res.cpuUsPerReq !== undefined ? `, ${res.cpuUsPerReq.toFixed(1)} CPU µs/req on ${res.coresUsed!.toFixed(2)} cores, RSS ${res.rssMb!.toFixed(1)} MB` : '') +
            `; cores busy: client ${(run.cores.clientBusy * 100).toFixed(0)}%, proxy ${(run.cores.proxyBusy * 100).toFixed(0)}%; other work ${run.cores.foreignCores.toFixed(2)} cores`,
        );
      } catch (err) {
        res.error = (err as Error).message;
        o.log(`  ${name}: FAILED: ${res.error}`);
      }
      return res;
    };

    // Each scenario's rounds, as they come; the cores its proxy was allowed on; why it could not run.
    const rounds = new Map<ScenarioKey, RoundResult[]>();
    const proxyCpus = new Map<ScenarioKey, string>();
    const failed = new Map<ScenarioKey, string>();
    const addRound = (k: ScenarioKey, r: RoundResult): void => {
      const list = rounds.get(k) ?? [];
      list.push(r);
      rounds.set(k, list);
    };
    /** direct, L4, L7 in odd rounds; L7, L4, direct in even ones (likewise the peers): drift and order effects even out. */
    const orderOf = <K extends ScenarioKey>(keys: readonly K[], round: number): K[] => (round % 2 === 1 ? [...keys] : [...keys].reverse());

    // With the agent: direct, L4 and L7 take turns, round after round.
    const agentKeys = (['direct', 'l4', 'l7'] as const).filter((k) => o.only.includes(k));
    let agentRan = false;
    if (agentKeys.length > 0) {
      try {
        let agentError: string | undefined;
        try {
          agent = await launchAgent();
          agentRan = true;
        } catch (err) {
          agentError = (err as Error).message;
          o.log(`  weft: FAILED: ${agentError}`);
          for (const k of agentKeys) if (k !== 'direct') failed.set(k, agentError);
        }
        const measuredKeys = agentKeys.filter((k) => k === 'direct' || agent);
        for (const k of measuredKeys) {
          try {
            await checkAnswer(client, scenarioUrl(k));
          } catch (err) {
            failed.set(k, (err as Error).message);
            o.log(`  ${SCENARIO_NAMES[k]}: FAILED: ${(err as Error).message}`);
          }
        }
        let probedL4 = false;
        for (let round = 1; round <= o.rounds; round++) {
          for (const k of orderOf(measuredKeys, round)) {
            if (failed.has(k)) continue;
            const x: RunExtras = { warmupS: round === 1 ? o.warmupS : o.roundWarmupS };
            let pid: number | undefined;
            if (k === 'direct') x.bystanderPid = agent?.pid;
            else pid = agent?.pid;
            if (k === 'l4' && !probedL4 && agent) {
              probedL4 = true;
              // Which path L4 takes: what the agent decided, and what it saw while wrk held its connections.
              x.duringWarmup = async () => {
                report.l4Path = await readL4Path(node);
              };
            }
            addRound(k, await measureRound(k, round, pid, x));
            if (pid && !proxyCpus.has(k)) proxyCpus.set(k, cpusAllowed(pid));
          }
        }
        if (agentKeys.includes('l4') && agent) {
          const p = report.l4Path;
          if (!p) report.notes.push("weft L4 path: unknown (the agent's /config_dump could not be read during the L4 warm-up)");
          else if (p.socketLb) {
            const seen = p.openDuringWarmup === undefined ? '' : `; ${p.openDuringWarmup} balanced connections open during the warm-up, wrk holding ${o.connections}`;
            report.notes.push(`weft L4 path: socket LB (connect4 balances; the agent is off the data path): /config_dump shows ${L4_CLUSTER} balanced over ${p.slots ?? '?'} slot(s)${seen}`);
            if (p.openDuringWarmup !== undefined && p.openDuringWarmup < o.connections)
              report.notes.push(`weft L4 path: the agent counted only ${p.openDuringWarmup} of wrk's ${o.connections} connections as balanced: some may have gone through the agent`);
          } else report.notes.push(`weft L4 path: L4 proxy via :15001 (reason: ${p.reason ?? 'unknown'}): connect4 -> agent -> backend, the agent on the data path`);
        }
      } finally {
        await agent?.stop();
        agent = undefined;
      }
    }
    if (agentKeys.includes('direct')) {
      report.notes.push(
        agentRan
          ? "direct is measured while the agent runs, in turns with weft L4 and L7: the client's cgroup carries the eBPF programs in every round, and the backend pod's IP is not redirected. That is the fair baseline for what the L4 path adds (no round of direct before the agent started)"
          : 'direct is measured without the agent (it did not start)',
      );
    }

    // Then the peers, in turns as well, each started afresh for its run: alone on the proxy
    // core. The unpinned agent takes its turn among them (it cannot run beside the pinned one).
    const peerKeys = (['nginx', 'haproxy', 'pipe', 'fastify', 'l7all'] as const).filter((k) => o.only.includes(k));
    for (let round = 1; round <= o.rounds; round++) {
      for (const k of orderOf(peerKeys, round)) {
        if (failed.has(k)) continue;
        let peer: Running | undefined;
        try {
          peer =
            k === 'l7all'
              ? await launchAgent(ALL_CPUS)
              : startPeer(node, k, {
                  dir: join(o.workDir, k),
                  listenHost: NODE_IP,
                  listenPort: PEER_PORTS[k],
                  upstreamHost: BACKEND_IP,
                  upstreamPort: BACKEND_PORT,
                  cpu: PROXY_CPU,
                });
          await waitHttp(client, scenarioUrl(k), peer);
          await checkAnswer(client, scenarioUrl(k));
          // A fresh process: the full warm-up, every round.
          addRound(k, await measureRound(k, round, peer.pid, { warmupS: o.warmupS }));
          if (!proxyCpus.has(k)) proxyCpus.set(k, cpusAllowed(peer.pid));
        } catch (err) {
          const error = (err as Error).message;
          o.log(`  ${SCENARIO_NAMES[k]}: FAILED: ${error}`);
          // One that cannot start will not start next round either.
          if (!rounds.has(k)) failed.set(k, error);
          else addRound(k, { round, warmupS: o.warmupS, error });
        } finally {
          await peer?.stop();
        }
      }
    }

    const results = new Map<ScenarioKey, ScenarioResult>();
    for (const k of o.only) {
      const base: ScenarioResult = { key: k, name: SCENARIO_NAMES[k], url: scenarioUrl(k) };
      const error = failed.get(k);
      if (error !== undefined && !rounds.has(k)) {
        results.set(k, { ...base, error });
        continue;
      }
      const res = summarize(base, rounds.get(k) ?? []);
      if (proxyCpus.has(k)) res.proxyCpus = proxyCpus.get(k);
      if (agentKeys.includes(k as (typeof agentKeys)[number])) res.agentRunning = agentRan;
      if (k === 'l7all') res.agentRunning = true;
      results.set(k, res);
    }
    if (o.only.includes('l7all')) {
      report.notes.push(
        `weft L7, workers unpinned: the agent started afresh for each of its rounds (in turns with the peers) on cores ${ALL_CPUS}, with its default number of workers (one per core it may use); ` +
          'wrk and the backend still run on core 0, so on this two-core machine the agent shares that core with them: "cores used" is its CPU over the run\'s wall time',
      );
    }
    report.rounds = o.rounds;
    report.scenarios = SCENARIOS.flatMap((k) => results.get(k) ?? []);

    // Last: tens of thousands of short connections leave TIME_WAIT sockets behind, which
    // should not sit under the keep-alive runs. A fresh agent, so its CPU figure is its own.
    if (o.connRate) {
      o.log('connection rate (one request per connection: wrk -H "Connection: close")');
      try {
        agent = await launchAgent();
      } catch (err) {
        o.log(`  weft: FAILED: ${(err as Error).message}`);
      }
      for (const k of ['direct', 'l4', 'l7'] as const) {
        const url = scenarioUrl(k);
        const r: ConnRateResult = { key: k, name: SCENARIO_NAMES[k], url };
        try {
          const wrkOpts: WrkOptions = { cpu: CLIENT_CPU, connections: o.connections, durationS: o.connRateDurationS, headers: ['Connection: close'] };
          if (k !== 'direct' && !agent) throw new Error('the agent did not start');
          const pid = k === 'direct' ? undefined : agent?.pid;
          const { w, proxyCpuS, cores } = await measuredRun(url, pid, wrkOpts, { bystanderPid: k === 'direct' ? agent?.pid : undefined });
          r.connPerSec = w.reqPerSec;
          r.p50Ms = w.p50Ms;
          r.p99Ms = w.p99Ms;
          r.errors = w.errors;
          r.foreignCores = cores.foreignCores;
          if (pid && w.requests > 0) r.cpuPer1000 = (proxyCpuS / w.requests) * 1000;
          o.log(`  ${r.name}: ${w.reqPerSec.toFixed(0)} conn/s, p99 ${w.p99Ms.toFixed(2)} ms, errors ${w.errors}; other work ${cores.foreignCores.toFixed(2)} cores`);
        } catch (err) {
          r.error = (err as Error).message;
          o.log(`  ${r.name}: FAILED: ${r.error}`);
        }
        report.connectionRate.push(r);
      }
    }
  } catch (err) {
    report.setupError = (err as Error).stack ?? String(err);
    o.log(`throughput: setup failed: ${(err as Error).message}`);
  } finally {
    if (agent) await agent.stop().catch(() => undefined);
    await topo.destroy().catch((err: unknown) => o.log(`throughput: topology cleanup: ${(err as Error).message}`));
  }
  return report;
}
