/**
 * The access log's schema (src/telemetry/access-log.ts, docs/access-log.md) on real traffic:
 * two in-process agents on loopback (node-a 127.0.0.1, node-b 127.0.0.2) joined by the mTLS
 * tunnel, a `weft ca` in this process, real backends on node-b. HTTP/1.1, HTTP/2 (h2c), gRPC
 * and TCP requests produce principal, request_id, route, upstream_cluster and
 * response_flags, and every access line either agent wrote validates against
 * docs/access-log.schema.json.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Ajv2020 } from 'ajv/dist/2020.js';
import pino from 'pino';
import t from 'tap';
import { freePort } from '../../bench/lib/net.js';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { authorizerFromIdentities, identitiesByNodeFromConfig, startCaServer } from '../../src/identity/ca-server.js';
import { parseConfig } from '../../src/config/load.js';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { isoTime } from '../../src/telemetry/log.js';
import { repoRoot } from '../../src/repo-root.js';
import { echoClient, grpc, unary } from '../lib/grpc-client.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';

const NODE_A = '127.0.0.1';
const NODE_B = '127.0.0.2';
const CLIENT_IP = '127.0.2.1';
const API_IP = '127.0.1.1';
const ECHO_IP = '127.0.1.2';
const CLIENT = 'cluster.local/ns/shop/sa/client';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A pino logger as the agent's (createLogger's options), writing its lines into `lines`. */
function capture(lines: Record<string, any>[]): pino.Logger {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return pino({ level: 'info', base: { pid: process.pid }, timestamp: isoTime }, sink);
}

function meshYaml(o: { node: string; address: string; tunnelPort: number; caUrl: string; dir: string; apiPort: number; echoPort: number; grpcPort: number }): string {
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
workloads:
  - { name: client-0, namespace: shop, node: node-a, ip: ${CLIENT_IP}, serviceAccount: client, labels: { app: client } }
  - { name: api-0, namespace: shop, node: node-b, ip: ${API_IP}, serviceAccount: api, labels: { app: api } }
  - { name: echo-0, namespace: shop, node: node-b, ip: ${ECHO_IP}, serviceAccount: echo, labels: { app: echo } }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: ${o.apiPort}, protocol: http } ], selector: { app: api } }
  - { name: echo, namespace: shop, vip: 10.96.0.40, ports: [ { port: 7000, targetPort: ${o.echoPort}, protocol: tcp } ], selector: { app: echo } }
  - { name: grpc-api, namespace: shop, vip: 10.96.0.50, ports: [ { port: 9090, targetPort: ${o.grpcPort}, protocol: grpc } ], selector: { app: api } }
  - { name: ghost, namespace: shop, vip: 10.96.0.60, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: ghost } }
routes:
  - name: api-items
    namespace: shop
    parentRefs: [ { name: api, port: 80 } ]
    rules:
      - name: items
        matches: [ { path: { type: PathPrefix, value: /items } } ]
        backendRefs: [ { name: api, port: 80 } ]
policies:
  - name: no-forbidden-calls
    namespace: shop
    selector: { app: api }
    action: DENY
    rules: [ { to: [ { paths: [/weft.demo.Echo/Forbidden] } ] } ]
