import t from 'tap';
import type { HealthCheckPolicy } from '../../src/config/types.js';
import type { Probe, ProbeResult } from '../../src/health/probe.js';
import { HealthCheckScheduler, applyResult, policyKey, type SchedulerTimers, type TargetHealth } from '../../src/health/scheduler.js';

const policy: HealthCheckPolicy = { type: 'tcp', path: '', interval: 40, timeout: 20, unhealthyThreshold: 3, healthyThreshold: 2, jitter: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, ms = 2000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(5);
  }
  return true;
}

t.test('thresholds', async (t) => {
  const s: TargetHealth = { health: 'unknown', successes: 0, failures: 0, lastError: '', lastCheckAt: 0 };
  const step = (ok: boolean) => {
    applyResult(s, ok, ok ? '' : 'ECONNREFUSED', policy, 1);
    return s.health;
  };
  t.equal(step(false), 'unknown');
  t.equal(step(false), 'unknown');
  t.equal(step(true), 'healthy', 'first success from unknown: healthy at once');
  t.equal(step(false), 'healthy');
  t.equal(step(false), 'healthy');
  t.equal(step(false), 'unhealthy', 'unhealthyThreshold consecutive failures');
  t.equal(s.failures, 3);
  t.equal(s.lastError, 'ECONNREFUSED');
  t.equal(step(true), 'unhealthy');
  t.equal(step(false), 'unhealthy');
  t.equal(step(true), 'unhealthy');
  t.equal(step(true), 'healthy', 'healthyThreshold consecutive successes');
  t.equal(s.lastError, '');
  t.equal(s.successes, 2);
  t.equal(s.failures, 0);
  const u: TargetHealth = { health: 'unknown', successes: 0, failures: 0, lastError: '', lastCheckAt: 0 };
  for (let i = 0; i < 3; i++) applyResult(u, false, 'x', policy, 1);
  t.equal(u.health, 'unhealthy', 'unknown needs the full unhealthyThreshold');
});

t.test('policyKey: path matters for http only', async (t) => {
  t.equal(policyKey({ ...policy, path: '/a' }), policyKey({ ...policy, path: '/b' }));
  t.not(policyKey({ ...policy, type: 'http', path: '/a' }), policyKey({ ...policy, type: 'http', path: '/b' }));
  t.not(policyKey(policy), policyKey({ ...policy, interval: 41 }));
});

function recordingProbe(result: () => ProbeResult = () => ({ ok: true, error: '' })) {
  const calls: string[] = [];
  const probe: Probe = async (target) => {
    calls.push(`${target.ip}:${target.port}`);
    return result();
  };
  return { calls, probe };
}

/** Timers driven by hand: `fire()` runs everything pending, then lets probe promises settle. */
function fakeTimers() {
  let id = 0;
  const pending = new Map<number, { fn: () => void; ms: number }>();
  const delays: number[] = [];
  const timers: SchedulerTimers = {
    setTimeout(fn, ms) {
      pending.set(++id, { fn, ms });
      delays.push(ms);
      return id;
    },
    clearTimeout(h) {
      pending.delete(h as number);
    },
  };
  const fire = async () => {
    const due = [...pending.values()].sort((x, y) => x.ms - y.ms);
    pending.clear();
    for (const d of due) d.fn();
    await new Promise((r) => setImmediate(r));
  };
  return { timers, pending, delays, fire };
}

t.test('first checks are staggered by random * interval; the next ones by interval + jitter', async (t) => {
  const { calls, probe } = recordingProbe();
  const randoms = [0.8, 0.0, 0.6, 0.2, 0.4];
  let i = 0;
  const ft = fakeTimers();
  const sched = new HealthCheckScheduler({ probe, timers: ft.timers, random: () => (i < randoms.length ? randoms[i++]! : 0.5) });
  t.teardown(() => sched.stop());
  for (let p = 1; p <= 5; p++) sched.subscribe('127.0.0.1', p, { ...policy, interval: 250, jitter: 0.2 }, () => {});
  t.same(ft.delays, [200, 0, 150, 50, 100], 'first check at random * interval');
  await ft.fire();
  t.same(calls, ['127.0.0.1:2', '127.0.0.1:4', '127.0.0.1:5', '127.0.0.1:3', '127.0.0.1:1'], 'in stagger order');
  t.same(ft.delays.slice(5), [275, 275, 275, 275, 275], 'then interval * (1 + random * jitter), after each check');
  t.equal(ft.pending.size, 5, 'one timer per target, never two');
});

