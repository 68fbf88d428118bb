import type { MeshConfig } from './config/types.js';
import type { Discovery } from './discovery/types.js';
import { StateStore } from './state/store.js';
import { ClusterManager } from './cluster/manager.js';
import { Metrics } from './telemetry/metrics.js';
import { createLogger, type Logger } from './telemetry/log.js';
import { AdminServer } from './admin/server.js';
import { HttpProxy } from './proxy/http.js';
import { Mirror } from './proxy/l7/mirror.js';
import { describeRoutes } from './proxy/l7/route-dump.js';
import type { OutboundListener } from './proxy/outbound.js';
import { MeshTransport } from './proxy/transport.js';
import type { ConnContext, OrigDstLookup, SourceLookup } from './proxy/context.js';
import type { Endpoint } from './cluster/endpoint.js';
import type { RequestView } from './proxy/l7/request.js';
import { CaptureManager } from './capture/manager.js';
import { Datapath } from './capture/datapath.js';
import { SocketLb } from './capture/socket-lb.js';
import type { ConfigError } from './errors.js';
import { Enforcer } from './authz/enforcer.js';
import { setProbeSourceAddress } from './health/probe.js';
import type { WorkloadCertificate } from './identity/cert-manager.js';
import { LocalIdentities } from './identity/local-identities.js';
import { HboneTunnel } from './proxy/hbone-tunnel.js';
import { TunnelServer } from './proxy/tunnel-server.js';
import { PlaintextInbound } from './proxy/inbound-plaintext.js';
import { DownstreamCaps, SharedConnCounts } from './proxy/downstream-caps.js';
import { inboundTransport } from './proxy/inbound.js';
import { DEFAULT_PIN_ROOT, preparePinRoot } from './capture/datapath.js';
import { NodeSlot } from './lifecycle/handover.js';
import { Listeners } from './lifecycle/listeners.js';
import pino from 'pino';
import { outboundPlane } from './workers/plane.js';
import { WorkerPool } from './workers/pool.js';
import { usableCores } from './workers/cores.js';
import { MemoryRelease } from './workers/memory.js';
import type { SourceRoutes } from './workers/protocol.js';

/** How long a restarted agent answers queued connections before it sets up identities (answerQueuedFirst). */
const QUEUED_FIRST_MS = 500;
/** Memory is given back this long after the last of a run of config changes (src/workers/memory.ts). */
const MEMORY_RELEASE_DELAY_MS = 1_000;

export interface AgentOptions {
  discovery: Discovery;
  log?: Logger;
  /** eBPF capture (default on). Off: `origDst` must be given (tests on loopback). */
  capture?: boolean;
  /** bpffs directory for pins (default /sys/fs/bpf/weft). */
  pinRoot?: string;
  /** Override the original-destination lookup (tests without eBPF). */
  origDst?: OrigDstLookup;
  /** Override the source-workload lookup (tests without eBPF). */
  sourceLookup?: SourceLookup;
  /**
   * Splice plain-TCP L4 connections in the kernel (needs capture). Default: on, unless the
   * environment says WEFT_L4_SPLICE=0 (the userspace pipe then carries every L4 byte).
   */
  l4Splice?: boolean;
  /**
   * Balance eligible plain-TCP service ports in connect4 (socket LB, capture/socket-lb.ts).
   * Default: on, unless the environment says WEFT_L4_SOCKET_LB=0.
   */
  socketLb?: boolean;
  /**
   * Take the node's slot (the pin-root lock), and with it the listening sockets of an agent
   * already running there, which then drains (src/lifecycle/handover.ts). Default: with capture.
   */
  handover?: boolean;
  /**
   * Threads serving connections, over `agent.workers` (src/workers/). Default: one per core
   * the agent may run on with capture, 1 without (tests pass `origDst` as a function of this
   * thread; they reach workers through setWorkerRoutes()).
   */
  workers?: number;
}

/**
 * The node agent: discovery -> state -> capture -> proxy -> telemetry (DESIGN.md). Every
 * listener binds before the agent reports ready, so a bad port fails start-up rather than
 * the first request.
 */