`;
}

t.test('access log fields on real traffic, and every line against the schema', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-access-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const quiet = () => undefined;
  const api: Backend = await startBackend({ name: 'api-0', host: API_IP, port: 0, grpcPort: 0, log: quiet });
  const echo: Backend = await startBackend({ name: 'echo-0', host: ECHO_IP, port: 0, tcpEchoPort: 0, log: quiet });
  t.teardown(() => Promise.all([api.close(), echo.close()]));

  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  writeFileSync(join(dir, 'node-a.token'), ca.issueNodeToken('node-a'));
  writeFileSync(join(dir, 'node-b.token'), ca.issueNodeToken('node-b'));
  const tunnelPort = await freePort(NODE_B);
  const base = { tunnelPort, dir, apiPort: api.port, echoPort: echo.tcpEchoPort!, grpcPort: api.grpcPort! };
  const caView = parseConfig(meshYaml({ ...base, caUrl: 'https://127.0.0.1:1', node: 'node-b', address: NODE_B }), 'ca-view');
  const caServer = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: authorizerFromIdentities(identitiesByNodeFromConfig(caView)) });
  t.teardown(() => caServer.close());

  const linesA: Record<string, any>[] = [];
  const linesB: Record<string, any>[] = [];
  const b = await startLoopbackAgent(meshYaml({ ...base, caUrl: caServer.url, node: 'node-b', address: NODE_B }), { log: capture(linesB) });
  t.teardown(() => b.stop());
  const a = await startLoopbackAgent(meshYaml({ ...base, caUrl: caServer.url, node: 'node-a', address: NODE_A }), { log: capture(linesA) });
  t.teardown(() => a.stop());

  const access = (lines: Record<string, any>[], pred: (l: Record<string, any>) => boolean) => lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('access') && pred(l));
  async function line(lines: Record<string, any>[], what: string, pred: (l: Record<string, any>) => boolean): Promise<Record<string, any>> {
    const end = Date.now() + 5000;
    for (;;) {
      const l = access(lines, pred)[0];
      if (l) return l;
      if (Date.now() > end) throw new Error(`no access line for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  await t.test('HTTP/1.1: request_id made and sent upstream, principal, route, upstream_cluster, on both agents', async (t) => {
    a.route(CLIENT_IP, '10.96.0.20:80', 'shop/client-0');
    const r = await a.get(CLIENT_IP, '10.96.0.20:80', '/items/1');
    t.equal(r.status, 200);
    const seen = JSON.parse(r.body).headers['x-request-id'];
    t.match(seen, UUID, 'the application received a generated x-request-id');
    const out = await line(linesA, 'node-a /items/1', (l) => l.path === '/items/1');
    t.match(out, {
      direction: 'outbound',
      protocol: 'http/1.1',
      request_id: seen,
      principal: CLIENT,
      route: 'shop/api-items',
      rule: 'items',
      upstream_cluster: 'outbound|80||api.shop.svc',
      security: 'mutual_tls',
      status: 200,
      response_flags: '-',
    });
    const inb = await line(linesB, 'node-b /items/1', (l) => l.path === '/items/1');
    t.match(inb, { direction: 'inbound', request_id: seen, principal: CLIENT, status: 200, response_flags: '-' }, 'the destination agent logs the same id and the verified peer');
    t.match(inb.upstream_cluster, /^inbound\|\d+\|\|$/);
  });

  await t.test("HTTP/1.1: the caller's x-request-id is kept", async (t) => {
    const r = await a.get(CLIENT_IP, '10.96.0.20:80', '/items/2', { 'x-request-id': 'caller-chose-this' });
    t.equal(JSON.parse(r.body).headers['x-request-id'], 'caller-chose-this');
    t.match(await line(linesA, 'node-a /items/2', (l) => l.path === '/items/2'), { request_id: 'caller-chose-this' });
    t.match(await line(linesB, 'node-b /items/2', (l) => l.path === '/items/2'), { request_id: 'caller-chose-this' });
  });

  await t.test('response_flags from the error kind: NR (no route), UH (no healthy upstream)', async (t) => {
    const nr = await a.get(CLIENT_IP, '10.96.0.20:80', '/elsewhere');
    t.equal(nr.status, 404);
    t.match(await line(linesA, 'no route', (l) => l.path === '/elsewhere'), { status: 404, error: 'no_route', response_flags: 'NR' });
    // Another source address: a new connection (the client's keep-alive one is bound to the api VIP).
    a.route('127.0.2.2', '10.96.0.60:80', 'shop/client-0');
    const uh = await a.get('127.0.2.2', '10.96.0.60:80', '/ghost');
    t.equal(uh.status, 503);
    t.match(await line(linesA, 'no healthy upstream', (l) => l.path === '/ghost'), {
      status: 503,
      error: 'no_healthy_upstream',
      response_flags: 'UH',
      upstream_cluster: 'outbound|80||ghost.shop.svc',
    });
  });

  await t.test('HTTP/2 (h2c prior knowledge)', async (t) => {
    a.route(NODE_A, '10.96.0.20:80', 'shop/client-0');
    const session = http2.connect(`http://127.0.0.1:${a.outboundPort}`, { localAddress: NODE_A } as never);
    t.teardown(() => session.close());
    const status = await new Promise<number>((resolve, reject) => {
      const s = session.request({ ':path': '/items/h2', ':authority': '10.96.0.20' });
      let st = 0;
      s.on('response', (h) => (st = Number(h[':status'])));
      s.on('error', reject);
      s.resume();
      s.on('end', () => resolve(st));
    });
    t.equal(status, 200);
    const out = await line(linesA, 'h2 request', (l) => l.path === '/items/h2');
    t.match(out, { protocol: 'h2', request_id: UUID, principal: CLIENT, route: 'shop/api-items', upstream_cluster: 'outbound|80||api.shop.svc', response_flags: '-' });
    t.match(await line(linesB, 'h2 at node-b', (l) => l.path === '/items/h2'), { request_id: out.request_id });
  });

  await t.test('gRPC: each call its own request_id; a denied call is RBAC', async (t) => {
    a.route(NODE_A, '10.96.0.50:9090', 'shop/client-0');
    const c = echoClient(`127.0.0.1:${a.outboundPort}`);
    t.teardown(() => c.close());
    t.equal((await unary(c, 'Get')).code, 0);
    t.equal((await unary(c, 'Get')).code, 0);
    const denied = await unary(c, 'Forbidden');
    t.equal(denied.code, grpc.status.PERMISSION_DENIED);
    await line(linesB, 'denied call', (l) => l.path === '/weft.demo.Echo/Forbidden');
    const calls = access(linesA, (l) => l.path === '/weft.demo.Echo/Get');
    t.equal(calls.length, 2);
    t.not(calls[0]!.request_id, calls[1]!.request_id, 'one id per call, not per connection');
    t.match(calls[0], { protocol: 'h2', grpc_status: 0, principal: CLIENT, upstream_cluster: 'outbound|9090||grpc-api.shop.svc', response_flags: '-' });
    t.match(await line(linesB, 'denied call', (l) => l.path === '/weft.demo.Echo/Forbidden'), { error: 'denied', response_flags: 'RBAC', grpc_status: 7, principal: CLIENT });
  });

  await t.test('TCP: principal, upstream_cluster, response_flags', async (t) => {
    a.route(CLIENT_IP, '10.96.0.40:7000', 'shop/client-0');
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: a.outboundPort, localAddress: CLIENT_IP });
      let got = '';
      s.on('connect', () => s.write('ping'));
      s.on('data', (d) => {
        got += d.toString();
        if (got.includes('ping')) s.end();
      });
      s.on('close', () => resolve());
      s.on('error', reject);
    });
    const out = await line(linesA, 'tcp on node-a', (l) => l.protocol === 'tcp' && l.dst === '10.96.0.40:7000');
    t.match(out, { direction: 'outbound', principal: CLIENT, upstream_cluster: 'outbound|7000||echo.shop.svc', security: 'mutual_tls', response_flags: '-' });
    t.ok(out.sent_bytes >= 4 && out.received_bytes >= 4);
  });

  await t.test('every access line validates against docs/access-log.schema.json', async (t) => {
    const schema = JSON.parse(readFileSync(join(repoRoot(), 'docs/access-log.schema.json'), 'utf8'));
    const validate = new Ajv2020({ allErrors: true, strict: true }).compile(schema);
    const all = [...access(linesA, () => true), ...access(linesB, () => true)];
    t.ok(all.length >= 15, `${all.length} access lines`);
    const kinds = new Set(all.map((l) => l.protocol));
    t.same([...kinds].sort(), ['h2', 'hbone', 'http/1.1', 'tcp'], 'lines of every protocol were checked');
    const bad = all.filter((l) => !validate(l)).map((l) => ({ line: l, errors: validate.errors }));
    t.same(bad, [], 'no line outside the schema');
  });
});
