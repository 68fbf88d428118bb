import { Writable } from 'node:stream';
import { pino } from 'pino';
import t from 'tap';
import { Endpoint } from '../../src/cluster/endpoint.js';
import type { OutlierDetectionPolicy } from '../../src/config/types.js';
import { OutlierDetector, outlierResultForStatus, type EjectionReason, type OutlierResult } from '../../src/health/outlier.js';

let nextPort = 9000;
function ep(): Endpoint {
  return new Endpoint({
    ip: '10.0.0.2',
    port: nextPort++,
    weight: 1,
    workload: 'w',
    namespace: 'ns',
    node: 'n',
    serviceAccount: 'sa',
    ready: true,
    local: true,
    meshed: true,
  });
}

const base: OutlierDetectionPolicy = {
  consecutive5xx: 5,
  consecutiveGatewayErrors: 3,
  interval: 1000,
  baseEjectionTime: 30_000,
  maxEjectionTime: 100_000,
  maxEjectionPercent: 100,
  successRateMinimumHosts: 0,
  successRateRequestVolume: 100,
  successRateStdevFactor: 1.9,
  panicThreshold: 50,
};

function setup(n: number, policy: Partial<OutlierDetectionPolicy> = {}) {
  const clock = { now: 1_000_000 };
  const eps = Array.from({ length: n }, ep);
  const changes: string[] = [];
  const ejections: Array<[string, EjectionReason]> = [];
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _enc, cb) {
        lines.push(JSON.parse(String(chunk)));
        cb();
      },
    }),
  );
  const det = new OutlierDetector({
    policy: { ...base, ...policy },
    service: 'shop/api:80',
    log,
    now: () => clock.now,
    manual: true,
    onChange: (e) => changes.push(e.id),
    onEject: (e, reason) => ejections.push([e.id, reason]),
  });
  det.setEndpoints(eps);
  const fail = (e: Endpoint, times: number, result: OutlierResult = 'http5xx') => {
    for (let i = 0; i < times; i++) det.record(e, result);
  };
  return { clock, eps, det, changes, ejections, lines, fail };
}

t.test('status mapping', async (t) => {
  t.equal(outlierResultForStatus(200), 'success');
  t.equal(outlierResultForStatus(404), 'success');
  t.equal(outlierResultForStatus(500), 'http5xx');
  t.equal(outlierResultForStatus(502), 'gateway');
  t.equal(outlierResultForStatus(503), 'gateway');
  t.equal(outlierResultForStatus(504), 'gateway');
  t.equal(outlierResultForStatus(599), 'http5xx');
});

t.test('consecutive 5xx ejects at the configured count; a success resets the streak', async (t) => {
  const { eps, det, clock, changes, ejections, lines, fail } = setup(4);
  const [a] = eps as [Endpoint];
  fail(a, 4);
  det.record(a, 'success');
  fail(a, 4);
  t.equal(a.ejectedUntil, 0, 'streaks of 4 do not eject');
  det.record(a, 'http5xx');
  t.equal(a.ejectedUntil, clock.now + 30_000);
  t.equal(a.ejectionCount, 1);
  t.equal(a.ejectionReason, 'consecutive-5xx');
  t.notOk(a.eligible(clock.now));
  t.same(changes, [a.id]);
  t.same(ejections, [[a.id, 'consecutive-5xx']]);
  const line = lines.find((l) => l.msg === 'endpoint ejected');
  t.match(line, { endpoint: a.id, service: 'shop/api:80', reason: 'consecutive-5xx', ejectionMs: 30_000 });
  fail(a, 20);
  t.equal(ejections.length, 1, 'failures of requests in flight while ejected change nothing');
});

t.test('gateway errors: 502/503/504, connect failures, resets and timeouts', async (t) => {
  const { eps, det, ejections, fail } = setup(4, { consecutive5xx: 0 });
  const [a, b, c] = eps as [Endpoint, Endpoint, Endpoint];
  det.record(a, 'connect-failure');
  det.record(a, 'reset');
  det.record(a, 'timeout');
  t.equal(a.ejectionReason, 'consecutive-gateway-errors');
  fail(b, 2, 'gateway');
  det.record(b, 'http5xx'); // a 500 breaks the gateway streak
  fail(b, 2, 'gateway');
  t.equal(b.ejectedUntil, 0);
  det.record(b, 'gateway');
  t.ok(b.ejectedUntil > 0);
  fail(c, 50, 'http5xx');
  t.equal(c.ejectedUntil, 0, 'consecutive5xx: 0 disables that detector');
  t.same(
    ejections.map((e) => e[1]),
    ['consecutive-gateway-errors', 'consecutive-gateway-errors'],
  );
});

t.test('gateway errors also count towards consecutive 5xx', async (t) => {
  const { eps, det } = setup(2, { consecutive5xx: 5, consecutiveGatewayErrors: 0 });
  const [a] = eps as [Endpoint];
  for (const r of ['gateway', 'http5xx', 'timeout', 'reset', 'connect-failure'] as const) det.record(a, r);
  t.equal(a.ejectionReason, 'consecutive-5xx');
});

