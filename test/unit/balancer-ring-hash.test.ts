import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { RingHashBalancer } from '../../src/balancer/ring-hash.js';
import { createBalancer } from '../../src/balancer/index.js';
import { hashKey } from '../../src/balancer/hash.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

const KEYS = Array.from({ length: 10_000 }, (_, i) => hashKey(`user-${i}`));

function map(b: RingHashBalancer): Endpoint[] {
  return KEYS.map((hash) => b.pick({ hash })!);
}

function shuffled<T>(a: readonly T[], seed: number): T[] {
  const r = seededRandom(seed);
  const out = [...a];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

t.test('same key, same endpoint; independent of the order endpoints are listed in', async (t) => {
  const eps = endpoints(10);
  const b = new RingHashBalancer();
  b.setEndpoints(eps);
  const first = map(b);
  t.same(map(b), first, 'stable across picks');
  const other = new RingHashBalancer();
  other.setEndpoints(shuffled(eps, 1));
  t.same(map(other), first, 'another agent, another listing order: same mapping');
});

t.test('10k keys spread over every endpoint', async (t) => {
  const eps = endpoints(10);
  const b = new RingHashBalancer();
  b.setEndpoints(eps);
  t.ok(b.size >= 1024, `ring size ${b.size}`);
  const counts = new Map<Endpoint, number>();
  for (const ep of map(b)) counts.set(ep, (counts.get(ep) ?? 0) + 1);
  t.equal(counts.size, 10);
  const shares = [...counts.values()].map((c) => c / 1000);
  t.ok(Math.min(...shares) > 0.7 && Math.max(...shares) < 1.3, `per-endpoint load / mean: ${shares.map((s) => s.toFixed(2)).join(' ')}`);
});

t.test('removing one of N moves exactly its keys; adding one moves keys only to it', async (t) => {
  for (const n of [10, 37, 1000]) {
    const eps = endpoints(n);
    const b = new RingHashBalancer();
    b.setEndpoints(eps);
    const before = map(b);
    const gone = eps[3]!;
    b.setEndpoints(eps.filter((e) => e !== gone));
    const after = map(b);
    let moved = 0;
    let wrong = 0;
    for (let i = 0; i < KEYS.length; i++) {
      if (before[i] === after[i]) continue;
      moved++;
      if (before[i] !== gone) wrong++;
    }
    t.equal(wrong, 0, `n=${n}: only keys of the removed endpoint moved`);
    t.equal(moved, before.filter((e) => e === gone).length, `n=${n}: all of them moved (${moved})`);
    t.ok(moved / KEYS.length < 2.5 / n, `n=${n}: moved fraction ${(moved / KEYS.length).toFixed(4)} vs 1/n ${(1 / n).toFixed(4)}`);
    b.setEndpoints(eps);
    t.same(map(b), before, `n=${n}: it comes back to its old keys`);
    const extra = endpoints(n + 1)[n]!;
    b.setEndpoints([...eps, extra]);
    const grown = map(b);
    let stray = 0;
    for (let i = 0; i < KEYS.length; i++) if (grown[i] !== before[i] && grown[i] !== extra) stray++;
    t.equal(stray, 0, `n=${n}: keys move only to the newcomer`);
  }
});

t.test('weights are honoured roughly', async (t) => {
  const weights = [1, 1, 2, 2, 4];
  const eps = endpoints(5, (i) => weights[i]!);
  const b = new RingHashBalancer();
  b.setEndpoints(eps);
  const r = seededRandom(5);
  const counts = new Map<Endpoint, number>();
  const n = 200_000;
  for (let i = 0; i < n; i++) {
    const ep = b.pick({ hash: Math.floor(r() * 2 ** 32) })!;
    counts.set(ep, (counts.get(ep) ?? 0) + 1);
  }
  for (let i = 0; i < 5; i++) {
    const want = weights[i]! / 10;
    const got = (counts.get(eps[i]!) ?? 0) / n;
    t.ok(Math.abs(got - want) / want < 0.25, `weight ${weights[i]}: share ${got.toFixed(3)}, want ${want}`);
  }
});

t.test('minRingSize from the policy; large sets get a point per endpoint at least', async (t) => {
  const b = createBalancer({ type: 'ring-hash', minRingSize: 4096 }) as RingHashBalancer;
  b.setEndpoints(endpoints(10));
  t.ok(b.size >= 4096 && b.size <= 4 * 4096, `ring size ${b.size}`);
  const big = new RingHashBalancer();
  const eps = endpoints(10_000);
  big.setEndpoints(eps);
  t.ok(big.size >= 10_000, `ring size ${big.size}`);
  const seen = new Set<Endpoint>();
  for (let h = 0; h < 2 ** 32; h += 2 ** 32 / 200_000) seen.add(big.pick({ hash: h })!);
  t.ok(seen.size > 9_000, `${seen.size} of 10000 endpoints reachable`);
});

t.test('no hash: random points, every endpoint reached', async (t) => {
  const eps = endpoints(6);
  const b = new RingHashBalancer({ random: seededRandom(6) });
  b.setEndpoints(eps);
  const seen = new Set<Endpoint>();
  for (let i = 0; i < 1000; i++) seen.add(b.pick({})!);
  t.equal(seen.size, 6);
});

t.test('retries walk to the next distinct endpoint on the ring, deterministically', async (t) => {
  const eps = endpoints(8);
  const b = new RingHashBalancer();
  b.setEndpoints(eps);
  let bad = 0;
  for (const hash of KEYS.slice(0, 2000)) {
    const first = b.pick({ hash })!;
    const tried = new Set([first]);
    const second = b.pick({ hash, tried })!;
    if (second === first || b.pick({ hash, tried }) !== second) bad++;
    const third = b.pick({ hash, tried: new Set([first, second]) })!;
    if (third === first || third === second) bad++;
  }
  t.equal(bad, 0);
  t.equal(b.pick({ hash: 1, tried: new Set(eps) }) !== undefined, true, 'all tried: still an answer');
});
