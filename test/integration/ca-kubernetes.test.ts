/**
 * `weft ca --kubernetes` in-process on 127.0.0.1 against the fake API server: agents
 * authenticate with projected ServiceAccount tokens (TokenReview, audience weft-ca) and get
 * certificates only for pods the API lists on their node.
 *
 * Chosen answers (src/identity/ca-kubernetes.ts): an invalid, expired, unknown, wrong-audience
 * or `weft1.` token is 401; a valid token of a ServiceAccount that is not the agent's is 403
 * (`not_an_agent`: authenticated, but not allowed to ask); an identity with no pod on the
 * caller's node is 403 (`denied`); an API server that cannot be asked is 503.
 */
import t, { type Test } from 'tap';
import { X509Certificate } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import * as https from 'node:https';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { runCaCommand, type CaCommandIo } from '../../src/identity/ca-command.js';
import { CaClient, CaRequestError } from '../../src/identity/ca-client.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import type { CaServer } from '../../src/identity/ca-server.js';
import { agentUsername } from '../../src/identity/ca-kubernetes.js';
import { ECDSA_SHA256, generateP256, x509 } from '../../src/identity/x509.js';
import { FakeApiServer, podObject, serviceAccountToken } from '../lib/fake-apiserver.js';

async function csr(): Promise<string> {
  const keys = await generateP256();
  return (await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: ECDSA_SHA256 })).toString('pem');
}