t.test('ejection time grows as base x count, capped; re-ejected for longer while still failing', async (t) => {
  const { eps, det, clock, fail, changes } = setup(2);
  const [a] = eps as [Endpoint];
  const seen: Array<[number, number]> = [];
  for (let round = 0; round < 6; round++) {
    fail(a, 5);
    seen.push([a.ejectionCount, a.ejectedUntil - clock.now]);
    clock.now = a.ejectedUntil; // eligible again exactly at ejectedUntil
    t.ok(a.eligible(clock.now));
    det.tick(); // bookkeeping: back in service, no decay in the tick that re-admits it
    t.equal(a.ejectedUntil, 0);
  }
  t.same(seen, [
    [1, 30_000],
    [2, 60_000],
    [3, 90_000],
    [4, 100_000], // 120s capped at maxEjectionTime
    [4, 100_000], // the multiplier stops growing at ceil(max/base)
    [4, 100_000],
  ]);
  t.equal(changes.length, 12, 'one change per ejection and per re-admission');
});

t.test('re-admission resets the streaks; the multiplier decays while in service', async (t) => {
  const { eps, det, clock, fail, lines } = setup(2);
  const [a] = eps as [Endpoint];
  fail(a, 5);
  fail(a, 5, 'gateway'); // ignored while ejected
  clock.now += 29_999;
  det.tick();
  t.ok(a.ejectedUntil > 0, 'still ejected before the ejection time');
  clock.now += 1;
  det.tick();
  t.equal(a.ejectedUntil, 0);
  t.match(
    lines.find((l) => l.msg === 'endpoint returned to service'),
    { endpoint: a.id, service: 'shop/api:80' },
  );
  fail(a, 4);
  t.equal(a.ejectedUntil, 0, '4 new failures after re-admission do not eject');
  fail(a, 1);
  t.equal(a.ejectionCount, 2);
  t.equal(a.ejectedUntil - clock.now, 60_000);
  clock.now = a.ejectedUntil;
  det.tick(); // re-admitted
  t.equal(a.ejectionCount, 2);
  det.tick();
  t.equal(a.ejectionCount, 1, 'one interval in service: multiplier - 1');
  det.tick();
  det.tick();
  t.equal(a.ejectionCount, 0, 'floor at 0');
  fail(a, 5);
  t.equal(a.ejectedUntil - clock.now, 30_000, 'forgiven: back to the base ejection time');
});

t.test('an expired ejection is settled by the next record() even without a tick', async (t) => {
  const { eps, det, clock, fail, changes } = setup(2);
  const [a] = eps as [Endpoint];
  fail(a, 5);
  clock.now += 30_000;
  fail(a, 4);
  t.equal(a.ejectedUntil, 0);
  t.equal(changes.length, 2);
  fail(a, 1);
  t.equal(a.ejectionCount, 2);
});

t.test('maxEjectionPercent', async (t) => {
  t.test('30% of 10 endpoints: at most 3 at once', async (t) => {
    const { eps, det, clock, fail } = setup(10, { maxEjectionPercent: 30 });
    for (const e of eps) fail(e, 5);
    t.equal(det.ejectedCount(), 3);
    t.equal(eps.filter((e) => e.ejectedUntil > 0).length, 3);
    clock.now += 30_000;
    det.tick();
    t.equal(det.ejectedCount(), 0);
    for (const e of eps.slice(5)) fail(e, 5);
    t.equal(det.ejectedCount(), 3, 'room again once the first ejections expired');
  });
  t.test('a blocked ejection needs a fresh full streak', async (t) => {
    const { eps, det, fail } = setup(4, { maxEjectionPercent: 25 });
    const [a, b] = eps as [Endpoint, Endpoint];
    fail(a, 5);
    fail(b, 5);
    t.ok(a.ejectedUntil > 0);
    t.equal(b.ejectedUntil, 0);
    t.equal(det.ejectedCount(), 1);
  });
  t.test('at least one even when floor(n*pct/100) is 0', async (t) => {
    const { eps, det, fail } = setup(3, { maxEjectionPercent: 10 });
    for (const e of eps) fail(e, 5);
    t.equal(det.ejectedCount(), 1);
    t.equal(det.maxEjections(), 1);
  });
  t.test('0% never ejects', async (t) => {
    const { eps, det, fail } = setup(3, { maxEjectionPercent: 0 });
    for (const e of eps) fail(e, 5);
    t.equal(det.ejectedCount(), 0);
  });
  t.test('100% may eject every endpoint', async (t) => {
    const { eps, det, fail } = setup(3);
    for (const e of eps) fail(e, 5);
    t.equal(det.ejectedCount(), 3);
  });
});

function traffic(det: OutlierDetector, e: Endpoint, total: number, successes: number): void {
  for (let i = 0; i < total; i++) det.record(e, i < successes ? 'success' : 'http5xx');
}

