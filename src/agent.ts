import type { MeshConfig } from './config/types.js';
import type { Discovery } from './discovery/types.js';
import { StateStore } from './state/store.js';
import { ClusterManager } from './cluster/manager.js';
import { Metrics } from './telemetry/metrics.js';
import { createLogger, type Logger } from './telemetry/log.js';
import { AdminServer } from './admin/server.js';
import { HttpProxy } from './proxy/http.js';
import { OutboundListener } from './proxy/outbound.js';
import { MeshTransport } from './proxy/transport.js';
import type { OrigDstLookup, SourceLookup } from './proxy/context.js';
import { CaptureManager } from './capture/manager.js';
import { Datapath } from './capture/datapath.js';
import type { ConfigError } from './errors.js';
import { Enforcer } from './authz/enforcer.js';

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
  private outbound!: OutboundListener;
  private admin!: AdminServer;
  private capture?: CaptureManager;
  private enforcer!: Enforcer;
  private datapath?: Datapath;
  private ready = false;
  private draining = false;
  private lastRejection?: { at: string; problems: string[] };
  private readonly startedAt = new Date().toISOString();

  private constructor(private readonly opts: AgentOptions) {
    this.log = opts.log ?? createLogger();
    this.clusters = new ClusterManager(this.state, this.metrics, this.log);
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
  get addresses(): { outbound: number; admin: number; metrics: number } {
    const port = (s: { address(): unknown }) => (s.address() as { port: number }).port;
    return { outbound: port(this.outbound.server), admin: port(this.admin.admin), metrics: port(this.admin.metrics) };
  }

  private async run(): Promise<void> {
    const { discovery } = this.opts;
    const cfg = await discovery.start();
    this.state.apply(cfg);
    this.clusters.sync();
    const log = this.log;

    const enforcer = (this.enforcer = new Enforcer(this.state, this.metrics, log));
    // Same-node traffic is authorized here, where the destination lives; the source is the
    // workload whose cgroup made the connection (never its source IP alone).
    this.http = new HttpProxy({
      clusters: this.clusters,
      transport: this.transport,
      metrics: this.metrics,
      log: log.child({ component: 'http' }),
      authorize: (ctx, ep, req) => enforcer.http(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep, req),
    });
    const capture = this.opts.capture ?? true;
    const origDst: OrigDstLookup | undefined = this.opts.origDst ?? (capture ? (s) => this.datapath!.origDst(s) : undefined);
    if (!origDst) throw new Error('capture is off and no original-destination lookup was given');
    const source: SourceLookup =
      this.opts.sourceLookup ?? ((od) => (od.cgroupId !== undefined ? this.capture?.workloadByCgroupId(od.cgroupId) : undefined));
    this.outbound = new OutboundListener({
      state: this.state,
      origDst,
      source,
      http: this.http,
      tcp: {
        clusters: this.clusters,
        transport: this.transport,
        metrics: this.metrics,
        log: log.child({ component: 'tcp' }),
        authorize: (ctx, ep) => (ep.info.local ? enforcer.tcp(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep) : { allowed: true }),
        // Opened below, with capture; until then (and without capture) every L4 byte is piped here.
        splice: (down, up, o) => this.datapath?.splice(down, up, o) ?? 'off',
      },
      metrics: this.metrics,
      log: log.child({ component: 'outbound' }),
    });
    this.admin = new AdminServer({
      registry: this.metrics.registry,
      ready: () => this.readiness(),
      configDump: () => this.configDump(),
      log: log.child({ component: 'admin' }),
    });

    const { ports, node } = cfg;
    await this.outbound.listen(node.address, ports.outbound).catch((err: Error) => {
      throw new Error(`cannot listen on outbound ${node.address}:${ports.outbound}: ${err.message}`);
    });
    await this.admin.listen('127.0.0.1', ports.admin, node.address, ports.metrics).catch((err: Error) => {
      throw new Error(`cannot listen on admin 127.0.0.1:${ports.admin} / metrics ${node.address}:${ports.metrics}: ${err.message}`);
    });

    if (capture) {
      this.datapath = Datapath.open({
        pinRoot: this.opts.pinRoot,
        nodeIp: node.address,
        outboundPort: this.addresses.outbound,
        splice: this.opts.l4Splice ?? process.env.WEFT_L4_SPLICE !== '0',
        log: log.child({ component: 'datapath' }),
      });
      this.capture = new CaptureManager(this.state, this.datapath, this.metrics, log);
      this.capture.start();
    }

    discovery.on('update', (next: MeshConfig) => this.onUpdate(next));
    discovery.on('rejected', (err: ConfigError) => {
      this.metrics.configRejected.inc();
      this.lastRejection = { at: new Date().toISOString(), problems: err.problems ?? [err.message] };
      log.error({ problems: err.problems, err: err.message }, 'config rejected; the last good config stays in force');
    });
    this.ready = true;
    log.info(
      { node: node.name, address: node.address, ports: { ...ports, outbound: this.addresses.outbound }, capture, services: cfg.services.length, workloads: cfg.workloads.length },
      'agent ready',
    );
  }

  private onUpdate(next: MeshConfig): void {
    const prev = this.state.config;
    if (JSON.stringify(prev.ports) !== JSON.stringify(next.ports) || prev.node.address !== next.node.address) {
      this.log.warn({ ports: next.ports, address: next.node.address }, 'node address or ports changed: restart the agent to apply them; the rest of the change is applied now');
    }
    this.state.apply(next);
    this.enforcer.update(next);
    this.clusters.sync();
    this.capture?.reconcile();
    const live = new Set<string>();
    for (const c of this.clusters.all()) for (const id of c.endpoints.keys()) live.add(id);
    this.http.prune(live);
    this.log.info({ generation: this.state.generation, services: next.services.length, workloads: next.workloads.length }, 'config applied');
  }

  private readiness(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (!this.ready) reasons.push('starting');
    if (this.draining) reasons.push('draining');
    return { ready: reasons.length === 0, reasons };
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
      clusters: [...this.clusters.all()].map((c) => c.describe()),
      capture: this.capture?.describe() ?? 'disabled',
      authorization: this.enforcer?.describe(),
    };
  }

  /**
   * Drain and stop: readiness fails, the listener stops accepting, in-flight requests get
   * `drainMs` to finish, then every connection is closed. BPF links stay pinned: pods stay
   * captured and the next agent adopts them.
   */
  async stop(opts: { drainMs?: number } = {}): Promise<void> {
    const drainMs = opts.drainMs ?? this.state.config?.agent.drainTimeout ?? 20_000;
    this.draining = true;
    this.capture?.stop();
    if (this.outbound) {
      const closing = this.outbound.stopAccepting();
      if (drainMs > 0 && this.http.active > 0) {
        this.log.info({ inflight: this.http.active, drainMs }, 'draining in-flight requests');
        await Promise.race([this.http.idle(), new Promise((r) => setTimeout(r, drainMs).unref())]);
      }
      this.http.server.closeIdleConnections?.();
      this.outbound.destroyAll();
      await closing;
    }
    await this.http?.close();
    this.clusters.stop();
    await this.admin?.close();
    this.enforcer?.close();
    this.datapath?.close();
    await this.opts.discovery.stop();
    this.log.info('agent stopped');
  }
}
