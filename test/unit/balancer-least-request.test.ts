import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { LeastRequestBalancer } from '../../src/balancer/least-request.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

function tally(picks: Endpoint[]): Map<Endpoint, number> {
  const m = new Map<Endpoint, number>();
  for (const ep of picks) m.set(ep, (m.get(ep) ?? 0) + 1);
  return m;
}

t.test('of two, always the idle one', async (t) => {
  const eps = endpoints(2);
  eps[0]!.active = 3;
  const b = new LeastRequestBalancer({ random: seededRandom(1) });
  b.setEndpoints(eps);
  const counts = tally(Array.from({ length: 1000 }, () => b.pick({})!));
  t.equal(counts.get(eps[1]!), 1000);
});

t.test('a busy endpoint loses every comparison', async (t) => {
  const eps = endpoints(10);
  for (const ep of eps) ep.active = 2;
  eps[4]!.active = 50;
  const b = new LeastRequestBalancer({ random: seededRandom(2) });
  b.setEndpoints(eps);
  const counts = tally(Array.from({ length: 10_000 }, () => b.pick({})!));
  t.notOk(counts.has(eps[4]!), 'never picked: any other candidate is less loaded');
  t.equal(counts.size, 9);
});

t.test('simulated load: an endpoint that holds requests longer gets fewer', async (t) => {
  // Endpoint 0 takes 10 ticks per request, the others 1: with least-request it should
  // carry far less than its 1/5 round-robin share.
  const eps = endpoints(5);
  const b = new LeastRequestBalancer({ random: seededRandom(3) });
  b.setEndpoints(eps);
  const inflight: Array<{ ep: Endpoint; done: number }> = [];
  const counts = new Map<Endpoint, number>();
  let total = 0;
  for (let tick = 0; tick < 20_000; tick++) {
    for (let i = inflight.length - 1; i >= 0; i--) {
      if (inflight[i]!.done <= tick) {
        inflight[i]!.ep.active--;
        inflight.splice(i, 1);
      }
    }
    for (let r = 0; r < 3; r++) {
      const ep = b.pick({})!;
      ep.active++;
      inflight.push({ ep, done: tick + (ep === eps[0] ? 10 : 1) });
      counts.set(ep, (counts.get(ep) ?? 0) + 1);
      total++;
    }
  }
  const slowShare = counts.get(eps[0]!)! / total;
  t.ok(slowShare < 0.12, `slow endpoint share ${slowShare.toFixed(3)} (round robin: 0.2)`);
  for (const ep of eps) t.ok(ep.active >= 0);
});

t.test('idle: spread follows weights; loaded: active/weight decides', async (t) => {
  const eps = endpoints(2, (i) => (i === 0 ? 1 : 3));
  const b = new LeastRequestBalancer({ random: seededRandom(4) });
  b.setEndpoints(eps);
  const n = 100_000;
  const counts = tally(Array.from({ length: n }, () => b.pick({})!));
  const share = counts.get(eps[1]!)! / n;
  t.ok(Math.abs(share - 0.75) < 0.015, `idle heavy share ${share}`);
  // 3 in flight on weight 3 is lighter than 2 on weight 1.
  eps[0]!.active = 2;
  eps[1]!.active = 3;
  const loaded = tally(Array.from({ length: 1000 }, () => b.pick({})!));
  t.equal(loaded.get(eps[1]!), 1000);
  eps[1]!.active = 7;
  const loaded2 = tally(Array.from({ length: 1000 }, () => b.pick({})!));
  t.equal(loaded2.get(eps[0]!), 1000);
});

t.test('equal weights: idle spread is uniform', async (t) => {
  const eps = endpoints(8);
  const b = new LeastRequestBalancer({ random: seededRandom(5) });
  b.setEndpoints(eps);
  const counts = tally(Array.from({ length: 80_000 }, () => b.pick({})!));
  let chi2 = 0;
  for (const c of counts.values()) chi2 += (c - 10_000) ** 2 / 10_000;
  t.ok(chi2 < 40, `chi2 ${chi2.toFixed(2)}`);
});

t.test('retries resample away from tried endpoints', async (t) => {
  const eps = endpoints(6);
  eps[0]!.active = 0;
  for (const ep of eps.slice(1)) ep.active = 5;
  const b = new LeastRequestBalancer({ random: seededRandom(6) });
  b.setEndpoints(eps);
  const tried = new Set([eps[0]!]);
  let bad = 0;
  for (let i = 0; i < 2000; i++) if (b.pick({ tried }) === eps[0]) bad++;
  t.equal(bad, 0);
  const allButLast = new Set(eps.slice(0, 5));
  for (let i = 0; i < 200; i++) if (b.pick({ tried: allButLast }) !== eps[5]) bad++;
  t.equal(bad, 0, 'the only untried endpoint is found');
});
