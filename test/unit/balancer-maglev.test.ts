import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { MaglevBalancer, nextPrime } from '../../src/balancer/maglev.js';
import { createBalancer } from '../../src/balancer/index.js';
import { hashKey } from '../../src/balancer/hash.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

const KEYS = Array.from({ length: 10_000 }, (_, i) => hashKey(`user-${i}`));

function map(b: MaglevBalancer): Endpoint[] {
  return KEYS.map((hash) => b.pick({ hash })!);
}

/** Table slots per endpoint: hashes 0..M-1 address each slot once. */
function slots(b: MaglevBalancer): Map<Endpoint, number> {
  const counts = new Map<Endpoint, number>();
  for (let h = 0; h < b.tableSize; h++) {
    const ep = b.pick({ hash: h })!;
    counts.set(ep, (counts.get(ep) ?? 0) + 1);
  }
  return counts;
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
  const b = new MaglevBalancer();
  b.setEndpoints(eps);
  t.equal(b.tableSize, 65537);
  const first = map(b);
  t.same(map(b), first);
  const other = new MaglevBalancer();
  other.setEndpoints(shuffled(eps, 2));
  t.same(map(other), first, 'another agent, another listing order: same table');
});

t.test('equal weights: table slots even to one, keys spread', async (t) => {
  const eps = endpoints(10);
  const b = new MaglevBalancer();
  b.setEndpoints(eps);
  const s = [...slots(b).values()];
  t.equal(s.length, 10);
  t.ok(Math.max(...s) - Math.min(...s) <= 1, `slots ${s.join(' ')}`);
  const counts = new Map<Endpoint, number>();
  for (const ep of map(b)) counts.set(ep, (counts.get(ep) ?? 0) + 1);
  const shares = [...counts.values()].map((c) => c / 1000);
  t.equal(shares.length, 10);
  t.ok(Math.min(...shares) > 0.85 && Math.max(...shares) < 1.15, `load / mean ${shares.map((x) => x.toFixed(2)).join(' ')}`);
});

t.test('removing one of N moves about 1/N of keys', async (t) => {
  for (const n of [5, 10, 50]) {
    const eps = endpoints(n);
    const b = new MaglevBalancer();
    b.setEndpoints(eps);
    const before = map(b);
    const gone = eps[1]!;
    b.setEndpoints(eps.filter((e) => e !== gone));
    const after = map(b);
    let moved = 0;
    let lost = 0;
    for (let i = 0; i < KEYS.length; i++) {
      if (before[i] === gone) lost++;
      else if (before[i] !== after[i]) moved++;
    }
    const fraction = (lost + moved) / KEYS.length;
    t.ok(fraction < 1 / n + 0.04, `n=${n}: moved ${fraction.toFixed(4)} (1/n = ${(1 / n).toFixed(4)}, of it churn ${(moved / KEYS.length).toFixed(4)})`);
    b.setEndpoints(eps);
    t.same(map(b), before, `n=${n}: same set, same table`);
  }
});

t.test('weights honoured in the table', async (t) => {
  const weights = [1, 1, 2, 2, 4];
  const eps = endpoints(5, (i) => weights[i]!);
  const b = new MaglevBalancer();
  b.setEndpoints(eps);
  const s = slots(b);
  for (let i = 0; i < 5; i++) {
    const got = s.get(eps[i]!)! / b.tableSize;
    const want = weights[i]! / 10;
    t.ok(Math.abs(got - want) < 0.002, `weight ${weights[i]}: ${got.toFixed(4)} of slots, want ${want}`);
  }
});

t.test('table size from the policy, rounded up to a prime', async (t) => {
  t.equal(nextPrime(65536), 65537);
  t.equal(nextPrime(2), 2);
  t.equal(nextPrime(1000), 1009);
  const b = createBalancer({ type: 'maglev', tableSize: 1000 }) as MaglevBalancer;
  t.equal(b.tableSize, 1009);
  b.setEndpoints(endpoints(3));
  t.equal(slots(b).size, 3);
});

t.test('more endpoints than slots: every slot filled, no crash', async (t) => {
  const b = new MaglevBalancer({ tableSize: 7 });
  b.setEndpoints(endpoints(20));
  t.equal(
    [...slots(b).values()].reduce((a, c) => a + c, 0),
    7,
  );
});

t.test('no hash: random slots, every endpoint reached', async (t) => {
  const eps = endpoints(6);
  const b = new MaglevBalancer({ random: seededRandom(6) });
  b.setEndpoints(eps);
  const seen = new Set<Endpoint>();
  for (let i = 0; i < 1000; i++) seen.add(b.pick({})!);
  t.equal(seen.size, 6);
});

t.test('retries walk to the next distinct endpoint in the table, deterministically', async (t) => {
  const eps = endpoints(8);
  const b = new MaglevBalancer();
  b.setEndpoints(eps);
  let bad = 0;
  for (const hash of KEYS.slice(0, 2000)) {
    const first = b.pick({ hash })!;
    const second = b.pick({ hash, tried: new Set([first]) })!;
    if (second === first || b.pick({ hash, tried: new Set([first]) }) !== second) bad++;
    const third = b.pick({ hash, tried: new Set([first, second]) })!;
    if (third === first || third === second) bad++;
  }
  t.equal(bad, 0);
  t.equal(b.pick({ hash: 1, tried: new Set(eps) }) !== undefined, true, 'all tried: still an answer');
});
