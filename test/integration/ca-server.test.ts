import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import * as https from 'node:https';
import { join } from 'node:path';
import pino from 'pino';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { CaClient, CaRequestError, EmbeddedCaClient } from '../../src/identity/ca-client.js';
import { authorizerFromIdentities, CA_HANDSHAKE_TIMEOUT_MS, identitiesByNodeFromConfig, startCaServer, type CaServer } from '../../src/identity/ca-server.js';
import net from 'node:net';
import { once } from 'node:events';
import { ECDSA_SHA256, generateP256, x509 } from '../../src/identity/x509.js';

const log = pino({ level: 'silent' });
const workloads = [
  { name: 'api-0', namespace: 'shop', node: 'node-a', serviceAccount: 'api' },
  { name: 'db-0', namespace: 'shop', node: 'node-b', serviceAccount: 'db' },
];

async function csr(id?: string): Promise<string> {
  const keys = await generateP256();
  const extensions = id ? [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: id }])] : [];
  return (await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: ECDSA_SHA256, extensions })).toString('pem');
}

/** A raw HTTPS request to the CA, trusting its root. */
function raw(server: CaServer, rootPem: string, method: string, path: string, body?: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string; headers: Record<string, unknown> }>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: server.port, method, path, ca: rootPem, agent: false, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString(), headers: res.headers }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

