/**
 * `npm start`, the upgrade: a new agent replaces the running one while two clients in a pod
 * send requests through capture and the L7 path (one new connection per request, and 4
 * keep-alive connections), then the agent is killed with SIGKILL and restarted, to show what
 * a crash costs by comparison.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { MeshSandbox } from './mesh-sandbox.js';
import { runSteadyClient, type SteadyResult } from './steady-client.js';
import { bad, dim, ok, step } from './ui.js';

const counts = (r: SteadyResult) =>
  `${r.ok} answered, ${r.failed} failed${
    r.failed
      ? ` (${Object.entries(r.errors)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')})`
      : ''
  }`;

export async function demoUpgrade(sb: MeshSandbox): Promise<void> {
  const web = sb.pod('web-0');
  const api = sb.config.services.find((s) => s.name === 'api')!;
  const url = `http://${api.vip}/items`;
  const traffic = () => [runSteadyClient(web, url, 'new', 90), runSteadyClient(web, url, 'keepalive', 90)] as const;

  step('10. Upgrade: a new agent starts beside the running one and takes over, under traffic');
  let clients = traffic();
  try {
    await sleep(1500);
    const { previous, next } = await sb.replaceAgent();
    ok(`the new agent (pid ${next.pid}) took the listening sockets, the pin-root lock and capture over from pid ${previous.pid}, and serves the node`);
    const code = await Promise.race([previous.exited, sleep(30_000).then(() => 'still running')]);
    (code === 0 ? ok : bad)(code === 0 ? `the old agent drained (connection: close between requests) and exited` : `the old agent: ${String(code)}`);
    await sleep(1000);
    const [fresh, kept] = await Promise.all(clients.map((c) => c.stop()));
    (fresh!.failed === 0 ? ok : bad)(`a new connection per request: ${counts(fresh!)}`);
    (kept!.failed === 0 ? ok : bad)(`4 keep-alive connections:     ${counts(kept!)}`);
    const show = (await sb.node.exec('bpftool', ['cgroup', 'show', web.cgroup])).stdout.trim();
    console.log(
      dim(
        show
          .split('\n')
          .map((l) => `      ${l}`)
          .join('\n'),
      ),
    );
    console.log(dim("      (the same pinned links, moved to the new agent's programs; the maps are the same maps)"));

    step('11. For comparison, a crash: kill -9, then a new agent');
    clients = traffic();
    await sleep(1500);
    await sb.stopAgent('SIGKILL');
    const started = Date.now();
    await sb.startAgent();
    const readyMs = Date.now() - started;
    await sleep(1000);
    const [f2, k2] = await Promise.all(clients.map((c) => c.stop()));
    ok(`the restarted agent was ready ${readyMs} ms after it was started (pinned links and maps adopted); meanwhile connections were refused:`);
    console.log(`      a new connection per request: ${counts(f2!)}`);
    console.log(`      4 keep-alive connections:     ${counts(k2!)}`);
  } finally {
    for (const c of clients) c.proc.kill('SIGKILL');
  }
}
