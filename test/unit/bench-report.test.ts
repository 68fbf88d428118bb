// The bench's own logic, without running anything: wrk report parsing, the done-when
// verdicts, the markdown and the SVG chart.
import t from 'tap';
import { parseWrk, wrkArgs } from '../../bench/lib/wrk.js';
import { doneWhen, toMarkdown, toSvg, type BenchReport } from '../../bench/lib/report.js';
import type { ScenarioResult } from '../../bench/throughput.js';

const WRK_OK = `Running 10s test @ http://10.96.0.80/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  512.33us  20.01ms   90.00%
    Req/Sec    24.01k     1.20k   26.00k    70.00%
  Latency Distribution
     50%  850.00us
     75%    2.20ms
     90%    2.80ms
     99%    1.02s
  238922 requests in 10.00s, 290.12MB read
Requests/sec:  23888.51
Transfer/sec:     29.01MB
`;

const WRK_ERRORS = `Running 3s test @ http://10.77.0.1:18080/
  1 threads and 50 connections
  Latency Distribution
     50%    1.50ms
     75%    2.00ms
     90%    3.00ms
     99%   10.00ms
  1000 requests in 3.00s, 1.2MB read
  Socket errors: connect 2, read 3, write 0, timeout 5
  Non-2xx or 3xx responses: 7
Requests/sec:    333.33
Transfer/sec:    400.00KB
`;

t.test('parseWrk reads rates, percentiles in every unit, and errors', async (t) => {
  const ok = parseWrk(WRK_OK);
  t.equal(ok.requests, 238922);
  t.equal(ok.durationS, 10);
  t.equal(ok.reqPerSec, 23888.51);
  t.equal(ok.p50Ms, 0.85);
  t.equal(ok.p75Ms, 2.2);
  t.equal(ok.p99Ms, 1020);
  t.equal(ok.errors, 0);
  t.equal(ok.bytesRead, '290.12MB');

  const bad = parseWrk(WRK_ERRORS);
  t.same(bad.socketErrors, { connect: 2, read: 3, write: 0, timeout: 5 });
  t.equal(bad.non2xx, 7);
  t.equal(bad.errors, 17);
  t.throws(() => parseWrk('unable to connect to 10.0.0.1:80 Connection refused'), /no request count/);
});

t.test('wrkArgs', async (t) => {
  t.same(wrkArgs('http://x/', { cpu: 0, connections: 50, durationS: 3, headers: ['Connection: close'] }), ['-t', '1', '-c', '50', '-d', '3s', '--latency', '-H', 'Connection: close', 'http://x/']);
});

function scenario(key: ScenarioResult['key'], name: string, rps: number, p99: number, cpuPer1000?: number, errors = 0): ScenarioResult {
  return {
    key,
    name,
    url: 'http://x/',
    wrk: {
      requests: rps * 10,
      durationS: 10,
      reqPerSec: rps,
      p50Ms: 1,
      p75Ms: 2,
      p90Ms: 3,
      p99Ms: p99,
      socketErrors: { connect: 0, read: 0, write: 0, timeout: 0 },
      non2xx: errors,
      errors,
      bytesRead: '1MB',
    },
    cpuPer1000,
    rssMb: 50,
  };
}

function report(scenarios: ScenarioResult[]): BenchReport {
  return {
    machine: { kernel: '6.1', nproc: 2, cpuModel: 'cpu <x>', memoryGiB: 24, node: 'v20', commit: 'abc1234', dirty: false, date: '2026-01-01T00:00:00Z', tools: { wrk: '4' } },
    mode: { quick: false, only: [], durationS: 10, warmupS: 3, connections: 50, connRateDurationS: 5, proxyCpu: 1, clientCpu: 0 },
    elapsedS: 100,
    throughput: { scenarios, connectionRate: [], notes: [] },
    churn: { endpoints: 10000, changed: 10000, configBytes: 1000, endToEndMs: [900, 800, 1200], busyRounds: 0 },
    memory: { localWorkloads: 1000, remoteEndpoints: 10000, localEndpoints: 1000, rssMb: 149 },
    sectionErrors: {},
  };
}

