/**
 * How long the agent takes to start (issue 16, DESIGN.md "Replacing and restarting the agent"):
 *
 *   node dist/bench/startup.js [--rounds=N] [--cpu-prof=DIR] [--nice=N] [--json]
 *
 * One sandbox node (real network namespaces, cgroups, eBPF capture), a client pod sending
 * through the L7 path all the time (one new connection per request, 250 ms timeout, and 4
 * keep-alive connections), and the agent started N times each way:
 *
 * - cold: no pins and an empty state directory (a node's first agent);
 * - crash: the running agent is killed with SIGKILL and a new one started at once (pins and
 *   state directory as the dead agent left them).
 *
 * For each start it reports, from the moment the process is spawned:
 * - `serving`: the first request the new agent answered (its first access log line);
 * - `listening`: when it bound the node's listeners (the 'serving the node' line, which also
 *   gives its CPU time so far);
 * - `ready`: the 'agent ready' line (readiness answers 200 from then on);
 * and, for a crash, how many of the clients' requests failed from the kill until the agent
 * was ready again. `--cpu-prof=DIR` runs the agents with `--cpu-prof` into DIR (open the
 * .cpuprofile files in Chrome DevTools). `--nice=-20` starts the agents at that scheduling
 * priority: on a machine other work keeps busy, it approximates a node where the agent gets
 * the CPU it asks for (a DaemonSet pod with CPU requests). Needs root. Numbers from a shared machine are noisy:
 * give the load average with them (it is printed).
 */
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { getPriority, loadavg, setPriority } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { MeshSandbox } from '../src/sandbox/mesh-sandbox.js';
import { runSteadyClient, type SteadyResult } from '../src/sandbox/steady-client.js';

const CONFIG = `
node: { name: node-a, address: 10.78.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
agent: { drainTimeout: 2s }
workloads:
  - { name: api-0, namespace: shop, ip: 10.78.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: api-1, namespace: shop, ip: 10.78.0.12, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-1" }
  - { name: client-0, namespace: shop, ip: 10.78.0.50, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
services:
  - { name: api, namespace: shop, vip: 10.96.0.30, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
`;
const URL = 'http://10.96.0.30/';

export interface StartupSample {
  kind: 'cold' | 'crash';
  /** ms from spawn to the first request the new agent answered. */
  servingMs?: number;
  /** ms from spawn to the node's listeners bound. */
  listeningMs?: number;
  /** ms of the agent's process clock (from its own start) to the listeners bound, and its CPU time by then. */
  listeningProcessMs?: number;
  listeningCpuMs?: number;
  /** ms from spawn to 'agent ready'. */
  readyMs?: number;
  /** Crash only: requests that failed from the kill until the new agent was ready (+1 s). */
  failed?: { new: number; keepalive: number; ok: number };
  loadAverage: number;
}

export interface StartupOptions {
  rounds?: number;
  cpuProfDir?: string;
  /** Scheduling priority (nice value) of the agents; default: the bench's own. */
  nice?: number;
  log?: (msg: string) => void;
}

