/**
 * One telemetry record for L4 connections and L7 requests: the same source labels, the same
 * access-log fields for who called what, whichever path carried the traffic.
 *
 * For L7, labels and the bound access logger are cached per connection, then per endpoint
 * (or service) and status, so the common path finds them without building a key; the
 * request counter and the duration histogram are added up per event-loop turn (one
 * prom-client update per label set).
 */
import type { Cluster } from '../../cluster/cluster.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import type { WeftErrorCode } from '../../errors.js';
import { LineShape, type Logger } from '../../telemetry/log.js';
import { HistogramBatch, type Metrics } from '../../telemetry/metrics.js';
import type { ConnContext } from '../context.js';
import { destinationLabelsOf, sourceLabelsOf, sourcePodOf, type SourceLabels } from '../../telemetry/labels.js';
import { EXTRA_FLAGS, responseFlags, upstreamCluster } from '../../telemetry/access-log.js';
import { errorHeader } from './respond.js';

/**
 * Metric labels of the caller (src/telemetry/labels.ts); on the tunnel's far end, for a caller
 * not known here, what its agent described (checked against the verified peer), else the
 * verified peer's namespace.
 */
export function sourceLabels(ctx: ConnContext): SourceLabels {
  return sourceLabelsOf(ctx.source, ctx.peer?.namespace, ctx.described);
}

export function targetName(ctx: ConnContext): string {
  return ctx.target.kind === 'service' ? `${ctx.target.service.namespace}/${ctx.target.service.name}` : 'unknown';
}

/**
 * Who called what: the fields of every access-log line, L4 and L7, in the order of
 * src/telemetry/access-log.ts (the schema). `clusterKey` is the weft cluster that served the
 * call (upstream_cluster); `principal` the caller's mTLS identity, when mTLS carried the call.
 */
export function peerFields(ctx: ConnContext, service: string, ep: Endpoint | undefined, security: 'mutual_tls' | 'none', clusterKey?: string, principal?: string) {
  const inbound = ctx.peer !== undefined;
  return {
    direction: inbound ? 'inbound' : 'outbound',
    src_workload: sourcePodOf(ctx.source, ctx.described),
    src_ip: ctx.sourceIp,
    principal: ctx.peer?.principal ?? principal,
    dst: `${ctx.origIp}:${ctx.origPort}`,
    dst_service: service,
    dst_workload: ep ? `${ep.info.namespace}/${ep.info.workload}` : undefined,
    endpoint: ep?.id,
    upstream_cluster: clusterKey === undefined ? undefined : upstreamCluster(clusterKey, inbound),
    security,
  };
}

/** The caller's identity as the transport presents it over mTLS (outbound), for `principal`. */
export type CallerPrincipal = (ctx: ConnContext, ep: Endpoint) => string | undefined;

interface RequestLabels {
  requests: Record<string, string>;
  /** Durations observed since the last flush to prom-client (and its labels). */
  duration: HistogramBatch;
  /** Requests counted since the last flush to prom-client. */
  pending: number;
}

/** Per client connection: the access logger and metric labels, per endpoint (or service) and status. */
export interface ConnTelemetry {
  log: Logger | undefined;
  byStatus: Map<number, RequestLabels>;
}

/** A connection (HTTP/1.1) or session (HTTP/2) keeps its calls' telemetry here. */
export interface TelemetryConn {
  readonly telemetry: Map<Endpoint | string, ConnTelemetry>;
}

/** What one finished request tells telemetry. */
export interface RequestRecord {
  readonly ctx: ConnContext;
  readonly conn: TelemetryConn;
  readonly ep: Endpoint | undefined;
  readonly cluster: Cluster | undefined;
  readonly method: string;
  readonly path: string;
  readonly authority: string | undefined;
  readonly attempts: number;
  /** performance.now() when the request started. */
  readonly startedAt: number;
  /** The answer's grpc-status; undefined for plain HTTP. */
  readonly grpcStatus: number | undefined;
  /** `http/1.1` or `h2`. */
  readonly protocol: string;
  /** The route (`ns/name`) and rule (name or index) that decided, on a port with routes. */
  readonly routeName?: string | undefined;
  readonly ruleName?: string | undefined;
  /** x-request-id: the caller's, or the one the codec made and sent upstream. */
  readonly requestId?: string | undefined;
  /** The client went away before the answer was complete (Envoy DC). */
  readonly clientLeft?: boolean;
  /** A fault rule aborted (FI) or delayed (DI) the request. */
  readonly faultAborted?: boolean;
  readonly faultDelayed?: boolean;
}

/** %RESPONSE_FLAGS% of one request (src/telemetry/access-log.ts says what each flag means). */
export function requestFlags(r: RequestRecord, status: number, error: WeftErrorCode | undefined): string {
  if (error === undefined && r.attempts <= 1 && !r.clientLeft && !r.faultAborted && !r.faultDelayed) return '-';
  const extra: string[] = [];
  if (r.attempts > 1 && (error !== undefined || status >= 500)) extra.push(EXTRA_FLAGS.retryLimitExceeded);
  if (r.clientLeft) extra.push(EXTRA_FLAGS.downstreamClosed);
  if (r.faultAborted) extra.push(EXTRA_FLAGS.faultAbort);
  if (r.faultDelayed) extra.push(EXTRA_FLAGS.faultDelay);
  return responseFlags(error, extra);
}

