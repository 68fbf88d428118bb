/**
 * `/config_dump` `routes`: each service port with routes attached, its routes and rules as
 * configured, and where each rule's backends stand: whether the Service exists (else its
 * share answers 500 no_backend), and its cluster's endpoints (eligible / total) and breaker.
 */
import type { ClusterManager } from '../../cluster/manager.js';
import type { StateStore } from '../../state/store.js';
import { formatDuration } from '../../config/duration.js';
import type { MirrorStats } from './mirror.js';

function ms(v: number | undefined): string | undefined {
  return v === undefined ? undefined : formatDuration(v);
}

export function describeRoutes(state: StateStore, clusters: ClusterManager, mirror?: MirrorStats): unknown {
  const ports: unknown[] = [];
  const now = Date.now();
  const backend = (ns: string, name: string, port: number, weight: number | undefined) => {
    const b = clusters.forBackend(ns, name, port);
    if (b === undefined) return { service: `${ns}/${name}`, port, weight, state: 'missing (requests answered 500 no_backend)' };
    const c = b.cluster;
    let eligible = 0;
    for (const ep of c.endpoints.values()) if (ep.eligible(now)) eligible++;
    return {
      service: `${ns}/${name}`,
      port,
      weight,
      state: eligible > 0 ? 'ok' : 'no eligible endpoint',
      endpoints: { eligible, total: c.endpoints.size },
      circuitBreaker: c.breaker?.state ?? 'disabled',
    };
  };
  for (const [key, table] of state.routedPorts()) {
    const at = key.lastIndexOf(':');
    const parentPort = Number(key.slice(at + 1));
    ports.push({
      port: key,
      kind: table.kind,
      routes: table.routes.map((r) => ({
        name: `${r.namespace}/${r.name}`,
        rules: r.rules.map((rule, i) => ({
          rule: rule.name ?? String(i),
          matches: rule.matches,
          filters: rule.filters,
          timeouts: rule.timeouts && { request: ms(rule.timeouts.request), backendRequest: ms(rule.timeouts.backendRequest) },
          retry: rule.retry && { ...rule.retry, backoff: ms(rule.retry.backoff) },
          fault: rule.fault && {
            delay: rule.fault.delay && { fixedDelay: ms(rule.fault.delay.fixedDelay), percent: rule.fault.delay.percent },
            abort: rule.fault.abort,
          },
          backends: rule.backendRefs.length
            ? rule.backendRefs.map((b) => backend(r.namespace, b.name, b.port ?? parentPort, b.weight))
            : [backend(r.namespace, key.slice(r.namespace.length + 1, at), parentPort, undefined)],
        })),
      })),
    });
  }
  return { ports, mirror };
}
