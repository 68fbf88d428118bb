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
import type { ConnContext, OrigDstLookup, SourceLookup } from './proxy/context.js';
import type { Endpoint } from './cluster/endpoint.js';
import type { RequestView } from './proxy/l7/request.js';
import { CaptureManager } from './capture/manager.js';
import { Datapath } from './capture/datapath.js';
import { SocketLb } from './capture/socket-lb.js';
import type { ConfigError } from './errors.js';
import { Enforcer } from './authz/enforcer.js';
import { setProbeSourceAddress } from './health/probe.js';
import { CertManager } from './identity/cert-manager.js';
import { createCertificateSigner } from './identity/ca-client.js';
import { LocalIdentities } from './identity/local-identities.js';
import { HboneTunnel } from './proxy/hbone-tunnel.js';
import { TunnelServer } from './proxy/tunnel-server.js';
import { PlaintextInbound } from './proxy/inbound-plaintext.js';
import { inboundTransport } from './proxy/inbound.js';
import type { TcpProxyDeps } from './proxy/tcp.js';

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
  /** L7 for connections that came through the tunnel: metrics say `mutual_tls`. */
  private tunnelHttp!: HttpProxy;
  private outbound!: OutboundListener;
  private identities?: LocalIdentities;
  private tunnel?: HboneTunnel;
  private tunnelServer?: TunnelServer;
  private plaintextInbound?: PlaintextInbound;
  private admin!: AdminServer;
  private capture?: CaptureManager;
  private socketLb?: SocketLb;
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
    // Same-node traffic is authorized here, where the destination lives; the source is the
    // workload whose cgroup made the connection (never its source IP alone). Tunnelled
    // traffic is authorized by the destination's agent with the verified peer (ctx.peer).
    const authorizeHttp = (ctx: ConnContext, ep: Endpoint, req: RequestView) =>
      enforcer.http(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep, req);
    this.http = new HttpProxy({
      clusters: this.clusters,
      transport: this.transport,
      metrics: this.metrics,
      log: log.child({ component: 'http' }),
      authorize: authorizeHttp,
    });
    this.tunnelHttp = new HttpProxy({
      clusters: this.clusters,
      transport: inboundTransport('mutual_tls'),
      metrics: this.metrics,
      log: log.child({ component: 'http', entry: 'tunnel' }),
      authorize: authorizeHttp,
    });
    const capture = this.opts.capture ?? true;
    const origDst: OrigDstLookup | undefined = this.opts.origDst ?? (capture ? (s) => this.datapath!.origDst(s) : undefined);
    if (!origDst) throw new Error('capture is off and no original-destination lookup was given');
    const source: SourceLookup =
      this.opts.sourceLookup ?? ((od) => (od.cgroupId !== undefined ? this.capture?.workloadByCgroupId(od.cgroupId) : undefined));
    const tcp: TcpProxyDeps = {
      clusters: this.clusters,
      transport: this.transport,
      metrics: this.metrics,
      log: log.child({ component: 'tcp' }),
      authorize: (ctx, ep) => (ep.info.local ? enforcer.tcp(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep) : { allowed: true }),
      // Opened below, with capture; until then (and without capture) every L4 byte is piped here.
      splice: (down, up, o) => this.datapath?.splice(down, up, o) ?? 'off',
    };
    this.outbound = new OutboundListener({
      state: this.state,
      origDst,
      source,
      http: this.http,
      tcp,
      metrics: this.metrics,
      log: log.child({ component: 'outbound' }),
    });
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
    this.plaintextInbound = new PlaintextInbound({
      state: this.state,
      inbound: { http: this.http, tcp: { ...tcp, log: log.child({ component: 'tcp', entry: 'plaintext' }) }, security: 'none' },
      log: log.child({ component: 'inbound' }),
    });
    this.admin = new AdminServer({
      registry: this.metrics.registry,
      ready: () => this.readiness(),
      configDump: () => this.configDump(),
      log: log.child({ component: 'admin' }),
    });

    const { ports, node } = cfg;
    setProbeSourceAddress(node.address);
    await this.outbound.listen(node.address, ports.outbound).catch((err: Error) => {
      throw new Error(`cannot listen on outbound ${node.address}:${ports.outbound}: ${err.message}`);
    });
    await this.admin.listen('127.0.0.1', ports.admin, node.address, ports.metrics).catch((err: Error) => {
      throw new Error(`cannot listen on admin 127.0.0.1:${ports.admin} / metrics ${node.address}:${ports.metrics}: ${err.message}`);
    });
    await this.tunnelServer.listen(node.address, ports.tunnel).catch((err: Error) => {
      throw new Error(`cannot listen on tunnel ${node.address}:${ports.tunnel}: ${err.message}`);
    });
    await this.plaintextInbound.listen(node.address, ports.inbound).catch((err: Error) => {
      throw new Error(`cannot listen on inbound ${node.address}:${ports.inbound}: ${err.message}`);
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
      if (this.opts.socketLb ?? process.env.WEFT_L4_SOCKET_LB !== '0') {
        const capture = this.capture;
        this.socketLb = new SocketLb({
          state: this.state,
          clusters: this.clusters,
          datapath: this.datapath,
          governed: (w) => enforcer.governs(w),
          workloadByCgroupId: (id) => capture.workloadByCgroupId(id),
          metrics: this.metrics,
          log,
        });
        this.socketLb.start();
      } else {
        // What an agent before this one left balanced goes back to the agent.
        this.datapath.setBalanced([]);
      }
    }

    discovery.on('update', (next: MeshConfig) => {
      // A bug in applying one change must not take the node's traffic down with it.
      try {
        this.onUpdate(next);
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
    const bound = this.addresses;
    log.info(
      {
        node: node.name,
        address: node.address,
        ports: { ...ports, outbound: bound.outbound, tunnel: bound.tunnel, inbound: bound.inbound },
        capture,
        services: cfg.services.length,
        workloads: cfg.workloads.length,
        peers: (cfg.nodes ?? []).length,
        ca: cfg.ca.url ?? 'embedded',
      },
      'agent ready',
    );
  }

  /**
   * The CA client and the certificates of the local workload identities. Certificates are
   * requested in the background: a CA that is down delays them (the tunnel waits for them,
   * bounded) but does not fail start-up. A CA that cannot be set up at all (an unreadable
   * root file, a state directory that cannot be written for the embedded CA) does.
   */
  private async startIdentity(cfg: MeshConfig): Promise<void> {
    const log = this.log.child({ component: 'identity' });
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
    this.enforcer.update(next);
    this.clusters.sync();
    this.identities?.sync(this.state);
    this.capture?.reconcile();
    this.socketLb?.sync();
    this.warnUnreachableNodes(next);
    const live = new Set<string>();
    for (const c of this.clusters.all()) for (const id of c.endpoints.keys()) live.add(id);
    this.http.prune(live);
    this.tunnelHttp.prune(live);
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
      socketLb: this.socketLb?.describe() ?? 'disabled',
      authorization: this.enforcer?.describe(),
      nodes: cfg.nodes ?? [],
      identity: this.identities
        ? { ca: cfg.ca.url ? { url: cfg.ca.url, rootCert: cfg.ca.rootCert } : 'embedded', trustDomain: cfg.mesh.trustDomain, certificates: this.identities.status() }
        : undefined,
      tunnel: this.tunnelServer ? { server: this.tunnelServer.describe(), sessions: this.tunnel?.describe() } : undefined,
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
    this.socketLb?.stop();
    if (this.outbound) {
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
    await this.plaintextInbound?.close();
    await this.http?.close();
    await this.tunnelHttp?.close();
    this.identities?.stop();
    this.clusters.stop();
    await this.admin?.close();
    this.enforcer?.close();
    this.datapath?.close();
    await this.opts.discovery.stop();
    this.log.info('agent stopped');
  }
}

