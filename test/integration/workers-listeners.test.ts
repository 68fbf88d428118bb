// Every proxy listener on every thread (src/workers/), on loopback with two threads: the
// connection cap is the agent's (connections held by both threads count against it, a
// flood is refused whichever thread accepts it), and the permissive inbound port (15006)
// and the tunnel port (15008) are served by the worker thread as well as by the control
// thread, with real sockets, real TLS and real HTTP through each.
import t from 'tap';
import http2 from 'node:http2';
import * as tls from 'node:tls';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { generateP256, privateKeyToPem } from '../../src/identity/x509.js';
import { serverNameFor } from '../../src/proxy/hbone.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';
import { RawClient, recordingServer } from '../lib/raw-http.js';

const POD = { name: 'api-0', ip: '127.0.47.1', app: 'api' };
const VIP = '10.96.0.20:80';
const OK = (s: import('node:net').Socket) => s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');

interface Dump {
  workers: {
    threads: number;
    controlConnections: number;
    controlInboundConnections: number;
    controlTunnelSessions: number;
    serving: Array<{ state: string; serving?: { connections: number; inboundConnections: number; tunnel: { sessions: number } } }>;
  };
}

async function dump(la: LoopbackAgent): Promise<Dump['workers']> {
  return ((await la.configDump()) as Dump).workers;
}

/** Who holds what now: [control thread, worker thread] for one listener. */
async function split(la: LoopbackAgent, listener: 'outbound' | 'inbound' | 'tunnel'): Promise<[number, number]> {
  const w = await dump(la);
  const s = w.serving[0]?.serving;
  if (listener === 'outbound') return [w.controlConnections, s?.connections ?? 0];
  if (listener === 'inbound') return [w.controlInboundConnections, s?.inboundConnections ?? 0];
  return [w.controlTunnelSessions, s?.tunnel.sessions ?? 0];
}

async function get(c: RawClient): Promise<number> {
  c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
  return (await c.readResponse()).status;
}

t.test('the connection cap counts the connections of both threads', async (t) => {
  const backend = await recordingServer(POD.ip, 8080, OK);
  t.teardown(() => backend.close());
  const caps = 'agent: { maxDownstreamConnections: { outbound: 4, tunnel: 4, inbound: 4 } }';
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }], caps), { workers: 2 });
  t.teardown(() => la.stop());
  const ips = Array.from({ length: 250 }, (_, i) => `127.0.48.${i + 1}`);
  for (const ip of ips) la.route(ip, VIP, 'shop/client-0');
  // Messages to a worker arrive in order: once it answered a dump, it has the routes.
  t.equal((await dump(la)).threads, 2);

  // Four connections held, by both threads (a connection that landed where there are already
  // enough is closed and another opened, until each thread holds at least one).
  const open: Array<{ c: RawClient; ip: string }> = [];
  let next = 0;
  while (open.length < 4) {
    const ip = ips[next++]!;
    const c = await RawClient.connect(la.outboundPort, ip);
    t.equal(await get(c), 200, 'a connection under the cap is served');
    open.push({ c, ip });
    if (open.length === 4) {
      const [control, worker] = await split(la, 'outbound');
      if (control > 0 && worker > 0) break;
      if (next > 200) throw new Error('200 connections all went to one thread');
      open.shift()!.c.close();
      // The closed connection must have left the counts before the next one is opened.
      for (let i = 0; i < 200; i++) {
        const [a, b] = await split(la, 'outbound');
        if (a + b === 3) break;
        await sleep(10);
      }
    }
  }
  const [control, worker] = await split(la, 'outbound');
  t.ok(control > 0 && worker > 0 && control + worker === 4, `the control thread holds ${control}, the worker ${worker}: 4 in all, the cap`);

  // The flood: whichever thread accepts, each extra connection is closed without an answer.
  for (let i = 0; i < 8; i++) {
    const c = await RawClient.connect(la.outboundPort, ips[next++]!);
    c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
    await c.waitClosed();
    t.ok(c.closed, `flood connection ${i + 1} is closed`);
  }
  for (const o of open) t.equal(await get(o.c), 200, 'a held connection keeps working');
  const m = await la.metrics();
  t.match(m, /weft_downstream_connections_rejected_total\{listener="outbound"\} 8\n/, 'every refusal counted, both threads summed');
  t.match(m, /weft_downstream_connections\{listener="outbound"\} 4\n/, 'the open count is the agent’s');

  // A connection that ends frees its place, whichever thread held it.
  open.shift()!.c.close();
  let served = false;
  for (let i = 0; i < 100 && !served; i++) {
    const c = await RawClient.connect(la.outboundPort, ips[next++]!);
    c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
    served = await c.readResponse({ timeoutMs: 1000 }).then(
      (r) => r.status === 200,
      () => false,
    );
    if (served) open.push({ c, ip: '' });
    else c.close();
  }
  t.ok(served, 'a place freed by a closed connection is taken again');
  for (const o of open) o.c.close();
});

