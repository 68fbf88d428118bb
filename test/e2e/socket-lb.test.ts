// Socket LB for real: plain-TCP service ports where the agent has nothing to add are balanced
// by connect4 itself, and the client pod connects straight to the endpoint. The endpoint then
// sees the client pod's address (through the agent it would see the node's), which is how
// these tests tell the two paths apart.
import t from 'tap';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import { canRunE2e, curlBurst, peerNameFrom, until } from '../lib/e2e.js';

const NODE_IP = '10.77.0.1';
const CLIENT_IP = '10.77.0.10';
// The sample backend serves HTTP on 18080 when no http service port names another, and its
// TCP echo on the first tcp port: the tcp port 80 below reaches its HTTP server, which tells
// who connected (remoteAddress) and which pod answered.
const config = (extra = '') => `
node: { name: node-a, address: ${NODE_IP} }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: app, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: client-0, namespace: app, ip: ${CLIENT_IP}, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
  - { name: web-0, namespace: app, ip: 10.77.0.20, serviceAccount: web, labels: { app: web }, cgroup: "\${CGROUP_ROOT}/web-0" }
  - { name: web-1, namespace: app, ip: 10.77.0.21, serviceAccount: web, labels: { app: web }, cgroup: "\${CGROUP_ROOT}/web-1" }
services:
  - name: web
    namespace: app
    vip: 10.96.0.60
    ports: [ { name: echo, port: 7000, targetPort: 7000, protocol: tcp }, { name: http, port: 80, targetPort: 18080, protocol: tcp } ]
    selector: { app: web }
  - name: web-hc
    namespace: app
    vip: 10.96.0.61
    ports: [ { port: 80, targetPort: 18080, protocol: tcp } ]
    selector: { app: web }
    trafficPolicy: { healthCheck: { type: http, path: /healthz, interval: 300ms, timeout: 250ms, unhealthyThreshold: 1, healthyThreshold: 1 } }
  - name: web-od
    namespace: app
    vip: 10.96.0.62
    ports: [ { port: 80, targetPort: 18080, protocol: tcp } ]
    selector: { app: web }
    trafficPolicy: { outlierDetection: { consecutiveGatewayErrors: 5 } }
${extra}`;

const ALLOW_CLIENT = `
policies:
  - name: web-from-client
    namespace: app
    selector: { app: web }
    action: ALLOW
    rules: [ { from: [ { principals: [cluster.local/ns/app/sa/client] } ] } ]
`;
const DENY_CLIENT = `
policies:
  - name: web-not-client
    namespace: app
    selector: { app: web }
    action: DENY
    rules: [ { from: [ { principals: [cluster.local/ns/app/sa/client] } ] } ]
`;

