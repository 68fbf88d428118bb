/**
 * JWKS sources a tenant or a mistake could point at: devices, FIFOs, huge or endless
 * answers, redirects, the node itself. Each fails its rule closed (401 for a token on it),
 * quickly and with bounded memory, and the authenticator keeps serving other rules.
 */
import t, { type Test } from 'tap';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { JwtAuthenticator } from '../../src/authz/jwt.js';
import { fetchCapped, isLocalAddress, MAX_JWKS_BYTES, readRegularFile } from '../../src/authz/jwks.js';

const ISSUER = 'https://issuer.example';

async function keyPair() {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256' };
  const token = await new SignJWT({ iss: ISSUER, sub: 'alice', aud: 'api' }).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setExpirationTime('5m').sign(privateKey);
  return { jwk, token };
}

async function server(t: Test, handler: Parameters<typeof createServer>[1]): Promise<string> {
  const s: Server = createServer(handler);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    s.closeAllConnections();
    return new Promise<void>((r) => s.close(() => r()));
  });
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

t.test('files: only regular files, read up to the cap', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-jwks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await t.rejects(readRegularFile('/dev/zero'), /not a regular file/, '/dev/zero is refused before any read');
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  await t.rejects(readRegularFile(fifo), /not a regular file/, 'a FIFO with no writer is refused at once, not waited on');
  await t.rejects(readRegularFile(dir), /not a regular file/);
  const big = join(dir, 'big.json');
  writeFileSync(big, Buffer.alloc(MAX_JWKS_BYTES + 1, 0x20));
  await t.rejects(readRegularFile(big), /larger than 65536 bytes/);
  const ok = join(dir, 'ok.json');
  writeFileSync(ok, '{"keys":[]}');
  t.equal(await readRegularFile(ok), '{"keys":[]}');
});

t.test('URIs: no redirects, the body capped whatever its framing, a time cap', async (t) => {
  const base = await server(t, (req, res) => {
    if (req.url === '/redirect') return void res.writeHead(302, { location: '/jwks' }).end();
    if (req.url === '/chunked') {
      // 10 MB, chunked (no Content-Length), written as fast as the client reads.
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      let sent = 0;
      const pump = () => {
        while (sent < 10 * 1024 * 1024) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
      return;
    }
    if (req.url === '/slow') {
      res.writeHead(200);
      res.write('{"keys":');
      return; // never ends
    }
    res.writeHead(200).end('{"keys":[]}');
  });
  const opts = { fetchTimeout: 1000, allowLocalUris: true, nodeAddresses: [] };
  await t.rejects(fetchCapped(`${base}/redirect`, opts), /redirect .*not followed/);
  await t.rejects(fetchCapped(`${base}/chunked`, opts), /larger than 65536 bytes/);
  await t.rejects(fetchCapped(`${base}/slow`, opts), /no complete answer within 1000ms/);
  t.equal(await fetchCapped(`${base}/jwks`, opts), '{"keys":[]}');
  await t.rejects(fetchCapped(`${base}/jwks`, { ...opts, allowLocalUris: false }), /local address: refused/, 'loopback is refused unless allowed');
  await t.rejects(fetchCapped('http://localhost:1/jwks', { ...opts, allowLocalUris: false }), /resolves to .*local address: refused/, 'a name resolving to loopback too');
});

t.test('local addresses', async (t) => {
  for (const a of ['127.0.0.1', '127.9.9.9', '169.254.169.254', '0.0.0.0', '::1', 'fe80::1', '::ffff:127.0.0.1']) t.ok(isLocalAddress(a), a);
  t.ok(isLocalAddress('10.77.0.1', ['10.77.0.1']), 'the node address');
  t.notOk(isLocalAddress('192.0.2.10'), 'a remote address');
});

t.test('a bad source fails its rule closed; other rules keep working', async (t) => {
  const { jwk, token } = await keyPair();
  const dir = mkdtempSync(join(tmpdir(), 'weft-jwks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const good = join(dir, 'good.json');
  writeFileSync(good, JSON.stringify({ keys: [jwk] }));
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const rule = (name: string, app: string, src: { jwksFile?: string; jwksUri?: string }) => ({
    name,
    namespace: 'shop',
    selector: { app },
    jwtRules: [{ issuer: ISSUER, audiences: ['api'], forwardOriginalToken: true, ...src }],
  });
  const authn = new JwtAuthenticator(
    [
      rule('zero', 'zero', { jwksFile: '/dev/zero' }),
      rule('fifo', 'fifo', { jwksFile: fifo }),
      rule('local', 'local', { jwksUri: 'http://127.0.0.1:1/jwks' }),
      rule('good', 'good', { jwksFile: good }),
    ],
    { fetchTimeout: 1000, retryDelay: 60_000 },
  );
  t.teardown(() => authn.close());
  await authn.ready();
  const rss = process.memoryUsage().rss;
  for (const app of ['zero', 'fifo', 'local']) {
    const r = await authn.authenticate({ namespace: 'shop', labels: { app } }, { authorization: `Bearer ${token}` });
    t.match(r, { ok: false, reason: 'no verification keys available' }, `${app}: a token on the rule is refused (401)`);
  }
  t.match(await authn.authenticate({ namespace: 'shop', labels: { app: 'good' } }, { authorization: `Bearer ${token}` }), { ok: true }, 'the good rule verifies');
  t.ok(process.memoryUsage().rss - rss < 64 * 1024 * 1024, 'memory stays bounded');
  const errors = authn.describe().keySets.map((k: { source: string; lastError?: string }) => `${k.source}: ${k.lastError ?? 'ok'}`);
  t.match(errors.join('\n'), /file:\/dev\/zero: \/dev\/zero is not a regular file/);
  t.match(errors.join('\n'), /uri:http:\/\/127\.0\.0\.1:1\/jwks: .*local address: refused/);
});
