/**
 * gRPC and HTTP/2 in the real topology: a client pod (its own netns and container cgroup)
 * runs @grpc/grpc-js, curl --http2-prior-knowledge and h2load against Service VIPs; the eBPF
 * programs send its connections to the agent, which balances, retries, times and authorizes
 * every call on its own although all of a channel's calls share one TCP connection. The same
 * across two nodes: the backends run on node-b, each call rides the mTLS tunnel and node-b's
 * agent authorizes it. Root only.
 *
 *   node-a  client-0 10.77.0.50; api-0..2 10.77.0.11-13 (gRPC 9090, HTTP 8080)
 *   node-b  rapi-0..1 10.77.1.11-12 (gRPC 9090, HTTP 8080)
 */
import t, { type Test } from 'tap';
import { createRequire } from 'node:module';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import type { TopoNode, TopoPod } from '../../src/sandbox/topology.js';
import { ctl } from '../../src/sandbox/ui.js';
import { canRunE2e } from '../lib/e2e.js';

const GRPC_JS = createRequire(import.meta.url).resolve('@grpc/grpc-js');

const svc = (name: string, vip: string, app: string, port: number, targetPort: number, protocol: string) =>
  `  - { name: ${name}, namespace: shop, vip: ${vip}, ports: [ { name: ${protocol}, port: ${port}, targetPort: ${targetPort}, protocol: ${protocol} } ], selector: { app: ${app} }, trafficPolicy: { loadBalancer: { type: round-robin }, timeout: 5s, retries: { attempts: 2, retryOn: [unavailable, connect-failure, reset], backoff: { base: 1ms }, budget: { percent: 100, minPerSecond: 100 } } } }`;

const CONFIG = `
node:
  name: \${WEFT_NODE:-node-a}
  address: \${WEFT_NODE_ADDRESS:-10.77.0.1}
nodes:
  - { name: node-a, address: 10.77.0.1 }
  - { name: node-b, address: 10.77.1.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: client-0, namespace: shop, node: node-a, ip: 10.77.0.50, serviceAccount: client, labels: { app: client }, cgroup: "\${CGROUP_ROOT}/client-0" }
  - { name: api-0, namespace: shop, node: node-a, ip: 10.77.0.11, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-0" }
  - { name: api-1, namespace: shop, node: node-a, ip: 10.77.0.12, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-1" }
  - { name: api-2, namespace: shop, node: node-a, ip: 10.77.0.13, serviceAccount: api, labels: { app: api }, cgroup: "\${CGROUP_ROOT}/api-2" }
  - { name: rapi-0, namespace: shop, node: node-b, ip: 10.77.1.11, serviceAccount: rapi, labels: { app: rapi }, cgroup: "\${CGROUP_ROOT}/rapi-0" }
  - { name: rapi-1, namespace: shop, node: node-b, ip: 10.77.1.12, serviceAccount: rapi, labels: { app: rapi }, cgroup: "\${CGROUP_ROOT}/rapi-1" }
services:
${svc('api-grpc', '10.96.0.60', 'api', 9090, 9090, 'grpc')}
${svc('api-web', '10.96.0.61', 'api', 80, 8080, 'http')}
${svc('rapi-grpc', '10.96.0.62', 'rapi', 9090, 9090, 'grpc')}
${svc('rapi-web', '10.96.0.63', 'rapi', 80, 8080, 'http')}
policies:
  - { name: api-no-forbidden, namespace: shop, selector: { app: api }, action: DENY, rules: [ { to: [ { paths: [/weft.demo.Echo/Forbidden] } ] } ] }
  - { name: rapi-no-forbidden, namespace: shop, selector: { app: rapi }, action: DENY, rules: [ { to: [ { paths: [/weft.demo.Echo/Forbidden] } ] } ] }
`;

/**
 * Runs in the client pod: one @grpc/grpc-js channel (one HTTP/2 connection) to `target`, the
 * operations of the plan in order, one JSON line out: the results per operation and how many
 * TCP connections the pod had open while the channel was still up.
 */
