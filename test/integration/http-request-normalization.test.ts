/**
 * What a request head becomes before it is authorized and forwarded (proxy/l7/): upgrades
 * that are refused or not switched leave the connection in HTTP mode (a request pipelined
 * after one is parsed and authorized), Host and absolute-form games are refused or rewritten,
 * paths are forwarded in the form that was authorized. Loopback agent, raw bytes, a backend
 * that records what it received.
 */
import t, { type Test } from 'tap';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';
import { RawClient, recordingServer, type RecordingServer } from '../lib/raw-http.js';

const POD = { name: 'api-0', ip: '127.0.43.1', app: 'api' };
const VIP = '10.96.0.20:80';
let clientN = 0;

const POLICIES = `
policies:
  - name: no-admin
    namespace: shop
    selector: { app: api }
    action: DENY
    rules:
      - to: [ { paths: [/admin, /admin/*] } ]
  - name: no-admin-host
    namespace: shop
    selector: { app: api }
    action: DENY
    rules:
      - to: [ { hosts: [admin.shop] } ]
`;

function clientIp(la: LoopbackAgent): string {
  const ip = `127.0.44.${10 + (clientN++ % 200)}`;
  la.route(ip, VIP, 'shop/client-0');
  return ip;
}

async function agentFor(t: Test, trafficPolicy?: string): Promise<LoopbackAgent> {
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api', policy: trafficPolicy }], POLICIES));
  t.teardown(() => la.stop());
  return la;
}

