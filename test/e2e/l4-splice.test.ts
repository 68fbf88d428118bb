// The L4 fast path for real: a meshed client pod dials a plain TCP service through eBPF
// capture; the agent authorizes, connects the backend pod and splices the two sockets in the
// kernel (bpf/splice.bpf.c). An authorization policy selects the backend, so the agent has
// something to add and the service port is not balanced in connect4 (socket LB) instead. Bytes, FINs and RSTs must pass exactly as through the userspace
// pipe, the metrics must count the bytes, and WEFT_L4_SPLICE=0 must bring the pipe back.
import t from 'tap';
import { createHash } from 'node:crypto';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import type { ManagedProcess } from '../../src/sandbox/topology.js';
import { canRunE2e, until } from '../lib/e2e.js';

const VIP = '10.96.0.50';
const IDLE_VIP = '10.96.0.51';
const config = `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: app, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: client-0, namespace: app, ip: 10.77.0.10, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
  - { name: echo-0, namespace: app, ip: 10.77.0.20, serviceAccount: echo, labels: { app: echo }, cgroup: "\${CGROUP_ROOT}/echo-0" }
services:
  - name: echo
    namespace: app
    vip: ${VIP}
    ports: [ { name: echo, port: 7000, targetPort: 7000, protocol: tcp }, { name: half, port: 7100, targetPort: 7100, protocol: tcp } ]
    selector: { app: echo }
  - name: echo-idle
    namespace: app
    vip: ${IDLE_VIP}
    ports: [ { port: 7000, targetPort: 7000, protocol: tcp } ]
    selector: { app: echo }
    trafficPolicy: { connectionPool: { idleTimeout: 600ms } }
policies:
  - name: echo-from-client
    namespace: app
    selector: { app: echo }
    action: ALLOW
    rules: [ { from: [ { principals: [cluster.local/ns/app/sa/client] } ] } ]
`;

// The sample backend's TCP echo first writes its pod name and a newline, then echoes.
const GREETING = 'echo-0\n';

// A server that half-closes first: it says hello and shuts its write side at once, then
// counts what the client still sends until the client's own FIN.
const HALF_SERVER = `
const net = require('node:net');
net.createServer({ allowHalfOpen: true }, (s) => {
  let n = 0;
  s.on('data', (d) => { n += d.length; });
  s.on('end', () => { console.log('half-server got ' + n); s.destroy(); });
  s.on('error', () => {});
  s.end('hello\\n');
}).listen(7100, '0.0.0.0', () => console.log('half-server listening'));
`;