const DRIVER = `
const grpc = require(process.argv[1]);
const plan = JSON.parse(process.argv[2]);
const id = (b) => b;
const m = (name, rs, ss) => ({ path: '/weft.demo.Echo/' + name, requestStream: rs, responseStream: ss, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id });
const Echo = grpc.makeGenericClientConstructor({ Get: m('Get', false, false), Stream: m('Stream', false, true), Chat: m('Chat', true, true), Forbidden: m('Forbidden', false, false) }, 'Echo');
const c = new Echo(plan.target, grpc.credentials.createInsecure());
const md = (o) => { const x = new grpc.Metadata(); for (const [k, v] of Object.entries(o || {})) x.set(k, String(v)); return x; };
const first = (meta, k) => (meta ? meta.get(k)[0] : undefined);
const failed = (e) => ({ code: e.code, weftError: first(e.metadata, 'x-weft-error'), pod: first(e.metadata, 'x-pod'), details: e.details });
const unary = (op) => new Promise((res) => {
  const opts = op.deadlineMs ? { deadline: Date.now() + op.deadlineMs } : {};
  c[op.method || 'Get'](Buffer.alloc(0), md(op.metadata), opts, (e, r) => res(e ? failed(e) : { code: 0, pod: JSON.parse(r.toString()).pod }));
});
const serverStream = (op) => new Promise((res) => {
  const pods = [];
  const s = c.Stream(Buffer.from(String(op.messages)), md(op.metadata));
  s.on('data', (b) => pods.push(JSON.parse(b.toString()).pod));
  s.on('error', () => {});
  s.on('status', (st) => res({ code: st.code, count: pods.length, pods: [...new Set(pods)] }));
});
const chat = (op) => new Promise((res) => {
  const got = [];
  const s = c.Chat(md(op.metadata));
  s.on('data', (b) => got.push(b.toString()));
  s.on('error', () => {});
  s.on('status', (st) => res({ code: st.code, count: got.length, pods: [...new Set(got.map((x) => x.split(':')[0]))], inOrder: got.every((x, i) => x.endsWith(':m' + i)) }));
  let i = 0;
  const tick = setInterval(() => { s.write(Buffer.from('m' + i++)); if (i === op.messages) { clearInterval(tick); s.end(); } }, op.gapMs || 0);
});
const kinds = { unary, stream: serverStream, chat };
(async () => {
  const out = { results: [] };
  for (const op of plan.ops) {
    const rs = new Array(op.n || 1);
    let next = 0;
    const lane = async () => { while (next < rs.length) { const i = next++; rs[i] = await kinds[op.kind](op); } };
    await Promise.all(Array.from({ length: op.concurrency || 1 }, lane));
    out.results.push(rs);
  }
  const ss = require('child_process').execFileSync('ss', ['-Htn', 'state', 'established'], { encoding: 'utf8' });
  out.connections = ss.split('\\n').filter((l) => l.trim()).length;
  c.close();
  process.stdout.write(JSON.stringify(out) + '\\n');
  setTimeout(() => process.exit(0), 100).unref();
})().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
`;

interface Op {
  kind: 'unary' | 'stream' | 'chat';
  n?: number;
  concurrency?: number;
  method?: 'Get' | 'Forbidden';
  deadlineMs?: number;
  metadata?: Record<string, string | number>;
  messages?: number;
  gapMs?: number;
}

interface CallOut {
  code: number;
  pod?: string;
  pods?: string[];
  count?: number;
  weftError?: string;
  details?: string;
  inOrder?: boolean;
}

