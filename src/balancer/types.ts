import type { Endpoint } from '../cluster/endpoint.js';
import type { LoadBalancerPolicy } from '../config/types.js';

/** What a pick may depend on. Built once per request/connection by the proxy. */
export interface PickContext {
  /** Hash of the request's hash key (ring-hash, maglev): see `hashKey()` in hash.ts. Absent: pick as if random. */
  hash?: number;
  /** Endpoints already tried by this request (retries): avoided where another one exists. */
  tried?: ReadonlySet<Endpoint>;
}

/**
 * A load balancer over the eligible endpoints of one service port. The cluster calls
 * `setEndpoints` whenever membership, weights or health change; the balancer keeps no
 * statistics of its own that a set change would lose (they live on Endpoint).
 */
export interface Balancer {
  readonly type: LoadBalancerPolicy['type'];
  setEndpoints(endpoints: readonly Endpoint[]): void;
  /** undefined only when the set is empty. */
  pick(ctx: PickContext): Endpoint | undefined;
  /** A request/connection to `ep` finished after `latencyMs` (peak-ewma feeds on this). */
  observe?(ep: Endpoint, latencyMs: number, now: number): void;
}
