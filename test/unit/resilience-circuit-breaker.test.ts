import t from 'tap';
import type { CircuitBreakerPolicy } from '../../src/config/types.js';
import { CircuitBreaker, type BreakerState } from '../../src/resilience/circuit-breaker.js';

const policy: CircuitBreakerPolicy = { consecutiveFailures: 3, openDuration: 1000, maxOpenDuration: 5000, halfOpenRequests: 2 };

function setup(p: Partial<CircuitBreakerPolicy> = {}) {
  const clock = { now: 1_000_000 };
  const transitions: Array<[BreakerState, BreakerState]> = [];
  const cb = new CircuitBreaker({
    policy: { ...policy, ...p },
    service: 'shop/api',
    now: () => clock.now,
    onStateChange: (s, prev) => transitions.push([prev, s]),
  });
  const failN = (n: number) => {
    for (let i = 0; i < n; i++) {
      t.equal(cb.acquire(), 'ok');
      cb.onFailure(false);
    }
  };
  return { clock, cb, transitions, failN };
}

t.test('trips after N consecutive failures; a success in between resets the count', async (t) => {
  const { cb, failN, transitions, clock } = setup();
  failN(2);
  cb.acquire();
  cb.onSuccess(false);
  failN(2);
  t.equal(cb.state, 'closed');
  t.equal(cb.consecutiveFailures, 2);
  failN(1);
  t.equal(cb.state, 'open');
  t.equal(cb.openUntil, clock.now + 1000);
  t.same(transitions, [['closed', 'open']]);
});

t.test('open rejects until the open duration elapsed', async (t) => {
  const { cb, failN, clock } = setup();
  failN(3);
  for (let i = 0; i < 10; i++) t.equal(cb.acquire(), 'open');
  clock.now += 999;
  t.equal(cb.acquire(), 'open');
  t.equal(cb.state, 'open');
  clock.now += 1;
  t.equal(cb.state, 'half-open', 'computed from the clock, no timer');
});

t.test('half-open admits exactly halfOpenRequests concurrent probes', async (t) => {
  const { cb, failN, clock, transitions } = setup();
  failN(3);
  clock.now += 1000;
  t.equal(cb.acquire(), 'probe');
  t.equal(cb.acquire(), 'probe');
  t.equal(cb.acquire(), 'open');
  t.equal(cb.acquire(), 'open');
  t.equal(cb.probesInFlight, 2);
  cb.release(true); // a probe whose client went away frees its slot, no verdict
  t.equal(cb.state, 'half-open');
  t.equal(cb.acquire(), 'probe');
  t.equal(cb.acquire(), 'open');
  t.same(transitions, [
    ['closed', 'open'],
    ['open', 'half-open'],
  ]);
});

t.test('a successful probe closes and resets the backoff', async (t) => {
  const { cb, failN, clock, transitions } = setup();
  failN(3);
  clock.now += 1000;
  t.equal(cb.acquire(), 'probe');
  t.equal(cb.acquire(), 'probe');
  cb.onSuccess(true);
  t.equal(cb.state, 'closed');
  t.equal(cb.trips, 0);
  cb.onFailure(true); // the other probe's late failure: closed now, so it is one failure of the streak
  t.equal(cb.state, 'closed');
  t.equal(cb.probesInFlight, 0);
  t.equal(cb.consecutiveFailures, 1);
  cb.acquire();
  cb.onSuccess(false);
  failN(3);
  t.equal(cb.openUntil - clock.now, 1000, 'next trip starts again at openDuration');
  t.same(transitions.at(-2), ['half-open', 'closed']);
});

t.test('a failed probe re-opens for twice as long, capped at maxOpenDuration', async (t) => {
  const { cb, failN, clock } = setup();
  failN(3);
  const durations = [cb.openUntil - clock.now];
  for (let i = 0; i < 5; i++) {
    clock.now = cb.openUntil;
    t.equal(cb.acquire(), 'probe');
    cb.onFailure(true);
    t.equal(cb.state, 'open');
    durations.push(cb.openUntil - clock.now);
  }
  t.same(durations, [1000, 2000, 4000, 5000, 5000, 5000]);
  t.equal(cb.trips, 6);
});

t.test('results of requests admitted before the trip change nothing while open', async (t) => {
  const { cb, failN, clock } = setup();
  for (let i = 0; i < 5; i++) t.equal(cb.acquire(), 'ok'); // 5 in flight
  failN(3);
  cb.onSuccess(false);
  t.equal(cb.state, 'open', 'a late success does not close an open breaker');
  cb.onFailure(false);
  t.equal(cb.openUntil - clock.now, 1000, 'a late failure does not extend it');
  clock.now += 1000;
  cb.onSuccess(false);
  t.equal(cb.state, 'half-open', 'only probes close it');
});

t.test('consecutiveFailures 0 never trips; halfOpenRequests 0 still lets one probe through', async (t) => {
  const { cb, failN } = setup({ consecutiveFailures: 0 });
  failN(100);
  t.equal(cb.state, 'closed');
  const b = setup({ halfOpenRequests: 0 });
  b.failN(3);
  b.clock.now += 1000;
  t.equal(b.cb.acquire(), 'probe');
  t.equal(b.cb.acquire(), 'open');
});

t.test('snapshot for config_dump', async (t) => {
  const { cb, failN, clock } = setup();
  failN(3);
  t.same(cb.snapshot(), { state: 'open', consecutiveFailures: 0, trips: 1, openUntil: clock.now + 1000, probesInFlight: 0 });
  clock.now += 1000;
  t.same(cb.snapshot(), { state: 'half-open', consecutiveFailures: 0, trips: 1, openUntil: 0, probesInFlight: 0 });
});
