/**
 * `npm run bench` (issue 7): weft against direct, nginx, haproxy and @fastify/http-proxy
 * through the real capture path, plus connection rate, config churn, memory at scale, the
 * balancers' pick cost and (when bench/tunnel.ts exists) the tunnel.
 *
 *   node dist/bench/run.js [--quick] [--only=LIST] [--out=DIR] [--agent-log-level=LEVEL] [--duration=S] [--rounds=N]
 *
 * --only takes scenario keys (direct, l7, l7all, l4, nginx, haproxy, pipe, fastify) and section names
 * (throughput = all eight scenarios, connrate, churn, memory, balancers, tunnel, h2). `h2` is the
 * HTTP/2 and gRPC rows (bench/h2.ts): `--only=h2` runs them alone and writes h2.md beside latest.md. A full run
 * (no --quick, --only, --duration or --rounds) writes docs/benchmarks/latest.{md,svg,json};
 * other runs write to a temp dir unless --out says where. Every section runs on its own: one
 * that fails is reported and the others still run. Needs root (network namespaces, cgroups,
 * eBPF).
 *
 * --rounds: each throughput scenario is measured in N alternating rounds and reported by its
 * median round (default 5, 1 with --quick): single runs are bimodal, about ±15% apart on the
 * same path, so a ratio of two single runs compares noise (bench/throughput.ts).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Topology } from '../src/sandbox/topology.js';
import { repoRoot } from '../src/sandbox/mesh-sandbox.js';
import { benchBalancers } from './balancer.js';
import { ensureTools } from './lib/tools.js';
import { setQuietBudget } from './lib/proc.js';
import { machineInfo } from './lib/machine.js';
import { toMarkdown, toSvg, doneWhen, type BenchReport, type BenchMode } from './lib/report.js';
import { CLIENT_CPU, PROXY_CPU, SCENARIOS, runThroughput, type ScenarioKey } from './throughput.js';
import { runChurn, runMemory } from './scale.js';
import { h2Markdown, runH2 } from './h2.js';

const SECTIONS = ['throughput', 'connrate', 'churn', 'memory', 'balancers', 'tunnel', 'h2'] as const;

const t0 = Date.now();

function log(msg: string): void {
  process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${msg}\n`);
}

function parseCli(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      out: { type: 'string' },
      'agent-log-level': { type: 'string' },
      duration: { type: 'string' },
      rounds: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  const only = (values.only ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const known = new Set<string>([...SCENARIOS, ...SECTIONS]);
  const unknown = only.filter((s) => !known.has(s));
  if (unknown.length) throw new Error(`--only: unknown ${unknown.join(', ')} (known: ${[...known].join(', ')})`);
  const duration = values.duration === undefined ? undefined : Number(values.duration);
  if (duration !== undefined && !(duration >= 1 && duration <= 60)) throw new Error('--duration: seconds, 1 to 60');
  const rounds = values.rounds === undefined ? undefined : Number(values.rounds);
  if (rounds !== undefined && !(Number.isInteger(rounds) && rounds >= 1 && rounds <= 15)) throw new Error('--rounds: a whole number, 1 to 15');
  return { ...values, only, duration, rounds };
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000}s`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function main(): Promise<number> {
  let cli: ReturnType<typeof parseCli>;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    log(`bench: ${(err as Error).message}`);
    return 2;
  }
  if (cli.help) {
    log(
      'usage: node dist/bench/run.js [--quick] [--only=direct,l7,l7all,l4,nginx,haproxy,pipe,fastify,throughput,connrate,churn,memory,balancers,tunnel,h2] [--out=DIR] [--agent-log-level=LEVEL] [--duration=S] [--rounds=N]',
    );
    return 0;
  }
  if (process.getuid?.() !== 0) {
    log('bench: needs root (network namespaces, cgroups and eBPF)');
    return 1;
  }
  if (availableParallelism() < 2) {
    log('bench: needs two cores (the proxy alone on one, wrk and the backend on the other)');
    return 1;
  }
  const started = Date.now();
  const repo = repoRoot();
  const quick = cli.quick;
  const wants = (section: string, scenarios: readonly string[] = []): boolean => cli.only.length === 0 || cli.only.includes(section) || scenarios.some((s) => cli.only.includes(s));
  const scenarios: ScenarioKey[] = SCENARIOS.filter((k) => cli.only.length === 0 || cli.only.includes('throughput') || cli.only.includes(k));
  // Rounds after a scenario's first run against the same (warm) process need only a short warm-up.
  const rounds = cli.rounds ?? (quick ? 1 : 5);
  const roundWarmupS = 1;
  const mode: BenchMode = {
    quick,
    only: cli.only,
    durationS: cli.duration ?? (quick ? 3 : 10),
    warmupS: quick ? 1 : 3,
    roundWarmupS,
    rounds,
    connections: 50,
    connRateDurationS: quick ? 2 : 5,
    proxyCpu: PROXY_CPU,
    clientCpu: CLIENT_CPU,
  };
  const full = !quick && cli.only.length === 0 && cli.duration === undefined && cli.rounds === undefined;
  const outDir = cli.out ?? (full ? join(repo, 'docs', 'benchmarks') : join(tmpdir(), 'weft-bench-out'));

  const missingBuild = [
    join(repo, 'dist', 'bundle', 'cli.js'),
    join(repo, 'build', 'bpf', 'connect4.bpf.o'),
    join(repo, 'dist', 'bench', 'peers', 'fastify-proxy.js'),
    join(repo, 'dist', 'bench', 'peers', 'node-pipe.js'),
  ].filter((p) => !existsSync(p));
  if (missingBuild.length) {
    log(`bench: not built (${missingBuild.join(', ')} missing): run \`npm run bench\`, which builds first`);
    return 1;
  }
  const missingTools = await ensureTools(['wrk', 'nginx', 'haproxy', 'curl', 'taskset', ...(wants('h2') ? ['h2load', 'nghttp'] : [])], log);
  if (missingTools.includes('wrk') || missingTools.includes('taskset') || missingTools.includes('curl')) {
    log(`bench: cannot run without ${missingTools.join(', ')}`);
    return 1;
  }
  if (missingTools.length) log(`bench: ${missingTools.join(', ')} could not be installed: those scenarios will fail`);

  await Topology.sweep('weft-bench', log);
  // Waiting for idle cores makes figures honest on a shared machine, within reason.
  setQuietBudget(quick ? 10_000 : 120_000);
  const workDir = mkdtempSync(join(tmpdir(), 'weft-bench-'));
  const report: BenchReport = { machine: await machineInfo(repo), mode, elapsedS: 0, sectionErrors: {} };
  log(`weft bench${quick ? ' (quick)' : ''}: ${report.machine.cpuModel}, ${report.machine.nproc} cores, commit ${report.machine.commit}; output -> ${outDir}`);

  try {
    const connRate = wants('connrate', []);
    if (scenarios.length > 0 || connRate) {
      log(`throughput: ${scenarios.join(', ') || '(no scenarios)'}, ${mode.rounds} round(s) of ${mode.durationS}s each, ${mode.connections} connections`);
      try {
        report.throughput = await runThroughput({
          durationS: mode.durationS,
          warmupS: mode.warmupS,
          roundWarmupS,
          rounds,
          connections: mode.connections,
          connRateDurationS: mode.connRateDurationS,
          only: scenarios,
          connRate,
          workDir: join(workDir, 'throughput'),
          agentLogLevel: cli['agent-log-level'],
          quietTimeoutMs: quick ? 10_000 : 60_000,
          retryDisturbed: !quick,
          log,
        });
      } catch (err) {
        report.sectionErrors.throughput = (err as Error).stack ?? String(err);
        log(`throughput: FAILED: ${(err as Error).message}`);
      }
    }
    const scale = { remoteEndpoints: 10_000, localWorkloads: 1_000, churnRounds: quick ? 2 : 5, quietTimeoutMs: quick ? 10_000 : 60_000, workDir, log };
    if (wants('churn')) {
      log('config churn: 10,000 endpoints changing');
      try {
        report.churn = await runChurn(scale);
      } catch (err) {
        report.sectionErrors.churn = (err as Error).stack ?? String(err);
        log(`churn: FAILED: ${(err as Error).message}`);
      }
    }
    if (wants('memory')) {
      log('memory: 1,000 local workloads + 10,000 endpoints');
      try {
        report.memory = await runMemory(scale);
      } catch (err) {
        report.sectionErrors.memory = (err as Error).stack ?? String(err);
        log(`memory: FAILED: ${(err as Error).message}`);
      }
    }
    if (wants('balancers')) {
      log('balancer picks');
      try {
        report.balancers = await benchBalancers();
      } catch (err) {
        report.sectionErrors.balancers = (err as Error).stack ?? String(err);
        log(`balancers: FAILED: ${(err as Error).message}`);
      }
    }
    if (wants('tunnel')) {
      // bench/tunnel.ts comes from other work: run it when it is there.
      const url = new URL('./tunnel.js', import.meta.url);
      if (!existsSync(fileURLToPath(url))) {
        report.tunnel = { skipped: 'bench/tunnel.ts is not in this tree yet' };
      } else {
        log('tunnel');
        try {
          const mod = (await import(url.href)) as { benchTunnel?: () => unknown };
          if (typeof mod.benchTunnel !== 'function') report.tunnel = { skipped: 'bench/tunnel.ts exports no benchTunnel()' };
          else report.tunnel = { result: await withTimeout(Promise.resolve(mod.benchTunnel()), 180_000, 'benchTunnel()') };
        } catch (err) {
          report.tunnel = { error: (err as Error).stack ?? String(err) };
          log(`tunnel: FAILED: ${(err as Error).message}`);
        }
      }
    }
    if (wants('h2')) {
      log(`h2: HTTP/2 and gRPC, ${rounds} round(s) of ${mode.durationS}s per row`);
      try {
        report.h2 = await runH2({
          durationS: mode.durationS,
          warmupS: mode.warmupS,
          rounds,
          connections: 10,
          streams: 10,
          workDir: join(workDir, 'h2'),
          agentLogLevel: cli['agent-log-level'],
          quietTimeoutMs: quick ? 10_000 : 60_000,
          log,
        });
        if (report.h2.setupError) report.sectionErrors.h2 = report.h2.setupError;
      } catch (err) {
        report.sectionErrors.h2 = (err as Error).stack ?? String(err);
        log(`h2: FAILED: ${(err as Error).message}`);
      }
    }
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }

  report.elapsedS = (Date.now() - started) / 1000;
  mkdirSync(outDir, { recursive: true });
  const md = toMarkdown(report, 'latest.svg');
  writeFileSync(join(outDir, 'latest.md'), md);
  writeFileSync(join(outDir, 'latest.svg'), toSvg(report));
  writeFileSync(join(outDir, 'latest.json'), `${JSON.stringify({ ...report, doneWhen: doneWhen(report) }, null, 2)}\n`);
  if (report.h2 && cli.only.length === 1 && cli.only[0] === 'h2') {
    // The H2 rows alone: a page of their own, so that latest.md keeps the last full run.
    const head = `# weft benchmarks: HTTP/2 and gRPC\n\nWritten by \`npm run bench -- --only=h2\` (bench/run.ts, bench/h2.ts), in ${report.elapsedS.toFixed(0)} s.\n\n- machine: ${report.machine.cpuModel}, ${report.machine.nproc} cores, ${report.machine.memoryGiB} GiB, Linux ${report.machine.kernel}\n- software: Node ${report.machine.node}; ${Object.entries(
      report.machine.tools,
    )
      .map(([k, v]) => `${k} ${v.replace(/^(nginx version: |HAProxy version |wrk |h2load )/, '')}`)
      .join('; ')}\n- commit: ${report.machine.commit}\n- date: ${report.machine.date}\n\n`;
    writeFileSync(join(outDir, 'h2.md'), head + h2Markdown(report.h2));
  }
  process.stdout.write(`${md}\n`);
  log(`bench: done in ${report.elapsedS.toFixed(0)} s; wrote ${join(outDir, 'latest.md')}, latest.svg, latest.json`);
  const failed = Object.keys(report.sectionErrors).length > 0 || report.throughput?.setupError !== undefined;
  return failed ? 1 : 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      log(`bench: ${(err as Error).stack ?? String(err)}`);
      process.exit(1);
    },
  );
}
