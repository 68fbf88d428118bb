import type { ConnectionPoolPolicy } from '../config/types.js';

export type ConnectionLimitsPolicy = Pick<ConnectionPoolPolicy, 'maxConnections' | 'maxPendingRequests' | 'maxRequests'>;

/**
 * The connectionPool limits of one service (Envoy's cluster circuit breakers): plain
 * counters, O(1) and allocation-free on the request path. A `try*` that returns false means
 * answer 503 `overflow` (or, for a TCP service, close the connection).
 *
 * - requests: HTTP requests in flight to the service (`maxRequests`).
 * - pending: requests waiting for an upstream connection (`maxPendingRequests`; 0 means no
 *   queueing at all).
 * - connections: upstream connections open (`maxConnections`).
 *
 * Limits are taken literally (`Infinity` for none). Every successful `try*` must be matched
 * by its release exactly once; a release without a matching start is ignored rather than
 * driving a counter negative.
 */
export class ConnectionLimits {
  private maxRequests: number;
  private maxPending: number;
  private maxConnections: number;
  private requests = 0;
  private pendingCount = 0;
  private conns = 0;
  private overflowCount = 0;

  constructor(policy: ConnectionLimitsPolicy) {
    this.maxRequests = policy.maxRequests;
    this.maxPending = policy.maxPendingRequests;
    this.maxConnections = policy.maxConnections;
  }

  /** New limits apply to the next `try*`; what is already admitted stays admitted. */
  setPolicy(policy: ConnectionLimitsPolicy): void {
    this.maxRequests = policy.maxRequests;
    this.maxPending = policy.maxPendingRequests;
    this.maxConnections = policy.maxConnections;
  }

  get activeRequests(): number {
    return this.requests;
  }

  get pending(): number {
    return this.pendingCount;
  }

  get connections(): number {
    return this.conns;
  }

  /** Refusals so far, all three limits together (for metrics / config_dump). */
  get overflows(): number {
    return this.overflowCount;
  }

  tryStartRequest(): boolean {
    if (this.requests >= this.maxRequests) {
      this.overflowCount++;
      return false;
    }
    this.requests++;
    return true;
  }

  endRequest(): void {
    if (this.requests > 0) this.requests--;
  }

  /** A request starts waiting for a connection. */
  tryAddPending(): boolean {
    if (this.pendingCount >= this.maxPending) {
      this.overflowCount++;
      return false;
    }
    this.pendingCount++;
    return true;
  }

  /** A waiting request got its connection, or gave up. */
  removePending(): void {
    if (this.pendingCount > 0) this.pendingCount--;
  }

  tryOpenConnection(): boolean {
    if (this.conns >= this.maxConnections) {
      this.overflowCount++;
      return false;
    }
    this.conns++;
    return true;
  }

  closeConnection(): void {
    if (this.conns > 0) this.conns--;
  }
}