t.test('CA server over HTTPS on loopback', async (t) => {
  const dir = t.testdir();
  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  const server = await startCaServer({
    ca,
    listen: { host: '127.0.0.1', port: 0 },
    authorize: authorizerFromIdentities(identitiesByNodeFromConfig({ workloads })),
    log,
  });
  t.teardown(() => server.close());
  t.equal(server.url, `https://127.0.0.1:${server.port}`);
  const rootFile = join(dir, 'root.pem');
  await writeFile(rootFile, ca.rootPem);
  const tokenA = join(dir, 'node-a.token');
  await writeFile(tokenA, ca.issueNodeToken('node-a') + '\n');

  t.test('node-a gets a certificate for its own workload', async (t) => {
    const client = new CaClient({ url: server.url, rootCert: rootFile, tokenFile: tokenA });
    const signed = await client.sign(await csr('spiffe://cluster.local/ns/shop/sa/api'), 'shop', 'api', 3_600_000);
    t.equal(signed.certChain.length, 2);
    t.equal(signed.certChain[1], ca.rootPem, 'root last');
    const leaf = new X509Certificate(signed.certChain[0]!);
    t.equal(leaf.subjectAltName, 'URI:spiffe://cluster.local/ns/shop/sa/api');
    t.ok(leaf.verify(new X509Certificate(ca.rootPem).publicKey));
    t.ok(Math.abs(signed.notAfter.getTime() - Date.now() - 3_600_000) < 5000, 'ttl asked for');
    // rootCert may also be given as PEM text
    const inline = new CaClient({ url: server.url, rootCert: ca.rootPem, tokenFile: tokenA });
    t.equal((await inline.sign(await csr(), 'shop', 'api')).certChain.length, 2);
  });

  t.test('a workload of node-b is refused to node-a (403)', async (t) => {
    const client = new CaClient({ url: server.url, rootCert: rootFile, tokenFile: tokenA });
    const err = await client.sign(await csr(), 'shop', 'db').catch((e: unknown) => e);
    t.type(err, CaRequestError);
    t.match(err, { reason: 'denied', status: 403, code: 'WEFT_ERR_IDENTITY', message: /node node-a has no workload running as shop\/db/ });
    // node-b may
    const tokenB = join(dir, 'node-b.token');
    await writeFile(tokenB, ca.issueNodeToken('node-b'));
    const b = new CaClient({ url: server.url, rootCert: rootFile, tokenFile: tokenB });
    t.equal((await b.sign(await csr(), 'shop', 'db')).certChain.length, 2);
    // naming a workload narrows the check
    const good = await raw(server, ca.rootPem, 'POST', '/v1/sign', JSON.stringify({ csr: await csr(), namespace: 'shop', serviceAccount: 'db', workload: 'db-0' }), {
      authorization: `Bearer ${ca.issueNodeToken('node-b')}`,
    });
    t.equal(good.status, 200);
    const bad = await raw(server, ca.rootPem, 'POST', '/v1/sign', JSON.stringify({ csr: await csr(), namespace: 'shop', serviceAccount: 'db', workload: 'db-9' }), {
      authorization: `Bearer ${ca.issueNodeToken('node-b')}`,
    });
    t.equal(bad.status, 403);
  });

  t.test("no token, a garbage token, another CA's token: 401", async (t) => {
    const body = JSON.stringify({ csr: await csr(), namespace: 'shop', serviceAccount: 'api' });
    const none = await raw(server, ca.rootPem, 'POST', '/v1/sign', body);
    t.equal(none.status, 401);
    t.match(none.headers['www-authenticate'], /Bearer/);
    t.match(JSON.parse(none.body), { error: { code: 'unauthenticated', message: /missing node token/ } });

    const garbage = join(dir, 'garbage.token');
    await writeFile(garbage, 'not-a-token');
    const client = new CaClient({ url: server.url, rootCert: rootFile, tokenFile: garbage });
    await t.rejects(client.sign(await csr(), 'shop', 'api'), { reason: 'unauthenticated', status: 401, message: /rejected this node's token/ });

    const other = await CertificateAuthority.open(join(dir, 'other-ca'));
    const foreign = join(dir, 'foreign.token');
    await writeFile(foreign, other.issueNodeToken('node-a'));
    await t.rejects(new CaClient({ url: server.url, rootCert: rootFile, tokenFile: foreign }).sign(await csr(), 'shop', 'api'), { code: 'WEFT_ERR_IDENTITY', status: 401 });

    await t.rejects(new CaClient({ url: server.url, rootCert: rootFile, tokenFile: join(dir, 'missing.token') }).sign(await csr(), 'shop', 'api'), {
      reason: 'config',
      message: /cannot read the node token file/,
    });
  });

  t.test('malformed requests: 400 with a clear message', async (t) => {
    const auth = { authorization: `Bearer ${ca.issueNodeToken('node-a')}` };
    const notJson = await raw(server, ca.rootPem, 'POST', '/v1/sign', '{nope', auth);
    t.equal(notJson.status, 400);
    t.match(JSON.parse(notJson.body).error.message, /not JSON/);
    const missing = await raw(server, ca.rootPem, 'POST', '/v1/sign', JSON.stringify({ namespace: 'shop' }), auth);
    t.equal(missing.status, 400);
    t.match(JSON.parse(missing.body).error.message, /csr: expected a PEM certificate request.*serviceAccount/);
    const badTtl = await raw(server, ca.rootPem, 'POST', '/v1/sign', JSON.stringify({ csr: await csr(), namespace: 'shop', serviceAccount: 'api', ttlSeconds: -5 }), auth);
    t.equal(badTtl.status, 400);
    t.match(JSON.parse(badTtl.body).error.message, /ttlSeconds/);
    const badName = await raw(server, ca.rootPem, 'POST', '/v1/sign', JSON.stringify({ csr: await csr(), namespace: 'sh op', serviceAccount: 'api' }), auth);
    t.equal(badName.status, 400);
    const wrongSan = await raw(server, ca.rootPem, 'POST', '/v1/sign', JSON.stringify({ csr: await csr('spiffe://cluster.local/ns/shop/sa/admin'), namespace: 'shop', serviceAccount: 'api' }), auth);
    t.equal(wrongSan.status, 400);
    t.match(JSON.parse(wrongSan.body).error.message, /not the requested identity/);
    const badCsr = await raw(
      server,
      ca.rootPem,
      'POST',
      '/v1/sign',
      JSON.stringify({ csr: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----', namespace: 'shop', serviceAccount: 'api' }),
      auth,
    );
    t.equal(badCsr.status, 400);
    t.match(JSON.parse(badCsr.body).error.message, /malformed CSR/);
    const big = await raw(server, ca.rootPem, 'POST', '/v1/sign', 'x'.repeat(100_000), auth);
    t.equal(big.status, 413);
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', port: server.port, method: 'POST', path: '/v1/sign', ca: ca.rootPem, agent: false, headers: auth }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('error', reject);
      for (let i = 0; i < 10; i++) req.write('y'.repeat(10_000));
      req.end();
    });
    t.equal(chunked, 413, 'a chunked body over the limit');
    t.equal((await raw(server, ca.rootPem, 'GET', '/v1/sign', undefined, auth)).status, 405);
    t.equal((await raw(server, ca.rootPem, 'GET', '/nope')).status, 404);
  });

  t.test('GET /v1/root', async (t) => {
    const res = await raw(server, ca.rootPem, 'GET', '/v1/root');
    t.equal(res.status, 200);
    t.equal(res.body, ca.rootPem);
  });

  t.test('a client with the wrong root refuses the CA', async (t) => {
    const other = await CertificateAuthority.open(join(dir, 'wrong-root'));
    const client = new CaClient({ url: server.url, rootCert: other.rootPem, tokenFile: tokenA });
    await t.rejects(client.sign(await csr(), 'shop', 'api'), { reason: 'tls', message: /cannot verify the CA/ });
  });

  t.test('unreachable CA: a clear error', async (t) => {
    const closed = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: () => true, log });
    const port = closed.port;
    await closed.close();
    const client = new CaClient({ url: `https://127.0.0.1:${port}`, rootCert: rootFile, tokenFile: tokenA });
    await t.rejects(client.sign(await csr(), 'shop', 'api'), { reason: 'unreachable', message: /cannot reach the CA/ });
  });
});