t.test('the permissive inbound port is served by both threads', async (t) => {
  const backend = await recordingServer(POD.ip, 8080, OK);
  t.teardown(() => backend.close());
  const yaml = loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }]).replace(
    '{ name: shop, labels: { weft.io/mesh: enabled } }',
    '{ name: shop, labels: { weft.io/mesh: enabled, weft.io/peer-authentication: permissive } }',
  );
  const la = await startLoopbackAgent(yaml, { workers: 2 });
  t.teardown(() => la.stop());
  const port = la.agent.addresses.inbound;
  const held: RawClient[] = [];
  t.teardown(() => held.forEach((c) => c.close()));
  for (let i = 0; i < 200; i++) {
    const [control, worker] = await split(la, 'inbound');
    if (control > 0 && worker > 0) break;
    const c = await RawClient.connect(port, '127.0.0.1');
    c.write(`CONNECT ${POD.ip}:8080 HTTP/1.1\r\nhost: ${POD.ip}:8080\r\n\r\n`);
    t.equal((await c.readResponse({ head: true })).status, 200, 'CONNECT to a permissive pod');
    t.equal(await get(c), 200, 'HTTP through the CONNECT tunnel');
    held.push(c);
  }
  const [control, worker] = await split(la, 'inbound');
  t.ok(control > 0 && worker > 0, `the control thread serves ${control} CONNECT tunnels, the worker ${worker}`);
  for (const c of held) t.equal(await get(c), 200, 'each still answers');
  const m = await la.metrics();
  const served = [...m.matchAll(/^weft_requests_total\{[^}]*destination_workload="api-0"[^}]*\} (\d+)/gm)].reduce((s, x) => s + Number(x[1]), 0);
  t.equal(served, held.length * 2, 'every request of both threads counted once');
});

t.test('the tunnel port is served by both threads, with each identity’s certificate', async (t) => {
  const backend = await recordingServer(POD.ip, 8080, OK);
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }]), { workers: 2 });
  t.teardown(() => la.stop());
  // A peer agent's client certificate, from the agent's own embedded CA.
  const ca = await CertificateAuthority.open(join(la.config.stateDir, 'ca'));
  const keys = await generateP256();
  const cert = await ca.sign(keys.publicKey, { spiffeId: 'spiffe://cluster.local/ns/shop/sa/client', ttlMs: 3600_000 });
  const key = await privateKeyToPem(keys.privateKey);
  const port = la.agent.addresses.tunnel;

  const sessions: http2.ClientHttp2Session[] = [];
  t.teardown(() => sessions.forEach((s) => s.destroy()));
  const request = (session: http2.ClientHttp2Session): Promise<string> =>
    new Promise((resolve, reject) => {
      const stream = session.request({ ':method': 'CONNECT', ':authority': `${POD.ip}:8080` });
      let got = '';
      stream.on('response', (h) => {
        if (h[':status'] !== 200) return reject(new Error(`CONNECT answered ${h[':status']}`));
        stream.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
      });
      stream.on('data', (d: Buffer) => {
        got += d.toString();
        // The whole answer (2 bytes of body): done with this stream.
        if (got.endsWith('\r\n\r\nok')) {
          resolve(got);
          stream.close();
        }
      });
      stream.on('close', () => reject(new Error(`the stream closed with ${JSON.stringify(got)}`)));
      stream.on('error', reject);
    });
  for (let i = 0; i < 200; i++) {
    const [control, worker] = await split(la, 'tunnel');
    if (control > 0 && worker > 0) break;
    const session = http2.connect(`https://127.0.0.1:${port}`, {
      createConnection: () =>
        tls.connect({
          host: '127.0.0.1',
          port,
          servername: serverNameFor('shop', 'api'),
          ca: ca.rootPem,
          key,
          cert,
          ALPNProtocols: ['h2'],
          minVersion: 'TLSv1.3',
          checkServerIdentity: () => undefined,
        }),
    });
    session.on('error', () => undefined);
    sessions.push(session);
    t.match(await request(session), /^HTTP\/1\.1 200 OK/, 'a CONNECT stream through the tunnel reaches the pod');
  }
  const [control, worker] = await split(la, 'tunnel');
  t.ok(control > 0 && worker > 0, `the control thread holds ${control} tunnel sessions, the worker ${worker}`);
  for (const s of sessions) t.match(await request(s), /^HTTP\/1\.1 200 OK/, 'each session serves another stream');
  const m = await la.metrics();
  const mtls = [...m.matchAll(/^weft_requests_total\{[^}]*destination_workload="api-0"[^}]*connection_security_policy="mutual_tls"[^}]*\} (\d+)/gm)].reduce((s, x) => s + Number(x[1]), 0);
  t.equal(mtls, sessions.length * 2, 'every tunnelled request of both threads counted once, mutual_tls');
});

