import t from 'tap';
import type { Endpoint } from '../../src/cluster/endpoint.js';
import { DEFAULT_RTT_MS, PeakEwmaBalancer } from '../../src/balancer/peak-ewma.js';
import { seededRandom } from '../../src/balancer/options.js';
import { endpoints } from '../lib/endpoints.js';

const T0 = 1_700_000_000_000;

/**
 * A discrete-time service: `rate` requests arrive per 1 ms tick, each goes to the
 * balancer's pick, holds `active` for the endpoint's current latency, then reports it.
 */
class Sim {
  now = T0;
  readonly latency = new Map<Endpoint, number>();
  private readonly inflight: Array<{ ep: Endpoint; start: number; done: number }> = [];

  constructor(
    readonly b: PeakEwmaBalancer,
    readonly rate: number,
  ) {}

  run(ms: number): Map<Endpoint, number> {
    const counts = new Map<Endpoint, number>();
    const end = this.now + ms;
    for (; this.now < end; this.now++) {
      for (let i = this.inflight.length - 1; i >= 0; i--) {
        const r = this.inflight[i]!;
        if (r.done > this.now) continue;
        r.ep.active--;
        this.b.observe(r.ep, r.done - r.start, this.now);
        this.inflight.splice(i, 1);
      }
      for (let k = 0; k < this.rate; k++) {
        const ep = this.b.pick({})!;
        ep.active++;
        this.inflight.push({ ep, start: this.now, done: this.now + this.latency.get(ep)! });
        counts.set(ep, (counts.get(ep) ?? 0) + 1);
      }
    }
    return counts;
  }
}

function share(counts: Map<Endpoint, number>, ep: Endpoint): number {
  let total = 0;
  for (const c of counts.values()) total += c;
  return (counts.get(ep) ?? 0) / total;
}

t.test('a slow endpoint gets clearly less, and recovers once it is fast again', async (t) => {
  const eps = endpoints(3);
  const [slow, fast1, fast2] = eps as [Endpoint, Endpoint, Endpoint];
  let sim: Sim | undefined;
  const b = new PeakEwmaBalancer({ random: seededRandom(1), now: () => sim!.now });
  sim = new Sim(b, 1);
  b.setEndpoints(eps);
  sim.latency.set(slow, 200).set(fast1, 5).set(fast2, 5);

  sim.run(5_000); // warm up: estimates established
  const slowPhase = sim.run(60_000);
  const s1 = share(slowPhase, slow);
  t.ok(s1 < 0.1, `slow endpoint share while slow: ${s1.toFixed(4)}`);
  t.ok(s1 > 0, 'still probed now and then (decay at pick time)');

  sim.latency.set(slow, 5);
  sim.run(60_000); // it is fast again: probes bring fresh samples
  const recovered = sim.run(20_000);
  const s2 = share(recovered, slow);
  t.ok(s2 > 0.25, `share after recovery: ${s2.toFixed(4)} (fair: 0.333)`);
});

t.test('observe: peak-sensitive, then a time-weighted average', async (t) => {
  const [ep] = endpoints(1) as [Endpoint];
  const b = new PeakEwmaBalancer({ decayMs: 10_000 });
  b.observe(ep, 20, T0);
  t.equal(ep.rttEwma, 20, 'first sample is the estimate');
  t.equal(ep.rttStamp, T0);
  b.observe(ep, 100, T0 + 1);
  t.equal(ep.rttEwma, 100, 'a peak replaces the estimate at once');
  b.observe(ep, 10, T0 + 1 + 10_000);
  const w = Math.exp(-1);
  t.ok(Math.abs(ep.rttEwma - (100 * w + 10 * (1 - w))) < 1e-9, `decays toward the sample by e^(-dt/tau): ${ep.rttEwma}`);
  const before = ep.rttEwma;
  b.observe(ep, 10, T0 + 1 + 10_000);
  t.equal(ep.rttEwma, before, 'no time passed: a lower sample does not move it');
  b.observe(ep, Number.NaN, T0 + 20_000);
  b.observe(ep, -1, T0 + 20_000);
  t.equal(ep.rttEwma, before, 'invalid samples ignored');
});

t.test('estimate: default for the unknown, decays toward 0 when idle', async (t) => {
  const [ep] = endpoints(1) as [Endpoint];
  const b = new PeakEwmaBalancer({ decayMs: 10_000 });
  t.equal(b.estimate(ep, T0), DEFAULT_RTT_MS);
  b.observe(ep, 200, T0);
  t.equal(b.estimate(ep, T0), 200);
  t.ok(Math.abs(b.estimate(ep, T0 + 10_000) - 200 * Math.exp(-1)) < 1e-9);
  t.ok(b.estimate(ep, T0 + 60_000) < 1, 'long idle: looks cheap, gets a probe');
  t.equal(ep.rttEwma, 200, 'reading the estimate does not write it');
});

t.test('new endpoints are tried: unknown costs the default rtt', async (t) => {
  const eps = endpoints(3);
  const b = new PeakEwmaBalancer({ random: seededRandom(2), now: () => T0 });
  b.observe(eps[0]!, 100, T0);
  b.observe(eps[1]!, 100, T0);
  b.setEndpoints(eps);
  let fresh = 0;
  for (let i = 0; i < 3000; i++) if (b.pick({}) === eps[2]) fresh++;
  // A candidate in 2 of 3 draws, and cheaper whenever it is one.
  t.ok(fresh > 1800, `new endpoint picked ${fresh}/3000`);
});

t.test('weights: under load, a weight-3 endpoint carries about 3x the requests', async (t) => {
  const eps = endpoints(2, (i) => (i === 0 ? 1 : 3));
  let sim: Sim | undefined;
  const b = new PeakEwmaBalancer({ random: seededRandom(3), now: () => sim!.now });
  sim = new Sim(b, 2);
  b.setEndpoints(eps);
  sim.latency.set(eps[0]!, 10).set(eps[1]!, 10);
  sim.run(2_000);
  const counts = sim.run(20_000);
  const heavy = share(counts, eps[1]!);
  t.ok(heavy > 0.7 && heavy < 0.8, `heavy share ${heavy.toFixed(4)} (weights: 0.75)`);
  // Idle, same latency: the cheaper per unit of capacity wins.
  b.observe(eps[0]!, 10, sim.now);
  b.observe(eps[1]!, 10, sim.now);
  t.equal(b.pick({}), eps[1]);
});

t.test('retries avoid tried endpoints, even the cheapest', async (t) => {
  const eps = endpoints(4);
  const b = new PeakEwmaBalancer({ random: seededRandom(4), now: () => T0 });
  b.observe(eps[0]!, 1, T0);
  for (const ep of eps.slice(1)) b.observe(ep, 500, T0);
  b.setEndpoints(eps);
  const tried = new Set([eps[0]!]);
  let bad = 0;
  for (let i = 0; i < 2000; i++) if (b.pick({ tried }) === eps[0]) bad++;
  t.equal(bad, 0);
  t.equal(b.pick({ tried: new Set(eps) }) !== undefined, true, 'all tried: still an answer');
});
