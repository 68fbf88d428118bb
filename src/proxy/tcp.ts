import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { ClusterManager } from '../cluster/manager.js';
import type { Endpoint } from '../cluster/endpoint.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import { WeftError } from '../errors.js';
import type { ConnContext } from './context.js';
import { admit, release, settle, type Admission } from './l7/admission.js';
import { EndpointLease, endLease, takeLease } from './l7/attempt.js';
import { routeConnection, pickBackend } from './l7/route.js';
import { peerFields, sourceLabels } from './l7/telemetry.js';
import { errorHeader } from './l7/respond.js';
import { EXTRA_FLAGS, responseFlags } from '../telemetry/access-log.js';
import { sourcePodOf } from '../telemetry/labels.js';
import type { Transport } from './transport.js';
import { hashKey } from '../balancer/hash.js';
import type { SpliceHandle, SpliceOptions } from '../capture/splice.js';

export interface TcpProxyDeps {
  clusters: ClusterManager;
  transport: Transport;
  metrics: Metrics;
  log: Logger;
  /** Called before any byte reaches the upstream: not allowed resets the connection (authorization; the authorizer logs and counts). */
  authorize?: (ctx: ConnContext, ep: Endpoint) => { allowed: boolean; policy?: string };
  /**
   * Splices the two sockets in the kernel (Datapath.splice): returns a handle when it took
   * them, or anything else to have them piped here. Absent: always the userspace pipe.
   */
  splice?: (down: net.Socket, up: net.Socket, opts: SpliceOptions) => SpliceHandle | string;
}

/** Connect attempts to distinct endpoints before the client connection is reset. */
const CONNECT_ATTEMPTS = 3;

/**
 * L4: one upstream connection per downstream connection, spliced both ways. Connect failures
 * are retried on other endpoints; when none answers, the client connection is reset, which
 * is what a TCP client sees when a server refuses it.
 *
 * Once authorized and connected, a plain TCP upstream is spliced to the client in the kernel
 * when `deps.splice` takes the pair (no byte of either socket has been read by then: the client
 * was paused since accept, and nothing awaits between the upstream's connect and here). Else
 * (a tunnel stream, the kernel's maps full, splicing off) the bytes are piped here. Both ways
 * pass half-closes on: a FIN from one side ends the other's write side only.
 */
