/** Construction options shared by every balancer (see `createBalancer`). */
export interface BalancerOptions {
  /**
   * Uniform source in [0, 1). Default: a per-balancer xoshiro128** seeded from Math.random
   * (see prng.ts: unlike Math.random it allocates nothing). Tests inject `seededRandom(seed)`.
   */
  random?: () => number;
  /** Clock, ms since the epoch; default `Date.now`. Peak-EWMA reads it (every 16th pick). */
  now?: () => number;
}

/**
 * A small seeded PRNG (mulberry32): reproducible sequences for tests and benchmarks.
 * Not for anything security-related.
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An index in [0, n) from a uniform draw; clamped so a source that returns 1 stays in range. */
export function randomIndex(r: number, n: number): number {
  const i = Math.floor(r * n);
  return i < n ? i : n - 1;
}

/** A uniform 32-bit hash from a draw: hash balancers use it when the request carries no key. */
export function randomHash(r: number): number {
  return Math.floor(r * 4294967296) >>> 0;
}
