/**
 * One upstream endpoint (pod ip:targetPort) of one service port, as the data plane sees it.
 * The object lives as long as the endpoint stays in the service: discovery updates replace
 * `info` in place, so live statistics (in-flight requests, latency EWMA, health, ejection)
 * survive membership and weight changes.
 */

export interface EndpointInfo {
  ip: string;
  port: number;
  weight: number;
  /** The pod (or file entry) name. */
  workload: string;
  /** The workload it belongs to, for metric labels (src/telemetry/labels.ts); default `workload`. */
  owner?: string;
  /** Its canonical service, for metric labels; default the owner. */
  canonicalService?: string;
  namespace: string;
  node: string;
  serviceAccount: string;
  /** Readiness from discovery (`ready: false`, EndpointSlice conditions). */
  ready: boolean;
  /** True when the endpoint's pod runs on this agent's node. */
  local: boolean;
  /** True when the endpoint's namespace is meshed (traffic to a remote one goes through the tunnel). */
  meshed: boolean;
}

export type ActiveHealth = 'unknown' | 'healthy' | 'unhealthy';

export class Endpoint {
  readonly id: string;
  info: EndpointInfo;

  /** In-flight requests (L7) or open connections (L4): what least-request compares. */
  active = 0;
  /** Peak-EWMA latency estimate in ms and when it was last updated (ms since epoch). */
  rttEwma = 0;
  rttStamp = 0;

  /** Result of active health checks; `unknown` until the first check (treated as healthy). */
  health: ActiveHealth = 'unknown';
  /** Consecutive check results of the current streak. */
  checkSuccesses = 0;
  checkFailures = 0;
  lastCheckError = '';

  /** Outlier ejection: ejected while now < ejectedUntil. */
  ejectedUntil = 0;
  ejectionCount = 0;
  ejectionReason = '';

  /** Totals, for config_dump and success-rate ejection. */
  requests = 0;
  failures = 0;

  constructor(info: EndpointInfo) {
    this.info = info;
    this.id = `${info.ip}:${info.port}`;
  }

  /** May this endpoint receive new traffic (outside panic mode)? */
  eligible(now: number): boolean {
    return this.info.ready && this.health !== 'unhealthy' && this.ejectedUntil <= now;
  }

  get weight(): number {
    return this.info.weight;
  }
}
