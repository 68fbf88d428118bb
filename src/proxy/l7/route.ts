/**
 * The route stage: from the target a connection was sent to (and, for L7, the request) to
 * the backends that may serve it, with the timeouts and retry policy that apply.
 *
 * Today a target's only rule is "its service's cluster" (plus the service's fallback); the
 * seam is `routeRequest`, which Gateway-API route matching (DESIGN.md "Routes") fills in: it
 * gets the protocol-free request view and returns the same `RouteDecision` shape.
 */
import type { Cluster } from '../../cluster/cluster.js';
import type { ClusterManager } from '../../cluster/manager.js';
import type { RetryPolicy, TrafficPolicy } from '../../config/types.js';
import type { Target } from '../../state/store.js';
import type { HasRequestView } from './request.js';

export interface RouteBackend {
  /** The cluster (service port) that serves the request. */
  readonly cluster: Cluster;
  /** Where requests go when `cluster` has no endpoint or its breaker is open. */
  readonly fallback: Cluster | undefined;
  /** Relative weight among the decision's backends. */
  readonly weight: number;
}

export interface RouteDecision {
  /** One or more backends (weighted); never empty. */
  readonly backends: readonly RouteBackend[];
  /** Whole-request timeout, ms (0: none). */
  readonly timeout: number;
  /** Retry policy, or undefined for no retries. */
  readonly retries: RetryPolicy | undefined;
}

interface Cached {
  policy: TrafficPolicy;
  fallback: Cluster | undefined;
  decision: RouteDecision;
}

const cache = new WeakMap<Cluster, Cached>();

/** The decision for a target without request-level routing (L4, and L7 without routes). Throws when the target has no cluster. */
export function routeTarget(clusters: ClusterManager, target: Target): RouteDecision {
  const cluster = clusters.forTarget(target);
  const fallback = target.kind === 'service' ? clusters.fallbackFor(target.service, target.port.port) : undefined;
  const policy = cluster.policy;
  const c = cache.get(cluster);
  // The common path allocates nothing: the decision is kept until the policy or fallback changes.
  if (c !== undefined && c.policy === policy && c.fallback === fallback) return c.decision;
  const decision: RouteDecision = { backends: [{ cluster, fallback, weight: 1 }], timeout: policy.timeout, retries: policy.retries };
  cache.set(cluster, { policy, fallback, decision });
  return decision;
}

/**
 * The L7 route stage: `req` is read only when a rule needs it (the view is built lazily).
 * Throws a WeftError to answer with (e.g. `no_route`) when nothing serves the request.
 */
export function routeRequest(clusters: ClusterManager, target: Target, _req: HasRequestView): RouteDecision {
  return routeTarget(clusters, target);
}

/** One backend of a decision, by weight. */
export function pickBackend(d: RouteDecision, random: () => number = Math.random): RouteBackend {
  const b = d.backends;
  if (b.length === 1) return b[0]!;
  let total = 0;
  for (const x of b) total += x.weight;
  let r = random() * total;
  for (const x of b) {
    r -= x.weight;
    if (r < 0) return x;
  }
  return b[b.length - 1]!;
}
