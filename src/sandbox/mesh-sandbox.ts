/**
 * A sandbox node running the real agent: the topology of DESIGN.md (a node namespace with a
 * bridge, a namespace per pod, cgroups as the kubelet lays them out), a sample backend in every pod that serves a
 * service, and `weft agent --config FILE` inside the node namespace with eBPF capture.
 * `npm start` and the e2e tests both build on it.
 */
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseConfig } from '../config/load.js';
import { defaultConfigPath } from '../config/default-config.js';
import type { MeshConfig } from '../config/types.js';
import { AGENT_NODE_FLAGS } from '../node-flags.js';
import { repoRoot } from '../repo-root.js';
import { Topology, type ManagedProcess, type TopoNode, type TopoPod } from './topology.js';

export { repoRoot };

export interface SandboxOptions {
  /** YAML text of the agent config; `${CGROUP_ROOT}` is the node's pod cgroup directory. Default: the embedded default. */
  configText?: string;
  /** Netns/cgroup/pin name prefix (must contain 'weft'). */
  prefix?: string;
  /** Extra `weft agent` arguments. */
  agentArgs?: string[];
  /** Extra Node.js flags for the agent, after AGENT_NODE_FLAGS (the start-up bench passes `--cpu-prof`). */
  agentNodeFlags?: string[];
  /** Print progress. */
  log?: (msg: string) => void;
  /** Start the agent (default true). */
  startAgent?: boolean;
}

export class MeshSandbox {
  readonly pods = new Map<string, TopoPod>();
  readonly backends = new Map<string, ManagedProcess>();
  /** The first node's agent (the config's default `node:`). */
  agent?: ManagedProcess;
  /** The other nodes of `nodes:`, each with its own agent. */
  readonly peers = new Map<string, { node: TopoNode; agent?: ManagedProcess }>();
  readonly configFile: string;
  readonly stateDir: string;
  readonly logFile: string;

  private constructor(
    readonly topo: Topology,
    readonly node: TopoNode,
    readonly config: MeshConfig,
    private configText: string,
    readonly workDir: string,
    private readonly opts: SandboxOptions,
  ) {
    this.configFile = join(workDir, 'weft.yaml');
    this.stateDir = join(workDir, 'state');
    // Outside workDir, so the log outlives the teardown.
    this.logFile = join(tmpdir(), `${topo.id}-agent.log`);
  }

  /** The environment an agent of `node` runs with: the one config file serves every node. */
  envFor(node: TopoNode): NodeJS.ProcessEnv {
    return { ...process.env, CGROUP_ROOT: node.cgroup, WEFT_STATE_DIR: this.stateDir, WEFT_NODE: node.name, WEFT_NODE_ADDRESS: node.address };
  }

  get env(): NodeJS.ProcessEnv {
    return this.envFor(this.node);
  }

