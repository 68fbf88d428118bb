/**
 * What the sandbox's demos share: how a step, a pass and a failure are printed, and the small
 * traffic and state helpers every demo uses. Each demo is a file of its own (demo-*.ts)
 * listed in main.ts.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { MeshSandbox } from './mesh-sandbox.js';
import type { TopoPod } from './topology.js';

export const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
export const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
export const ok = (s: string) => console.log(`  ${process.stdout.isTTY ? '\x1b[32m✓\x1b[0m' : '✓'} ${s}`);
export const bad = (s: string) => console.log(`  ${process.stdout.isTTY ? '\x1b[31m✗\x1b[0m' : '✗'} ${s}`);
export const step = (s: string) => console.log(`\n${bold(s)}`);

export async function spread(pod: TopoPod, url: string, n: number): Promise<{ counts: Record<string, number>; statuses: Record<string, number>; errors: Record<string, number> }> {
  const counts: Record<string, number> = {};
  const statuses: Record<string, number> = {};
  const errors: Record<string, number> = {};
  // One curl process, n sequential requests over keep-alive: a realistic client.
  const args = ['-s', '--max-time', '20', '-o', '/dev/null', '-D', '-'];
  const urls: string[] = [];
  for (let i = 0; i < n; i++) urls.push(url);
  const r = await pod.exec('curl', [...args, ...urls.flatMap((u, i) => (i === 0 ? [u] : ['--next', ...args, u]))], { timeoutMs: 60_000 });
  for (const block of r.stdout.split(/\r?\n\r?\n/)) {
    const status = /^HTTP\/[\d.]+ (\d+)/.exec(block)?.[1];
    if (!status) continue;
    statuses[status] = (statuses[status] ?? 0) + 1;
    const pod = /^x-pod: (.+)$/im.exec(block)?.[1]?.trim();
    if (pod) counts[pod] = (counts[pod] ?? 0) + 1;
    const e = /^x-weft-error: (.+)$/im.exec(block)?.[1]?.trim();
    if (e) errors[e] = (errors[e] ?? 0) + 1;
  }
  return { counts, statuses, errors };
}

export const fmt = (o: Record<string, number>) =>
  Object.entries(o)
    .sort()
    .map(([k, v]) => `${k}=${v}`)
    .join(' ') || '(none)';

export async function ctl(sb: MeshSandbox, workload: string, path: string): Promise<void> {
  // From inside the pod, over its own loopback (`kubectl exec ... curl localhost`): strict mode
  // admits the pod's own traffic, and nothing from the node address but probes.
  const pod = sb.pod(workload);
  const r = await pod.exec('curl', ['-sS', '--max-time', '3', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:8080${path}`]);
  if (r.stdout !== '200') throw new Error(`${workload}: GET ${path} on the backend answered ${r.stdout || 'nothing'}: ${r.stderr.trim()}`);
}

export async function waitFor(what: string, fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return true;
    await sleep(250);
  }
  bad(`timed out waiting for ${what}`);
  return false;
}

export async function endpointState(sb: MeshSandbox, cluster: string, workload: string): Promise<any> {
  const dump = await sb.configDump();
  return dump.clusters.find((c: any) => c.key === cluster)?.endpoints.find((e: any) => e.workload === workload);
}
