/**
 * MurmurHash3 (x86, 32-bit) over the UTF-8 bytes of a string. Chosen over FNV-1a because
 * ring and table placement need good avalanche: FNV leaves keys that differ in their last
 * characters (`10.0.0.1`, `10.0.0.2`, `user-17`, `user-18`) clustered on the ring.
 * The output equals the reference C implementation's for the same bytes and seed.
 */

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

const encoder = new TextEncoder();

/** MurmurHash3_x86_32 of `s` (UTF-8) with `seed`; an unsigned 32-bit integer. */
export function murmur3(s: string, seed = 0): number {
  const len = s.length;
  // Most keys (IPs, header values, endpoint ids) are ASCII: hash the char codes as bytes
  // without encoding. Anything else is encoded once (an allocation, off the common path).
  for (let i = 0; i < len; i++) {
    if (s.charCodeAt(i) > 0x7f) return murmur3Bytes(encoder.encode(s), seed);
  }
  let h = seed | 0;
  const blocks = len & ~3;
  let i = 0;
  for (; i < blocks; i += 4) {
    let k = s.charCodeAt(i) | (s.charCodeAt(i + 1) << 8) | (s.charCodeAt(i + 2) << 16) | (s.charCodeAt(i + 3) << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const rest = len & 3;
  if (rest > 0) {
    let k = s.charCodeAt(i);
    if (rest > 1) k |= s.charCodeAt(i + 1) << 8;
    if (rest > 2) k |= s.charCodeAt(i + 2) << 16;
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  return fmix32(h ^ len);
}

/** MurmurHash3_x86_32 of raw bytes. */
export function murmur3Bytes(b: Uint8Array, seed = 0): number {
  const len = b.length;
  let h = seed | 0;
  const blocks = len & ~3;
  let i = 0;
  for (; i < blocks; i += 4) {
    let k = b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const rest = len & 3;
  if (rest > 0) {
    let k = b[i]!;
    if (rest > 1) k |= b[i + 1]! << 8;
    if (rest > 2) k |= b[i + 2]! << 16;
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  return fmix32(h ^ len);
}

/** Murmur3's finalizer: a bijection on 32 bits with full avalanche. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The hash of a request's hash key (a header value, or the source IP), for
 * `PickContext.hash` of the ring-hash and maglev balancers. 32-bit unsigned; the same key
 * gives the same value in every agent and every release (MurmurHash3_x86_32, seed 0), so
 * agents on different nodes send a key to the same endpoint.
 */
export function hashKey(s: string): number {
  return murmur3(s, 0);
}
