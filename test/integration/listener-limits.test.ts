/**
 * The agent's listeners under abuse: a connection flood beyond the per-listener cap is
 * refused at accept (counted, the connections already open keep working, a raised cap applies
 * live); a client that opens TLS to the tunnel port and never finishes the handshake is
 * dropped; a request to a workload the enforcer cannot find fails closed.
 */
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { startLoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';
import { RawClient, recordingServer } from '../lib/raw-http.js';

const POD = { name: 'api-0', ip: '127.0.45.1', app: 'api' };
const VIP = '10.96.0.20:80';
const caps = (n: number) => `agent: { maxDownstreamConnections: { outbound: ${n}, tunnel: ${n}, inbound: ${n} } }`;

t.test('a connection flood beyond the cap is refused at accept; open connections keep working', async (t) => {
  const backend = await recordingServer(POD.ip, 8080, (s) => s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'));
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }], caps(4)));
  t.teardown(() => la.stop());
  const open: RawClient[] = [];
  for (let i = 0; i < 4; i++) {
    const ip = `127.0.46.${10 + i}`;
    la.route(ip, VIP, 'shop/client-0');
    const c = await RawClient.connect(la.outboundPort, ip);
    c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
    t.equal((await c.readResponse()).status, 200, `connection ${i + 1} is served`);
    open.push(c);
  }
  // The flood: each extra connection is accepted by the kernel and closed by the agent at once.
  for (let i = 0; i < 6; i++) {
    const ip = `127.0.46.${20 + i}`;
    la.route(ip, VIP, 'shop/client-0');
    const c = await RawClient.connect(la.outboundPort, ip);
    c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
    await c.waitClosed();
    t.ok(c.closed, `flood connection ${i + 1} is closed without an answer`);
  }
  for (const c of open) {
    c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
    t.equal((await c.readResponse()).status, 200, 'an open connection keeps working');
  }
  const m = await la.metrics();
  t.match(m, /weft_downstream_connections_rejected_total\{listener="outbound"\} 6/);
  t.match(m, /weft_downstream_connections\{listener="outbound"\} 4/);

  la.update(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }], caps(10)));
  const ip = '127.0.46.40';
  la.route(ip, VIP, 'shop/client-0');
  const c = await RawClient.connect(la.outboundPort, ip);
  c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
  t.equal((await c.readResponse()).status, 200, 'a raised cap applies live');
  c.close();
  for (const o of open) o.close();
});

t.test('a client that opens TLS to the tunnel port and never finishes the handshake is dropped', async (t) => {
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }]));
  t.teardown(() => la.stop());
  const sock = net.connect({ host: '127.0.0.1', port: la.agent.addresses.tunnel });
  sock.on('error', () => undefined);
  await once(sock, 'connect');
  sock.write(Buffer.from([0x16, 0x03, 0x01, 0x02])); // a TLS record header, then silence
  // Node's default handshake timeout is 120 s, past this test's timeout.
  await once(sock, 'close');
  t.pass('the tunnel listener closed the stalled handshake');
});

t.test('the destination workload cannot be found: the request is refused, not let through', async (t) => {
  const backend = await recordingServer(POD.ip, 8080, (s) => s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'));
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }]));
  t.teardown(() => la.stop());
  const ip = '127.0.46.60';
  la.route(ip, VIP, 'shop/client-0');
  // The state loses the workload while the cluster still holds its endpoint (a config change in flight).
  const state = la.agent.state as unknown as { workloads: Map<string, unknown> };
  state.workloads.delete('shop/api-0');
  const c = await RawClient.connect(la.outboundPort, ip);
  c.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n');
  const r = await c.readResponse();
  t.equal(r.status, 403);
  t.equal(r.headers['x-weft-error'], 'denied');
  t.equal(backend.bytes.length, 0, 'nothing reached the pod');
  t.match(await la.metrics(), /weft_authz_denied_total\{policy="unknown-destination"\} 1/);
  c.close();
});
