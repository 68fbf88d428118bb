import t from 'tap';
import { Metrics, HistogramBatch } from '../../src/telemetry/metrics.js';

const labelsA = {
  source_workload: 'client',
  source_namespace: 'shop',
  destination_service: 'shop/api',
  destination_workload: 'api',
  response_code: '200',
  source_canonical_service: 'client',
  destination_canonical_service: 'api',
};
const labelsB = { ...labelsA, response_code: '503' };
// Values in every bucket, on the bounds themselves, and above the top bound (+Inf only).
const values = [0, 0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.02, 0.05, 0.3, 1, 2.5, 4, 9.99, 10, 12, 600];

async function exposition(m: Metrics): Promise<string> {
  return m.registry.getSingleMetricAsString('weft_request_duration_seconds');
}

/**
 * The series as `line -> value`; sums rounded to 1e-9 (a batch adds its values up before
 * adding them to the series: the same sum, up to the last bits of a double).
 */
async function series(m: Metrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const line of (await exposition(m)).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    const v = Number(line.slice(i + 1));
    out[line.slice(0, i)] = line.includes('_sum{') ? Math.round(v * 1e9) / 1e9 : v;
  }
  return out;
}

t.test('a batch flushed into the histogram gives the exposition observe() gives', async (t) => {
  const direct = new Metrics();
  const batched = new Metrics();
  for (const v of values) direct.requestDuration.observe(labelsA, v);
  for (const v of values.slice(0, 3)) direct.requestDuration.observe(labelsB, v);
  const a = new HistogramBatch(batched.requestDuration, labelsA);
  const b = new HistogramBatch(batched.requestDuration, labelsB);
  // Two flushes for A: the second adds to the series the first made.
  for (const v of values.slice(0, 8)) a.observe(v);
  t.ok(a.pending);
  a.flush();
  t.notOk(a.pending, 'flushed');
  for (const v of values.slice(8)) a.observe(v);
  a.flush();
  for (const v of values.slice(0, 3)) b.observe(v);
  b.flush();
  b.flush(); // nothing pending: no change
  t.same(await series(batched), await series(direct));
  t.match(await exposition(batched), /weft_request_duration_seconds_count\{[^}]*response_code="200"[^}]*\} 16/);
});

t.test('a series removed (or the histogram reset) between flushes is made again', async (t) => {
  const direct = new Metrics();
  const batched = new Metrics();
  const a = new HistogramBatch(batched.requestDuration, labelsA);
  a.observe(0.002);
  a.flush();
  batched.requestDuration.remove(labelsA);
  a.observe(0.2);
  a.flush();
  direct.requestDuration.observe(labelsA, 0.2);
  t.same(await series(batched), await series(direct), 'only what came after the removal');
  batched.requestDuration.reset();
  direct.requestDuration.reset();
  a.observe(3);
  a.flush();
  direct.requestDuration.observe(labelsA, 3);
  t.same(await series(batched), await series(direct), 'only what came after the reset');
});
