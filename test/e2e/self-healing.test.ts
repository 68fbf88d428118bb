import t from 'tap';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import { canRunE2e, curlBurst } from '../lib/e2e.js';

const config = `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
agent: { drainTimeout: 5s }
workloads:
  - { name: api-0, namespace: shop, ip: 10.77.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: api-1, namespace: shop, ip: 10.77.0.12, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-1" }
  - { name: client-0, namespace: shop, ip: 10.77.0.50, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
`;

t.test('the agent heals itself: pins survive kill -9, a new agent adopts them', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config, prefix: 'weft-e2e' });
  t.teardown(() => sb.destroy());
  const client = sb.pod('client-0');
  t.same((await curlBurst(client, 'http://10.96.0.20/', 4)).statuses, { 200: 4 });

  await sb.stopAgent('SIGKILL');
  const show = (await sb.node.exec('bpftool', ['cgroup', 'show', client.cgroup])).stdout;
  t.match(show, /weft_connect4/, 'after kill -9 the pod is still captured (bpftool cgroup show)');
  t.match(show, /weft_sockops/);
  const down = await client.curl('http://10.96.0.20/', ['--max-time', '2']);
  t.equal(down.status, 0, 'while no agent listens, captured connections are refused (not sent around the mesh)');

  await sb.startAgent();
  const r = await curlBurst(client, 'http://10.96.0.20/', 6);
  t.same(r.statuses, { 200: 6 }, 'a restarted agent serves again without any manual step');
  t.same(r.pods, { 'api-0': 3, 'api-1': 3 });
  const adopted = sb.agentLines().filter((l) => l.msg === 'workload captured');
  t.ok(adopted.length >= 3, 'the new agent adopted the pinned links');
  const progs = (await sb.node.exec('bpftool', ['cgroup', 'show', client.cgroup])).stdout.split('\n').filter((l) => /weft_connect4/.test(l));
  t.equal(progs.length, 1, 'exactly one connect4 program: adopted, not attached twice');
});

t.test('SIGTERM drains: in-flight requests finish, then the agent exits', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config, prefix: 'weft-e2e' });
  t.teardown(() => sb.destroy());
  const client = sb.pod('client-0');
  // The request must be in flight when the signal comes: wait until a backend has it (a curl
  // started in a pod can take longer than any fixed wait on a busy machine).
  const received = async (): Promise<number> => {
    let n = 0;
    for (const pod of ['api-0', 'api-1']) {
      const r = await sb.pod(pod).exec('curl', ['-sS', '--max-time', '3', 'http://127.0.0.1:8080/_ctl/state']);
      n += (JSON.parse(r.stdout) as { state: { requests: number } }).state.requests;
    }
    return n;
  };
  const before = await received();
  const slow = client.curl('http://10.96.0.20/?delay=1500', ['--max-time', '10']);
  for (let i = 0; i < 100 && (await received()) === before; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(await received(), before + 1, 'the slow request reached a backend');
  const exited = sb.stopAgent('SIGTERM');
  const ready = await sb.admin('/healthz/ready').catch(() => ({ status: 0, body: '' }));
  t.not(ready.status, 200, 'readiness fails while draining');
  const res = await slow;
  t.equal(res.status, 200, 'the in-flight request completed during the drain');
  t.equal(await exited, 0, 'the agent exited cleanly');
  const show = (await sb.node.exec('bpftool', ['cgroup', 'show', client.cgroup])).stdout;
  t.match(show, /weft_connect4/, 'pods stay captured across a graceful stop too (upgrade)');
  await sb.startAgent();
  t.same((await curlBurst(client, 'http://10.96.0.20/', 2)).statuses, { 200: 2 }, 'the next agent picks up');
});
