/**
 * The CA's root made in the cluster (`weft ca --kubernetes --root-secret NAME`) and the trust
 * bundle it publishes for the agents (`--root-configmap NAME`), against the fake API server
 * over real HTTP: replicas racing to create the root agree on one (409 AlreadyExists, then read
 * back), a restart reuses it, and `--cacerts` publishes its root-cert.pem bundle instead.
 */
import t, { type Test } from 'tap';
import { X509Certificate } from 'node:crypto';
import { PassThrough } from 'node:stream';
import * as https from 'node:https';
import { join } from 'node:path';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { KubernetesRootStore } from '../../src/identity/ca-root-store.js';
import { runCaCommand } from '../../src/identity/ca-command.js';
import type { CaServer } from '../../src/identity/ca-server.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer } from '../lib/fake-apiserver.js';
import { makeIntermediate, makeRootCa, writeCacerts } from '../lib/pki.js';

const NS = 'weft-system';

async function startApi(t: Test): Promise<FakeApiServer> {
  const api = await FakeApiServer.start();
  t.teardown(() => api.close());
  return api;
}

function secretCert(api: FakeApiServer, name: string): string | undefined {
  const s = api.get('Secret', NS, name) as { data?: Record<string, string> } | undefined;
  return s?.data?.['tls.crt'] && Buffer.from(s.data['tls.crt'], 'base64').toString('utf8');
}

function bundleOf(api: FakeApiServer, name: string): string | undefined {
  return (api.get('ConfigMap', NS, name) as { data?: Record<string, string> } | undefined)?.data?.['root.pem'];
}