export async function proxyTcp(down: net.Socket, ctx: ConnContext, deps: TcpProxyDeps): Promise<void> {
  const started = Date.now();
  const { clusters, transport, metrics, log } = deps;
  let adm: Admission;
  try {
    adm = admit(pickBackend(routeConnection(clusters, ctx.target)));
  } catch (err) {
    logRefused(log, ctx, err as WeftError);
    down.resetAndDestroy();
    return;
  }
  const cluster = adm.cluster;
  if (!cluster.limits.tryOpenConnection()) {
    release(adm);
    logRefused(log, ctx, new WeftError('WEFT_ERR_OVERFLOW', `connection limit reached for ${cluster.serviceName}`));
    down.resetAndDestroy();
    return;
  }
  // Hold the client's bytes until the upstream is there.
  down.pause();
  const tried = new Set<Endpoint>();
  const hash = hashKey(ctx.sourceIp);
  let up: Duplex | undefined;
  let ep: Endpoint | undefined;
  const lease = new EndpointLease();
  let lastErr: unknown;
  for (let i = 0; i < CONNECT_ATTEMPTS && !up; i++) {
    ep = cluster.pick({ tried, hash });
    if (!ep || (tried.has(ep) && tried.size >= cluster.endpoints.size)) break;
    tried.add(ep);
    const verdict = deps.authorize?.(ctx, ep);
    if (verdict && !verdict.allowed) {
      release(adm);
      cluster.limits.closeConnection();
      const sec = transport.securityOf(ep);
      log.info(
        {
          ...peerFields(ctx, cluster.serviceName, ep, sec, cluster.key, sec === 'mutual_tls' ? transport.callerPrincipal?.(ctx, ep) : undefined),
          protocol: 'tcp',
          policy: verdict.policy,
          response_flags: responseFlags('WEFT_ERR_DENIED'),
          error: 'denied',
        },
        'access',
      );
      down.resetAndDestroy();
      return;
    }
    takeLease(lease, cluster, ep);
    try {
      up = await transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source: ctx.source });
    } catch (err) {
      endLease(lease, 'connect-failure');
      lastErr = err;
      log.warn({ endpoint: ep.id, service: cluster.serviceName, err: (err as Error).message }, 'upstream connect failed');
    }
  }
  if (!up || !ep) {
    settle(adm, false);
    cluster.limits.closeConnection();
    const e = lastErr instanceof WeftError ? lastErr : new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no endpoint of ${cluster.serviceName} accepted the connection`);
    logRefused(log, ctx, e);
    down.resetAndDestroy();
    return;
  }
  settle(adm, true);
  const endpoint = ep;
  const upstream = up;
  const security = transport.securityOf(endpoint);
  const principal = security === 'mutual_tls' ? transport.callerPrincipal?.(ctx, endpoint) : undefined;
  const labels = { ...sourceLabels(ctx), destination_service: cluster.serviceName, connection_security_policy: security };
  metrics.tcpOpened.inc(labels);
  let sent = 0;
  let received = 0;
  let closed = false;
  let spliced = false;
  const idle = cluster.policy.connectionPool.idleTimeout;
  const finish = (reason: string, error?: string) => {
    if (closed) return;
    closed = true;
    endLease(lease, 'success');
    cluster.limits.closeConnection();
    metrics.tcpClosed.inc(labels);
    metrics.tcpSent.inc(labels, sent);
    metrics.tcpReceived.inc(labels, received);
    log.info(
      {
        ...peerFields(ctx, cluster.serviceName, endpoint, security, cluster.key, principal),
        protocol: 'tcp',
        sent_bytes: sent,
        received_bytes: received,
        close: reason,
        spliced,
        duration_ms: Date.now() - started,
        response_flags: tcpFlags(reason, error),
        error,
      },
      'access',
    );
  };
  if (deps.splice && upstream instanceof net.Socket && security === 'none') {
    const handle = deps.splice(down, upstream, {
      idleTimeoutMs: idle,
      onEnd: (r) => {
        sent = r.sent;
        received = r.received;
        finish(r.reason, r.error);
      },
    });
    if (typeof handle !== 'string') {
      spliced = true;
      return;
    }
  }
  // Half-closes pass through: each side's FIN ends the other's write side (pipe() does that),
  // and a TCP socket closes once both of its directions are done, instead of ending its own
  // write side at the FIN it reads (net's default), which would cut the answer to a client
  // that half-closed after its request. (A tunnel stream keeps its own rules.)
  for (const s of [down, upstream]) if (s instanceof net.Socket) s.allowHalfOpen = true;
  down.on('data', (b: Buffer) => {
    sent += b.length;
  });
  upstream.on('data', (b: Buffer) => {
    received += b.length;
  });
  down.pipe(upstream);
  upstream.pipe(down);
  if (idle > 0) {
    down.setTimeout(idle, () => {
      down.destroy();
      upstream.destroy();
      finish('idle_timeout');
    });
  }
  down.on('error', () => {
    upstream.destroy();
  });
  upstream.on('error', () => {
    down.resetAndDestroy();
  });
  down.on('close', () => {
    upstream.end();
    finish('downstream_close');
  });
  upstream.on('close', () => {
    if (!down.destroyed) down.end();
    finish('upstream_close');
  });
  down.resume();
}

/**
 * %RESPONSE_FLAGS% of a TCP connection that reached an upstream: none for a close by either
 * side; an error on the way (a reset) is the upstream's (UR) unless the client's side closed
 * first (DC); an idle timeout is Envoy's stream idle timeout (SI).
 */
function tcpFlags(close: string, error: string | undefined): string {
  if (close === 'idle_timeout') return EXTRA_FLAGS.idleTimeout;
  if (error === undefined) return '-';
  return close === 'downstream_close' ? EXTRA_FLAGS.downstreamClosed : EXTRA_FLAGS.upstreamReset;
}

function logRefused(log: Logger, ctx: ConnContext, err: WeftError): void {
  log.warn(
    {
      direction: ctx.peer !== undefined ? 'inbound' : 'outbound',
      src_workload: sourcePodOf(ctx.source, ctx.described),
      src_ip: ctx.sourceIp,
      principal: ctx.peer?.principal,
      dst: `${ctx.origIp}:${ctx.origPort}`,
      protocol: 'tcp',
      response_flags: responseFlags(err.code),
      error: errorHeader(err.code),
      reason: err.message,
    },
    'access: connection refused',
  );
}
