/**
 * The agent at scale, on a node namespace of its own (10.79.0.1/16), no traffic:
 *
 * - config churn: an agent with 10,000 endpoints (100 HTTP services of 100 pods each, on
 *   another node) sees a new config file in which every one of those 10,000 pod IPs changed.
 *   Timed from the write to the agent's own `config applied` log line (its timestamp), so
 *   the figure holds the file watch's debounce, the YAML parse, the state rebuild, the
 *   clusters' sync and the BPF destinations map sync. The same change is also timed in this
 *   process, stage by stage (parse, StateStore.apply, ClusterManager.sync), without the kernel.
 * - memory: an agent with 1,000 local workloads in a meshed namespace (1,000 real cgroup v2
 *   directories, captured: the eBPF programs attached to each) and 10,000 remote endpoints;
 *   its RSS once it has settled.
 */
import { mkdirSync, readdirSync, writeFileSync, renameSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { StateStore } from '../src/state/store.js';
import { ClusterManager } from '../src/cluster/manager.js';
import { Metrics } from '../src/telemetry/metrics.js';
import { silentLogger } from '../src/telemetry/log.js';
import { Topology, type TopoNode } from '../src/sandbox/topology.js';
import { fileSize, metricValue, startAgent, waitLogLine, type RunningAgent } from './lib/agent.js';
import { cpusAllowed, treePeakRssMb, treeRssMb, waitQuiet } from './lib/proc.js';
import { nodeGet } from './lib/spawn.js';
import { PROXY_CPU } from './throughput.js';

const NODE_IP = '10.79.0.1';
const REMOTE_NODE = 'node-remote';
const PER_SERVICE = 100;
/** How long after ready the memory figures are read, ms (runMemory says why this long). */
const SETTLE_MS = 10_000;

export interface ScaleOptions {
  remoteEndpoints: number;
  localWorkloads: number;
  /** Churn samples (alternating between two configs). */
  churnRounds: number;
  /** Longest wait for idle cores before each timed step, ms. */
  quietTimeoutMs: number;
  workDir: string;
  log: (msg: string) => void;
}

export interface ChurnReport {
  endpoints: number;
  changed: number;
  configBytes: number;
  /** Write -> `config applied` line, ms, per round. */
  endToEndMs: number[];
  /** In-process stages, ms: median over rounds. */
  parseMs?: number;
  applyMs?: number;
  syncMs?: number;
  agentRssMb?: number;
  startupMs?: number;
  /** Rounds that started while other work kept a core busy (waited quietTimeoutMs in vain). */
  busyRounds: number;
  error?: string;
}

export interface MemoryReport {
  localWorkloads: number;
  remoteEndpoints: number;
  localEndpoints: number;
  captured?: number;
  linkDirs?: number;
  startupMs?: number;
  rssMb?: number;
  peakRssMb?: number;
  /** RSS right after the agent reported ready, MiB. */
  rssAtReadyMb?: number;
  agentCpus?: string;
  /** Worker threads of the measured agent (issue 17), and its RSS split: the control thread's share and each worker's. */
  workers?: number;
  controlRssMb?: number;
  perWorkerMb?: number;
  /** RSS of the agent with its worker threads, settled and peak. */
  workersRssMb?: number;
  workersPeakRssMb?: number;
  /**
   * The same agent with more worker threads (agent.workers set: `moreWorkers` of them), settled
   * and peak: what one more worker adds is the slope between the two runs (`perWorkerMb`),
   * free of what the control thread itself does differently once it has workers.
   */
  moreWorkers?: number;
  moreWorkersRssMb?: number;
  moreWorkersPeakRssMb?: number;
  /** How long after ready each figure was read, ms. */
  settleMs?: number;
  error?: string;
}

interface ScaleConfigOptions {
  node: TopoNode;
  stateDir: string;
  remoteEndpoints: number;
  /** Second octet of the remote pod IPs (10.<n>.x.y): changing it moves every endpoint. */
  remoteNet: number;
  localWorkloads: number;
  /** `agent.workers` (threads serving, the control thread included); absent: the agent's default. */
  workers?: number;
}

function remoteIp(net: number, i: number): string {
  return `10.${net}.${Math.floor(i / 250)}.${(i % 250) + 1}`;
}

function localIp(i: number): string {
  return `10.79.${Math.floor(i / 250)}.${(i % 250) + 2}`;
}

function vip(base: number, j: number): string {
  return `10.${base}.${Math.floor(j / 250)}.${(j % 250) + 1}`;
}

/** 100-endpoint HTTP services over the remote pods, and over the local ones. */
export function scaleConfig(o: ScaleConfigOptions): string {
  const workloads: object[] = [];
  const services: object[] = [];
  for (let i = 0; i < o.remoteEndpoints; i++) {
    const j = Math.floor(i / PER_SERVICE);
    workloads.push({ name: `r-${i}`, namespace: 'scale', node: REMOTE_NODE, ip: remoteIp(o.remoteNet, i), serviceAccount: `svc-${j}`, labels: { app: `svc-${j}` } });
  }
  for (let j = 0; j * PER_SERVICE < o.remoteEndpoints; j++) {
    services.push({ name: `svc-${j}`, namespace: 'scale', vip: vip(96, j), ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: `svc-${j}` } });
  }
  for (let i = 0; i < o.localWorkloads; i++) {
    const j = Math.floor(i / PER_SERVICE);
    workloads.push({
      name: `l-${i}`,
      namespace: 'scale',
      node: o.node.name,
      ip: localIp(i),
      serviceAccount: `local-${j}`,
      labels: { app: `local-${j}` },
      cgroup: join(o.node.cgroup, `l-${i}`),
    });
  }
  for (let j = 0; j * PER_SERVICE < o.localWorkloads; j++) {
    services.push({ name: `local-${j}`, namespace: 'scale', vip: vip(97, j), ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: `local-${j}` } });
  }
  return stringify({
    node: { name: o.node.name, address: o.node.address },
    ports: { outbound: 15001, inbound: 15006, tunnel: 15008, admin: 15000, metrics: 15020 },
    ca: {},
    stateDir: o.stateDir,
    namespaces: [{ name: 'scale', labels: { 'weft.io/mesh': 'enabled' } }],
    workloads,
    services,
    ...(o.workers !== undefined ? { agent: { workers: o.workers } } : {}),
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Write a file the way config tools do: a new file renamed over the old one. */
function replaceFile(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** The same change as the agent sees it, in this process, stage by stage. */
function churnInProcess(a: string, b: string, rounds: number): { parseMs: number; applyMs: number; syncMs: number } {
  const texts = [a, b];
  const parse: number[] = [];
  const apply: number[] = [];
  const sync: number[] = [];
  const first = parseConfig(a, 'bench-a', { env: {} });
  const store = new StateStore(first);
  const clusters = new ClusterManager(store, new Metrics(), silentLogger);
  clusters.sync();
  for (let r = 1; r <= rounds; r++) {
    const text = texts[r % 2]!;
    let t = performance.now();
    const cfg = parseConfig(text, 'bench', { env: {} });
    parse.push(performance.now() - t);
    t = performance.now();
    store.apply(cfg);
    apply.push(performance.now() - t);
    t = performance.now();
    clusters.sync();
    sync.push(performance.now() - t);
  }
  clusters.stop();
  return { parseMs: median(parse), applyMs: median(apply), syncMs: median(sync) };
}

export async function runChurn(o: ScaleOptions): Promise<ChurnReport> {
  const rep: ChurnReport = { endpoints: o.remoteEndpoints, changed: o.remoteEndpoints, configBytes: 0, endToEndMs: [], busyRounds: 0 };
  const topo = await Topology.create({ prefix: 'weft-bench' });
  let agent: RunningAgent | undefined;
  try {
    const node = await topo.addNode('node-s', { address: NODE_IP, prefixLen: 16 });
    const dir = join(o.workDir, 'churn');
    mkdirSync(dir, { recursive: true });
    topo.trackPath(dir);
    const stateDir = join(dir, 'state');
    const texts = [80, 81].map((net) => scaleConfig({ node, stateDir, remoteEndpoints: o.remoteEndpoints, remoteNet: net, localWorkloads: 0 }));
    rep.configBytes = Buffer.byteLength(texts[0]!);
    const configFile = join(dir, 'weft.yaml');
    writeFileSync(configFile, texts[0]!);

    await waitQuiet(0.15, o.quietTimeoutMs);
    const inproc = churnInProcess(texts[0]!, texts[1]!, Math.max(3, o.churnRounds));
    Object.assign(rep, inproc);
    o.log(`  in process: parse ${inproc.parseMs.toFixed(0)} ms, StateStore.apply ${inproc.applyMs.toFixed(1)} ms, ClusterManager.sync ${inproc.syncMs.toFixed(1)} ms`);

    const logFile = join(dir, 'agent.log');
    agent = await startAgent(node, { configFile, pinRoot: join(topo.bpfRoot, 'churn'), stateDir, logFile, cpu: PROXY_CPU });
    rep.startupMs = agent.startupMs;
    let generation = (JSON.parse((await nodeGet(node, 'http://127.0.0.1:15000/config_dump', 20)).body) as { generation: number }).generation;
    for (let r = 1; r <= o.churnRounds; r++) {
      // Let the previous change settle (and the poll backstop not race the watch), on idle cores.
      await sleep(500);
      if (!(await waitQuiet(0.15, o.quietTimeoutMs)).quiet) rep.busyRounds++;
      const from = fileSize(logFile);
      const t0 = Date.now();
      replaceFile(configFile, texts[r % 2]!);
      const want = generation + 1;
      const hit = await waitLogLine(logFile, from, (l) => l.msg === 'config applied' && Number(l.generation) >= want, 30_000);
      generation = Number(hit.line.generation);
      const ms = hit.time - t0;
      rep.endToEndMs.push(ms);
      o.log(`  round ${r}: ${o.remoteEndpoints} endpoint IPs changed, applied ${ms} ms after the write (generation ${generation})`);
    }
    rep.agentRssMb = treeRssMb(agent.pid);
  } catch (err) {
    rep.error = (err as Error).message;
    o.log(`  churn: FAILED: ${rep.error}`);
  } finally {
    if (agent) await agent.stop().catch(() => undefined);
    await topo.destroy().catch((err: unknown) => o.log(`churn: topology cleanup: ${(err as Error).message}`));
  }
  return rep;
}

export async function runMemory(o: ScaleOptions): Promise<MemoryReport> {
  const localEndpoints = o.localWorkloads;
  const rep: MemoryReport = { localWorkloads: o.localWorkloads, remoteEndpoints: o.remoteEndpoints, localEndpoints };
  const topo = await Topology.create({ prefix: 'weft-bench' });
  let agent: RunningAgent | undefined;
  try {
    const node = await topo.addNode('node-s', { address: NODE_IP, prefixLen: 16 });
    const dir = join(o.workDir, 'memory');
    mkdirSync(dir, { recursive: true });
    topo.trackPath(dir);
    // Real pod cgroups (empty: capture attaches to a cgroup, not to its processes). They sit
    // under the node's cgroup, which the topology removes recursively.
    for (let i = 0; i < o.localWorkloads; i++) mkdirSync(join(node.cgroup, `l-${i}`));
    const stateDir = join(dir, 'state');
    const configFile = join(dir, 'weft.yaml');
    writeFileSync(configFile, scaleConfig({ node, stateDir, remoteEndpoints: o.remoteEndpoints, remoteNet: 80, localWorkloads: o.localWorkloads }));
    const pinRoot = join(topo.bpfRoot, 'memory');
    await waitQuiet(0.15, o.quietTimeoutMs);
    agent = await startAgent(node, { configFile, pinRoot, stateDir, logFile: join(dir, 'agent.log'), cpu: PROXY_CPU, readyTimeoutMs: 180_000 });
    rep.startupMs = agent.startupMs;
    rep.rssAtReadyMb = treeRssMb(agent.pid);
    rep.agentCpus = cpusAllowed(agent.pid);
    const metrics = await nodeGet(node, `http://${NODE_IP}:15020/metrics`, 10);
    rep.captured = metrics.status === 200 ? metricValue(metrics.body, 'weft_captured_workloads') : undefined;
    try {
      rep.linkDirs = readdirSync(join(pinRoot, 'links')).length;
    } catch {
      rep.linkDirs = undefined;
    }
    // Settle: start-up garbage collected, timers quiet. V8's memory reducer runs its
    // collection about 8 s after start-up's last full one: read after it, not racing it (at
    // 3 s the one-thread agent read 142 MB one run and 130 MB the next).
    await sleep(SETTLE_MS);
    rep.settleMs = SETTLE_MS;
    rep.rssMb = treeRssMb(agent.pid);
    rep.peakRssMb = treePeakRssMb(agent.pid);
    o.log(
      `  ${o.localWorkloads} local workloads (captured ${rep.captured ?? '?'}, ${rep.linkDirs ?? '?'} cgroups with pinned links) + ${o.remoteEndpoints} remote endpoints: ` +
        `ready in ${rep.startupMs} ms, RSS ${rep.rssMb.toFixed(1)} MB (peak ${rep.peakRssMb.toFixed(1)} MB)`,
    );
    // Issue 17: the same agent unpinned, with its default workers (one per core): what each
    // worker thread adds. The pinned agent above runs one thread (the control thread serving).
    const single = rep.rssMb;
    await agent.stop();
    agent = undefined;
    const cores = cpus().length;
    if (cores > 1) {
      const run = async (name: string, workers?: number): Promise<{ rss: number; peak: number }> => {
        const file = workers === undefined ? configFile : join(dir, `weft-${name}.yaml`);
        if (workers !== undefined) writeFileSync(file, scaleConfig({ node, stateDir, remoteEndpoints: o.remoteEndpoints, remoteNet: 80, localWorkloads: o.localWorkloads, workers }));
        await waitQuiet(0.15, o.quietTimeoutMs);
        agent = await startAgent(node, { configFile: file, pinRoot, stateDir, logFile: join(dir, `agent-${name}.log`), cpu: `0-${cores - 1}`, readyTimeoutMs: 180_000 });
        await sleep(SETTLE_MS);
        const got = { rss: treeRssMb(agent.pid), peak: treePeakRssMb(agent.pid) };
        await agent.stop();
        agent = undefined;
        return got;
      };
      const base = await run('workers');
      rep.workers = cores - 1;
      rep.controlRssMb = single;
      rep.workersRssMb = base.rss;
      rep.workersPeakRssMb = base.peak;
      o.log(`  with ${rep.workers} worker thread(s) beside the control thread: RSS ${base.rss.toFixed(1)} MB (peak ${base.peak.toFixed(1)} MB)`);
      // Two more worker threads than cores - 1 (agent.workers counts the control thread too).
      rep.moreWorkers = rep.workers + 2;
      const more = await run('more-workers', rep.moreWorkers + 1);
      rep.moreWorkersRssMb = more.rss;
      rep.moreWorkersPeakRssMb = more.peak;
      rep.perWorkerMb = (more.rss - base.rss) / (rep.moreWorkers - rep.workers);
      o.log(`  with ${rep.moreWorkers} worker threads: RSS ${more.rss.toFixed(1)} MB (peak ${more.peak.toFixed(1)} MB): ${rep.perWorkerMb.toFixed(1)} MB per worker thread`);
    }
  } catch (err) {
    rep.error = (err as Error).message;
    o.log(`  memory: FAILED: ${rep.error}`);
  } finally {
    if (agent) await agent.stop().catch(() => undefined);
    await topo.destroy().catch((err: unknown) => o.log(`memory: topology cleanup: ${(err as Error).message}`));
  }
  return rep;
}