/** Runs the cold and crash starts and returns one sample per start. */
export async function benchStartup(opts: StartupOptions = {}): Promise<StartupSample[]> {
  const rounds = opts.rounds ?? 3;
  const log = opts.log ?? (() => {});
  const agentNodeFlags = opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${resolve(opts.cpuProfDir)}`] : [];
  if (opts.cpuProfDir) mkdirSync(opts.cpuProfDir, { recursive: true });
  const sb = await MeshSandbox.create({ configText: CONFIG, prefix: 'weft-bstart', startAgent: false, agentNodeFlags, log });
  const samples: StartupSample[] = [];
  const running: ReturnType<typeof runSteadyClient>[] = [];
  try {
    const client = sb.pod('client-0');
    const pinRoot = join(sb.topo.bpfRoot, sb.node.name);
    const clients = () => {
      const pair = [runSteadyClient(client, URL, 'new', 120, { timeoutMs: 250 }), runSteadyClient(client, URL, 'keepalive', 120, { timeoutMs: 250 })];
      running.push(...pair);
      return pair;
    };
    const stopClients = async (pair: ReturnType<typeof clients>) => {
      const out: SteadyResult[] = [];
      for (const c of pair) {
        out.push(await c.stop());
        running.splice(running.indexOf(c), 1);
      }
      return out;
    };
    const measure = async (kind: StartupSample['kind'], before: () => Promise<void>): Promise<StartupSample> => {
      const pair = clients();
      await sleep(500);
      await before();
      // The agent inherits the priority it is forked with; the bench goes back to its own.
      const own = getPriority();
      if (opts.nice !== undefined) setPriority(opts.nice);
      const spawnedAt = Date.now();
      const started = sb.startAgent();
      if (opts.nice !== undefined) setPriority(own);
      const agent = await started;
      // A few answered requests after ready, so that the first one is surely in the log.
      await sleep(1000);
      const [fresh, kept] = await stopClients(pair);
      const lines = sb.agentLines().filter((l) => l.pid === agent.pid);
      const at = (msg: string) => lines.find((l) => l.msg === msg);
      const since = (l: { time: string | number } | undefined) => (l ? (typeof l.time === 'number' ? l.time : Date.parse(l.time)) - spawnedAt : undefined);
      const served = at('access');
      const listening = at('serving the node');
      const ready = at('agent ready');
      const sample: StartupSample = {
        kind,
        servingMs: since(served),
        listeningMs: since(listening),
        listeningProcessMs: listening?.sinceProcessStartMs,
        listeningCpuMs: listening?.cpuMs,
        readyMs: since(ready),
        failed: kind === 'crash' ? { new: fresh!.failed, keepalive: kept!.failed, ok: fresh!.ok + kept!.ok } : undefined,
        loadAverage: Number(loadavg()[0]!.toFixed(1)),
      };
      log(`${kind}: ${JSON.stringify(sample)}`);
      return sample;
    };
    for (let i = 0; i < rounds; i++) {
      samples.push(
        await measure('cold', async () => {
          if (sb.agent) await sb.stopAgent('SIGINT');
          // A node's first agent: no pins (unpinning the links detaches them) and no state.
          if (existsSync(pinRoot)) for (const name of readdirSync(pinRoot, { withFileTypes: true }).map((d) => d.name)) rmSync(join(pinRoot, name), { recursive: true, force: true });
          rmSync(sb.stateDir, { recursive: true, force: true });
          mkdirSync(sb.stateDir, { recursive: true });
        }),
      );
    }
    for (let i = 0; i < rounds; i++) samples.push(await measure('crash', async () => void (await sb.stopAgent('SIGKILL'))));
  } finally {
    for (const c of running) c.proc.kill('SIGKILL');
    await sb.destroy();
  }
  return samples;
}

const median = (xs: (number | undefined)[]): number | undefined => {
  const v = xs.filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  return v.length ? v[Math.floor((v.length - 1) / 2)] : undefined;
};

/** One line per kind: the medians, and every sample's figures. */
export function describeStartup(samples: StartupSample[]): string {
  const out: string[] = [];
  for (const kind of ['cold', 'crash'] as const) {
    const s = samples.filter((x) => x.kind === kind);
    if (!s.length) continue;
    const m = (f: (x: StartupSample) => number | undefined) => median(s.map(f));
    out.push(
      `${kind} (median of ${s.length}): spawn->serving ${m((x) => x.servingMs)} ms, spawn->listening ${m((x) => x.listeningMs)} ms ` +
        `(process clock ${m((x) => x.listeningProcessMs)} ms, CPU ${m((x) => x.listeningCpuMs)} ms), spawn->ready ${m((x) => x.readyMs)} ms` +
        (kind === 'crash' ? `, failed requests ${m((x) => x.failed!.new + x.failed!.keepalive)}` : ''),
    );
    for (const x of s) {
      out.push(
        `  serving ${x.servingMs} ms, listening ${x.listeningMs} ms, ready ${x.readyMs} ms` +
          (x.failed ? `, failed ${x.failed.new} new-connection + ${x.failed.keepalive} keep-alive of ${x.failed.ok + x.failed.new + x.failed.keepalive}` : '') +
          ` (load ${x.loadAverage})`,
      );
    }
  }
  return out.join('\n');
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { rounds: { type: 'string', default: '3' }, 'cpu-prof': { type: 'string' }, nice: { type: 'string' }, json: { type: 'boolean', default: false } },
    strict: true,
  });
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a whole number >= 1, not ${values.rounds}`);
  const nice = values.nice === undefined ? undefined : Number(values.nice);
  if (nice !== undefined && !(Number.isInteger(nice) && nice >= -20 && nice <= 19)) throw new Error(`--nice must be a whole number from -20 to 19, not ${values.nice}`);
  const samples = await benchStartup({ rounds, cpuProfDir: values['cpu-prof'], nice, log: (m) => process.stderr.write(`${m}\n`) });
  process.stdout.write(values.json ? `${JSON.stringify(samples, null, 2)}\n` : `${describeStartup(samples)}\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
