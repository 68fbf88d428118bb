// src/workers/memory.ts: what a thread gives back after a burst of allocation, through the
// native addon (V8's low-memory collection of this thread's isolate, glibc's malloc_trim).
import t from 'tap';
import { getHeapSpaceStatistics } from 'node:v8';
import { releaseMemory, MemoryRelease } from '../../src/workers/memory.js';
import { silentLogger } from '../../src/telemetry/log.js';

const MB = 1024 * 1024;
const young = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.physical_space_size;

/** A burst like a snapshot's arrival: many small objects that survive scavenges, then dropped. */
function burst(): number {
  let keep: object[] = [];
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < 50_000; i++) keep.push({ ip: `10.0.${i >> 8}.${i & 255}`, port: i, ready: true });
    if (keep.length > 400_000) keep = [];
  }
  return keep.length;
}

t.test('the young generation a burst grew goes back, and the heap does not grow', async (t) => {
  t.ok(burst() > 0);
  const grown = young();
  const r = releaseMemory({ heap: true });
  t.ok(r.youngBeforeMb * MB >= grown - MB, 'the figure before is what the burst left');
  t.ok(r.youngAfterMb < r.youngBeforeMb, `young generation ${r.youngBeforeMb.toFixed(1)} -> ${r.youngAfterMb.toFixed(1)} MB`);
  t.ok(r.heapAfterMb <= r.heapBeforeMb, `heap ${r.heapBeforeMb.toFixed(1)} -> ${r.heapAfterMb.toFixed(1)} MB`);
  t.ok(young() < grown, 'the young generation stays smaller after the call');
});

t.test('malloc trim alone leaves the V8 heap alone', async (t) => {
  t.ok(burst() > 0);
  const r = releaseMemory({ heap: false });
  t.equal(r.youngAfterMb, r.youngBeforeMb, 'no collection without heap: true');
});

t.test('a run of scheduled releases makes one, after the last', async (t) => {
  const lines: Array<Record<string, unknown>> = [];
  const log = { ...silentLogger, debug: (o: Record<string, unknown>) => lines.push(o), warn: (o: Record<string, unknown>) => lines.push({ ...o, warn: true }) } as unknown as typeof silentLogger;
  const rel = new MemoryRelease(log, { heap: false, delayMs: 30 });
  rel.schedule('config');
  rel.schedule('config');
  rel.schedule('config');
  await new Promise((r) => setTimeout(r, 150));
  t.equal(lines.length, 1, 'one release for three changes');
  t.equal(lines[0]!.reason, 'config');
  t.notOk(lines[0]!.warn, 'the addon answered');
  rel.schedule('config');
  rel.cancel();
  await new Promise((r) => setTimeout(r, 100));
  t.equal(lines.length, 1, 'a cancelled release does not run');
});

t.test('scheduled releases are at least minIntervalMs apart: a change soon after one waits', async (t) => {
  const at: number[] = [];
  const log = { ...silentLogger, debug: () => at.push(Date.now()), warn: () => at.push(-1) } as unknown as typeof silentLogger;
  const rel = new MemoryRelease(log, { heap: false, delayMs: 20, minIntervalMs: 400 });
  t.teardown(() => rel.cancel());
  rel.schedule('config');
  while (at.length < 1) await new Promise((r) => setTimeout(r, 10));
  rel.schedule('config');
  rel.schedule('config');
  await new Promise((r) => setTimeout(r, 150));
  t.equal(at.length, 1, 'the second run waits for the interval, not only the debounce');
  while (at.length < 2) await new Promise((r) => setTimeout(r, 10));
  t.ok(at[1]! - at[0]! >= 400, `the second release ${at[1]! - at[0]!} ms after the first`);
  t.ok(
    at.every((x) => x > 0),
    'the addon answered',
  );
});
