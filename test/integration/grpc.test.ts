/**
 * gRPC and HTTP/2 through the agent on loopback, with real clients: @grpc/grpc-js (unary and
 * streaming calls on one channel), curl --http2-prior-knowledge, h2load.
 */
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh, type SvcSpec } from '../lib/mesh-yaml.js';
import { echoClient, grpc, unary, type Echo } from '../lib/grpc-client.js';

const run = promisify(execFile);
const VIP = '10.96.0.30';

async function withGrpcMesh(t: Test, n: number, svc: Partial<SvcSpec> = {}, extra = ''): Promise<{ la: LoopbackAgent; backends: Backend[]; client: Echo }> {
  const pods = Array.from({ length: n }, (_, i) => ({ name: `api-${i}`, ip: `127.0.1.${i + 1}`, app: 'api' }));
  const backends = await allStarted(pods.map((p) => startBackend({ name: p.name, port: 8080, grpcPort: 9090, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(loopbackMesh(pods, [{ name: 'api', vip: VIP, app: 'api', targetPort: 9090, protocol: 'grpc', ...svc }], extra));
  t.teardown(() => la.stop());
  // grpc-js dials from 127.0.0.1: that stands for the client pod here.
  la.route('127.0.0.1', `${VIP}:80`, 'shop/client-0');
  const client = echoClient(`127.0.0.1:${la.outboundPort}`);
  t.teardown(() => client.close());
  return { la, backends, client };
}

function metricLines(text: string, name: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(name));
}

t.test('100 unary calls on one channel are balanced per call over 3 replicas', async (t) => {
  const { la, client } = await withGrpcMesh(t, 3);
  const seen: Record<string, number> = {};
  const failed: unknown[] = [];
  for (let i = 0; i < 100; i++) {
    const r = await unary(client, 'Get');
    if (r.code !== 0) failed.push(r);
    else seen[r.body.pod] = (seen[r.body.pod] ?? 0) + 1;
  }
  t.same(failed, [], 'all 100 calls succeeded');
  t.same(Object.keys(seen).sort(), ['api-0', 'api-1', 'api-2'], `every replica served calls: ${JSON.stringify(seen)}`);
  for (const [pod, n] of Object.entries(seen)) t.ok(n >= 20, `${pod} served ${n} of 100`);
  const m = await la.metrics();
  t.match(m, /weft_requests_total\{[^}]*destination_service="shop\/api"[^}]*response_code="200",grpc_status="0"[^}]*\}/, 'counted with grpc_status 0');
});

t.test('a failing replica: its UNAVAILABLE is retried on another', async (t) => {
  const { la, backends, client } = await withGrpcMesh(t, 3, { policy: '{ retries: { attempts: 2, retryOn: [unavailable], backoff: { base: 1ms }, budget: { percent: 100, minPerSecond: 100 } } }' });
  backends[0]!.state.grpcFail = 14;
  const seen: Record<string, number> = {};
  const failed: unknown[] = [];
  for (let i = 0; i < 30; i++) {
    const r = await unary(client, 'Get');
    if (r.code !== 0) failed.push(r);
    else seen[r.body.pod] = (seen[r.body.pod] ?? 0) + 1;
  }
  t.same(failed, [], 'all 30 calls succeeded');
  t.notOk(seen['api-0'], `no answer came from the failing replica: ${JSON.stringify(seen)}`);
  t.ok(backends[0]!.state.calls > 0, 'the failing replica was tried');
  t.match(await la.metrics(), /weft_retries_total\{destination_service="shop\/api"\} [1-9]/, 'retries counted');

  await t.test('without retryOn unavailable the status reaches the client', async (t) => {
    for (const b of backends) b.state.grpcFail = 14;
    const r = await unary(client, 'Get');
    t.equal(r.code, grpc.status.UNAVAILABLE, 'UNAVAILABLE after the retries');
    t.equal(r.metadata?.['x-pod'] !== undefined, true, "the backend's own answer, not the agent's");
  });
});

