/**
 * The L7 calls' timers (request and per-try timeouts, retry back-off), one Node timer per
 * distinct delay rather than one per call.
 *
 * Every request arms its timeout when its try starts and clears it when the answer is in:
 * with a `setTimeout`/`clearTimeout` per request, each allocated a Timeout, linked it into
 * Node's list for that delay and unlinked it again (about 1-2% of the L7 path's CPU in the
 * profile, docs/benchmarks/l7-cost.md step 6). Here a call is linked into a list of its own
 * fields: calls armed with the same delay expire in the order they were armed, so each
 * delay keeps a FIFO list and one Node timer for its oldest entry. Clearing is an unlink.
 * When the timer fires, the entries that are due fire and it is set again for the new oldest
 * one (in steady state once per delay, not once per request). A list that empties gives
 * its timer back, so an idle agent holds no timer.
 *
 * Timers never fire early: the delay is rounded up to whole milliseconds and an entry fires
 * only once `performance.now()` has reached its time.
 */

/** What a call keeps for its timer (fields on the call itself: arming allocates nothing). */
export interface DeadlineEntry {
  dlAt: number;
  dlPrev: DeadlineEntry | null;
  dlNext: DeadlineEntry | null;
  dlList: DeadlineList | null;
  /** The entry's time came (it is already unlinked). */
  dlFire(): void;
}

export class DeadlineList {
  head: DeadlineEntry | null = null;
  tail: DeadlineEntry | null = null;
  /** Emptied and dropped from the lists: the next call with this delay makes a new one. */
  closed = false;
  private timer: NodeJS.Timeout | undefined = undefined;
  private firing = false;

  constructor(readonly ms: number) {}

  add(e: DeadlineEntry, now: number): void {
    e.dlAt = now + this.ms;
    e.dlList = this;
    e.dlNext = null;
    e.dlPrev = this.tail;
    if (this.tail === null) this.head = e;
    else this.tail.dlNext = e;
    this.tail = e;
    if (!this.firing) this.timer ??= setTimeout(this.fire, this.ms);
  }

  remove(e: DeadlineEntry): void {
    const { dlPrev: prev, dlNext: next } = e;
    if (prev === null) this.head = next;
    else prev.dlNext = next;
    if (next === null) this.tail = prev;
    else next.dlPrev = prev;
    e.dlPrev = e.dlNext = null;
    e.dlList = null;
    if (this.head === null && !this.firing) this.close();
  }

  private close(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.closed = true;
    lists.delete(this.ms);
  }

  private readonly fire = (): void => {
    this.timer = undefined;
    this.firing = true;
    try {
      const now = performance.now();
      let e = this.head;
      while (e !== null && e.dlAt <= now) {
        // Unlinked before it fires: what it does may arm it again (a retry), or clear others.
        this.unlinkHead(e);
        e.dlFire();
        e = this.head;
      }
    } finally {
      this.firing = false;
      if (this.head === null) this.close();
      else this.timer = setTimeout(this.fire, Math.max(1, Math.ceil(this.head.dlAt - performance.now())));
    }
  };

  private unlinkHead(e: DeadlineEntry): void {
    this.head = e.dlNext;
    if (this.head === null) this.tail = null;
    else this.head.dlPrev = null;
    e.dlNext = null;
    e.dlList = null;
  }
}

/** The lists by delay (ms), of this thread. */
const lists = new Map<number, DeadlineList>();
let last: DeadlineList | undefined;

/** Arm `e` to fire `ms` from `now` (performance.now()); it must not be armed. */
export function armDeadline(e: DeadlineEntry, ms: number, now: number): void {
  const key = Math.max(1, Math.ceil(ms));
  let list = last;
  if (list === undefined || list.ms !== key || list.closed) {
    list = lists.get(key);
    if (list === undefined) lists.set(key, (list = new DeadlineList(key)));
    last = list;
  }
  list.add(e, now);
}

/** Disarm `e` (no-op when it is not armed). */
export function clearDeadline(e: DeadlineEntry): void {
  e.dlList?.remove(e);
}