/** A backend that ignores any Upgrade and answers every request head with 200 (body: its request line). */
async function plainBackend(t: Test): Promise<RecordingServer & { heads(): string[] }> {
  const rec = await recordingServer(POD.ip, 8080, (s, d) => {
    void d;
    const all = rec.bytes.toString('latin1').split('\r\n\r\n');
    const n = all.length - 1;
    const answered = (s as unknown as { answered?: number }).answered ?? 0;
    for (let i = answered; i < n; i++) {
      const line = all[i]!.split('\r\n')[0]!;
      s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${line.length}\r\n\r\n${line}`);
    }
    (s as unknown as { answered?: number }).answered = n;
  });
  t.teardown(() => rec.close());
  return Object.assign(rec, { heads: () => rec.bytes.toString('latin1').split('\r\n\r\n').slice(0, -1) });
}

t.test('an upgrade the upstream does not switch: the next request on the connection is authorized', async (t) => {
  const backend = await plainBackend(t);
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET /public HTTP/1.1\r\nHost: api.shop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.shop\r\n\r\n');
  const first = await c.readResponse();
  t.equal(first.status, 200, 'the upgrade request is answered as plain HTTP');
  const second = await c.readResponse();
  t.equal(second.status, 403, 'the pipelined request is parsed and denied');
  t.equal(second.headers['x-weft-error'], 'denied');
  const heads = backend.heads();
  t.equal(heads.length, 1, 'the backend saw one request');
  t.match(heads[0], /^GET \/public HTTP\/1\.1\r\n/);
  t.match(heads[0], /\r\nupgrade: websocket/i, 'an allowed upgrade is forwarded');
  t.notMatch(backend.bytes.toString('latin1'), /admin/, 'nothing of /admin reached the backend');
  c.close();
});

t.test('the same with the client half-closing after its requests', async (t) => {
  const backend = await plainBackend(t);
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.sock.end('GET /public HTTP/1.1\r\nHost: api.shop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.shop\r\n\r\n');
  t.equal((await c.readResponse()).status, 200);
  t.equal((await c.readResponse()).status, 403, 'the pipelined request is parsed and denied');
  t.equal(backend.heads().length, 1);
  await c.waitClosed();
});

t.test('h2c with the client half-closing', async (t) => {
  await plainBackend(t);
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.sock.end('GET /public HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nGET /admin HTTP/1.1\r\nHost: api\r\n\r\n');
  t.equal((await c.readResponse()).status, 200);
  t.equal((await c.readResponse()).status, 403, 'the pipelined request is parsed and denied');
});

t.test('an upgrade type the service does not allow is stripped and served as HTTP', async (t) => {
  const backend = await plainBackend(t);
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write(
    'GET /public HTTP/1.1\r\nHost: api.shop\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.shop\r\n\r\n',
  );
  t.equal((await c.readResponse()).status, 200);
  t.equal((await c.readResponse()).status, 403, 'the pipelined request is denied');
  const head = backend.heads()[0]!;
  t.notMatch(head, /upgrade|http2-settings|x-hop|connection:/i, 'Upgrade and the Connection tokens are not forwarded');
  t.equal(backend.heads().length, 1);
  c.close();
});

t.test('trafficPolicy.upgrades allows other upgrade types', async (t) => {
  const backend = await plainBackend(t);
  const la = await agentFor(t, '{ upgrades: [websocket, x-custom] }');
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET /public HTTP/1.1\r\nHost: api.shop\r\nConnection: Upgrade\r\nUpgrade: x-custom/2, h2c\r\n\r\n');
  t.equal((await c.readResponse()).status, 200);
  t.match(backend.heads()[0], /\r\nupgrade: x-custom\/2$/i, 'only the allowed offer is forwarded');
  c.close();
});

t.test('Host games: two Hosts, a Host that differs from the absolute-form authority, a fragment', async (t) => {
  const backend = await plainBackend(t);
  const la = await agentFor(t);
  const bad: Record<string, string> = {
    'two Host headers': 'GET /x HTTP/1.1\r\nHost: admin.shop\r\nHost: api.shop\r\n\r\n',
    'Host with two values': 'GET /x HTTP/1.1\r\nHost: admin.shop, api.shop\r\n\r\n',
    'absolute-form with another Host': 'GET http://admin.shop/x HTTP/1.1\r\nHost: api.shop\r\n\r\n',
    'a fragment': 'GET /public#/../admin HTTP/1.1\r\nHost: api.shop\r\n\r\n',
  };
  for (const [name, bytes] of Object.entries(bad)) {
    const c = await RawClient.connect(la.outboundPort, clientIp(la));
    c.write(bytes);
    const r = await c.readResponse();
    t.equal(r.status, 400, `${name}: 400`);
    t.equal(r.headers['x-weft-error'], 'bad_request', `${name}: bad_request`);
    await c.waitClosed();
  }
  t.equal(backend.connections, 0, 'none reached the backend');

  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET http://admin.shop/x HTTP/1.1\r\n\r\n');
  t.equal((await c.readResponse()).status, 403, 'the absolute-form authority is the Host that hosts rules see');
  c.write('GET http://API.shop/x?q=1 HTTP/1.1\r\nHost: api.shop\r\n\r\n');
  t.equal((await c.readResponse()).status, 200);
  c.close();
  const head = backend.heads()[0]!;
  t.match(head, /^GET \/x\?q=1 HTTP\/1\.1\r\n/, 'forwarded in origin-form');
  t.match(head, /\r\nHost: API\.shop/i, 'with the URI authority as Host');
});

t.test('paths are authorized and forwarded in one normalized form', async (t) => {
  const backend = await plainBackend(t);
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  const cases: [string, number, string | undefined][] = [
    ['/public/./x', 200, '/public/x'],
    ['/public/..;/admin', 403, undefined],
    ['//admin', 403, undefined],
    ['/public/%2e%2e/admin', 403, undefined],
    ['/public/%2e%2e/%61dmin/x', 403, undefined],
    ['/public;jsessionid=1/a//b/%7Euser?x=/../y', 200, '/public/a/b/~user?x=/../y'],
    ['/public/a%2Fb', 403, undefined],
  ];
  for (const [path, status, upstream] of cases) {
    c.write(`GET ${path} HTTP/1.1\r\nHost: api.shop\r\n\r\n`);
    const r = await c.readResponse();
    t.equal(r.status, status, `${path}: ${status}`);
    if (upstream !== undefined) t.equal(r.body.toString(), `GET ${upstream} HTTP/1.1`, `${path} reaches the backend as ${upstream}`);
  }
  c.close();
  t.notMatch(backend.bytes.toString('latin1'), /admin/, 'no denied path reached the backend');
});
