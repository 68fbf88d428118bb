import t from 'tap';
import { Xoshiro128 } from '../../src/balancer/prng.js';

t.test('xoshiro128** matches the reference implementation', async (t) => {
  const g = new Xoshiro128([1, 2, 3, 4]);
  t.same(
    Array.from({ length: 6 }, () => g.nextUint32()),
    [11520, 0, 5927040, 70819200, 2031721883, 1637235492],
  );
  for (let i = 0; i < 1000; i++) g.nextUint32();
  t.equal(g.nextUint32(), 1590764842);
});

t.test('next() is uniform in [0, 1)', async (t) => {
  const g = new Xoshiro128();
  const buckets = new Array<number>(32).fill(0);
  const n = 320_000;
  for (let i = 0; i < n; i++) {
    const r = g.next();
    if (!(r >= 0 && r < 1)) t.fail(`out of range: ${r}`);
    buckets[Math.floor(r * 32)]!++;
  }
  const chi2 = buckets.reduce((s, c) => s + (c - n / 32) ** 2 / (n / 32), 0);
  // 31 degrees of freedom: P(chi2 > 85) < 1e-6.
  t.ok(chi2 < 85, `chi2 ${chi2.toFixed(1)}`);
});

t.test('unseeded generators differ; an all-zero seed is repaired', async (t) => {
  t.not(new Xoshiro128().nextUint32(), new Xoshiro128().nextUint32());
  const z = new Xoshiro128([0, 0, 0, 0]);
  const seen = new Set(Array.from({ length: 10 }, () => z.nextUint32()));
  t.ok(seen.size > 5);
});
