// Reads `perf script` output (call-graph samples of one proxy's main thread) on stdin and
// splits the samples by what is on the stack: the kernel, Node's llhttp binding or stream
// write path under weft's code, weft's code itself, or no weft frame at all (event loop,
// read path). Used by bench/perf-l7.sh; docs/benchmarks/l7-cost.md reports its output.
import { createInterface } from 'node:readline';

const counts = new Map();
let total = 0;
let stack = [];

function classify(frames) {
  if (frames[0].endsWith('([kernel.kallsyms])')) return 'kernel';
  const inner = frames.findIndex((f) => f.includes('/dist/src/') || f.includes('node_modules/pino') || f.includes('prom-client'));
  if (inner < 0) return 'user: no weft frame (event loop, streams before/after)';
  const below = frames.slice(0, inner);
  if (below.some((f) => /node:internal\/streams|node:net|stream_base_commons|StreamBase|LibuvStreamWrap/.test(f))) return 'user: streams/net under weft code (writes)';
  if (below.some((f) => /http_parser|llhttp/.test(f))) return 'user: llhttp under weft code';
  return 'user: weft code and what it calls';
}

function flush() {
  if (stack.length === 0) return;
  const k = classify(stack);
  counts.set(k, (counts.get(k) ?? 0) + 1);
  total++;
  stack = [];
}

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === '') flush();
  else if (line[0] === ' ' || line[0] === '\t') stack.push(line.trim());
}
flush();
for (const [k, v] of [...counts].sort((a, b) => b[1] - a[1])) console.log(`${((100 * v) / total).toFixed(2).padStart(6)}%  ${k}`);
