// Attacks on the kernel side of the mesh, made as a tenant or a node user would make them,
// through the real agents, the real eBPF programs and cgroups laid out as the kubelet makes
// them (node-a: systemd driver, node-b: cgroupfs). Root only.
//
// Who is calling:
//   - a process in a container cgroup of a pod, in a deeper cgroup below it, and in a cgroup the
//     agent never heard of below the pod: each is the pod, so a DENY on the pod's own
//     principal denies it and an ALLOW on it allows it, on this node and across nodes;
//   - a process below a captured pod cgroup that connect4 cannot attribute (the pod cgroup is
//     deeper than WEFT_CGROUP_LEVELS_MAX): its connect is refused, and the agent logs it.
// What a strict pod admits:
//   - a host-network process on the node, one in the agent's own cgroup, and one on the peer
//     node, dialing the pod in plaintext: dropped;
//   - the kubelet's probe from the node address: admitted to a probe port, dropped elsewhere;
//   - the agent's own connections (proxied requests, health checks): admitted.
import t from 'tap';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import type { TopoNode, TopoPod } from '../../src/sandbox/topology.js';
import { canRunE2e, until } from '../lib/e2e.js';

const API_IP = '10.77.0.11';
const WEB_PRINCIPAL = 'cluster.local/ns/shop/sa/web';

const config = `
node: { name: "\${WEFT_NODE:-node-a}", address: "\${WEFT_NODE_ADDRESS:-10.77.0.1}" }
nodes:
  - { name: node-a, address: 10.77.0.1 }
  - { name: node-b, address: 10.77.1.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: api-0, namespace: shop, node: node-a, ip: ${API_IP}, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0", probePorts: [9000] }
  - { name: web-0, namespace: shop, node: node-a, ip: 10.77.0.21, serviceAccount: web, labels: { app: web }, cgroup: "\${CGROUP_ROOT}/web-0" }
  - { name: deep-0, namespace: shop, node: node-a, ip: 10.77.0.41, serviceAccount: deep, labels: { app: deep }, cgroup: "\${CGROUP_ROOT}/deep-0" }
  - { name: api-b-0, namespace: shop, node: node-b, ip: 10.77.1.11, serviceAccount: api, labels: { app: api-b }, cgroup: "\${CGROUP_ROOT}/api-b-0" }
  - { name: web-b-0, namespace: shop, node: node-b, ip: 10.77.1.21, serviceAccount: web, labels: { app: web }, cgroup: "\${CGROUP_ROOT}/web-b-0" }
services:
  - name: api
    namespace: shop
    vip: 10.96.0.20
    ports: [ { port: 80, targetPort: 8080, protocol: http }, { name: probe, port: 9000, targetPort: 9000, protocol: tcp } ]
    selector: { app: api }
    trafficPolicy: { healthCheck: { type: tcp, interval: 1s, timeout: 500ms } }
  - { name: api-b, namespace: shop, vip: 10.96.0.21, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api-b } }
policies:
  - name: deny-web-admin
    namespace: shop
    selector: { app: api }
    action: DENY
    rules: [ { from: [ { principals: [${WEB_PRINCIPAL}] } ], to: [ { paths: ["/admin*"] } ] } ]
  - name: allow-web
    namespace: shop
    selector: { app: api }
    action: ALLOW
    rules: [ { from: [ { principals: [${WEB_PRINCIPAL}] } ] } ]
  - name: allow-web-b
    namespace: shop
    selector: { app: api-b }
    action: ALLOW
    rules: [ { from: [ { principals: [${WEB_PRINCIPAL}] } ] } ]
`;

interface Got {
  status: number;
  code: number | null;
  stderr: string;
  body: string;
}

/** GET from inside `pod`, from a process in `cgroup` (made if missing). */
async function getFrom(pod: TopoPod, cgroup: string, url: string): Promise<Got> {
  mkdirSync(cgroup, { recursive: true });
  const r = await pod.exec('curl', ['-sS', '--noproxy', '*', '--max-time', '5', '-w', '\n%{http_code}', url], { cgroup, timeoutMs: 15_000 });
  const i = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(i + 1)) || 0, code: r.code, stderr: r.stderr, body: r.stdout.slice(0, i) };
}

/** Requests the backend answered so far (its own count, read over the pod's loopback). */
async function backendRequests(pod: TopoPod): Promise<number> {
  const r = await pod.exec('curl', ['-sS', '--max-time', '3', 'http://127.0.0.1:8080/_ctl/state']);
  return (JSON.parse(r.stdout) as { state: { requests: number } }).state.requests;
}

