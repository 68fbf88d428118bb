// The destination agent's metrics and access log name the calling workload of a tunnelled
// connection, also when it does not know the calling pod (in Kubernetes each agent watches its
// own node's pods only): the source agent describes it in the CONNECT (`baggage`), and the
// destination believes that description for telemetry only, and only when it is of the verified
// peer's namespace. Two in-process agents on loopback, as in tunnel.test.ts: node-a
// (127.0.0.1) runs the callers, node-b (127.0.0.2) the backends. node-b's config lists
// client-0 (as every agent's file does in embedded mode) but not reporter's pod, which only
// node-a (and the CA) know, as in Kubernetes. A raw TLS + HTTP/2 client with certificates of
// the mesh CA plays a hostile agent.
import t from 'tap';
import http2, { type ClientHttp2Session } from 'node:http2';
import * as tls from 'node:tls';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { authorizerFromIdentities, identitiesByNodeFromConfig, startCaServer } from '../../src/identity/ca-server.js';
import { generateP256, privateKeyToPem } from '../../src/identity/x509.js';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { parseConfig } from '../../src/config/load.js';
import { serverNameFor } from '../../src/proxy/hbone.js';
import { isoTime } from '../../src/telemetry/log.js';
import { echoThrough, startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { freePort } from '../../bench/lib/net.js';

const NODE_A = '127.0.0.1';
const NODE_B = '127.0.0.2';
const CLIENT_IP = '127.0.2.1';
const REPORTER_IP = '127.0.2.3';
const REPORTER_POD = 'reporter-6d8f9c-k2x4p';
const API_IP = '127.0.1.1';
const ECHO_IP = '127.0.1.2';

// reporter's pod runs as the same service account as client-0 (one identity, two workloads):
// what tells them apart on node-b is the description, not the certificate.
const REPORTER_LINE = `  - { name: ${REPORTER_POD}, workload: reporter, namespace: shop, node: node-a, ip: ${REPORTER_IP}, serviceAccount: client, labels: { app: reporter, app.kubernetes.io/name: reports } }`;

function meshYaml(o: { node: string; address: string; tunnelPort: number; caUrl: string; dir: string; apiPort: number; echoPort: number; reporter: boolean }): string {
  return `
node: { name: ${o.node}, address: ${o.address} }
nodes:
  - { name: node-a, address: ${NODE_A} }
  - { name: node-b, address: ${NODE_B} }
ports: { outbound: 0, inbound: 0, tunnel: ${o.tunnelPort}, admin: 0, metrics: 0 }
ca: { url: "${o.caUrl}", rootCert: ${o.dir}/ca/root.pem, tokenFile: ${o.dir}/${o.node}.token }
stateDir: ${o.dir}/${o.node}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
  - { name: bank, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: client-0, namespace: shop, node: node-a, ip: ${CLIENT_IP}, serviceAccount: client, labels: { app: client } }
${o.reporter ? REPORTER_LINE : ''}
  - { name: api-0, namespace: shop, node: node-b, ip: ${API_IP}, serviceAccount: api, labels: { app: api } }
  - { name: echo-0, namespace: shop, node: node-b, ip: ${ECHO_IP}, serviceAccount: echo, labels: { app: echo } }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: ${o.apiPort}, protocol: http } ], selector: { app: api } }
  - { name: echo, namespace: shop, vip: 10.96.0.40, ports: [ { port: 7000, targetPort: ${o.echoPort}, protocol: tcp } ], selector: { app: echo } }
policies:
  - name: echo-from-client
    namespace: shop
    selector: { app: echo }
    action: ALLOW
    rules: [ { from: [ { principals: [cluster.local/ns/shop/sa/client] } ] } ]
`;
}

/** A pino logger as the agent's, at debug, writing its lines into `lines`. */
function capture(lines: Record<string, any>[]): pino.Logger {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return pino({ level: 'debug', base: { pid: process.pid }, timestamp: isoTime }, sink);
}

/** A hostile agent: TLS + HTTP/2 to node-b's tunnel port with a certificate of the mesh CA; `exchange` sends `payload` on one CONNECT and reads to the end. */
function rawClient(port: number, opts: { key: string; cert: string; ca: string; servername: string }) {
  const session: ClientHttp2Session = http2.connect(`https://${NODE_B}:${port}`, {
    createConnection: () =>
      tls.connect({ host: NODE_B, port, servername: opts.servername, ca: opts.ca, key: opts.key, cert: opts.cert, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3', checkServerIdentity: () => undefined }),
  });
  session.on('error', () => undefined);
  return {
    session,
    exchange: (authority: string, headers: Record<string, string>, payload: string) =>
      new Promise<{ status: number; body: string }>((resolve) => {
        const stream = session.request({ ':method': 'CONNECT', ':authority': authority, ...headers });
        let status = 0;
        let body = '';
        const timer = setTimeout(() => {
          stream.destroy();
          resolve({ status, body: `${body} (timeout)` });
        }, 5000);
        stream.on('response', (h) => {
          status = Number(h[':status']);
          if (status === 200) stream.end(payload);
          else stream.close();
        });
        stream.on('data', (d: Buffer) => (body += d.toString()));
        stream.on('error', () => undefined);
        stream.on('close', () => {
          clearTimeout(timer);
          resolve({ status, body });
        });
      }),
    close: () => session.destroy(),
  };
}

async function issue(ca: CertificateAuthority, spiffeId: string): Promise<{ key: string; cert: string }> {
  const keys = await generateP256();
  const cert = await ca.sign(keys.publicKey, { spiffeId, ttlMs: 3600_000 });
  return { key: await privateKeyToPem(keys.privateKey), cert };
}

const series = (text: string, name: string): string[] => text.split('\n').filter((l) => l.startsWith(`${name}{`));

t.test("the destination agent labels tunnelled traffic with the caller's workload", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-tunnel-source-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const quiet = () => undefined;
  const api: Backend = await startBackend({ name: 'api-0', host: API_IP, port: 0, log: quiet });
  const echo: Backend = await startBackend({ name: 'echo-0', host: ECHO_IP, port: 0, tcpEchoPort: 0, log: quiet });
  t.teardown(() => Promise.all([api.close(), echo.close()]));

  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  writeFileSync(join(dir, 'node-a.token'), ca.issueNodeToken('node-a'));
  writeFileSync(join(dir, 'node-b.token'), ca.issueNodeToken('node-b'));
  const tunnelPort = await freePort(NODE_B);
  const base = { tunnelPort, dir, apiPort: api.port, echoPort: echo.tcpEchoPort! };
  const caView = parseConfig(meshYaml({ ...base, caUrl: 'https://127.0.0.1:1', node: 'node-b', address: NODE_B, reporter: true }), 'ca-view');
  const caServer = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: authorizerFromIdentities(identitiesByNodeFromConfig(caView)) });
  t.teardown(() => caServer.close());

  const linesB: Record<string, any>[] = [];
  const b = await startLoopbackAgent(meshYaml({ ...base, caUrl: caServer.url, node: 'node-b', address: NODE_B, reporter: false }), { log: capture(linesB) });
  t.teardown(() => b.stop());
  const a = await startLoopbackAgent(meshYaml({ ...base, caUrl: caServer.url, node: 'node-a', address: NODE_A, reporter: true }));
  t.teardown(() => a.stop());
  const metricsB = async () => (await fetch(`http://${NODE_B}:${b.metricsPort}/metrics`)).text();
  t.notOk(
    (await b.configDump()).workloads.some((w: any) => w.name === REPORTER_POD),
    "node-b does not know reporter's pod",
  );

  const access = (pred: (l: Record<string, any>) => boolean) => linesB.filter((l) => l.msg === 'access' && l.direction === 'inbound' && pred(l));
  async function accessLine(what: string, pred: (l: Record<string, any>) => boolean): Promise<Record<string, any>> {
    const end = Date.now() + 5000;
    for (;;) {
      const l = access(pred)[0];
      if (l) return l;
      if (Date.now() > end) throw new Error(`no access line on node-b for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  await t.test('HTTP from a pod node-b knows: its own record, and the description agrees', async (t) => {
    a.route(CLIENT_IP, '10.96.0.20:80', 'shop/client-0');
    for (let i = 0; i < 2; i++) t.equal((await a.get(CLIENT_IP, '10.96.0.20:80', '/known')).status, 200);
    const m = await metricsB();
    t.match(
      series(m, 'weft_requests_total').join('\n'),
      /source_workload="client-0",source_namespace="shop",destination_service="shop\/api-0",destination_workload="api-0",response_code="200",grpc_status="",connection_security_policy="mutual_tls",source_canonical_service="client",destination_canonical_service="api"\} 2/,
    );
    const l = await accessLine('/known', (x) => x.path === '/known');
    t.equal(l.src_workload, 'shop/client-0', 'access log: the calling pod');
    t.equal(l.src_ip, CLIENT_IP, "the pod's address, as node-b knows it");
    t.equal(l.principal, 'cluster.local/ns/shop/sa/client');
    t.same(
      linesB.filter((x) => x.msg === 'source baggage ignored'),
      [],
      'the description agreed with what node-b knows',
    );
  });

  await t.test('HTTP from a pod node-b does not know: the workload its agent described', async (t) => {
    a.route(REPORTER_IP, '10.96.0.20:80', `shop/${REPORTER_POD}`);
    for (let i = 0; i < 3; i++) t.equal((await a.get(REPORTER_IP, '10.96.0.20:80', '/described')).status, 200);
    const m = await metricsB();
    t.match(
      series(m, 'weft_requests_total').join('\n'),
      /source_workload="reporter",source_namespace="shop",destination_service="shop\/api-0",destination_workload="api-0",response_code="200",grpc_status="",connection_security_policy="mutual_tls",source_canonical_service="reports",destination_canonical_service="api"\} 3/,
      'the workload (not the pod) and its canonical service (app.kubernetes.io/name)',
    );
    t.match(
      series(m, 'weft_request_duration_seconds_count').join('\n'),
      /source_workload="reporter",source_namespace="shop",.*source_canonical_service="reports",destination_canonical_service="api"\} 3/,
    );
    t.notMatch(m, new RegExp(REPORTER_POD), 'no pod name in a label');
    const l = await accessLine('/described', (x) => x.path === '/described');
    t.equal(l.src_workload, `shop/${REPORTER_POD}`, 'access log: the calling pod, as described');
    t.equal(l.principal, 'cluster.local/ns/shop/sa/client', 'the principal is the certificate’s');
    t.equal(l.src_ip, NODE_A, 'the address is the peer agent’s: node-b does not take an unknown pod address on its word');
    // Still counted after a config change (retainWorkloads removes series of gone workloads).
    b.update(meshYaml({ ...base, caUrl: caServer.url, node: 'node-b', address: NODE_B, reporter: false }).replace('labels: { app: echo }', 'labels: { app: echo, v: "2" }'));
    await new Promise((r) => setTimeout(r, 200));
    t.match(series(await metricsB(), 'weft_requests_total').join('\n'), /source_workload="reporter".*\} 3/, 'a described workload that keeps calling is not pruned');
  });

  await t.test('TCP from a pod node-b does not know', async (t) => {
    t.match(await echoThrough(a, { ip: REPORTER_IP, workload: `shop/${REPORTER_POD}` }, '10.96.0.40:7000', 'tcp-described'), /tcp-described/);
    const l = await accessLine('reporter tcp', (x) => x.protocol === 'tcp' && x.src_workload === `shop/${REPORTER_POD}`);
    t.equal(l.principal, 'cluster.local/ns/shop/sa/client');
    const m = await metricsB();
    t.match(
      series(m, 'weft_tcp_connections_opened_total').join('\n'),
      /source_workload="reporter",source_namespace="shop",source_canonical_service="reports",destination_service="shop\/echo-0",connection_security_policy="mutual_tls"\} 1/,
    );
    t.match(series(m, 'weft_tcp_sent_bytes_total').join('\n'), /source_workload="reporter",.*\} [1-9]/);
    const hop = await accessLine('hbone line', (x) => x.protocol === 'hbone' && x.src_workload === `shop/${REPORTER_POD}`);
    t.equal(hop.src_principal, 'cluster.local/ns/shop/sa/client', 'the tunnel stream line names the described pod too');
    // And from client-0 (known): the same counter, its own series.
    t.match(await echoThrough(a, { ip: CLIENT_IP, workload: 'shop/client-0' }, '10.96.0.40:7000', 'tcp-known'), /tcp-known/);
    t.match(
      series(await metricsB(), 'weft_tcp_connections_opened_total').join('\n'),
      /source_workload="client-0",source_namespace="shop",source_canonical_service="client",destination_service="shop\/echo-0",connection_security_policy="mutual_tls"\} 1/,
    );
  });

  const root = ca.rootPem;
  const api0 = `${API_IP}:${api.port}`;
  const echo0 = `${ECHO_IP}:${echo.tcpEchoPort}`;
  const get = (path: string) => `GET ${path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n`;

  await t.test('a hostile agent: a description of another namespace is ignored', async (t) => {
    const id = await issue(ca, 'spiffe://cluster.local/ns/shop/sa/client');
    const c = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameFor('shop', 'api') });
    t.teardown(() => c.close());
    const r = await c.exchange(api0, { baggage: 'k8s.namespace.name=bank,k8s.workload.name=vault,service.name=vault,k8s.pod.name=vault-0' }, get('/hostile-ns'));
    t.equal(r.status, 200, 'the connection itself is served: its identity is valid');
    t.match(r.body, /^HTTP\/1.1 200/);
    const l = await accessLine('/hostile-ns', (x) => x.path === '/hostile-ns');
    t.equal(l.src_workload, undefined, 'no calling pod in the access line');
    t.equal(l.principal, 'cluster.local/ns/shop/sa/client');
    const m = await metricsB();
    t.notMatch(m, /bank|vault/, 'neither the claimed namespace nor the workload in any label');
    t.match(
      series(m, 'weft_requests_total').join('\n'),
      /source_workload="unknown",source_namespace="shop",destination_service="shop\/api-0".*source_canonical_service="unknown"/,
      "the verified identity's namespace",
    );
    const ignored = linesB.filter((x) => x.msg === 'source baggage ignored');
    t.equal(ignored.length, 1, 'one debug line');
    t.equal(ignored[0]?.level, 20, 'at debug');
    t.match(ignored[0]?.reason, /names namespace bank, the verified peer is of shop/);
  });

  await t.test('a hostile agent: a description that contradicts a pod node-b knows is ignored', async (t) => {
    const id = await issue(ca, 'spiffe://cluster.local/ns/shop/sa/client');
    const c = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameFor('shop', 'api') });
    t.teardown(() => c.close());
    const r = await c.exchange(api0, { forwarded: `for=${CLIENT_IP}`, baggage: 'k8s.namespace.name=shop,k8s.workload.name=impostor,k8s.pod.name=impostor-0' }, get('/contradicts'));
    t.equal(r.status, 200);
    const l = await accessLine('/contradicts', (x) => x.path === '/contradicts');
    t.equal(l.src_workload, 'shop/client-0', 'node-b keeps what it knows');
    t.notMatch(await metricsB(), /impostor/);
    t.ok(linesB.some((x) => x.msg === 'source baggage ignored' && /disagrees with the source pod known here/.test(x.reason)));
  });

  await t.test('a description never authorizes', async (t) => {
    const stranger = await issue(ca, 'spiffe://cluster.local/ns/shop/sa/stranger');
    const c = rawClient(tunnelPort, { ...stranger, ca: root, servername: serverNameFor('shop', 'echo') });
    t.teardown(() => c.close());
    const r = await c.exchange(echo0, { forwarded: `for=${CLIENT_IP}`, baggage: 'k8s.namespace.name=shop,k8s.workload.name=client-0,service.name=client,k8s.pod.name=client-0' }, 'hello');
    t.equal(r.status, 403, 'echo admits shop/sa/client only: a stranger describing itself as client-0 is still the stranger');
    t.ok(
      linesB.some((x) => x.msg === 'source baggage ignored' && /names pod shop\/client-0, which runs as client/.test(x.reason)),
      'and its description of a pod node-b knows is not believed either',
    );
    const bad = await c.exchange(echo0, { baggage: `k8s.namespace.name=shop,k8s.workload.name=${'x'.repeat(1100)}` }, 'hello');
    t.equal(bad.status, 403);
    t.ok(
      linesB.some((x) => x.msg === 'source baggage ignored' && /longer than 1024/.test(x.reason)),
      'an over-long description: a debug line',
    );
  });
});
