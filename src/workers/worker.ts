/**
 * A worker thread of the agent (src/workers/pool.ts starts it): it serves its share of the
 * connections of every proxy listener (outbound 15001, inbound 15006, tunnel 15008: it accepts
 * on its own fd of each of the agent's listening sockets, beside the control thread), with its
 * own state store, clusters (balancer state per worker, as Envoy's), L7/L4 proxies, kernel L4
 * splice, tunnel client and server. The listener caps are the agent's (a shared buffer). The control thread owns discovery,
 * capture, identity and health: this thread only applies the snapshots it sends (config,
 * endpoint health and ejections, breaker states, certificates, who is calling), and sends
 * back what the control thread decides on (request outcomes, breaker verdicts) and what
 * comes out as one agent's (log lines, metrics).
 */
import type { ListenOptions } from 'node:net';
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { listen } from '../listen.js';
import pino from 'pino';
import { Enforcer } from '../authz/enforcer.js';
import { OrigDstTable, ThreadSplice } from '../capture/datapath.js';
import { ClusterManager } from '../cluster/manager.js';
import type { ConnContext, OrigDstLookup, SourceLookup } from '../proxy/context.js';
import { HboneTunnel } from '../proxy/hbone-tunnel.js';
import { MeshTransport } from '../proxy/transport.js';
import { StateStore } from '../state/store.js';
import { isoTime } from '../telemetry/log.js';
import { Metrics } from '../telemetry/metrics.js';
import { WorkerIdentities } from './identities.js';
import { MemoryRelease } from './memory.js';
import { outboundPlane, type PlaneDeps } from './plane.js';
import { Mirror } from '../proxy/l7/mirror.js';
import type { RequestView } from '../proxy/l7/request.js';
import type { Endpoint } from '../cluster/endpoint.js';
import { HttpProxy } from '../proxy/http.js';
import { inboundTransport } from '../proxy/inbound.js';
import { PlaintextInbound } from '../proxy/inbound-plaintext.js';
import { TunnelServer } from '../proxy/tunnel-server.js';
import { DownstreamCaps, SharedConnCounts } from '../proxy/downstream-caps.js';
import type { FromWorker, Outcome, SourceRoutes, ToWorker, Verdict, WorkerInit } from './protocol.js';

/** Log lines leave in batches: at most this many bytes or this many ms after the first. */
const LOG_BATCH = 32 * 1024;
const LOG_FLUSH_MS = 50;
/** Memory is given back this long after the last of a run of config changes (memory.ts). */
const RELEASE_DELAY_MS = 1_000;
/** At most one heap release per 30 s after config changes (MemoryRelease says why). */
const RELEASE_MIN_INTERVAL_MS = 30_000;

/** A pino destination that hands batches of lines to the control thread, which writes them with its own. */
class PortLines {
  private parts: string[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly port: MessagePort) {}

  write(line: string): boolean {
    this.parts.push(line);
    this.bytes += line.length;
    if (this.bytes >= LOG_BATCH) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), LOG_FLUSH_MS);
      this.timer.unref();
    }
    return true;
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.parts.length === 0) return;
    const text = this.parts.join('');
    this.parts = [];
    this.bytes = 0;
    this.send({ t: 'log', text });
  }

  send(m: FromWorker): void {
    this.port.postMessage(m);
  }
}

/**
 * One copy of each distinct string of a config that came as a message: structured clone
 * copies every string value (a node name, a namespace, a label repeated on 10,000 workloads
 * arrives as 10,000 strings), and this thread keeps the config for as long as it is current.
 * About 1.5 MB less per worker at 1,000 workloads + 10,000 endpoints.
 */
function interned<T>(value: T): T {
  const seen = new Map<string, string>();
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') {
      const had = seen.get(v);
      if (had !== undefined) return had;
      seen.set(v, v);
      return v;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) v[i] = walk(v[i]);
    } else if (v !== null && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      for (const k of Object.keys(o)) o[k] = walk(o[k]);
    }
    return v;
  };
  return walk(value) as T;
}

