/** What the figures were measured on: machine, tool versions, the commit. */
import { readFileSync } from 'node:fs';
import { availableParallelism, release, totalmem } from 'node:os';
import { exec } from '../../src/sandbox/exec.js';

export interface MachineInfo {
  kernel: string;
  nproc: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  commit: string;
  /** Tracked files differ from the commit (other work in progress was measured too). */
  dirty: boolean;
  date: string;
  tools: Record<string, string>;
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args, { timeoutMs: 10_000 });
  const text = `${r.stdout}\n${r.stderr}`
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.length > 0);
  return r.code === null && !text ? 'unavailable' : (text ?? 'unavailable');
}

export async function machineInfo(repo: string): Promise<MachineInfo> {
  let cpuModel = 'unknown';
  try {
    cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? 'unknown';
  } catch {
    // not Linux
  }
  const commit = (await exec('git', ['-C', repo, 'rev-parse', '--short', 'HEAD'], { timeoutMs: 10_000 })).stdout.trim() || 'unknown';
  const status = await exec('git', ['-C', repo, 'status', '--porcelain', '--untracked-files=no'], { timeoutMs: 10_000 });
  return {
    kernel: release(),
    nproc: availableParallelism(),
    cpuModel,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    commit,
    dirty: status.stdout.trim().length > 0,
    date: new Date().toISOString(),
    tools: {
      wrk: await firstLine('wrk', ['--version']).then((l) => l.replace(/ Copyright.*$/, '')),
      nginx: await firstLine('nginx', ['-v']),
      haproxy: await firstLine('haproxy', ['-v']).then((l) => l.replace(/ - https?:.*$/, '')),
      h2load: await firstLine('h2load', ['--version']),
      fastify: packageVersion(repo, 'fastify'),
      '@fastify/http-proxy': packageVersion(repo, '@fastify/http-proxy'),
    },
  };
}

function packageVersion(repo: string, name: string): string {
  try {
    return (JSON.parse(readFileSync(`${repo}/node_modules/${name}/package.json`, 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}
