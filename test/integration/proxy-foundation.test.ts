import t from 'tap';
import net from 'node:net';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent } from '../lib/loopback-agent.js';

/** Config for backends on loopback: each "pod" is a backend on 127.0.0.1 with its own port. */
function meshYaml(backends: Backend[], opts: { echo?: Backend; extra?: string } = {}): string {
  const wl = backends.map((b, i) => `  - { name: api-${i}, namespace: shop, node: node-a, ip: 127.0.1.${i + 1}, serviceAccount: api, labels: { app: api } }`).join('\n');
  return `
node: { name: node-a, address: 127.0.0.1 }
ports: { outbound: 0, inbound: 0, tunnel: 0, admin: 0, metrics: 0 }
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
${wl}
  - { name: client-0, namespace: shop, node: node-a, ip: 127.0.2.1, serviceAccount: client, labels: { app: client } }
services:
  - name: api
    namespace: shop
    vip: 10.96.0.20
    ports: [ { port: 80, targetPort: 8080, protocol: http } ]
    selector: { app: api }
  - name: empty
    namespace: shop
    vip: 10.96.0.21
    ports: [ { port: 80, targetPort: 8080, protocol: http } ]
    selector: { app: nothing }
${opts.extra ?? ''}
`;
}

t.test('HTTP through the agent: balanced, counted, errors answered', async (t) => {
  // Backends listen on 127.0.1.N:8080 — the pod IPs of the config.
  const backends = await allStarted([0, 1, 2].map((i) => startBackend({ name: `api-${i}`, port: 8080, host: `127.0.1.${i + 1}`, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(meshYaml(backends));
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');

  const seen: Record<string, number> = {};
  for (let i = 0; i < 30; i++) {
    const r = await la.get('127.0.2.1', '10.96.0.20:80', `/items/${i}`);
    t.equal(r.status, 200);
    const pod = r.headers['x-pod'] as string;
    seen[pod] = (seen[pod] ?? 0) + 1;
  }
  t.same(seen, { 'api-0': 10, 'api-1': 10, 'api-2': 10 }, 'round robin spreads evenly');

  // Another client address: a keep-alive connection stays bound to the destination it dialed.
  la.route('127.0.2.2', '10.96.0.21:80', 'shop/client-0');
  const empty = await la.get('127.0.2.2', '10.96.0.21:80', '/');
  t.equal(empty.status, 503);
  t.equal(empty.headers['x-weft-error'], 'no_healthy_upstream');

  const metrics = await la.metrics();
  t.match(metrics, /weft_requests_total\{source_workload="client-0",source_namespace="shop",destination_service="shop\/api",destination_workload="api-0",response_code="200"[^}]*\} 10/);
  t.match(metrics, /weft_requests_total\{[^}]*destination_service="shop\/empty"[^}]*response_code="503"[^}]*\} 1/);
  t.match(metrics, /weft_request_duration_seconds_bucket/);

  const dump = await la.configDump();
  const api = dump.clusters.find((c: any) => c.key === 'shop/api:80');
  t.equal(api.endpoints.length, 3);
  t.equal(api.endpoints[0].requests, 10);
});

t.test('a refusing endpoint gives connect_failure, the agent keeps running', async (t) => {
  // Nothing listens on 127.0.1.9:8080.
  const yaml = meshYaml([]).replace('workloads:\n', 'workloads:\n  - { name: dead-0, namespace: shop, node: node-a, ip: 127.0.1.9, serviceAccount: api, labels: { app: api } }\n');
  const la = await startLoopbackAgent(yaml);
  t.teardown(() => la.stop());
  const r = await la.get('127.0.2.1', '10.96.0.20:80', '/');
  t.equal(r.status, 503);
  t.equal(r.headers['x-weft-error'], 'connect_failure');
  const again = await la.get('127.0.2.2', '10.96.0.21:80', '/');
  t.equal(again.status, 503, 'still serving after the failure');
});

t.test('malformed request gets 400 bad_request', async (t) => {
  const la = await startLoopbackAgent(meshYaml([]));
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80');
  const answer = await new Promise<string>((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: '127.0.2.1' }, () => {
      s.write('GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    });
    let buf = '';
    s.on('data', (d) => (buf += d));
    s.on('end', () => resolve(buf));
    s.on('close', () => resolve(buf));
    s.on('error', reject);
  });
  t.match(answer, /^HTTP\/1\.1 400/);
  t.match(answer, /x-weft-error: bad_request/);
});

t.test('TCP service: spliced, counted, live config change', async (t) => {
  const echo = await startBackend({ name: 'echo-0', port: 8081, host: '127.0.1.1', tcpEchoPort: 9000, log: () => {} });
  t.teardown(() => echo.close());
  const la = await startLoopbackAgent(
    meshYaml([echo], {
      extra: `  - name: echo
    namespace: shop
    vip: 10.96.0.30
    ports: [ { port: 9000, targetPort: 9000, protocol: tcp } ]
    selector: { app: api }`,
    }),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.30:9000', 'shop/client-0');
  const reply = await new Promise<string>((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: '127.0.2.1' });
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('hello')) s.end();
    });
    s.on('connect', () => s.write('hello'));
    s.on('close', () => resolve(buf));
    s.on('error', reject);
  });
  t.equal(reply, 'echo-0\nhello');
  // Closing is counted once both sides are done: the agent's own close of the two sockets can
  // come after the client saw its connection close, so wait for the count, not for a time.
  let m = await la.metrics();
  for (let i = 0; i < 250 && !/weft_tcp_connections_closed_total\{[^}]*destination_service="shop\/echo"[^}]*\} 1/.test(m); i++) {
    await new Promise((r) => setTimeout(r, 20));
    m = await la.metrics();
  }
  t.match(m, /weft_tcp_connections_opened_total\{[^}]*destination_service="shop\/echo"[^}]*\} 1/);
  t.match(m, /weft_tcp_connections_closed_total\{[^}]*destination_service="shop\/echo"[^}]*\} 1/);
  t.match(m, /weft_tcp_sent_bytes_total\{[^}]*destination_service="shop\/echo"[^}]*\} 5/);
  t.match(m, /weft_tcp_received_bytes_total\{[^}]*destination_service="shop\/echo"[^}]*\} 12/);
});
