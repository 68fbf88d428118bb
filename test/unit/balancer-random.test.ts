import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { RandomBalancer } from '../../src/balancer/random.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

t.test('spreads uniformly (chi-square), weights ignored', async (t) => {
  const eps = endpoints(10, (i) => (i === 0 ? 50 : 1));
  const b = new RandomBalancer({ random: seededRandom(1) });
  b.setEndpoints(eps);
  const n = 100_000;
  const counts = new Map<Endpoint, number>();
  for (let i = 0; i < n; i++) {
    const ep = b.pick({})!;
    counts.set(ep, (counts.get(ep) ?? 0) + 1);
  }
  t.equal(counts.size, 10);
  const expected = n / 10;
  let chi2 = 0;
  for (const c of counts.values()) chi2 += (c - expected) ** 2 / expected;
  // 9 degrees of freedom: P(chi2 > 45) < 1e-6.
  t.ok(chi2 < 45, `chi2 ${chi2.toFixed(2)}`);
});

t.test('also even with the default, unseeded generator (bound good for 1e-6 failure odds)', async (t) => {
  const eps = endpoints(4);
  const b = new RandomBalancer();
  b.setEndpoints(eps);
  const counts = new Map<Endpoint, number>();
  for (let i = 0; i < 40_000; i++) {
    const ep = b.pick({})!;
    counts.set(ep, (counts.get(ep) ?? 0) + 1);
  }
  let chi2 = 0;
  for (const c of counts.values()) chi2 += (c - 10_000) ** 2 / 10_000;
  // 3 degrees of freedom: P(chi2 > 32) < 1e-6.
  t.ok(chi2 < 32, `chi2 ${chi2.toFixed(2)}`);
});

t.test('set changes take effect at once', async (t) => {
  const eps = endpoints(6);
  const b = new RandomBalancer({ random: seededRandom(2) });
  b.setEndpoints(eps);
  b.setEndpoints(eps.slice(3));
  let outside = 0;
  for (let i = 0; i < 1000; i++) if (eps.indexOf(b.pick({})!) < 3) outside++;
  t.equal(outside, 0, 'only current endpoints are picked');
  b.setEndpoints([]);
  t.equal(b.pick({}), undefined);
});
