/**
 * The agent's worker threads, from the control thread's side.
 *
 * With `agent.workers: N` the control thread serves as one of the N and starts N-1 worker
 * threads (worker.ts). Every thread accepts from each of the agent's proxy listening sockets,
 * outbound, inbound and tunnel (each worker on a dup of their fds, src/lifecycle/listeners.ts):
 * one kernel queue per listener, so a worker that dies loses nothing queued, and an upgrade
 * hands the same sockets to the next agent. The listener caps are counted across threads in
 * one shared buffer (proxy/downstream-caps.ts); each thread splices its own L4 connections.
 * The control thread keeps everything that is the node's rather than a connection's:
 * discovery, capture, identity, active health checks, outlier detection and the circuit
 * breakers' decisions. It hands each worker immutable snapshots and takes back outcomes:
 *
 * - config: every applied config, whole;
 * - health: each cluster's endpoint health and ejections and its breaker state, whenever
 *   the control thread's cluster changed them (batched per event-loop turn);
 * - sources: cgroup id -> workload, for telling who is calling;
 * - certificates: each workload certificate as it is issued or rotated (PEM);
 * - outcomes back: each request's result per endpoint and each breaker verdict, which the
 *   control thread's outlier detector and breaker count alongside its own;
 * - log lines back, written through the control thread's one writer; metrics on request,
 *   merged with the control thread's Registry into one exposition.
 *
 * A worker that dies is started again (with a fresh snapshot) after a short backoff; the
 * others, and their connections, are not touched; the dead worker's accepted connections end
 * with it (its slot of the shared connection counts is zeroed), nothing still queued on the
 * sockets is lost.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { Cluster, ClusterHealth } from '../cluster/cluster.js';
import type { ClusterManager } from '../cluster/manager.js';
import type { MeshConfig } from '../config/types.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { SharedConnCounts } from '../proxy/downstream-caps.js';
import type { CertSnapshot, FromWorker, SourceRoutes, ToWorker, WorkerInit } from './protocol.js';

/** The worker module next to this one (.ts when run from source, as the tests do). */
const WORKER_URL = new URL(`./worker${fileURLToPath(import.meta.url).endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);

const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 5_000;
/** A worker that lived this long has its restart backoff reset. */
const STABLE_MS = 10_000;

export interface WorkerPoolOptions {
  /** Worker threads to run (the control thread serves besides them). */
  threads: number;
  /** The snapshot a worker starts from (asked again at every restart). */
  snapshot: () => Omit<WorkerInit, 'index'>;
  /** The control thread's clusters: they take the workers' outcomes. */
  clusters: ClusterManager;
  metrics: Metrics;
  log: Logger;
  /** Writes a batch of workers' log lines with the control thread's writer. */
  writeLog: (text: string) => void;
  /** The agent's shared connection counts: a worker that ended has its slot zeroed (its sockets closed with it). */
  caps?: SharedConnCounts;
  /** Extra Node.js flags for the worker threads (default: the process's). */
  execArgv?: string[];
}

interface Slot {
  index: number;
  worker?: Worker;
  threadId?: number;
  state: 'starting' | 'serving' | 'restarting' | 'stopped';
  startedAt: number;
  restarts: number;
  backoffMs: number;
  lastExit?: string;
}

export class WorkerPool {
  private readonly slots: Slot[] = [];
  private stopping = false;
  /** Handed over: a worker that dies now is not started again (it would accept beside the successor). */
  private acceptingDone = false;
  /** Every worker came up once: from now on a worker that fails is started again. */
  private started = false;
  private nextId = 1;
  private readonly pending = new Map<number, (v: unknown) => void>();
  private readonly changed = new Set<Cluster>();
  private healthScheduled = false;
  /** Latest certificate per identity, for workers (re)started later. */
  readonly certs = new Map<string, CertSnapshot>();
  private routes?: SourceRoutes;
  private sourcesJson = '';

  constructor(private readonly o: WorkerPoolOptions) {
    for (let i = 1; i <= o.threads; i++) this.slots.push({ index: i, state: 'starting', startedAt: 0, restarts: 0, backoffMs: RESTART_MIN_MS });
  }

  /** Start every worker; resolves once each listens (rejects if one fails to start). */
  async start(): Promise<void> {
    await Promise.all(this.slots.map((s) => this.spawn(s)));
    this.started = true;
  }

  get size(): number {
    return this.slots.length;
  }

  private spawn(slot: Slot): Promise<void> {
    const snapshot = this.o.snapshot();
    const init: WorkerInit = { ...snapshot, index: slot.index, certs: [...this.certs.values()], routes: this.routes ?? snapshot.routes };
    // The snapshot goes as the first message (the worker keeps workerData for its whole life).
    const worker = new Worker(WORKER_URL, { workerData: { index: slot.index }, execArgv: this.o.execArgv, name: `weft-worker-${slot.index}` });
    worker.postMessage({ t: 'init', init });
    slot.worker = worker;
    slot.threadId = worker.threadId;
    slot.state = 'starting';
    slot.startedAt = Date.now();
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          ready = true;
          slot.state = 'serving';
          this.o.log.debug({ worker: slot.index, threadId: worker.threadId }, 'worker serving');
          resolve();
          return;
        }
        this.onMessage(m);
      });
      worker.on('error', (e: unknown) => {
        const err = e instanceof Error ? e : new Error(String(e));
        slot.lastExit = err.stack ?? String(err);
        this.o.log.error({ worker: slot.index, err: err.message }, 'worker thread failed');
        if (!ready) reject(new Error(`worker ${slot.index} failed to start: ${err.message}`));
      });
      worker.on('exit', (code) => {
        if (slot.worker !== worker) return;
        slot.worker = undefined;
        // Its sockets closed with the thread: they no longer count against the caps.
        this.o.caps?.clearSlot(slot.index);
        if (this.stopping || this.acceptingDone) {
          slot.state = 'stopped';
          return;
        }
        if (!ready) {
          reject(new Error(`worker ${slot.index} exited with ${code} during start-up${slot.lastExit ? `: ${slot.lastExit}` : ''}`));
          // The agent's own start-up fails with it; a restart that fails is tried again below.
          if (!this.started) return;
        }
        this.o.metrics.agentErrors.inc({ kind: 'worker' });
        if (Date.now() - slot.startedAt > STABLE_MS) slot.backoffMs = RESTART_MIN_MS;
        const delay = slot.backoffMs;
        slot.backoffMs = Math.min(RESTART_MAX_MS, slot.backoffMs * 2);
        slot.state = 'restarting';
        slot.restarts++;
        this.o.log.error({ worker: slot.index, code, restartInMs: delay }, 'worker thread exited: starting it again; the other workers keep serving');
        setTimeout(() => {
          if (this.stopping) return;
          this.spawn(slot).catch((err: Error) => this.o.log.error({ worker: slot.index, err: err.message }, 'worker restart failed'));
        }, delay).unref();
      });
    });
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'outcomes': {
        const clusters = this.o.clusters;
        for (const [key, ep, result] of m.outcomes) clusters.get(key)?.recordRemote(ep, result);
        for (const [key, ok, probe] of m.verdicts) {
          const b = clusters.get(key)?.breaker;
          if (ok) b?.onSuccess(probe);
          else b?.onFailure(probe);
        }
        return;
      }
      case 'log':
        this.o.writeLog(m.text);
        return;
      case 'metrics':
      case 'dump':
      case 'stopped-accepting': {
        const done = this.pending.get(m.id);
        this.pending.delete(m.id);
        done?.(m.t === 'metrics' ? m.json : m.t === 'dump' ? m.dump : true);
        return;
      }
      case 'drained':
      case 'ready':
        return;
    }
  }

  private post(m: ToWorker): void {
    for (const s of this.slots) if (s.worker && s.state !== 'restarting') s.worker.postMessage(m);
  }

  /** A config was applied on the control thread. */
  config(config: MeshConfig): void {
    this.post({ t: 'config', config });
  }

  /** The control thread's cluster changed health, ejections or breaker state: tell the workers (once per turn). */
  healthChanged(c: Cluster): void {
    this.changed.add(c);
    if (this.healthScheduled) return;
    this.healthScheduled = true;
    setImmediate(() => {
      this.healthScheduled = false;
      const clusters: ClusterHealth[] = [...this.changed].map((x) => x.health());
      this.changed.clear();
      this.post({ t: 'health', clusters });
    });
  }

  /** Who is calling: cgroup id -> workload. Sent when it changed. */
  sources(list: Array<[string, string]>): void {
    const json = JSON.stringify(list);
    if (json === this.sourcesJson) return;
    this.sourcesJson = json;
    this.post({ t: 'sources', sources: list });
  }

  cert(c: CertSnapshot): void {
    this.certs.set(`${c.namespace}/${c.serviceAccount}`, c);
    this.post({ t: 'cert', cert: c });
  }

  /** Loopback tests without eBPF: the original destinations by source address. */
  setRoutes(routes: SourceRoutes): void {
    this.routes = routes;
    this.post({ t: 'routes', routes });
  }

  /** A successor took the listening sockets: every worker closes its fd of them (connections it holds go on). */
  async stopAccepting(): Promise<void> {
    this.acceptingDone = true;
    await Promise.all(this.slots.filter((s) => s.worker && s.state === 'serving').map((s) => this.ask(s, { t: 'stop-accepting' })));
  }

  /** Handed over: the workers drain as the control thread does (`connection: close`, GOAWAY). */
  handedOver(): void {
    this.post({ t: 'handed-over' });
  }

  private ask(s: Slot, m: { t: 'metrics' | 'dump' | 'stop-accepting' }, timeoutMs = 2_000): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve(undefined);
      }, timeoutMs);
      this.pending.set(id, (v) => {
        clearTimeout(timer);
        resolve(v);
      });
      s.worker!.postMessage({ ...m, id } as ToWorker);
    });
  }

  /**
   * The agent's metrics as one: the control thread's Registry merged with every serving
   * worker's (prom-client's AggregatorRegistry: counters and histograms summed; gauges
   * that the control thread decides and workers follow are taken at their max; the process's
   * own series once).
   */
  async metrics(control: Registry): Promise<{ text: string; contentType: string }> {
    const serving = this.slots.filter((s) => s.worker && s.state === 'serving');
    const parts = await Promise.all(serving.map((s) => this.ask(s, { t: 'metrics' })));
    // The process_* series (RSS, CPU, fds, start time) are the process's, read alike by every
    // thread: the control thread's alone, not one more copy per worker. Event-loop lag is each
    // thread's own: the worst thread's, not a sum.
    const workerParts = parts.filter((p): p is Array<{ name: string }> => Array.isArray(p)).map((p) => p.filter((m) => !m.name.startsWith('process_')));
    const all = [await control.getMetricsAsJSON(), ...workerParts] as Array<Array<{ name: string; aggregator?: string }>>;
    for (const part of all)
      for (const m of part) {
        if (m.name.startsWith('nodejs_eventloop_lag')) m.aggregator = 'max';
        // One copy now: 'first' rather than prom-client's per-process choices (which omit the start time).
        else if (m.name.startsWith('process_')) m.aggregator = 'first';
      }
    const merged = AggregatorRegistry.aggregate(all as Parameters<typeof AggregatorRegistry.aggregate>[0]);
    return { text: await merged.metrics(), contentType: control.contentType };
  }

  /** For /config_dump: each worker's state and what it serves now. */
  async describe(): Promise<unknown[]> {
    return Promise.all(
      this.slots.map(async (s) => ({
        index: s.index,
        threadId: s.worker?.threadId,
        state: s.state,
        restarts: s.restarts,
        lastExit: s.lastExit?.split('\n')[0],
        serving: s.worker && s.state === 'serving' ? await this.ask(s, { t: 'dump' }) : undefined,
      })),
    );
  }

  /** Thread ids of the serving workers (tests end one to see it come back). */
  workerThreads(): Array<{ index: number; threadId?: number; state: Slot['state']; restarts: number; worker?: Worker }> {
    return this.slots.map((s) => ({ index: s.index, threadId: s.worker?.threadId, state: s.state, restarts: s.restarts, worker: s.worker }));
  }

  /** Every worker stops accepting, drains for up to `drainMs`, and ends. */
  async stop(drainMs: number, opts: { untilClosed?: boolean } = {}): Promise<void> {
    this.stopping = true;
    await Promise.all(
      this.slots.map(async (s) => {
        const w = s.worker;
        if (!w) return;
        const drained = new Promise<void>((resolve) => {
          w.on('message', (m: FromWorker) => m.t === 'drained' && resolve());
          w.once('exit', () => resolve());
        });
        w.postMessage({ t: 'drain', ms: drainMs, untilClosed: opts.untilClosed } satisfies ToWorker);
        await Promise.race([drained, new Promise((r) => setTimeout(r, drainMs + 2_000).unref())]);
        await w.terminate();
        s.state = 'stopped';
      }),
    );
  }
}