/**
 * The fields of an L7 access line after the connection's bound ones, in this order
 * (src/telemetry/access-log.ts is the schema); `record` passes the values in the same order.
 */
const ACCESS_LINE = new LineShape(
  ['protocol', 'request_id', 'method', 'path', 'host', 'status', 'grpc_status', 'attempts', 'route', 'rule', 'duration_ms', 'response_flags', 'error', 'reason'],
  'access',
);

export class L7Telemetry {
  private readonly labels = new Map<string, RequestLabels>();
  private readonly accessLogs = new Map<string, Logger>();
  private readonly dirty: RequestLabels[] = [];
  private flushScheduled = false;
  private readonly retryLabels = new WeakMap<Cluster, Record<string, string>>();

  constructor(
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly securityOf: (ep: Endpoint) => 'mutual_tls' | 'none',
    private readonly principalOf?: CallerPrincipal,
  ) {}

  retried(cluster: Cluster): void {
    let l = this.retryLabels.get(cluster);
    if (l === undefined) this.retryLabels.set(cluster, (l = { destination_service: cluster.serviceName }));
    this.metrics.retries.inc(l);
  }

  /** Access log line and metrics for one answered request. */
  record(r: RequestRecord, status: number, error?: WeftErrorCode, reason?: string): void {
    const secs = (performance.now() - r.startedAt) / 1000;
    const ep = r.ep;
    const where: Endpoint | string = ep ?? r.cluster?.serviceName ?? targetName(r.ctx);
    const tel = r.conn.telemetry;
    let byWhere = tel.get(where);
    if (byWhere === undefined) tel.set(where, (byWhere = { log: undefined, byStatus: new Map() }));
    const g = r.grpcStatus;
    // gRPC answers are 200s told apart by grpc-status: one label set per pair.
    const key = g === undefined ? status : status * 100 + g + 1;
    let labels = byWhere.byStatus.get(key);
    if (labels === undefined) byWhere.byStatus.set(key, (labels = this.labelsFor(r, status)));
    if (labels.pending++ === 0) this.dirty.push(labels);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushCounts);
    }
    labels.duration.observe(secs);
    if (!this.log.isLevelEnabled('info')) return;
    ACCESS_LINE.write((byWhere.log ??= this.accessLogFor(r)), [
      r.protocol,
      r.requestId,
      r.method,
      r.path,
      r.authority,
      status,
      g,
      r.attempts,
      r.routeName,
      r.ruleName,
      Math.round(secs * 100000) / 100,
      requestFlags(r, status, error),
      error ? errorHeader(error) : undefined,
      reason,
    ]);
  }

  private readonly flushCounts = (): void => {
    this.flushScheduled = false;
    const requests = this.metrics.requests;
    for (const l of this.dirty) {
      requests.inc(l.requests, l.pending);
      l.pending = 0;
      l.duration.flush();
    }
    this.dirty.length = 0;
  };

  private labelsFor(r: RequestRecord, status: number): RequestLabels {
    const ctx = r.ctx;
    const ep = r.ep;
    const service = r.cluster?.serviceName ?? targetName(ctx);
    const security = ep ? this.securityOf(ep) : 'none';
    const { source_workload, source_namespace, source_canonical_service } = sourceLabels(ctx);
    const { destination_workload, destination_canonical_service } = destinationLabelsOf(ep?.info);
    const grpc_status = r.grpcStatus === undefined ? '' : String(r.grpcStatus);
    const key = `${source_namespace}\u0000${source_workload}\u0000${source_canonical_service}\u0000${service}\u0000${destination_workload}\u0000${destination_canonical_service}\u0000${status}\u0000${grpc_status}\u0000${security}`;
    let labels = this.labels.get(key);
    if (labels === undefined) {
      const response_code = String(status);
      // The canonical-service labels last: the exposition keeps this order.
      const common = { source_workload, source_namespace, destination_service: service, destination_workload, response_code };
      labels = {
        requests: { ...common, grpc_status, connection_security_policy: security, source_canonical_service, destination_canonical_service },
        duration: new HistogramBatch(this.metrics.requestDuration, { ...common, source_canonical_service, destination_canonical_service }),
        pending: 0,
      };
      // Label values are bounded (workloads x services x codes); the cap only guards memory.
      if (this.labels.size >= 10_000) this.labels.clear();
      this.labels.set(key, labels);
    }
    return labels;
  }

  /** A child logger with the connection's fixed fields bound: pino serializes them once, not once per line. */
  private accessLogFor(r: RequestRecord): Logger {
    const ctx = r.ctx;
    const ep = r.ep;
    const service = r.cluster?.serviceName ?? targetName(ctx);
    const clusterKey = r.cluster?.key ?? ctx.target.key;
    const key = `${sourcePodOf(ctx.source, ctx.described) ?? ''}\u0000${ctx.sourceIp}\u0000${ctx.origIp}:${ctx.origPort}\u0000${service}\u0000${ep?.id ?? ''}\u0000${clusterKey ?? ''}\u0000${ctx.peer?.principal ?? ''}`;
    let log = this.accessLogs.get(key);
    if (log === undefined) {
      if (this.accessLogs.size >= 4096) this.accessLogs.clear();
      const security = ep ? this.securityOf(ep) : 'none';
      log = this.log.child(peerFields(ctx, service, ep, security, clusterKey, ep && security === 'mutual_tls' ? this.principalOf?.(ctx, ep) : undefined));
      this.accessLogs.set(key, log);
    }
    return log;
  }
}
