/**
 * Attacks on the HTTP path, the JWKS sources and the listeners, as a tenant would make them:
 * raw bytes written over a socket from inside a meshed pod (in its container cgroup, through
 * the real eBPF redirection and the real agents, one or two nodes), a config pointing at
 * /dev/zero. Each case asserts what the client got and what the backend saw (the sandbox
 * backend answers with the method, path and headers it received, and counts requests).
 * Root only.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import type { TopoPod } from '../../src/sandbox/topology.js';
import { canRunE2e, until } from '../lib/e2e.js';

const API = '10.96.0.20';
const REMOTE = '10.96.0.21';
const OTHER = '10.96.0.22';
const IDP = '10.77.0.90';
const FLOOD_CAP = 24;

function config(dir: string): string {
  return `
node:
  name: \${WEFT_NODE:-node-a}
  address: \${WEFT_NODE_ADDRESS:-10.77.0.1}
nodes:
  - { name: node-a, address: 10.77.0.1 }
  - { name: node-b, address: 10.77.1.1 }
stateDir: \${WEFT_STATE_DIR}
agent: { maxDownstreamConnections: { outbound: ${FLOOD_CAP} } }
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
  - { name: idp, labels: {} }
workloads:
  - { name: client-0, namespace: shop, node: node-a, ip: 10.77.0.50, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
  - { name: api-0, namespace: shop, node: node-a, ip: 10.77.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: other-0, namespace: shop, node: node-a, ip: 10.77.0.12, serviceAccount: other, labels: { app: other }, cgroup: "\${CGROUP_ROOT}/other-0" }
  - { name: remote-0, namespace: shop, node: node-b, ip: 10.77.1.11, serviceAccount: remote, labels: { app: remote }, cgroup: "\${CGROUP_ROOT}/remote-0" }
  - { name: idp-0, namespace: idp, node: node-a, ip: ${IDP}, serviceAccount: idp, labels: { app: idp }, cgroup: "\${CGROUP_ROOT}/idp-0" }
services:
  - { name: api, namespace: shop, vip: ${API}, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
  - { name: remote, namespace: shop, vip: ${REMOTE}, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: remote } }
  - { name: other, namespace: shop, vip: ${OTHER}, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: other } }
policies:
  - { name: api-no-admin, namespace: shop, selector: { app: api }, action: DENY, rules: [ { to: [ { paths: [/admin, /admin/*] } ] } ] }
  - { name: remote-no-admin, namespace: shop, selector: { app: remote }, action: DENY, rules: [ { to: [ { paths: [/admin, /admin/*] } ] } ] }
  - { name: api-no-admin-host, namespace: shop, selector: { app: api }, action: DENY, rules: [ { to: [ { hosts: [admin.shop] } ] } ] }
requestAuthentications:
  - name: api-jwt
    namespace: shop
    selector: { app: api }
    jwtRules:
      - { issuer: https://zero.example, jwksFile: /dev/zero }
      - { issuer: https://fifo.example, jwksFile: ${dir}/jwks.fifo }
      - { issuer: https://big.example, jwksUri: http://${IDP}:8080/big }
      - { issuer: https://redirect.example, jwksUri: http://${IDP}:8080/redirect }
      - { issuer: https://good.example, jwksFile: ${dir}/good.json }
`;
}

/** A JWKS server for the idp pod: a good key set, a redirect to it, and a 10 MB chunked answer. */
const IDP_SERVER = `
const jwks = process.argv[1];
require('http').createServer((req, res) => {
  if (req.url === '/good') return res.writeHead(200, { 'content-type': 'application/json' }).end(jwks);
  if (req.url === '/redirect') return res.writeHead(302, { location: '/good' }).end();
  if (req.url === '/big') {
    res.writeHead(200, { 'content-type': 'application/json' });
    const chunk = Buffer.alloc(65536, 0x20);
    let sent = 0;
    const pump = () => { while (sent < 10 * 1024 * 1024) { sent += chunk.length; if (!res.write(chunk)) return res.once('drain', pump); } res.end(); };
    res.write('{"keys":[' + JSON.stringify(JSON.parse(jwks).keys[0]) + ']');
    return pump();
  }
  res.writeHead(404).end();
}).listen(8080, '0.0.0.0', () => console.log('idp listening'));
`;

/**
 * Writes `payload` to ip:port from inside `pod`, half-closes, and returns everything the
 * other side sent until it closed (or 10 s passed).
 */
