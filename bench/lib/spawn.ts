/**
 * Processes under test: started in a node namespace, pinned to a core, their output sent
 * to a file rather than a pipe. A proxy that logs every request (the agent does) would
 * otherwise make the bench process read that log on some core while it measures.
 */
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ManagedProcess, TopoNode, TopoPod } from '../../src/sandbox/topology.js';

export interface Running {
  name: string;
  proc: ManagedProcess;
  /** Pid of the process under test (nsenter, sh and taskset exec it in place). */
  pid: number;
  logFile: string;
  /** The last `bytes` of its output. */
  tail(bytes?: number): string;
  /** SIGTERM, then SIGKILL after `graceMs` (default 5000). */
  stop(graceMs?: number): Promise<void>;
}

/** `argv` in the node namespace, on core `cpu` (or a taskset list such as '0-1'), stdout and stderr appended to `logFile`. */
export function spawnPinned(node: TopoNode, name: string, cpu: number | string, argv: string[], logFile: string, env?: NodeJS.ProcessEnv, cgroup?: string): Running {
  const proc = node.spawn('sh', ['-c', 'log=$1; shift; exec taskset -c "$@" >>"$log" 2>&1', 'weft-bench', logFile, String(cpu), ...argv], {
    env,
    label: name,
    cgroup,
  });
  const tail = (bytes = 4000): string => {
    if (!existsSync(logFile)) return '';
    const text = readFileSync(logFile, 'utf8');
    return text.length > bytes ? `...${text.slice(-bytes)}` : text;
  };
  return {
    name,
    proc,
    pid: proc.pid,
    logFile,
    tail,
    async stop(graceMs = 5_000): Promise<void> {
      proc.kill('SIGTERM');
      const done = await Promise.race([proc.exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!done) {
        proc.kill('SIGKILL');
        await Promise.race([proc.exited, sleep(2_000)]);
      }
    },
  };
}

/**
 * Poll `url` with curl from `pod` until it answers 200, the process dies, or `timeoutMs`.
 * @throws with the process's output tail when it does not come up.
 */
export async function waitHttp(pod: TopoPod, url: string, running: Running, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const exited = await Promise.race([running.proc.exited.then(() => true), sleep(0).then(() => false)]);
    if (exited) throw new Error(`${running.name} exited during start-up: ${running.tail()}`);
    const r = await pod.curl(url, ['--max-time', '2']);
    if (r.status === 200) return;
    last = `status ${r.status} curl ${r.code} ${r.stderr.trim()}`;
    if (Date.now() > deadline) throw new Error(`${running.name} did not answer ${url} within ${timeoutMs}ms (${last}): ${running.tail()}`);
    await sleep(200);
  }
}

/** GET a URL with curl inside the node namespace (admin and metrics endpoints). */
export async function nodeGet(node: TopoNode, url: string, timeoutS = 5): Promise<{ status: number; body: string }> {
  const r = await node.exec('curl', ['-s', '--noproxy', '*', '--max-time', String(timeoutS), '-w', '\n%{http_code}', url], {
    timeoutMs: (timeoutS + 5) * 1000,
  });
  const i = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
}
