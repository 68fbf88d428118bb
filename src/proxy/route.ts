import type { Cluster } from '../cluster/cluster.js';
import type { ClusterManager } from '../cluster/manager.js';
import type { Target } from '../state/store.js';
import { WeftError } from '../errors.js';

export interface Admission {
  cluster: Cluster;
  /** True when the request goes to the fallback service. */
  fallback: boolean;
  /** The breaker let this request through as a half-open probe. */
  probe: boolean;
}

/**
 * linkerd2-proxy's "logical" stage: from a target to the cluster that will serve this
 * request, honouring the circuit breaker and the fallback service. Throws the WeftError the
 * client should see when nothing can serve it.
 */
export function admit(clusters: ClusterManager, target: Target): Admission {
  const primary = clusters.forTarget(target);
  const fb = target.kind === 'service' ? clusters.fallbackFor(target.service, target.port.port) : undefined;
  if (primary.empty) {
    if (fb && !fb.empty) return { cluster: fb, fallback: true, probe: false };
    throw new WeftError('WEFT_ERR_NO_HEALTHY_UPSTREAM', `no healthy endpoint for ${primary.serviceName}`);
  }
  let probe = false;
  if (primary.breaker) {
    const verdict = primary.breaker.acquire();
    if (verdict === 'open') {
      if (fb && !fb.empty) return { cluster: fb, fallback: true, probe: false };
      throw new WeftError('WEFT_ERR_CIRCUIT_OPEN', `circuit open for ${primary.serviceName}`);
    }
    probe = verdict === 'probe';
  }
  return { cluster: primary, fallback: false, probe };
}

/** Tell the breaker how an admitted request ended. */
export function settle(a: Admission, ok: boolean): void {
  if (a.fallback || !a.cluster.breaker) return;
  if (ok) a.cluster.breaker.onSuccess(a.probe);
  else a.cluster.breaker.onFailure(a.probe);
}

/** The admitted request ended without a verdict on the upstream (refused locally, client gone). */
export function release(a: Admission): void {
  if (!a.fallback) a.cluster.breaker?.release(a.probe);
}
