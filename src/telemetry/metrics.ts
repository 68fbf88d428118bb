import { createRequire } from 'node:module';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Workload } from '../config/types.js';
import { DescribedSources, UNKNOWN, workloadName } from './labels.js';

type Src = 'source_workload' | 'source_namespace' | 'source_canonical_service';
type Dst = 'destination_workload' | 'destination_canonical_service';

/**
 * Every metric the agent exports, on one Registry the agent owns (never the global one, so
 * two agents can live in one process). Names follow DESIGN.md: `weft_` prefix, base units,
 * `_total` on counters; label values are bounded by the number of services and workloads.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly requests: Counter<Src | 'destination_service' | Dst | 'response_code' | 'grpc_status' | 'connection_security_policy'>;
  readonly requestDuration: Histogram<Src | 'destination_service' | Dst | 'response_code'>;
  readonly tcpOpened: Counter<Src | 'destination_service' | 'connection_security_policy'>;
  readonly tcpClosed: Counter<Src | 'destination_service' | 'connection_security_policy'>;
  readonly tcpSent: Counter<Src | 'destination_service' | 'connection_security_policy'>;
  readonly tcpReceived: Counter<Src | 'destination_service' | 'connection_security_policy'>;
  /** opened - closed per label set, computed at scrape: unlike the difference of two counters in PromQL, it needs no care around restarts. */
  readonly tcpOpen: Gauge<Src | 'destination_service' | 'connection_security_policy'>;
  readonly capturedWorkloads: Gauge;
  readonly ejections: Counter<'destination_service' | 'reason'>;
  readonly healthyEndpoints: Gauge<'destination_service'>;
  readonly circuitOpen: Gauge<'destination_service'>;
  readonly retries: Counter<'destination_service'>;
  readonly authzDenied: Counter<'policy'>;
  readonly configRejected: Counter;
  readonly agentErrors: Counter<'kind'>;
  readonly downstreamRejected: Counter<'listener'>;
  readonly downstreamConnections: Gauge<'listener'>;
  /** Source workloads known only from the tunnel's `baggage` (labels.ts): kept by retainWorkloads while they call. */
  readonly described = new DescribedSources();

  constructor() {
    const registers = [this.registry];
    // Node.js process metrics (event-loop lag, heap, GC, RSS, CPU, handles) on the agent's own registry.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 20 });
    const src = ['source_workload', 'source_namespace', 'source_canonical_service'] as const;
    const dst = ['destination_workload', 'destination_canonical_service'] as const;
    this.requests = new Counter({
      name: 'weft_requests_total',
      help: 'HTTP requests handled by the agent, by source, destination and response code',
      labelNames: [...src, 'destination_service', ...dst, 'response_code', 'grpc_status', 'connection_security_policy'],
      registers,
    });
    this.requestDuration = new Histogram({
      name: 'weft_request_duration_seconds',
      help: 'HTTP request duration through the agent, from request head received to response complete',
      labelNames: [...src, 'destination_service', ...dst, 'response_code'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    const tcpLabels = [...src, 'destination_service', 'connection_security_policy'] as const;
    this.tcpOpened = new Counter({ name: 'weft_tcp_connections_opened_total', help: 'TCP connections opened through the agent', labelNames: tcpLabels, registers });
    this.tcpClosed = new Counter({ name: 'weft_tcp_connections_closed_total', help: 'TCP connections closed through the agent', labelNames: tcpLabels, registers });
    this.tcpSent = new Counter({ name: 'weft_tcp_sent_bytes_total', help: 'Bytes sent to the upstream on TCP connections', labelNames: tcpLabels, registers });
    this.tcpReceived = new Counter({ name: 'weft_tcp_received_bytes_total', help: 'Bytes received from the upstream on TCP connections', labelNames: tcpLabels, registers });
    const opened = this.tcpOpened;
    const closed = this.tcpClosed;
    this.tcpOpen = new Gauge({
      name: 'weft_tcp_connections_open',
      help: 'TCP connections open through the agent now (opened - closed)',
      labelNames: tcpLabels,
      registers,
      async collect() {
        this.reset();
        const open = new Map<string, { labels: Record<string, string | number>; n: number }>();
        for (const [metric, sign] of [
          [opened, 1],
          [closed, -1],
        ] as const) {
          for (const v of (await metric.get()).values) {
            const key = JSON.stringify(v.labels);
            const e = open.get(key) ?? { labels: v.labels, n: 0 };
            e.n += sign * v.value;
            open.set(key, e);
          }
        }
        for (const e of open.values()) this.set(e.labels, e.n);
      },
    });
    this.capturedWorkloads = new Gauge({ name: 'weft_captured_workloads', help: 'Local workloads whose traffic is captured by eBPF', registers });
    this.ejections = new Counter({ name: 'weft_upstream_ejections_total', help: 'Endpoints ejected by outlier detection', labelNames: ['destination_service', 'reason'], registers });
    // Decided by the control thread and followed by every worker: merged by max, not summed (src/workers/pool.ts).
    this.healthyEndpoints = new Gauge({
      name: 'weft_upstream_healthy_endpoints',
      help: 'Endpoints eligible for traffic per service',
      labelNames: ['destination_service'],
      registers,
      aggregator: 'max',
    });
    this.circuitOpen = new Gauge({
      name: 'weft_circuit_breaker_open',
      help: '1 while the service circuit breaker is open (or half-open), else 0',
      labelNames: ['destination_service'],
      registers,
      aggregator: 'max',
    });
    this.retries = new Counter({ name: 'weft_retries_total', help: 'Request retries made by the agent', labelNames: ['destination_service'], registers });
    this.authzDenied = new Counter({ name: 'weft_authz_denied_total', help: 'Requests and connections denied by authorization', labelNames: ['policy'], registers });
    this.configRejected = new Counter({ name: 'weft_config_rejected_total', help: 'Config changes refused as invalid (the last good config stays)', registers });
    this.downstreamRejected = new Counter({
      name: 'weft_downstream_connections_rejected_total',
      help: 'Downstream connections closed at accept because the listener was at agent.maxDownstreamConnections',
      labelNames: ['listener'],
      registers,
    });
    this.downstreamConnections = new Gauge({ name: 'weft_downstream_connections', help: 'Open downstream connections per listener', labelNames: ['listener'], registers });
    this.agentErrors = new Counter({ name: 'weft_agent_errors_total', help: 'Errors inside the agent by kind (capture, proxy, discovery)', labelNames: ['kind'], registers });
  }

  /**
   * Removes the series of workloads that are gone (DESIGN.md "Metric labels"): a source
   * workload is matched with its namespace, a destination workload (whose series carry no
   * namespace of their own) by name in any namespace. Called with every applied config. A
   * source workload that a peer agent described (DescribedSources) stays while it calls.
   */
  async retainWorkloads(workloads: readonly Pick<Workload, 'name' | 'namespace' | 'workload'>[]): Promise<number> {
    const sources = new Set<string>();
    const destinations = new Set<string>();
    for (const w of workloads) {
      const name = workloadName(w);
      sources.add(`${w.namespace}/${name}`);
      destinations.add(name);
    }
    for (const d of this.described.live()) sources.add(d);
    const gone = (l: Record<string, string | number | undefined>): boolean => {
      const sw = l['source_workload'];
      if (sw !== undefined && sw !== UNKNOWN && !sources.has(`${l['source_namespace']}/${sw}`)) return true;
      const dw = l['destination_workload'];
      return dw !== undefined && dw !== UNKNOWN && !destinations.has(String(dw));
    };
    let removed = 0;
    for (const metric of [this.requests, this.requestDuration, this.tcpOpened, this.tcpClosed, this.tcpSent, this.tcpReceived] as const) {
      const seen = new Set<string>();
      for (const v of (await metric.get()).values) {
        const { le: _le, ...labels } = v.labels as Record<string, string | number>;
        const key = JSON.stringify(labels);
        if (seen.has(key) || !gone(labels)) continue;
        seen.add(key);
        (metric as Counter<string>).remove(labels);
        removed++;
      }
    }
    return removed;
  }
}

/** prom-client's label-set key (the one `observe`, `zero` and `remove` use). */
const { hashObject } = createRequire(import.meta.url)('prom-client/lib/util.js') as { hashObject(labels: object, names?: readonly string[]): string };

/** prom-client 15's own state of a histogram series (`createBaseValues`): per-bucket counts (not cumulative), sum, count. */
interface HistogramSeries {
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

interface HistogramInternals {
  hashMap: Record<string, HistogramSeries>;
  sortedLabelNames: readonly string[];
  upperBounds: readonly number[];
}

function internals(h: Histogram<string>): HistogramInternals | undefined {
  const x = h as unknown as Partial<HistogramInternals>;
  return x.hashMap !== undefined && Array.isArray(x.sortedLabelNames) && Array.isArray(x.upperBounds) ? (x as HistogramInternals) : undefined;
}

/**
 * Observations of one histogram series, added up here and folded into prom-client's series
 * in one step per event-loop turn (`flush`). prom-client's `observe` validates and hashes
 * the label object on every call (`labels()` children do the same per call): at one
 * observation per HTTP request that was 4% of the L7 path's CPU. The exposition is the same
 * (bucket counts, sum, count); a scrape sees observations at most one loop turn late, as
 * the request counter already does. With a prom-client whose internals are not the ones
 * this knows, every observation goes through `observe` at flush (the same result, the old cost).
 */
export class HistogramBatch {
  private readonly bounds: readonly number[];
  /** Per bucket (not cumulative); the last slot counts values above the top bound (+Inf only). */
  private readonly counts: Float64Array;
  private values: number[] | undefined;
  private sum = 0;
  private n = 0;
  private key: string | undefined = undefined;

  constructor(
    private readonly histogram: Histogram<string>,
    readonly labels: Record<string, string>,
  ) {
    const inner = internals(histogram);
    this.bounds = inner?.upperBounds ?? [];
    this.counts = new Float64Array(this.bounds.length + 1);
    if (inner === undefined) this.values = [];
  }

  /** True when this batch holds observations not yet flushed. */
  get pending(): boolean {
    return this.n > 0;
  }

  observe(value: number): void {
    this.n++;
    if (this.values !== undefined) {
      this.values.push(value);
      return;
    }
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
  }

  /** Fold the observations into the histogram. */
  flush(): void {
    if (this.n === 0) return;
    const inner = this.values === undefined ? internals(this.histogram) : undefined;
    if (inner === undefined) {
      for (const v of this.values ?? []) this.histogram.observe(this.labels, v);
      if (this.values !== undefined) this.values.length = 0;
      this.n = 0;
      return;
    }
    const key = (this.key ??= hashObject(this.labels, inner.sortedLabelNames));
    let series = inner.hashMap[key];
    if (series === undefined) {
      // A new series (or one removed since, e.g. by retainWorkloads): prom-client makes it.
      this.histogram.zero(this.labels);
      series = inner.hashMap[key]!;
    }
    const b = this.bounds;
    const counts = this.counts;
    for (let i = 0; i < b.length; i++) {
      const c = counts[i]!;
      if (c !== 0) {
        series.bucketValues[b[i]!] = (series.bucketValues[b[i]!] ?? 0) + c;
        counts[i] = 0;
      }
    }
    counts[b.length] = 0;
    series.sum += this.sum;
    series.count += this.n;
    this.sum = 0;
    this.n = 0;
  }
}
