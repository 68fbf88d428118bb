import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';

const pods = [0, 1, 2].map((i) => ({ name: `api-${i}`, ip: `127.0.1.${i + 1}`, app: 'api' }));

async function burst(la: LoopbackAgent, n: number, dest = '10.96.0.20:80'): Promise<{ pods: Record<string, number>; statuses: Record<number, number> }> {
  const out = { pods: {} as Record<string, number>, statuses: {} as Record<number, number> };
  for (let i = 0; i < n; i++) {
    const r = await la.get('127.0.2.1', dest, '/');
    out.statuses[r.status] = (out.statuses[r.status] ?? 0) + 1;
    const p = r.headers['x-pod'] as string | undefined;
    if (p) out.pods[p] = (out.pods[p] ?? 0) + 1;
  }
  return out;
}

async function until(what: string, fn: () => Promise<boolean> | boolean, ms: number): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < ms) {
    if (await fn()) return Date.now() - start;
    await sleep(50);
  }
  throw new Error(`timed out after ${ms}ms waiting for ${what}`);
}

async function endpoint(la: LoopbackAgent, name: string): Promise<any> {
  const dump = await la.configDump();
  return dump.clusters.find((c: any) => c.key === 'shop/api:80').endpoints.find((e: any) => e.workload === `shop/${name}`);
}

t.test('active HTTP checks: a killed backend leaves rotation, a restarted one returns', async (t) => {
  const backends = new Map<string, Backend>();
  // Before the first start: one that cannot bind must not leave the others listening (the process would wait for tap's timeout).
  t.teardown(() => Promise.all([...backends.values()].map((b) => b.close())));
  for (const p of pods) backends.set(p.name, await startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} }));
  const la = await startLoopbackAgent(
    loopbackMesh(pods, [
      { name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ healthCheck: { type: http, path: /healthz, interval: 500ms, timeout: 400ms, unhealthyThreshold: 2, healthyThreshold: 2 } }' },
    ]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  t.same((await burst(la, 9)).pods, { 'api-0': 3, 'api-1': 3, 'api-2': 3 });

  await backends.get('api-1')!.close();
  // A probe timeout of 400 ms, not 100 ms: on a loaded machine a live backend must not miss two
  // probes in a row (it did, and the first burst then skipped it). A closed port fails at once.
  await until('api-1 unhealthy', async () => (await endpoint(la, 'api-1')).health === 'unhealthy', 5000);
  const after = await burst(la, 20);
  t.same(after.statuses, { 200: 20 }, 'every request succeeds once it is out');
  t.notOk(after.pods['api-1'], 'no request reaches the dead endpoint');

  backends.set('api-1', await startBackend({ name: 'api-1', port: 8080, host: '127.0.1.2', log: () => {} }));
  await until('api-1 healthy', async () => (await endpoint(la, 'api-1')).health === 'healthy', 5000);
  t.ok((await burst(la, 9)).pods['api-1'], 'back in rotation');

  // Readiness from discovery: ready=false takes a pod out without any check.
  la.update(loopbackMesh([{ ...pods[0]!, ready: false }, pods[1]!, pods[2]!], [{ name: 'api', vip: '10.96.0.20', app: 'api' }]));
  const r = await burst(la, 10);
  t.notOk(r.pods['api-0'], 'a not-ready workload gets no traffic');
  const m = await la.metrics();
  t.match(m, /weft_upstream_healthy_endpoints\{destination_service="shop\/api"\} 2/);
});