async function rawExchange(pod: TopoPod, ip: string, port: number, payload: string): Promise<string> {
  const script = `const s=require('net').connect(${port},'${ip}',()=>s.end(Buffer.from(process.argv[1],'base64')));const out=[];const done=()=>{process.stdout.write(Buffer.concat(out).toString('base64'));process.exit(0)};s.on('data',d=>out.push(d));s.on('close',done);s.on('error',()=>{});setTimeout(done,10000).unref()`;
  const r = await pod.exec(process.execPath, ['-e', script, Buffer.from(payload, 'latin1').toString('base64')], { timeoutMs: 20_000 });
  return Buffer.from(r.stdout.trim(), 'base64').toString('latin1');
}

function statuses(raw: string): number[] {
  // A status line follows the previous answer's body directly (no newline after a JSON body).
  return [...raw.matchAll(/HTTP\/1\.1 (\d{3}) [A-Za-z]/g)].map((m) => Number(m[1]));
}

/** The request paths the backend reported in its answers (`"path":"..."` of its JSON bodies). */
function seenPaths(raw: string): string[] {
  return [...raw.matchAll(/"path":"([^"]*)"/g)].map((m) => m[1]!);
}

async function backendRequests(client: TopoPod, vip: string): Promise<number> {
  const r = await client.curl(`http://${vip}/_ctl/state`);
  return (JSON.parse(r.body) as { state: { requests: number } }).state.requests;
}

async function resetBackend(client: TopoPod, vip: string): Promise<void> {
  await client.curl(`http://${vip}/_ctl/reset`);
}

