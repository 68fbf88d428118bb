import type { Workload } from '../config/types.js';
import type { Target } from '../state/store.js';
import type { DescribedSource } from '../telemetry/labels.js';

/** What the agent knows about one redirected downstream connection. */
export interface ConnContext {
  /** The calling workload, from the cgroup id captured at connect time (never from the source IP alone). */
  source?: Workload;
  sourceIp: string;
  /** The address the application dialed. */
  origIp: string;
  origPort: number;
  target: Target;
  /**
   * The verified peer on inbound tunnel connections (its SPIFFE principal from the mTLS
   * certificate). Absent on the outbound path, where `source` identifies the caller.
   */
  peer?: { principal?: string; namespace?: string; ip: string };
  /**
   * Inbound through the tunnel, when `source` is unknown here: the caller as its agent
   * described it (`baggage`), consistent with the verified peer. Metric labels and access-log
   * fields only; authorization never reads it.
   */
  described?: DescribedSource;
  /** mTLS between agents carried this connection. */
  tunnelled?: boolean;
}

export interface OrigDst {
  ip: string;
  port: number;
  cgroupId?: bigint;
}

/** Finds the original destination of an accepted socket (eBPF maps in production, a table in tests). */
export type OrigDstLookup = (socket: import('node:net').Socket) => OrigDst | undefined;

/** Maps the cgroup id recorded at connect time to the calling workload. */
export type SourceLookup = (od: OrigDst, sourceIp: string) => Workload | undefined;
