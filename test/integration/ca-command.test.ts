import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { runCaCommand, parseListen } from '../../src/identity/ca-command.js';
import { CaClient } from '../../src/identity/ca-client.js';
import type { CaServer } from '../../src/identity/ca-server.js';
import { ECDSA_SHA256, generateP256, x509 } from '../../src/identity/x509.js';

const log = pino({ level: 'silent' });

async function csr(): Promise<string> {
  const keys = await generateP256();
  return (await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: ECDSA_SHA256 })).toString('pem');
}

function capture() {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (c: Buffer) => (text += c.toString()));
  return { stream, text: () => text };
}

const MESH = (extra = '') => `
node: { name: node-a, address: 10.77.0.1 }
mesh: { trustDomain: example.org }
workloads:
  - { name: api-0, namespace: shop, node: node-a, ip: 10.77.0.11, serviceAccount: api }
  - { name: db-0, namespace: shop, node: node-b, ip: 10.77.0.21, serviceAccount: db }
${extra}`;

/** Starts `weft ca` in-process; returns the server and a stop function. */
async function serve(t: Test, args: string[]) {
  const ac = new AbortController();
  let listening!: (s: CaServer) => void;
  const started = new Promise<CaServer>((r) => (listening = r));
  const stderr = capture();
  const done = runCaCommand(args, { signal: ac.signal, log, stderr: stderr.stream, onListening: listening });
  const server = await Promise.race([started, done.then((code) => Promise.reject(new Error(`exited ${code}: ${stderr.text()}`)))]);
  t.teardown(async () => {
    ac.abort();
    await done;
  });
  return { server, done, stop: () => ac.abort() };
}

t.test('weft ca token prints a token that the served CA accepts', async (t) => {
  const dir = t.testdir();
  const stateDir = join(dir, 'ca');
  const cfg = join(dir, 'mesh.yaml');
  await writeFile(cfg, MESH());

  const out = capture();
  t.equal(await runCaCommand(['token', '--state-dir', stateDir, '--node', 'node-a'], { stdout: out.stream }), 0);
  const token = out.text().trim();
  t.match(token, /^weft1\./);
  await writeFile(join(dir, 'node-a.token'), out.text());

  const { server, done, stop } = await serve(t, ['--listen', '127.0.0.1:0', '--state-dir', stateDir, '--config', cfg]);
  t.ok(existsSync(join(stateDir, 'root.pem')), 'DIR/root.pem written');
  const client = new CaClient({ url: server.url, rootCert: join(stateDir, 'root.pem'), tokenFile: join(dir, 'node-a.token') });
  const signed = await client.sign(await csr(), 'shop', 'api');
  t.match(signed.certChain[0], /BEGIN CERTIFICATE/);
  const { X509Certificate } = await import('node:crypto');
  t.equal(new X509Certificate(signed.certChain[0]!).subjectAltName, 'URI:spiffe://example.org/ns/shop/sa/api', 'trust domain from the config');
  await t.rejects(client.sign(await csr(), 'shop', 'db'), { code: 'WEFT_ERR_IDENTITY', status: 403 });
  await t.rejects(client.sign(await csr(), 'shop', 'web'), { code: 'WEFT_ERR_IDENTITY', status: 403 });

  // The config file is re-read when it changes: a new workload on node-a becomes signable.
  await new Promise((r) => setTimeout(r, 20));
  await writeFile(cfg, MESH('  - { name: web-0, namespace: shop, node: node-a, ip: 10.77.0.12, serviceAccount: web }'));
  t.equal((await client.sign(await csr(), 'shop', 'web')).certChain.length, 2);
  // An invalid edit keeps the last good list.
  await new Promise((r) => setTimeout(r, 20));
  await writeFile(cfg, 'workloads: 7\n');
  t.equal((await client.sign(await csr(), 'shop', 'web')).certChain.length, 2);

  stop();
  t.equal(await done, 0, 'stops on abort');
});

t.test('without --config every request is refused', async (t) => {
  const dir = t.testdir();
  const out = capture();
  await runCaCommand(['ca', 'token', '--state-dir', dir, '--node', 'node-a'], { stdout: out.stream });
  await writeFile(join(dir, 'token'), out.text());
  const { server } = await serve(t, ['ca', '--listen', '127.0.0.1:0', '--state-dir', dir]);
  const client = new CaClient({ url: server.url, rootCert: await readFile(join(dir, 'root.pem'), 'utf8'), tokenFile: join(dir, 'token') });
  await t.rejects(client.sign(await csr(), 'shop', 'api'), { code: 'WEFT_ERR_IDENTITY', status: 403 });
});

t.test('--allow-any-identity', async (t) => {
  const dir = t.testdir();
  const out = capture();
  await runCaCommand(['token', '--state-dir', dir, '--node', 'node-z'], { stdout: out.stream });
  await writeFile(join(dir, 'token'), out.text());
  const { server } = await serve(t, ['--listen', '127.0.0.1:0', '--state-dir', dir, '--allow-any-identity']);
  const client = new CaClient({ url: server.url, rootCert: join(dir, 'root.pem'), tokenFile: join(dir, 'token') });
  t.equal((await client.sign(await csr(), 'any', 'thing')).certChain.length, 2);
});

t.test('rotate-token-secret invalidates earlier tokens', async (t) => {
  const dir = t.testdir();
  const out = capture();
  await runCaCommand(['token', '--state-dir', dir, '--node', 'node-a'], { stdout: out.stream });
  await writeFile(join(dir, 'token'), out.text());
  t.equal(await runCaCommand(['rotate-token-secret', '--state-dir', dir], { stdout: capture().stream }), 0);
  const { server } = await serve(t, ['--listen', '127.0.0.1:0', '--state-dir', dir, '--allow-any-identity']);
  const client = new CaClient({ url: server.url, rootCert: join(dir, 'root.pem'), tokenFile: join(dir, 'token') });
  await t.rejects(client.sign(await csr(), 'shop', 'api'), { code: 'WEFT_ERR_IDENTITY', status: 401 });
});

t.test('usage errors', async (t) => {
  const dir = t.testdir();
  const err = capture();
  t.equal(await runCaCommand(['token', '--node', 'x'], { stderr: err.stream }), 2);
  t.match(err.text(), /--state-dir DIR and --node NAME are required/);
  t.equal(await runCaCommand(['--listen', '127.0.0.1:0'], { stderr: err.stream }), 2);
  t.equal(await runCaCommand(['--bogus'], { stderr: err.stream }), 2);
  t.equal(await runCaCommand(['frobnicate'], { stderr: err.stream }), 2);
  t.equal(await runCaCommand(['--listen', 'nope', '--state-dir', join(dir, 'n')], { stderr: err.stream }), 1);
  t.match(err.text(), /expected ADDR:PORT/);
  const cfg = join(dir, 'bad.yaml');
  await writeFile(cfg, 'workloads:\n  - { name: a }\n');
  t.equal(await runCaCommand(['--listen', '127.0.0.1:0', '--state-dir', join(dir, 's'), '--config', cfg], { stderr: err.stream, log }), 1);
  t.match(err.text(), /workloads\[0\]\.namespace/);
  t.same(parseListen('[::1]:15012'), { host: '::1', port: 15012 });
  t.same(parseListen(':15012'), { host: '0.0.0.0', port: 15012 });
  t.same(parseListen('10.0.0.1:1'), { host: '10.0.0.1', port: 1 });
});
