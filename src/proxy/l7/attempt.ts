/**
 * The attempt stage: pick -> authorize -> endpoint lease -> send. The lease is the ONE place
 * where an endpoint's active requests (or connections) are counted and where how a try ended
 * is reported to the cluster (outlier detection, balancer latency). Both the L7 call and the
 * L4 proxy hold their endpoint through it.
 *
 * The lease lives in its holder's own fields (no object per try): the hot path allocates
 * nothing for it.
 */
import type { Cluster } from '../../cluster/cluster.js';
import type { Endpoint } from '../../cluster/endpoint.js';
import { WeftError, type WeftErrorCode } from '../../errors.js';
import type { OutlierResult } from '../../health/outlier.js';
import type { ConnContext } from '../context.js';
import type { RequestView } from './request.js';

/** Whatever holds an endpoint lease. */
export interface LeaseHolder {
  leaseEp: Endpoint | undefined;
  leaseCluster: Cluster | undefined;
  leaseT0: number;
}

/** Start using `ep` of `cluster`: counted in `ep.active` until `endLease`. */
export function takeLease(h: LeaseHolder, cluster: Cluster, ep: Endpoint, now: number = performance.now()): void {
  if (h.leaseEp !== undefined) endLease(h, undefined);
  ep.active++;
  h.leaseEp = ep;
  h.leaseCluster = cluster;
  h.leaseT0 = now;
}

/**
 * The try on the leased endpoint is over: no longer counted; its `result` reported to the
 * cluster (undefined: not the endpoint's doing, e.g. the client went away). Idempotent.
 */
export function endLease(h: LeaseHolder, result: OutlierResult | undefined, now?: number): void {
  const ep = h.leaseEp;
  if (ep === undefined) return;
  h.leaseEp = undefined;
  ep.active--;
  if (result !== undefined) h.leaseCluster!.report(ep, result, (now ?? performance.now()) - h.leaseT0);
}

/** A plain lease object, for holders that are not an L7 call (the L4 proxy). */
export class EndpointLease implements LeaseHolder {
  leaseEp: Endpoint | undefined = undefined;
  leaseCluster: Cluster | undefined = undefined;
  leaseT0 = 0;
}

/**
 * What authorization decided for one request: `deny` is the error to answer with; otherwise
 * the request goes on, without the headers named in `removeHeaders` (a JWT that must not be
 * forwarded).
 */
export interface AuthzVerdict {
  readonly deny?: WeftError;
  readonly removeHeaders?: readonly string[];
}

/**
 * Runs on the destination's agent for local endpoints. Returns a value (not a promise) when
 * no asynchronous work is needed: the request then goes on without waiting for a microtask.
 */
export type L7Authorizer = (ctx: ConnContext, ep: Endpoint, req: RequestView) => AuthzVerdict | undefined | Promise<AuthzVerdict | undefined>;

/** How a try that got no answer failed: a connect failure or a reset, by the error's code. */
export function classifyFailure(err: Error & { code?: string }): { kind: 'connect-failure' | 'reset'; code: WeftErrorCode } {
  if (err instanceof WeftError && err.code === 'WEFT_ERR_CONNECT_FAILURE') return { kind: 'connect-failure', code: 'WEFT_ERR_CONNECT_FAILURE' };
  const c = err.code ?? '';
  if (c === 'ECONNREFUSED' || c === 'EHOSTUNREACH' || c === 'ENETUNREACH' || c === 'ETIMEDOUT') return { kind: 'connect-failure', code: 'WEFT_ERR_CONNECT_FAILURE' };
  return { kind: 'reset', code: 'WEFT_ERR_UPSTREAM_RESET' };
}

export function asWeftError(err: unknown): WeftError {
  return err instanceof WeftError ? err : new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', (err as Error).message);
}
