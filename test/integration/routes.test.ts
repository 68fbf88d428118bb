/**
 * Routes through the agent with real clients on loopback (test/lib/loopback-agent.ts): the
 * bookinfo shape, a `reviews` service with routes over reviews-v1/v2/v3 services, each its
 * own backend pod. What a client sees: header matches, a weighted canary, faults, mirrors,
 * no_route and no_backend, rewrites, redirects and header modifiers, live changes, and
 * TCPRoute splitting connections.
 */
import { connect } from 'node:net';
import t, { type Test } from 'tap';
import { request } from 'undici';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';

const REVIEWS = '10.96.0.30:80';
const CLIENT = '127.0.2.1';

const PODS = [
  { name: 'reviews-v1', ip: '127.0.1.1', app: 'reviews-v1' },
  { name: 'reviews-v2', ip: '127.0.1.2', app: 'reviews-v2' },
  { name: 'reviews-v3', ip: '127.0.1.3', app: 'reviews-v3' },
  { name: 'shadow', ip: '127.0.1.4', app: 'shadow' },
];
const SERVICES = [
  { name: 'reviews', vip: '10.96.0.30', app: 'reviews-v1' },
  { name: 'reviews-v1', vip: '10.96.0.31', app: 'reviews-v1' },
  { name: 'reviews-v2', vip: '10.96.0.32', app: 'reviews-v2' },
  { name: 'reviews-v3', vip: '10.96.0.33', app: 'reviews-v3' },
  { name: 'shadow', vip: '10.96.0.34', app: 'shadow' },
];

function meshWith(routes: string): string {
  return loopbackMesh(PODS, SERVICES, `routes:\n${routes}`);
}

const ROUTES = `
  - name: reviews
    namespace: shop
    parentRefs: [ { name: reviews, port: 80 } ]
    rules:
      - name: jason
        matches: [ { path: { type: PathPrefix, value: /reviews }, headers: [ { name: end-user, value: jason } ] } ]
        backendRefs: [ { name: reviews-v2 } ]
      - name: fault
        matches: [ { path: { type: PathPrefix, value: /reviews }, headers: [ { name: end-user, value: tester } ] } ]
        backendRefs: [ { name: reviews-v1 } ]
        fault: { abort: { httpStatus: 500, percent: 100 } }
      - name: slow
        matches: [ { path: { type: PathPrefix, value: /reviews }, headers: [ { name: end-user, value: slow } ] } ]
        backendRefs: [ { name: reviews-v1 } ]
        fault: { delay: { fixedDelay: 3s, percent: 100 } }
      - name: canary
        matches: [ { path: { type: PathPrefix, value: /reviews } } ]
        backendRefs: [ { name: reviews-v1, weight: 80 }, { name: reviews-v3, weight: 20 } ]
      - name: mirrored
        matches: [ { path: { type: PathPrefix, value: /mirrored } } ]
        filters: [ { type: RequestMirror, requestMirror: { backendRef: { name: shadow } } } ]
        backendRefs: [ { name: reviews-v1 } ]
      - name: missing
        matches: [ { path: { type: PathPrefix, value: /missing } } ]
        backendRefs: [ { name: reviews-v9 } ]
      - name: rewrite
        matches: [ { path: { type: PathPrefix, value: /old } } ]
        filters:
          - { type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /new }, hostname: reviews.internal } }
          - { type: RequestHeaderModifier, requestHeaderModifier: { set: [ { name: x-set, value: forced } ], add: [ { name: x-add, value: added } ], remove: [ x-secret ] } }
          - { type: ResponseHeaderModifier, responseHeaderModifier: { set: [ { name: x-route, value: rewrite } ], remove: [ x-pod ] } }
        backendRefs: [ { name: reviews-v2 } ]
      - name: moved
        matches: [ { path: { type: PathPrefix, value: /moved } } ]
        filters: [ { type: RequestRedirect, requestRedirect: { hostname: example.org, path: { type: ReplacePrefixMatch, replacePrefixMatch: /here }, statusCode: 301 } } ]
`;

async function setup(t: Test, routes = ROUTES): Promise<{ la: LoopbackAgent; backends: Record<string, Backend> }> {
  const list = await allStarted(PODS.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(list.map((b) => b.close())));
  const la = await startLoopbackAgent(meshWith(routes));
  t.teardown(() => la.stop());
  la.route(CLIENT, REVIEWS, 'shop/client-0');
  return { la, backends: Object.fromEntries(list.map((b) => [b.name, b])) };
}

