import t from 'tap';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import { canRunE2e, until } from '../lib/e2e.js';

const config = `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: api-0, namespace: shop, ip: 10.77.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: web-0, namespace: shop, ip: 10.77.0.21, serviceAccount: web, labels: { app: web }, cgroup: "\${CGROUP_ROOT}/web-0" }
  - { name: intruder-0, namespace: shop, ip: 10.77.0.66, serviceAccount: intruder, labels: { app: intruder }, cgroup: "\${CGROUP_ROOT}/intruder-0" }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
policies:
  - name: api-from-web
    namespace: shop
    selector: { app: api }
    action: ALLOW
    rules:
      - from: [ { principals: [cluster.local/ns/shop/sa/web] } ]
`;

t.test("a pod that claims another pod's IP does not get its identity", async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config, prefix: 'weft-e2e' });
  t.teardown(() => sb.destroy());
  const web = sb.pod('web-0');
  const intruder = sb.pod('intruder-0');
  t.equal((await web.curl('http://10.96.0.20/')).status, 200, 'web is allowed');
  t.equal((await intruder.curl('http://10.96.0.20/')).status, 403, 'the intruder is denied');

  // The intruder takes web-0's address (web-0 gives it up, so replies reach the intruder).
  await web.exec('ip', ['addr', 'flush', 'dev', 'eth0']);
  await intruder.exec('ip', ['addr', 'add', '10.77.0.21/24', 'dev', 'eth0']);
  // Forget web-0's MAC for that address on the node, so replies go to whoever answers ARP now.
  await sb.node.exec('ip', ['neigh', 'flush', 'to', '10.77.0.21']);
  const spoofed = await intruder.curl('http://10.96.0.20/', ['--interface', '10.77.0.21', '--max-time', '5']);
  t.equal(spoofed.status, 403, "dialing from web-0's IP does not make the intruder web-0");
  t.equal(spoofed.headers['x-weft-error'], 'denied');
  const spoofedLine = () =>
    sb
      .agentLines()
      .reverse()
      .find((l) => l.msg === 'access' && l.src_ip?.endsWith('10.77.0.21') && l.status === 403);
  await until('the access log line', () => spoofedLine() !== undefined, 5000).catch(() => undefined);
  const line = spoofedLine();
  t.ok(line, 'the spoofed request was logged');
  t.equal(line?.src_workload, 'shop/intruder-0', 'the agent names the caller by its cgroup, not by its source IP');
});
