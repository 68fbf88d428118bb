/**
 * xoshiro128** (Blackman & Vigna): the balancers' default source of randomness. Math.random
 * would do, but in V8 each call returns a freshly allocated heap number; this generator
 * runs on 32-bit integer state and allocates nothing, so a pick allocates nothing either.
 * Statistical quality is ample for load balancing; it is not for anything secret.
 */
export class Xoshiro128 {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Seeded from Math.random unless seeds are given (one per 32-bit state word). */
  constructor(seeds?: readonly [number, number, number, number]) {
    const seed = (i: number): number => (seeds === undefined ? (Math.random() * 4294967296) | 0 : seeds[i]! | 0);
    this.s0 = seed(0);
    this.s1 = seed(1);
    this.s2 = seed(2);
    this.s3 = seed(3);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** A uniform unsigned 32-bit integer. */
  nextUint32(): number {
    const s1 = this.s1;
    let r = Math.imul(s1, 5);
    r = Math.imul((r << 7) | (r >>> 25), 9);
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 = s1 ^ this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = (this.s3 << 11) | (this.s3 >>> 21);
    return r >>> 0;
  }

  /** A uniform number in [0, 1), 32 bits of resolution. */
  next(): number {
    return this.nextUint32() / 4294967296;
  }
}
