/**
 * A steady HTTP client for measuring what replacing the agent costs, run inside a pod (its
 * connections go through eBPF capture and the agent's L7 path like any pod's):
 *
 *   node steady-client.js --url http://10.96.0.20/ --mode new        one new connection per request
 *   node steady-client.js --url http://10.96.0.20/ --mode keepalive  4 keep-alive connections, a request loop on each
 *
 * `--timeout-ms` (default 10000) bounds each request; the start-up bench uses a short one, so
 * that a request sent before capture is in place does not hide when the agent starts serving.
 *
 * It sends until SIGINT or SIGTERM (or --max-seconds, a safety bound), then prints one JSON
 * line and exits: `{"mode","ok","failed","errors":{...},"statuses":{...},"firstFailureAt","lastFailureAt"}`.
 * A request fails on any error (refused, reset, timeout) or a status other than 2xx.
 * `runSteadyClient` parses that line.
 */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { ManagedProcess, TopoPod } from './topology.js';

export interface SteadyResult {
  mode: 'new' | 'keepalive';
  ok: number;
  failed: number;
  errors: Record<string, number>;
  statuses: Record<string, number>;
  /** ms since the client started, of the first and last failure. */
  firstFailureAt?: number;
  lastFailureAt?: number;
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string, dflt: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : dflt;
  };
  const url = new URL(arg('url', 'http://127.0.0.1/'));
  const mode = arg('mode', 'new') as 'new' | 'keepalive';
  const connections = mode === 'keepalive' ? Number(arg('connections', '4')) : 1;
  const maxMs = Number(arg('max-seconds', '120')) * 1000;
  const pauseMs = Number(arg('pause-ms', mode === 'new' ? '5' : '0'));
  const timeoutMs = Number(arg('timeout-ms', '10000'));
  const started = Date.now();
  const res: SteadyResult = { mode, ok: 0, failed: 0, errors: {}, statuses: {} };
  const agent = mode === 'keepalive' ? new http.Agent({ keepAlive: true, maxSockets: connections }) : undefined;
  let stop = false;
  const finish = () => {
    stop = true;
  };
  process.on('SIGINT', finish);
  process.on('SIGTERM', finish);
  const fail = (why: string) => {
    res.failed++;
    res.errors[why] = (res.errors[why] ?? 0) + 1;
    res.firstFailureAt ??= Date.now() - started;
    res.lastFailureAt = Date.now() - started;
  };
  const once = () =>
    new Promise<void>((resolve) => {
      const req = http.get(url, { agent: agent ?? false, headers: mode === 'new' ? { connection: 'close' } : {}, timeout: timeoutMs }, (r) => {
        const s = String(r.statusCode);
        res.statuses[s] = (res.statuses[s] ?? 0) + 1;
        r.on('data', () => undefined);
        r.on('end', () => {
          if (r.statusCode! >= 200 && r.statusCode! < 300) res.ok++;
          else fail(`status ${s}${r.headers['x-weft-error'] ? ` ${r.headers['x-weft-error']}` : ''}`);
          resolve();
        });
        r.on('error', (err: NodeJS.ErrnoException) => {
          fail(err.code ?? err.message);
          resolve();
        });
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('error', (err: NodeJS.ErrnoException) => {
        fail(err.code ?? err.message);
        resolve();
      });
    });
  const loop = async () => {
    while (!stop && Date.now() - started < maxMs) {
      await once();
      if (pauseMs > 0) await sleep(pauseMs);
    }
  };
  await Promise.all(Array.from({ length: connections }, loop));
  agent?.destroy();
  process.stdout.write(JSON.stringify(res) + '\n');
}

/** The script's path, to run it inside a pod. */
export const steadyClientScript = fileURLToPath(import.meta.url);

/**
 * Runs the client in `pod` until the returned `stop()`, which resolves with its counts. The
 * client is bounded by `maxSeconds` whatever happens.
 */
export function runSteadyClient(pod: TopoPod, url: string, mode: 'new' | 'keepalive', maxSeconds = 120, opts: { timeoutMs?: number } = {}): { proc: ManagedProcess; stop(): Promise<SteadyResult> } {
  const extra = opts.timeoutMs !== undefined ? ['--timeout-ms', String(opts.timeoutMs)] : [];
  const proc = pod.spawn(process.execPath, [steadyClientScript, '--url', url, '--mode', mode, '--max-seconds', String(maxSeconds), ...extra], { label: `${pod.name}:steady-${mode}` });
  return {
    proc,
    async stop() {
      proc.kill('SIGINT');
      await proc.exited;
      const line = proc
        .output()
        .split('\n')
        .find((l) => l.startsWith('{"mode"'));
      if (!line) throw new Error(`the ${mode} client printed no result:\n${proc.output().slice(-2000)}`);
      return JSON.parse(line) as SteadyResult;
    },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
