import t, { type Test } from 'tap';
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import type * as net from 'node:net';
import * as tls from 'node:tls';
import { join } from 'node:path';
import pino from 'pino';
import { Registry } from 'prom-client';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { CaClient, EmbeddedCaClient, type CertificateSigner } from '../../src/identity/ca-client.js';
import { authorizerFromIdentities, identitiesByNodeFromConfig, startCaServer, type CaServer } from '../../src/identity/ca-server.js';
import { CertManager, type WorkloadCertificate } from '../../src/identity/cert-manager.js';
import { peerSpiffeId, verifyPeer } from '../../src/identity/verify.js';

const log = pino({ level: 'silent' });
const API = 'spiffe://cluster.local/ns/shop/sa/api';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';

const workloads = [
  { name: 'api-0', namespace: 'shop', node: 'node-a', serviceAccount: 'api' },
  { name: 'web-0', namespace: 'shop', node: 'node-a', serviceAccount: 'web' },
];

interface Env {
  ca: CertificateAuthority;
  server: CaServer;
  client: CaClient;
  dir: string;
}

async function setup(t: Test): Promise<Env> {
  const dir = t.testdir();
  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  const server = await startCaServer({
    ca,
    listen: { host: '127.0.0.1', port: 0 },
    authorize: authorizerFromIdentities(identitiesByNodeFromConfig({ workloads })),
    log,
  });
  t.teardown(() => server.close());
  await writeFile(join(dir, 'root.pem'), ca.rootPem);
  await writeFile(join(dir, 'token'), ca.issueNodeToken('node-a'));
  const client = new CaClient({ url: server.url, rootCert: join(dir, 'root.pem'), tokenFile: join(dir, 'token'), timeoutMs: 2000 });
  return { ca, server, client, dir };
}

/**
 * A mutual-TLS handshake on loopback, shaped like the tunnel: a tls.Server that picks the
 * identity's context from the SNI the client sends and requires a client certificate; the
 * client verifies the server chain against the root and checks the SPIFFE ID, not a host name.
 */
async function handshake(serverCtx: tls.SecureContext, clientCtx: tls.SecureContext) {
  let serverResult!: (r: { peer?: string; authorized: boolean; error?: string }) => void;
  const serverSide = new Promise<{ peer?: string; authorized: boolean; error?: string }>((resolve) => (serverResult = resolve));
  const srv = tls.createServer({ SNICallback: (_name, cb) => cb(null, serverCtx), requestCert: true, rejectUnauthorized: true }, (sock) => {
    serverResult({ peer: peerSpiffeId(sock), authorized: sock.authorized });
    sock.end();
  });
  srv.on('tlsClientError', (err) => serverResult({ authorized: false, error: err.message }));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as net.AddressInfo).port;
  try {
    const clientSide = await new Promise<{ peer?: string; verified?: string; error?: string }>((resolve) => {
      const sock = tls.connect({ host: '127.0.0.1', port, servername: 'api.shop', secureContext: clientCtx, checkServerIdentity: () => undefined });
      sock.on('secureConnect', () => {
        let verified: string | undefined;
        try {
          verified = verifyPeer(sock, API);
        } catch {
          verified = undefined;
        }
        resolve({ peer: peerSpiffeId(sock), verified });
        sock.on('error', () => undefined);
        sock.end();
      });
      sock.on('error', (err) => resolve({ error: err.message }));
    });
    const server = await Promise.race([serverSide, new Promise<{ authorized: false; error: string }>((r) => setTimeout(() => r({ authorized: false, error: 'timeout' }), 2000))]);
    return { client: clientSide, server };
  } finally {
    srv.close();
  }
}

