/**
 * Metric label values, built in one place for every path that counts traffic (HTTP, TCP
 * proxy, socket-level balancing), as DESIGN.md "Metric labels" defines them:
 * `*_workload` names the workload (a Deployment, StatefulSet, DaemonSet, Job, or a bare pod;
 * `workloads[].workload` in a file), not the pod, so series do not grow with pod churn;
 * `*_canonical_service` is the `app.kubernetes.io/name` label, else `app`, else the workload.
 */
import type { EndpointInfo } from '../cluster/endpoint.js';
import type { Workload } from '../config/types.js';

/** Stands for a side of a connection the agent could not attribute. */
export const UNKNOWN = 'unknown';

type Named = Pick<Workload, 'name' | 'workload' | 'labels'>;

/** The workload a pod (or a file's workload entry) belongs to. */
export function workloadName(w: Pick<Workload, 'name' | 'workload'>): string {
  return w.workload ?? w.name;
}

/** The canonical service: `app.kubernetes.io/name`, else `app`, else the workload name. */
export function canonicalService(w: Named): string {
  return w.labels?.['app.kubernetes.io/name'] || w.labels?.['app'] || workloadName(w);
}

export interface SourceLabels {
  source_workload: string;
  source_namespace: string;
  source_canonical_service: string;
}

export interface DestinationLabels {
  destination_workload: string;
  destination_canonical_service: string;
}

/**
 * The caller's labels. `peerNamespace`: on the destination side of the tunnel the caller is
 * known only by its verified principal, whose namespace stands in.
 */
export function sourceLabelsOf(source: (Named & { namespace: string }) | undefined, peerNamespace?: string): SourceLabels {
  if (!source) return { source_workload: UNKNOWN, source_namespace: peerNamespace ?? UNKNOWN, source_canonical_service: UNKNOWN };
  return { source_workload: workloadName(source), source_namespace: source.namespace, source_canonical_service: canonicalService(source) };
}

/** The chosen endpoint's labels (`unknown` before one is chosen). */
export function destinationLabelsOf(ep: Pick<EndpointInfo, 'workload' | 'owner' | 'canonicalService'> | undefined): DestinationLabels {
  if (!ep) return { destination_workload: UNKNOWN, destination_canonical_service: UNKNOWN };
  const workload = ep.owner ?? ep.workload;
  return { destination_workload: workload, destination_canonical_service: ep.canonicalService ?? workload };
}