/** A pino logger whose JSON lines the test can read. */
function captureLog() {
  const stream = new PassThrough();
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  stream.on('data', (c: Buffer) => {
    buf += c.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      buf = buf.slice(nl + 1);
    }
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

/** Starts `weft ca --kubernetes` in-process. */
async function serve(t: Test, args: string[], io: CaCommandIo) {
  const ac = new AbortController();
  let listening!: (s: CaServer) => void;
  const started = new Promise<CaServer>((r) => (listening = r));
  const stderr = new PassThrough();
  let errText = '';
  stderr.on('data', (c: Buffer) => (errText += c.toString()));
  const done = runCaCommand(args, { signal: ac.signal, stderr, onListening: listening, ...io });
  const server = await Promise.race([started, done.then((code) => Promise.reject(new Error(`exited ${code}: ${errText}`)))]);
  t.teardown(async () => {
    ac.abort();
    await done;
  });
  return server;
}

/** POST /v1/sign with `token`; the JSON answer. */
function sign(server: CaServer, rootPem: string, token: string | undefined, body: Record<string, unknown>) {
  return new Promise<{ status: number; body: any; headers: Record<string, unknown> }>((resolve, reject) => {
    const text = JSON.stringify(body);
    const req = https.request(
      {
        host: '127.0.0.1',
        port: server.port,
        method: 'POST',
        path: '/v1/sign',
        ca: rootPem,
        agent: false,
        headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()), headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(text);
  });
}

const AGENT = { ns: 'weft-system', sa: 'weft-agent' };

/** The cluster: two nodes, an agent pod on each, workloads on both. */
function populate(api: FakeApiServer) {
  api.apply(podObject('weft-agent-a', AGENT.ns, { node: 'node-a', serviceAccount: AGENT.sa, uid: 'uid-agent-a', hostNetwork: true }));
  api.apply(podObject('weft-agent-b', AGENT.ns, { node: 'node-b', serviceAccount: AGENT.sa, uid: 'uid-agent-b', hostNetwork: true }));
  api.apply(podObject('api-0', 'shop', { node: 'node-a', serviceAccount: 'api', ip: '10.77.0.11' }));
  api.apply(podObject('db-0', 'shop', { node: 'node-b', serviceAccount: 'db', ip: '10.77.1.21' }));
  api.apply(podObject('batch-0', 'shop', { node: 'node-a', serviceAccount: 'batch', phase: 'Succeeded' }));
  // Agent tokens, as the kubelet projects them (audience weft-ca), bound to the agent pod and (1.30+) its node.
  api.setToken('tok-a', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-a', podUid: 'uid-agent-a', node: 'node-a', audiences: ['weft-ca'] }));
  api.setToken('tok-b', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-b', podUid: 'uid-agent-b', node: 'node-b', audiences: ['weft-ca'] }));
}

const tokenReviews = (api: FakeApiServer) => api.requests.filter((r) => r.path === '/apis/authentication.k8s.io/v1/tokenreviews');
const podLists = (api: FakeApiServer, ns: string) => api.requests.filter((r) => r.method === 'GET' && r.path === `/api/v1/namespaces/${ns}/pods`);

t.test('agent tokens, node binding and pod authorization', async (t) => {
  const api = await FakeApiServer.start();
  t.teardown(() => api.close());
  populate(api);
  const dir = t.testdir();
  const stateDir = join(dir, 'ca');
  const { log, lines } = captureLog();
  const server = await serve(t, ['--kubernetes', '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--trust-domain', 'example.org'], {
    log,
    kubeConfig: api.kubeConfig(),
    // A pod scheduled a moment ago must be found at once in this test.
    kubernetes: { missRefreshMs: 0 },
  });
  const rootPem = await readFile(join(stateDir, 'root.pem'), 'utf8');

  t.test('an agent bound to node-a gets a certificate for a pod on node-a', async (t) => {
    const res = await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'api' });
    t.equal(res.status, 200, JSON.stringify(res.body));
    t.equal(res.body.spiffeId, 'spiffe://example.org/ns/shop/sa/api');
    const leaf = new X509Certificate(res.body.certChain[0]);
    t.equal(leaf.subjectAltName, 'URI:spiffe://example.org/ns/shop/sa/api');
    t.ok(leaf.verify(new X509Certificate(rootPem).publicKey));

    // What the CA asked the API: a TokenReview for audience weft-ca, and node-a's pods in shop.
    const review = tokenReviews(api).at(-1)!;
    t.same(review.body, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: 'tok-a', audiences: ['weft-ca'] } });
    const list = podLists(api, 'shop').at(-1)!;
    t.equal(list.query.fieldSelector, 'spec.nodeName=node-a');
    // The agent pod was not looked up: the token names its node.
    t.notOk(api.requests.some((r) => r.path === `/api/v1/namespaces/${AGENT.ns}/pods/weft-agent-a`));

    // Naming the pod narrows the check.
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'api', workload: 'api-0' })).status, 200);
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'api', workload: 'api-9' })).status, 403);
  });

  t.test('a pod on node-b is refused to node-a (403); node-b may', async (t) => {
    const res = await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' });
    t.equal(res.status, 403);
    t.match(res.body, { error: { code: 'denied', message: /node node-a has no workload running as shop\/db/ } });
    t.ok(
      lines.some((l) => l.msg === 'refused a certificate: the node runs no such workload' && l.node === 'node-a'),
      'logged',
    );
    t.equal((await sign(server, rootPem, 'tok-b', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' })).status, 200);
    // A finished pod (Succeeded) runs nothing.
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'batch' })).status, 403);
    // Nor does a namespace with no pods there.
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'other', serviceAccount: 'api' })).status, 403);
  });

  t.test('a pod scheduled on node-a just now is found; lists are cached', async (t) => {
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'web' })).status, 403);
    api.apply(podObject('web-0', 'shop', { node: 'node-a', serviceAccount: 'web', phase: 'Pending' }));
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'web' })).status, 200);
    const before = podLists(api, 'shop').length;
    const reviews = tokenReviews(api).length;
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'web' })).status, 200);
    t.equal((await sign(server, rootPem, 'tok-a', { csr: await csr(), namespace: 'shop', serviceAccount: 'api' })).status, 200);
    t.equal(podLists(api, 'shop').length, before, 'granted from the cached list');
    t.equal(tokenReviews(api).length, reviews, 'the authenticated token is remembered briefly');
  });

  t.test('invalid tokens: 401', async (t) => {
    const body = { csr: await csr(), namespace: 'shop', serviceAccount: 'api' };
    const none = await sign(server, rootPem, undefined, body);
    t.equal(none.status, 401);
    t.match(none.headers['www-authenticate'], /Bearer/);

    const unknown = await sign(server, rootPem, 'no-such-token', body);
    t.equal(unknown.status, 401);
    t.match(unknown.body, { error: { code: 'unauthenticated', message: /did not authenticate the token for audience weft-ca: .*invalid bearer token/ } });
    t.ok(
      lines.some((l) => l.msg === 'refused a signing request: authentication failed' && l.status === 401),
      'logged',
    );

    // The agent's own API token (audience: the API server) is no credential for the CA.
    api.setToken('api-audience', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-a', node: 'node-a' }));
    const apiToken = await sign(server, rootPem, 'api-audience', body);
    t.equal(apiToken.status, 401);
    t.match(apiToken.body.error.message, /audiences is invalid/);

    api.setToken('expired', { ...serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-a', node: 'node-a', audiences: ['weft-ca'] }), authenticated: false });
    t.equal((await sign(server, rootPem, 'expired', body)).status, 401);

    // A legacy Secret token of the agent account: authentic, but bound to no pod, so no node.
    api.setToken('legacy', { ...serviceAccountToken(AGENT.ns, AGENT.sa, { audiences: ['weft-ca'] }) });
    const legacy = await sign(server, rootPem, 'legacy', body);
    t.equal(legacy.status, 401);
    t.match(legacy.body.error.message, /bound to no pod/);

    // Node bootstrap tokens are for the non-Kubernetes mode only; no TokenReview is spent on them.
    const reviews = tokenReviews(api).length;
    const weft1 = await sign(server, rootPem, 'weft1.bm9kZS1h.1700000000.abc', body);
    t.equal(weft1.status, 401);
    t.match(weft1.body.error.message, /not accepted by a CA running with --kubernetes/);
    t.equal(tokenReviews(api).length, reviews);
  });

  t.test('a valid token of another service account: 403', async (t) => {
    // The workload's own projected token, even for the right audience and node.
    api.setToken('workload', serviceAccountToken('shop', 'api', { pod: 'api-0', node: 'node-a', audiences: ['weft-ca'] }));
    const res = await sign(server, rootPem, 'workload', { csr: await csr(), namespace: 'shop', serviceAccount: 'api' });
    t.equal(res.status, 403);
    t.match(res.body, { error: { code: 'not_an_agent', message: /system:serviceaccount:shop:api is not a weft agent.*system:serviceaccount:weft-system:weft-agent/ } });
    t.ok(
      lines.some((l) => l.code === 'not_an_agent'),
      'logged',
    );
  });

  t.test('without node-name in the token, the node comes from the bound agent pod', async (t) => {
    api.setToken('pod-only-b', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-b', podUid: 'uid-agent-b', audiences: ['weft-ca'] }));
    const ok = await sign(server, rootPem, 'pod-only-b', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' });
    t.equal(ok.status, 200, JSON.stringify(ok.body));
    t.ok(
      api.requests.some((r) => r.method === 'GET' && r.path === `/api/v1/namespaces/${AGENT.ns}/pods/weft-agent-b`),
      'looked up the agent pod',
    );
    t.equal((await sign(server, rootPem, 'pod-only-b', { csr: await csr(), namespace: 'shop', serviceAccount: 'api' })).status, 403, 'node-b, not node-a');

    api.setToken('gone-pod', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-z', audiences: ['weft-ca'] }));
    const gone = await sign(server, rootPem, 'gone-pod', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' });
    t.equal(gone.status, 401);
    t.match(gone.body.error.message, /weft-agent-z that the token is bound to no longer exists/);

    api.setToken('old-uid', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-b', podUid: 'uid-before', audiences: ['weft-ca'] }));
    const old = await sign(server, rootPem, 'old-uid', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' });
    t.equal(old.status, 401);
    t.match(old.body.error.message, /earlier pod/);
  });

  t.test('the API server failing or unreachable: 503', async (t) => {
    const body = async (ns = 'shop') => ({ csr: await csr(), namespace: ns, serviceAccount: 'api' });
    // TokenReview fails.
    api.setToken('fresh', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-a', node: 'node-a', audiences: ['weft-ca'] }));
    api.failNext(1, 500);
    const review = await sign(server, rootPem, 'fresh', await body());
    t.equal(review.status, 503);
    t.equal(review.headers['retry-after'], '5');
    t.match(review.body, { error: { code: 'unavailable', message: /answered 500 to TokenReview: injected failure/ } });
    t.ok(
      lines.some((l) => l.msg === 'cannot authenticate a signing request' && l.status === 503 && l.level === 50),
      'logged as an error',
    );
    // The CA's own credentials refused (RBAC): still 503, with a hint.
    api.failNext(1, 403);
    const rbac = await sign(server, rootPem, 'fresh', await body());
    t.equal(rbac.status, 503);
    t.match(rbac.body.error.message, /weft-ca ClusterRole/);
    // The token authenticates (and is then remembered) but the pod list fails.
    t.equal((await sign(server, rootPem, 'fresh', await body())).status, 200);
    api.apply(podObject('api-1', 'shop2', { node: 'node-a', serviceAccount: 'api' }));
    api.failNext(1, 503);
    const list = await sign(server, rootPem, 'fresh', await body('shop2'));
    t.equal(list.status, 503);
    t.match(list.body.error.message, /list pods in shop2 on node node-a/);
    t.ok(
      lines.some((l) => l.msg === 'cannot authorize a signing request' && l.status === 503),
      'logged',
    );
    t.equal((await sign(server, rootPem, 'fresh', await body('shop2'))).status, 200, 'fine again once the API answers');

    // The CaClient sees a server error (the CertManager retries those with backoff).
    await writeFile(join(dir, 'fresh.token'), 'fresh');
    const client = new CaClient({ url: server.url, rootCert: rootPem, tokenFile: join(dir, 'fresh.token') });
    api.setToken('fresh', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-a', node: 'node-a', audiences: ['weft-ca'] }));
    api.apply(podObject('api-2', 'shop3', { node: 'node-a', serviceAccount: 'api' }));
    api.failNext(1, 500);
    const err = await client.sign(await csr(), 'shop3', 'api').catch((e: unknown) => e);
    t.type(err, CaRequestError);
    t.match(err, { reason: 'server', status: 503, message: /answered 503: the Kubernetes API .* answered 500 to list pods in shop3/ });
  });
});

t.test('API server down or hanging: 503; CaClient and CertManager end to end, token file rotated', async (t) => {
  let api = await FakeApiServer.start();
  t.teardown(() => api.close());
  const port = Number(new URL(api.url).port);
  populate(api);
  const kubeConfig = api.kubeConfig();
  const dir = t.testdir();
  const stateDir = join(dir, 'ca');
  const server = await serve(t, ['--kubernetes', '--listen=127.0.0.1:0', `--state-dir=${stateDir}`, '--agent-service-account=weft-system/weft-agent'], {
    log: pino({ level: 'silent' }),
    kubeConfig,
    kubernetes: { requestTimeoutMs: 300 },
  });
  const rootFile = join(stateDir, 'root.pem');
  const rootPem = await readFile(rootFile, 'utf8');
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, 'tok-a\n');
  const client = new CaClient({ url: server.url, rootCert: rootFile, tokenFile });

  // End to end with the agent's client: default trust domain.
  const first = await client.sign(await csr(), 'shop', 'api');
  t.equal(new X509Certificate(first.certChain[0]!).subjectAltName, 'URI:spiffe://cluster.local/ns/shop/sa/api');
  await t.rejects(client.sign(await csr(), 'shop', 'db'), { reason: 'denied', status: 403, message: /node node-a has no workload running as shop\/db/ });

  // The kubelet replaces the projected token (atomically); the old one stops being valid.
  await writeFile(join(dir, 'token.new'), 'tok-a2');
  await rename(join(dir, 'token.new'), tokenFile);
  api.deleteToken('tok-a');
  api.setToken('tok-a2', serviceAccountToken(AGENT.ns, AGENT.sa, { pod: 'weft-agent-a', podUid: 'uid-agent-a', node: 'node-a', audiences: ['weft-ca'] }));
  t.equal((await client.sign(await csr(), 'shop', 'api')).certChain.length, 2);
  t.equal((tokenReviews(api).at(-1)!.body as any).spec.token, 'tok-a2', 'the client sent the new token');
  // A file with a token the API does not know: 401 for the client.
  await writeFile(tokenFile, 'tok-forged');
  await t.rejects(client.sign(await csr(), 'shop', 'api'), { reason: 'unauthenticated', status: 401, message: /did not authenticate the token/ });
  await writeFile(tokenFile, 'tok-b');

  // An API server that does not answer: 503 after the deadline.
  api.failNext(1, 0);
  const hung = await sign(server, rootPem, 'tok-b', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' });
  t.equal(hung.status, 503);
  t.match(hung.body.error.message, /did not answer TokenReview within 300 ms/);

  // An API server that is gone: 503, and the CertManager keeps retrying until it is back.
  await api.close();
  const refused = await sign(server, rootPem, 'tok-b', { csr: await csr(), namespace: 'shop', serviceAccount: 'db' });
  t.equal(refused.status, 503);
  t.match(refused.body, { error: { code: 'unavailable', message: /cannot reach the Kubernetes API \(http:\/\/127\.0\.0\.1:\d+\) for TokenReview/ } });

  const mgr = new CertManager({ client, trustDomain: 'cluster.local', backoff: { initialMs: 50, maxMs: 200 } });
  t.teardown(() => mgr.stop());
  const failures: unknown[] = [];
  mgr.on('refreshFailed', (e: { error: unknown }) => failures.push(e.error));
  const ready = mgr.ensure('shop', 'db');
  while (failures.length < 2) await new Promise((r) => setTimeout(r, 20));
  t.match(failures[0], { reason: 'server', status: 503 });

  api = await FakeApiServer.start({ port });
  populate(api);
  const cert = await ready;
  t.equal(cert.spiffeId, 'spiffe://cluster.local/ns/shop/sa/db');
  t.equal(new X509Certificate(cert.certPem).subjectAltName, 'URI:spiffe://cluster.local/ns/shop/sa/db');
});

t.test('flags', async (t) => {
  t.equal(agentUsername('weft-system/weft-agent'), 'system:serviceaccount:weft-system:weft-agent');
  t.equal(agentUsername('system:serviceaccount:mesh:agent'), 'system:serviceaccount:mesh:agent');
  t.throws(() => agentUsername('weft-agent'), /expected NAMESPACE\/NAME/);

  const dir = t.testdir();
  const run = async (args: string[]) => {
    const stderr = new PassThrough();
    let text = '';
    stderr.on('data', (c: Buffer) => (text += c.toString()));
    const code = await runCaCommand(args, { stderr, log: pino({ level: 'silent' }) });
    return { code, text };
  };
  t.match(await run(['--kubernetes', '--state-dir', dir, '--allow-any-identity']), { code: 2, text: /--kubernetes takes the workloads from the API: drop --allow-any-identity/ });
  t.match(await run(['--state-dir', dir, '--agent-service-account', 'a/b']), { code: 2, text: /--agent-service-account only apply with --kubernetes/ });
  t.match(await run(['--kubernetes', '--state-dir', dir, '--agent-service-account', 'nope']), { code: 1, text: /expected NAMESPACE\/NAME/ });

  // A custom agent account and audience.
  const api = await FakeApiServer.start();
  t.teardown(() => api.close());
  api.apply(podObject('agent-x', 'mesh', { node: 'node-x', serviceAccount: 'agent', uid: 'u-x' }));
  api.apply(podObject('api-0', 'shop', { node: 'node-x', serviceAccount: 'api' }));
  api.setToken('x', serviceAccountToken('mesh', 'agent', { pod: 'agent-x', podUid: 'u-x', node: 'node-x', audiences: ['mesh-ca'] }));
  api.setToken('y', serviceAccountToken('weft-system', 'weft-agent', { pod: 'agent-x', node: 'node-x', audiences: ['mesh-ca'] }));
  const stateDir = join(dir, 'ca2');
  // API credentials from a kubeconfig file.
  const kubeconfig = join(dir, 'kubeconfig');
  await writeFile(kubeconfig, api.kubeConfig().exportConfig());
  const server = await serve(t, ['--kubernetes', '--listen=127.0.0.1:0', `--state-dir=${stateDir}`, '--agent-service-account=mesh/agent', '--token-audience=mesh-ca', `--kubeconfig=${kubeconfig}`], {
    log: pino({ level: 'silent' }),
  });
  const rootPem = await readFile(join(stateDir, 'root.pem'), 'utf8');
  t.equal((await sign(server, rootPem, 'x', { csr: await csr(), namespace: 'shop', serviceAccount: 'api' })).status, 200);
  t.same((tokenReviews(api).at(-1)!.body as any).spec.audiences, ['mesh-ca']);
  t.equal((await sign(server, rootPem, 'y', { csr: await csr(), namespace: 'shop', serviceAccount: 'api' })).status, 403, 'the default agent account is not an agent here');
});
