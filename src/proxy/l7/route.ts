/**
 * The route stage: from the target a connection was sent to (and, for L7, the request) to
 * the backends that may serve it, with the timeouts and retry policy that apply.
 *
 * A service port without routes has one rule: "its service's cluster" (plus the service's
 * fallback). A port with routes attached (DESIGN.md "Routes"; compiled per snapshot by the
 * state store, src/proxy/l7/routes/) picks the winning rule of the request, draws its
 * weighted backend (a Service with its own cluster: balancer, health, breaker, fallback), and
 * carries what the call must do besides: filters (request and response header edits, a
 * rewrite, a redirect), mirrors, and the fault. The rule's timeouts and retry replace the
 * service's. No rule matches: 404 `no_route`.
 */
import type { Cluster } from '../../cluster/cluster.js';
import type { ClusterManager } from '../../cluster/manager.js';
import { DEFAULT_RETRIES } from '../../config/defaults.js';
import type { RetryPolicy, TrafficPolicy } from '../../config/types.js';
import { WeftError } from '../../errors.js';
import type { Target } from '../../state/store.js';
import type { HasRequestView, HeaderMap } from './request.js';
import type { CompiledRule, RoutePlan } from './routes/table.js';

export interface RouteBackend {
  /** The cluster (service port) that serves the request. */
  readonly cluster: Cluster;
  /** Where requests go when `cluster` has no endpoint or its breaker is open. */
  readonly fallback: Cluster | undefined;
  /** Relative weight among the decision's backends. */
  readonly weight: number;
}

export interface RouteDecision {
  /** One or more backends (weighted); empty only when a route rule's backend does not exist (`noBackend`). */
  readonly backends: readonly RouteBackend[];
  /** Whole-request timeout, ms (0: none). */
  readonly timeout: number;
  /** Retry policy, or undefined for no retries. */
  readonly retries: RetryPolicy | undefined;
  /** The route rule that decided (absent: the port has no routes). */
  readonly rule?: CompiledRule;
  /** What the rule does besides choosing the backend (filters, mirrors, fault). */
  readonly plan?: Extract<RoutePlan, { kind: 'forward' }>;
  /** The rule answers a redirect instead of forwarding. */
  readonly redirect?: { status: number; location: string };
  /** The rule's chosen backend does not exist: why (answered 500 no_backend). */
  readonly noBackend?: string;
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

function headerOf(headers: HeaderMap, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** The retry policy of a rule on a backend whose service has `base` (cached: one object per rule and policy). */
const ruleRetries = new WeakMap<CompiledRule, WeakMap<TrafficPolicy, RetryPolicy | undefined>>();

function retriesFor(rule: CompiledRule, policy: TrafficPolicy): RetryPolicy | undefined {
  let byPolicy = ruleRetries.get(rule);
  if (byPolicy === undefined) ruleRetries.set(rule, (byPolicy = new WeakMap()));
  if (byPolicy.has(policy)) return byPolicy.get(policy);
  const base = policy.retries;
  const r = rule.rule.retry;
  const perTry = rule.rule.timeouts?.backendRequest;
  let out: RetryPolicy | undefined = base;
  if (r !== undefined) {
    // Gateway API HTTPRouteRetry: retry on these statuses (and on connection failures).
    out = {
      attempts: r.attempts,
      perTryTimeout: perTry ?? base?.perTryTimeout ?? 0,
      retryOn: ['connect-failure', 'reset', 'retriable-status-codes'],
      retriableStatusCodes: r.codes,
      budget: base?.budget ?? DEFAULT_RETRIES.budget,
      backoff: { base: r.backoff, max: Math.max(r.backoff, r.backoff * 10) },
    };
  } else if (perTry !== undefined && perTry > 0) {
    // backendRequest alone: a per-try timeout, with the service's retries (or none).
    out = base ? { ...base, perTryTimeout: perTry } : { ...DEFAULT_RETRIES, attempts: 0, perTryTimeout: perTry };
  }
  byPolicy.set(policy, out);
  return out;
}

/**
 * The L7 route stage: `req` is read only when the port has routes (the view is built lazily).
 * Throws a WeftError to answer with (`no_route`) when no rule matches.
 */
export function routeRequest(clusters: ClusterManager, target: Target, req: HasRequestView, rand: () => number = Math.random): RouteDecision {
  if (target.kind !== 'service') return routeTarget(clusters, target);
  const table = clusters.routesFor(target.key);
  if (table === undefined || table.kind === 'TCPRoute') return routeTarget(clusters, target);
  const v = req.view();
  // The header map is read only when a rule matches on headers (HTTP/1.1 builds it on first use).
  const plan = table.plan({ method: v.method, target: v.path, header: (n) => headerOf(v.headers, n), host: v.authority ?? `${target.service.name}:${target.port.port}` }, rand);
  if (plan === undefined) {
    throw new WeftError('WEFT_ERR_NO_ROUTE', `no rule of the routes on ${target.key} matches ${v.method} ${v.path}`);
  }
  const rule = plan.rule;
  if (plan.kind === 'redirect') {
    return { backends: [], timeout: 0, retries: undefined, rule, redirect: { status: plan.status, location: plan.location } };
  }
  const ns = target.service.namespace;
  let backend: { cluster: Cluster; fallback: Cluster | undefined } | undefined;
  let noBackend: string | undefined;
  if (plan.backend === 'parent') backend = { cluster: clusters.forTarget(target), fallback: clusters.fallbackFor(target.service, target.port.port) };
  else if (plan.backend === undefined) noBackend = `rule ${rule.ruleName} of ${rule.routeName} has no backend with weight`;
  else {
    const port = plan.backend.port ?? target.port.port;
    backend = clusters.forBackend(ns, plan.backend.name, port);
    if (backend === undefined) noBackend = `backend ${ns}/${plan.backend.name}:${port} of ${rule.routeName} rule ${rule.ruleName} does not exist`;
  }
  if (backend === undefined) return { backends: [], timeout: 0, retries: undefined, rule, plan, noBackend };
  const policy = backend.cluster.policy;
  const request = rule.rule.timeouts?.request;
  return {
    backends: [{ cluster: backend.cluster, fallback: backend.fallback, weight: 1 }],
    timeout: request !== undefined ? request : policy.timeout,
    retries: retriesFor(rule, policy),
    rule,
    plan,
  };
}

/**
 * The L4 route stage: a TCPRoute on the target's port picks a backend Service per connection
 * by weight; else the target's own cluster. Throws `no_backend` when the pick does not exist.
 */
export function routeConnection(clusters: ClusterManager, target: Target, rand: () => number = Math.random): RouteDecision {
  if (target.kind !== 'service') return routeTarget(clusters, target);
  const table = clusters.routesFor(target.key);
  if (table === undefined || table.kind !== 'TCPRoute') return routeTarget(clusters, target);
  const pick = table.pickTcp(rand);
  if (pick === 'parent') return routeTarget(clusters, target);
  const rule = table.tcpRule!;
  if (pick === undefined) throw new WeftError('WEFT_ERR_NO_BACKEND', `${rule.routeName} has no backend with weight`);
  const port = pick.port ?? target.port.port;
  const b = clusters.forBackend(target.service.namespace, pick.name, port);
  if (b === undefined) throw new WeftError('WEFT_ERR_NO_BACKEND', `backend ${target.service.namespace}/${pick.name}:${port} of ${rule.routeName} does not exist`);
  return { backends: [{ cluster: b.cluster, fallback: b.fallback, weight: 1 }], timeout: b.cluster.policy.timeout, retries: undefined, rule };
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