async function signer(): Promise<{ jwk: JWK; key: CryptoKey }> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  return { key: privateKey, jwk: { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' } };
}

function token(key: CryptoKey, iss: string): Promise<string> {
  return new SignJWT({ iss, sub: 'alice', aud: 'api' }).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setExpirationTime('10m').sign(key);
}

function agentRssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

t.test('attacks on the HTTP path, JWKS sources and listeners', async (t) => {
  if (!canRunE2e(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'weft-attacks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const good = await signer();
  writeFileSync(join(dir, 'good.json'), JSON.stringify({ keys: [good.jwk] }));
  execFileSync('mkfifo', [join(dir, 'jwks.fifo')]);
  const sb = await MeshSandbox.create({ configText: config(dir), prefix: 'weft-atk' });
  t.teardown(() => sb.destroy());
  const idp = sb.pod('idp-0').spawn(process.execPath, ['-e', IDP_SERVER, JSON.stringify({ keys: [good.jwk] })], { label: 'idp' });
  await idp.waitFor(/idp listening/);
  const client = sb.pod('client-0');
  t.equal((await client.curl(`http://${API}/`)).status, 200, 'the mesh serves');

  await t.test('upgrade smuggling, same node: the request after an unswitched upgrade is authorized', async (t) => {
    await resetBackend(client, API);
    const raw = await rawExchange(client, API, 80, 'GET /public HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /admin HTTP/1.1\r\nHost: api\r\n\r\n');
    t.same(statuses(raw), [200, 403], 'the client gets the backend answer, then 403 for /admin');
    t.same(seenPaths(raw), ['/public'], 'the backend answered /public only');
    t.equal(await backendRequests(client, API), 1, 'the backend saw one request');
  });

  await t.test('upgrade smuggling across nodes: the destination agent does not splice either', async (t) => {
    await resetBackend(client, REMOTE);
    const raw = await rawExchange(client, REMOTE, 80, 'GET /public HTTP/1.1\r\nHost: remote\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /admin HTTP/1.1\r\nHost: remote\r\n\r\n');
    t.same(statuses(raw), [200, 403]);
    t.same(seenPaths(raw), ['/public']);
    t.equal(await backendRequests(client, REMOTE), 1);
  });

  await t.test('h2c upgrade (not allowed by default) is stripped and served as HTTP', async (t) => {
    const raw = await rawExchange(
      client,
      API,
      80,
      'GET /public HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nGET /admin HTTP/1.1\r\nHost: api\r\n\r\n',
    );
    t.same(statuses(raw), [200, 403]);
    t.notMatch(raw, /"upgrade"/i, 'the backend saw no Upgrade header');
  });

  await t.test('Host games', async (t) => {
    await resetBackend(client, API);
    for (const [name, payload] of [
      ['two Host headers', 'GET /x HTTP/1.1\r\nHost: admin.shop\r\nHost: api.shop\r\n\r\n'],
      ['absolute-form with a differing Host', 'GET http://admin.shop/x HTTP/1.1\r\nHost: api.shop\r\n\r\n'],
      ['a fragment', 'GET /public#/../admin HTTP/1.1\r\nHost: api\r\n\r\n'],
    ] as const) {
      const raw = await rawExchange(client, API, 80, payload);
      t.same(statuses(raw), [400], `${name}: 400`);
      t.match(raw, /x-weft-error: bad_request/, `${name}: bad_request`);
    }
    t.equal(await backendRequests(client, API), 0, 'none reached the backend');
    const denied = await rawExchange(client, API, 80, 'GET http://admin.shop/x HTTP/1.1\r\n\r\n');
    t.same(statuses(denied), [403], 'the absolute-form authority is what hosts rules see');
    const ok = await rawExchange(client, API, 80, 'GET http://api.shop/x HTTP/1.1\r\nHost: api.shop\r\n\r\n');
    t.same(statuses(ok), [200]);
    t.same(seenPaths(ok), ['/x'], 'forwarded in origin-form');
    t.match(ok, /"host":"api\.shop"/, 'with the authority as Host');
  });

  await t.test('paths: authorized and forwarded in one normalized form', async (t) => {
    await resetBackend(client, API);
    const cases: [string, number, string?][] = [
      ['/public/./x', 200, '/public/x'],
      ['/public/..;/admin', 403],
      ['//admin', 403],
      ['/public/%2e%2e/admin', 403],
      ['/%2e%2e/%61dmin', 403],
    ];
    for (const [path, status, seen] of cases) {
      const raw = await rawExchange(client, API, 80, `GET ${path} HTTP/1.1\r\nHost: api\r\n\r\n`);
      t.same(statuses(raw), [status], `${path}: ${status}`);
      if (seen) t.same(seenPaths(raw), [seen], `${path} reached the backend as ${seen}`);
    }
    t.equal(await backendRequests(client, API), 1, 'only /public/x reached the backend');
  });

  await t.test('JWKS sources: /dev/zero, a FIFO, a 10 MB chunked answer, a redirect', async (t) => {
    const auth = async (iss: string) => (await client.curl(`http://${API}/`, ['-H', `authorization: Bearer ${await token(good.key, iss)}`, '--max-time', '15'])).status;
    for (const iss of ['https://zero.example', 'https://fifo.example', 'https://big.example', 'https://redirect.example']) {
      t.equal(await auth(iss), 401, `${iss}: a token on the rule is refused`);
    }
    t.equal(await auth('https://good.example'), 200, 'a token on a good rule is accepted');
    t.equal((await client.curl(`http://${API}/`)).status, 200, 'a request without a token passes');
    t.equal((await client.curl(`http://${OTHER}/`)).status, 200, 'other services are served');
    const rss = agentRssBytes(sb.agent!.pid);
    t.ok(rss < 300 * 1024 * 1024, `the agent's memory stays bounded (RSS ${Math.round(rss / 1048576)} MB)`);
    const dump = await sb.configDump();
    t.match(JSON.stringify(dump), /not a regular file/, '/config_dump says why a file source failed');
  });

  await t.test('a connection flood beyond the outbound cap is refused; the agent keeps serving', async (t) => {
    const n = FLOOD_CAP * 2;
    const script = `const net=require('net');let answered=0,closed=0,left=${n};const socks=[];const fin=()=>{if(--left===0){console.log(JSON.stringify({answered,closed}));for(const s of socks)s.destroy();process.exit(0)}};for(let i=0;i<${n};i++){const s=net.connect(80,'${API}',()=>s.write('GET / HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n'));socks.push(s);let done=false;s.on('data',()=>{if(!done){done=true;answered++;fin()}});s.on('close',()=>{if(!done){done=true;closed++;fin()}});s.on('error',()=>{})}setTimeout(()=>{console.log(JSON.stringify({answered,closed,timeout:true}));process.exit(0)},15000).unref()`;
    const r = await client.exec(process.execPath, ['-e', script], { timeoutMs: 30_000 });
    const out = JSON.parse(r.stdout.trim()) as { answered: number; closed: number };
    t.ok(out.answered <= FLOOD_CAP, `at most ${FLOOD_CAP} connections served at once (${out.answered})`);
    t.ok(out.closed >= n - FLOOD_CAP, `the rest were closed at accept (${out.closed})`);
    await until('the flood connections to close', async () => /weft_downstream_connections\{listener="outbound"\} 0/.test(await sb.metrics()), 10_000);
    t.match(await sb.metrics(), /weft_downstream_connections_rejected_total\{listener="outbound"\} [1-9]/);
    t.equal((await client.curl(`http://${API}/`)).status, 200, 'served again once the flood is gone');
  });

  await t.test('a client that opens TLS to 15008 and never finishes the handshake is dropped', async (t) => {
    const script = `const s=require('net').connect(15008,'10.77.0.1',()=>s.write(Buffer.from([0x16,0x03,0x01,0x02])));s.on('close',()=>{console.log('closed');process.exit(0)});s.on('error',()=>{});setTimeout(()=>{console.log('still open');process.exit(0)},30000).unref()`;
    const r = await client.exec(process.execPath, ['-e', script], { timeoutMs: 40_000 });
    t.equal(r.stdout.trim(), 'closed', 'the agent closed the stalled handshake (Node default: 120 s)');
  });
});