t.test('plain-TCP service ports balanced in connect4', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config(), prefix: 'weft-e2e-socklb' });
  t.teardown(() => sb.destroy());
  const client = sb.pod('client-0');

  /** `n` requests, each on a new connection: which pods answered, and whom they saw. */
  const who = async (vip: string, n: number) => {
    const pods: Record<string, number> = {};
    const peers: Record<string, number> = {};
    const statuses: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      const r = await client.curl(`http://${vip}/`, ['--max-time', '3']);
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      if (r.status !== 200) continue;
      const body = JSON.parse(r.body) as { pod: string; remoteAddress: string };
      pods[body.pod] = (pods[body.pod] ?? 0) + 1;
      const peer = body.remoteAddress.replace('::ffff:', '');
      peers[peer] = (peers[peer] ?? 0) + 1;
    }
    return { pods, peers, statuses };
  };
  const lbPorts = async () => (await sb.configDump()).socketLb.ports as Record<string, { balanced: boolean; reason?: string; slots?: number }>;
  await until('ports balanced', async () => (await lbPorts())['app/web:80']?.balanced === true);

  await t.test('eligible ports are balanced in the kernel, the others are not', async (t) => {
    const ports = await lbPorts();
    t.match(ports['app/web:80'], { balanced: true, slots: 2 });
    t.match(ports['app/web:7000'], { balanced: true, slots: 2 });
    t.match(ports['app/web-hc:80'], { balanced: true, slots: 2 }, 'active health checks do not need the agent on the path');
    t.match(ports['app/web-od:80'], { balanced: false, reason: 'outlier detection' });
  });

  await t.test('the client connects straight to the endpoints, balanced', async (t) => {
    const r = await who('10.96.0.60', 30);
    t.same(r.statuses, { 200: 30 });
    t.same(r.peers, { [CLIENT_IP]: 30 }, 'the endpoint sees the client pod: no agent on the path (strict ingress admitted it)');
    t.ok((r.pods['web-0'] ?? 0) >= 3 && (r.pods['web-1'] ?? 0) >= 3, `both endpoints get connections: ${JSON.stringify(r.pods)}`);
    t.equal(await peerNameFrom(client, '10.96.0.60', 80), '10.96.0.60:80', 'getpeername shows the VIP it dialed');
    const od = await who('10.96.0.62', 4);
    t.same(od.peers, { [NODE_IP]: 4 }, 'a port with outlier detection goes through the agent');
  });

  await t.test('metrics and access log from the kernel events', async (t) => {
    const before = await sb.metrics();
    const script = `const s=require('net').connect(7000,'10.96.0.60',()=>s.write('hello'));let b='';s.on('data',d=>{b+=d;if(b.endsWith('hello')){s.end()}});s.on('close',()=>console.log(JSON.stringify(b)))`;
    const r = await client.exec(process.execPath, ['-e', script], { timeoutMs: 5000 });
    const got = JSON.parse(r.stdout.trim()) as string;
    t.match(got, /^web-[01]\nhello$/);
    const line = () =>
      sb
        .agentLines()
        .filter((l) => l.msg === 'access' && l.socket_lb === true && l.dst === '10.96.0.60:7000')
        .at(-1);
    await until('access line', () => line() !== undefined);
    t.match(line(), { component: 'tcp', src_workload: 'app/client-0', src_ip: CLIENT_IP, dst_service: 'app/web', sent_bytes: 5, received_bytes: got.length, protocol: 'tcp' });
    const after = await sb.metrics();
    const series = (text: string, name: string) => {
      const m = new RegExp(
        `^${name}\\{source_workload="client-0",source_namespace="app",source_canonical_service="[^"]*",destination_service="app/web",connection_security_policy="none"\\} (\\d+)`,
        'm',
      ).exec(text);
      return m ? Number(m[1]) : 0;
    };
    t.equal(series(after, 'weft_tcp_connections_opened_total') - series(before, 'weft_tcp_connections_opened_total'), 1);
    t.equal(series(after, 'weft_tcp_connections_closed_total') - series(before, 'weft_tcp_connections_closed_total'), 1);
    t.equal(series(after, 'weft_tcp_sent_bytes_total') - series(before, 'weft_tcp_sent_bytes_total'), 5, 'payload bytes, not sequence space');
    t.equal(series(after, 'weft_tcp_received_bytes_total') - series(before, 'weft_tcp_received_bytes_total'), got.length);
  });

  await t.test('slots follow health checks', async (t) => {
    t.equal((await client.curl('http://10.77.0.21:18080/_ctl/unhealthy')).status, 200);
    await until('web-1 out of the slots', async () => (await lbPorts())['app/web-hc:80']?.slots === 1, 5000);
    const r = await who('10.96.0.61', 12);
    t.same(r.pods, { 'web-0': 12 }, 'only the healthy endpoint');
    t.same(r.peers, { [CLIENT_IP]: 12 }, 'still balanced in the kernel');
    t.equal((await client.curl('http://10.77.0.21:18080/_ctl/healthy')).status, 200);
    await until('web-1 back', async () => (await lbPorts())['app/web-hc:80']?.slots === 2, 5000);
    for (const ip of ['10.77.0.20', '10.77.0.21']) await client.curl(`http://${ip}:18080/_ctl/unhealthy`);
    await until('no eligible endpoint', async () => (await lbPorts())['app/web-hc:80']?.balanced === false, 5000);
    t.match((await lbPorts())['app/web-hc:80'], { reason: 'no eligible endpoint' }, 'with none healthy, the agent answers (fallback or reset)');
    for (const ip of ['10.77.0.20', '10.77.0.21']) await client.curl(`http://${ip}:18080/_ctl/healthy`);
    await until('healthy again', async () => (await lbPorts())['app/web-hc:80']?.slots === 2, 5000);
  });

  await t.test('an authorization policy on the endpoints takes the port back to the agent', async (t) => {
    await sb.writeConfig(config(ALLOW_CLIENT));
    t.match((await lbPorts())['app/web:80'], { balanced: false, reason: 'authorization policy' }, 'at once, with the config');
    const r = await who('10.96.0.60', 4);
    t.same(r.peers, { [NODE_IP]: 4 }, 'through the agent, which authorizes');
    await sb.writeConfig(config(DENY_CLIENT));
    const denied = await client.curl('http://10.96.0.60/', ['--max-time', '3']);
    t.equal(denied.status, 0, `a DENY policy refuses the connection (curl ${denied.code})`);
    await sb.writeConfig(config());
    await until('balanced again', async () => (await lbPorts())['app/web:80']?.balanced === true);
    t.same((await who('10.96.0.60', 4)).peers, { [CLIENT_IP]: 4 });
  });

  await t.test('balanced ports keep working while no agent runs', async (t) => {
    await sb.stopAgent('SIGKILL');
    const r = await who('10.96.0.60', 6);
    t.same(r.statuses, { 200: 6 }, 'the kernel keeps balancing');
    t.same(r.peers, { [CLIENT_IP]: 6 });
    await sb.startAgent();
    await until('taken over', async () => (await lbPorts())['app/web:80']?.balanced === true);
  });

  await t.test('WEFT_L4_SOCKET_LB=0: every port through the agent', async (t) => {
    await sb.stopAgent();
    process.env.WEFT_L4_SOCKET_LB = '0';
    try {
      await sb.startAgent();
    } finally {
      delete process.env.WEFT_L4_SOCKET_LB;
    }
    t.equal((await sb.configDump()).socketLb, 'disabled');
    const r = await who('10.96.0.60', 6);
    t.same(r.statuses, { 200: 6 });
    t.same(r.peers, { [NODE_IP]: 6 }, 'the agent proxies them');
  });
});