export class Agent {
  readonly log: Logger;
  readonly metrics = new Metrics();
  readonly state = new StateStore();
  readonly clusters: ClusterManager;
  readonly transport = new MeshTransport();
  private http!: HttpProxy;
  private mirror: Mirror | undefined;
  /** L7 for connections that came through the tunnel: metrics say `mutual_tls`. */
  private tunnelHttp!: HttpProxy;
  private outbound!: OutboundListener;
  private identities?: LocalIdentities;
  private tunnel?: HboneTunnel;
  private tunnelServer?: TunnelServer;
  private plaintextInbound?: PlaintextInbound;
  private downstreamCaps?: DownstreamCaps;
  private admin!: AdminServer;
  private capture?: CaptureManager;
  private socketLb?: SocketLb;
  private enforcer!: Enforcer;
  private datapath?: Datapath;
  /** Worker threads beside this (control) thread, when `agent.workers` > 1. */
  private pool?: WorkerPool;
  private sourcesTimer?: NodeJS.Timeout;
  /** malloc's arenas trimmed after start-up and after config changes (src/workers/memory.ts). */
  private memory?: MemoryRelease;
  private ready = false;
  private draining = false;
  private slot?: NodeSlot;
  private listeners!: Listeners;
  /** False once a successor runs capture (it syncs maps and links; this agent must not). */
  private captureOwned = true;
  private stopping?: Promise<void>;
  private resolveFinished!: () => void;
  /**
   * Resolves when the agent is done: stopped, or handed over to a successor and drained.
   * (`weft agent` exits then; in Kubernetes it waits for SIGTERM instead.)
   */
  readonly finished = new Promise<void>((r) => (this.resolveFinished = r));
  /** Set once a successor took over. */
  successor?: { pid: number };
  private lastRejection?: { at: string; problems: string[] };
  private readonly startedAt = new Date().toISOString();

  private constructor(private readonly opts: AgentOptions) {
    this.log = opts.log ?? createLogger();
    // Health, ejection and breaker changes go to the worker threads, if any.
    this.clusters = new ClusterManager(this.state, this.metrics, this.log, Date.now, { onHealthChange: (c) => this.pool?.healthChanged(c) });
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const agent = new Agent(opts);
    try {
      await agent.run();
    } catch (err) {
      await agent.stop({ drainMs: 0 }).catch(() => undefined);
      throw err;
    }
    return agent;
  }

  get config(): MeshConfig {
    return this.state.config;
  }

  /** Addresses the listeners actually bound (ports may be 0 in tests). */
  get addresses(): { outbound: number; admin: number; metrics: number; tunnel: number; inbound: number } {
    const port = (s: { address(): unknown }) => (s.address() as { port: number }).port;
    return {
      outbound: port(this.outbound.server),
      admin: port(this.admin.admin),
      metrics: port(this.admin.metrics),
      tunnel: this.tunnelServer?.port ?? 0,
      inbound: this.plaintextInbound?.port ?? 0,
    };
  }

