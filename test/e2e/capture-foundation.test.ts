import t from 'tap';
import { mkdirSync } from 'node:fs';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import { canRunE2e, curlBurst, peerNameFrom, until } from '../lib/e2e.js';

const config = (shopLabels: string, extraWorkloads = '') => `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: ${shopLabels} }
  - { name: legacy, labels: {} }
workloads:
  - { name: api-0, namespace: shop, ip: 10.77.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: api-1, namespace: shop, ip: 10.77.0.12, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-1" }
  - { name: api-2, namespace: shop, ip: 10.77.0.13, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-2" }
  - { name: echo-0, namespace: shop, ip: 10.77.0.31, serviceAccount: echo, labels: { app: echo }, cgroup: "\${CGROUP_ROOT}/echo-0" }
  - { name: client-0, namespace: shop, ip: 10.77.0.50, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
  - { name: legacy-0, namespace: legacy, ip: 10.77.0.60, labels: { app: legacy }, cgroup: "\${CGROUP_ROOT}/legacy-0" }
${extraWorkloads}
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
  - { name: echo, namespace: shop, vip: 10.96.0.40, ports: [ { port: 7000, targetPort: 7000, protocol: tcp } ], selector: { app: echo } }
`;
const MESHED = '{ weft.io/mesh: enabled }';

t.test('eBPF capture through the agent, end to end', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config(MESHED), prefix: 'weft-e2e' });
  t.teardown(() => sb.destroy());
  const client = sb.pod('client-0');
  const legacy = sb.pod('legacy-0');

  const bpf = async (pod: string) => (await sb.node.exec('bpftool', ['cgroup', 'show', sb.pod(pod).cgroup])).stdout;
  t.match(await bpf('client-0'), /weft_connect4/, 'a meshed pod has connect4 on its cgroup');
  t.match(await bpf('client-0'), /weft_sockops/);
  t.match(await bpf('client-0'), /weft_getpeername4/);
  t.equal((await bpf('legacy-0')).trim(), '', 'a pod in an unlabelled namespace is not captured');

  const r = await curlBurst(client, 'http://10.96.0.20/items', 30);
  t.same(r.statuses, { 200: 30 }, 'the VIP answers through the agent');
  t.same(r.pods, { 'api-0': 10, 'api-1': 10, 'api-2': 10 }, 'balanced over the three endpoints');
  t.equal(await peerNameFrom(client, '10.96.0.20', 80), '10.96.0.20:80', 'getpeername shows the VIP it dialed');
  const body = await client.curl('http://10.96.0.20/who');
  t.equal(JSON.parse(body.body).remoteAddress.replace('::ffff:', ''), '10.77.0.1', 'the backend sees the agent (node address) as its peer');

  const echo = await client.exec(
    process.execPath,
    ['-e', `const s=require('net').connect(7000,'10.96.0.40',()=>s.write('ping'));let b='';s.on('data',d=>{b+=d;if(b.includes('ping')){console.log(JSON.stringify(b));s.end()}})`],
    { timeoutMs: 5000 },
  );
  t.equal(echo.stdout.trim(), JSON.stringify('echo-0\nping'), 'a TCP service is spliced through the agent');

  const l = await legacy.curl('http://10.96.0.20/', ['--max-time', '2']);
  t.equal(l.status, 0, 'an unmeshed pod is not redirected (the VIP has no route outside the mesh)');

  const m = await sb.metrics();
  t.match(m, /weft_captured_workloads 5/, 'five meshed local workloads captured');
  t.match(m, /weft_requests_total\{source_workload="client-0",source_namespace="shop",destination_service="shop\/api",destination_workload="api-0",response_code="200"[^}]*\} (1[0-9]|[2-9][0-9])/);
  t.match(m, /weft_tcp_connections_opened_total\{source_workload="client-0"[^}]*destination_service="shop\/echo"[^}]*\} 1/);
  const access = sb.agentLines().filter((l) => l.msg === 'access' && l.dst_service === 'shop/api');
  t.ok(access.length >= 30, 'one access-log line per request');
  t.equal(access[0].src_workload, 'shop/client-0', 'the access log names the caller, from its cgroup');

  // Removing the label un-meshes the namespace live; re-adding it captures again.
  await sb.writeConfig(config('{}'));
  await until('client-0 released', async () => (await bpf('client-0')).trim() === '');
  const off = await client.curl('http://10.96.0.20/', ['--max-time', '2']);
  t.equal(off.status, 0, 'without the label the pod is no longer redirected');
  await sb.writeConfig(config(MESHED));
  await until('client-0 captured again', async () => /weft_connect4/.test(await bpf('client-0')));
  t.same((await curlBurst(client, 'http://10.96.0.20/', 3)).statuses, { 200: 3 }, 'labelled again: captured again, without restarting the agent');

  // A broken config is refused; the last good one stays in force.
  const good = sb.currentConfigText;
  const before = (await sb.configDump()).generation;
  await sb.writeConfig(good.replace('vip: 10.96.0.20', 'vip: not-an-ip')).catch(() => undefined);
  await until('rejection logged', () => sb.agentLines().some((l) => /config rejected/.test(l.msg ?? '')));
  t.equal((await sb.configDump()).generation, before, 'the bad config was not applied');
  t.same((await curlBurst(client, 'http://10.96.0.20/', 3)).statuses, { 200: 3 }, 'traffic still flows on the last good config');
  await sb.writeConfig(good.replace('vip: 10.96.0.40', 'vip: 10.96.0.41'));

  // A workload whose cgroup does not exist: a clear log line, the agent keeps running.
  await sb.writeConfig(
    config(MESHED, '  - { name: ghost-0, namespace: shop, ip: 10.77.0.99, serviceAccount: ghost, labels: { app: ghost }, cgroup: /sys/fs/cgroup/unified/weft-e2e-missing/ghost-0 }'),
  );
  await until('missing cgroup logged', () => sb.agentLines().some((l) => /cannot capture workload/.test(l.msg ?? '') && /ghost-0/.test(l.workload ?? '')));
  const ghost = (await sb.configDump()).capture.find((c: any) => c.workload === 'shop/ghost-0');
  t.equal(ghost.captured, false);
  t.match(ghost.error, /missing/);
  t.same((await curlBurst(client, 'http://10.96.0.20/', 3)).statuses, { 200: 3 }, 'the others are unaffected');

  // A "cgroup" that is not a cgroup v2 directory: the attach fails with a clear log line.
  const notCgroup = `${sb.workDir}/not-a-cgroup`;
  mkdirSync(notCgroup, { recursive: true });
  await sb.writeConfig(config(MESHED, `  - { name: odd-0, namespace: shop, ip: 10.77.0.98, serviceAccount: odd, labels: { app: odd }, cgroup: ${notCgroup} }`));
  await until('failed attach logged', () => sb.agentLines().some((l) => /attach failed|cannot capture workload/.test(l.msg ?? '') && /odd-0/.test(l.workload ?? '')));
  const odd = (await sb.configDump()).capture.find((c: any) => c.workload === 'shop/odd-0');
  t.equal(odd.captured, false, 'a failed attach leaves that workload uncaptured');
  t.ok(odd.error, `and says why: ${odd.error}`);
  t.same((await curlBurst(client, 'http://10.96.0.20/', 3)).statuses, { 200: 3 }, 'the agent keeps running');
});