const get = (la: LoopbackAgent, path: string, headers: Record<string, string> = {}) => la.get(CLIENT, REVIEWS, path, headers);

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('a header match sends one user to v2; no rule matched is 404 no_route', async (t) => {
  const { la } = await setup(t);
  const jason = await get(la, '/reviews/1', { 'end-user': 'jason' });
  t.equal(jason.headers['x-pod'], 'reviews-v2');
  t.equal((await get(la, '/reviews/1', { 'END-USER': 'jason' })).headers['x-pod'], 'reviews-v2', 'header names match case-insensitively');
  // Gateway API precedence: the longest prefix first, then header count; both rules have /reviews.
  t.equal((await get(la, '/reviews/1', { 'end-user': 'alice' })).headers['x-pod'] === 'reviews-v2', false, 'other users take the canary rule');
  const other = await get(la, '/', { 'end-user': 'alice' });
  t.equal(other.status, 404);
  t.equal(other.headers['x-weft-error'], 'no_route');
});

t.test('a weighted canary splits 80/20 (checked with bounds that cannot flake)', async (t) => {
  const { la } = await setup(t);
  const n = 400;
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const r = await get(la, `/reviews/${i}`);
    t.equal(r.status, 200);
    const pod = r.headers['x-pod'] as string;
    counts[pod] = (counts[pod] ?? 0) + 1;
  }
  // v3 ~ Binomial(400, 0.2): mean 80, sd 8; +-6 sd is [32, 128]. Only v1 and v3 serve.
  t.same(Object.keys(counts).sort(), ['reviews-v1', 'reviews-v3']);
  t.ok(counts['reviews-v3']! > 32 && counts['reviews-v3']! < 128, `reviews-v3 got ${counts['reviews-v3']} of ${n}`);
});

t.test('faults for one user: an abort answered by the agent, a delay that holds only that user', async (t) => {
  const { la, backends } = await setup(t);
  const before = backends['reviews-v1']!.state.requests;
  const aborted = await get(la, '/reviews/1', { 'end-user': 'tester' });
  t.equal(aborted.status, 500);
  t.equal(aborted.headers['x-weft-error'], undefined, 'an injected fault is not an agent error');
  t.equal(backends['reviews-v1']!.state.requests, before, 'the aborted request never reached the backend');
  t.equal((await get(la, '/reviews/1')).status, 200, 'other users are not affected');

  // The delayed request is still pending after other requests went through: an ordering, not a clock.
  let delayedDone = false;
  const delayed = la.get('127.0.2.2', REVIEWS, '/reviews/1', { 'end-user': 'slow' }).then((r) => ((delayedDone = true), r));
  la.route('127.0.2.2', REVIEWS, 'shop/client-0');
  for (let i = 0; i < 5; i++) t.equal((await get(la, '/reviews/1')).status, 200);
  t.notOk(delayedDone, 'the delayed request is still held while five others were answered');
  const r = await delayed;
  t.equal(r.status, 200, 'after the delay, the request is served');
});

t.test('a mirror receives copies; the client gets its answer without waiting for the mirror', async (t) => {
  const { la, backends } = await setup(t);
  const shadow = backends.shadow!;
  shadow.state.delayMs = 4000; // a slow mirror
  const r = await get(la, '/mirrored/1?x=1', { 'x-trace': 'abc' });
  t.equal(r.status, 200);
  t.equal(r.headers['x-pod'], 'reviews-v1', 'the client sees the real backend');
  const dump = await la.configDump();
  t.equal(dump.routes.mirror.inFlight, 1, 'the copy is still out (the mirror answers in 4 s) while the client already has its answer');
  await until('the shadow got the copy', () => shadow.state.requests === 1);
  shadow.state.delayMs = 0;
  await get(la, '/mirrored/2');
  await until('the second copy', () => shadow.state.requests === 2);
});

t.test('a backend that does not exist answers 500 no_backend for its rule only; config_dump says so', async (t) => {
  const { la } = await setup(t);
  const r = await get(la, '/missing/x');
  t.equal(r.status, 500);
  t.equal(r.headers['x-weft-error'], 'no_backend');
  t.equal((await get(la, '/reviews/1')).status, 200, 'the rest of the route works');
  const dump = await la.configDump();
  const port = dump.routes.ports.find((p: any) => p.port === 'shop/reviews:80');
  const rules = port.routes[0].rules;
  t.match(rules.find((r: any) => r.rule === 'missing').backends[0], { service: 'shop/reviews-v9', state: /^missing/ });
  t.match(rules.find((r: any) => r.rule === 'canary').backends, [
    { service: 'shop/reviews-v1', weight: 80, state: 'ok', endpoints: { eligible: 1, total: 1 } },
    { service: 'shop/reviews-v3', weight: 20, state: 'ok' },
  ]);
});

