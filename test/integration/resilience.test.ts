import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { startBackend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';

const two = [0, 1].map((i) => ({ name: `api-${i}`, ip: `127.0.1.${i + 1}`, app: 'api' }));

async function burst(la: LoopbackAgent, n: number, src = '127.0.2.1', dest = '10.96.0.20:80', path = '/') {
  const out = { pods: {} as Record<string, number>, statuses: {} as Record<number, number>, errors: {} as Record<string, number> };
  for (let i = 0; i < n; i++) {
    const r = await la.get(src, dest, path);
    out.statuses[r.status] = (out.statuses[r.status] ?? 0) + 1;
    const p = r.headers['x-pod'] as string | undefined;
    if (p) out.pods[p] = (out.pods[p] ?? 0) + 1;
    const e = r.headers['x-weft-error'] as string | undefined;
    if (e) out.errors[e] = (out.errors[e] ?? 0) + 1;
  }
  return out;
}

function retriesOf(metrics: string): number {
  const m = /weft_retries_total\{destination_service="shop\/api"\} (\d+)/.exec(metrics);
  return m ? Number(m[1]) : 0;
}

t.test('retries: one of two endpoints failing, >= 99% succeed', async (t) => {
  const backends = await allStarted(two.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(two, [{ name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ retries: { attempts: 2, retryOn: [5xx, connect-failure, reset], budget: { percent: 50, minPerSecond: 1000 } } }' }]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  backends[1]!.state.failStatus = 503;
  const r = await burst(la, 200);
  t.ok((r.statuses[200] ?? 0) >= 198, `${r.statuses[200]} of 200 succeeded`);
  t.ok(retriesOf(await la.metrics()) >= 50, 'failed tries were retried');
  // A request body small enough to buffer is replayed on the retry.
  const res = await la
    .client('127.0.2.1')
    .request({ origin: `http://127.0.0.1:${la.outboundPort}`, path: '/post', method: 'POST', body: 'hello', headers: { host: 'api', 'content-type': 'text/plain' } });
  t.equal(res.statusCode, 200);
  await res.body.text();
});

t.test('the retry budget stops a retry storm', async (t) => {
  const backends = await allStarted(two.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(two, [
      { name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ retries: { attempts: 3, retryOn: [5xx], budget: { percent: 20, minPerSecond: 5 }, backoff: { base: 1ms, max: 2ms } } }' },
    ]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  for (const b of backends) b.state.failStatus = 503;
  const start = Date.now();
  const r = await burst(la, 100);
  const secs = Math.max(1, (Date.now() - start) / 1000);
  t.same(r.statuses, { 503: 100 });
  const retries = retriesOf(await la.metrics());
  // Without a budget: 300 retries. With it: 20% of requests plus the floor per second.
  t.ok(retries <= 100 * 0.2 + 5 * Math.ceil(secs) + 5, `retries capped: ${retries} for 100 requests in ${secs.toFixed(1)}s`);
  t.ok(retries >= 5, 'the floor still allows some');
});

t.test('timeouts answer 504 upstream_timeout; per-try timeouts retry elsewhere', async (t) => {
  const backends = await allStarted(two.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(two, [
      { name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ timeout: 300ms }' },
      {
        name: 'api-retry',
        vip: '10.96.0.21',
        app: 'api',
        policy: '{ timeout: 5s, retries: { attempts: 2, perTryTimeout: 200ms, retryOn: [reset, 5xx], budget: { percent: 100, minPerSecond: 100 } } }',
      },
    ]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  const slow = await la.get('127.0.2.1', '10.96.0.20:80', '/?delay=2000');
  t.equal(slow.status, 504);
  t.equal(slow.headers['x-weft-error'], 'upstream_timeout');
  backends[0]!.state.delayMs = 2000;
  la.route('127.0.2.2', '10.96.0.21:80', 'shop/client-0');
  const r = await burst(la, 6, '127.0.2.2', '10.96.0.21:80');
  t.same(r.statuses, { 200: 6 }, 'a slow endpoint is retried on the fast one');
  t.same(r.pods, { 'api-1': 6 });
});

t.test('overflow: maxRequests answered 503 overflow', async (t) => {
  const backends = await allStarted(two.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(two, [{ name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ connectionPool: { maxConnections: 10, maxPendingRequests: 10, maxRequests: 2 } }' }]),
  );
  t.teardown(() => la.stop());
  const results = await Promise.all(
    Array.from({ length: 6 }, async (_, i) => {
      const src = `127.0.3.${i + 1}`;
      la.route(src, '10.96.0.20:80', 'shop/client-0');
      const r = await la.get(src, '10.96.0.20:80', '/?delay=500');
      return { status: r.status, error: r.headers['x-weft-error'] };
    }),
  );
  const over = results.filter((r) => r.status === 503 && r.error === 'overflow').length;
  t.equal(results.filter((r) => r.status === 200).length, 2, 'maxRequests are served');
  t.equal(over, 4, 'the rest overflow');
});

t.test('circuit breaker opens, answers circuit_open, closes after a good half-open probe', async (t) => {
  const backends = await allStarted(two.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(two, [{ name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ circuitBreaker: { consecutiveFailures: 4, openDuration: 500ms, halfOpenRequests: 1 } }' }]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  for (const b of backends) b.state.failStatus = 500;
  const r = await burst(la, 8);
  t.equal(r.statuses[500], 4, 'failures pass through until the breaker trips');
  t.equal(r.errors['circuit_open'], 4, 'then circuit_open');
  t.equal(r.statuses[503], 4);
  t.match(await la.metrics(), /weft_circuit_breaker_open\{destination_service="shop\/api"\} 1/);
  for (const b of backends) b.state.failStatus = null;
  await sleep(600);
  t.same((await burst(la, 5)).statuses, { 200: 5 }, 'the half-open probe succeeds and the circuit closes');
  t.match(await la.metrics(), /weft_circuit_breaker_open\{destination_service="shop\/api"\} 0/);
  const dump = await la.configDump();
  t.equal(dump.clusters.find((c: any) => c.key === 'shop/api:80').circuitBreaker.state, 'closed');
});

t.test('fallback serves while the primary is down and hands back when it recovers', async (t) => {
  const backends = await allStarted(two.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const degraded = await startBackend({ name: 'api-degraded-0', port: 8080, host: '127.0.1.9', log: () => {} });
  t.teardown(() => degraded.close());
  const pods = [...two, { name: 'api-degraded-0', ip: '127.0.1.9', app: 'api-degraded' }];
  const la = await startLoopbackAgent(
    loopbackMesh(pods, [
      {
        name: 'api',
        vip: '10.96.0.20',
        app: 'api',
        policy:
          '{ healthCheck: { type: http, path: /healthz, interval: 100ms, timeout: 80ms, unhealthyThreshold: 1, healthyThreshold: 1 }, circuitBreaker: { consecutiveFailures: 3, openDuration: 300ms, halfOpenRequests: 1 }, fallback: { service: api-degraded } }',
      },
      { name: 'api-degraded', vip: '10.96.0.29', app: 'api-degraded' },
    ]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  t.same((await burst(la, 4)).pods, { 'api-0': 2, 'api-1': 2 });
  // No healthy endpoint: everything goes to the fallback.
  for (const b of backends) b.state.healthy = false;
  await sleep(500);
  const down = await burst(la, 6);
  t.same(down.statuses, { 200: 6 }, 'requests keep succeeding');
  t.same(down.pods, { 'api-degraded-0': 6 }, 'from the fallback');
  for (const b of backends) b.state.healthy = true;
  await sleep(500);
  t.same(Object.keys((await burst(la, 4)).pods).sort(), ['api-0', 'api-1'], 'back to the primary once it recovers');
  // Circuit open: also the fallback.
  for (const b of backends) b.state.failStatus = 503;
  const tripping = await burst(la, 8);
  t.ok((tripping.pods['api-degraded-0'] ?? 0) >= 4, `the open circuit sends traffic to the fallback (${JSON.stringify(tripping.pods)})`);
  for (const b of backends) b.state.failStatus = null;
  await sleep(400);
  await burst(la, 2);
  t.same(Object.keys((await burst(la, 4)).pods).sort(), ['api-0', 'api-1'], 'and back after the probe');
});
void request;