async function grpcFrom(pod: TopoPod, target: string, ops: Op[]): Promise<{ results: CallOut[][]; connections: number }> {
  const r = await pod.exec(process.execPath, ['-e', DRIVER, GRPC_JS, JSON.stringify({ target, ops })], { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`the grpc-js client in ${pod.name} failed (${r.code}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout.trim());
}

function tally(calls: CallOut[], key: (c: CallOut) => string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of calls) {
    const k = key(c) ?? '?';
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

/** The backend's own counters, read over the pod's loopback (strict inbound admits nothing else from outside the mesh). */
async function backendState(pod: TopoPod): Promise<{ requests: number; calls: number }> {
  const r = await pod.exec('curl', ['-sS', '--max-time', '3', 'http://127.0.0.1:8080/_ctl/state']);
  return JSON.parse(r.stdout).state;
}

/** Every sample of `name` whose labels contain all of `labels`, summed. */
function metricSum(text: string, name: string, labels: Record<string, string>): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.lastIndexOf('}'));
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

interface Case {
  /** `shop/<name>` */
  service: string;
  grpcTarget: string;
  httpUrl: string;
  replicas: string[];
  /** The node whose agent authorizes the calls (the replicas' node). */
  dstNode: TopoNode;
  security: 'mutual_tls' | 'none';
}

async function scenario(t: Test, sb: MeshSandbox, c: Case): Promise<void> {
  const client = sb.pod('client-0');
  const replicas = c.replicas.map((n) => sb.pod(n));

  await t.test('100 unary calls on one channel are balanced per call', async (t) => {
    const { results, connections } = await grpcFrom(client, c.grpcTarget, [{ kind: 'unary', n: 100, concurrency: 10 }]);
    const calls = results[0]!;
    t.same(
      tally(calls, (x) => String(x.code)),
      { 0: 100 },
      'all 100 calls answered OK',
    );
    t.equal(connections, 1, 'the channel used one TCP connection for all of them');
    const pods = tally(calls, (x) => x.pod);
    t.same(Object.keys(pods).sort(), [...c.replicas].sort(), `every replica answered: ${JSON.stringify(pods)}`);
    // Round-robin: 100 / replicas each, give or take the calls in flight when a lane finished.
    const fair = 100 / c.replicas.length;
    for (const [pod, n] of Object.entries(pods)) t.ok(n >= fair * 0.6, `${pod} answered ${n} (fair share ${fair.toFixed(0)})`);
  });

  await t.test('server-streaming and bidi calls work and are balanced per call', async (t) => {
    const k = c.replicas.length * 3;
    const { results, connections } = await grpcFrom(client, c.grpcTarget, [
      { kind: 'stream', n: k, messages: 200 },
      { kind: 'chat', n: k, messages: 20, gapMs: 5 },
    ]);
    t.equal(connections, 1, 'one connection carried the streams');
    const [streams, chats] = results as [CallOut[], CallOut[]];
    t.same(
      streams.map((s) => [s.code, s.count, s.pods?.length]),
      streams.map(() => [0, 200, 1]),
      'each server stream: OK, 200 messages, all from one replica',
    );
    t.same(Object.keys(tally(streams, (s) => s.pods?.[0])).sort(), [...c.replicas].sort(), 'server streams spread over every replica');
    t.same(
      chats.map((s) => [s.code, s.count, s.pods?.length, s.inOrder]),
      chats.map(() => [0, 20, 1, true]),
      'each bidi stream: OK, 20 messages echoed in order by one replica',
    );
    t.same(Object.keys(tally(chats, (s) => s.pods?.[0])).sort(), [...c.replicas].sort(), 'bidi streams spread over every replica');
  });

  await t.test('a replica failing with UNAVAILABLE: retryOn unavailable sends the call to another', async (t) => {
    const bad = replicas[0]!;
    const before = await backendState(bad);
    await ctl(sb, bad.name, '/_ctl/grpc-fail?code=14');
    try {
      const { results } = await grpcFrom(client, c.grpcTarget, [{ kind: 'unary', n: 30 }]);
      const calls = results[0]!;
      t.same(
        tally(calls, (x) => String(x.code)),
        { 0: 30 },
        'all 30 calls answered OK',
      );
      t.notOk(tally(calls, (x) => x.pod)[bad.name], `none answered by ${bad.name}: ${JSON.stringify(tally(calls, (x) => x.pod))}`);
      t.ok((await backendState(bad)).calls > before.calls, `${bad.name} was tried (and failed)`);
    } finally {
      await ctl(sb, bad.name, '/_ctl/ok');
    }
    t.ok(metricSum(await sb.metrics(), 'weft_retries_total', { destination_service: c.service }) >= 1, 'weft_retries_total counts the retries');
  });

  await t.test('deadlines: DEADLINE_EXCEEDED', async (t) => {
    const slow = { 'x-delay-ms': 3000 };
    const { results } = await grpcFrom(client, c.grpcTarget, [
      // grpc-js's own deadline (it sends grpc-timeout and keeps its timer).
      { kind: 'unary', deadlineMs: 300, metadata: slow },
      // grpc-timeout alone, no client timer: only the agent can end this call before the backend answers.
      { kind: 'unary', metadata: { ...slow, 'grpc-timeout': '300m' } },
      { kind: 'unary', metadata: { 'x-delay-ms': 50, 'grpc-timeout': '2S' } },
    ]);
    const [client4, agent4, ok] = results.map((r) => r[0]!) as [CallOut, CallOut, CallOut];
    t.equal(client4.code, 4, "the client's deadline: DEADLINE_EXCEEDED");
    t.equal(agent4.code, 4, 'grpc-timeout 300m on a 3 s answer: DEADLINE_EXCEEDED');
    t.equal(agent4.weftError, 'upstream_timeout', 'answered by the agent: x-weft-error upstream_timeout');
    t.equal(ok.code, 0, 'a call within its grpc-timeout succeeds');
  });

  await t.test('a denied method gets PERMISSION_DENIED; the channel keeps working', async (t) => {
    const before = await Promise.all(replicas.map(backendState));
    const denied0 = metricSum(await sb.metrics(c.dstNode), 'weft_authz_denied_total', {});
    const { results } = await grpcFrom(client, c.grpcTarget, [{ kind: 'unary' }, { kind: 'unary', method: 'Forbidden' }, { kind: 'unary' }]);
    const [okBefore, denied, okAfter] = results.map((r) => r[0]!) as [CallOut, CallOut, CallOut];
    t.equal(okBefore.code, 0, 'Get: OK');
    t.equal(denied.code, 7, '/weft.demo.Echo/Forbidden: PERMISSION_DENIED');
    t.equal(denied.weftError, 'denied', 'x-weft-error: denied');
    t.equal(denied.pod, undefined, 'answered by the agent, not a replica');
    t.equal(okAfter.code, 0, 'the next call on the same channel: OK');
    const after = await Promise.all(replicas.map(backendState));
    const served = after.reduce((a, s, i) => a + s.calls - before[i]!.calls, 0);
    t.equal(served, 2, 'the replicas saw the two Get calls, not the denied one');
    t.ok(metricSum(await sb.metrics(c.dstNode), 'weft_authz_denied_total', {}) > denied0, `the agent of ${c.dstNode.name} denied it`);
  });

  await t.test('weft_requests_total carries grpc_status', async (t) => {
    const m = await sb.metrics();
    const base = { source_workload: 'client-0', destination_service: c.service, connection_security_policy: c.security };
    t.ok(metricSum(m, 'weft_requests_total', { ...base, response_code: '200', grpc_status: '0' }) >= 100, 'grpc_status="0" for the answered calls');
    t.ok(metricSum(m, 'weft_requests_total', { ...base, grpc_status: '4' }) >= 1, 'grpc_status="4" for the deadline');
    t.ok(metricSum(m, 'weft_requests_total', { ...base, grpc_status: '7' }) >= 1, 'grpc_status="7" for the denied call');
    if (c.dstNode !== sb.node) {
      const dst = await sb.metrics(c.dstNode);
      t.ok(metricSum(dst, 'weft_requests_total', { grpc_status: '7', connection_security_policy: 'mutual_tls' }) >= 1, `and on ${c.dstNode.name}, which denied it`);
    }
  });

  await t.test('h2c with prior knowledge to an http port: curl and h2load', async (t) => {
    const r = await client.exec('curl', ['-sS', '--max-time', '5', '--http2-prior-knowledge', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', `${c.httpUrl}/h2c`]);
    t.equal(r.stdout, '200 2', `curl --http2-prior-knowledge: 200 over HTTP/2 ${r.stderr}`);
    for (const p of replicas) await ctl(sb, p.name, '/_ctl/reset');
    const n = 120 * c.replicas.length;
    const h2load = await client.exec('h2load', ['-n', String(n), '-c', '1', '-m', '10', `${c.httpUrl}/load`], { timeoutMs: 60_000 });
    t.match(h2load.stdout, new RegExp(`requests: ${n} total, ${n} started, ${n} done, ${n} succeeded, 0 failed, 0 errored`), `h2load: ${n} of ${n} succeeded`);
    t.match(h2load.stdout, new RegExp(`status codes: ${n} 2xx`), 'all 2xx');
    const served = (await Promise.all(replicas.map(backendState))).map((s) => s.requests);
    t.ok(
      served.every((x) => x >= 60),
      `h2load's streams on one connection were balanced per request: ${served}`,
    );
  });
}

