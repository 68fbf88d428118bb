/**
 * Messages between the control thread and the worker threads (src/workers/). Everything is
 * a structured-clone snapshot: a worker never shares a mutable object with the control
 * thread, it replaces what it holds when a new snapshot comes.
 */
import type { MeshConfig } from '../config/types.js';
import type { ClusterHealth } from '../cluster/cluster.js';
import type { OutlierResult } from '../health/outlier.js';

/** A workload certificate as a worker gets it: PEM text, for its own TLS contexts. */
export interface CertSnapshot {
  namespace: string;
  serviceAccount: string;
  keyPem: string;
  chainPem: string;
  rootPem: string;
  /** ms since epoch. */
  notAfter: number;
}

/** Loopback tests without eBPF: the original destination (and caller) by source address. */
export type SourceRoutes = Array<[srcIp: string, dest: { ip: string; port: number; workload?: string }]>;

/** A worker's start: its first message (`{ t: 'init', init }`). */
export interface WorkerInit {
  index: number;
  config: MeshConfig;
  /**
   * The worker's own fd (a dup) of the outbound listening socket: every thread accepts from
   * the one socket and its one queue (src/lifecycle/listeners.ts); the worker closes its fd.
   */
  outboundFd: number;
  /** Its own fds of the permissive inbound (15006) and tunnel (15008) listening sockets, the same way. */
  inboundFd: number;
  tunnelFd: number;
  /** The mesh root (PEM) the tunnel listener verifies callers against. */
  rootPem: string;
  /** The agent's open downstream connections and caps, shared by every thread (proxy/downstream-caps.ts); this worker counts in slot `index`. */
  caps: SharedArrayBuffer;
  /** Splice L4 connections in the kernel with a splice object of this thread's own (capture/datapath.ts ThreadSplice). */
  splice: boolean;
  /** capture on: the pinned BPF maps under this root hold the original destinations. */
  pinRoot?: string;
  logLevel: string;
  trustDomain: string;
  health: ClusterHealth[];
  /** cgroup id (decimal) -> `namespace/name` of the workload: who is calling. */
  sources: Array<[string, string]>;
  certs: CertSnapshot[];
  routes?: SourceRoutes;
}

export type ToWorker =
  | { t: 'init'; init: WorkerInit }
  | { t: 'config'; config: MeshConfig }
  | { t: 'health'; clusters: ClusterHealth[] }
  | { t: 'sources'; sources: Array<[string, string]> }
  | { t: 'cert'; cert: CertSnapshot }
  | { t: 'routes'; routes: SourceRoutes }
  | { t: 'metrics'; id: number }
  | { t: 'dump'; id: number }
  | { t: 'stop-accepting'; id: number }
  /** Handed over: every answer from now on says `connection: close`, tunnel sessions get GOAWAY. */
  | { t: 'handed-over' }
  /** `untilClosed`: after a handover, every connection is waited for (answers carry connection: close), not only requests in flight. */
  | { t: 'drain'; ms: number; untilClosed?: boolean };

/** [cluster key, endpoint id, result, latency ms] */
export type Outcome = [string, string, OutlierResult, number];
/** [cluster key, ok, was a half-open probe] */
export type Verdict = [string, boolean, boolean];

export type FromWorker =
  | { t: 'ready' }
  | { t: 'outcomes'; outcomes: Outcome[]; verdicts: Verdict[] }
  | { t: 'log'; text: string }
  | { t: 'metrics'; id: number; json: unknown[] }
  | { t: 'dump'; id: number; dump: unknown }
  | { t: 'stopped-accepting'; id: number }
  | { t: 'drained' };
