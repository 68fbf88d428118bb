import type { Workload } from '../config/types.js';
import type { StateStore } from '../state/store.js';
import { workloadKey } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import { cgroupIdOf, type Datapath } from './datapath.js';

export interface CaptureStatus {
  workload: string;
  cgroup?: string;
  cgroupId?: string;
  captured: boolean;
  strict: boolean;
  error?: string;
}

/**
 * Keeps the kernel in step with the state: every local workload of a meshed namespace has
 * the capture programs on its cgroup; every other pinned cgroup is released; the
 * destinations map holds every mesh destination. Reconciles on each state change and every
 * `resyncMs` (self-healing: a cgroup that appears later, a pin removed behind our back).
 */
export class CaptureManager {
  private readonly log: Logger;
  private readonly byCgroupId = new Map<bigint, Workload>();
  private status = new Map<string, CaptureStatus>();
  private timer?: NodeJS.Timeout;
  private lastDestinations = '';

  constructor(
    private readonly state: StateStore,
    private readonly datapath: Datapath,
    private readonly metrics: Metrics,
    log: Logger,
    private readonly resyncMs = 5000,
  ) {
    this.log = log.child({ component: 'capture' });
  }

  start(): void {
    this.reconcile();
    this.timer = setInterval(() => this.reconcile(), this.resyncMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Take capture back after another agent ran it: links and maps are read afresh from the kernel. */
  resume(): void {
    this.stop();
    this.lastDestinations = '';
    this.datapath.resync();
    this.start();
  }

  /** The workload whose cgroup made a connection (from the id sockops recorded). */
  workloadByCgroupId(id: bigint): Workload | undefined {
    return this.byCgroupId.get(id);
  }

  /** cgroup id (decimal) -> `namespace/name` of every captured workload: who is calling, for worker threads. */
  cgroupSources(): Array<[string, string]> {
    return [...this.byCgroupId].map(([id, w]) => [String(id), `${w.namespace}/${w.name}`]);
  }

  describe(): CaptureStatus[] {
    return [...this.status.values()];
  }

  reconcile(): void {
    const desired = this.state.meshedLocalWorkloads();
    const next = new Map<string, CaptureStatus>();
    const wanted = new Map<bigint, Workload>();
    for (const w of desired) {
      const key = workloadKey(w);
      const strict = this.state.namespace(w.namespace)?.peerAuthentication !== 'permissive';
      if (!w.cgroup) {
        next.set(key, { workload: key, captured: false, strict, error: 'no cgroup known for this workload' });
        continue;
      }
      let id: bigint;
      try {
        id = cgroupIdOf(w.cgroup);
      } catch (err) {
        const msg = `cgroup ${w.cgroup} missing: ${(err as Error).message}`;
        if (this.status.get(key)?.error !== msg) this.log.error({ workload: key, cgroup: w.cgroup }, `cannot capture workload: ${msg}`);
        next.set(key, { workload: key, cgroup: w.cgroup, captured: false, strict, error: msg });
        continue;
      }
      wanted.set(id, w);
      const was = this.status.get(key);
      try {
        this.datapath.attach(w.cgroup, { strict });
        if (!was?.captured || was.cgroupId !== String(id)) this.log.info({ workload: key, cgroup: w.cgroup, cgroupId: String(id), strict }, 'workload captured');
        next.set(key, { workload: key, cgroup: w.cgroup, cgroupId: String(id), captured: true, strict });
      } catch (err) {
        const msg = (err as Error).message;
        if (was?.error !== msg) this.log.error({ workload: key, cgroup: w.cgroup, err: msg }, 'attach failed');
        this.metrics.agentErrors.inc({ kind: 'capture' });
        next.set(key, { workload: key, cgroup: w.cgroup, cgroupId: String(id), captured: false, strict, error: msg });
      }
    }
    // Release cgroups no longer wanted: pod gone, or its namespace left the mesh.
    for (const id of this.datapath.attached().keys()) {
      if (wanted.has(id)) continue;
      try {
        this.datapath.detach(id);
        const w = this.byCgroupId.get(id);
        this.log.info({ cgroupId: String(id), workload: w ? workloadKey(w) : undefined }, 'workload released from capture');
      } catch (err) {
        this.log.error({ cgroupId: String(id), err: (err as Error).message }, 'detach failed');
      }
    }
    this.byCgroupId.clear();
    for (const [id, w] of wanted) this.byCgroupId.set(id, w);
    this.status = next;

    const dests = this.state.destinations();
    const sig = dests
      .map((d) => `${d.ip}:${d.port}`)
      .sort()
      .join(',');
    if (sig !== this.lastDestinations) {
      try {
        this.datapath.setDestinations(dests);
        this.lastDestinations = sig;
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'syncing the destinations map failed');
      }
    }
    const local = this.state.allWorkloads().filter((w) => w.node === this.state.nodeName && this.state.isMeshed(w.namespace));
    const pods = local.map((w) => ({ ip: w.ip, strict: this.state.namespace(w.namespace)?.peerAuthentication !== 'permissive' }));
    try {
      this.datapath.setPods(pods);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'syncing the pods map failed');
    }
    try {
      this.datapath.setProbes(local.flatMap((w) => (w.probePorts ?? []).map((port) => ({ ip: w.ip, port }))));
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'syncing the probe ports map failed');
    }
    this.metrics.capturedWorkloads.set([...next.values()].filter((s) => s.captured).length);
  }
}