/** GET /v1/root of a running CA, verified against `ca`. */
function getRoot(server: CaServer, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    https
      .get({ host: '127.0.0.1', port: server.port, path: '/v1/root', ca, checkServerIdentity: () => undefined, agent: false }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

/** Runs `weft ca --kubernetes ...` in-process until the test ends. */
async function serveCa(t: Test, api: FakeApiServer, args: string[]): Promise<CaServer> {
  const ac = new AbortController();
  let listening!: (s: CaServer) => void;
  const started = new Promise<CaServer>((r) => (listening = r));
  const stderr = new PassThrough();
  let errText = '';
  stderr.on('data', (c: Buffer) => (errText += c.toString()));
  const done = runCaCommand(['--kubernetes', '--listen', '127.0.0.1:0', ...args], { signal: ac.signal, stderr, log: silentLogger, kubeConfig: api.kubeConfig(), onListening: listening });
  const server = await Promise.race([started, done.then((code) => Promise.reject(new Error(`exited ${code}: ${errText}`)))]);
  t.teardown(async () => {
    ac.abort();
    await done;
  });
  return server;
}

t.test('replicas starting at once agree on one root kept in a Secret; a restart reuses it', async (t) => {
  const api = await startApi(t);
  const base = t.testdir();
  const store = () => new KubernetesRootStore({ kubeConfig: api.kubeConfig(), namespace: NS, name: 'weft-ca-root-key' });
  // The race made certain: no replica goes on from its (empty) read until all three have read.
  let arrived = 0;
  let release!: () => void;
  const barrier = new Promise<void>((r) => (release = r));
  class RacingStore extends KubernetesRootStore {
    override async load() {
      const got = await super.load();
      if (++arrived === 3) release();
      await barrier;
      return got;
    }
  }
  const racing = () => new RacingStore({ kubeConfig: api.kubeConfig(), namespace: NS, name: 'weft-ca-root-key' });
  const [a, b, c] = await Promise.all([0, 1, 2].map((i) => CertificateAuthority.open(join(base, `replica-${i}`), { rootStore: racing() })));
  t.equal(a!.rootPem, b!.rootPem, 'replica 0 and 1 sign under the same root');
  t.equal(a!.rootPem, c!.rootPem, 'and replica 2');
  t.equal(secretCert(api, 'weft-ca-root-key'), a!.rootPem, 'the root is the one in the Secret');
  const posts = api.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/secrets'));
  t.equal(posts.length, 3, 'all three found no Secret and created a root: two were answered 409 and took the winner');
  const secret = api.get('Secret', NS, 'weft-ca-root-key') as { type?: string; metadata: { resourceVersion?: string } };
  t.equal(secret.type, 'kubernetes.io/tls');
  const rv = secret.metadata.resourceVersion;

  const restarted = await CertificateAuthority.open(join(base, 'restarted'), { rootStore: store() });
  t.equal(restarted.rootPem, a!.rootPem, 'a restarted CA (new pod, empty state dir) reuses the root');
  t.equal((api.get('Secret', NS, 'weft-ca-root-key') as { metadata: { resourceVersion?: string } }).metadata.resourceVersion, rv, 'and did not write the Secret again');
  const root = new X509Certificate(a!.rootPem);
  t.ok(root.ca && root.checkIssued(root), 'a self-signed CA certificate');
});

t.test('a Secret without its key is refused, not replaced', async (t) => {
  const api = await startApi(t);
  api.apply({ kind: 'Secret', metadata: { name: 'weft-ca-root-key', namespace: NS }, data: { 'tls.crt': Buffer.from('x').toString('base64') } });
  const store = new KubernetesRootStore({ kubeConfig: api.kubeConfig(), namespace: NS, name: 'weft-ca-root-key' });
  await t.rejects(CertificateAuthority.open(t.testdir(), { rootStore: store }), { message: /Secret weft-system\/weft-ca-root-key exists but lacks tls\.crt or tls\.key/ });
  t.notOk(
    api.requests.some((r) => r.method === 'POST'),
    'nothing was created',
  );
});

t.test('weft ca --kubernetes --root-secret --root-configmap: the root is made in-cluster and published for the agents', async (t) => {
  const api = await startApi(t);
  const base = t.testdir();
  const server = await serveCa(t, api, ['--state-dir', join(base, 'state'), '--root-secret', 'weft-ca-root-key', '--root-configmap', 'weft-ca-root']);
  const bundle = bundleOf(api, 'weft-ca-root');
  t.ok(bundle, 'the ConfigMap weft-ca-root was created');
  t.equal(bundle, secretCert(api, 'weft-ca-root-key'), 'holding the root of the Secret');
  t.equal(await getRoot(server, bundle!), bundle, 'the CA serves under it (verified against the bundle) and answers it on /v1/root');

  // A second replica (its own empty state dir): same root, and the ConfigMap is left as it is.
  const writesBefore = api.requests.filter((r) => r.method === 'PUT' || r.method === 'POST').length;
  const second = await serveCa(t, api, ['--state-dir', join(base, 'state-2'), '--root-secret', 'weft-ca-root-key', '--root-configmap', 'weft-ca-root']);
  t.equal(await getRoot(second, bundle!), bundle, 'the second replica serves the same root');
  t.equal(api.requests.filter((r) => r.method === 'PUT' || r.method === 'POST').length, writesBefore, 'and wrote nothing');
});

t.test('weft ca --kubernetes --cacerts: the bundle of root-cert.pem replaces the published one', async (t) => {
  const api = await startApi(t);
  const base = t.testdir();
  api.apply({ kind: 'ConfigMap', metadata: { name: 'weft-ca-root', namespace: NS }, data: { 'root.pem': 'an older bundle\n', other: 'kept' } });
  const oldRoot = await makeRootCa('old root');
  const newRoot = await makeRootCa('new root');
  const inter = await makeIntermediate(newRoot, 'weft intermediate');
  const dir = writeCacerts(join(base, 'cacerts'), { signer: inter, roots: [oldRoot, newRoot], chain: [inter, newRoot] });
  const server = await serveCa(t, api, ['--state-dir', join(base, 'state'), '--cacerts', dir, '--root-configmap', 'weft-ca-root']);
  const cm = api.get('ConfigMap', NS, 'weft-ca-root') as unknown as { data: Record<string, string> };
  t.equal(cm.data['root.pem'], oldRoot.certPem + newRoot.certPem, 'the ConfigMap now holds both roots');
  t.equal(cm.data.other, 'kept', 'other keys are kept');
  t.equal(await getRoot(server, newRoot.certPem), cm.data['root.pem'], 'the CA serves with the intermediate; a client holding only the new root verifies it');
  t.notOk(api.get('Secret', NS, 'weft-ca-root-key'), 'no root Secret is made with --cacerts');

  const stderr = new PassThrough();
  let err = '';
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await runCaCommand(['--kubernetes', '--state-dir', join(base, 's2'), '--cacerts', dir, '--root-secret', 'x'], { stderr, log: silentLogger, kubeConfig: api.kubeConfig() });
  t.equal(code, 2, '--cacerts with --root-secret is a usage error');
  t.match(err, /--cacerts and --root-secret are alternatives/);
});