  private async run(): Promise<void> {
    const { discovery } = this.opts;
    const cfg = await discovery.start();
    this.state.apply(cfg);
    this.clusters.sync();
    const log = this.log;

    const enforcer = (this.enforcer = new Enforcer(this.state, this.metrics, log));
    // Same-node traffic is authorized here, where the destination lives (as in outboundPlane()).
    const authorizeHttp = (ctx: ConnContext, ep: Endpoint, req: RequestView) => enforcer.http(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep, req);
    // RequestMirror copies of routed requests (fire-and-forget, bounded in flight).
    const mirror = (this.mirror = new Mirror(this.transport, log.child({ component: 'mirror' })));
    this.tunnelHttp = new HttpProxy({
      clusters: this.clusters,
      transport: inboundTransport('mutual_tls'),
      metrics: this.metrics,
      log: log.child({ component: 'http', entry: 'tunnel' }),
      authorize: authorizeHttp,
      mirror,
    });
    const capture = this.opts.capture ?? true;
    const origDst: OrigDstLookup | undefined = this.opts.origDst ?? (capture ? (s) => this.datapath!.origDst(s) : undefined);
    if (!origDst) throw new Error('capture is off and no original-destination lookup was given');
    const source: SourceLookup = this.opts.sourceLookup ?? ((od) => (od.cgroupId !== undefined ? this.capture?.workloadByCgroupId(od.cgroupId) : undefined));
    const plane = outboundPlane({
      state: this.state,
      clusters: this.clusters,
      transport: this.transport,
      metrics: this.metrics,
      log,
      enforcer,
      origDst,
      source,
      // Opened below, with capture; until then (and without capture) every L4 byte is piped here.
      splice: (down, up, o) => this.datapath?.splice(down, up, o) ?? 'off',
      mirror,
    });
    const { tcp } = plane;
    this.http = plane.http;
    this.outbound = plane.outbound;
    // A thread per core the agent may use (affinity, cgroup CPU quota), unless agent.workers
    // says otherwise; without capture (loopback tests: `origDst` is a function of this thread) one.
    const workers = this.opts.workers ?? cfg.agent.workers ?? (capture ? usableCores() : 1);
    // The listener caps are the agent's: every thread counts its connections in one shared buffer.
    const caps = (this.downstreamCaps = new DownstreamCaps(this.metrics, log.child({ component: 'listeners' }), SharedConnCounts.create(workers)));
    if (workers > 1) this.pool = this.createPool(workers - 1, capture);
    this.plaintextInbound = new PlaintextInbound({
      state: this.state,
      inbound: { http: this.http, tcp: { ...tcp, log: log.child({ component: 'tcp', entry: 'plaintext' }) }, security: 'none' },
      log: log.child({ component: 'inbound' }),
    });
    const pool = this.pool;
    this.admin = new AdminServer({
      registry: this.metrics.registry,
      metrics: pool ? () => pool.metrics(this.metrics.registry) : undefined,
      ready: () => this.readiness(),
      configDump: () => this.configDumpAll(),
      log: log.child({ component: 'admin' }),
    });
    const { ports, node } = cfg;
    const max = cfg.agent.maxDownstreamConnections;
    caps.attach('outbound', this.outbound.server, max.outbound);
    caps.attach('inbound', this.plaintextInbound.server, max.inbound);
    setProbeSourceAddress(node.address);

    // The node's slot: the pin-root lock, or a handover from the agent that holds it.
    const pinRoot = this.opts.pinRoot ?? DEFAULT_PIN_ROOT;
    if (capture && (this.opts.handover ?? true)) {
      preparePinRoot(pinRoot, log);
      this.slot = await NodeSlot.acquire({ pinRoot, stateDir: cfg.stateDir, log: log.child({ component: 'lifecycle' }) });
    }
    const predecessor = this.slot?.predecessor;
    this.listeners = new Listeners(this.slot);
    const bindNodeListeners = async () => {
      await this.listeners.bind({ name: 'outbound', server: this.outbound.server, host: node.address, port: ports.outbound, backlog: 4096 });
      await this.listeners.bind({ name: 'inbound', server: this.plaintextInbound!.server, host: node.address, port: ports.inbound, backlog: 1024 });
      await this.listeners.bind({ name: 'admin', server: this.admin.admin, host: '127.0.0.1', port: ports.admin });
      await this.listeners.bind({ name: 'metrics', server: this.admin.metrics, host: node.address, port: ports.metrics });
    };

    // Pods an earlier agent captured (their links are pinned): after a crash, they are waiting.
    let capturedBefore = false;
    try {
      if (capture) {
        // Maps are reused from their pins with their content, links adopted where they are:
        // nothing the kernel holds is rebuilt.
        this.datapath = Datapath.open({
          pinRoot,
          nodeIp: node.address,
          outboundPort: predecessor?.listeners.find((l) => l.name === 'outbound')?.port ?? ports.outbound,
          // Both agents of a handover open connections into strict pods: one slot each.
          agentSlot: predecessor ? (predecessor.agentSlot === 0 ? 1 : 0) : 0,
          beside: predecessor !== undefined,
          splice: this.opts.l4Splice ?? process.env.WEFT_L4_SPLICE !== '0',
          log: log.child({ component: 'datapath' }),
        });
        capturedBefore = this.datapath.attached().size > 0;
        // The agent being replaced stops syncing maps and links before this one starts.
        await predecessor?.releaseCapture();
        this.startCapture(enforcer);
      }
      // No agent to take over from (a first start, or a restart after a crash: the kernel
      // still redirects to the node's ports): serve the node's pods at once.
      if (!predecessor) {
        await bindNodeListeners();
        // How long a restart leaves the node's pods without an agent, from the process's own clock.
        const cpu = process.cpuUsage();
        log.info({ sinceProcessStartMs: Math.round(performance.now()), cpuMs: Math.round((cpu.user + cpu.system) / 1000) }, 'serving the node');
        if (capturedBefore) await this.answerQueuedFirst(QUEUED_FIRST_MS);
      }

      await this.startIdentity(cfg);
      const identities = this.identities!;
      this.tunnel = new HboneTunnel({
        identities,
        peerOf: (name) => {
          const n = this.state.config.nodes?.find((x) => x.name === name);
          return n ? { host: n.address, port: this.state.config.ports.tunnel } : undefined;
        },
        localAddress: cfg.node.address,
        log: log.child({ component: 'tunnel' }),
      });
      this.transport.setTunnel(this.tunnel);
      this.tunnelServer = new TunnelServer({
        state: this.state,
        identities,
        inbound: { http: this.tunnelHttp, tcp: { ...tcp, log: log.child({ component: 'tcp', entry: 'tunnel' }) }, security: 'mutual_tls' },
        log: log.child({ component: 'tunnel-server' }),
      });
      caps.attach('tunnel', this.tunnelServer.server, max.tunnel);

      if (predecessor) {
        // Ready before the old agent stops accepting: capture reconciled (above), clusters
        // synced, the certificates of the node's identities in hand (bounded: a CA that is down
        // must not keep the old agent running forever).
        if (!(await identities.ready(10_000))) log.warn('taking over without every certificate: the CA did not answer within 10s');
        await bindNodeListeners();
      }
      await this.listeners.bind({ name: 'tunnel', server: this.tunnelServer.server, host: node.address, port: ports.tunnel, backlog: 4096 });
      if (predecessor) {
        await predecessor.ready();
        log.info({ predecessor: predecessor.pid, sinceProcessStartMs: Math.round(performance.now()) }, 'the previous agent stopped accepting: this agent serves the node');
      }
      this.slot?.dropUnclaimed();
    } catch (err) {
      predecessor?.abandon();
      throw err;
    }

    // What start-up freed so far (the config's parse, capture's attach) goes back to the
    // kernel before the workers' snapshots add to the peak; once more when they are serving.
    this.memory = new MemoryRelease(log.child({ component: 'memory' }), { heap: false, delayMs: MEMORY_RELEASE_DELAY_MS });
    if (pool) {
      this.memory.now('start', { heap: true });
      if (this.capture) {
        const capture = this.capture;
        pool.sources(capture.cgroupSources());
        // Capture retries cgroups on its own clock: follow it.
        this.sourcesTimer = setInterval(() => pool.sources(capture.cgroupSources()), 1_000);
        this.sourcesTimer.unref();
      }
      await pool.start().catch((err: Error) => {
        throw new Error(`cannot start the worker threads: ${err.message}`);
      });
    }

    discovery.on('update', (next: MeshConfig) => {
      // A bug in applying one change must not take the node's traffic down with it.
      try {
        this.onUpdate(next);
        // Series of workloads that are gone go with them (DESIGN.md "Metric labels").
        this.metrics.retainWorkloads(next.workloads).catch((err: Error) => log.warn({ err }, 'pruning metric series failed'));
      } catch (err) {
        this.metrics.agentErrors.inc({ kind: 'config' });
        log.error({ err }, 'applying the new config failed; continuing with what was applied');
      }
    });
    discovery.on('rejected', (err: ConfigError) => {
      this.metrics.configRejected.inc();
      this.lastRejection = { at: new Date().toISOString(), problems: err.problems ?? [err.message] };
      log.error({ problems: err.problems, err: err.message }, 'config rejected; the last good config stays in force');
    });
    this.ready = true;
    this.memory.now(pool ? 'workers started' : 'start');
    await this.slot?.serve({
      listeners: () => this.listeners.handed(),
      agentSlot: () => this.datapath?.agentSlot,
      releaseCapture: () => this.releaseCapture(),
      resumeCapture: () => this.resumeCapture(),
      stopAccepting: async () => {
        this.listeners.stopAccepting();
        // The workers' fds of the listening socket too: only the successor accepts from now on.
        await this.pool?.stopAccepting();
      },
      handedOver: (successor) => {
        this.successor = successor;
        void this.drainAndStop('handed over');
      },
    });
    const bound = this.addresses;
    log.info(
      {
        node: node.name,
        address: node.address,
        ports: { ...ports, outbound: bound.outbound, tunnel: bound.tunnel, inbound: bound.inbound },
        capture,
        workers: 1 + (pool?.size ?? 0),
        services: cfg.services.length,
        workloads: cfg.workloads.length,
        peers: (cfg.nodes ?? []).length,
        ca: cfg.ca.url ?? 'embedded',
      },
      'agent ready',
    );
  }

