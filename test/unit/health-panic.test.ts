import t from 'tap';
import { Endpoint } from '../../src/cluster/endpoint.js';
import { selectEligible } from '../../src/health/panic.js';

let nextPort = 8000;
function ep(opts: { ready?: boolean; health?: Endpoint['health']; ejectedUntil?: number } = {}): Endpoint {
  const e = new Endpoint({
    ip: '10.0.0.1',
    port: nextPort++,
    weight: 1,
    workload: 'w',
    namespace: 'ns',
    node: 'n',
    serviceAccount: 'sa',
    ready: opts.ready ?? true,
    local: true,
    meshed: true,
  });
  if (opts.health) e.health = opts.health;
  if (opts.ejectedUntil) e.ejectedUntil = opts.ejectedUntil;
  return e;
}

const NOW = 1_000_000;

t.test('healthy, unknown, unhealthy, ejected, not ready', async (t) => {
  const a = ep({ health: 'healthy' });
  const b = ep();
  const c = ep({ health: 'unhealthy' });
  const d = ep({ ejectedUntil: NOW + 1 });
  const e = ep({ ejectedUntil: NOW }); // ejection just expired
  const f = ep({ ready: false });
  const r = selectEligible([a, b, c, d, e, f], NOW, 0);
  t.same(r.endpoints, [a, b, e]);
  t.equal(r.panic, false);
});

t.test('3 of 4 unhealthy with threshold 50: all ready endpoints, panic', async (t) => {
  const eps = [ep({ health: 'healthy' }), ep({ health: 'unhealthy' }), ep({ health: 'unhealthy' }), ep({ ejectedUntil: NOW + 5000 })];
  const notReady = ep({ ready: false });
  const r = selectEligible([...eps, notReady], NOW, 50);
  t.equal(r.panic, true);
  t.same(r.endpoints, eps, 'every ready endpoint, the not-ready one left out');
});

t.test('exactly at the threshold is not panic', async (t) => {
  const eps = [ep(), ep(), ep({ health: 'unhealthy' }), ep({ health: 'unhealthy' })];
  const r = selectEligible(eps, NOW, 50);
  t.equal(r.panic, false);
  t.same(r.endpoints, eps.slice(0, 2));
});

t.test('none healthy: panic returns all ready; threshold 0 returns none', async (t) => {
  const eps = [ep({ health: 'unhealthy' }), ep({ health: 'unhealthy' })];
  t.same(selectEligible(eps, NOW, 50), { endpoints: eps, panic: true });
  t.same(selectEligible(eps, NOW, 0), { endpoints: [], panic: false }, 'no_healthy_upstream');
});

t.test('none ready: empty, not panic', async (t) => {
  t.same(selectEligible([ep({ ready: false }), ep({ ready: false })], NOW, 50), { endpoints: [], panic: false });
  t.same(selectEligible([], NOW, 50), { endpoints: [], panic: false });
});
