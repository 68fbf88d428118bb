import t from 'tap';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { StateStore } from '../../src/state/store.js';

type W = { name: string; namespace: string; ip: string; labels: Record<string, string> };

function store(workloads: W[], services: Array<{ name: string; namespace: string; vip: string; selector?: Record<string, string> }>): StateStore {
  const text = stringify({
    node: { name: 'node-a', address: '10.77.0.1' },
    namespaces: [
      { name: 'shop', labels: { 'weft.io/mesh': 'enabled' } },
      { name: 'other', labels: {} },
    ],
    workloads: workloads.map((w) => ({ ...w, node: 'node-a' })),
    services: services.map((s) => ({ ...s, ports: [{ port: 80, targetPort: 8080 }] })),
  });
  return new StateStore(parseConfig(text, 't', { env: {} }));
}

function endpoints(st: StateStore, ns: string, name: string): string[] {
  const s = st.service(ns, name)!;
  return st.endpointsOf(s, s.ports[0]!).map((e) => e.workload);
}

const WORKLOADS: W[] = [
  { name: 'api-0', namespace: 'shop', ip: '10.77.0.10', labels: { app: 'api', track: 'stable' } },
  { name: 'web-0', namespace: 'shop', ip: '10.77.0.11', labels: { app: 'web' } },
  { name: 'api-1', namespace: 'shop', ip: '10.77.0.12', labels: { app: 'api', track: 'canary' } },
  { name: 'api-2', namespace: 'shop', ip: '10.77.0.13', labels: { app: 'api', track: 'stable', zone: 'a' } },
  { name: 'api-9', namespace: 'other', ip: '10.77.0.14', labels: { app: 'api', track: 'stable' } },
];

t.test('a selector picks the workloads of its namespace holding every one of its labels, in config order', async (t) => {
  const st = store(WORKLOADS, [
    { name: 'api', namespace: 'shop', vip: '10.96.0.1', selector: { app: 'api' } },
    { name: 'stable', namespace: 'shop', vip: '10.96.0.2', selector: { track: 'stable', app: 'api' } },
    { name: 'zoned', namespace: 'shop', vip: '10.96.0.3', selector: { app: 'api', zone: 'a' } },
    { name: 'none', namespace: 'shop', vip: '10.96.0.4', selector: { app: 'api', zone: 'b' } },
    { name: 'unknown-key', namespace: 'shop', vip: '10.96.0.5', selector: { tier: 'api' } },
    { name: 'api', namespace: 'other', vip: '10.96.0.6', selector: { app: 'api' } },
  ]);
  t.same(endpoints(st, 'shop', 'api'), ['api-0', 'api-1', 'api-2']);
  t.same(endpoints(st, 'shop', 'stable'), ['api-0', 'api-2']);
  t.same(endpoints(st, 'shop', 'zoned'), ['api-2']);
  t.same(endpoints(st, 'shop', 'none'), []);
  t.same(endpoints(st, 'shop', 'unknown-key'), []);
  t.same(endpoints(st, 'other', 'api'), ['api-9'], 'a selector never reaches into another namespace');
});

t.test('a service without a selector has no derived endpoints', async (t) => {
  const st = store(WORKLOADS, [{ name: 'bare', namespace: 'shop', vip: '10.96.0.1' }]);
  t.same(endpoints(st, 'shop', 'bare'), []);
});

t.test('a workload selected by two services is an endpoint of both, and servicesOf names both', async (t) => {
  const st = store(WORKLOADS, [
    { name: 'api', namespace: 'shop', vip: '10.96.0.1', selector: { app: 'api' } },
    { name: 'stable', namespace: 'shop', vip: '10.96.0.2', selector: { track: 'stable' } },
  ]);
  const api0 = st.workload('shop', 'api-0')!;
  t.same(
    st.servicesOf(api0).map((s) => s.name),
    ['api', 'stable'],
  );
  t.same(
    st.servicesOf(st.workload('shop', 'web-0')!).map((s) => s.name),
    [],
  );
});

t.test('a label pair that only looks like another once joined is not a match', async (t) => {
  // Keys and values that contain NUL could collide in a joined index key.
  const st = store(
    [
      { name: 'a-0', namespace: 'shop', ip: '10.77.0.10', labels: { 'a\0b': 'c' } },
      { name: 'b-0', namespace: 'shop', ip: '10.77.0.11', labels: { a: 'b\0c' } },
    ],
    [{ name: 'svc', namespace: 'shop', vip: '10.96.0.1', selector: { a: 'b\0c' } }],
  );
  t.same(endpoints(st, 'shop', 'svc'), ['b-0']);
});

t.test('apply replaces the endpoints when labels change', async (t) => {
  const st = store(WORKLOADS, [{ name: 'api', namespace: 'shop', vip: '10.96.0.1', selector: { app: 'api' } }]);
  const before = st.generation;
  const moved = WORKLOADS.map((w) => (w.name === 'web-0' ? { ...w, labels: { app: 'api' } } : w.name === 'api-1' ? { ...w, labels: { app: 'web' } } : w));
  const next = store(moved, [{ name: 'api', namespace: 'shop', vip: '10.96.0.1', selector: { app: 'api' } }]);
  st.apply(next.config);
  t.equal(st.generation, before + 1);
  t.same(endpoints(st, 'shop', 'api'), ['api-0', 'web-0', 'api-2']);
});