  private startCapture(enforcer: Enforcer): void {
    const log = this.log;
    const datapath = this.datapath!;
    const capture = (this.capture = new CaptureManager(this.state, datapath, this.metrics, log));
    capture.start();
    if (this.opts.socketLb ?? process.env.WEFT_L4_SOCKET_LB !== '0') {
      this.socketLb = new SocketLb({
        state: this.state,
        clusters: this.clusters,
        datapath,
        governed: (w) => enforcer.governs(w),
        workloadByCgroupId: (id) => capture.workloadByCgroupId(id),
        metrics: this.metrics,
        log,
      });
      this.socketLb.start();
    } else {
      // What an agent before this one left balanced goes back to the agent.
      datapath.setBalanced([]);
    }
  }

  /** A successor runs capture now: this agent stops syncing maps and links (it still reads the tuple map for what it accepts). */
  private releaseCapture(): void {
    this.captureOwned = false;
    this.capture?.stop();
    this.socketLb?.release();
    this.datapath?.readRefusedConnects(false);
  }

  /** The successor went away before it was ready: capture is this agent's again. */
  private resumeCapture(): void {
    if (this.captureOwned || this.stopping) return;
    this.captureOwned = true;
    this.capture?.resume();
    this.socketLb?.resume();
    this.datapath?.readRefusedConnects(true);
  }

