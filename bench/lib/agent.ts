/**
 * The real agent under test: `node --max-semi-space-size=4 bin/weft.js agent --config FILE --pin-root DIR` (AGENT_NODE_FLAGS) in a node
 * namespace, pinned to one core, its JSON log in a file.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AGENT_NODE_FLAGS } from '../../src/node-flags.js';
import { repoRoot } from '../../src/repo-root.js';
import type { TopoNode } from '../../src/sandbox/topology.js';
import { nodeGet, spawnPinned, type Running } from './spawn.js';

export interface AgentOptions {
  configFile: string;
  pinRoot: string;
  stateDir: string;
  logFile: string;
  /** The core it is pinned to, or a taskset list ('0-1': every core, the agent's workers unpinned). */
  cpu: number | string;
  /** `--log-level`; default: the agent's own default (info: one access-log line per request). */
  logLevel?: string;
  readyTimeoutMs?: number;
  adminPort?: number;
}

export interface RunningAgent extends Running {
  adminPort: number;
  /** Milliseconds from spawn to a 200 from /healthz/ready. */
  startupMs: number;
}

/** Start the agent and wait until /healthz/ready answers 200. */
export async function startAgent(node: TopoNode, o: AgentOptions): Promise<RunningAgent> {
  const adminPort = o.adminPort ?? 15000;
  const args = [process.execPath, ...AGENT_NODE_FLAGS, join(repoRoot(), 'bin', 'weft.js'), 'agent', '--config', o.configFile, '--pin-root', o.pinRoot];
  if (o.logLevel) args.push('--log-level', o.logLevel);
  const started = Date.now();
  const running = spawnPinned(node, 'agent', o.cpu, args, o.logFile, { ...process.env, WEFT_STATE_DIR: o.stateDir }, node.agentCgroup);
  const deadline = started + (o.readyTimeoutMs ?? 60_000);
  for (;;) {
    const exited = await Promise.race([running.proc.exited.then(() => true), sleep(100).then(() => false)]);
    if (exited) throw new Error(`the agent exited during start-up: ${running.tail()}`);
    const r = await nodeGet(node, `http://127.0.0.1:${adminPort}/healthz/ready`, 2).catch(() => undefined);
    if (r?.status === 200) break;
    if (Date.now() > deadline) {
      await running.stop();
      throw new Error(`the agent was not ready within ${o.readyTimeoutMs ?? 60_000}ms: ${running.tail()}`);
    }
  }
  return { ...running, adminPort, startupMs: Date.now() - started };
}

/** A pino line of the agent's log, parsed, with where it ends in the file. */
export interface LogHit {
  line: Record<string, unknown>;
  /** The line's own `time` (ISO, ms) as epoch ms. */
  time: number;
  /** Byte offset just after the line: pass it as `from` to look further. */
  end: number;
}

/**
 * Poll the log file from byte `from` until a JSON line satisfies `match`.
 * @throws after `timeoutMs`.
 */
export async function waitLogLine(file: string, from: number, match: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000, pollMs = 5): Promise<LogHit> {
  const deadline = Date.now() + timeoutMs;
  let offset = from;
  let pending = '';
  const buf = Buffer.alloc(1 << 20);
  for (;;) {
    let size = 0;
    try {
      size = statSync(file).size;
    } catch {
      // not yet written
    }
    if (size > offset) {
      const fd = openSync(file, 'r');
      try {
        while (offset < size) {
          const n = readSync(fd, buf, 0, Math.min(buf.length, size - offset), offset);
          if (n <= 0) break;
          pending += buf.subarray(0, n).toString('utf8');
          offset += n;
          let nl: number;
          while ((nl = pending.indexOf('\n')) >= 0) {
            const text = pending.slice(0, nl);
            pending = pending.slice(nl + 1);
            if (!text.startsWith('{')) continue;
            let line: Record<string, unknown>;
            try {
              line = JSON.parse(text) as Record<string, unknown>;
            } catch {
              continue;
            }
            if (match(line)) {
              const t = line.time;
              const time = typeof t === 'number' ? t : Date.parse(String(t));
              return { line, time, end: offset - Buffer.byteLength(pending) };
            }
          }
        }
      } finally {
        closeSync(fd);
      }
    }
    if (Date.now() > deadline) throw new Error(`no matching line in ${file} within ${timeoutMs}ms`);
    await sleep(pollMs);
  }
}

/** The size of a file now (0 when missing): where a later waitLogLine should start. */
export function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** A gauge or counter value from Prometheus text (the first series of that name). */
export function metricValue(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})?\\s+(\\S+)`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}