t.test('success-rate ejection', async (t) => {
  const policy = { consecutive5xx: 0, consecutiveGatewayErrors: 0, successRateMinimumHosts: 5, successRateRequestVolume: 100 };
  t.test('the endpoint below mean - 1.9 stdev is ejected', async (t) => {
    const { eps, det, ejections } = setup(5, policy);
    // 100,100,100,100,50 -> mean 90, stdev 20, threshold 52.
    for (const e of eps.slice(0, 4)) traffic(det, e, 100, 100);
    traffic(det, eps[4]!, 100, 50);
    det.tick();
    t.same(ejections, [[eps[4]!.id, 'success-rate']]);
  });
  t.test('not enough hosts with enough volume: nothing happens', async (t) => {
    const { eps, det, ejections } = setup(5, policy);
    for (const e of eps.slice(0, 3)) traffic(det, e, 100, 100);
    traffic(det, eps[3]!, 99, 99);
    traffic(det, eps[4]!, 100, 0);
    det.tick();
    t.same(ejections, [], 'only 4 endpoints reached the request volume');
  });
  t.test('counters are per interval', async (t) => {
    const { eps, det, ejections } = setup(5, policy);
    for (const e of eps) traffic(det, e, 60, 60);
    det.tick();
    for (const e of eps.slice(0, 4)) traffic(det, e, 60, 60);
    traffic(det, eps[4]!, 60, 0);
    det.tick();
    t.same(ejections, [], '60 requests per interval never reach the volume of 100');
  });
  t.test('equal success rates: stdev 0, nobody ejected', async (t) => {
    const { eps, det, ejections } = setup(5, policy);
    for (const e of eps) traffic(det, e, 100, 70);
    det.tick();
    t.same(ejections, []);
  });
  t.test('subject to maxEjectionPercent, worst first', async (t) => {
    const { eps, det, ejections } = setup(10, { ...policy, maxEjectionPercent: 10 });
    for (const e of eps.slice(0, 8)) traffic(det, e, 100, 100);
    traffic(det, eps[8]!, 100, 40);
    traffic(det, eps[9]!, 100, 10);
    det.tick();
    t.same(ejections, [[eps[9]!.id, 'success-rate']]);
  });
});

t.test('flapping endpoint', async (t) => {
  t.test('alternating success/failure is never ejected by the consecutive detectors', async (t) => {
    const { eps, det, ejections } = setup(5, { consecutive5xx: 2, consecutiveGatewayErrors: 2 });
    const [a] = eps as [Endpoint];
    for (let i = 0; i < 500; i++) det.record(a, i % 2 ? 'success' : 'gateway');
    det.tick();
    t.same(ejections, []);
  });
  t.test('success-rate ejection catches it when its peers do clearly better', async (t) => {
    const { eps, det, ejections } = setup(5, { successRateMinimumHosts: 5, successRateRequestVolume: 100 });
    const [a] = eps as [Endpoint];
    for (let i = 0; i < 200; i++) det.record(a, i % 2 ? 'success' : 'http5xx');
    for (const e of eps.slice(1)) traffic(det, e, 200, 200);
    det.tick();
    t.same(ejections, [[a.id, 'success-rate']]);
  });
  t.test('fail / recover / fail: ejections lengthen, good intervals forgive', async (t) => {
    const { eps, det, clock, fail } = setup(2);
    const [a] = eps as [Endpoint];
    const durations: number[] = [];
    for (let cycle = 0; cycle < 3; cycle++) {
      fail(a, 5);
      durations.push(a.ejectedUntil - clock.now);
      clock.now = a.ejectedUntil;
      det.tick();
      det.record(a, 'success');
    }
    t.same(durations, [30_000, 60_000, 90_000], 'failing again right after re-admission: longer each time');
    for (let i = 0; i < 3; i++) det.tick();
    fail(a, 5);
    t.equal(a.ejectedUntil - clock.now, 30_000, 'three good intervals later: back to the base time');
  });
});

t.test('membership: removed endpoints are forgotten, unknown ones ignored', async (t) => {
  const { eps, det, fail } = setup(3);
  const [a, b] = eps as [Endpoint, Endpoint];
  fail(a, 4);
  det.setEndpoints([a, b]);
  det.record(a, 'http5xx');
  t.ok(a.ejectedUntil > 0, 'kept endpoints keep their streak');
  const stranger = ep();
  fail(stranger, 10);
  t.equal(stranger.ejectedUntil, 0);
  t.equal(det.maxEjections(), 2);
});

t.test('the real interval timer re-admits', async (t) => {
  const changes: Array<[string, boolean]> = [];
  const det = new OutlierDetector({
    policy: { ...base, interval: 20, baseEjectionTime: 60 },
    service: 's',
    onChange: (e) => changes.push([e.id, e.ejectedUntil > 0]),
  });
  t.teardown(() => det.stop());
  const a = ep();
  det.setEndpoints([a, ep()]);
  for (let i = 0; i < 5; i++) det.record(a, 'http5xx');
  t.same(changes, [[a.id, true]]);
  const deadline = Date.now() + 2000;
  while (changes.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.same(changes, [
    [a.id, true],
    [a.id, false],
  ]);
  t.equal(a.ejectedUntil, 0);
});
