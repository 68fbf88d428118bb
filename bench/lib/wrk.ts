/**
 * wrk: run it inside a pod, pinned to a core, and read its report.
 */
import type { TopoPod } from '../../src/sandbox/topology.js';

export interface WrkResult {
  requests: number;
  durationS: number;
  reqPerSec: number;
  /** Latency percentiles from `--latency`, ms. */
  p50Ms: number;
  p75Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** Socket errors (connect + read + write + timeout). */
  socketErrors: { connect: number; read: number; write: number; timeout: number };
  /** Responses with a status outside 2xx and 3xx. */
  non2xx: number;
  /** socket errors + non-2xx/3xx responses. */
  errors: number;
  bytesRead: string;
}

export interface WrkOptions {
  /** Core to pin wrk to (taskset -c). */
  cpu: number;
  threads?: number;
  connections: number;
  durationS: number;
  /** Extra request headers, `Name: value`. */
  headers?: string[];
  /** Per-request socket timeout, s (wrk default 2). */
  timeoutS?: number;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

function toMs(value: string, unit: string): number {
  const scale = UNIT_MS[unit];
  if (scale === undefined) throw new Error(`unknown wrk time unit ${unit}`);
  return Number(value) * scale;
}

/**
 * Parse wrk 4's text report (with `--latency`).
 * @throws when the report has no request count (wrk failed before measuring).
 */
export function parseWrk(out: string): WrkResult {
  const total = /(\d+) requests in ([\d.]+)(us|ms|s|m|h),\s+(\S+) read/.exec(out);
  if (!total) throw new Error(`no request count in wrk output: ${out.slice(-800)}`);
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m|h)\\s*$`, 'm').exec(out);
    return m ? toMs(m[1]!, m[2]!) : Number.NaN;
  };
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = {
    connect: Number(sock?.[1] ?? 0),
    read: Number(sock?.[2] ?? 0),
    write: Number(sock?.[3] ?? 0),
    timeout: Number(sock?.[4] ?? 0),
  };
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const requests = Number(total[1]);
  const durationS = toMs(total[2]!, total[3]!) / 1000;
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  return {
    requests,
    durationS,
    reqPerSec: rps ? Number(rps[1]) : requests / durationS,
    p50Ms: pct('50'),
    p75Ms: pct('75'),
    p90Ms: pct('90'),
    p99Ms: pct('99'),
    socketErrors,
    non2xx,
    errors: socketErrors.connect + socketErrors.read + socketErrors.write + socketErrors.timeout + non2xx,
    bytesRead: total[4]!,
  };
}

/** The wrk command line (after `taskset -c CPU`). */
export function wrkArgs(url: string, o: WrkOptions): string[] {
  const args = ['-t', String(o.threads ?? 1), '-c', String(o.connections), '-d', `${o.durationS}s`, '--latency'];
  if (o.timeoutS !== undefined) args.push('--timeout', `${o.timeoutS}s`);
  for (const h of o.headers ?? []) args.push('-H', h);
  args.push(url);
  return args;
}

/** Run wrk in `pod` pinned to `o.cpu`, bounded by its own -d plus a margin. */
export async function runWrk(pod: TopoPod, url: string, o: WrkOptions): Promise<WrkResult & { raw: string }> {
  const r = await pod.exec('taskset', ['-c', String(o.cpu), 'wrk', ...wrkArgs(url, o)], { timeoutMs: (o.durationS + 30) * 1000 });
  if (r.timedOut) throw new Error(`wrk against ${url} ran past its time limit`);
  if (r.code !== 0) throw new Error(`wrk against ${url} exited ${r.code}: ${(r.stderr || r.stdout).slice(-800)}`);
  return { ...parseWrk(r.stdout), raw: r.stdout };
}