t.test('outlier detection ejects a 503 endpoint, re-admits it, ejects it longer', async (t) => {
  const backends = await allStarted(pods.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(pods, [{ name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ outlierDetection: { consecutive5xx: 3, interval: 2s, baseEjectionTime: 500ms, maxEjectionPercent: 50 } }' }]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  backends[2]!.state.failStatus = 503;
  const first = await burst(la, 12);
  t.equal(first.statuses[503], 3, 'exactly consecutive5xx failures before ejection');
  const ep = await endpoint(la, 'api-2');
  t.ok(ep.ejected, 'api-2 is ejected');
  t.equal(ep.ejectionReason, 'consecutive-5xx');
  t.same((await burst(la, 10)).statuses, { 200: 10 }, 'requests succeed while it is out');
  const firstUntil = Date.parse(ep.ejectedUntil);
  // The sweep that re-admits it is the only one before the second burst: with a 2 s interval,
  // no sweep in between decays the multiplier however slow the machine is (at 100 ms, one did).
  await until('re-admission', async () => !(await endpoint(la, 'api-2')).ejected, 6000);
  // Measured from before the burst, not from when the check runs: a slow machine must not
  // eat into the ejection time the assertion looks for.
  const beforeSecond = Date.now();
  await burst(la, 12);
  const again = await endpoint(la, 'api-2');
  t.ok(again.ejected, 'ejected again while it still fails');
  t.equal(again.ejectionCount, 2, 'the second ejection in a row');
  t.ok(Date.parse(again.ejectedUntil) >= beforeSecond + 2 * 500, 'for longer the second time (base x count)');
  t.ok(Date.parse(again.ejectedUntil) > firstUntil);
  t.match(await la.metrics(), /weft_upstream_ejections_total\{destination_service="shop\/api",reason="consecutive-5xx"\} [2-9]/);
});

t.test('panic threshold: with too few healthy endpoints, spread over all', async (t) => {
  const backends = await allStarted(pods.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(pods, [
      { name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ outlierDetection: { consecutive5xx: 1, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 100, panicThreshold: 50 } }' },
    ]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  backends[1]!.state.failStatus = 503;
  backends[2]!.state.failStatus = 503;
  await burst(la, 6);
  const dump = await la.configDump();
  const c = dump.clusters.find((x: any) => x.key === 'shop/api:80');
  t.equal(c.endpoints.filter((e: any) => e.ejected).length, 2, 'two of three ejected');
  t.equal(c.panic, true, 'one healthy of three is below 50%: panic');
  const spread = await burst(la, 9);
  t.equal(Object.keys(spread.pods).length, 3, 'traffic spreads over all endpoints rather than overloading one');
});

t.test('maxEjectionPercent caps ejections', async (t) => {
  const backends = await allStarted(pods.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(
    loopbackMesh(pods, [
      { name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ outlierDetection: { consecutive5xx: 1, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 34, panicThreshold: 0 } }' },
    ]),
  );
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  for (const b of backends) b.state.failStatus = 503;
  await burst(la, 9);
  const dump = await la.configDump();
  const ejected = dump.clusters.find((x: any) => x.key === 'shop/api:80').endpoints.filter((e: any) => e.ejected).length;
  t.equal(ejected, 1, 'at most 34% of 3 endpoints (one) is ejected');
});

t.test('L4 services: connect failures eject, TCP checks take a dead endpoint out', async (t) => {
  const echoes = await allStarted([0, 1].map((i) => startBackend({ name: `echo-${i}`, port: 18080, host: `127.0.1.${i + 1}`, tcpEchoPort: 9000, log: () => {} })));
  t.teardown(() => Promise.all(echoes.map((b) => b.close())));
  const pods3 = [0, 1, 2].map((i) => ({ name: `echo-${i}`, ip: `127.0.1.${i + 1}`, app: 'echo' }));
  // echo-2 (127.0.1.3) has no server: connections to it are refused.
  const la = await startLoopbackAgent(
    loopbackMesh(pods3, [
      {
        name: 'echo',
        vip: '10.96.0.40',
        app: 'echo',
        port: 9000,
        targetPort: 9000,
        protocol: 'tcp',
        policy: '{ loadBalancer: { type: round-robin }, outlierDetection: { consecutiveGatewayErrors: 2, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 50 } }',
      },
      {
        name: 'echo-checked',
        vip: '10.96.0.41',
        app: 'echo',
        port: 9000,
        targetPort: 9000,
        protocol: 'tcp',
        policy: '{ healthCheck: { type: tcp, interval: 100ms, timeout: 80ms, unhealthyThreshold: 2, healthyThreshold: 1 } }',
      },
    ]),
  );
  t.teardown(() => la.stop());
  const { connect } = await import('node:net');
  const dial = (src: string) =>
    new Promise<string>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: src });
      let buf = '';
      s.on('data', (d) => {
        buf += d;
        if (buf.includes('\n')) s.end();
      });
      s.on('error', () => undefined);
      s.on('close', () => resolve(buf.trim()));
    });
  la.route('127.0.2.7', '10.96.0.40:9000', 'shop/client-0');
  const got: string[] = [];
  for (let i = 0; i < 12; i++) got.push(await dial('127.0.2.7'));
  t.ok(
    got.every((g) => g === 'echo-0' || g === 'echo-1'),
    'every connection is served: a refused connect is retried on another endpoint',
  );
  const dump = await la.configDump();
  const dead = dump.clusters.find((c: any) => c.key === 'shop/echo:9000').endpoints.find((e: any) => e.workload === 'shop/echo-2');
  t.ok(dead.ejected, 'the refusing endpoint is ejected after consecutive connect failures');

  la.route('127.0.2.8', '10.96.0.41:9000', 'shop/client-0');
  await until(
    'the TCP check marks echo-2 unhealthy',
    async () => {
      const d = await la.configDump();
      return d.clusters.find((c: any) => c.key === 'shop/echo-checked:9000').endpoints.find((e: any) => e.workload === 'shop/echo-2').health === 'unhealthy';
    },
    3000,
  );
  const got2: string[] = [];
  for (let i = 0; i < 6; i++) got2.push(await dial('127.0.2.8'));
  t.ok(
    got2.every((g) => g === 'echo-0' || g === 'echo-1'),
    'the TCP check keeps connections away from the dead endpoint',
  );
});
