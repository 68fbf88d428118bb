// The mTLS tunnel between two agents, on loopback: node-a (127.0.0.1) and node-b
// (127.0.0.2), each an in-process agent, sharing a `weft ca` server that runs in this
// process. Pods are loopback addresses: the backends of node-b listen on 127.0.1.x, the
// client of node-a dials from 127.0.2.1. Raw TLS + HTTP/2 clients check what the tunnel
// port refuses. Certificates live 3s, so they rotate several times during the test.
import t from 'tap';
import http2, { type ClientHttp2Session } from 'node:http2';
import net from 'node:net';
import * as tls from 'node:tls';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { authorizerFromIdentities, identitiesByNodeFromConfig, startCaServer, type CaServer } from '../../src/identity/ca-server.js';
import { generateP256, privateKeyToPem } from '../../src/identity/x509.js';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { parseConfig } from '../../src/config/load.js';
import { checkPeerIdentity } from '../../src/proxy/hbone-tunnel.js';
import { identityOfServerName, podOfServerName, serverNameFor, serverNameForPod } from '../../src/proxy/hbone.js';
import { echoThrough, startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { freePort } from '../../bench/lib/net.js';
import { echoClient, grpc, unary } from '../lib/grpc-client.js';

const NODE_A = '127.0.0.1';
const NODE_B = '127.0.0.2';
const CLIENT_IP = '127.0.2.1';
const API_IP = '127.0.1.1';
const ECHO_IP = '127.0.1.2';

function meshYaml(o: { node: string; address: string; tunnelPort: number; caUrl: string; dir: string; apiPort: number; echoPort: number; grpcPort?: number; extra?: string }): string {
  return `
node: { name: ${o.node}, address: ${o.address} }
nodes:
  - { name: node-a, address: ${NODE_A} }
  - { name: node-b, address: ${NODE_B} }
ports: { outbound: 0, inbound: 0, tunnel: ${o.tunnelPort}, admin: 0, metrics: 0 }
ca: { url: "${o.caUrl}", rootCert: ${o.dir}/ca/root.pem, tokenFile: ${o.dir}/${o.node}.token, certTtl: 3s }
stateDir: ${o.dir}/${o.node}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: client-0, namespace: shop, node: node-a, ip: ${CLIENT_IP}, serviceAccount: client, labels: { app: client } }
  - { name: sneaky-0, namespace: shop, node: node-a, ip: 127.0.2.9, serviceAccount: sneaky, labels: { app: sneaky } }
  - { name: api-0, namespace: shop, node: node-b, ip: ${API_IP}, serviceAccount: api, labels: { app: api } }
  # peerIdentity: node-a does not know echo-0's service account (in Kubernetes: a remote
  # endpoint from an EndpointSlice); node-b, where it runs, does.
  - { name: echo-0, namespace: shop, node: node-b, ip: ${ECHO_IP}, serviceAccount: echo, peerIdentity: true, labels: { app: echo } }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: ${o.apiPort}, protocol: http } ], selector: { app: api }, trafficPolicy: { connectionPool: { connectTimeout: 1s } } }
  - { name: echo, namespace: shop, vip: 10.96.0.40, ports: [ { port: 7000, targetPort: ${o.echoPort}, protocol: tcp } ], selector: { app: echo } }
  - { name: grpc-api, namespace: shop, vip: 10.96.0.50, ports: [ { port: 9090, targetPort: ${o.grpcPort ?? 9090}, protocol: grpc } ], selector: { app: api } }
${o.extra ?? ''}`;
}

interface RawTunnelClient {
  session: ClientHttp2Session;
  /** CONNECT `authority`; resolves with the status (0 when the stream or session failed first). */
  connect(authority: string, headers?: Record<string, string>): Promise<{ status: number; stream: http2.ClientHttp2Stream; error?: string }>;
  close(): void;
}

/** A TLS + HTTP/2 client to node-b's tunnel port, with whatever certificate (or none) the test gives it. */
function rawClient(port: number, opts: { key?: string; cert?: string; ca: string; servername: string }): RawTunnelClient {
  const session = http2.connect(`https://${NODE_B}:${port}`, {
    createConnection: () =>
      tls.connect({
        host: NODE_B,
        port,
        servername: opts.servername,
        ca: opts.ca,
        ...(opts.key ? { key: opts.key, cert: opts.cert } : {}),
        ALPNProtocols: ['h2'],
        minVersion: 'TLSv1.3',
        checkServerIdentity: () => undefined,
      }),
  });
  session.on('error', () => undefined);
  return {
    session,
    connect: (authority, headers = {}) =>
      new Promise((resolve) => {
        let stream: http2.ClientHttp2Stream;
        try {
          stream = session.request({ ':method': 'CONNECT', ':authority': authority, ...headers });
        } catch (err) {
          resolve({ status: 0, stream: undefined as never, error: (err as Error).message });
          return;
        }
        const timer = setTimeout(() => resolve({ status: 0, stream, error: 'timeout' }), 5000);
        stream.on('error', (err) => {
          clearTimeout(timer);
          resolve({ status: 0, stream, error: err.message });
        });
        stream.on('close', () => {
          clearTimeout(timer);
          resolve({ status: 0, stream, error: 'closed' });
        });
        stream.on('response', (h) => {
          clearTimeout(timer);
          resolve({ status: Number(h[':status']), stream });
        });
      }),
    close: () => session.destroy(),
  };
}

/** A key and a certificate for `spiffeId` signed by `ca`. */
async function issue(ca: CertificateAuthority, spiffeId: string): Promise<{ key: string; cert: string }> {
  const keys = await generateP256();
  const cert = await ca.sign(keys.publicKey, { spiffeId, ttlMs: 3600_000 });
  return { key: await privateKeyToPem(keys.privateKey), cert };
}

/** The agent's Prometheus text, from its node address (loopback-agent assumes 127.0.0.1). */
async function metricsOf(agent: LoopbackAgent, address: string): Promise<string> {
  const res = await fetch(`http://${address}:${agent.metricsPort}/metrics`);
  return res.text();
}

function metric(text: string, name: string, match: RegExp): number {
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(name) && match.test(line)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

/** One TCP exchange from client-0 through agent A to the echo VIP. */
const echoThroughVip = (a: LoopbackAgent, payload: string) => echoThrough(a, { ip: CLIENT_IP, workload: 'shop/client-0' }, '10.96.0.40:7000', payload);

t.test('mTLS tunnel between two agents', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-tunnel-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const quiet = () => undefined;

  const api: Backend = await startBackend({ name: 'api-0', host: API_IP, port: 0, grpcPort: 0, log: quiet });
  const echo: Backend = await startBackend({ name: 'echo-0', host: ECHO_IP, port: 0, tcpEchoPort: 0, log: quiet });
  t.teardown(() => Promise.all([api.close(), echo.close()]));

  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  writeFileSync(join(dir, 'node-a.token'), ca.issueNodeToken('node-a'));
  writeFileSync(join(dir, 'node-b.token'), ca.issueNodeToken('node-b'));
  const tunnelPort = await freePort(NODE_B);
  const base = { tunnelPort, caUrl: 'https://127.0.0.1:1', dir, apiPort: api.port, echoPort: echo.tcpEchoPort!, grpcPort: api.grpcPort! };
  // The CA's own view: sneaky-0 runs on node-b, whatever node-a's config claims.
  const caView = parseConfig(meshYaml({ ...base, node: 'node-b', address: NODE_B }).replace('node: node-a, ip: 127.0.2.9', 'node: node-b, ip: 127.0.2.9'), 'ca-view');
  let caServer: CaServer | undefined = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: authorizerFromIdentities(identitiesByNodeFromConfig(caView)) });
  t.teardown(() => caServer?.close());

  const policy = `policies:
  - name: echo-from-client
    namespace: shop
    selector: { app: echo }
    action: ALLOW
    rules: [ { from: [ { principals: [cluster.local/ns/shop/sa/client] } ] } ]
  - name: no-forbidden-calls
    namespace: shop
    selector: { app: api }
    action: DENY
    rules: [ { to: [ { paths: [/weft.demo.Echo/Forbidden] } ] } ]`;
  const yaml = (node: string, address: string) => meshYaml({ ...base, caUrl: caServer!.url, node, address, extra: policy });
  const b = await startLoopbackAgent(yaml('node-b', NODE_B));
  t.teardown(() => b.stop());
  const a = await startLoopbackAgent(yaml('node-a', NODE_A));
  t.teardown(() => a.stop());
  const dumpB = await b.configDump();
  t.equal(dumpB.node.name, 'node-b');

  await t.test('HTTP across nodes goes through the tunnel', async (t) => {
    a.route(CLIENT_IP, '10.96.0.20:80', 'shop/client-0');
    const r = await a.get(CLIENT_IP, '10.96.0.20:80', '/items?via=tunnel');
    t.equal(r.status, 200);
    t.equal(r.headers['x-pod'], 'api-0');
    const body = JSON.parse(r.body);
    t.equal(body.path, '/items?via=tunnel');
    const ma = await a.metrics();
    t.ok(metric(ma, 'weft_requests_total', /source_workload="client-0".*destination_service="shop\/api".*connection_security_policy="mutual_tls"/) >= 1, 'source side: mutual_tls');
    const mb = await metricsOf(b, NODE_B);
    t.ok(metric(mb, 'weft_requests_total', /destination_workload="api-0".*connection_security_policy="mutual_tls"/) >= 1, 'destination side: mutual_tls');
    const da = await a.configDump();
    const client = da.identity.certificates.find((c: any) => c.identity === 'cluster.local/ns/shop/sa/client');
    t.equal(client?.state, 'valid', 'node-a holds a certificate for its client workload');
    t.notOk(
      da.identity.certificates.some((c: any) => c.identity.endsWith('/sa/api')),
      'and none for workloads of node-b',
    );
    t.ok(
      da.tunnel.sessions.some((s: any) => s.source === 'shop/client' && s.destination === 'shop/api'),
      'a pooled session per (peer, source, destination)',
    );
    t.match(ma, /weft_cert_expiry_seconds\{identity="cluster.local\/ns\/shop\/sa\/client"\} \d/, 'cert expiry gauge per identity');
  });

  await t.test('gRPC across nodes: the HTTP/2 streams ride the tunnel, the destination authorizes each call', async (t) => {
    a.route('127.0.0.1', '10.96.0.50:9090', 'shop/client-0');
    const c = echoClient(`127.0.0.1:${a.outboundPort}`);
    t.teardown(() => c.close());
    for (let i = 0; i < 5; i++) {
      const r = await unary(c, 'Get');
      t.equal(r.code, 0, `call ${i} answered`);
      t.equal(r.body?.pod, 'api-0');
    }
    const denied = await unary(c, 'Forbidden');
    t.equal(denied.code, grpc.status.PERMISSION_DENIED, 'a denied method on the same channel: PERMISSION_DENIED');
    t.equal(denied.metadata?.['x-weft-error'], 'denied');
    const streamed: number = await new Promise((resolve, reject) => {
      let n = 0;
      const s = c.Stream(Buffer.from('20'));
      s.on('data', () => n++);
      s.on('error', reject);
      s.on('end', () => resolve(n));
    });
    t.equal(streamed, 20, 'a server-streaming call across nodes');
    const mb = await metricsOf(b, NODE_B);
    t.ok(metric(mb, 'weft_authz_denied_total', /policy="[^"]*no-forbidden-calls"/) >= 1, 'denied by node-b, where the destination lives');
    t.ok(metric(mb, 'weft_requests_total', /destination_workload="api-0".*grpc_status="0",connection_security_policy="mutual_tls"/) >= 5, 'node-b counted the calls, mutual_tls');
  });

  await t.test('TCP across nodes, authorized with the peer principal', async (t) => {
    const got = await echoThroughVip(a, 'ping-over-mtls');
    t.match(got, /ping-over-mtls/);
    const mb = await metricsOf(b, NODE_B);
    t.ok(
      metric(mb, 'weft_tcp_connections_opened_total', /source_workload="client-0",source_namespace="shop".*connection_security_policy="mutual_tls"/) >= 1,
      'the destination labels tunnelled TCP mutual_tls, and believes the forwarded source pod of the verified identity',
    );
    // A connection held open keeps its session listed (certificates rotate every 3s, and a
    // rotation retires idle sessions).
    a.route(CLIENT_IP, '10.96.0.40:7000', 'shop/client-0');
    const held = net.connect({ host: '127.0.0.1', port: a.outboundPort, localAddress: CLIENT_IP });
    t.teardown(() => held.destroy());
    held.write('hold');
    await new Promise((r) => held.once('data', r));
    const da = await a.configDump();
    held.end();
    t.equal(da.workloads.find((w: any) => w.name === 'echo-0').serviceAccount, '', "node-a does not know echo-0's service account");
    t.ok(
      da.tunnel.sessions.some((s: any) => s.source === 'shop/client' && s.destination === `pod:shop/${ECHO_IP}` && s.destinationPrincipal === 'cluster.local/ns/shop/sa/echo' && s.streams >= 1),
      `so it asked node-b for the pod, and learnt its identity (${JSON.stringify(da.tunnel.sessions)})`,
    );
  });

  const root = ca.rootPem;
  const api0 = `${API_IP}:${api.port}`;
  const echo0 = `${ECHO_IP}:${echo.tcpEchoPort}`;

  await t.test('a client without a certificate is refused', async (t) => {
    const c = rawClient(tunnelPort, { ca: root, servername: serverNameFor('shop', 'api') });
    const r = await c.connect(api0);
    c.close();
    t.equal(r.status, 0, `no answer: ${r.error}`);
  });

  await t.test('a client with a certificate from another CA is refused', async (t) => {
    const other = await CertificateAuthority.open(join(dir, 'other-ca'));
    const id = await issue(other, 'spiffe://cluster.local/ns/shop/sa/client');
    const c = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameFor('shop', 'api') });
    const r = await c.connect(api0);
    c.close();
    t.equal(r.status, 0, `no answer: ${r.error}`);
  });

  await t.test('a client of the mesh CA: what a stream may and may not reach', async (t) => {
    const id = await issue(ca, 'spiffe://cluster.local/ns/shop/sa/client');
    const c = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameFor('shop', 'api') });
    t.teardown(() => c.close());
    const ok = await c.connect(api0, { 'x-weft-source': 'cluster.local/ns/shop/sa/admin' });
    t.equal(ok.status, 200, 'CONNECT to the pod of the identity the session asked for');
    const peerCert = (c.session.socket as tls.TLSSocket).getPeerCertificate();
    t.match(peerCert.subjectaltname, 'URI:spiffe://cluster.local/ns/shop/sa/api', "the server presents the destination workload's certificate");
    // Not half-closed: the server closes after the answer (connection: close), which ends the stream.
    ok.stream.write('GET /raw HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n');
    let text = '';
    for await (const chunk of ok.stream) text += chunk.toString();
    t.match(text, /^HTTP\/1.1 200/, 'HTTP served through the stream');
    t.match(text, /"path":"\/raw"/);
    t.equal((await c.connect(echo0)).status, 421, 'a pod of another identity is refused on this session');
    t.equal((await c.connect('127.0.1.99:80')).status, 404, 'not a local mesh destination');
    t.equal((await c.connect('not-an-address')).status, 400);
    const get = c.session.request({ ':method': 'GET', ':path': '/' });
    const status = await new Promise<number>((r) => get.on('response', (h) => r(Number(h[':status']))));
    get.close();
    t.equal(status, 405, 'only CONNECT');

    const e = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameFor('shop', 'echo') });
    t.teardown(() => e.close());
    const echoOk = await e.connect(echo0);
    t.equal(echoOk.status, 200, 'the policy allows shop/client to reach echo');
    echoOk.stream.end('hello');
    let echoed = '';
    for await (const chunk of echoOk.stream) echoed += chunk.toString();
    t.match(echoed, /hello/);

    const other = await issue(ca, 'spiffe://cluster.local/ns/shop/sa/stranger');
    const s = rawClient(tunnelPort, { ...other, ca: root, servername: serverNameFor('shop', 'echo') });
    t.teardown(() => s.close());
    t.equal((await s.connect(echo0)).status, 403, 'another principal is denied by policy, before the pod sees a byte');

    const byPod = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameForPod('shop', ECHO_IP) });
    t.teardown(() => byPod.close());
    const podOk = await byPod.connect(echo0);
    t.equal(podOk.status, 200, 'asked for by pod: the session is for the identity that pod runs as');
    podOk.stream.destroy();
    t.match((byPod.session.socket as tls.TLSSocket).getPeerCertificate().subjectaltname, 'URI:spiffe://cluster.local/ns/shop/sa/echo', "node-b presents the pod's identity");
    t.equal((await byPod.connect(api0)).status, 421, 'a pod of another identity is refused on that session too');
    for (const [name, why] of [
      [serverNameForPod('other', ECHO_IP), 'the pod is not of that namespace'],
      [serverNameForPod('shop', '127.0.1.99'), 'no such local pod'],
      [serverNameForPod('shop', CLIENT_IP), 'a pod of another node'],
    ] as const) {
      const x = rawClient(tunnelPort, { ...id, ca: root, servername: name });
      const r = await x.connect(echo0);
      x.close();
      t.equal(r.status, 0, `pod SNI ${name}: handshake fails (${why})`);
    }

    const n = rawClient(tunnelPort, { ...id, ca: root, servername: serverNameFor('shop', 'client') });
    const r = await n.connect(api0);
    n.close();
    t.equal(r.status, 0, 'a SNI for an identity that node-b does not run fails the handshake');
  });

  await t.test('the client checks the destination identity', async (t) => {
    const expected = 'spiffe://cluster.local/ns/shop/sa/api';
    t.equal(checkPeerIdentity(expected, { subjectaltname: `URI:${expected}` } as tls.PeerCertificate), undefined);
    t.match(checkPeerIdentity(expected, { subjectaltname: 'URI:spiffe://cluster.local/ns/shop/sa/echo' } as tls.PeerCertificate)?.message, /presented spiffe:\/\/cluster.local\/ns\/shop\/sa\/echo/);
    t.ok(checkPeerIdentity(expected, { subjectaltname: `URI:${expected}, URI:spiffe://cluster.local/ns/x/sa/y` } as tls.PeerCertificate), 'exactly one URI SAN');
    t.same(identityOfServerName(serverNameFor('shop', 'api.v2')), { namespace: 'shop', serviceAccount: 'api.v2' });
    t.equal(identityOfServerName('api.shop.example'), undefined);
    const anyOfShop = 'spiffe://cluster.local/ns/shop/sa/';
    t.equal(checkPeerIdentity(anyOfShop, { subjectaltname: 'URI:spiffe://cluster.local/ns/shop/sa/echo' } as tls.PeerCertificate), undefined, 'pod-form: any identity of the namespace');
    t.ok(checkPeerIdentity(anyOfShop, { subjectaltname: 'URI:spiffe://cluster.local/ns/shopping/sa/echo' } as tls.PeerCertificate), 'not another namespace');
    t.ok(checkPeerIdentity(anyOfShop, { subjectaltname: 'URI:spiffe://cluster.local/ns/shop/sa/echo/x' } as tls.PeerCertificate), 'not a longer path');
    t.same(podOfServerName(serverNameForPod('shop', '10.1.2.3')), { namespace: 'shop', ip: '10.1.2.3' });
    t.equal(podOfServerName('10-1-2-300.shop.weft-pod'), undefined);
    t.equal(identityOfServerName(serverNameForPod('shop', '10.1.2.3')), undefined, 'the two SNI forms never overlap');
    t.equal(podOfServerName(serverNameFor('shop', '10-1-2-3')), undefined);
  });

  await t.test('a node cannot obtain a certificate for a workload of another node', async (t) => {
    let sneaky: any;
    for (let i = 0; i < 50 && !(sneaky?.failures >= 1); i++) {
      sneaky = (await a.configDump()).identity.certificates.find((c: any) => c.identity === 'cluster.local/ns/shop/sa/sneaky');
      await new Promise((r) => setTimeout(r, 100));
    }
    t.equal(sneaky?.state, 'pending', 'node-a asked, the CA (which knows sneaky-0 runs on node-b) refused');
    t.ok(sneaky?.failures >= 1);
  });

  await t.test('a caller without a certificate waits for one, then fails', async (t) => {
    a.route('127.0.2.9', '10.96.0.20:80', 'shop/sneaky-0');
    const t0 = Date.now();
    const r = await a.get('127.0.2.9', '10.96.0.20:80', '/no-cert');
    t.equal(r.status, 503);
    t.equal(r.headers['x-weft-error'], 'connect_failure');
    t.ok(Date.now() - t0 >= 900, 'after waiting for the certificate up to the connect timeout');
  });

  await t.test('certificates rotate under load without a failed request', async (t) => {
    const seenA = new Set<string>();
    const seenB = new Set<string>();
    const failures: string[] = [];
    let requests = 0;
    const until = Date.now() + 8000;
    while (Date.now() < until) {
      const r = await a.get(CLIENT_IP, '10.96.0.20:80', `/loop/${requests}`).catch((err: Error) => ({ status: 0, body: err.message, headers: {} }));
      if (r.status !== 200) failures.push(`http ${r.status} ${r.body.slice(0, 200)}`);
      const e = await echoThroughVip(a, `n${requests}`).catch((err: Error) => `error ${err.message}`);
      if (!e.includes(`n${requests}`)) failures.push(`tcp ${e}`);
      requests++;
      const ca = (await a.configDump()).identity.certificates.find((c: any) => c.identity.endsWith('/sa/client'));
      const cb = (await b.configDump()).identity.certificates.find((c: any) => c.identity.endsWith('/sa/echo'));
      if (ca?.notAfter) seenA.add(ca.notAfter);
      if (cb?.notAfter) seenB.add(cb.notAfter);
      await new Promise((r) => setTimeout(r, 50));
    }
    t.same(failures, [], `${requests} HTTP requests and ${requests} TCP connections, none failed`);
    t.ok(seenA.size >= 3, `node-a's client certificate rotated (${seenA.size} seen)`);
    t.ok(seenB.size >= 3, `node-b's echo certificate rotated (${seenB.size} seen)`);
  });

  await t.test('the agents keep serving while the CA is down', async (t) => {
    await caServer!.close();
    caServer = undefined;
    const r = await a.get(CLIENT_IP, '10.96.0.20:80', '/ca-down');
    t.equal(r.status, 200, 'requests go on with the certificates in hand');
    t.match(await echoThroughVip(a, 'still-here'), /still-here/);
    let client: any;
    for (let i = 0; i < 50 && !(client?.failures >= 1); i++) {
      client = (await a.configDump()).identity.certificates.find((c: any) => c.identity.endsWith('/sa/client'));
      await new Promise((r) => setTimeout(r, 100));
    }
    t.ok(client?.failures >= 1, 'refresh failures are reported in config_dump');
  });
});
