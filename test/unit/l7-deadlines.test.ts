import t from 'tap';
import { armDeadline, clearDeadline, type DeadlineEntry } from '../../src/proxy/l7/deadlines.js';

/** A call's timer fields, recording when it fired. */
function entry(name: string, fired: string[], onFire?: () => void): DeadlineEntry & { firedAt: number } {
  return {
    dlAt: 0,
    dlPrev: null,
    dlNext: null,
    dlList: null,
    firedAt: -1,
    dlFire() {
      this.firedAt = performance.now();
      fired.push(name);
      onFire?.();
    },
  };
}

const until = (cond: () => boolean) =>
  new Promise<void>((resolve) => {
    const i = setInterval(() => {
      if (cond()) {
        clearInterval(i);
        resolve();
      }
    }, 2);
  });

t.test('entries fire in order, never before their time, and cleared ones never', async (t) => {
  const fired: string[] = [];
  const now = performance.now();
  const a = entry('a', fired);
  const b = entry('b', fired);
  const c = entry('c', fired);
  const d = entry('d', fired);
  armDeadline(a, 30, now);
  armDeadline(b, 30, now + 5);
  armDeadline(c, 30, now + 10);
  armDeadline(d, 5, now);
  clearDeadline(b);
  t.equal(b.dlList, null, 'a cleared entry is unlinked');
  clearDeadline(b); // clearing twice is harmless
  await until(() => fired.length === 3);
  t.same(fired, ['d', 'a', 'c']);
  t.ok(d.firedAt >= d.dlAt && a.firedAt >= a.dlAt && c.firedAt >= c.dlAt, 'none fired before its time');
  t.equal(a.dlList, null);
});

t.test('an entry that fires may arm itself again (a retry) and others still fire on time', async (t) => {
  // All with the same delay (one list): a fires, arms itself again behind b; b is due long
  // before a's second time and must fire at its own time, not together with a.
  const fired: string[] = [];
  let secondAt = 0;
  const now = performance.now();
  const a: DeadlineEntry = entry('a', fired, () => {
    if (secondAt !== 0) return;
    armDeadline(a, 1000, performance.now());
    secondAt = a.dlAt;
  });
  const b = entry('b', fired);
  armDeadline(a, 1000, now);
  armDeadline(b, 1000, now + 10);
  await until(() => fired.length === 2);
  t.same(fired, ['a', 'b']);
  t.ok(b.firedAt >= b.dlAt, 'b not early');
  t.ok(b.firedAt < secondAt - 500, "b fired at its time, well before a's second time");
  await until(() => fired.length === 3);
  t.same(fired, ['a', 'b', 'a']);
});

t.test('clearing the last entry leaves no timer behind (the process can exit)', async (t) => {
  const fired: string[] = [];
  const a = entry('a', fired);
  armDeadline(a, 60_000, performance.now());
  clearDeadline(a);
  const handles = (process as unknown as { getActiveResourcesInfo(): string[] }).getActiveResourcesInfo().filter((r) => r === 'Timeout');
  t.same(handles, [], 'no Timeout is active');
  const b = entry('b', fired);
  armDeadline(b, 5, performance.now());
  await until(() => fired.length === 1);
  t.same(fired, ['b'], 'a new list for the same delay works after the old one closed');
});
