// The tunnel CONNECT's description of the source workload (`baggage`, src/proxy/hbone.ts) and
// the cap on the workloads peers may describe (src/telemetry/labels.ts).
import t from 'tap';
import { MAX_BAGGAGE_LENGTH, parseSourceBaggage, sourceBaggage } from '../../src/proxy/hbone.js';
import { DescribedSources } from '../../src/telemetry/labels.js';

t.test('what the source agent sends, the destination reads back', async (t) => {
  const d = { namespace: 'shop', workload: 'reporter', canonicalService: 'reports', pod: 'reporter-6d8f9c-k2x4p' };
  const v = sourceBaggage(d);
  t.equal(v, 'k8s.namespace.name=shop,k8s.workload.name=reporter,service.name=reports,k8s.pod.name=reporter-6d8f9c-k2x4p');
  t.same(parseSourceBaggage(v), d);
  t.same(parseSourceBaggage([v!]), d, 'one header line');
  t.same(
    parseSourceBaggage(['k8s.namespace.name=shop', 'k8s.workload.name=api']),
    { namespace: 'shop', workload: 'api', canonicalService: 'api' },
    'several lines are one list; no service.name: the workload stands in',
  );
  t.equal(sourceBaggage({ namespace: 'Shop!', workload: 'x', canonicalService: 'x' }), undefined, 'a namespace that is not a DNS label: nothing sent');
  t.equal(
    sourceBaggage({ namespace: 'shop', workload: 'x', canonicalService: 'x y', pod: 'p' }),
    'k8s.namespace.name=shop,k8s.workload.name=x,k8s.pod.name=p',
    'a value that is not a name is left out',
  );
});

t.test('W3C baggage from other producers: other members and properties are skipped', async (t) => {
  t.same(parseSourceBaggage('userId=alice, k8s.namespace.name = shop ;prop=1,k8s.workload.name=api,isProduction=false'), { namespace: 'shop', workload: 'api', canonicalService: 'api' });
});

t.test('what the destination refuses, with a reason for its debug line', async (t) => {
  const cases: [string | string[] | undefined, RegExp][] = [
    [undefined, /no baggage/],
    ['', /no baggage/],
    [`k8s.namespace.name=shop,k8s.workload.name=${'a'.repeat(MAX_BAGGAGE_LENGTH)}`, /longer than 1024/],
    ['k8s.namespace.name=shop,k8s.namespace.name=bank,k8s.workload.name=api', /k8s.namespace.name twice/],
    ['k8s.namespace.name=shop,k8s.workload.name=a%20b', /k8s.workload.name is not a name/],
    ['k8s.namespace.name=shop,k8s.workload.name=api"}', /not a name/],
    ['k8s.namespace.name=Shop,k8s.workload.name=api', /k8s.namespace.name is not a name/],
    ['k8s.namespace.name=shop,k8s.workload.name=api,service.name=-x', /service.name is not a name/],
    [`k8s.namespace.name=shop,k8s.workload.name=${'a'.repeat(254)}`, /not a name/],
    ['k8s.namespace.name=shop', /without a namespace and a workload/],
    ['k8s.workload.name=api', /without a namespace and a workload/],
  ];
  for (const [v, why] of cases) t.match(parseSourceBaggage(v), why, JSON.stringify(v)?.slice(0, 80) ?? 'undefined');
});

t.test('described workloads: capped, forgotten after the ttl', async (t) => {
  let now = 0;
  const ds = new DescribedSources(2, 1000, () => now);
  const w = (workload: string, canonicalService = workload) => ({ namespace: 'shop', workload, canonicalService });
  t.ok(ds.admit(w('a')));
  t.ok(ds.admit(w('b')));
  t.notOk(ds.admit(w('c')), 'a third one: over the cap');
  t.notOk(ds.admit(w('a', 'other')), 'the canonical service counts: it is a label too');
  t.ok(ds.admit(w('a')), 'one already in keeps being admitted');
  t.same([...ds.live()].sort(), ['shop/a', 'shop/b']);
  now = 600;
  t.ok(ds.admit(w('a')), 'seen again');
  now = 1500;
  t.same([...ds.live()], ['shop/a'], 'b was not seen for longer than the ttl');
  t.ok(ds.admit(w('c')), 'which made room');
});