// Runs one scenario inside the client pod and prints one JSON line.
const CLIENT = `
const net = require('node:net');
const crypto = require('node:crypto');
const spec = JSON.parse(process.argv[1]);
const out = (o) => { console.log(JSON.stringify(o)); process.exit(0); };
setTimeout(() => out({ error: 'timeout' }), spec.timeoutMs ?? 20000);
const pattern = (n, seed) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 255; return b; };
// Sends payload and half-closes, at once or once the echo is back; reads to EOF.
const exchange = (payload, endFirst) => new Promise((resolve) => {
  const s = net.connect({ host: spec.host, port: spec.port });
  const chunks = [];
  let n = 0;
  s.on('connect', () => { s.write(payload); if (endFirst) s.end(); });
  s.on('data', (d) => { chunks.push(d); n += d.length; if (!endFirst && n === spec.greeting.length + payload.length) s.end(); });
  s.on('end', () => resolve({ data: Buffer.concat(chunks) }));
  s.on('error', (e) => resolve({ error: e.code, data: Buffer.concat(chunks) }));
});
(async () => {
  switch (spec.mode) {
    case 'echo': {
      const r = await exchange(spec.payload, spec.endFirst);
      return out({ got: r.data.toString(), error: r.error });
    }
    case 'bulk': {
      const r = await exchange(pattern(spec.bytes, 7), true);
      return out({ len: r.data.length, sha256: crypto.createHash('sha256').update(r.data).digest('hex'), error: r.error });
    }
    case 'many': {
      const rs = await Promise.all(Array.from({ length: spec.conns }, (_, i) => exchange(pattern(spec.bytes, i), false)));
      let ok = 0; const bad = [];
      rs.forEach((r, i) => {
        const want = Buffer.concat([Buffer.from(spec.greeting), pattern(spec.bytes, i)]);
        if (!r.error && r.data.equals(want)) ok++; else bad.push({ i, len: r.data.length, error: r.error });
      });
      return out({ ok, bad: bad.slice(0, 5) });
    }
    case 'half-server': {
      // The server's FIN first; then this side keeps sending, then ends.
      const s = net.connect({ host: spec.host, port: spec.port });
      let got = '';
      s.on('data', (d) => { got += d; });
      s.on('end', () => { s.end(Buffer.alloc(spec.bytes, 120)); });
      s.on('close', () => out({ got }));
      s.on('error', (e) => out({ got, error: e.code }));
      return;
    }
    case 'idle': {
      const s = net.connect({ host: spec.host, port: spec.port });
      let got = ''; let t0 = 0;
      s.on('connect', () => s.write('x'));
      s.on('data', (d) => { got += d; if (got === spec.greeting + 'x') t0 = Date.now(); });
      s.on('end', () => out({ got, endedAfterMs: Date.now() - t0 }));
      s.on('error', (e) => out({ got, error: e.code, endedAfterMs: Date.now() - t0 }));
      return;
    }
    case 'reset': {
      const s = net.connect({ host: spec.host, port: spec.port });
      let got = '';
      s.on('connect', () => s.write('x'));
      s.on('data', (d) => { got += d; if (got === spec.greeting + 'x') { s.resetAndDestroy(); out({ got }); } });
      s.on('error', (e) => out({ got, error: e.code }));
      return;
    }
    case 'hold': {
      // Connects, exchanges once, then reports how the connection ends (printed when it does).
      const s = net.connect({ host: spec.host, port: spec.port });
      let got = '';
      s.on('connect', () => s.write('x'));
      s.on('data', (d) => { got += d; if (got === spec.greeting + 'x') console.log('ready'); });
      s.on('end', () => out({ how: 'end' }));
      s.on('error', (e) => out({ how: e.code }));
      return;
    }
  }
})();
`;

interface ClientOut {
  got?: string;
  error?: string;
  len?: number;
  sha256?: string;
  ok?: number;
  bad?: unknown[];
  endedAfterMs?: number;
  how?: string;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 255;
  return b;
}

/** The value of one series of a counter, 0 when absent. */
function metric(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.lastIndexOf('}'));
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