  /**
   * After a crash the node's pods have connections waiting in the listen queue (connect4 went
   * on redirecting to the node's ports while no agent ran). The proxy takes them and answers
   * before the agent loads X.509 and asks for certificates: that module loading holds the
   * event loop for ~300 ms of CPU (seconds on a busy node), and a request queued behind it
   * waits as long (docs/benchmarks/startup.md). Bounded by `maxMs`, because traffic to other
   * nodes waits for the certificates (an idle node waits it out). Called only when pods were
   * captured before this agent started: on a first start nothing waits for it.
   */
  private async answerQueuedFirst(maxMs: number): Promise<void> {
    const until = Date.now() + maxMs;
    let requested = false;
    while (Date.now() < until) {
      await new Promise((r) => setTimeout(r, 5));
      // Done once the first requests read from them are answered.
      if (this.http.active > 0) requested = true;
      else if (requested) return;
    }
  }

  /**
   * The CA client and the certificates of the local workload identities. Certificates are
   * requested in the background: a CA that is down delays them (the tunnel waits for them,
   * bounded) but does not fail start-up. A CA that cannot be set up at all (an unreadable
   * root file, a state directory that cannot be written for the embedded CA) does.
   */
  private async startIdentity(cfg: MeshConfig): Promise<void> {
    const log = this.log.child({ component: 'identity' });
    // Loaded here, not at start-up: X.509 (@peculiar/x509 and its ASN.1 modules) costs ~100 ms
    // that an agent restarted after a crash must not spend before it serves its node's pods.
    const [{ createCertificateSigner }, { CertManager }] = await Promise.all([import('./identity/ca-client.js'), import('./identity/cert-manager.js')]);
    const signer = await createCertificateSigner(cfg.ca, {
      stateDir: cfg.stateDir,
      trustDomain: cfg.mesh.trustDomain,
      // The embedded CA signs only identities of this node's workloads.
      isLocal: (ns, sa) => this.identities?.has(ns, sa) ?? false,
      log,
    }).catch((err: Error) => {
      throw new Error(`cannot set up the CA (${cfg.ca.url ? `ca.url ${cfg.ca.url}` : `embedded, in ${cfg.stateDir}/ca`}): ${err.message}`);
    });
    if (signer.trustDomain && signer.trustDomain !== cfg.mesh.trustDomain) {
      throw new Error(`the embedded CA in ${cfg.stateDir}/ca signs for trust domain ${signer.trustDomain}, but mesh.trustDomain is ${cfg.mesh.trustDomain}`);
    }
    const certs = new CertManager({ client: signer, trustDomain: cfg.mesh.trustDomain, registry: this.metrics.registry, log, ttlMs: cfg.ca.certTtl });
    // Worker threads get each certificate as it is issued or rotated (their tunnel clients use them).
    const pool = this.pool;
    if (pool) {
      const send = (c: WorkloadCertificate) =>
        pool.cert({ namespace: c.namespace, serviceAccount: c.serviceAccount, keyPem: c.keyPem, chainPem: c.chainPem, rootPem: c.rootPem, notAfter: c.notAfter.getTime() });
      certs.on('issued', send);
      // A new trust bundle: the workers rebuild their TLS contexts with it.
      certs.on('trustChanged', (_pem: string, current: WorkloadCertificate[]) => current.forEach(send));
    }
    this.identities = new LocalIdentities(certs, log);
    this.identities.sync(this.state);
    this.warnUnreachableNodes(cfg);
  }

