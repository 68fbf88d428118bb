/**
 * The outbound data plane, as the control thread and every worker thread build it: the L7
 * proxy (HttpProxy), the L4 proxy's dependencies and the outbound listener (15001), over a
 * state store, its clusters, a transport and the authorization enforcer.
 */
import type { Mirror } from '../proxy/l7/mirror.js';
import type { RequestView } from '../proxy/l7/request.js';
import type { Enforcer } from '../authz/enforcer.js';
import type { ClusterManager } from '../cluster/manager.js';
import type { Endpoint } from '../cluster/endpoint.js';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ConnContext, OrigDstLookup, SourceLookup } from '../proxy/context.js';
import { HttpProxy } from '../proxy/http.js';
import { OutboundListener } from '../proxy/outbound.js';
import type { TcpProxyDeps } from '../proxy/tcp.js';
import type { Transport } from '../proxy/transport.js';

export interface PlaneDeps {
  state: StateStore;
  clusters: ClusterManager;
  transport: Transport;
  metrics: Metrics;
  log: Logger;
  enforcer: Enforcer;
  origDst: OrigDstLookup;
  source: SourceLookup;
  /** The kernel splice for L4 (the control thread's Datapath); absent: userspace pipe. */
  splice?: TcpProxyDeps['splice'];
  /** Sends routes' RequestMirror copies; absent, mirrors are not sent. */
  mirror?: Mirror;
}

export interface OutboundPlane {
  http: HttpProxy;
  tcp: TcpProxyDeps;
  outbound: OutboundListener;
}

export function outboundPlane(d: PlaneDeps): OutboundPlane {
  const { enforcer, log } = d;
  // Same-node traffic is authorized here, where the destination lives; the source is the
  // workload whose cgroup made the connection (never its source IP alone). Tunnelled
  // traffic is authorized by the destination's agent with the verified peer (ctx.peer).
  const authorizeHttp = (ctx: ConnContext, ep: Endpoint, req: RequestView) => enforcer.http(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep, req);
  const http = new HttpProxy({ clusters: d.clusters, transport: d.transport, metrics: d.metrics, log: log.child({ component: 'http' }), authorize: authorizeHttp, mirror: d.mirror });
  const tcp: TcpProxyDeps = {
    clusters: d.clusters,
    transport: d.transport,
    metrics: d.metrics,
    log: log.child({ component: 'tcp' }),
    authorize: (ctx, ep) => (ep.info.local ? enforcer.tcp(ctx.peer ?? enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep) : { allowed: true }),
    splice: d.splice,
  };
  const outbound = new OutboundListener({ state: d.state, origDst: d.origDst, source: d.source, http, tcp, metrics: d.metrics, log: log.child({ component: 'outbound' }) });
  return { http, tcp, outbound };
}
