// Strict and permissive mTLS on one node, through the real agent and the eBPF ingress
// program. Root only.
//   strict:     a pod outside the mesh connecting straight to a meshed pod is refused (its
//               SYN is dropped); the plaintext inbound port refuses it too (403).
//   permissive: the ingress program is detached, plaintext reaches the pod; the plaintext
//               inbound port (15006) serves CONNECT to the pod with the mesh's inbound policy.
import t from 'tap';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import { parseCurlOutput, type CurlResult, type TopoPod } from '../../src/sandbox/topology.js';
import { canRunE2e, until } from '../lib/e2e.js';

const config = (mode: 'strict' | 'permissive') => `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled }, peerAuthentication: ${mode} }
  - { name: legacy, labels: {} }
workloads:
  - { name: api-0, namespace: shop, ip: 10.77.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: echo-0, namespace: shop, ip: 10.77.0.31, serviceAccount: echo, labels: { app: echo }, cgroup: "\${CGROUP_ROOT}/echo-0" }
  - { name: client-0, namespace: shop, ip: 10.77.0.50, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
  - { name: legacy-0, namespace: legacy, ip: 10.77.0.60, labels: { app: legacy }, cgroup: "\${CGROUP_ROOT}/legacy-0" }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
  - { name: echo, namespace: shop, vip: 10.96.0.40, ports: [ { port: 7000, targetPort: 7000, protocol: tcp } ], selector: { app: echo } }
policies:
  - name: no-admin
    namespace: shop
    selector: { app: api }
    action: DENY
    rules: [ { to: [ { paths: [/admin] } ] } ]
`;

/** curl through the plaintext inbound port as an HTTP proxy (CONNECT); TopoPod.curl turns proxies off. */
async function viaInbound(pod: TopoPod, url: string): Promise<CurlResult> {
  const r = await pod.exec('curl', ['-sS', '-i', '--suppress-connect-headers', '--max-time', '3', '-p', '-x', 'http://10.77.0.1:15006', url], { timeoutMs: 10_000 });
  return { ...parseCurlOutput(r.stdout), code: r.code ?? -1, stderr: r.stderr };
}

/** CONNECT through the plaintext inbound port to a TCP target, then one echo exchange. */
async function connectEcho(pod: TopoPod, target: string, payload: string): Promise<string> {
  const script = `const s=require('net').connect(15006,'10.77.0.1',()=>s.write('CONNECT ${target} HTTP/1.1\\r\\nhost: ${target}\\r\\n\\r\\n'));let b='',open=false;s.on('data',d=>{b+=d;if(!open&&b.includes('\\r\\n\\r\\n')){open=true;const head=b.split('\\r\\n')[0];b='';if(!head.includes(' 200 ')){process.stdout.write(head);s.destroy();return}s.write(${JSON.stringify(payload)})}else if(open&&b.includes(${JSON.stringify(payload)})){process.stdout.write('echo '+b);s.end()}});s.on('error',e=>process.stdout.write('error '+e.code));setTimeout(()=>{process.stdout.write('timeout '+b);process.exit(0)},4000).unref()`;
  const r = await pod.exec(process.execPath, ['-e', script], { timeoutMs: 8000 });
  return r.stdout;
}

t.test('strict and permissive peer authentication', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config('strict'), prefix: 'weft-pa' });
  t.teardown(() => sb.destroy());
  const legacy = sb.pod('legacy-0');
  const client = sb.pod('client-0');
  // A DENY rule with HTTP-only conditions denies a TCP service outright: echo has its own pod.
  const bpf = async () => (await sb.node.exec('bpftool', ['cgroup', 'show', sb.pod('api-0').cgroup])).stdout;

  await t.test('strict', async (t) => {
    t.match(await bpf(), /weft_ingress/, 'the ingress program guards the strict pod');
    const direct = await legacy.curl('http://10.77.0.11:8080/', ['--max-time', '2']);
    t.equal(direct.status, 0, 'a pod outside the mesh cannot reach the meshed pod directly');
    const tcp = await legacy.exec(
      process.execPath,
      [
        '-e',
        `const s=require('net').connect(7000,'10.77.0.31');s.on('connect',()=>{console.log('connected');s.destroy()});s.on('error',e=>console.log(e.code));setTimeout(()=>{console.log('timeout');process.exit(0)},1500).unref()`,
      ],
      { timeoutMs: 5000 },
    );
    t.equal(tcp.stdout.trim(), 'timeout', 'its SYN is dropped');
    const meshed = await client.curl('http://10.77.0.11:8080/');
    t.equal(meshed.status, 200, 'a meshed pod gets there (through the agent)');
    const refused = await viaInbound(legacy, 'http://10.77.0.11:8080/');
    t.equal(refused.code, 56);
    t.match(refused.stderr, /CONNECT tunnel failed, response 403/, 'the plaintext inbound port refuses a strict pod (403)');
    t.match(await connectEcho(legacy, '10.77.0.31:7000', 'x'), /^HTTP\/1.1 403/);
  });

  await t.test('permissive', async (t) => {
    await sb.writeConfig(config('permissive'));
    await until('ingress detached', async () => !/weft_ingress/.test(await bpf()));
    const direct = await legacy.curl('http://10.77.0.11:8080/direct');
    t.equal(direct.status, 200, 'plaintext from outside the mesh reaches the pod');
    t.equal(direct.headers['x-pod'], 'api-0');

    const via = await viaInbound(legacy, 'http://10.77.0.11:8080/via-15006');
    t.equal(via.status, 200, 'CONNECT on the plaintext inbound port serves the pod');
    t.equal(JSON.parse(via.body).path, '/via-15006');
    const denied = await viaInbound(legacy, 'http://10.77.0.11:8080/admin');
    t.equal(denied.status, 403, 'with the inbound policy of the mesh');
    t.equal(denied.headers['x-weft-error'], 'denied');
    t.match(await connectEcho(legacy, '10.77.0.31:7000', 'hello-15006'), /^echo .*hello-15006/s, 'TCP through the plaintext inbound port');
    t.match(await connectEcho(legacy, '10.77.0.99:7000', 'x'), /^HTTP\/1.1 404/, 'only local meshed pods');
    const lines = sb.agentLines().filter((l) => l.msg === 'plaintext inbound connection accepted');
    t.ok(
      lines.some((l) => l.src_ip === '10.77.0.60' && l.dst_workload === 'shop/api-0'),
      'logged with the caller address',
    );
    const metrics = await sb.metrics();
    t.match(metrics, /weft_tcp_connections_opened_total\{[^}]*destination_service="shop\/echo-0",connection_security_policy="none"\}/, 'plaintext is labelled none');
  });

  await t.test('strict again', async (t) => {
    await sb.writeConfig(config('strict'));
    await until('ingress attached', async () => /weft_ingress/.test(await bpf()));
    t.equal((await legacy.curl('http://10.77.0.11:8080/', ['--max-time', '2'])).status, 0, 'refused again');
  });
});
