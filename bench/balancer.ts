/**
 * Pick micro-benchmark for every load balancer: ns per pick at 10, 100 and 10,000
 * endpoints, and the cost of `setEndpoints` (a rebuild on a health change) at 10,000.
 *
 *   node dist/bench/balancer.js [algorithm...]     (after tsc; default: all algorithms)
 *
 * A pick is timed with the bookkeeping a proxy does around it: hash keys precomputed,
 * `active` raised on pick and lowered when one of 64 requests in flight completes, and
 * for peak-ewma an `observe()` per completion. All balancers run in one loop, so the
 * call site is polymorphic, as in the proxy: the numbers are an upper bound.
 */
import { pathToFileURL } from 'node:url';
import { Endpoint } from '../src/cluster/endpoint.js';
import { BALANCER_TYPES, createBalancer, hashKey } from '../src/balancer/index.js';
import type { Balancer, PickContext } from '../src/balancer/types.js';
import type { LoadBalancerType } from '../src/config/types.js';

export interface Row {
  algorithm: LoadBalancerType;
  endpoints: number;
  /** Wall time per pick (process.hrtime), ns: the best of a few runs of 1e6 picks. */
  nsPerPick: number;
  /** CPU time per pick (process.cpuUsage), ns, same runs: steadier on a shared machine. */
  cpuNsPerPick: number;
  /** Median CPU time of one `setEndpoints` (one endpoint leaving or coming back), µs; at 10,000 endpoints only. */
  rebuildUs?: number;
}

const SIZES = [10, 100, 10_000];
const PICKS = 1_000_000;
const WARMUP = 300_000;
const RUNS = 5;
const INFLIGHT = 64;

function makeEndpoints(n: number): Endpoint[] {
  return Array.from(
    { length: n },
    (_, i) =>
      new Endpoint({
        ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
        port: 8080,
        weight: 1 + (i % 4),
        workload: `w-${i}`,
        namespace: 'bench',
        node: 'node-a',
        serviceAccount: 'sa',
        ready: true,
        local: false,
        meshed: true,
      }),
  );
}

const HASHES = Uint32Array.from({ length: 4096 }, (_, i) => hashKey(`user-${i}`));
const LATENCIES = Float64Array.from({ length: 1024 }, (_, i) => 2 + ((i * 7919) % 50));

let sink = 0;

interface Timing {
  wallNs: number;
  cpuNs: number;
}

/** `count` picks with the proxy-side bookkeeping. */
function run(b: Balancer, count: number, hashed: boolean, track: boolean, observe: boolean): Timing {
  const ctx: PickContext = hashed ? { hash: 0 } : {};
  const inflight: Array<Endpoint | undefined> = new Array<Endpoint | undefined>(INFLIGHT).fill(undefined);
  let now = Date.now();
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    if (hashed) ctx.hash = HASHES[i & 4095]!;
    const ep = b.pick(ctx)!;
    if (track) {
      const slot = i & (INFLIGHT - 1);
      const done = inflight[slot];
      if (done !== undefined) {
        done.active--;
        if (observe) b.observe!(done, LATENCIES[i & 1023]!, now);
      }
      ep.active++;
      inflight[slot] = ep;
      if ((i & 1023) === 0) now++;
    } else {
      sink += ep.active;
    }
  }
  const wallNs = Number(process.hrtime.bigint() - start);
  const used = process.cpuUsage(cpu);
  for (const ep of inflight) if (ep !== undefined) ep.active--;
  return { wallNs, cpuNs: (used.user + used.system) * 1000 };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Median CPU time of one setEndpoints at the size of `eps`, one endpoint leaving or coming back, µs. */
function timeRebuild(type: LoadBalancerType, eps: Endpoint[]): number {
  const b = createBalancer({ type });
  const minusOne = eps.filter((_, i) => i !== eps.length >> 1);
  b.setEndpoints(eps);
  b.setEndpoints(minusOne);
  const times: number[] = [];
  const rounds = type === 'ring-hash' || type === 'maglev' ? 21 : 61;
  for (let r = 0; r < rounds; r++) {
    const cpu = process.cpuUsage();
    b.setEndpoints(r % 2 === 0 ? eps : minusOne);
    const used = process.cpuUsage(cpu);
    times.push(used.user + used.system);
  }
  return median(times);
}

/** Runs the benchmark; a row per algorithm (default: all) and size. */
export async function benchBalancers(types: readonly LoadBalancerType[] = BALANCER_TYPES): Promise<Row[]> {
  const rows: Row[] = [];
  const sets = new Map(SIZES.map((n) => [n, makeEndpoints(n)] as const));
  for (const type of types) {
    const hashed = type === 'ring-hash' || type === 'maglev';
    const track = type === 'least-request' || type === 'peak-ewma';
    const observe = type === 'peak-ewma';
    for (const n of SIZES) {
      const eps = sets.get(n)!;
      for (const ep of eps) {
        ep.active = 0;
        ep.rttEwma = 0;
        ep.rttStamp = 0;
      }
      const b = createBalancer({ type });
      b.setEndpoints(eps);
      run(b, WARMUP, hashed, track, observe);
      const runs: Timing[] = [];
      for (let r = 0; r < RUNS; r++) runs.push(run(b, PICKS, hashed, track, observe));
      const row: Row = {
        algorithm: type,
        endpoints: n,
        nsPerPick: Math.min(...runs.map((x) => x.wallNs)) / PICKS,
        cpuNsPerPick: Math.min(...runs.map((x) => x.cpuNs)) / PICKS,
      };
      if (n === 10_000) row.rebuildUs = timeRebuild(type, eps);
      rows.push(row);
      // Let timers and I/O breathe between cases.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  if (sink === -1) console.log(sink);
  return rows;
}

/** The rows as a markdown table. */
export function formatBalancerTable(rows: readonly Row[]): string {
  const lines = ['| algorithm | endpoints | ns/pick (wall) | ns/pick (cpu) | setEndpoints (µs, cpu) |', '|---|---:|---:|---:|---:|'];
  for (const r of rows) {
    const rebuild = r.rebuildUs === undefined ? '' : r.rebuildUs.toFixed(0);
    lines.push(`| ${r.algorithm} | ${r.endpoints} | ${r.nsPerPick.toFixed(1)} | ${r.cpuNsPerPick.toFixed(1)} | ${rebuild} |`);
  }
  return lines.join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  // Optional arguments: the algorithms to run (default: all).
  const wanted = process.argv.slice(2) as LoadBalancerType[];
  const unknown = wanted.filter((t) => !BALANCER_TYPES.includes(t));
  if (unknown.length > 0) throw new Error(`unknown algorithm(s): ${unknown.join(', ')}`);
  const rows = await benchBalancers(wanted.length > 0 ? wanted : BALANCER_TYPES);
  console.log(formatBalancerTable(rows));
}
