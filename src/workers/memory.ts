/**
 * Memory given back after a burst: the agent's start-up, a worker thread's first snapshot, a
 * config change. At 1,000 workloads + 10,000 endpoints a burst leaves behind
 *
 * - in each thread's V8 heap, a young generation grown to its maximum (two semi-spaces of
 *   `--max-semi-space-size`) and old-space pages of garbage (a snapshot's structured clone,
 *   the strings interning replaced). V8 gives these back only from a full collection (its
 *   memory reducer starts after one): a worker that applied one snapshot has had none, and
 *   keeps them for as long as it lives;
 * - in glibc's malloc arenas (one per thread that allocated), the freed buffers of the
 *   snapshot messages and the YAML parse: free, but resident until trimmed.
 *
 * So each thread, once a burst is over (debounced: config changes come in runs), asks V8 for
 * its low-memory collection (native/memory.cc: Isolate::LowMemoryNotification) and glibc for
 * malloc_trim(0). Neither runs on a request's path; the young generation grows back as
 * traffic needs it (docs/benchmarks/memory.md has the measurements).
 */
import { getHeapSpaceStatistics } from 'node:v8';
import { addon } from '../capture/bpf.js';
import type { Logger } from '../telemetry/log.js';

interface MemoryNative {
  mallocTrim(): boolean;
  lowMemoryNotification(): void;
}

function native(): MemoryNative {
  return addon() as unknown as MemoryNative;
}

export interface Released {
  /** Wall time the release took on this thread, ms. */
  ms: number;
  /** This thread's V8 heap before and after, MiB (process.memoryUsage: heapTotal). */
  heapBeforeMb: number;
  heapAfterMb: number;
  /** The process's RSS before and after, MiB. */
  rssBeforeMb: number;
  rssAfterMb: number;
  /** This thread's young generation (new space, committed) before and after, MiB. */
  youngBeforeMb: number;
  youngAfterMb: number;
}

function youngMb(): number {
  return (getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.physical_space_size ?? 0) / MB;
}

const MB = 1024 * 1024;

/** Collect this thread's heap with V8's low-memory collection (when `heap`), then trim malloc's arenas. */
export function releaseMemory(o: { heap: boolean }): Released {
  const t = performance.now();
  const before = process.memoryUsage();
  const youngBeforeMb = youngMb();
  const n = native();
  if (o.heap) n.lowMemoryNotification();
  n.mallocTrim();
  const after = process.memoryUsage();
  return {
    ms: performance.now() - t,
    heapBeforeMb: before.heapTotal / MB,
    heapAfterMb: after.heapTotal / MB,
    rssBeforeMb: before.rss / MB,
    rssAfterMb: after.rss / MB,
    youngBeforeMb,
    youngAfterMb: youngMb(),
  };
}

/**
 * One release `delayMs` after the last `schedule()` (a run of config changes: one release
 * after the last). The timer does not hold the event loop open.
 */
export class MemoryRelease {
  private timer: NodeJS.Timeout | undefined;
  /** Releases made so far, and the last one (for /config_dump). */
  count = 0;
  last?: Released & { reason: string; at: string };

  /** When the last scheduled (not start-up) release ran, ms since the epoch. */
  private lastScheduled = Number.NEGATIVE_INFINITY;

  /**
   * `minIntervalMs`: scheduled releases at least this far apart. A heap release stops the
   * thread for its collection (60–400 ms measured on a worker at 10,000 endpoints): on a
   * cluster whose pods churn all the time, a release after every run of changes would put
   * that pause in the requests' latency every few seconds; at most one per interval bounds it.
   */
  constructor(
    private readonly log: Logger,
    private readonly o: { heap: boolean; delayMs: number; minIntervalMs?: number },
  ) {}

  schedule(reason: string): void {
    if (this.timer) clearTimeout(this.timer);
    const wait = Math.max(this.o.delayMs, this.lastScheduled + (this.o.minIntervalMs ?? 0) - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.lastScheduled = Date.now();
      this.now(reason);
    }, wait);
    this.timer.unref();
  }

  /** Release now (a failure to load the addon is logged, never thrown: memory is not worth a crash). */
  now(reason: string, o: { heap?: boolean } = {}): Released | undefined {
    try {
      const r = releaseMemory({ heap: o.heap ?? this.o.heap });
      this.count++;
      this.last = { ...r, reason, at: new Date().toISOString() };
      this.log.debug(
        {
          reason,
          ms: Math.round(r.ms),
          heapMb: [Math.round(r.heapBeforeMb), Math.round(r.heapAfterMb)],
          youngMb: [Math.round(r.youngBeforeMb), Math.round(r.youngAfterMb)],
          rssMb: [Math.round(r.rssBeforeMb), Math.round(r.rssAfterMb)],
        },
        'memory released',
      );
      return r;
    } catch (err) {
      this.log.warn({ reason, err: (err as Error).message }, 'releasing memory failed');
      return undefined;
    }
  }

  /** What /config_dump shows: releases so far, the last one, and this thread's heap now (MiB, rounded to 0.1). */
  describe(): { releases: number; last?: { reason: string; at: string; ms: number; heapMb: [number, number]; youngMb: [number, number] }; heapMb: number; youngMb: number } {
    const r = (x: number): number => Math.round(x * 10) / 10;
    const l = this.last;
    return {
      releases: this.count,
      last: l && { reason: l.reason, at: l.at, ms: Math.round(l.ms), heapMb: [r(l.heapBeforeMb), r(l.heapAfterMb)], youngMb: [r(l.youngBeforeMb), r(l.youngAfterMb)] },
      heapMb: r(process.memoryUsage().heapTotal / MB),
      youngMb: r(youngMb()),
    };
  }

  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
