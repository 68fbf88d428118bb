/**
 * Metric labels as DESIGN.md "Metric labels" defines them, seen on the agent's /metrics:
 * workloads, not pods; canonical services; series of gone workloads removed; Node.js process
 * metrics on the agent's registry; open connections as a gauge.
 */
import net from 'node:net';
import t from 'tap';
import { startBackend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent } from '../lib/loopback-agent.js';

function mesh(apiPods: number): string {
  const pods = Array.from(
    { length: apiPods },
    (_, i) => `  - { name: api-7d4f9-${i}, workload: api, namespace: shop, node: node-a, ip: 127.0.1.${i + 1}, serviceAccount: api, labels: { app: api, app.kubernetes.io/name: catalog } }`,
  ).join('\n');
  return `
node: { name: node-a, address: 127.0.0.1 }
ports: { outbound: 0, inbound: 0, tunnel: 0, admin: 0, metrics: 0 }
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
${pods}
  - { name: client-5b8c-x2z, workload: client, namespace: shop, node: node-a, ip: 127.0.2.1, serviceAccount: client, labels: { app: client } }
  - { name: echo-0, namespace: shop, node: node-a, ip: 127.0.3.1, serviceAccount: echo, labels: { app: echo } }
services:
  - name: api
    namespace: shop
    vip: 10.96.0.20
    ports: [ { port: 80, targetPort: 8080, protocol: http } ]
    selector: { app: api }
  - name: echo
    namespace: shop
    vip: 10.96.0.30
    ports: [ { port: 7, targetPort: 7007, protocol: tcp } ]
    selector: { app: echo }
`;
}

const series = (text: string, name: string): string[] => text.split('\n').filter((l) => l.startsWith(`${name}{`));

t.test('workload and canonical-service labels, and the series of a gone workload removed', async (t) => {
  const backends = await allStarted([0, 1].map((i) => startBackend({ name: `api-${i}`, port: 8080, host: `127.0.1.${i + 1}`, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(mesh(2));
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-5b8c-x2z');
  for (let i = 0; i < 4; i++) t.equal((await la.get('127.0.2.1', '10.96.0.20:80', '/')).status, 200);

  let m = await la.metrics();
  const reqs = series(m, 'weft_requests_total');
  t.equal(reqs.length, 1, `two pods of one workload are one series: ${reqs.join(' | ')}`);
  t.match(reqs[0], /source_workload="client",source_namespace="shop",destination_service="shop\/api",destination_workload="api",response_code="200"/);
  t.match(reqs[0], /source_canonical_service="client",destination_canonical_service="catalog"\} 4$/, 'app.kubernetes.io/name wins over app');
  t.notMatch(m, /api-7d4f9-|client-5b8c/, 'no pod name in any label');
  t.match(series(m, 'weft_request_duration_seconds_count')[0], /destination_workload="api".*\} 4$/);

  // Process metrics on the agent's registry.
  for (const name of ['nodejs_eventloop_lag_p99_seconds', 'nodejs_heap_size_used_bytes', 'nodejs_gc_duration_seconds_count', 'process_resident_memory_bytes']) {
    t.match(m, new RegExp(`^${name}`, 'm'), `${name} exported`);
  }

  // The api workload goes (scaled to zero): its series go with it; the client's other series stay.
  la.update(mesh(0));
  for (let i = 0; i < 50 && series(m, 'weft_requests_total').length > 0; i++) {
    await new Promise((r) => setTimeout(r, 20));
    m = await la.metrics();
  }
  t.same(series(m, 'weft_requests_total'), [], 'the series of api are removed');
  t.same(series(m, 'weft_request_duration_seconds_count'), []);
});

t.test('open TCP connections: a gauge of opened - closed', async (t) => {
  const server = net.createServer((s) => s.pipe(s));
  // A taken address rejects (the test fails naming it) rather than throwing an unhandled 'error'.
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(7007, '127.0.3.1', () => resolve());
  });
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const la = await startLoopbackAgent(mesh(1));
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.30:7', 'shop/client-5b8c-x2z');
  const open = async (): Promise<number> => {
    const line = series(await la.metrics(), 'weft_tcp_connections_open')[0];
    return line ? Number(line.split(' ').at(-1)) : 0;
  };
  const conns: net.Socket[] = [];
  for (let i = 0; i < 3; i++) {
    const c = net.connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: '127.0.2.1' });
    conns.push(c);
    c.write('ping');
    await new Promise((r) => c.once('data', r));
  }
  t.equal(await open(), 3, 'three open');
  t.match(series(await la.metrics(), 'weft_tcp_connections_open')[0], /source_workload="client",source_namespace="shop",source_canonical_service="client",destination_service="shop\/echo"/);
  conns[0]!.destroy();
  let n = 3;
  for (let i = 0; i < 100 && n !== 2; i++) {
    await new Promise((r) => setTimeout(r, 20));
    n = await open();
  }
  t.equal(n, 2, 'one closed');
  for (const c of conns) c.destroy();
});