  static async create(opts: SandboxOptions = {}): Promise<MeshSandbox> {
    const log = opts.log ?? (() => {});
    const prefix = opts.prefix ?? 'weft-sbx';
    await Topology.sweep(prefix);
    const configText = opts.configText ?? readFileSync(defaultConfigPath(), 'utf8');
    const topo = await Topology.create({ prefix });
    const workDir = mkdtempSync(join(tmpdir(), `${topo.id}-`));
    topo.trackPath(workDir);
    const stateDir = join(workDir, 'state');
    try {
      // Parse once with placeholders to learn the nodes; then once per node, as its agent will.
      const probe = withEnv({ CGROUP_ROOT: '/sandbox-placeholder', WEFT_STATE_DIR: stateDir }, () => parseConfig(configText, 'sandbox'));
      const node = await topo.addNode(probe.node.name, { address: probe.node.address });
      const env = (n: TopoNode) => ({ CGROUP_ROOT: n.cgroup, WEFT_STATE_DIR: stateDir, WEFT_NODE: n.name, WEFT_NODE_ADDRESS: n.address });
      const config = withEnv(env(node), () => parseConfig(configText, 'sandbox'));
      const sb = new MeshSandbox(topo, node, config, configText, workDir, opts);
      writeFileSync(sb.configFile, configText);
      const nodes = [node];
      for (const peer of config.nodes ?? []) {
        if (peer.name === node.name) continue;
        // The other nodes' kubelets use the cgroupfs driver: the sandbox shows both layouts.
        const n = await topo.addNode(peer.name, { address: peer.address, cgroupDriver: 'cgroupfs' });
        await topo.connectNodes(node, n);
        sb.peers.set(peer.name, { node: n });
        nodes.push(n);
      }
      for (const n of nodes) {
        const cfg = n === node ? config : withEnv(env(n), () => parseConfig(configText, 'sandbox'));
        const local = cfg.workloads.filter((w) => w.node === n.name);
        log(`building node ${n.name} (${n.address}) with ${local.length} pods in network namespaces`);
        for (const w of local) {
          const pod = await n.addPod(w.name, { ip: w.ip });
          if (w.cgroup && w.cgroup !== pod.cgroup) {
            throw new Error(`workload ${w.namespace}/${w.name}: config cgroup ${w.cgroup} is not the pod's cgroup ${pod.cgroup} (use \${CGROUP_ROOT}/${w.name})`);
          }
          sb.pods.set(w.name, pod);
        }
      }
      // A backend in every pod that some service selects, on its target ports.
      await Promise.all(
        config.workloads
          .filter((w) => sb.pods.has(w.name))
          .map(async (w) => {
            const ports = config.services
              .filter((s) => s.namespace === w.namespace && Object.keys(s.selector).length > 0 && Object.entries(s.selector).every(([k, v]) => w.labels[k] === v))
              .flatMap((s) => s.ports);
            const http = ports.find((p) => p.protocol === 'http');
            const tcp = ports.find((p) => p.protocol === 'tcp');
            const grpc = ports.find((p) => p.protocol === 'grpc' || p.protocol === 'http2');
            if (!http && !tcp && !grpc) return;
            const pod = sb.pods.get(w.name)!;
            const proc = await pod.spawnBackend({ port: http?.targetPort ?? 18080, tcpEchoPort: tcp?.targetPort, grpcPort: grpc?.targetPort });
            sb.backends.set(w.name, proc);
          }),
      );
      if (opts.startAgent ?? true) {
        // Peers first: their tunnel ports must be up when the first agent's pods call across.
        for (const name of sb.peers.keys()) await sb.startPeerAgent(name);
        await sb.startAgent();
      }
      return sb;
    } catch (err) {
      await topo.destroy().catch(() => undefined);
      throw err;
    }
  }

  private spawnAgent(node: TopoNode, extraArgs: string[]): ManagedProcess {
    const args = [
      ...AGENT_NODE_FLAGS,
      ...(this.opts.agentNodeFlags ?? []),
      join(repoRoot(), 'bin', 'weft.js'),
      'agent',
      '--config',
      this.configFile,
      '--pin-root',
      join(this.topo.bpfRoot, node.name),
      ...(this.opts.agentArgs ?? []),
      ...extraArgs,
    ];
    // In a cgroup of its own, as a DaemonSet pod: the connections it opens are marked from there.
    return node.spawn(process.execPath, args, { env: this.envFor(node), label: `${node.name}:agent`, cgroup: node.agentCgroup });
  }

