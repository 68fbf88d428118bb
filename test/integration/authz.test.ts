import t from 'tap';
import net from 'node:net';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { startBackend } from '../../src/sandbox/backend.js';
import { startLoopbackAgent } from '../lib/loopback-agent.js';

t.test('authorization and JWT through the agent', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-authz-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
  const token = (sub: string, iss = 'https://issuer.example') =>
    new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(iss).setSubject(sub).setAudience('api').setIssuedAt().setExpirationTime('5m').sign(privateKey);

  const api = await startBackend({ name: 'api-0', port: 8080, host: '127.0.1.1', tcpEchoPort: 9000, log: () => {} });
  t.teardown(() => api.close());
  const db = await startBackend({ name: 'db-0', port: 8080, host: '127.0.1.2', tcpEchoPort: 9000, log: () => {} });
  t.teardown(() => db.close());
  const la = await startLoopbackAgent(`
node: { name: node-a, address: 127.0.0.1 }
ports: { outbound: 0, inbound: 0, tunnel: 0, admin: 0, metrics: 0 }
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
  - { name: other, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: api-0, namespace: shop, node: node-a, ip: 127.0.1.1, serviceAccount: api, labels: { app: api } }
  - { name: db-0, namespace: shop, node: node-a, ip: 127.0.1.2, serviceAccount: db, labels: { app: db } }
  - { name: web-0, namespace: shop, node: node-a, ip: 127.0.2.1, serviceAccount: web, labels: { app: web } }
  - { name: intruder-0, namespace: other, node: node-a, ip: 127.0.2.2, serviceAccount: intruder, labels: { app: intruder } }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api } }
  - { name: api-tcp, namespace: shop, vip: 10.96.0.21, ports: [ { port: 9000, targetPort: 9000, protocol: tcp } ], selector: { app: api } }
  - { name: db, namespace: shop, vip: 10.96.0.22, ports: [ { port: 9000, targetPort: 9000, protocol: tcp } ], selector: { app: db } }
requestAuthentications:
  - name: api-jwt
    namespace: shop
    selector: { app: api }
    jwtRules: [ { issuer: https://issuer.example, audiences: [api], jwksFile: ${join(dir, 'jwks.json')} } ]
policies:
  - name: api-readers
    namespace: shop
    selector: { app: api }
    action: ALLOW
    rules:
      - from: [ { principals: [cluster.local/ns/shop/sa/web] } ]
        to: [ { ports: [8080], methods: [GET], paths: [/items, /items/*] } ]
      - from: [ { requestPrincipals: [https://issuer.example/alice] } ]
        to: [ { paths: [/admin/*] } ]
      - from: [ { principals: [cluster.local/ns/shop/sa/web] } ]
        to: [ { ports: [9000] } ]
  - name: db-clients
    namespace: shop
    selector: { app: db }
    action: ALLOW
    rules:
      - from: [ { principals: [cluster.local/ns/shop/sa/web] } ]
  - name: no-secrets
    namespace: shop
    selector: { app: api }
    action: DENY
    rules:
      - to: [ { paths: [/items/secret] } ]
`);
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/web-0');
  la.route('127.0.2.2', '10.96.0.20:80', 'other/intruder-0');

  t.equal((await la.get('127.0.2.1', '10.96.0.20:80', '/items/1')).status, 200, 'the allowed principal gets 200');
  const denied = await la.get('127.0.2.2', '10.96.0.20:80', '/items/1');
  t.equal(denied.status, 403, 'another meshed workload gets 403');
  t.equal(denied.headers['x-weft-error'], 'denied');
  t.equal((await la.get('127.0.2.1', '10.96.0.20:80', '/other')).status, 403, 'a path outside the rule gets 403');
  t.equal((await la.get('127.0.2.1', '10.96.0.20:80', '/items/../admin/x')).status, 403, 'dot segments do not escape the rule');
  t.equal((await la.get('127.0.2.1', '10.96.0.20:80', '/items/secret')).status, 403, 'DENY overrides ALLOW');

  const res = await la.client('127.0.2.1').request({ origin: `http://127.0.0.1:${la.outboundPort}`, path: '/items/1', method: 'POST', body: 'x', headers: { host: 'api' } });
  await res.body.text();
  t.equal(res.statusCode, 403, 'a disallowed method gets 403');

  const bad = await la.get('127.0.2.2', '10.96.0.20:80', '/admin/x', { authorization: 'Bearer not.a.jwt' });
  t.equal(bad.status, 401, 'an invalid JWT gets 401');
  const other = await la.get('127.0.2.2', '10.96.0.20:80', '/admin/x', { authorization: `Bearer ${await token('bob')}` });
  t.equal(other.status, 403, 'a valid JWT of the wrong principal passes authentication, then is denied');
  const alice = await la.get('127.0.2.2', '10.96.0.20:80', '/admin/x', { authorization: `Bearer ${await token('alice')}` });
  t.equal(alice.status, 200, 'the required request principal gets through');
  const wrongIss = await la.get('127.0.2.2', '10.96.0.20:80', '/admin/x', { authorization: `Bearer ${await token('alice', 'https://evil.example')}` });
  t.equal(wrongIss.status, 401, 'a token from an unknown issuer gets 401');

  // TCP: web may connect, the intruder is cut before any byte reaches the pod.
  la.route('127.0.2.3', '10.96.0.22:9000', 'shop/web-0');
  la.route('127.0.2.4', '10.96.0.22:9000', 'other/intruder-0');
  // On api, the DENY rule with an HTTP-only condition (paths) denies every TCP connection.
  la.route('127.0.2.5', '10.96.0.21:9000', 'shop/web-0');
  const tcp = (src: string) =>
    new Promise<string>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: src });
      let buf = '';
      s.on('data', (d) => {
        buf += d;
        if (buf.includes('\n')) s.end();
      });
      s.on('error', () => undefined);
      s.on('close', () => resolve(buf));
    });
  t.equal(await tcp('127.0.2.3'), 'db-0\n', 'an allowed TCP connection reaches the pod');
  t.equal(await tcp('127.0.2.4'), '', 'a denied TCP connection is closed before any byte');
  t.equal(await tcp('127.0.2.5'), '', 'a DENY with HTTP-only conditions denies the whole TCP connection');

  const m = await la.metrics();
  t.match(m, /weft_authz_denied_total\{policy="default-deny"\} \d+/);
  t.match(m, /weft_authz_denied_total\{policy="shop\/no-secrets"\} 2/);
  const dump = await la.configDump();
  t.ok(dump.authorization, 'config_dump shows the compiled policies');
});