t.test('doneWhen judges the issue figures', async (t) => {
  const r = report([scenario('direct', 'direct', 30000, 5), scenario('l7', 'weft L7', 19000, 12, 0.05), scenario('l4', 'weft L4', 27500, 6, 0.01), scenario('nginx', 'nginx', 27000, 6, 0.02)]);
  const verdicts = Object.fromEntries(doneWhen(r).map((c) => [c.criterion, c.pass]));
  t.equal(verdicts['weft L7 req/s vs nginx'], true); // 0.704
  t.equal(verdicts['weft L7 p99 vs nginx'], true); // exactly 2x
  t.equal(verdicts['weft L7 and L4 errors'], true);
  t.equal(verdicts['weft L4 req/s vs direct'], true); // 0.917
  t.equal(verdicts['agent CPU per 1000 requests, L7 / L4'], true); // 5x
  t.equal(verdicts['agent RSS, 1000 local workloads + 10000 endpoints'], true);
  t.equal(verdicts['10000 endpoint changes applied (file write -> applied)'], true); // median 900

  const worse = report([scenario('l7', 'weft L7', 10000, 30, 0.02, 3), scenario('nginx', 'nginx', 27000, 6, 0.02)]);
  const v2 = Object.fromEntries(doneWhen(worse).map((c) => [c.criterion, c.pass]));
  t.equal(v2['weft L7 req/s vs nginx'], false);
  t.equal(v2['weft L7 p99 vs nginx'], false);
  t.equal(v2['weft L7 and L4 errors'], false);
  t.equal(v2['weft L4 req/s vs direct'], undefined, 'not measured without L4 and direct');
});

/** A scenario measured in rounds, its figures from the median round (as summarize() makes them). */
function rounded(key: ScenarioResult['key'], name: string, rps: number[]): ScenarioResult {
  const rounds = rps.map((x, i) => ({ round: i + 1, warmupS: 1, wrk: scenario(key, name, x, 5).wrk }));
  const med = [...rounds].sort((a, b) => a.wrk!.reqPerSec - b.wrk!.reqPerSec)[(rounds.length - 1) >> 1]!;
  return { ...scenario(key, name, med.wrk!.reqPerSec, 5, 0.001), rounds, medianRound: med.round };
}