/** A plaintext HTTP GET from a host process in `node`'s network namespace (optionally from `source`, in `cgroup`). */
async function hostGet(node: TopoNode, url: string, opts: { source?: string; cgroup?: string } = {}): Promise<{ status: string; code: number | null }> {
  const args = ['-sS', '--noproxy', '*', '--max-time', '2', '-o', '/dev/null', '-w', '%{http_code}', ...(opts.source ? ['--interface', opts.source] : []), url];
  const r = await node.exec('curl', args, { cgroup: opts.cgroup, timeoutMs: 10_000 });
  return { status: r.stdout, code: r.code };
}

/** What a kubelet tcpSocket probe gets: one exchange with the pod's echo port. */
async function tcpProbe(node: TopoNode, ip: string, port: number, source?: string): Promise<string> {
  const opts = JSON.stringify({ host: ip, port, ...(source && { localAddress: source }) });
  const script = `const s=require('net').connect(${opts},()=>s.write('probe'));s.on('data',d=>{console.log('echo '+d);s.destroy()});s.on('error',e=>console.log('error '+e.code));setTimeout(()=>{console.log('timeout');process.exit(0)},2000).unref()`;
  const r = await node.exec(process.execPath, ['-e', script], { timeoutMs: 10_000 });
  return r.stdout.trim();
}

