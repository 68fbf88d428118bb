// The HTTP/2 bench rows' harness on loopback, in a few seconds: the backend nginx bench/h2.ts
// configures answers h2c GETs and gRPC calls (message, then grpc-status in the trailers),
// h2load with the bench's arguments loads it and its output parses into numbers, and the
// table gives the ratios to nginx. The whole section (topology, agent, peers, rounds) takes
// about a minute even with 1 s rows: `npm run bench -- --only=h2 --quick` runs that.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { answerCommand, answerProblems, h2Table, h2loadArgs, parseH2load, prepareH2Backend, type H2Report } from '../../bench/h2.js';
import { freePort } from '../../bench/lib/net.js';

const run = promisify(execFile);

async function have(cmd: string): Promise<boolean> {
  return run('sh', ['-c', `command -v ${cmd}`]).then(
    () => true,
    () => false,
  );
}

t.test('the H2 backend answers h2c and gRPC; h2load runs against it and parses', async (t) => {
  for (const cmd of ['nginx', 'h2load', 'nghttp', 'curl']) {
    if (!(await have(cmd))) {
      t.plan(0, `skipped: ${cmd} is not installed (npm run bench installs it)`);
      return;
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'weft-bench-h2-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort('127.0.0.1');
  const { argv, grpcRequest } = prepareH2Backend(dir, `127.0.0.1:${port}`);
  const nginx = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  nginx.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise((r) => nginx.once('exit', r));
  t.teardown(async () => {
    nginx.kill('SIGTERM');
    await exited;
  });
  const base = `http://127.0.0.1:${port}`;
  const answer = async (kind: 'h2' | 'grpc', url: string): Promise<string> => {
    const [cmd, ...args] = answerCommand(kind, url, grpcRequest);
    const r = await run(cmd!, args).catch((e: { stdout?: string; stderr?: string }) => e);
    return `${r.stdout ?? ''} ${r.stderr ?? ''}`;
  };
  for (let i = 0; ; i++) {
    if (answerProblems('h2', await answer('h2', `${base}/`)).length === 0) break;
    if (i > 50 || nginx.exitCode !== null) throw new Error(`nginx did not come up: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  t.same(answerProblems('grpc', await answer('grpc', `${base}/bench.Echo/Get`)), [], 'a gRPC call gets the message and grpc-status 0 in the trailers');
  t.not(answerProblems('grpc', await answer('grpc', `${base}/`)).length, 0, 'a plain answer is not taken for a gRPC one');

  for (const kind of ['h2', 'grpc'] as const) {
    const url = kind === 'grpc' ? `${base}/bench.Echo/Get` : `${base}/`;
    const r = await run('h2load', h2loadArgs(url, kind, { connections: 2, streams: 5, durationS: 1 }, grpcRequest));
    const h = parseH2load(r.stdout);
    t.ok(h.reqPerSec > 0 && h.succeeded > 0, `${kind}: ${h.succeeded} requests at ${h.reqPerSec} req/s`);
    t.equal(h.errored + h.statusErrors, 0, `${kind}: no errors, no 4xx/5xx`);
    t.ok(h.meanMs > 0, `${kind}: mean time per request ${h.meanMs} ms`);
  }
});

t.test('the H2 table gives ratios to nginx per load', async (t) => {
  const row = (proxy: 'direct' | 'weft' | 'nginx', kind: 'h2' | 'grpc', rps: number, cpu?: number) => ({
    proxy,
    kind,
    name: proxy,
    url: '',
    round: 1,
    rounds: [{ round: 1, h2load: { reqPerSec: rps, requests: rps, succeeded: rps, failed: 0, errored: 0, status2xx: rps, statusErrors: 0, meanMs: 1, maxMs: 2 } }],
    h2load: { reqPerSec: rps, requests: rps, succeeded: rps, failed: 0, errored: 0, status2xx: rps, statusErrors: 0, meanMs: 1, maxMs: 2 },
    proxyCpuUsPerReq: cpu,
  });
  const report: H2Report = {
    rows: [row('direct', 'h2', 8000), row('weft', 'h2', 1000, 200), row('nginx', 'h2', 4000, 50), row('weft', 'grpc', 900, 300), row('nginx', 'grpc', 3000, 60)],
    notes: [],
    durationS: 1,
    rounds: 1,
    connections: 2,
    streams: 5,
  };
  const md = h2Table(report);
  t.match(md, /\| HTTP\/2 GET 1 KiB \| weft \| 1000 \|[^\n]*\| 0 \| 200\.0 \|[^\n]*\| 0\.25 \| 4\.00 \| 0\.13 \|/, 'h2: 0.25x nginx req/s, 4x its CPU, 0.13x direct');
  t.match(md, /\| gRPC unary \| weft \| 900 \|[^\n]*\| 0\.30 \| 5\.00 \| – \|/, 'grpc: against the gRPC nginx row; no direct row, no ratio');
});
