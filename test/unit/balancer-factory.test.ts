import t from 'tap';
import { Endpoint } from '../../src/cluster/endpoint.js';
import { BALANCER_TYPES, createBalancer, hashKey, seededRandom } from '../../src/balancer/index.js';
import type { LoadBalancerType } from '../../src/config/types.js';
import { endpoints } from '../lib/endpoints.js';

const ALL: LoadBalancerType[] = ['random', 'round-robin', 'weighted-round-robin', 'least-request', 'peak-ewma', 'ring-hash', 'maglev'];

t.test('one balancer per DESIGN.md type', async (t) => {
  t.same([...BALANCER_TYPES].sort(), [...ALL].sort());
  for (const type of BALANCER_TYPES) t.equal(createBalancer({ type }).type, type);
  t.throws(() => createBalancer({ type: 'nope' as LoadBalancerType }), TypeError);
});

t.test('empty set: undefined, before and after endpoints come and go', async (t) => {
  for (const type of BALANCER_TYPES) {
    const b = createBalancer({ type }, { random: seededRandom(1) });
    t.equal(b.pick({}), undefined, `${type}: never set`);
    b.setEndpoints(endpoints(3));
    t.ok(b.pick({ hash: 42 }), `${type}: picks`);
    b.setEndpoints([]);
    t.equal(b.pick({}), undefined, `${type}: emptied`);
    t.equal(b.pick({ hash: 7, tried: new Set() }), undefined, `${type}: emptied, with a hash`);
  }
});

t.test('tried: avoided whenever another endpoint exists, for every algorithm', async (t) => {
  const eps = endpoints(5, (i) => 1 + (i % 3));
  const rnd = seededRandom(2);
  for (const type of BALANCER_TYPES) {
    const b = createBalancer({ type }, { random: seededRandom(3), now: () => 1_700_000_000_000 });
    b.setEndpoints(eps);
    let bad = 0;
    for (let i = 0; i < 500; i++) {
      const hash = i % 2 === 0 ? hashKey(`k${i}`) : undefined;
      // A random proper subset has been tried.
      const tried = new Set(eps.filter(() => rnd() < 0.6));
      if (tried.size === eps.length) tried.delete(eps[i % 5]!);
      const ep = b.pick({ hash, tried })!;
      if (ep === undefined || tried.has(ep)) bad++;
    }
    t.equal(bad, 0, `${type}: never a tried endpoint while an untried one exists`);
    const only = new Set(eps.slice(0, 4));
    let found = 0;
    for (let i = 0; i < 50; i++) if (b.pick({ hash: hashKey(`x${i}`), tried: only }) === eps[4]) found++;
    t.equal(found, 50, `${type}: the last untried endpoint is found`);
    t.ok(eps.includes(b.pick({ tried: new Set(eps) })!), `${type}: all tried, still an answer`);
  }
});

t.test('a single endpoint is always the answer', async (t) => {
  const [ep] = endpoints(1);
  for (const type of BALANCER_TYPES) {
    const b = createBalancer({ type });
    b.setEndpoints([ep!]);
    t.equal(b.pick({}), ep, type);
    t.equal(b.pick({ hash: 123, tried: new Set([ep!]) }), ep, `${type}: tried, but the only one`);
  }
});

t.test('weight 0 drains an endpoint in the weighted algorithms', async (t) => {
  const eps = endpoints(4, (i) => (i === 0 ? 0 : 2));
  for (const type of ['weighted-round-robin', 'least-request', 'peak-ewma', 'ring-hash', 'maglev'] as const) {
    const b = createBalancer({ type }, { random: seededRandom(4) });
    b.setEndpoints(eps);
    let drained = 0;
    for (let i = 0; i < 2000; i++) if (b.pick({ hash: hashKey(`k${i}`) }) === eps[0]) drained++;
    t.equal(drained, 0, `${type}: weight-0 endpoint gets nothing`);
  }
});

t.test('set changes never lose per-endpoint statistics (they live on Endpoint)', async (t) => {
  const eps = endpoints(3);
  const b = createBalancer({ type: 'peak-ewma' });
  b.setEndpoints(eps);
  b.observe!(eps[0]!, 42, 1_700_000_000_000);
  b.setEndpoints(eps.slice(0, 2));
  b.setEndpoints(eps);
  t.equal(eps[0]!.rttEwma, 42);
});
