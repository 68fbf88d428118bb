import type { Endpoint } from '../cluster/endpoint.js';

/** What the balancer should spread traffic over, and whether that is the panic set. */
export interface EligibleSet {
  endpoints: Endpoint[];
  /** True when too few endpoints are healthy and every ready endpoint is returned instead. */
  panic: boolean;
}

/**
 * The endpoints that may receive new traffic: ready (discovery), not marked unhealthy by
 * active checks (`unknown` counts as healthy), not ejected by outlier detection.
 *
 * Envoy's panic threshold: when the healthy share of the *ready* endpoints falls below
 * `panicThresholdPct` percent, every ready endpoint is returned (`panic: true`). Spreading
 * over all of them, sick ones included, beats piling the whole load onto the few survivors
 * and knocking them over too. Not-ready endpoints are never returned: discovery took them
 * out of rotation on purpose (terminating pods, failing readiness probes).
 *
 * A threshold of 0 disables panic routing; then zero healthy endpoints means an empty set.
 * An empty result means `no_healthy_upstream` (or the service's fallback).
 */
export function selectEligible(eps: readonly Endpoint[], now: number, panicThresholdPct: number): EligibleSet {
  const ready: Endpoint[] = [];
  const healthy: Endpoint[] = [];
  for (const ep of eps) {
    if (!ep.info.ready) continue;
    ready.push(ep);
    if (ep.eligible(now)) healthy.push(ep);
  }
  if (ready.length === 0) return { endpoints: [], panic: false };
  // healthy/ready < pct/100, in integers so 1 of 2 at 50% is not panic.
  if (healthy.length * 100 < panicThresholdPct * ready.length) return { endpoints: ready, panic: true };
  return { endpoints: healthy, panic: false };
}
