/**
 * The bench's external tools, installed from Debian when missing (`apt-get update` once).
 * Package installs must not start system services (nginx's would grab port 80 on the host):
 * a policy-rc.d that refuses every start is put in place for the install when none exists.
 */
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { exec } from '../../src/sandbox/exec.js';

/** Command -> Debian package. */
const PACKAGES: Record<string, string> = {
  wrk: 'wrk',
  nginx: 'nginx',
  haproxy: 'haproxy',
  curl: 'curl',
  taskset: 'util-linux',
  h2load: 'nghttp2-client',
  nghttp: 'nghttp2-client',
};

async function have(cmd: string): Promise<boolean> {
  const r = await exec('sh', ['-c', `command -v ${cmd}`], { timeoutMs: 5_000 });
  return r.code === 0;
}

/**
 * Make sure each command exists; install the missing ones with apt-get.
 * @returns the commands that are still missing afterwards (empty when all are there).
 */
export async function ensureTools(cmds: readonly string[], log: (msg: string) => void): Promise<string[]> {
  const missing: string[] = [];
  for (const c of cmds) if (!(await have(c))) missing.push(c);
  if (missing.length === 0) return [];
  const pkgs = [...new Set(missing.map((c) => PACKAGES[c] ?? c))];
  log(`installing ${pkgs.join(', ')} (apt-get)`);
  const policy = '/usr/sbin/policy-rc.d';
  const ownPolicy = !existsSync(policy);
  if (ownPolicy) writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    const upd = await exec('apt-get', ['update', '-qq'], { timeoutMs: 300_000, env });
    if (upd.code !== 0) log(`apt-get update failed: ${upd.stderr.trim().slice(-400)}`);
    const inst = await exec('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { timeoutMs: 600_000, env });
    if (inst.code !== 0) log(`apt-get install failed: ${inst.stderr.trim().slice(-400)}`);
  } finally {
    if (ownPolicy) rmSync(policy, { force: true });
  }
  const still: string[] = [];
  for (const c of missing) if (!(await have(c))) still.push(c);
  return still;
}