  /** Meshed workloads on nodes whose agent has no known address cannot be reached through the tunnel. */
  private warnUnreachableNodes(cfg: MeshConfig): void {
    const known = new Set([cfg.node.name, ...(cfg.nodes ?? []).map((n) => n.name)]);
    const missing = new Set<string>();
    for (const w of cfg.workloads) if (!known.has(w.node) && this.state.isMeshed(w.namespace)) missing.add(w.node);
    if (missing.size) this.log.warn({ nodes: [...missing] }, 'meshed workloads run on nodes not listed under nodes: traffic to them cannot be tunnelled');
  }

  private onUpdate(next: MeshConfig): void {
    const prev = this.state.config;
    if (JSON.stringify(prev.ports) !== JSON.stringify(next.ports) || prev.node.address !== next.node.address) {
      this.log.warn({ ports: next.ports, address: next.node.address }, 'node address or ports changed: restart the agent to apply them; the rest of the change is applied now');
    }
    if (JSON.stringify(prev.ca) !== JSON.stringify(next.ca) || prev.stateDir !== next.stateDir || prev.mesh.trustDomain !== next.mesh.trustDomain) {
      this.log.warn({ ca: next.ca, trustDomain: next.mesh.trustDomain }, 'ca, stateDir or trust domain changed: restart the agent to apply them');
    }
    this.state.apply(next);
    this.downstreamCaps?.apply(next.agent.maxDownstreamConnections);
    this.enforcer.update(next);
    this.clusters.sync();
    this.identities?.sync(this.state);
    // Once a successor runs capture, the kernel's maps and links are its to sync.
    if (this.captureOwned) {
      this.capture?.reconcile();
      this.socketLb?.sync();
    }
    this.warnUnreachableNodes(next);
    const live = new Set<string>();
    for (const c of this.clusters.all()) for (const id of c.endpoints.keys()) live.add(id);
    this.http.prune(live);
    this.tunnelHttp.prune(live);
    this.pool?.config(next);
    if (this.capture) this.pool?.sources(this.capture.cgroupSources());
    this.log.info({ generation: this.state.generation, services: next.services.length, workloads: next.workloads.length }, 'config applied');
    this.memory?.schedule('config');
  }

  /**
   * The worker threads (src/workers/pool.ts): each starts from a snapshot of what this thread
   * holds now, and follows it from there.
   */
  private createPool(threads: number, capture: boolean): WorkerPool {
    const stream = (this.log as unknown as Record<symbol, { write(s: string): unknown } | undefined>)[pino.symbols.streamSym];
    return new WorkerPool({
      threads,
      clusters: this.clusters,
      metrics: this.metrics,
      caps: this.downstreamCaps?.shared,
      log: this.log.child({ component: 'workers' }),
      writeLog: (text) => stream?.write(text),
      snapshot: () => ({
        config: this.state.config,
        // A fd of its own for the outbound listening socket, each (re)start a fresh one.
        outboundFd: this.listeners.dupFd('outbound'),
        inboundFd: this.listeners.dupFd('inbound'),
        tunnelFd: this.listeners.dupFd('tunnel'),
        rootPem: this.identities?.rootPem ?? '',
        caps: this.downstreamCaps!.shared.buffer,
        // Each worker loads a splice object of its own when this thread could load one.
        splice: this.datapath?.splicing ?? false,
        pinRoot: capture ? (this.datapath?.pinRoot ?? this.opts.pinRoot) : undefined,
        logLevel: this.log.level,
        trustDomain: this.state.config.mesh.trustDomain,
        // A worker's endpoints start as new ones: only what differs from that (Cluster.health).
        health: [...this.clusters.all()].map((c) => c.health(true)),
        sources: this.capture?.cgroupSources() ?? [],
        certs: [],
      }),
    });
  }

