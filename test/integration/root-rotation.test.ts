// Rotating the mesh root without restarting an agent, over real sockets: two in-process
// agents (node-a 127.0.0.1, node-b 127.0.0.2) with their tunnel (mTLS, 15008-style) between
// them, and a `weft ca` server in this process. The rotation follows deploy/README.md
// "Rotating the root":
//   0. the CA signs with a root made on a workstation (the simple layout, root.pem);
//   1. every agent's bundle (ca.rootCert) becomes old root + new root: traffic keeps flowing;
//   2. the CA restarts signing with an intermediate under the new root (Istio's cacerts):
//      node-b gets new leaves from it, node-a still holds old-root leaves; both verify;
//   3. the old root leaves node-b's bundle: a new session from node-a, still on an old-root
//      leaf, is refused with a clear error, while a connection already up keeps going; once
//      node-a's bundle drops the old root too, node-a replaces its leaves at once and traffic
//      flows again.
// Each agent re-reads its bundle file (written by rename, as the kubelet swaps a mounted
// ConfigMap); nothing is restarted but the CA.
import t from 'tap';
import net from 'node:net';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { authorizerFromIdentities, identitiesByNodeFromConfig, startCaServer, type CaServer } from '../../src/identity/ca-server.js';
import { parseConfig } from '../../src/config/load.js';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { makeIntermediate, makeRootCa, writeCacerts } from '../lib/pki.js';
import { freePort } from '../../bench/lib/net.js';

const NODE_A = '127.0.0.1';
const NODE_B = '127.0.0.2';
const CLIENT_IP = '127.0.3.1';
const REPORTER_IP = '127.0.3.2';
const API_IP = '127.0.3.11';
const ECHO_IP = '127.0.3.12';

function meshYaml(o: { node: string; address: string; tunnelPort: number; caUrl: string; dir: string; apiPort: number; echoPort: number; certTtl: string }): string {
  return `
node: { name: ${o.node}, address: ${o.address} }
nodes:
  - { name: node-a, address: ${NODE_A} }
  - { name: node-b, address: ${NODE_B} }
ports: { outbound: 0, inbound: 0, tunnel: ${o.tunnelPort}, admin: 0, metrics: 0 }
ca: { url: "${o.caUrl}", rootCert: ${o.dir}/${o.node}-roots/root.pem, tokenFile: ${o.dir}/${o.node}.token, certTtl: ${o.certTtl} }
stateDir: ${o.dir}/${o.node}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: client-0, namespace: shop, node: node-a, ip: ${CLIENT_IP}, serviceAccount: client, labels: { app: client } }
  - { name: reporter-0, namespace: shop, node: node-a, ip: ${REPORTER_IP}, serviceAccount: reporter, labels: { app: reporter } }
  - { name: api-0, namespace: shop, node: node-b, ip: ${API_IP}, serviceAccount: api, labels: { app: api } }
  - { name: echo-0, namespace: shop, node: node-b, ip: ${ECHO_IP}, serviceAccount: echo, labels: { app: echo } }
services:
  - { name: api, namespace: shop, vip: 10.96.3.20, ports: [ { port: 80, targetPort: ${o.apiPort}, protocol: http } ], selector: { app: api }, trafficPolicy: { connectionPool: { connectTimeout: 2s } } }
  - { name: echo, namespace: shop, vip: 10.96.3.40, ports: [ { port: 7000, targetPort: ${o.echoPort}, protocol: tcp } ], selector: { app: echo } }
`;
}

/** A pino logger whose JSON lines the test can read. */
function captureLog() {
  const stream = new PassThrough();
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  stream.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      buf = buf.slice(nl + 1);
    }
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A TCP connection through agent A to the echo service that stays open; `say` writes and waits for the echo. */
function openEcho(a: LoopbackAgent): Promise<{ say(text: string): Promise<string>; close(): void }> {
  a.route(CLIENT_IP, '10.96.3.40:7000', 'shop/client-0');
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: a.outboundPort, localAddress: CLIENT_IP });
    let got = '';
    let closed = false;
    s.on('data', (d) => (got += d.toString()));
    s.on('close', () => (closed = true));
    s.once('error', reject);
    s.once('connect', () =>
      resolve({
        say: (text) => {
          s.write(text);
          return waitFor(
            `the echo of ${text}`,
            async () => {
              if (closed) throw new Error(`the connection closed (got ${JSON.stringify(got)})`);
              return got.includes(text) && got;
            },
            10_000,
          );
        },
        close: () => s.destroy(),
      }),
    );
  });
}