t.test('gRPC and HTTP/2 through eBPF capture, on one node and across two', async (t) => {
  if (!canRunE2e(t)) return;
  t.setTimeout(420_000);
  const sb = await MeshSandbox.create({ configText: CONFIG, prefix: 'weft-grpc' });
  t.teardown(() => sb.destroy());
  const nodeB = sb.peers.get('node-b')!.node;

  await t.test('one node', (t) =>
    scenario(t, sb, {
      service: 'shop/api-grpc',
      grpcTarget: '10.96.0.60:9090',
      httpUrl: 'http://10.96.0.61',
      replicas: ['api-0', 'api-1', 'api-2'],
      dstNode: sb.node,
      security: 'none',
    }),
  );

  await t.test('across two nodes: the calls ride the mTLS tunnel, node-b authorizes each', async (t) => {
    await scenario(t, sb, {
      service: 'shop/rapi-grpc',
      grpcTarget: '10.96.0.62:9090',
      httpUrl: 'http://10.96.0.63',
      replicas: ['rapi-0', 'rapi-1'],
      dstNode: nodeB,
      security: 'mutual_tls',
    });
    const m = await sb.metrics(nodeB);
    for (const w of ['rapi-0', 'rapi-1']) {
      t.ok(
        metricSum(m, 'weft_requests_total', { source_namespace: 'shop', destination_workload: w, grpc_status: '0', connection_security_policy: 'mutual_tls' }) >= 1,
        `node-b served calls to ${w} that came over mutual TLS`,
        { lines: m.split('\n').filter((l) => l.startsWith('weft_requests_total{') && l.includes(w)) },
      );
    }
    t.match(m, /weft_authz_denied_total\{[^}]*rapi-no-forbidden[^}]*\} [1-9]/, "node-b's agent denied the call by the remote pods' policy");
    t.notMatch(await sb.metrics(), /weft_authz_denied_total\{[^}]*rapi-no-forbidden/, 'node-a left it to node-b');
  });
});