  /**
   * Without capture (loopback tests), worker threads find original destinations and callers
   * by source address in this table; the control thread's own `origDst` function serves it.
   */
  setWorkerRoutes(routes: SourceRoutes): void {
    this.pool?.setRoutes(routes);
  }

  /** The worker threads, for tests (one is ended to see it come back) and /config_dump. */
  get workerThreads(): ReturnType<WorkerPool['workerThreads']> {
    return this.pool?.workerThreads() ?? [];
  }

  private readiness(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (!this.ready) reasons.push('starting');
    if (this.draining) reasons.push('draining');
    return { ready: reasons.length === 0, reasons };
  }

  /**
   * /config_dump: configDump() with what each worker thread serves, and the RequestMirror
   * counts of every thread summed (one agent's).
   */
  async configDumpAll(): Promise<unknown> {
    const dump = this.configDump() as { routes: { mirror?: Record<string, number> }; workers: Record<string, unknown> };
    if (!this.pool) return dump;
    const serving = (await this.pool.describe()) as Array<{ serving?: { mirror?: Record<string, number> } }>;
    dump.workers.serving = serving;
    const mirror = dump.routes.mirror;
    if (mirror) for (const w of serving) for (const [k, v] of Object.entries(w.serving?.mirror ?? {})) mirror[k] = (mirror[k] ?? 0) + v;
    return dump;
  }

  configDump(): unknown {
    const cfg = this.state.config;
    return {
      node: cfg.node,
      mesh: cfg.mesh,
      ports: cfg.ports,
      startedAt: this.startedAt,
      generation: this.state.generation,
      lastRejectedConfig: this.lastRejection,
      namespaces: cfg.namespaces.map((n) => ({ ...n, meshed: this.state.isMeshed(n.name) })),
      workloads: cfg.workloads,
      services: cfg.services,
      routes: describeRoutes(this.state, this.clusters, this.mirror && { ...this.mirror.stats }),
      clusters: [...this.clusters.all()].map((c) => c.describe()),
      capture: this.capture?.describe() ?? 'disabled',
      workers: {
        threads: 1 + (this.pool?.size ?? 0),
        // What the control thread serves itself, beside the workers' (`serving`).
        controlConnections: this.outbound?.connections,
        controlInboundConnections: this.plaintextInbound?.connections,
        controlTunnelSessions: this.tunnelServer?.sessionCount,
        workerThreads: this.pool?.workerThreads().map(({ worker: _w, ...rest }) => rest) ?? [],
      },
      socketLb: this.socketLb?.describe() ?? 'disabled',
      authorization: this.enforcer?.describe(),
      nodes: cfg.nodes ?? [],
      identity: this.identities
        ? { ca: cfg.ca.url ? { url: cfg.ca.url, rootCert: cfg.ca.rootCert } : 'embedded', trustDomain: cfg.mesh.trustDomain, certificates: this.identities.status(), roots: this.identities.roots() }
        : undefined,
      tunnel: this.tunnelServer ? { server: this.tunnelServer.describe(), sessions: this.tunnel?.describe() } : undefined,
    };
  }

  /** Downstream connections this agent still serves: redirected, plaintext inbound, tunnel sessions; the workers' too. */
  get connections(): number {
    return (this.outbound?.connections ?? 0) + (this.plaintextInbound?.connections ?? 0) + (this.tunnelServer?.sessionCount ?? 0) + (this.pool ? (this.downstreamCaps?.shared.workers() ?? 0) : 0);
  }

  /**
   * SIGTERM: readiness fails at once, and the agent goes on accepting and serving, because the
   * node's pods go on sending it traffic, until a successor takes over (then it drains as after
   * any handover) or `drainMs` (default `agent.drainTimeout`) is up; then it stops (see stop()).
   * Resolves when the agent is done.
   */
  terminate(opts: { drainMs?: number } = {}): Promise<void> {
    if (this.terminateBy !== undefined || this.stopping) return this.finished;
    const drainMs = opts.drainMs ?? this.state.config?.agent.drainTimeout ?? 20_000;
    this.draining = true;
    this.terminateBy = Date.now() + drainMs;
    this.log.info({ drainMs, successor: this.successor?.pid }, 'terminating: readiness fails; serving until a new agent takes over or the drain time is up');
    if (!this.successor) {
      const timer = setTimeout(() => {
        if (this.successor) return;
        this.log.info('drain time is up and no new agent took over: stopping');
        // What is left of the time the orchestrator gives (the drain time is its grace period less a second).
        void this.stop({ drainMs: 1_000 });
      }, drainMs);
      void this.finished.then(() => clearTimeout(timer));
    }
    return this.finished;
  }

