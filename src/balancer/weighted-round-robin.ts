import type { Endpoint } from '../cluster/endpoint.js';
import type { Balancer, PickContext } from './types.js';
import type { BalancerOptions } from './options.js';
import { triedSet } from './tried.js';
import { matchPrevious } from './match-previous.js';
import { growF64, growI32, WeightedSet } from './weights.js';
import { Xoshiro128 } from './prng.js';

/** Virtual time past which deadlines are shifted back to 0, to keep float steps exact. */
const REBASE_AT = 1e9;

export interface WeightedRoundRobinOptions extends BalancerOptions {
  /** Virtual time at which the schedule is rebased (default 1e9; tests lower it). */
  rebaseAt?: number;
}

/**
 * Smooth weighted round robin by earliest-deadline-first, as Envoy's EDF scheduler: each
 * endpoint is due every 1/weight units of virtual time and a heap yields the earliest
 * deadline, O(log n) per pick. The sequence interleaves like nginx's smooth WRR (weights
 * 5:1:1 give a a b a c a a, never a burst of five), but nginx's scan is O(n) per pick,
 * too slow at 10,000 endpoints. Equal deadlines go first-in first-out, so equal weights
 * are exact round robin.
 *
 * The heap is 4-ary (half the depth of a binary one) and keeps deadline, tie-break order
 * and slot in its own parallel arrays, so a sift reads adjacent memory, not scattered
 * per-endpoint records.
 *
 * A new set keeps each surviving endpoint's place in the schedule (its deadline relative
 * to the virtual clock, rescaled if its weight changed); a newcomer starts at a random
 * phase within its period. So a health flap neither restarts the cycle at the heaviest
 * endpoint nor makes every newcomer due at once.
 *
 * Weight 0 drains an endpoint (see `WeightedSet`).
 */
export class WeightedRoundRobinBalancer implements Balancer {
  readonly type = 'weighted-round-robin';
  private readonly rng: (() => number) | undefined;
  private readonly prng = new Xoshiro128();
  private set = new WeightedSet();
  /** The previous set, kept to match endpoints across a rebuild, then reused. */
  private spareSet = new WeightedSet();
  /** Per slot (index into set.eps): maxWeight/weight. */
  private period = new Float64Array(16);
  /** Heap entries: deadline, FIFO order among equal deadlines, slot. */
  private hd = new Float64Array(16);
  private ho = new Float64Array(16);
  private hs = new Int32Array(16);
  /** Buffers for the next rebuild, swapped with the live ones. */
  private sparePeriod = new Float64Array(16);
  private spareHd = new Float64Array(16);
  private spareHo = new Float64Array(16);
  private spareHs = new Int32Array(16);
  /** Entries set aside while looking for an untried endpoint. */
  private sd = new Float64Array(16);
  private so = new Float64Array(16);
  private ss = new Int32Array(16);
  /** Scratch for a rebuild: old slot -> heap index; new slot -> old slot or -1. */
  private posOfSlot = new Int32Array(16);
  private match = new Int32Array(16);
  private size = 0;
  /** Virtual time: the deadline of the last pick. */
  private clock = 0;
  private seq = 0;

  private readonly rebaseAt: number;

  constructor(options: WeightedRoundRobinOptions = {}) {
    this.rng = options.random;
    this.rebaseAt = options.rebaseAt ?? REBASE_AT;
  }

  /** The injected source, else our own allocation-free generator. */
  private random(): number {
    return this.rng === undefined ? this.prng.next() : this.rng();
  }

  setEndpoints(endpoints: readonly Endpoint[]): void {
    const prev = this.set;
    const set = this.spareSet;
    set.set(endpoints);
    const n = set.size;
    const eps = set.eps;
    const weights = set.weights;

    // Where each endpoint sits in the schedule being replaced.
    const hd = this.hd;
    const ho = this.ho;
    const hs = this.hs;
    const period = this.period;
    const posOfSlot = (this.posOfSlot = growI32(this.posOfSlot, this.size));
    for (let h = 0; h < this.size; h++) posOfSlot[hs[h]!] = h;
    const match = (this.match = growI32(this.match, n));
    matchPrevious(prev.eps, prev.size, eps, n, match);

    const nPeriod = growF64(this.sparePeriod, n);
    const nHd = growF64(this.spareHd, n);
    const nHo = growF64(this.spareHo, n);
    const nHs = growI32(this.spareHs, n);
    const clock = this.clock;
    // Periods in units of the heaviest endpoint's, whatever the scale of the weights.
    const max = set.max;
    for (let i = 0; i < n; i++) {
      const p = max / weights[i]!;
      nPeriod[i] = p;
      nHs[i] = i;
      const old = match[i]!;
      if (old >= 0) {
        const h = posOfSlot[old]!;
        const left = hd[h]! - clock;
        const was = period[old]!;
        nHd[i] = was === p ? left : (left * p) / was;
        nHo[i] = ho[h]!;
      } else {
        nHd[i] = this.random() * p;
        nHo[i] = this.seq++;
      }
    }
    this.set = set;
    this.spareSet = prev;
    this.sparePeriod = period;
    this.spareHd = hd;
    this.spareHo = ho;
    this.spareHs = hs;
    this.period = nPeriod;
    this.hd = nHd;
    this.ho = nHo;
    this.hs = nHs;
    this.sd = growF64(this.sd, n);
    this.so = growF64(this.so, n);
    this.ss = growI32(this.ss, n);
    this.clock = 0;
    this.size = n;
    this.heapify();
  }