t.test('a worker that dies: the other threads keep their keep-alive connections, and its places under the cap are free again', async (t) => {
  const backend = await recordingServer(POD.ip, 8080, OK);
  t.teardown(() => backend.close());
  const caps = 'agent: { maxDownstreamConnections: { outbound: 6, tunnel: 6, inbound: 6 } }';
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }], caps), { workers: 3 });
  t.teardown(() => la.stop());
  const ips = Array.from({ length: 250 }, (_, i) => `127.0.49.${i + 1}`);
  for (const ip of ips) la.route(ip, VIP, 'shop/client-0');
  const held = async (): Promise<number[]> => {
    const w = await dump(la);
    return [w.controlConnections, ...w.serving.map((s) => s.serving?.connections ?? 0)];
  };
  t.same((await held()).length, 3, 'the control thread and two workers');

  // Six connections, the cap, with each thread holding at least one: which thread took a
  // connection is read from the counts; one that landed where there are enough is closed.
  const open: Array<{ c: RawClient; thread: number }> = [];
  let next = 0;
  while (open.length < 6) {
    if (next > 200) throw new Error('200 connections and a thread never took one');
    const before = await held();
    const c = await RawClient.connect(la.outboundPort, ips[next++]!);
    t.equal(await get(c), 200);
    const after = await held();
    const thread = after.findIndex((n, i) => n > before[i]!);
    const mine = open.filter((o) => o.thread === thread).length;
    const missing = [0, 1, 2].filter((i) => !open.some((o) => o.thread === i) && i !== thread).length;
    if (mine >= 1 && open.length + 1 + missing > 6) {
      c.close();
      for (let i = 0; i < 200 && (await held()).reduce((a, b) => a + b) !== open.length; i++) await sleep(10);
      continue;
    }
    open.push({ c, thread });
  }
  t.same(
    [0, 1, 2].map((i) => open.some((o) => o.thread === i)),
    [true, true, true],
    'each thread holds some of the six',
  );
  const flood = await RawClient.connect(la.outboundPort, ips[next++]!);
  flood.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
  await flood.waitClosed();
  t.ok(flood.closed, 'at the cap: refused');

  // Worker 1 dies (what an exception out of its event loop does: the thread ends).
  const victim = la.agent.workerThreads[0]!;
  const lost = open.filter((o) => o.thread === 1);
  const kept = open.filter((o) => o.thread !== 1);
  await victim.worker!.terminate();
  for (const o of lost) await o.c.waitClosed();
  for (const o of kept) t.equal(await get(o.c), 200, `a keep-alive connection of thread ${o.thread} still answers`);

  // Its connections no longer count: as many new ones as it held are admitted.
  const fresh: RawClient[] = [];
  t.teardown(() => fresh.forEach((c) => c.close()));
  for (let i = 0; i < lost.length; i++) {
    const c = await RawClient.connect(la.outboundPort, ips[next++]!);
    fresh.push(c);
    t.equal(await get(c), 200, 'a place the dead worker held is taken again');
  }
  for (const o of kept) t.equal(await get(o.c), 200);
  for (const o of kept) o.c.close();
});
