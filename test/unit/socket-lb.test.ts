// Which service ports connect4 may balance itself, and how weights become backend slots.
import t from 'tap';
import { Endpoint, type EndpointInfo } from '../../src/cluster/endpoint.js';
import type { Cluster } from '../../src/cluster/cluster.js';
import type { TrafficPolicy } from '../../src/config/types.js';
import { ineligibility, slotsFor } from '../../src/capture/socket-lb.js';
import { LB_SLOTS_MAX } from '../../src/capture/constants.js';

const info = (ip: string, o: Partial<EndpointInfo> = {}): EndpointInfo => ({
  ip,
  port: 8080,
  weight: 1,
  workload: `w-${ip}`,
  namespace: 'app',
  node: 'node-a',
  serviceAccount: 'sa',
  ready: true,
  local: true,
  meshed: true,
  ...o,
});

const policy = (o: Partial<TrafficPolicy> = {}): TrafficPolicy =>
  ({
    loadBalancer: { type: 'round-robin' },
    timeout: 15_000,
    connectionPool: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, connectTimeout: 5000, idleTimeout: 3_600_000 },
    ...o,
  }) as TrafficPolicy;

const cluster = (o: { protocol?: 'http' | 'tcp'; key?: string; policy?: TrafficPolicy; eps?: EndpointInfo[] } = {}): Cluster =>
  ({
    protocol: o.protocol ?? 'tcp',
    key: o.key ?? 'app/web:80',
    policy: o.policy ?? policy(),
    endpoints: new Map((o.eps ?? [info('10.0.0.1'), info('10.0.0.2')]).map((i) => [`${i.ip}:${i.port}`, new Endpoint(i)])),
  }) as unknown as Cluster;

const nobody = () => false;

t.test('ineligibility: only when the agent has nothing to add', async (t) => {
  t.equal(ineligibility(cluster(), nobody), undefined, 'plain TCP, local endpoints, no policy: balanced in the kernel');
  t.equal(ineligibility(cluster({ protocol: 'http' }), nobody), 'http');
  t.equal(ineligibility(cluster({ key: 'pod:10.0.0.1:8080' }), nobody), 'pod', 'a pod dialed directly keeps going to the agent');
  t.equal(ineligibility(cluster({ policy: policy({ loadBalancer: { type: 'least-request' } as TrafficPolicy['loadBalancer'] }) }), nobody), 'balancer least-request');
  for (const type of ['random', 'weighted-round-robin'] as const)
    t.equal(ineligibility(cluster({ policy: policy({ loadBalancer: { type } as TrafficPolicy['loadBalancer'] }) }), nobody), undefined, type);
  t.equal(ineligibility(cluster({ policy: policy({ outlierDetection: {} as TrafficPolicy['outlierDetection'] }) }), nobody), 'outlier detection');
  t.equal(ineligibility(cluster({ policy: policy({ circuitBreaker: {} as TrafficPolicy['circuitBreaker'] }) }), nobody), 'circuit breaker');
  t.equal(ineligibility(cluster({ eps: [info('10.0.0.1'), info('10.1.0.1', { local: false })] }), nobody), 'endpoint on another node (tunnel)');
  t.equal(ineligibility(cluster({ eps: [info('10.1.0.1', { local: false, meshed: false })] }), nobody), undefined, 'an unmeshed pod elsewhere is plain TCP anyway');
  t.equal(
    ineligibility(cluster(), (ep) => ep.info.ip === '10.0.0.2'),
    'authorization policy',
    'a policy on any endpoint',
  );
  const many = Array.from({ length: LB_SLOTS_MAX + 1 }, (_, i) => info(`10.0.${i >> 8}.${i & 255}`));
  t.match(ineligibility(cluster({ eps: many }), nobody), /more than/);
});

t.test('slotsFor: weights become slot counts, in a stable order', async (t) => {
  const eps = [new Endpoint(info('10.0.0.2')), new Endpoint(info('10.0.0.1'))];
  t.same(
    slotsFor(eps),
    [
      { ip: '10.0.0.1', port: 8080 },
      { ip: '10.0.0.2', port: 8080 },
    ],
    'equal weights: one slot each, sorted',
  );
  const weighted = slotsFor([new Endpoint(info('10.0.0.1', { weight: 2 })), new Endpoint(info('10.0.0.2', { weight: 4 }))]);
  t.same(
    weighted.map((s) => s.ip),
    ['10.0.0.1', '10.0.0.2', '10.0.0.2'],
    'weights 2 and 4: 1 and 2 slots',
  );
  const big = slotsFor([new Endpoint(info('10.0.0.1', { weight: 1000 })), new Endpoint(info('10.0.0.2', { weight: 1 }))]);
  t.ok(big.length <= LB_SLOTS_MAX, `at most ${LB_SLOTS_MAX} slots (${big.length})`);
  t.equal(big.filter((s) => s.ip === '10.0.0.2').length, 1, 'every endpoint keeps at least one slot');
});
