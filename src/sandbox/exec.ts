/**
 * Small helpers to run a command to completion, for the sandbox topology and tests.
 *
 * Every child is started in its own process group (`detached`), so that a timeout kills
 * the whole group: `nsenter` and `sh -c` wrappers exec their command in place, but a
 * command may fork helpers of its own.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';

export interface ExecResult {
  /** Exit code; null when the process was ended by a signal (see `signal`). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the process was killed because it ran past `timeoutMs`. */
  timedOut: boolean;
}

export interface ExecOptions {
  /** Kill the process group with SIGKILL after this long. Default 30000. */
  timeoutMs?: number;
  /** Written to stdin, which is then closed. Without it stdin is /dev/null. */
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Called with the child as soon as it is spawned (to track it for cleanup). */
  onSpawn?: (child: ChildProcess) => void;
}

/** Send `signal` to the process group led by `pid`; a group that is already gone is not an error. */
export function killGroup(pid: number, signal: NodeJS.Signals | number = 'SIGTERM'): void {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** Run `cmd args` to completion. Never rejects for a non-zero exit; see {@link execOk}. */
export function exec(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {
      detached: true,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: opts.env,
      cwd: opts.cwd,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let spawnError: Error | undefined;
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {}); // EPIPE when the command does not read its input
      child.stdin!.end(opts.input);
    }
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      spawnError = e;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      let stderr = Buffer.concat(err).toString('utf8');
      if (spawnError) stderr += `${stderr ? '\n' : ''}${spawnError.message}`;
      resolve({
        code: spawnError ? null : code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr,
        timedOut,
      });
    });
    if (child.pid !== undefined) opts.onSpawn?.(child);
  });
}

/** An exec that failed: the message carries the command line and its stderr. */
export class ExecError extends Error {
  readonly result: ExecResult;
  constructor(cmd: string, args: readonly string[], result: ExecResult) {
    const how = result.timedOut ? 'timed out' : result.code === null ? `was killed by ${result.signal ?? 'an error'}` : `exited with ${result.code}`;
    super(`${[cmd, ...args].join(' ')} ${how}: ${result.stderr.trim() || result.stdout.trim()}`);
    this.name = 'ExecError';
    this.result = result;
  }
}

/** Like {@link exec}, but rejects with an {@link ExecError} unless the command exits 0. */
export async function execOk(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const result = await exec(cmd, args, opts);
  if (result.code !== 0) throw new ExecError(cmd, args, result);
  return result;
}

/**
 * Synchronous run for process-exit hooks, where nothing asynchronous gets to finish.
 * Returns false instead of throwing when the command fails.
 */
export function execQuietSync(cmd: string, args: readonly string[], timeoutMs = 5_000): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: timeoutMs });
    return true;
  } catch {
    return false;
  }
}