  pick(ctx: PickContext): Endpoint | undefined {
    if (this.size === 0) return undefined;
    const eps = this.set.eps;
    const tried = triedSet(ctx.tried);
    const slot = tried !== undefined && tried.has(eps[this.hs[0]!]!) ? this.pickUntried(tried) : this.advanceTop();
    if (this.clock > this.rebaseAt) this.rebase();
    return eps[slot];
  }

  /** Take the earliest endpoint: move the clock to its deadline, schedule its next turn. */
  private advanceTop(): number {
    const slot = this.hs[0]!;
    const d = this.hd[0]!;
    this.clock = d;
    this.siftDown(0, d + this.period[slot]!, this.seq++, slot);
    return slot;
  }

  /**
   * The earliest endpoint not in `tried`. Tried ones ahead of it are set aside and put back
   * unchanged, so they keep their turn for the next request.
   */
  private pickUntried(tried: ReadonlySet<Endpoint>): number {
    const eps = this.set.eps;
    const { sd, so, ss } = this;
    let k = 0;
    while (this.size > 0 && tried.has(eps[this.hs[0]!]!)) {
      sd[k] = this.hd[0]!;
      so[k] = this.ho[0]!;
      ss[k] = this.hs[0]!;
      k++;
      const last = --this.size;
      if (last > 0) this.siftDown(0, this.hd[last]!, this.ho[last]!, this.hs[last]!);
    }
    let picked = -1;
    if (this.size > 0) picked = this.advanceTop();
    for (let i = 0; i < k; i++) this.push(sd[i]!, so[i]!, ss[i]!);
    // Every endpoint has been tried: take the earliest anyway.
    if (picked < 0) picked = this.advanceTop();
    return picked;
  }

  /** Put entry (d, o, s) at hole `i` and move it down to its place. */
  private siftDown(i: number, d: number, o: number, s: number): void {
    const { hd, ho, hs } = this;
    const n = this.size;
    for (;;) {
      const first = 4 * i + 1;
      if (first >= n) break;
      const end = first + 4 < n ? first + 4 : n;
      let c = first;
      let cd = hd[first]!;
      let co = ho[first]!;
      for (let k = first + 1; k < end; k++) {
        const kd = hd[k]!;
        if (kd < cd || (kd === cd && ho[k]! < co)) {
          c = k;
          cd = kd;
          co = ho[k]!;
        }
      }
      if (cd > d || (cd === d && co > o)) break;
      hd[i] = cd;
      ho[i] = co;
      hs[i] = hs[c]!;
      i = c;
    }
    hd[i] = d;
    ho[i] = o;
    hs[i] = s;
  }

  private push(d: number, o: number, s: number): void {
    const { hd, ho, hs } = this;
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 2;
      const pd = hd[parent]!;
      if (pd < d || (pd === d && ho[parent]! < o)) break;
      hd[i] = pd;
      ho[i] = ho[parent]!;
      hs[i] = hs[parent]!;
      i = parent;
    }
    hd[i] = d;
    ho[i] = o;
    hs[i] = s;
  }

  private heapify(): void {
    const { hd, ho, hs } = this;
    for (let i = (this.size - 2) >> 2; i >= 0; i--) this.siftDown(i, hd[i]!, ho[i]!, hs[i]!);
  }

  /** Shift every deadline back by the clock (rare: after ~1e9 units of virtual time). */
  private rebase(): void {
    const clock = this.clock;
    const hd = this.hd;
    for (let i = 0; i < this.size; i++) hd[i] = hd[i]! - clock;
    this.clock = 0;
    this.heapify();
  }
}
