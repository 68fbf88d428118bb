import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { WeightedRoundRobinBalancer } from '../../src/balancer/weighted-round-robin.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

function tally(picks: Endpoint[]): Map<Endpoint, number> {
  const m = new Map<Endpoint, number>();
  for (const ep of picks) m.set(ep, (m.get(ep) ?? 0) + 1);
  return m;
}

/** Longest run of consecutive picks of `ep`. */
function longestRun(picks: Endpoint[], ep: Endpoint): number {
  let best = 0;
  let run = 0;
  for (const p of picks) {
    run = p === ep ? run + 1 : 0;
    if (run > best) best = run;
  }
  return best;
}

t.test('1:3 within 2%, and smooth', async (t) => {
  for (let seed = 0; seed < 20; seed++) {
    const [light, heavy] = endpoints(2, (i) => (i === 0 ? 1 : 3)) as [Endpoint, Endpoint];
    const b = new WeightedRoundRobinBalancer({ random: seededRandom(seed) });
    b.setEndpoints([light, heavy]);
    const picks = Array.from({ length: 40_000 }, () => b.pick({})!);
    const share = tally(picks).get(heavy)! / picks.length;
    t.ok(Math.abs(share - 0.75) < 0.02 * 0.75, `seed ${seed}: heavy share ${share}`);
    // No burst: at most ceil(3/1) + 1 heavy picks in a row.
    t.ok(longestRun(picks, heavy) <= 4, `seed ${seed}: longest heavy run ${longestRun(picks, heavy)}`);
  }
});

t.test('many endpoints: each gets its weight share', async (t) => {
  const eps = endpoints(50, (i) => 1 + (i % 5));
  const total = eps.reduce((s, e) => s + e.weight, 0);
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(7) });
  b.setEndpoints(eps);
  const n = total * 400;
  const counts = tally(Array.from({ length: n }, () => b.pick({})!));
  for (const ep of eps) {
    const want = (n * ep.weight) / total;
    const got = counts.get(ep) ?? 0;
    if (Math.abs(got - want) > 2) t.fail(`${ep.id}: ${got} picks, want ${want}`);
  }
  t.pass('every share exact to within 2 picks');
});

t.test('5:1:1 interleaves (nginx smooth WRR shape), never a burst of 5', async (t) => {
  const [a, b2, c] = endpoints(3, (i) => (i === 0 ? 5 : 1)) as [Endpoint, Endpoint, Endpoint];
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(11) });
  b.setEndpoints([a, b2, c]);
  const picks = Array.from({ length: 7000 }, () => b.pick({})!);
  t.ok(longestRun(picks, a) <= 6, `longest run of the heavy one: ${longestRun(picks, a)}`);
  const counts = tally(picks);
  t.equal(counts.get(a), 5000);
  t.equal(counts.get(b2), 1000);
  t.equal(counts.get(c), 1000);
});

t.test('equal weights are exact round robin', async (t) => {
  const eps = endpoints(5, () => 2);
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(1) });
  b.setEndpoints(eps);
  const picks = Array.from({ length: 500 }, () => b.pick({})!);
  for (let i = 5; i < picks.length; i++) if (picks[i] !== picks[i - 5]) t.fail(`not periodic at ${i}`);
  for (const c of tally(picks).values()) t.equal(c, 100);
});

t.test('a rebuild keeps the schedule: no reset to the heaviest, no burst', async (t) => {
  const eps = endpoints(4, (i) => [1, 1, 1, 8][i]!);
  const heavy = eps[3]!;
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(5) });
  b.setEndpoints(eps);
  const picks: Endpoint[] = [];
  for (let round = 0; round < 200; round++) {
    for (let i = 0; i < 7; i++) picks.push(b.pick({})!);
    // A health flap of a light endpoint, and the same set re-sent: both rebuild.
    b.setEndpoints(round % 2 === 0 ? eps.slice(1) : eps);
  }
  t.ok(longestRun(picks, heavy) <= 9, `longest heavy run ${longestRun(picks, heavy)}`);
  const share = tally(picks).get(heavy)! / picks.length;
  // 8/11 with all four, 8/10 with three: the mean sits between.
  t.ok(share > 8 / 11 - 0.02 && share < 8 / 10 + 0.02, `heavy share ${share}`);
});

t.test('weight changes apply on the next set', async (t) => {
  const eps = endpoints(2);
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(9) });
  b.setEndpoints(eps);
  for (let i = 0; i < 101; i++) b.pick({});
  eps[1]!.info = { ...eps[1]!.info, weight: 3 };
  b.setEndpoints(eps);
  const counts = tally(Array.from({ length: 4000 }, () => b.pick({})!));
  const share = counts.get(eps[1]!)! / 4000;
  t.ok(Math.abs(share - 0.75) < 0.01, `share after weight change ${share}`);
});

t.test('weight 0 drains an endpoint unless all are 0', async (t) => {
  const eps = endpoints(3, (i) => (i === 0 ? 0 : 1));
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(2) });
  b.setEndpoints(eps);
  const counts = tally(Array.from({ length: 100 }, () => b.pick({})!));
  t.notOk(counts.has(eps[0]!));
  const zeros = endpoints(3, () => 0);
  b.setEndpoints(zeros);
  const c2 = tally(Array.from({ length: 99 }, () => b.pick({})!));
  t.equal(c2.size, 3);
  for (const c of c2.values()) t.equal(c, 33);
});

t.test('tried endpoints keep their turn for the next request', async (t) => {
  const eps = endpoints(3, (i) => i + 1);
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(3) });
  b.setEndpoints(eps);
  const picks: Endpoint[] = [];
  let repeats = 0;
  for (let i = 0; i < 6000; i++) {
    const first = b.pick({})!;
    picks.push(first);
    if (i % 3 === 0) {
      const retry = b.pick({ tried: new Set([first]) })!;
      if (retry === first) repeats++;
      picks.push(retry);
    }
  }
  t.equal(repeats, 0, 'a retry never returns to the tried endpoint');
  const counts = tally(picks);
  for (const ep of eps) {
    const share = counts.get(ep)! / picks.length;
    if (Math.abs(share - ep.weight / 6) > 0.01) t.fail(`${ep.id} share ${share}`);
  }
});

t.test('the same set listed in another order: the schedule carries on unchanged', async (t) => {
  const eps = endpoints(40, (i) => 1 + (i % 4));
  const a = new WeightedRoundRobinBalancer({ random: seededRandom(21) });
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(21) });
  a.setEndpoints(eps);
  b.setEndpoints(eps);
  for (let i = 0; i < 37; i++) a.pick({}) === b.pick({}) || t.fail(`twin diverged at ${i}`);
  const r = seededRandom(3);
  a.setEndpoints([...eps].sort(() => r() - 0.5));
  b.setEndpoints(eps);
  let diverged = 0;
  for (let i = 0; i < 1000; i++) if (a.pick({}) !== b.pick({})) diverged++;
  t.equal(diverged, 0);
});

t.test('virtual time is rebased without disturbing the schedule', async (t) => {
  const eps = endpoints(3, (i) => [1, 3, 2][i]!);
  const b = new WeightedRoundRobinBalancer({ random: seededRandom(8), rebaseAt: 5 });
  const ref = new WeightedRoundRobinBalancer({ random: seededRandom(8) });
  b.setEndpoints(eps);
  ref.setEndpoints(eps);
  let diverged = 0;
  for (let i = 0; i < 6000; i++) if (b.pick({}) !== ref.pick({})) diverged++;
  t.equal(diverged, 0, 'same sequence as without rebasing');
});
