import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Every metric the agent exports, on one Registry the agent owns (never the global one, so
 * two agents can live in one process). Names follow DESIGN.md: `weft_` prefix, base units,
 * `_total` on counters; label values are bounded by the number of services and workloads.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly requests: Counter<
    'source_workload' | 'source_namespace' | 'destination_service' | 'destination_workload' | 'response_code' | 'grpc_status' | 'connection_security_policy'
  >;
  readonly requestDuration: Histogram<'source_workload' | 'source_namespace' | 'destination_service' | 'response_code'>;
  readonly tcpOpened: Counter<'source_workload' | 'source_namespace' | 'destination_service' | 'connection_security_policy'>;
  readonly tcpClosed: Counter<'source_workload' | 'source_namespace' | 'destination_service' | 'connection_security_policy'>;
  readonly tcpSent: Counter<'source_workload' | 'source_namespace' | 'destination_service' | 'connection_security_policy'>;
  readonly tcpReceived: Counter<'source_workload' | 'source_namespace' | 'destination_service' | 'connection_security_policy'>;
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

  constructor() {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'weft_requests_total',
      help: 'HTTP requests handled by the agent, by source, destination and response code',
      labelNames: ['source_workload', 'source_namespace', 'destination_service', 'destination_workload', 'response_code', 'grpc_status', 'connection_security_policy'],
      registers,
    });
    this.requestDuration = new Histogram({
      name: 'weft_request_duration_seconds',
      help: 'HTTP request duration through the agent, from request head received to response complete',
      labelNames: ['source_workload', 'source_namespace', 'destination_service', 'response_code'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    const tcpLabels = ['source_workload', 'source_namespace', 'destination_service', 'connection_security_policy'] as const;
    this.tcpOpened = new Counter({ name: 'weft_tcp_connections_opened_total', help: 'TCP connections opened through the agent', labelNames: tcpLabels, registers });
    this.tcpClosed = new Counter({ name: 'weft_tcp_connections_closed_total', help: 'TCP connections closed through the agent', labelNames: tcpLabels, registers });
    this.tcpSent = new Counter({ name: 'weft_tcp_sent_bytes_total', help: 'Bytes sent to the upstream on TCP connections', labelNames: tcpLabels, registers });
    this.tcpReceived = new Counter({ name: 'weft_tcp_received_bytes_total', help: 'Bytes received from the upstream on TCP connections', labelNames: tcpLabels, registers });
    this.capturedWorkloads = new Gauge({ name: 'weft_captured_workloads', help: 'Local workloads whose traffic is captured by eBPF', registers });
    this.ejections = new Counter({ name: 'weft_upstream_ejections_total', help: 'Endpoints ejected by outlier detection', labelNames: ['destination_service', 'reason'], registers });
    this.healthyEndpoints = new Gauge({ name: 'weft_upstream_healthy_endpoints', help: 'Endpoints eligible for traffic per service', labelNames: ['destination_service'], registers });
    this.circuitOpen = new Gauge({ name: 'weft_circuit_breaker_open', help: '1 while the service circuit breaker is open (or half-open), else 0', labelNames: ['destination_service'], registers });
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
}