t.test('L4 vs direct is judged on the rounds paired, not on the ratio of the medians', async (t) => {
  // The machine was slow in round 1 only: direct's slow round is the low outlier, L4's
  // slow round is its median, so the medians say 0.85x while each round says ~0.99x.
  const r = report([rounded('direct', 'direct', [24000, 32600, 32800]), rounded('l4', 'weft L4', [23800, 27800, 32500])]);
  const c = doneWhen(r).find((x) => x.criterion === 'weft L4 req/s vs direct')!;
  t.equal(c.pass, true);
  t.match(c.measured, /^0\.99x, median of the rounds' ratios \(0\.99 \/ 0\.85 \/ 0\.99\); ratio of the medians 0\.85x$/);
  const slow = report([rounded('direct', 'direct', [30000, 30000, 30000]), rounded('l4', 'weft L4', [29000, 26000, 25000])]);
  t.equal(doneWhen(slow).find((x) => x.criterion === 'weft L4 req/s vs direct')!.pass, false, 'two rounds of three below 0.9x fail');
});

t.test('the RSS criterion holds the peak as well as the settled figure', async (t) => {
  const crit = 'agent RSS, 1000 local workloads + 10000 endpoints';
  const settledOnly = report([]);
  settledOnly.memory = { localWorkloads: 1000, remoteEndpoints: 10000, localEndpoints: 1000, rssMb: 120, peakRssMb: 160 };
  t.equal(doneWhen(settledOnly).find((x) => x.criterion === crit)!.pass, false, 'a start-up peak over the line fails');
  settledOnly.memory.peakRssMb = 140;
  t.equal(doneWhen(settledOnly).find((x) => x.criterion === crit)!.pass, true);
});

t.test('issue 17 memory: each run with workers is held to 150 MB + 30 MB per worker, settled and peak', async (t) => {
  const r = report([]);
  r.memory = {
    localWorkloads: 1000,
    remoteEndpoints: 10000,
    localEndpoints: 1000,
    rssMb: 130,
    peakRssMb: 136,
    controlRssMb: 130,
    workers: 1,
    workersRssMb: 150,
    workersPeakRssMb: 155,
    moreWorkers: 3,
    moreWorkersRssMb: 205,
    moreWorkersPeakRssMb: 245,
    perWorkerMb: 27.5,
  };
  const one = () => doneWhen(r).find((c) => c.criterion.startsWith('agent RSS with 1 worker thread'))!;
  const three = () => doneWhen(r).find((c) => c.criterion.startsWith('agent RSS with 3 worker thread'))!;
  t.equal(one().target, '< 150 MB + 30 MB per worker thread (180 MB)');
  t.equal(one().pass, true);
  t.equal(three().target, '< 150 MB + 30 MB per worker thread (240 MB)');
  t.equal(three().pass, false, 'a 3-worker start-up peak over 240 MB fails though the settled figure is inside');
  t.match(three().measured, /205\.0 MB settled, 245\.0 MB peak; control thread alone 130\.0 MB, 27\.5 MB per worker thread/);
  r.memory.moreWorkersPeakRssMb = 230;
  t.equal(three().pass, true);
  const md = toMarkdown(r);
  t.match(md, /\| with 3 worker threads \(agent\.workers: 4\), RSS settled \/ peak \| 205\.0 \/ 230\.0 MB \|/);
  t.match(md, /\| each worker thread \(the slope between 1 and 3 workers\) \| 27\.5 MB \|/);
});

t.test('ratios to the Node pipe, and the issue-17 floor check', async (t) => {
  const r = report([scenario('l7', 'weft L7', 19000, 12, 0.05), scenario('nginx', 'nginx', 27000, 6, 0.02), scenario('pipe', 'Node.js pipe (no parsing)', 25000, 8, 0.04)]);
  t.match(toMarkdown(r), /\| weft L7 \| 19000 \| 1\.00 \| 12\.00 \| 0 \| 50\.0 \| – \| 0\.70 \| 2\.50 \| 0\.76 \| 1\.25 \|/);
  const floor = doneWhen(r).find((c) => c.criterion.startsWith('weft L7 CPU per request vs the raw Node pipe'))!;
  t.equal(floor.pass, false, "50 µs against the pipe's 40 is above the floor");
  t.match(floor.measured, /1\.25x \(50\.0 vs 40\.0 µs\)/);
  r.throughput!.scenarios[0]!.cpuPer1000 = 0.04;
  t.equal(doneWhen(r).find((c) => c.criterion.startsWith('weft L7 CPU per request vs the raw Node pipe'))!.pass, true, "at the pipe's cost passes");
});

t.test('markdown and SVG', async (t) => {
  const r = report([scenario('direct', 'direct', 30000, 5), scenario('l7', 'weft L7', 19000, 12, 0.05), scenario('nginx', 'nginx', 27000, 6, 0.02)]);
  r.throughput!.scenarios.push({ key: 'haproxy', name: 'haproxy', url: 'http://x/', error: 'bind | failed' });
  const md = toMarkdown(r, 'latest.svg');
  // req/s, p50, p99, errors, CPU µs/req, cores used, then req/s and CPU against nginx and the Node pipe, vs direct, RSS.
  t.match(md, /\| weft L7 \| 19000 \| 1\.00 \| 12\.00 \| 0 \| 50\.0 \| – \| 0\.70 \| 2\.50 \| – \| – \| 0\.63 \| 50\.0 \|/);
  t.match(md, /\| haproxy \| failed: bind \\\| failed \|/);
  t.match(md, /commit: abc1234/);
  t.match(md, /!\[requests per second by scenario\]\(latest\.svg\)/);
  const svg = toSvg(r);
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.equal((svg.match(/<rect x=/g) ?? []).length, 3, 'a bar per measured scenario');
  t.match(svg, /0\.7 × nginx/);
  t.match(svg, /cpu &lt;x&gt;/, 'text is escaped');
  t.match(svg, /<\/svg>\n$/);
});