t.test('mutual TLS with CertManager certificates', async (t) => {
  const env = await setup(t);
  const registry = new Registry();
  const mgr = new CertManager({ client: env.client, trustDomain: 'cluster.local', registry, log });
  t.teardown(() => mgr.stop());
  const [api, web] = await Promise.all([mgr.ensure('shop', 'api'), mgr.ensure('shop', 'web')]);
  t.equal(api.spiffeId, API);
  t.equal(web.spiffeId, WEB);
  t.equal(mgr.get('shop', 'api'), api);
  t.equal(await mgr.ensure('shop', 'api'), api, 'ensure is idempotent');
  t.equal(mgr.rootPem, env.ca.rootPem);
  t.equal(api.key.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.not(api.keyPem, web.keyPem, 'one key per identity');
  t.ok(Math.abs(api.notAfter.getTime() - Date.now() - 24 * 3600_000) < 10_000, '24h by default');
  t.equal(mgr.get('shop', 'nope'), undefined);

  const apiCtx = mgr.tlsContextFor('shop', 'api')!;
  t.equal(mgr.tlsContextFor('shop', 'api'), apiCtx, 'cached');
  const res = await handshake(apiCtx, mgr.tlsContextFor('shop', 'web')!);
  t.equal(res.client.error, undefined);
  t.equal(res.client.peer, API, 'client sees the server identity');
  t.equal(res.client.verified, API, 'verifyPeer with the expected identity');
  t.same(res.server, { peer: WEB, authorized: true }, 'server sees the client identity');

  t.test('a certificate from another CA is refused', async (t) => {
    const foreign = await EmbeddedCaClient.open(join(env.dir, 'foreign'));
    const other = new CertManager({ client: foreign, trustDomain: 'cluster.local', log });
    t.teardown(() => other.stop());
    await other.ensure('shop', 'web');
    const asClient = await handshake(apiCtx, other.tlsContextFor('shop', 'web')!);
    t.notOk(asClient.server.authorized, 'server refuses a foreign client');
    t.equal('peer' in asClient.server ? asClient.server.peer : undefined, undefined);
    const asServer = await handshake(other.tlsContextFor('shop', 'web')!, mgr.tlsContextFor('shop', 'web')!);
    t.ok(asServer.client.error, `client refuses a foreign server: ${asServer.client.error}`);
  });

  t.test('weft_cert_expiry_seconds', async (t) => {
    const text = await registry.metrics();
    const m = /weft_cert_expiry_seconds\{identity="cluster\.local\/ns\/shop\/sa\/api"\} ([0-9.e+]+)/.exec(text);
    t.ok(m, text);
    const secs = Number(m![1]);
    t.ok(secs > 86_000 && secs <= 86_400, `seconds until expiry (${secs})`);
    t.match(text, /identity="cluster\.local\/ns\/shop\/sa\/web"/);
    mgr.release('shop', 'web');
    t.equal(mgr.get('shop', 'web'), undefined);
    t.notMatch(await registry.metrics(), /sa\/web/, 'released identities leave the gauge');
  });

  t.test('verifyPeer with the wrong expected identity throws', async (t) => {
    const x = new X509Certificate(api.certPem);
    const fake = { authorized: true, getPeerCertificate: () => ({ raw: x.raw, subjectaltname: x.subjectAltName }) } as unknown as tls.TLSSocket;
    t.equal(verifyPeer(fake, 'cluster.local/ns/shop/sa/api'), API, 'a principal works too');
    t.throws(() => verifyPeer(fake, WEB), { code: 'WEFT_ERR_DENIED' });
    const unauth = { authorized: false, authorizationError: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' } as unknown as tls.TLSSocket;
    t.throws(() => verifyPeer(unauth), { code: 'WEFT_ERR_UNAUTHENTICATED', message: /UNABLE_TO_VERIFY/ });
    t.equal(peerSpiffeId(unauth), undefined);
  });
});

t.test('rotation: a short-lived certificate is replaced and the TLS context follows', async (t) => {
  const env = await setup(t);
  const mgr = new CertManager({ client: env.client, trustDomain: 'cluster.local', log, ttlMs: 3000, refreshFraction: 0.5 });
  t.teardown(() => mgr.stop());
  const first = await mgr.ensure('shop', 'api');
  t.ok(first.notAfter.getTime() - Date.now() <= 3000);
  const ctx1 = mgr.tlsContextFor('shop', 'api');
  const [rotated] = (await once(mgr, 'rotated')) as [WorkloadCertificate];
  t.not(rotated.certPem, first.certPem);
  t.not(rotated.keyPem, first.keyPem, 'a fresh key each rotation');
  t.ok(rotated.notAfter > first.notAfter);
  t.equal(mgr.get('shop', 'api'), rotated);
  const ctx2 = mgr.tlsContextFor('shop', 'api');
  t.ok(ctx2);
  t.not(ctx2, ctx1, 'a new TLS context after rotation');
  const res = await handshake(ctx2!, ctx2!);
  t.equal(res.client.peer, API);
});

t.test('CA down: the current certificate stays in service, retries back off, and recovery follows', async (t) => {
  const env = await setup(t);
  const mgr = new CertManager({
    client: env.client,
    trustDomain: 'cluster.local',
    log,
    ttlMs: 10_000,
    refreshFraction: 0.1,
    backoff: { initialMs: 100, maxMs: 400 },
  });
  t.teardown(() => mgr.stop());
  const first = await mgr.ensure('shop', 'api');
  const port = env.server.port;
  await env.server.close();

  const failures: Array<{ attempt: number; retryInMs: number; error: Error }> = [];
  mgr.on('refreshFailed', (f) => failures.push(f));
  while (failures.length < 3) await once(mgr, 'refreshFailed');
  t.same(
    failures.map((f) => f.attempt),
    [1, 2, 3],
  );
  t.match(failures[0]!.error, { reason: 'unreachable' });
  t.ok(failures[2]!.retryInMs >= 200 && failures[2]!.retryInMs <= 400, `backoff grows (${failures.map((f) => Math.round(f.retryInMs))})`);
  t.equal(mgr.get('shop', 'api'), first, 'still serving the current certificate');
  t.ok(mgr.tlsContextFor('shop', 'api'));
  t.equal(mgr.status()[0]!.state, 'valid');
  t.ok(mgr.status()[0]!.failures >= 3);

  const back = await startCaServer({ ca: env.ca, listen: { host: '127.0.0.1', port }, authorize: () => true, log });
  t.teardown(() => back.close());
  const [rotated] = (await once(mgr, 'rotated')) as [WorkloadCertificate];
  t.not(rotated.certPem, first.certPem);
  t.equal(mgr.get('shop', 'api'), rotated);
  t.equal(mgr.status()[0]!.failures, 0);
});

t.test('expiry with the CA down: get() stops returning the certificate', async (t) => {
  const ca = await CertificateAuthority.open(join(t.testdir(), 'ca'));
  const embedded = new EmbeddedCaClient({ ca });
  let down = false;
  const flaky: CertificateSigner = {
    rootPem: ca.rootPem,
    sign: (...args) => (down ? Promise.reject(new Error('CA down')) : embedded.sign(...args)),
  };
  const mgr = new CertManager({ client: flaky, trustDomain: 'cluster.local', log, ttlMs: 1500, refreshFraction: 0.9, backoff: { initialMs: 200, maxMs: 200 } });
  // The manager's timers are unref'd (they never hold a process open); nothing else here does.
  const keepAlive = setInterval(() => undefined, 1000);
  t.teardown(() => {
    clearInterval(keepAlive);
    mgr.stop();
  });
  await mgr.ensure('shop', 'api');
  down = true;
  // notBefore is backdated; the cert expires 1.5s after issue.
  await new Promise((r) => setTimeout(r, 1700));
  const expired = once(mgr, 'expired');
  t.equal(mgr.get('shop', 'api'), undefined);
  t.equal(mgr.tlsContextFor('shop', 'api'), undefined);
  await expired;
  t.equal(mgr.status()[0]!.state, 'expired');
  down = false;
  const [issued] = (await once(mgr, 'issued')) as [WorkloadCertificate];
  t.equal(mgr.get('shop', 'api'), issued, 'recovers once the CA answers');
});

t.test('ensure: released or stopped before issue rejects; a CA refusal keeps retrying', async (t) => {
  const env = await setup(t);
  const mgr = new CertManager({ client: env.client, trustDomain: 'cluster.local', log, backoff: { initialMs: 50, maxMs: 100 } });
  const pending = mgr.ensure('shop', 'db'); // not on node-a: 403
  const [failure] = (await once(mgr, 'refreshFailed')) as [{ error: Error }];
  t.match(failure.error, { reason: 'denied', status: 403 });
  mgr.release('shop', 'db');
  await t.rejects(pending, /released before it was issued/);
  const p2 = mgr.ensure('shop', 'other');
  mgr.stop();
  await t.rejects(p2, /stopped/);
  await t.rejects(mgr.ensure('shop', 'api'), /stopped/);
  await t.rejects(new CertManager({ client: env.client, trustDomain: 'cluster.local' }).ensure('sh op', 'api'), { code: 'WEFT_ERR_IDENTITY' });
});