t.test('deadlines: grpc-timeout and the service timeout end a call with DEADLINE_EXCEEDED', async (t) => {
  const { la, client } = await withGrpcMesh(t, 1, { policy: '{ timeout: 300ms }' });
  const r = await unary(client, 'Get', '', { metadata: { 'x-delay-ms': '3000' } });
  t.equal(r.code, grpc.status.DEADLINE_EXCEEDED, 'the service timeout: DEADLINE_EXCEEDED');
  t.equal(r.metadata?.['x-weft-error'], 'upstream_timeout', 'answered by the agent (trailers-only, x-weft-error)');
  const r2 = await unary(client, 'Get', '', { deadlineMs: 150, metadata: { 'x-delay-ms': '3000' } });
  t.equal(r2.code, grpc.status.DEADLINE_EXCEEDED, "the client's deadline: DEADLINE_EXCEEDED");
  const m = await la.metrics();
  t.match(m, /weft_requests_total\{[^}]*grpc_status="4"[^}]*\} [1-9]/, 'counted with grpc_status 4');
  const ok = await unary(client, 'Get', '', { metadata: { 'x-delay-ms': '50' } });
  t.equal(ok.code, 0, 'a call within the deadline succeeds');
});

t.test('authorization per call: a denied method gets PERMISSION_DENIED, others on the same channel pass', async (t) => {
  const policy = `
policies:
  - name: echo-get-only
    namespace: shop
    selector: { app: api }
    action: ALLOW
    rules:
      - to: [ { paths: [/weft.demo.Echo/Get, /weft.demo.Echo/Stream] } ]
`;
  const { client } = await withGrpcMesh(t, 2, {}, policy);
  const ok = await unary(client, 'Get');
  t.equal(ok.code, 0, 'Get is allowed');
  const denied = await unary(client, 'Forbidden');
  t.equal(denied.code, grpc.status.PERMISSION_DENIED, 'Forbidden: PERMISSION_DENIED');
  t.equal(denied.metadata?.['x-weft-error'], 'denied', 'x-weft-error: denied');
  const again = await unary(client, 'Get');
  t.equal(again.code, 0, 'the channel still works');
});

t.test('streaming calls: server, client and bidi streams, each balanced on its own', async (t) => {
  const { client } = await withGrpcMesh(t, 3, { policy: '{ timeout: 300ms }' });
  const pods = new Set<string>();
  for (let i = 0; i < 9; i++) {
    const msgs: any[] = await new Promise((resolve, reject) => {
      const got: any[] = [];
      const s = client.Stream(Buffer.from('50'));
      s.on('data', (b: Buffer) => got.push(JSON.parse(b.toString())));
      s.on('error', reject);
      s.on('end', () => resolve(got));
    });
    t.equal(msgs.length, 50, 'server stream: 50 messages');
    pods.add(msgs[0].pod);
  }
  t.equal(pods.size, 3, 'server-streaming calls on one channel were spread over the replicas');

  const collected: any = await new Promise((resolve, reject) => {
    const call = client.Collect((err: Error | null, res?: Buffer) => (err ? reject(err) : resolve(JSON.parse(res!.toString()))));
    for (let i = 0; i < 20; i++) call.write(Buffer.from(`m${i}`));
    call.end();
  });
  t.equal(collected.count, 20, 'client stream: the server got 20 messages');

  // A bidi call that lasts longer than the service's 300ms timeout: the timeout bounds the
  // wait for the answer's head, not a stream that is under way.
  const echoed: string[] = await new Promise((resolve, reject) => {
    const got: string[] = [];
    const call = client.Chat();
    call.on('data', (b: Buffer) => got.push(b.toString()));
    call.on('error', reject);
    call.on('end', () => resolve(got));
    let i = 0;
    const tick = setInterval(() => {
      call.write(Buffer.from(`hello-${i++}`));
      if (i === 8) {
        clearInterval(tick);
        call.end();
      }
    }, 100);
  });
  t.equal(echoed.length, 8, 'bidi: 8 messages echoed over ~800ms');
  t.match(echoed[0], /^api-\d:hello-0$/, 'echoed by a replica');
});