t.test('jitter: each wait is within [interval, interval * (1 + jitter))', async (t) => {
  const ft = fakeTimers();
  const { probe } = recordingProbe();
  const sched = new HealthCheckScheduler({ probe, timers: ft.timers });
  t.teardown(() => sched.stop());
  sched.subscribe('10.0.0.1', 80, { ...policy, interval: 1000, jitter: 0.1 }, () => {});
  for (let k = 0; k < 200; k++) await ft.fire();
  const waits = ft.delays.slice(1);
  t.equal(waits.length, 200);
  t.ok(
    waits.every((w) => w >= 1000 && w < 1100),
    'bounded',
  );
  t.ok(new Set(waits).size > 150, 'and actually random');
});

t.test('one probe stream per (ip:port, policy), however many subscribers', async (t) => {
  const { calls, probe } = recordingProbe();
  const ft = fakeTimers();
  const sched = new HealthCheckScheduler({ probe, timers: ft.timers, random: () => 0 });
  t.teardown(() => sched.stop());
  const seenA: string[] = [];
  const seenB: string[] = [];
  const unA = sched.subscribe('10.0.0.1', 80, policy, (s) => seenA.push(s.health));
  const unB = sched.subscribe('10.0.0.1', 80, { ...policy }, (s) => seenB.push(s.health));
  t.equal(sched.size, 1);
  const unC = sched.subscribe('10.0.0.1', 80, { ...policy, timeout: 30 }, () => {});
  t.equal(sched.size, 2, 'a different policy is a different check');
  unC();
  t.equal(sched.size, 1);
  for (let k = 0; k < 5; k++) await ft.fire();
  t.equal(calls.length, 5, 'one probe per interval for both subscribers');
  t.equal(seenA.length, 5);
  t.equal(seenB.length, 5);
  unA();
  unA(); // idempotent
  t.equal(sched.size, 1, 'still one subscriber');
  const seenLate: string[] = [];
  const unLate = sched.subscribe('10.0.0.1', 80, policy, (s) => seenLate.push(s.health));
  t.same(seenLate, ['healthy'], 'a late subscriber gets the current verdict synchronously');
  unLate();
  unB();
  t.equal(sched.size, 0);
  t.equal(ft.pending.size, 0, 'its timer is cleared');
  await ft.fire();
  t.equal(calls.length, 5, 'no probes after the last subscriber left');
});

t.test('unsubscribing aborts a probe in flight; a throwing subscriber hurts nobody', async (t) => {
  let aborted = 0;
  const probe: Probe = (_target, _policy, signal) =>
    new Promise((resolve) => {
      signal.addEventListener('abort', () => {
        aborted++;
        resolve({ ok: false, error: 'aborted' });
      });
    });
  const sched = new HealthCheckScheduler({ probe, random: () => 0 });
  const un = sched.subscribe('10.0.0.1', 80, policy, () => t.fail('no verdict expected'));
  await sleep(20);
  un();
  t.equal(aborted, 1);

  const ok = new HealthCheckScheduler({ probe: async () => ({ ok: true, error: '' }), random: () => 0 });
  t.teardown(() => ok.stop());
  const seen: string[] = [];
  ok.subscribe('10.0.0.1', 81, policy, () => {
    throw new Error('boom');
  });
  ok.subscribe('10.0.0.1', 81, policy, (s) => seen.push(s.health));
  t.ok(await waitFor(() => seen.length >= 2), 'checks go on');
});
