import t from 'tap';
import { fmix32, hashKey, murmur3, murmur3Bytes } from '../../src/balancer/hash.js';

// From the reference C MurmurHash3_x86_32 (smhasher), over the UTF-8 bytes.
const VECTORS: Array<[string, number, number]> = [
  ['', 0, 0],
  ['', 1, 1364076727],
  ['', 0x9747b28c, 3954623016],
  ['a', 0, 1009084850],
  ['ab', 42, 3610054215],
  ['abc', 0, 3017643002],
  ['abcd', 1, 2616542610],
  ['test', 0, 0xba6bd213],
  ['Hello, world!', 0, 3224780355],
  ['The quick brown fox jumps over the lazy dog', 0, 776992547],
  ['The quick brown fox jumps over the lazy dog', 0x9747b28c, 799549133],
  ['10.0.0.1:8080', 0, 2741077564],
  ['10.0.0.1:8080', 42, 3397504214],
  ['h\u00e9llo w\u00f6rld \u20ac \u{1F600}', 0, 3226914011],
  ['h\u00e9llo w\u00f6rld \u20ac \u{1F600}', 42, 2646427654],
];

t.test('murmur3 matches the reference implementation', async (t) => {
  for (const [s, seed, want] of VECTORS) {
    t.equal(murmur3(s, seed), want, `murmur3(${JSON.stringify(s)}, ${seed})`);
    t.equal(murmur3Bytes(new TextEncoder().encode(s), seed), want, `bytes ${JSON.stringify(s)}`);
  }
});

t.test('hashKey is murmur3 with seed 0, unsigned 32-bit', async (t) => {
  t.equal(hashKey('test'), 0xba6bd213);
  for (const s of ['', 'x-user-1', '10.77.0.11', 'ü']) {
    const h = hashKey(s);
    t.ok(Number.isInteger(h) && h >= 0 && h < 2 ** 32, s);
    t.equal(h, hashKey(s), 'stable');
  }
});

t.test('avalanche: one flipped input bit flips about half the output bits', async (t) => {
  let flips = 0;
  let trials = 0;
  for (let i = 0; i < 2000; i++) {
    const base = `user-${i}`;
    const h = hashKey(base);
    for (let c = 0; c < base.length; c++) {
      for (let bit = 0; bit < 7; bit++) {
        const code = base.charCodeAt(c) ^ (1 << bit);
        const other = base.slice(0, c) + String.fromCharCode(code) + base.slice(c + 1);
        flips += popcount(h ^ hashKey(other));
        trials++;
      }
    }
  }
  const mean = flips / trials;
  t.ok(mean > 15.7 && mean < 16.3, `mean flipped bits ${mean.toFixed(3)}`);
});

t.test('sequential keys spread evenly over buckets', async (t) => {
  const buckets = 64;
  const n = 64_000;
  const counts = new Array<number>(buckets).fill(0);
  for (let i = 0; i < n; i++) counts[hashKey(`10.0.${i >> 8}.${i & 255}`) % buckets]!++;
  const expected = n / buckets;
  const chi2 = counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
  // 63 degrees of freedom: P(chi2 > 130) is about 1e-6.
  t.ok(chi2 < 130, `chi2 ${chi2.toFixed(1)}`);
});

t.test('fmix32 is a bijection on a sample (no collisions)', async (t) => {
  const seen = new Set<number>();
  for (let i = 0; i < 100_000; i++) seen.add(fmix32(i));
  t.equal(seen.size, 100_000);
});

function popcount(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}