async function main(): Promise<void> {
  const port = parentPort!;
  // The snapshot comes as the first message, not as workerData: workerData stays referenced
  // for the thread's life, and a config of 10,000 endpoints with it. Messages that come while
  // this thread starts wait in order.
  const early: ToWorker[] = [];
  let handle: ((m: ToWorker) => void) | undefined;
  const init = await new Promise<WorkerInit>((resolve) => {
    port.on('message', (m: ToWorker) => {
      if (m.t === 'init') resolve(m.init);
      else if (handle) handle(m);
      else early.push(m);
    });
  });
  const { index } = workerData as { index: number };
  const lines = new PortLines(port);
  const send = (m: FromWorker): void => lines.send(m);
  const log = pino({ level: init.logLevel, base: { pid: process.pid, worker: init.index }, timestamp: isoTime }, lines);
  const metrics = new Metrics();
  const state = new StateStore();
  state.apply(interned(init.config));

  // Outcomes and verdicts leave once per turn of the event loop, batched.
  let outcomes: Outcome[] = [];
  let verdicts: Verdict[] = [];
  let scheduled = false;
  const flushOutcomes = (): void => {
    scheduled = false;
    send({ t: 'outcomes', outcomes, verdicts });
    outcomes = [];
    verdicts = [];
  };
  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(flushOutcomes);
  };
  const clusters = new ClusterManager(state, metrics, log, Date.now, {
    follower: {
      outcome(cluster, endpoint, result, latencyMs) {
        outcomes.push([cluster, endpoint, result, latencyMs]);
        schedule();
      },
      verdict(cluster, ok, wasProbe) {
        verdicts.push([cluster, ok, wasProbe]);
        schedule();
      },
    },
  });
  clusters.sync();
  const adoptHealth = (list: WorkerInit['health']): void => {
    for (const h of list) clusters.get(h.key)?.adoptHealth(h);
  };
  adoptHealth(init.health);

  const enforcer = new Enforcer(state, metrics, log);
  const identities = new WorkerIdentities(init.trustDomain, init.rootPem, state);
  for (const c of init.certs) identities.put(c);
  const transport = new MeshTransport();
  const tunnel = new HboneTunnel({
    identities,
    peerOf: (name) => {
      const n = state.config.nodes?.find((x) => x.name === name);
      return n ? { host: n.address, port: state.config.ports.tunnel } : undefined;
    },
    localAddress: init.config.node.address,
    log: log.child({ component: 'tunnel' }),
  });
  transport.setTunnel(tunnel);

  let sources = new Map(init.sources);
  let routes = new Map<string, SourceRoutes[number][1]>(init.routes ?? []);
  // The pinned BPF map of original destinations, opened again in this thread (the map is the
  // kernel's: every thread reads the same entries; the one that accepted the socket removes it).
  const table = init.pinRoot ? OrigDstTable.open(init.pinRoot) : undefined;
  const origDst: OrigDstLookup = table
    ? (s) => table.lookup(s)
    : (s) => {
        const r = routes.get(s.remoteAddress ?? '');
        return r ? { ip: r.ip, port: r.port } : undefined;
      };
  const source: SourceLookup = (od, srcIp) => {
    const key = od.cgroupId !== undefined ? sources.get(String(od.cgroupId)) : routes.get(srcIp)?.workload;
    if (!key) return undefined;
    const i = key.indexOf('/');
    return state.workload(key.slice(0, i), key.slice(i + 1));
  };

  const mirror = new Mirror(transport, log.child({ component: 'mirror' }));
  // The kernel splice of L4 connections, with this thread's own socket maps: a socket can only
  // be spliced by the event loop that owns it (capture/datapath.ts ThreadSplice).
  const splicer = init.splice && init.pinRoot ? ThreadSplice.open({ pinRoot: init.pinRoot, log: log.child({ component: 'datapath' }) }) : undefined;
  const splice: PlaneDeps['splice'] = splicer ? (down, up, o) => splicer.splice(down, up, o) : undefined;
  const plane = outboundPlane({ state, clusters, transport, metrics, log, enforcer, origDst, source, mirror, splice });
  const { tcp } = plane;
  // The inbound listeners, as the control thread has them: the tunnel (15008) and the
  // permissive plaintext inbound (15006), each on this thread's own fd of the agent's socket.
  const authorizeHttp = (ctx: ConnContext, ep: Endpoint, req: RequestView) => enforcer.http(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep, req);
  const tunnelHttp = new HttpProxy({
    clusters,
    transport: inboundTransport('mutual_tls'),
    metrics,
    log: log.child({ component: 'http', entry: 'tunnel' }),
    authorize: authorizeHttp,
    mirror,
  });
  const plaintextInbound = new PlaintextInbound({
    state,
    inbound: { http: plane.http, tcp: { ...tcp, log: log.child({ component: 'tcp', entry: 'plaintext' }) }, security: 'none' },
    log: log.child({ component: 'inbound' }),
  });
  const tunnelServer = new TunnelServer({
    state,
    identities,
    inbound: { http: tunnelHttp, tcp: { ...tcp, log: log.child({ component: 'tcp', entry: 'tunnel' }) }, security: 'mutual_tls' },
    log: log.child({ component: 'tunnel-server' }),
  });
  // The caps are the agent's: every thread counts in the shared buffer and checks the sum.
  const caps = new DownstreamCaps(metrics, log.child({ component: 'listeners' }), new SharedConnCounts(init.caps, init.index));
  caps.attach('outbound', plane.outbound.server);
  caps.attach('inbound', plaintextInbound.server);
  caps.attach('tunnel', tunnelServer.server);
  await listen(plane.outbound.server, { fd: init.outboundFd } as ListenOptions);
  await listen(plaintextInbound.server, { fd: init.inboundFd } as ListenOptions);
  await listen(tunnelServer.server, { fd: init.tunnelFd } as ListenOptions);

  const stopAccepting = (): Promise<unknown> => {
    const closeListening = (server: { listening: boolean; close(cb: () => void): unknown }) => new Promise<void>((r) => (server.listening ? server.close(() => r()) : r()));
    return Promise.all([plane.outbound.server.listening ? plane.outbound.stopAccepting() : undefined, closeListening(plaintextInbound.server), closeListening(tunnelServer.server)]);
  };

  // After a config change, once the run of changes is over; the heap of this thread, and malloc's arenas.
  const release = new MemoryRelease(log.child({ component: 'memory' }), { heap: true, delayMs: RELEASE_DELAY_MS, minIntervalMs: RELEASE_MIN_INTERVAL_MS });

  const drain = async (ms: number, untilClosed = false): Promise<void> => {
    release.cancel();
    const closing = stopAccepting();
    const inflight = () => plane.http.active + tunnelHttp.active;
    if (untilClosed) {
      // Replaced by a new agent: keep-alive connections close between requests (connection:
      // close on their next answer, GOAWAY on tunnel sessions), never under a request the
      // client is sending.
      plane.http.drain();
      tunnelHttp.drain();
      tunnelServer.drain();
      const deadline = Date.now() + ms;
      const open = () => plane.outbound.connections + plaintextInbound.connections + tunnelServer.sessionCount;
      while (open() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    } else if (ms > 0 && inflight() > 0) await Promise.race([Promise.all([plane.http.idle(), tunnelHttp.idle()]), new Promise((r) => setTimeout(r, ms).unref())]);
    plane.http.server.closeIdleConnections();
    tunnelHttp.server.closeIdleConnections();
    plane.outbound.destroyAll();
    tunnel.close();
    await tunnelServer.close({ destroy: true });
    await plaintextInbound.close();
    await closing;
    await plane.http.close();
    await tunnelHttp.close();
    clusters.stop();
    enforcer.close();
    mirror.close();
    splicer?.close();
    table?.close();
    if (scheduled) flushOutcomes();
    lines.flush();
    send({ t: 'drained' });
  };

  handle = (m: ToWorker) => {
    switch (m.t) {
      case 'config': {
        state.apply(interned(m.config));
        enforcer.update(m.config);
        clusters.sync();
        const live = new Set<string>();
        for (const c of clusters.all()) for (const id of c.endpoints.keys()) live.add(id);
        plane.http.prune(live);
        release.schedule('config');
        return;
      }
      case 'health':
        adoptHealth(m.clusters);
        return;
      case 'sources':
        sources = new Map(m.sources);
        return;
      case 'routes':
        routes = new Map(m.routes);
        return;
      case 'cert':
        identities.put(m.cert);
        return;
      case 'metrics':
        void metrics.registry.getMetricsAsJSON().then((json) => send({ t: 'metrics', id: m.id, json }));
        return;
      case 'dump':
        send({
          t: 'dump',
          id: m.id,
          dump: {
            index,
            connections: plane.outbound.connections,
            inboundConnections: plaintextInbound.connections,
            tunnel: tunnelServer.describe(),
            spliced: splicer?.size ?? 'off',
            inflight: plane.http.active + tunnelHttp.active,
            mirror: { ...mirror.stats },
            // Memory given back after bursts (memory.ts), and this thread's heap now.
            memory: release.describe(),
            clusters: [...clusters.all()].map((c) => c.describe()),
          },
        });
        return;
      case 'stop-accepting':
        // A successor agent accepts from now on; what this worker holds finishes here.
        void stopAccepting().then(() => send({ t: 'stopped-accepting', id: m.id }));
        return;
      case 'handed-over':
        plane.http.drain();
        tunnelHttp.drain();
        tunnelServer.drain();
        return;
      case 'drain':
        void drain(m.ms, m.untilClosed);
        return;
      case 'init':
        return;
    }
  };
  for (const m of early.splice(0)) handle(m);
  send({ t: 'ready' });
  // The snapshot is applied: what its arrival grew this heap to goes back (memory.ts).
  release.now('start');
}

main().catch((err: unknown) => {
  // Thrown out of the thread: the control thread logs it and starts this worker again.
  throw err;
});