t.test('breaker and outlier detection count gRPC failures as 5xx', async (t) => {
  const { backends, client } = await withGrpcMesh(t, 1, { policy: '{ circuitBreaker: { consecutiveFailures: 3, openDuration: 30s } }' });
  backends[0]!.state.grpcFail = 13;
  for (let i = 0; i < 3; i++) t.equal((await unary(client, 'Get')).code, grpc.status.INTERNAL, 'INTERNAL from the replica');
  const r = await unary(client, 'Get');
  t.equal(r.code, grpc.status.UNAVAILABLE, 'then the circuit is open: UNAVAILABLE');
  t.equal(r.metadata?.['x-weft-error'], 'circuit_open', 'x-weft-error: circuit_open');
});

t.test('h2c with prior knowledge on an http port; HTTP/2 both ways on an http2 port; HTTP/1.1 still works', async (t) => {
  const pods = [0, 1].map((i) => ({ name: `web-${i}`, ip: `127.0.1.${i + 11}`, app: 'web' }));
  const backends = await allStarted(pods.map((p) => startBackend({ name: p.name, port: 8080, grpcPort: 9090, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(pods, [
      { name: 'web', vip: '10.96.0.40', app: 'web', targetPort: 8080, protocol: 'http' },
      { name: 'web2', vip: '10.96.0.41', app: 'web', targetPort: 9090, protocol: 'http2' },
    ]),
  );
  t.teardown(() => la.stop());
  const url = `http://127.0.0.1:${la.outboundPort}`;
  const curl = (args: string[]) => run('curl', ['-sS', '--interface', '127.0.0.1', '-o', '-', '-w', '\\n%{http_code} %{http_version}', ...args]).then((r) => r.stdout);

  la.route('127.0.0.1', '10.96.0.40:80', 'shop/client-0');
  const h2c = await curl(['--http2-prior-knowledge', `${url}/hello?x=1`]);
  t.match(h2c, /"path":"\/hello\?x=1"/, 'h2c request reached an HTTP/1.1 backend');
  t.match(h2c, /\n200 2$/, 'answered 200 over HTTP/2');
  const h1 = await curl([`${url}/plain`]);
  t.match(h1, /\n200 1\.1$/, 'HTTP/1.1 on the same port still works');

  const h2load = await run('h2load', ['-n', '400', '-c', '2', '-m', '10', `${url}/load`]);
  t.match(h2load.stdout, /requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed, 0 errored/, 'h2load: 400 of 400 succeeded');
  t.match(h2load.stdout, /status codes: 400 2xx/, 'all 2xx');
  const served = backends.map((b) => b.state.requests);
  t.ok(
    served.every((n) => n >= 100),
    `h2load's streams on 2 connections were balanced per request: ${served}`,
  );

  la.route('127.0.0.1', '10.96.0.41:80', 'shop/client-0');
  const h2 = await run('curl', [
    '-sS',
    '--interface',
    '127.0.0.1',
    '-o',
    '/dev/null',
    '-D',
    '-',
    '--http2-prior-knowledge',
    '-H',
    'content-type: application/grpc',
    '-H',
    'te: trailers',
    '--data-binary',
    '',
    `${url}/weft.demo.Echo/Get`,
  ]);
  t.match(h2.stdout, /HTTP\/2 200/, 'http2 port: HTTP/2 to an HTTP/2 backend');
  const refused = await curl([`${url}/plain`]);
  t.match(refused, /\n505 1\.1$/, 'HTTP/1.1 to an http2 port: 505');
});
