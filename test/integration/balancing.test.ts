import t, { type Test } from 'tap';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';

async function withMesh(t: Test, n: number, policy: string, weights: number[] = []): Promise<{ la: LoopbackAgent; backends: Backend[] }> {
  const pods = Array.from({ length: n }, (_, i) => ({ name: `api-${i}`, ip: `127.0.1.${i + 1}`, app: 'api', weight: weights[i] }));
  const backends = await allStarted(pods.map((p) => startBackend({ name: p.name, port: 8080, host: p.ip, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const la = await startLoopbackAgent(loopbackMesh(pods, [{ name: 'api', vip: '10.96.0.20', app: 'api', policy }]));
  t.teardown(() => la.stop());
  la.route('127.0.2.1', '10.96.0.20:80', 'shop/client-0');
  return { la, backends };
}

async function tally(la: LoopbackAgent, n: number, headers: (i: number) => Record<string, string> = () => ({})): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const r = await la.get('127.0.2.1', '10.96.0.20:80', '/', headers(i));
    const p = r.headers['x-pod'] as string;
    out[p] = (out[p] ?? 0) + 1;
  }
  return out;
}

/** Concurrent load from several client connections; returns per-pod counts. */
async function concurrent(la: LoopbackAgent, conns: number, perConn: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  await Promise.all(
    Array.from({ length: conns }, async (_, c) => {
      const src = `127.0.4.${c + 1}`;
      la.route(src, '10.96.0.20:80', 'shop/client-0');
      for (let i = 0; i < perConn; i++) {
        const r = await la.get(src, '10.96.0.20:80', '/');
        const p = r.headers['x-pod'] as string;
        out[p] = (out[p] ?? 0) + 1;
      }
    }),
  );
  return out;
}

t.test('weighted-round-robin splits 1:3 within a few percent', async (t) => {
  const { la } = await withMesh(t, 2, '{ loadBalancer: { type: weighted-round-robin } }', [1, 3]);
  const c = await tally(la, 400);
  t.ok(Math.abs((c['api-1'] ?? 0) / 400 - 0.75) < 0.03, `api-1 got ${c['api-1']} of 400 (75% expected)`);
});

t.test('random spreads evenly', async (t) => {
  const { la } = await withMesh(t, 4, '{ loadBalancer: { type: random } }');
  const c = await tally(la, 800);
  for (let i = 0; i < 4; i++) {
    const v = c[`api-${i}`] ?? 0;
    // 800 draws over 4: mean 200, sd ~12.2; 6 sd bounds.
    t.ok(v > 127 && v < 273, `api-${i} got ${v} of 800`);
  }
});

t.test('ring-hash and maglev: each key sticks to one endpoint, keys spread over all', async (t) => {
  for (const type of ['ring-hash', 'maglev'])
    await t.test(type, async (t) => {
      const { la } = await withMesh(t, 3, `{ loadBalancer: { type: ${type}, hashOn: { header: x-user } } }`);
      const owner = new Map<string, Set<string>>();
      for (let round = 0; round < 3; round++) {
        for (let u = 0; u < 60; u++) {
          const r = await la.get('127.0.2.1', '10.96.0.20:80', '/', { 'x-user': `user-${u}` });
          const set = owner.get(`user-${u}`) ?? new Set();
          set.add(r.headers['x-pod'] as string);
          owner.set(`user-${u}`, set);
        }
      }
      t.ok(
        [...owner.values()].every((s) => s.size === 1),
        `${type}: every key always went to the same endpoint`,
      );
      const used = new Set([...owner.values()].map((s) => [...s][0]));
      t.equal(used.size, 3, `${type}: 60 keys spread over all 3 endpoints`);
    });
});

t.test('least-request and peak-ewma send clearly less to a slow endpoint under concurrency', async (t) => {
  for (const type of ['least-request', 'peak-ewma'])
    await t.test(type, async (t) => {
      const { la, backends } = await withMesh(t, 3, `{ loadBalancer: { type: ${type} } }`);
      backends[0]!.state.delayMs = 100;
      const c = await concurrent(la, 12, 25);
      const slow = c['api-0'] ?? 0;
      const total = Object.values(c).reduce((a, b) => a + b, 0);
      t.ok(slow / total < 0.2, `${type}: the slow endpoint got ${slow} of ${total} (a third would be even)`);
    });
});