t.test('L4 connections spliced in the kernel', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config, prefix: 'weft-e2e-splice' });
  t.teardown(() => sb.destroy());
  const client = sb.pod('client-0');
  const half: ManagedProcess = sb.pod('echo-0').spawn(process.execPath, ['-e', HALF_SERVER], { label: 'half-server' });
  await half.waitFor(/half-server listening/);

  const run = async (spec: Record<string, unknown>, timeoutMs = 30_000): Promise<ClientOut> => {
    const r = await client.exec(process.execPath, ['-e', CLIENT, JSON.stringify({ host: VIP, port: 7000, greeting: GREETING, ...spec })], { timeoutMs });
    const line = r.stdout.trim().split('\n').pop() ?? '';
    try {
      return JSON.parse(line) as ClientOut;
    } catch {
      throw new Error(`client printed ${JSON.stringify(r.stdout)} (stderr ${r.stderr})`);
    }
  };
  const access = (service = 'app/echo') => sb.agentLines().filter((l) => l.msg === 'access' && l.protocol === 'tcp' && l.dst_service === service);
  const labels = { source_workload: 'client-0', source_namespace: 'app', destination_service: 'app/echo', connection_security_policy: 'none' };

  await t.test('echo', async (t) => {
    const r = await run({ mode: 'echo', payload: 'ping' });
    t.same(r, { got: `${GREETING}ping` });
    await until('access line', () => access().length >= 1);
    t.match(access().at(-1), { spliced: true, sent_bytes: 4, received_bytes: GREETING.length + 4, close: 'downstream_close', src_workload: 'app/client-0' });
    // A client that sends and half-closes at once is usually in CLOSE_WAIT on the agent's side
    // by the time the upstream answers; the kernel keeps such a socket out of socket maps,
    // and the agent pipes it in user space instead. Either way the bytes pass.
    const lines = access().length;
    t.same(await run({ mode: 'echo', payload: 'pong', endFirst: true }), { got: `${GREETING}pong` }, 'sent and half-closed at once');
    await until('access line', () => access().length > lines);
    t.match(access().at(-1), { sent_bytes: 4, received_bytes: GREETING.length + 4 });
  });

  await t.test('bulk transfer both ways, counted in the metrics', async (t) => {
    const bytes = 8 * 1024 * 1024;
    const before = await sb.metrics();
    const lines = access().length;
    const r = await run({ mode: 'bulk', bytes });
    const want = createHash('sha256')
      .update(Buffer.concat([Buffer.from(GREETING), pattern(bytes, 7)]))
      .digest('hex');
    t.same(r, { len: bytes + GREETING.length, sha256: want }, 'every byte back, in order (client half-closed after sending)');
    await until('access line', () => access().length > lines);
    t.match(access().at(-1), { spliced: true, sent_bytes: bytes, received_bytes: bytes + GREETING.length });
    const after = await sb.metrics();
    const diff = (name: string) => metric(after, name, labels) - metric(before, name, labels);
    t.equal(diff('weft_tcp_sent_bytes_total'), bytes, 'weft_tcp_sent_bytes_total: the bytes the client sent');
    t.equal(diff('weft_tcp_received_bytes_total'), bytes + GREETING.length, 'weft_tcp_received_bytes_total: the bytes it got back');
    t.equal(diff('weft_tcp_connections_opened_total'), 1);
    t.equal(diff('weft_tcp_connections_closed_total'), 1);
  });

  await t.test('the server half-closes first, the client keeps sending', async (t) => {
    const r = await run({ mode: 'half-server', port: 7100, bytes: 100_000 });
    t.same(r, { got: 'hello\n' }, "the server's FIN reached the client after its bytes");
    t.equal(await half.waitFor(/half-server got \d+/), 'half-server got 100000', 'the bytes sent after that FIN reached the server, then its FIN');
  });

  await t.test('many concurrent connections', async (t) => {
    const lines = access().length;
    const r = await run({ mode: 'many', conns: 100, bytes: 256 * 1024 }, 60_000);
    t.same(r, { ok: 100, bad: [] }, 'each of 100 connections got its own bytes back');
    // Lines of the earlier tests may still come in: pick these connections by their sizes.
    const mine = () =>
      access()
        .slice(lines)
        .filter((l) => l.sent_bytes === 256 * 1024);
    await until('100 access lines', () => mine().length >= 100);
    t.same(
      mine().map((l) => [l.spliced, l.received_bytes]),
      Array.from({ length: 100 }, () => [true, 256 * 1024 + GREETING.length]),
      'all spliced, each counted',
    );
  });

  await t.test('every thread splices what it accepted (agent.workers: one per core)', async (t) => {
    const ready = sb.agentLines().find((l) => l.msg === 'agent ready');
    if (!(ready?.workers > 1)) {
      t.comment(`the agent runs ${ready?.workers} thread(s): nothing to check`);
      return;
    }
    // Which thread accepts is the kernel's choice: rounds of concurrent connections until a
    // worker thread (its lines carry \`worker\`) and the control thread both took some.
    const before = await sb.metrics();
    const lines = access().length;
    const mine = () =>
      access()
        .slice(lines)
        .filter((l) => l.sent_bytes === 4096);
    for (let round = 0; round < 20; round++) {
      t.same(await run({ mode: 'many', conns: 20, bytes: 4096 }, 60_000), { ok: 20, bad: [] });
      await until('20 more access lines', () => mine().length >= 20 * (round + 1));
      if (mine().some((l) => l.worker !== undefined) && mine().some((l) => l.worker === undefined)) break;
    }
    const byWorker = mine().filter((l) => l.worker !== undefined);
    const byControl = mine().filter((l) => l.worker === undefined);
    t.ok(byWorker.length > 0 && byControl.length > 0, `the control thread served ${byControl.length}, worker threads ${byWorker.length}`);
    t.ok(
      byWorker.every((l) => l.spliced === true),
      'the connections a worker accepted were spliced in the kernel',
    );
    t.ok(
      byControl.every((l) => l.spliced === true),
      'and the control thread’s too',
    );
    // The kernel moved the bytes (counted by the splice programs): every thread's counts come
    // out in the agent's one exposition.
    const after = await sb.metrics();
    t.equal(metric(after, 'weft_tcp_sent_bytes_total', labels) - metric(before, 'weft_tcp_sent_bytes_total', labels), mine().length * 4096, 'the bytes of every thread counted once in /metrics');
  });

  await t.test('a reset from the client ends the connection', async (t) => {
    const lines = access().length;
    const r = await run({ mode: 'reset' });
    t.same(r, { got: `${GREETING}x` });
    await until('access line', () => access().length > lines);
    t.match(access().at(-1), { spliced: true, close: 'downstream_close', error: 'ECONNRESET' });
  });

  await t.test('idle timeout by the byte counters', async (t) => {
    const r = await run({ mode: 'idle', host: IDLE_VIP });
    t.equal(r.got, `${GREETING}x`);
    t.ok(r.endedAfterMs! >= 500 && r.endedAfterMs! < 3000, `closed after ${r.endedAfterMs} ms idle (timeout 600ms)`);
    await until('access line', () => access('app/echo-idle').length >= 1);
    t.match(access('app/echo-idle').at(-1), { spliced: true, close: 'idle_timeout' });
  });

  await t.test('spliced connections die with the agent', async (t) => {
    const hold = client.spawn(process.execPath, ['-e', CLIENT, JSON.stringify({ mode: 'hold', host: VIP, port: 7000, greeting: GREETING })], { label: 'hold' });
    await hold.waitFor(/ready/);
    await sb.stopAgent('SIGKILL');
    const how = await hold.waitFor(/"how":"[^"]+"/, 5000);
    t.match(how, /"how":"(end|ECONNRESET)"/, `the client saw the connection end (${how})`);
    await sb.startAgent();
    t.same(await run({ mode: 'echo', payload: 'again' }), { got: `${GREETING}again` }, 'a new agent splices new connections');
  });

  await t.test('WEFT_L4_SPLICE=0: the userspace pipe, same behaviour', async (t) => {
    await sb.stopAgent();
    process.env.WEFT_L4_SPLICE = '0';
    try {
      await sb.startAgent();
    } finally {
      delete process.env.WEFT_L4_SPLICE;
    }
    const lines = access().length;
    t.same(await run({ mode: 'echo', payload: 'ping' }), { got: `${GREETING}ping` });
    t.same(await run({ mode: 'echo', payload: 'pong', endFirst: true }), { got: `${GREETING}pong` }, 'sent and half-closed at once');
    const bytes = 1024 * 1024;
    const want = createHash('sha256')
      .update(Buffer.concat([Buffer.from(GREETING), pattern(bytes, 7)]))
      .digest('hex');
    t.same(await run({ mode: 'bulk', bytes }), { len: bytes + GREETING.length, sha256: want });
    t.same(await run({ mode: 'half-server', port: 7100, bytes: 1000 }), { got: 'hello\n' }, 'half-close from the server');
    await until('access lines', () => access().length >= lines + 4);
    t.ok(
      access()
        .slice(lines)
        .every((l) => l.spliced === false),
      'not spliced',
    );
    t.match(access().slice(lines)[2], { sent_bytes: bytes, received_bytes: bytes + GREETING.length });
  });
});