t.test('a root rotated in three steps, agents never restarted', async (t) => {
  const dir = mkdtempDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const quiet = () => undefined;
  const api: Backend = await startBackend({ name: 'api-0', host: API_IP, port: 0, log: quiet });
  const echo: Backend = await startBackend({ name: 'echo-0', host: ECHO_IP, port: 0, tcpEchoPort: 0, log: quiet });
  t.teardown(() => Promise.all([api.close(), echo.close()]));

  // Step 0: the CA of the simple layout; both agents trust its root only.
  const oldCa = await CertificateAuthority.open(join(dir, 'ca-old'));
  writeFileSync(join(dir, 'node-a.token'), oldCa.issueNodeToken('node-a'));
  writeFileSync(join(dir, 'node-b.token'), oldCa.issueNodeToken('node-b'));
  const setBundle = (node: string, pems: string[]) => {
    const d = join(dir, `${node}-roots`);
    mkdirSync(d, { recursive: true });
    // Written whole, then renamed into place, as the kubelet swaps a mounted ConfigMap.
    writeFileSync(join(d, '.root.pem.tmp'), pems.join(''));
    renameSync(join(d, '.root.pem.tmp'), join(d, 'root.pem'));
  };
  setBundle('node-a', [oldCa.rootPem]);
  setBundle('node-b', [oldCa.rootPem]);

  const caPort = await freePort('127.0.0.1');
  const tunnelPort = await freePort(NODE_B);
  const base = { tunnelPort, caUrl: `https://127.0.0.1:${caPort}`, dir, apiPort: api.port, echoPort: echo.tcpEchoPort! };
  const authorize = authorizerFromIdentities(identitiesByNodeFromConfig(parseConfig(meshYaml({ ...base, node: 'node-a', address: NODE_A, certTtl: '1h' }), 'ca-view')));
  let caServer: CaServer | undefined = await startCaServer({ ca: oldCa, listen: { host: '127.0.0.1', port: caPort }, authorize });
  t.teardown(() => caServer?.close());

  const logB = captureLog();
  // node-a keeps its leaves for an hour (a node not yet renewed); node-b renews every ~2 s.
  const b = await startLoopbackAgent(meshYaml({ ...base, node: 'node-b', address: NODE_B, certTtl: '4s' }), { log: logB.log });
  t.teardown(() => b.stop());
  const logA = captureLog();
  const a = await startLoopbackAgent(meshYaml({ ...base, node: 'node-a', address: NODE_A, certTtl: '1h' }), { log: logA.log });
  t.teardown(() => a.stop());

  const certOf = async (agent: LoopbackAgent, sa: string) => (await agent.configDump()).identity.certificates.find((c: { identity: string }) => c.identity === `cluster.local/ns/shop/sa/${sa}`);
  const rootsOf = async (agent: LoopbackAgent) => ((await agent.configDump()).identity.roots as Array<{ root: string }>).map((r) => r.root);
  const callApi = (srcIp: string, workload: string) => {
    a.route(srcIp, '10.96.3.20:80', workload);
    return a.get(srcIp, '10.96.3.20:80', '/rotation');
  };
  await waitFor('node-a certificates', async () => (await certOf(a, 'client'))?.state === 'valid' && (await certOf(a, 'reporter'))?.state === 'valid');
  const before = await callApi(CLIENT_IP, 'shop/client-0');
  t.equal(before.status, 200, 'step 0: client -> api across the tunnel');
  t.equal(before.headers['x-pod'], 'api-0');

  // Step 1: both bundles hold the old and the new root.
  const newRoot = await makeRootCa('corp root 2026');
  setBundle('node-a', [oldCa.rootPem, newRoot.certPem]);
  setBundle('node-b', [oldCa.rootPem, newRoot.certPem]);
  await t.test('step 1: bundle = old + new root, re-read without a restart; traffic keeps flowing', async (t) => {
    for (const [name, agent] of [
      ['node-a', a],
      ['node-b', b],
    ] as const) {
      const roots = await waitFor(`${name} to trust two roots`, async () => {
        const r = await rootsOf(agent);
        return r.length === 2 && r;
      });
      t.match(roots[1], /^corp root 2026 [0-9a-f]{16}$/, `${name} trusts the new root`);
    }
    const r = await callApi(CLIENT_IP, 'shop/client-0');
    t.equal(r.status, 200);
    const m = await (await fetch(`http://${NODE_B}:${b.metricsPort}/metrics`)).text();
    t.match(m, /weft_cert_expiry_seconds\{identity="root:weft root CA cluster\.local [0-9a-f]{16}"\} \d/, 'cert expiry covers the old root');
    t.match(m, /weft_cert_expiry_seconds\{identity="root:corp root 2026 [0-9a-f]{16}"\} \d/, 'and the new one');
    t.ok(
      logB.lines.some((l) => l.msg === 'trust bundle changed; new connections verify peers against it' && (l.added as string[])?.[0]?.startsWith('corp root 2026')),
      'node-b logged the change, naming the added root',
    );
  });

  // Step 2: the CA restarts on the same address, signing with an intermediate under the new root.
  const inter = await makeIntermediate(newRoot, 'weft intermediate 2026');
  const cacerts = writeCacerts(join(dir, 'cacerts'), { signer: inter, roots: [{ certPem: oldCa.rootPem }, newRoot], chain: [inter, newRoot] });
  await caServer.close();
  caServer = undefined;
  // The same token secret: the CA's state directory is kept, its signing certificate changes.
  const newCa = await CertificateAuthority.open(join(dir, 'ca-old'), { cacerts });
  caServer = await startCaServer({ ca: newCa, listen: { host: '127.0.0.1', port: caPort }, authorize });
  const echoConn = await openEcho(a);
  t.teardown(() => echoConn.close());

  await t.test('step 2: the CA signs with the intermediate; old-root and new leaves verify each other', async (t) => {
    const apiCert = await waitFor('node-b to hold a leaf from the intermediate', async () => {
      const c = await certOf(b, 'api');
      return c?.issuer?.includes('weft intermediate 2026') && c;
    });
    t.match(apiCert.issuer, /CN=weft intermediate 2026/, "node-b's CA client verified the new CA (under the new root) and got a new leaf");
    t.match((await certOf(a, 'client')).issuer, /CN=weft root CA cluster\.local/, 'node-a still holds its old-root leaf');
    const r = await callApi(CLIENT_IP, 'shop/client-0');
    t.equal(r.status, 200, 'old-root client leaf -> new intermediate server leaf: both verify');
    t.equal(r.headers['x-pod'], 'api-0');
    t.match(await echoConn.say('before-step-3'), /before-step-3/, 'a TCP connection through the tunnel is up');
  });

  await t.test('step 3: the old root leaves the bundle', async (t) => {
    setBundle('node-b', [newRoot.certPem]);
    await waitFor('node-b to trust only the new root', async () => (await rootsOf(b)).length === 1);
    const refused = await callApi(REPORTER_IP, 'shop/reporter-0');
    t.equal(refused.status, 503, 'a new session from node-a on an old-root leaf is refused');
    t.equal(refused.headers['x-weft-error'], 'connect_failure');
    const line = await waitFor('the refusal in node-b log', async () => logB.lines.find((l) => l.msg === 'tunnel handshake refused'));
    t.equal(line.reason, "the peer's certificate does not lead to a root in the trust bundle (ca.rootCert)", 'node-b says why');
    // OpenSSL sends the old root along (it completes a chain from the sender's own store), hence this code.
    t.match(line.code, /SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT|UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    const told = await waitFor('the refusal in node-a log', async () => logA.lines.find((l) => l.msg === 'the peer agent refused the tunnel session'));
    t.match(told.reason, /^weft: the peer's certificate does not lead to a root in the trust bundle \(ca\.rootCert\) \[[A-Z_]+\]$/, 'node-a is told why, in the GOAWAY');
    t.match(await echoConn.say('after-step-3'), /after-step-3/, 'the connection that was already up keeps going');

    setBundle('node-a', [newRoot.certPem]);
    const fresh = await waitFor('node-a to replace its old-root leaves', async () => {
      const c = await certOf(a, 'reporter');
      return c?.issuer?.includes('weft intermediate 2026') && c;
    });
    t.ok(fresh, 'node-a asked for new leaves as soon as its bundle no longer held their root');
    const ok = await waitFor('reporter -> api to work again', async () => {
      const r = await callApi(REPORTER_IP, 'shop/reporter-0');
      return r.status === 200 && r;
    });
    t.equal(ok.headers['x-pod'], 'api-0', 'after the rotation, new leaves under the new root only');
  });
});

function mkdtempDir(): string {
  const d = join(tmpdir(), `weft-rotation-${process.pid}-${Date.now()}`);
  mkdirSync(d, { recursive: true });
  return d;
}