  private async waitReady(node: TopoNode, proc: ManagedProcess): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await this.admin('/healthz/ready', node).catch(() => undefined);
      if (r?.status === 200) return;
      const exited = await Promise.race([proc.exited.then(() => true), sleep(200).then(() => false)]);
      if (exited) throw new Error(`the agent of ${node.name} exited during start-up:\n${proc.output().slice(-4000)}`);
      if (Date.now() > deadline) throw new Error(`the agent of ${node.name} did not become ready within 30s:\n${proc.output().slice(-4000)}`);
    }
  }

  /** Start the agent of another node (from `nodes:`). */
  async startPeerAgent(name: string): Promise<ManagedProcess> {
    const peer = this.peers.get(name);
    if (!peer) throw new Error(`no node ${name} in the sandbox`);
    const proc = this.spawnAgent(peer.node, []);
    peer.agent = proc;
    await this.waitReady(peer.node, proc);
    return proc;
  }

  /** Start (or restart) the agent in the first node's namespace and wait until it is ready. */
  async startAgent(extraArgs: string[] = []): Promise<ManagedProcess> {
    const proc = this.spawnAgent(this.node, extraArgs);
    this.agent = proc;
    this.collectLog(proc);
    await this.waitReady(this.node, proc);
    return proc;
  }

  private collectLog(proc: ManagedProcess): void {
    let partial = '';
    proc.child.stdout?.setEncoding('utf8');
    proc.child.stdout?.on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop()!;
      for (const line of lines) this.keepLine(line);
    });
    proc.child.stdout?.on('end', () => {
      if (partial) this.keepLine(partial);
    });
  }

  /**
   * Every line the agents print is kept, but of the access lines (one per request: a load
   * test makes millions) only the latest ~4 MB: dropping the oldest bytes of the whole log
   * instead lost the few lines that say what the agents did (start-up, hand-over), which the
   * tests look for after a load.
   */
  private keepLine(line: string): void {
    const access = line.includes('"msg":"access"');
    this.logLines.push(access ? line : { line });
    if (!access) return;
    this.accessBytes += line.length;
    if (this.accessBytes <= 8_000_000) return;
    let drop = this.accessBytes - 4_000_000;
    this.logLines = this.logLines.filter((l) => {
      if (drop <= 0 || typeof l !== 'string') return true;
      drop -= l.length;
      this.accessBytes -= l.length;
      return false;
    });
  }

  /** The agents' log: access lines as strings, every other line boxed (keepLine says why). */
  private logLines: Array<string | { line: string }> = [];
  private accessBytes = 0;

  private get agentLog(): string {
    return this.logLines.map((l) => (typeof l === 'string' ? l : l.line)).join('\n');
  }

  /**
   * An upgrade as a DaemonSet with maxSurge does it: a new agent starts beside the running one
   * (same node, pin root, ports and state directory), takes its listening sockets and capture
   * over, and the old one drains and exits by itself. Resolves once the new agent serves the
   * node (the old one has stopped accepting); `previous.exited` says when the old one is gone.
   */
  async replaceAgent(extraArgs: string[] = []): Promise<{ previous: ManagedProcess; next: ManagedProcess }> {
    const previous = this.agent;
    if (!previous) throw new Error('no agent runs: start one first');
    const next = this.spawnAgent(this.node, extraArgs);
    this.collectLog(next);
    try {
      await Promise.race([
        next.waitFor(/"msg":"agent ready"/, 30_000),
        next.exited.then(() => {
          throw new Error(`the new agent exited during start-up:\n${next.output().slice(-4000)}`);
        }),
      ]);
    } catch (err) {
      next.kill('SIGKILL');
      await next.exited;
      throw err;
    }
    this.agent = next;
    return { previous, next };
  }

  /**
   * Stop the agent: SIGINT (stop now; requests in flight finish) by default; SIGTERM to drain
   * as Kubernetes does (readiness fails, the agent serves on for agent.drainTimeout); SIGKILL to
   * simulate a crash.
   */
  async stopAgent(signal: NodeJS.Signals = 'SIGINT'): Promise<number | null> {
    const a = this.agent;
    if (!a) return null;
    a.kill(signal);
    const code = await a.exited;
    this.agent = undefined;
    return code;
  }

  /** GET on the admin port (127.0.0.1 inside the node namespace). */
  async admin(path: string, node: TopoNode = this.node): Promise<{ status: number; body: string }> {
    const r = await node.exec('curl', ['-s', '--max-time', '3', '-w', '\n%{http_code}', `http://127.0.0.1:${this.config.ports.admin}${path}`], { timeoutMs: 5000 });
    const i = r.stdout.lastIndexOf('\n');
    return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
  }

  async configDump(node: TopoNode = this.node): Promise<any> {
    return JSON.parse((await this.admin('/config_dump', node)).body);
  }

  /** The node's Prometheus endpoint, as a scraper on the node network sees it. */
  async metrics(node: TopoNode = this.node): Promise<string> {
    const r = await node.exec('curl', ['-s', '--max-time', '3', `http://${node.address}:${this.config.ports.metrics}/metrics`], { timeoutMs: 5000 });
    return r.stdout;
  }

  /** The agent's JSON log lines so far. */
  agentLines(): any[] {
    const out: any[] = [];
    for (const l of this.logLines) {
      const line = typeof l === 'string' ? l : l.line;
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line));
      } catch {
        /* a partial line */
      }
    }
    return out;
  }

  pod(name: string): TopoPod {
    const p = this.pods.get(name);
    if (!p) throw new Error(`no pod ${name} in the sandbox`);
    return p;
  }

  /** Replace the config file (the agent watches it) and wait for the agent to apply it. */
  async writeConfig(text: string): Promise<void> {
    const before = (await this.configDump()).generation as number;
    this.configText = text;
    writeFileSync(this.configFile + '.tmp', text);
    rmSync(this.configFile, { force: true });
    writeFileSync(this.configFile, text);
    rmSync(this.configFile + '.tmp', { force: true });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const g = (await this.configDump()).generation as number;
      if (g > before) return;
      await sleep(100);
    }
    throw new Error('the agent did not apply the new config within 10s');
  }

  get currentConfigText(): string {
    return this.configText;
  }

  async destroy(): Promise<void> {
    if (this.agent) await this.stopAgent('SIGINT').catch(() => undefined);
    for (const p of this.peers.values()) {
      p.agent?.kill('SIGINT');
      await p.agent?.exited.catch(() => undefined);
    }
    writeFileSync(this.logFile, `${this.agentLog}\n`);
    await this.topo.destroy();
  }
}

function withEnv<T>(vars: Record<string, string>, fn: () => T): T {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}
