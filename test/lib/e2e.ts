/** Shared helpers for e2e tests: root check, and counting answers from inside a pod. */
import type { Test } from 'tap';
import type { TopoPod } from '../../src/sandbox/topology.js';

/** e2e tests need root (netns, cgroups, eBPF). Returns false (and says why) when they must skip. */
export function canRunE2e(t: Test): boolean {
  if (process.getuid?.() !== 0) {
    t.plan(0, 'skipped: e2e needs root (it creates network namespaces and cgroups and loads eBPF programs)');
    return false;
  }
  return true;
}

/** `n` sequential GETs from inside `pod` (one curl, keep-alive); tallies x-pod and status. */
export async function curlBurst(
  pod: TopoPod,
  url: string,
  n: number,
  extra: string[] = [],
): Promise<{ pods: Record<string, number>; statuses: Record<string, number>; errors: Record<string, number>; code: number | null }> {
  const args = ['-s', '--max-time', '20', '-o', '/dev/null', '-D', '-', ...extra];
  const argv: string[] = [];
  for (let i = 0; i < n; i++) argv.push(...(i === 0 ? [...args, url] : ['--next', ...args, url]));
  const r = await pod.exec('curl', argv, { timeoutMs: 60_000 });
  const out = { pods: {} as Record<string, number>, statuses: {} as Record<string, number>, errors: {} as Record<string, number>, code: r.code };
  for (const block of r.stdout.split(/\r?\n\r?\n/)) {
    const status = /^HTTP\/[\d.]+ (\d+)/.exec(block)?.[1];
    if (!status) continue;
    out.statuses[status] = (out.statuses[status] ?? 0) + 1;
    const p = /^x-pod: (.+)$/im.exec(block)?.[1]?.trim();
    if (p) out.pods[p] = (out.pods[p] ?? 0) + 1;
    const e = /^x-weft-error: (.+)$/im.exec(block)?.[1]?.trim();
    if (e) out.errors[e] = (out.errors[e] ?? 0) + 1;
  }
  return out;
}

/** What the application sees as its peer after connecting to ip:port from inside `pod`. */
export async function peerNameFrom(pod: TopoPod, ip: string, port: number): Promise<string> {
  const r = await pod.exec(
    process.execPath,
    [
      '-e',
      `const s=require('net').connect(${port},'${ip}',()=>{console.log(s.remoteAddress+':'+s.remotePort);s.destroy()});s.on('error',e=>{console.log('error '+e.code)});setTimeout(()=>{console.log('timeout');process.exit(0)},3000).unref()`,
    ],
    { timeoutMs: 6000 },
  );
  return r.stdout.trim();
}

export async function until(what: string, fn: () => Promise<boolean> | boolean, ms = 10_000, stepMs = 100): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