t.test('CA server on a wildcard address: the cert lists the loopback address', async (t) => {
  const ca = await CertificateAuthority.open(join(t.testdir(), 'ca'));
  const server = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: () => true, log, serverNames: ['ca.weft-system.svc'] });
  t.teardown(() => server.close());
  const cert = await new Promise<X509Certificate>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: server.port, path: '/healthz', ca: ca.rootPem, agent: false }, (res) => {
      resolve((res.socket as import('node:tls').TLSSocket).getPeerX509Certificate()!);
      res.resume();
    });
    req.on('error', reject);
    req.end();
  });
  t.match(cert.subjectAltName, /DNS:weft-ca/);
  t.match(cert.subjectAltName, /IP Address:127\.0\.0\.1/);
  t.match(cert.subjectAltName, /DNS:ca\.weft-system\.svc/);
  t.notMatch(cert.subjectAltName, /URI:/);
});

t.test('EmbeddedCaClient signs only local identities', async (t) => {
  const local = new Set(['shop/api']);
  const client = await EmbeddedCaClient.open(t.testdir(), { isLocal: (ns, sa) => local.has(`${ns}/${sa}`) });
  const signed = await client.sign(await csr(), 'shop', 'api', 60_000);
  t.equal(signed.certChain[1], client.rootPem);
  t.equal(new X509Certificate(signed.certChain[0]!).subjectAltName, 'URI:spiffe://cluster.local/ns/shop/sa/api');
  await t.rejects(client.sign(await csr(), 'shop', 'db'), { code: 'WEFT_ERR_IDENTITY', reason: 'denied' });
});

t.test('a client that connects and never finishes its TLS handshake is dropped', async (t) => {
  const dir = t.testdir();
  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  const server = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: authorizerFromIdentities(identitiesByNodeFromConfig({ workloads })), log });
  t.teardown(() => server.close());
  const sock = net.connect({ host: '127.0.0.1', port: server.port });
  sock.on('error', () => undefined);
  await once(sock, 'connect');
  sock.write(Buffer.from([0x16, 0x03, 0x01])); // the start of a TLS record, then nothing
  const closed = once(sock, 'close');
  // Node's default would hold the connection for 120 s, past this test's timeout.
  await closed;
  t.pass(`the CA closed the stalled connection (handshake timeout ${CA_HANDSHAKE_TIMEOUT_MS} ms)`);
});