  /** When a SIGTERM asked the agent to be gone (ms since the epoch). */
  private terminateBy?: number;

  /** A SIGTERM came. */
  get terminating(): boolean {
    return this.terminateBy !== undefined;
  }

  /**
   * After a handover: this agent accepts nothing any more. Every answer from now on carries
   * `connection: close` (HTTP/1.1; tunnel sessions get GOAWAY), so keep-alive clients move to
   * the new agent between requests; requests in flight, tunnels and TCP connections finish.
   * Whatever is still open after `agent.drainTimeout` (or the SIGTERM's deadline) is closed.
   */
  private async drainAndStop(reason: string): Promise<void> {
    if (this.stopping) return;
    this.draining = true;
    const drainMs = this.state.config.agent.drainTimeout;
    const deadline = Math.min(Date.now() + drainMs, this.terminateBy ?? Infinity);
    this.http.drain();
    this.tunnelHttp.drain();
    this.tunnelServer?.drain();
    // The workers' connections drain the same way, and count in `connections` (shared counts).
    this.pool?.handedOver();
    const started = Date.now();
    this.log.info({ reason, connections: this.connections, inflight: this.http.active + this.tunnelHttp.active, drainMs: deadline - started }, 'draining');
    while (this.connections > 0 && Date.now() < deadline && !this.stopping) await new Promise((r) => setTimeout(r, 50));
    this.log.info({ left: this.connections, ms: Date.now() - started }, this.connections ? 'drain time is up: closing what is left' : 'drained: every connection finished');
    // The worker threads drain theirs the same way, in what is left of the time.
    await this.stop({ drainMs: Math.max(0, deadline - Date.now()), workersUntilClosed: true });
  }

  /**
   * Stop now: readiness fails, the listeners stop accepting, in-flight requests get `drainMs`
   * to finish, then every connection is closed. BPF links stay pinned: pods stay captured and
   * the next agent adopts them.
   */
  stop(opts: { drainMs?: number; workersUntilClosed?: boolean } = {}): Promise<void> {
    this.stopping ??= this.doStop(opts);
    return this.stopping;
  }

  private async doStop(opts: { drainMs?: number; workersUntilClosed?: boolean }): Promise<void> {
    const drainMs = opts.drainMs ?? this.state.config?.agent.drainTimeout ?? 20_000;
    this.draining = true;
    this.memory?.cancel();
    await this.slot?.stopServing();
    if (this.captureOwned) {
      this.capture?.stop();
      this.socketLb?.stop();
    }
    clearInterval(this.sourcesTimer);
    // The workers drain beside this thread, each its own connections.
    const workersStopped = this.pool?.stop(drainMs, { untilClosed: opts.workersUntilClosed });
    if (this.outbound) {
      this.listeners?.stopAccepting();
      const closing = this.outbound.stopAccepting();
      const tunnelClosing = this.tunnelServer?.close();
      const inflight = () => this.http.active + this.tunnelHttp.active;
      if (drainMs > 0 && inflight() > 0) {
        this.log.info({ inflight: inflight(), drainMs }, 'draining in-flight requests');
        await Promise.race([Promise.all([this.http.idle(), this.tunnelHttp.idle()]), new Promise((r) => setTimeout(r, drainMs).unref())]);
      }
      this.http.server.closeIdleConnections?.();
      this.tunnelHttp.server.closeIdleConnections?.();
      this.outbound.destroyAll();
      this.tunnel?.close();
      await this.tunnelServer?.close({ destroy: true });
      await tunnelClosing;
      await closing;
    }
    await workersStopped;
    await this.plaintextInbound?.close();
    await this.http?.close();
    await this.tunnelHttp?.close();
    this.identities?.stop();
    this.clusters.stop();
    this.mirror?.close();
    await this.admin?.close();
    this.enforcer?.close();
    this.datapath?.close();
    await this.opts.discovery.stop();
    await this.slot?.close();
    this.log.info(this.successor ? { successor: this.successor.pid } : {}, 'agent stopped');
    this.resolveFinished();
  }
}