t.test('a tenant cannot get around the mesh from below the pod cgroup, nor a node user around strict mode', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config, prefix: 'weft-ak' });
  t.teardown(() => sb.destroy());
  const nodeB = sb.peers.get('node-b')!.node;
  const api = sb.pod('api-0');
  const web = sb.pod('web-0');
  const webB = sb.pod('web-b-0');
  const denials = () => sb.agentLines().filter((l) => l.msg === 'request denied by authorization policy');

  await t.test('a caller in a container cgroup, in a deeper one, in one the agent never heard of: the pod', async (t) => {
    const cases = [
      { how: 'container cgroup (cri-containerd-<id>.scope)', cgroup: web.containerCgroup('shell') },
      { how: 'a deeper child of the container cgroup', cgroup: join(web.containerCgroup('shell'), 'nested', 'deeper') },
      { how: 'a cgroup the agent never heard of, below the pod', cgroup: join(web.cgroup, 'rogue') },
    ];
    for (const c of cases) {
      const before = await backendRequests(api);
      const denied = denials().length;
      const admin = await getFrom(web, c.cgroup, 'http://10.96.0.20/admin');
      t.equal(admin.status, 403, `${c.how}: a DENY on its own principal denies it`);
      await until('the denial logged', () => denials().length > denied);
      const line = denials().at(-1);
      t.match(line, { policy: /deny-web-admin/, src: WEB_PRINCIPAL }, `${c.how}: denied by that DENY policy, as ${WEB_PRINCIPAL}`);

      const pub = await getFrom(web, c.cgroup, 'http://10.96.0.20/public');
      t.equal(pub.status, 200, `${c.how}: an ALLOW on its own principal allows it`);
      t.match(JSON.parse(pub.body || '{}'), { pod: 'api-0', path: '/public' }, 'and the backend answered it');
      t.equal(await backendRequests(api), before + 1, `${c.how}: the backend saw /public only, never /admin`);
    }
  });

  await t.test('across nodes, the tunnel carries the pod identity of a caller in a container cgroup (both cgroup drivers)', async (t) => {
    const fromA = await getFrom(web, web.containerCgroup('shell'), 'http://10.96.0.21/public');
    t.equal(fromA.status, 200, `node-a (systemd layout) -> node-b: ALLOW on ${WEB_PRINCIPAL}: ${fromA.body}`);
    t.match(JSON.parse(fromA.body || '{}'), { pod: 'api-b-0', path: '/public' });
    const fromB = await getFrom(webB, join(webB.containerCgroup('shell'), 'nested'), 'http://10.96.0.20/public');
    t.equal(fromB.status, 200, `node-b (cgroupfs layout) -> node-a: ALLOW on ${WEB_PRINCIPAL}: ${fromB.body}`);
    t.match(JSON.parse(fromB.body || '{}'), { pod: 'api-0', path: '/public' });
    const adminB = await getFrom(webB, webB.containerCgroup('shell'), 'http://10.96.0.20/admin');
    t.equal(adminB.status, 403, 'node-b -> node-a: the DENY on its principal denies it');
  });

  await t.test('a caller below a captured pod that cannot be attributed is refused, and logged', async (t) => {
    // The pod cgroup lies deeper than connect4 searches (WEFT_CGROUP_LEVELS_MAX levels): no
    // ancestor of the caller within reach is a captured pod.
    const deep = sb.pod('deep-0');
    const deepCgroup = join(deep.cgroup, ...Array.from({ length: 17 }, (_, i) => `n${i}`));
    mkdirSync(deepCgroup, { recursive: true });
    await sb.writeConfig(sb.currentConfigText.replace('cgroup: "${CGROUP_ROOT}/deep-0"', `cgroup: "\${CGROUP_ROOT}/deep-0/${deepCgroup.slice(deep.cgroup.length + 1)}"`));
    await until('the deep pod captured', async () => (await sb.configDump()).capture.some((c: any) => c.workload === 'shop/deep-0' && c.captured && c.cgroup === deepCgroup));
    const before = await backendRequests(api);
    const caller = join(deepCgroup, 'cri-containerd-app.scope');
    mkdirSync(caller);
    const client = `const s=require('net').connect(80,'10.96.0.20',()=>{console.log('connected');s.destroy()});s.on('error',e=>console.log('error '+e.code));setTimeout(()=>{console.log('timeout');process.exit(0)},3000).unref()`;
    const r = await deep.exec(process.execPath, ['-e', client], { cgroup: caller, timeoutMs: 10_000 });
    t.equal(r.stdout.trim(), 'error EPERM', 'the connect is refused (EPERM)');
    const http = await getFrom(deep, caller, 'http://10.96.0.20/public');
    t.equal(http.status, 0, `curl gets no answer at all (${http.stderr.trim()})`);
    t.equal(await backendRequests(api), before, 'the backend saw nothing');
    const refusals = () => sb.agentLines().filter((l) => /connect refused/.test(l.msg ?? '') && l.dst === '10.96.0.20:80');
    await until('the refusals logged', () => refusals().length >= 2);
    t.equal(refusals()[0].cgroupId, String(statSync(caller, { bigint: true }).ino), "naming the caller's own cgroup");
  });

  await t.test('strict: nothing is admitted for coming from a node address', async (t) => {
    const before = await backendRequests(api);
    const host = await hostGet(sb.node, `http://${API_IP}:8080/public`);
    t.equal(host.status, '000', `a host-network process on the node is dropped (curl ${host.code})`);
    const inAgentCgroup = await hostGet(sb.node, `http://${API_IP}:8080/public`, { cgroup: sb.node.agentCgroup });
    t.equal(inAgentCgroup.status, '000', `a process in the agent's own cgroup that is not the agent is dropped (curl ${inAgentCgroup.code})`);
    const peer = await hostGet(nodeB, `http://${API_IP}:8080/public`, { source: nodeB.address });
    t.equal(peer.status, '000', `a host process on the peer node, from its node address, is dropped (curl ${peer.code})`);
    t.equal(await backendRequests(api), before, 'the backend saw none of them');
    t.equal(await tcpProbe(nodeB, API_IP, 9000, nodeB.address), 'timeout', 'the peer node, from its node address, does not reach the probe port either');
  });

  await t.test('strict: the kubelet probes the probe ports from the node address, and only those', async (t) => {
    t.match(await tcpProbe(sb.node, API_IP, 9000), /^echo /, 'a probe port answers the node address');
    const before = await backendRequests(api);
    const http = await hostGet(sb.node, `http://${API_IP}:8080/healthz`);
    t.equal(http.status, '000', 'a port that is not a probe port is dropped');
    t.equal(await backendRequests(api), before, 'the backend saw nothing');
  });

  await t.test('strict: what the agent opens is admitted (proxied requests, health checks)', async (t) => {
    const r = await getFrom(web, web.containerCgroup(), 'http://10.96.0.20/public');
    t.equal(r.status, 200, 'the agent reaches the strict pod');
    await until(
      "the agent's health checks pass",
      async () => (await sb.configDump()).clusters.find((c: any) => c.key === 'shop/api:80')?.endpoints.find((e: any) => e.workload === 'shop/api-0')?.health === 'healthy',
      15_000,
    );
    t.pass("api-0 is healthy by the agent's own TCP health checks from the node address");
  });
});
