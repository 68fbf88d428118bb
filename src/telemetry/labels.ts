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

/**
 * The caller as its own agent described it in the tunnel's CONNECT (src/proxy/hbone.ts,
 * `baggage`), when the destination agent does not know the calling pod (in Kubernetes an
 * agent watches its own node's pods only). The destination takes it only when its namespace
 * is the verified peer's, and only for metric labels and access-log fields: never for
 * authorization, which takes the certificate's identity alone.
 */
export interface DescribedSource {
  namespace: string;
  /** The workload (metric label `source_workload`). */
  workload: string;
  /** The canonical service (`source_canonical_service`). */
  canonicalService: string;
  /** The calling pod, when the connection is one pod's (the access log's `src_workload`). */
  pod?: string;
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
export function sourceLabelsOf(source: (Named & { namespace: string }) | undefined, peerNamespace?: string, described?: DescribedSource): SourceLabels {
  if (source) return { source_workload: workloadName(source), source_namespace: source.namespace, source_canonical_service: canonicalService(source) };
  if (described) return { source_workload: described.workload, source_namespace: described.namespace, source_canonical_service: described.canonicalService };
  return { source_workload: UNKNOWN, source_namespace: peerNamespace ?? UNKNOWN, source_canonical_service: UNKNOWN };
}

/** The access log's `src_workload` (the calling pod, `namespace/name`), when known. */
export function sourcePodOf(source: Pick<Workload, 'namespace' | 'name'> | undefined, described?: DescribedSource): string | undefined {
  if (source) return `${source.namespace}/${source.name}`;
  return described?.pod === undefined ? undefined : `${described.namespace}/${described.pod}`;
}

/**
 * Source workloads this agent knows only as peers described them (DescribedSource): their
 * metric series are kept while they keep calling (a config update does not know them, so it
 * cannot tell that they are gone), and their number is capped, since a peer holding a
 * certificate of a namespace may name any workload of it.
 */
export class DescribedSources {
  private readonly seen = new Map<string, number>();

  constructor(
    /** Distinct described workloads kept at once; one more is labelled `unknown`. */
    readonly max = 1000,
    /** A workload not seen for this long counts as gone (its series go at the next config change). */
    readonly ttlMs = 15 * 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether `d` may label metrics: already known, or room left. Marks it seen. */
  admit(d: DescribedSource): boolean {
    // The canonical service is in the key: it is a label too, so it counts toward the cap.
    const key = `${d.namespace}/${d.workload}\u0000${d.canonicalService}`;
    const t = this.now();
    if (!this.seen.has(key) && this.seen.size >= this.max) {
      this.expire(t);
      if (this.seen.size >= this.max) return false;
    }
    this.seen.set(key, t);
    return true;
  }

  /** `namespace/workload` of every described workload seen within the ttl (the others are forgotten). */
  live(): Set<string> {
    this.expire(this.now());
    const out = new Set<string>();
    for (const k of this.seen.keys()) out.add(k.slice(0, k.indexOf('\u0000')));
    return out;
  }

  private expire(t: number): void {
    for (const [k, at] of this.seen) if (t - at > this.ttlMs) this.seen.delete(k);
  }
}

/** The chosen endpoint's labels (`unknown` before one is chosen). */
export function destinationLabelsOf(ep: Pick<EndpointInfo, 'workload' | 'owner' | 'canonicalService'> | undefined): DestinationLabels {
  if (!ep) return { destination_workload: UNKNOWN, destination_canonical_service: UNKNOWN };
  const workload = ep.owner ?? ep.workload;
  return { destination_workload: workload, destination_canonical_service: ep.canonicalService ?? workload };
}