t.test('rewrite, request and response header modifiers, redirect', async (t) => {
  const { la } = await setup(t);
  const r = await get(la, '/old/thing?q=1', { 'x-secret': 'hush', 'x-add': 'mine', 'x-set': 'client' });
  t.equal(r.status, 200);
  const echo = JSON.parse(r.body);
  t.equal(echo.pod, 'reviews-v2');
  t.equal(echo.path, '/new/thing?q=1', 'the prefix is replaced, the query kept');
  t.equal(echo.headers.host, 'reviews.internal');
  t.equal(echo.headers['x-set'], 'forced');
  t.equal(echo.headers['x-add'], 'mine, added');
  t.equal(echo.headers['x-secret'], undefined);
  t.equal(r.headers['x-route'], 'rewrite', 'the response header was set');
  t.equal(r.headers['x-pod'], undefined, 'and one removed');

  const moved = await request(`http://127.0.0.1:${la.outboundPort}/moved/a/b?c=d`, { dispatcher: la.client(CLIENT), headers: { host: 'reviews' } });
  await moved.body.dump();
  t.equal(moved.statusCode, 301);
  t.equal(moved.headers.location, 'http://example.org/here/a/b?c=d');
});

t.test('route changes apply live, without dropping a request in flight', async (t) => {
  const { la } = await setup(t);
  const inflight = get(la, '/reviews/1?delay=600');
  await new Promise((r) => setTimeout(r, 100));
  // Send everything to v3 now.
  la.update(meshWith(ROUTES.replace('{ name: reviews-v1, weight: 80 }, { name: reviews-v3, weight: 20 }', '{ name: reviews-v3 }')));
  const r = await inflight;
  t.equal(r.status, 200, 'the request in flight during the change completed');
  await until('the new split', async () => (await get(la, '/reviews/2')).headers['x-pod'] === 'reviews-v3');
  for (let i = 0; i < 20; i++) t.equal((await get(la, `/reviews/${i}`)).headers['x-pod'], 'reviews-v3');
  // Routes removed: the service behaves as before (its own endpoints, no 404).
  la.update(meshWith(' []'));
  await until('no routes', async () => (await get(la, '/anything')).status === 200);
  t.equal((await get(la, '/anything')).headers['x-pod'], 'reviews-v1');
});

t.test('TCPRoute splits connections by weight over services', async (t) => {
  const echoes = await allStarted([1, 2].map((i) => startBackend({ name: `db-${i}`, port: 18080, host: `127.0.1.${10 + i}`, tcpEchoPort: 9000, log: () => {} })));
  t.teardown(() => Promise.all(echoes.map((b) => b.close())));
  const pods = [1, 2].map((i) => ({ name: `db-${i}`, ip: `127.0.1.${10 + i}`, app: `db-${i}` }));
  const tcp = (name: string, vip: string, app: string) => ({ name, vip, app, port: 9000, targetPort: 9000, protocol: 'tcp' as const });
  const routes = (w1: number, w2: number) => `routes:
  - { name: db, namespace: shop, kind: TCPRoute, parentRefs: [ { name: db, port: 9000 } ], rules: [ { backendRefs: [ { name: db-1, weight: ${w1} }, { name: db-2, weight: ${w2} } ] } ] }`;
  const svcs = [tcp('db', '10.96.0.50', 'db-1'), tcp('db-1', '10.96.0.51', 'db-1'), tcp('db-2', '10.96.0.52', 'db-2')];
  const la = await startLoopbackAgent(loopbackMesh(pods, svcs, routes(1, 3)));
  t.teardown(() => la.stop());
  la.route('127.0.2.9', '10.96.0.50:9000', 'shop/client-0');
  const dial = () =>
    new Promise<string>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: '127.0.2.9' });
      let buf = '';
      s.on('data', (d) => {
        buf += d;
        if (buf.includes('\n')) s.end();
      });
      s.on('error', () => undefined);
      s.on('close', () => resolve(buf.trim()));
    });
  const counts: Record<string, number> = {};
  for (let i = 0; i < 200; i++) {
    const who = await dial();
    counts[who] = (counts[who] ?? 0) + 1;
  }
  // db-2 ~ Binomial(200, 0.75): mean 150, sd 6.1; +-6 sd is [113, 187].
  t.same(Object.keys(counts).sort(), ['db-1', 'db-2']);
  t.ok(counts['db-2']! > 113 && counts['db-2']! < 187, `db-2 got ${counts['db-2']} of 200`);
  const dump = await la.configDump();
  t.match(dump.socketLb, dump.socketLb === 'disabled' ? 'disabled' : {}, 'socket LB state is reported');
});
