/**
 * The admission stage (linkerd2-proxy's "logical" stage): from the routed backend to the
 * cluster that will serve this request or connection, honouring the circuit breaker and the
 * fallback service.
 */
import type { Cluster } from '../../cluster/cluster.js';
import { WeftError } from '../../errors.js';
import type { RouteBackend } from './route.js';

export interface Admission {
  cluster: Cluster;
  /** True when the request goes to the fallback service. */
  fallback: boolean;
  /** The breaker let this request through as a half-open probe. */
  probe: boolean;
}

/** Throws the WeftError the client should see when nothing can serve the request. */
export function admit(backend: RouteBackend): Admission {
  const primary = backend.cluster;
  const fb = backend.fallback;
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
