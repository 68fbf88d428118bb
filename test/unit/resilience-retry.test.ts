import t from 'tap';
import type { RetryOn } from '../../src/config/types.js';
import { MAX_REPLAY_BODY_BYTES, RetryBudget, backoffDelay, canReplay, isRetriable, type RetryOutcome } from '../../src/resilience/retry.js';

t.test('retry budget: percent of requests in the last second', async (t) => {
  const clock = { now: 1_000_000 };
  const b = new RetryBudget({ percent: 20, minPerSecond: 10, now: () => clock.now });
  for (let i = 0; i < 1000; i++) b.recordRequest();
  let allowed = 0;
  for (let i = 0; i < 1000; i++) if (b.tryRetry()) allowed++;
  t.equal(allowed, 200, '20% of 1000');
  t.notOk(b.canRetry());
  clock.now += 1000;
  t.equal(b.requests, 0, 'the window slid past');
  t.equal(b.retries, 0);
  t.ok(b.canRetry());
});

t.test('retry budget: minPerSecond floor at low traffic', async (t) => {
  const clock = { now: 1_000_000 };
  const b = new RetryBudget({ percent: 20, minPerSecond: 10, now: () => clock.now });
  for (let i = 0; i < 5; i++) b.recordRequest();
  let allowed = 0;
  for (let i = 0; i < 50; i++) if (b.tryRetry()) allowed++;
  t.equal(allowed, 10);
  clock.now += 500;
  t.notOk(b.tryRetry(), 'still inside the same second');
  clock.now += 500;
  t.ok(b.tryRetry());
});

t.test('retry budget: a storm of failures keeps retries capped', async (t) => {
  // 10s of 200 requests/s, every try fails and wants 2 retries. Without a budget: 400 retries/s.
  const clock = { now: 5_000_000 };
  const b = new RetryBudget({ percent: 20, minPerSecond: 10, now: () => clock.now });
  const perSecond = new Map<number, { req: number; ret: number }>();
  for (let ms = 0; ms < 10_000; ms += 5) {
    clock.now = 5_000_000 + ms;
    const sec = Math.floor(ms / 1000);
    const s = perSecond.get(sec) ?? { req: 0, ret: 0 };
    perSecond.set(sec, s);
    b.recordRequest();
    s.req++;
    for (let attempt = 0; attempt < 2; attempt++) {
      const before = { ret: b.retries, req: b.requests };
      if (!b.tryRetry()) continue;
      s.ret++;
      // Every granted retry was under the budget of the window at that moment.
      if (!(before.ret < Math.max(10, 0.2 * before.req))) t.fail(`over budget at ${ms}ms`);
    }
  }
  for (const [sec, s] of perSecond) {
    t.equal(s.req, 200);
    t.ok(s.ret <= 0.2 * s.req + 10, `second ${sec}: ${s.ret} retries for ${s.req} requests`);
    if (sec > 0) t.ok(s.ret >= 30, `second ${sec}: the budget is used (${s.ret})`);
  }
});

t.test('retry budget: a clock stepping back does not corrupt the window', async (t) => {
  const clock = { now: 1_000_000 };
  const b = new RetryBudget({ percent: 50, minPerSecond: 0, now: () => clock.now });
  b.recordRequest();
  b.recordRequest();
  clock.now -= 5000;
  t.ok(b.tryRetry());
  t.notOk(b.tryRetry());
  t.equal(b.requests, 2);
  clock.now += 10_000;
  t.equal(b.requests, 0);
  t.equal(b.retries, 0);
});

t.test('backoff: full jitter within [0, min(max, base*2^(attempt-1)))', async (t) => {
  t.equal(
    backoffDelay(1, 25, 1000, () => 0),
    0,
  );
  t.equal(
    backoffDelay(1, 25, 1000, () => 0.999999),
    24,
  );
  t.equal(
    backoffDelay(2, 25, 1000, () => 0.5),
    25,
  );
  t.equal(
    backoffDelay(3, 25, 1000, () => 0.5),
    50,
  );
  t.equal(
    backoffDelay(10, 25, 1000, () => 0.5),
    500,
    'capped at max',
  );
  t.equal(
    backoffDelay(10_000, 25, 1000, () => 0.5),
    500,
    'no overflow for absurd attempts',
  );
  t.equal(backoffDelay(1, 0, 1000), 0);
  for (let attempt = 1; attempt <= 12; attempt++) {
    const ceiling = Math.min(1000, 25 * 2 ** (attempt - 1));
    let max = 0;
    for (let i = 0; i < 2000; i++) {
      const d = backoffDelay(attempt, 25, 1000);
      if (d < 0 || d >= ceiling || !Number.isInteger(d)) t.fail(`attempt ${attempt}: ${d}`);
      max = Math.max(max, d);
    }
    t.ok(max >= ceiling * 0.8, `attempt ${attempt}: spread up to the ceiling ${ceiling}`);
  }
});

t.test('isRetriable table', async (t) => {
  const connect: RetryOutcome = { kind: 'connect-failure' };
  const reset: RetryOutcome = { kind: 'reset' };
  const timeout: RetryOutcome = { kind: 'timeout' };
  const s = (status: number): RetryOutcome => ({ kind: 'status', status });
  const cases: Array<[RetryOn[], RetryOutcome, boolean]> = [
    [['connect-failure'], connect, true],
    [['connect-failure'], reset, false],
    [['connect-failure'], timeout, false],
    [['connect-failure'], s(503), false],
    [['reset'], connect, true],
    [['reset'], reset, true],
    [['reset'], timeout, true],
    [['reset'], s(503), false],
    [['5xx'], connect, true],
    [['5xx'], reset, true],
    [['5xx'], timeout, true],
    [['5xx'], s(500), true],
    [['5xx'], s(503), true],
    [['5xx'], s(599), true],
    [['5xx'], s(429), false],
    [['5xx'], s(200), false],
    [['gateway-error'], connect, true],
    [['gateway-error'], reset, true],
    [['gateway-error'], timeout, true],
    [['gateway-error'], s(502), true],
    [['gateway-error'], s(503), true],
    [['gateway-error'], s(504), true],
    [['gateway-error'], s(500), false],
    [['retriable-status-codes'], s(429), true],
    [['retriable-status-codes'], s(409), true],
    [['retriable-status-codes'], s(503), false],
    [['retriable-status-codes'], connect, false],
    [[], connect, false],
    [[], s(503), false],
    [['connect-failure', 'gateway-error'], s(500), false],
    [['connect-failure', 'gateway-error', 'retriable-status-codes'], s(429), true],
  ];
  for (const [retryOn, outcome, want] of cases) {
    t.equal(isRetriable({ retryOn, retriableStatusCodes: [429, 409] }, outcome), want, `${retryOn.join(',') || '(none)'} / ${outcome.kind} ${outcome.status ?? ''}`);
  }
});

t.test('canReplay', async (t) => {
  t.ok(canReplay('GET', 0, false));
  t.ok(canReplay('POST', 100, false));
  t.ok(canReplay('PUT', MAX_REPLAY_BODY_BYTES, false));
  t.notOk(canReplay('PUT', MAX_REPLAY_BODY_BYTES + 1, false), 'body over 64 KiB');
  t.notOk(canReplay('POST', 10, true), 'body still streaming');
  t.notOk(canReplay('CONNECT', 0, false));
  t.equal(MAX_REPLAY_BODY_BYTES, 65536);
});
