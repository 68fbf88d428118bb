import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { RoundRobinBalancer } from '../../src/balancer/round-robin.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

function tally(picks: Endpoint[]): Map<Endpoint, number> {
  const m = new Map<Endpoint, number>();
  for (const ep of picks) m.set(ep, (m.get(ep) ?? 0) + 1);
  return m;
}

t.test('visits each endpoint equally, in a fixed cycle', async (t) => {
  const eps = endpoints(7, (i) => i + 1);
  const b = new RoundRobinBalancer({ random: seededRandom(3) });
  b.setEndpoints(eps);
  const picks = Array.from({ length: 7 * 100 }, () => b.pick({})!);
  const counts = tally(picks);
  t.equal(counts.size, 7);
  for (const c of counts.values()) t.equal(c, 100);
  for (let i = 7; i < picks.length; i++) if (picks[i] !== picks[i - 7]) t.fail(`cycle broken at ${i}`);
  // Consecutive picks are neighbours in the list.
  for (let i = 1; i < picks.length; i++) {
    if (eps.indexOf(picks[i]!) !== (eps.indexOf(picks[i - 1]!) + 1) % 7) t.fail(`jump at ${i}`);
  }
});

t.test('starts at a random endpoint', async (t) => {
  const eps = endpoints(10);
  const firsts = new Set<Endpoint>();
  for (let seed = 0; seed < 50; seed++) {
    const b = new RoundRobinBalancer({ random: seededRandom(seed) });
    b.setEndpoints(eps);
    firsts.add(b.pick({})!);
  }
  t.ok(firsts.size > 3, `${firsts.size} distinct first picks`);
});

t.test('keeps rotating fairly across set changes', async (t) => {
  const eps = endpoints(6);
  const b = new RoundRobinBalancer({ random: seededRandom(4) });
  b.setEndpoints(eps);
  const before = [b.pick({})!, b.pick({})!];
  // Remove an endpoint that was not picked last, add a new one.
  const removed = eps.find((e) => !before.includes(e))!;
  const extra = endpoints(7)[6]!;
  const next = [...eps.filter((e) => e !== removed), extra];
  b.setEndpoints(next);
  const after = b.pick({})!;
  t.equal(next.indexOf(after), (next.indexOf(before[1]!) + 1) % next.length, 'resumes after the last pick');
  const counts = tally(Array.from({ length: 6 * 50 }, () => b.pick({})!));
  t.equal(counts.size, 6);
  for (const c of counts.values()) t.equal(c, 50);
  // The last-picked endpoint leaves: the cursor stays in range and the cycle stays even.
  const last = b.pick({})!;
  b.setEndpoints(next.filter((e) => e !== last));
  const counts2 = tally(Array.from({ length: 5 * 40 }, () => b.pick({})!));
  t.equal(counts2.size, 5);
  for (const c of counts2.values()) t.equal(c, 40);
});

t.test('retries advance past tried endpoints', async (t) => {
  const eps = endpoints(4);
  const b = new RoundRobinBalancer({ random: seededRandom(5) });
  b.setEndpoints(eps);
  const first = b.pick({})!;
  const tried = new Set([first, eps[(eps.indexOf(first) + 1) % 4]!]);
  const second = b.pick({ tried })!;
  t.equal(eps.indexOf(second), (eps.indexOf(first) + 2) % 4);
});
