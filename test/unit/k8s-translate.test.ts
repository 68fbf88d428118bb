import t from 'tap';
import type { V1EndpointSlice, V1Namespace, V1Node, V1Pod, V1Service } from '@kubernetes/client-node';
import { normalizeConfig } from '../../src/config/normalize.js';
import { blame, nodeAddressOf, nodeFingerprint, probePorts, translate, trimNode, trimPod, workloadOfPodName, type ClusterState, type CustomObject } from '../../src/discovery/k8s/translate.js';
import type { ConfigError } from '../../src/errors.js';
import { endpointSliceObject, namespaceObject, nodeObject, podObject, serviceObject, weftObject } from '../lib/fake-apiserver.js';

const NODE = 'node-a';

function state(parts: Partial<ClusterState>): ClusterState {
  return {
    namespaces: [],
    pods: [],
    services: [],
    endpointSlices: [],
    trafficPolicies: [],
    authorizationPolicies: [],
    requestAuthentications: [],
    nodes: [],
    ...parts,
  };
}
const ctx = (cgroups: Record<string, string> = {}) => ({ nodeName: NODE, cgroupOf: (uid: string) => cgroups[uid] });
const pod = (...a: Parameters<typeof podObject>) => {
  const p = podObject(...a) as unknown as V1Pod;
  p.metadata!.uid ??= `uid-${a[0]}`;
  return p;
};
const ns = (...a: Parameters<typeof namespaceObject>) => namespaceObject(...a) as unknown as V1Namespace;
const svc = (...a: Parameters<typeof serviceObject>) => serviceObject(...a) as unknown as V1Service;
const slice = (...a: Parameters<typeof endpointSliceObject>) => endpointSliceObject(...a) as unknown as V1EndpointSlice;
const cr = (...a: Parameters<typeof weftObject>) => weftObject(...a) as unknown as CustomObject;
const node = (created: string, ...a: Parameters<typeof nodeObject>) => {
  const n = nodeObject(...a) as unknown as V1Node;
  n.metadata!.creationTimestamp = created as unknown as Date;
  return n;
};
const MESHED = { 'weft.io/mesh': 'enabled' };

const validate = (s: ClusterState) => normalizeConfig({ node: { name: NODE, address: '10.77.0.1' }, ...translate(s, ctx()).raw }, 'test', { baseDir: '/' });

t.test('trimPod keeps what translation reads and drops the rest', async (t) => {
  const full = pod('api-0', 'shop', { node: NODE, ip: '10.1.0.1', labels: { app: 'api' }, annotations: { 'weft.io/weight': '2' }, ports: { web: 8080 } });
  const trimmed = trimPod(full);
  t.same(trimmed.metadata?.annotations, { 'weft.io/weight': '2' }, 'only weft.io annotations');
  t.same(
    trimmed.metadata?.ownerReferences,
    (full.metadata?.ownerReferences ?? []).filter((o) => o.controller),
    'only the controller reference (it names the workload)',
  );
  t.same(trimmed.spec?.containers, [{ name: 'app', ports: [{ name: 'web', containerPort: 8080, protocol: 'TCP' }] }]);
  t.same(
    trimmed.status?.conditions?.map((c) => c.type),
    ['Ready'],
  );
  t.same(translate(state({ namespaces: [ns('shop', MESHED)], pods: [trimmed] }), ctx()).raw, translate(state({ namespaces: [ns('shop', MESHED)], pods: [full] }), ctx()).raw, 'same translation');
});

t.test('workloads: meshed namespaces, endpoints, weights, readiness, cgroups', async (t) => {
  const s = state({
    namespaces: [ns('shop', MESHED), ns('legacy'), ns('odd', { ...MESHED, 'weft.io/peer-authentication': 'sometimes' })],
    pods: [
      pod('api-0', 'shop', { node: NODE, ip: '10.1.0.1', serviceAccount: 'api', annotations: { 'weft.io/weight': '5' } }),
      pod('api-1', 'shop', { node: 'node-b', ip: '10.1.1.1', annotations: { 'weft.io/weight': 'heavy' }, ready: false }),
      pod('pending', 'shop', { node: NODE }),
      pod('done', 'shop', { node: NODE, ip: '10.1.0.9', phase: 'Succeeded' }),
      pod('db-0', 'legacy', { node: 'node-c', ip: '10.1.2.1' }),
      pod('lonely', 'legacy', { node: 'node-c', ip: '10.1.2.2' }),
    ],
    endpointSlices: [slice('db-1', 'legacy', 'db', [{ ip: '10.1.2.1', pod: 'db-0', node: 'node-c', ready: false }], [{ port: 5432 }])],
  });
  const t1 = translate(s, ctx({ 'uid-api-0': '/sys/fs/cgroup/kubepods.slice/x.slice' }));
  const names = t1.raw.workloads.map((w) => `${w.namespace}/${w.name}`);
  t.same(names, ['shop/api-0', 'shop/api-1', 'legacy/db-0'], 'no IP, finished, and unmeshed non-endpoints are left out');
  t.match(t1.raw.workloads[0], { weight: 5, serviceAccount: 'api', cgroup: '/sys/fs/cgroup/kubepods.slice/x.slice', uid: 'uid-api-0', ready: true });
  t.match(t1.raw.workloads[1], { weight: 1, ready: false, serviceAccount: 'default' });
  t.notOk('cgroup' in t1.raw.workloads[1]!, 'no cgroup for a remote pod');
  t.equal(t1.raw.workloads[2]!.ready, false, 'readiness from the slice');
  t.match(t1.warnings, [/weft\.io\/peer-authentication="sometimes".*strict/, /weft\.io\/weight="heavy"/]);
  t.equal(t1.raw.namespaces.find((n) => n.name === 'odd')!.labels['weft.io/peer-authentication'], 'strict', 'fail closed');
  t.doesNotThrow(() => validate(s), 'the loader accepts the translation');
});

t.test('remote endpoints from EndpointSlices: the pods of other nodes are not watched', async (t) => {
  const s = state({
    namespaces: [ns('shop', MESHED)],
    nodes: [node('2026-01-01T00:00:00Z', 'node-b', '10.77.0.2')],
    // Only this node's pod: what the agent's pod watch (spec.nodeName=node-a) holds.
    pods: [pod('api-0', 'shop', { node: NODE, ip: '10.1.0.1', serviceAccount: 'api', labels: { app: 'api', tier: 'web', version: 'v1' } })],
    services: [
      svc('api', 'shop', { clusterIP: '10.96.0.1', selector: { app: 'api' }, ports: [{ port: 80 }] }),
      svc('web', 'shop', { clusterIP: '10.96.0.2', selector: { tier: 'web' }, ports: [{ port: 80 }] }),
      svc('api-web', 'shop', { clusterIP: '10.96.0.3', selector: { app: 'api', tier: 'web' }, ports: [{ port: 80 }] }),
      svc('hn', 'shop', { clusterIP: '10.96.0.4', selector: { app: 'hn' }, ports: [{ port: 9100 }] }),
    ],
    endpointSlices: [
      slice(
        'api-1',
        'shop',
        'api',
        [
          { ip: '10.1.0.1', pod: 'api-0', node: NODE },
          { ip: '10.1.1.1', pod: 'api-7d9c5b4f8-x2kqz', node: 'node-b', ready: false },
        ],
        [{ port: 80 }],
      ),
      slice('web-1', 'shop', 'web', [{ ip: '10.1.1.1', pod: 'api-7d9c5b4f8-x2kqz', node: 'node-b' }], [{ port: 80 }]),
      slice('api-web-1', 'shop', 'api-web', [{ ip: '10.1.1.1', pod: 'api-7d9c5b4f8-x2kqz', node: 'node-b' }], [{ port: 80 }]),
      // A local pod the pod watch has not delivered yet: left for the pod watch.
      slice('api-2', 'shop', 'api', [{ ip: '10.1.0.7', pod: 'api-late', node: NODE }], [{ port: 80 }]),
      // A host-network pod of another node: its address is the node's.
      slice('hn-1', 'shop', 'hn', [{ ip: '10.77.0.2', pod: 'exporter-b', node: 'node-b' }], [{ port: 9100 }]),
    ],
  });
  const tr = translate(s, ctx());
  t.same(
    tr.raw.workloads.map((w) => w.name),
    ['api-0', 'api-7d9c5b4f8-x2kqz'],
  );
  const remote = tr.raw.workloads[1]!;
  t.same(
    remote,
    {
      name: 'api-7d9c5b4f8-x2kqz',
      namespace: 'shop',
      workload: 'api',
      node: 'node-b',
      ip: '10.1.1.1',
      peerIdentity: true,
      labels: { app: 'api', tier: 'web' },
      weight: 1,
      ready: false,
      uid: remote.uid,
    },
    'address, node, readiness (all slices), the union of the selectors, the workload from the name; no service account',
  );
  t.notOk(
    tr.raw.services.some((x) => x.name === 'hn'),
    'a Service backed by a host-network pod is not captured',
  );
  const cfg = validate(s);
  const w = cfg.workloads.find((x) => x.name === 'api-7d9c5b4f8-x2kqz')!;
  t.equal(w.serviceAccount, '', 'the loader leaves the service account empty: the tunnel learns it');
  t.equal(cfg.workloads.find((x) => x.name === 'api-0')!.serviceAccount, 'api');
});

t.test('workloadOfPodName: the workload from the names controllers give their pods', async (t) => {
  t.equal(workloadOfPodName('reviews-v2-5b4f8c7d9-x2kqz'), 'reviews-v2', 'Deployment');
  t.equal(workloadOfPodName('node-exporter-7xq2b'), 'node-exporter', 'DaemonSet or Job');
  t.equal(workloadOfPodName('backup-29012345-7xq2b'), 'backup', 'CronJob');
  t.equal(workloadOfPodName('db-0'), 'db', 'StatefulSet');
  t.equal(workloadOfPodName('standalone'), 'standalone', 'a bare pod');
  t.equal(workloadOfPodName('api-aaaaa'), 'api-aaaaa', 'vowels never appear in generated suffixes');
});

t.test('probe ports: readiness, liveness and startup probes of every container, named ports resolved', async (t) => {
  const p = pod('api-0', 'shop', { node: NODE, ip: '10.1.0.1', ports: { web: 8080 } });
  p.spec!.containers[0]!.readinessProbe = { httpGet: { path: '/ready', port: 'web' as never } };
  p.spec!.containers[0]!.livenessProbe = { tcpSocket: { port: 9000 as never } };
  p.spec!.containers.push({ name: 'side', ports: [{ name: 'admin', containerPort: 9901 }], startupProbe: { grpc: { port: 7070 } }, livenessProbe: { exec: { command: ['true'] } } });
  p.spec!.containers.push({ name: 'elsewhere', readinessProbe: { httpGet: { host: '10.9.9.9', port: 81 as never } }, livenessProbe: { httpGet: { port: 'nope' as never } } });
  t.same(probePorts(p), [7070, 8080, 9000], 'a named port resolved; exec, another host and an unknown name give none');
  t.same(probePorts(trimPod(p)), [7070, 8080, 9000], 'trimPod keeps the probes');
  const w = translate(state({ namespaces: [ns('shop', MESHED)], pods: [p] }), ctx()).raw.workloads[0]!;
  t.same(w.probePorts, [7070, 8080, 9000], 'the workload carries them');
  t.doesNotThrow(() => validate(state({ namespaces: [ns('shop', MESHED)], pods: [p] })), 'and the loader accepts them');
});

t.test('pod IP reuse: the live pod keeps the address', async (t) => {
  const old = pod('old', 'shop', { node: NODE, ip: '10.1.0.5' });
  old.metadata!.deletionTimestamp = new Date() as never;
  const s = state({ namespaces: [ns('shop', MESHED)], pods: [old, pod('new', 'shop', { node: NODE, ip: '10.1.0.5' })] });
  t.same(
    translate(s, ctx()).raw.workloads.map((w) => w.name),
    ['new'],
  );
  t.doesNotThrow(() => validate(s));
});

t.test('services: VIPs, ports, protocols, named targetPorts', async (t) => {
  const s = state({
    namespaces: [ns('shop', MESHED)],
    pods: [pod('api-0', 'shop', { node: NODE, ip: '10.1.0.1', labels: { app: 'api' }, ports: { web: 8080, metrics: 9090 } })],
    services: [
      svc('api', 'shop', {
        clusterIP: '10.96.0.20',
        selector: { app: 'api' },
        ports: [
          { name: 'http-web', port: 80, targetPort: 'web' },
          { name: 'metrics', port: 9090, targetPort: 'metrics', appProtocol: 'http' },
          { name: 'grpc', port: 9000, targetPort: 'missing' },
          { name: 'dns', port: 53, protocol: 'UDP' },
        ],
      }),
      svc('ext', 'shop', { clusterIP: '', type: 'ExternalName', selector: { app: 'x' }, ports: [{ port: 80 }] }),
      svc('manual', 'shop', { clusterIP: '10.96.0.21', ports: [{ port: 80 }] }),
    ],
  });
  const tr = translate(s, ctx());
  t.same(tr.raw.services, [
    {
      name: 'api',
      namespace: 'shop',
      vip: '10.96.0.20',
      ports: [
        { name: 'http-web', port: 80, targetPort: 8080 },
        { name: 'metrics', port: 9090, targetPort: 9090, protocol: 'http' },
      ],
      selector: { app: 'api' },
      trafficPolicy: {},
    },
  ]);
  t.match(tr.warnings, [/targetPort "missing"/]);
  const cfg = validate(s);
  t.same(
    cfg.services[0]!.ports.map((p) => p.protocol),
    ['http', 'http'],
    'the loader applies the name convention',
  );
});

t.test('HTTP/2 and gRPC ports: appProtocol and port names as DESIGN.md "Protocols" maps them', async (t) => {
  const s = state({
    namespaces: [ns('shop', MESHED)],
    pods: [pod('api-0', 'shop', { node: NODE, ip: '10.1.0.1', labels: { app: 'api' } })],
    services: [
      svc('api', 'shop', {
        clusterIP: '10.96.0.20',
        selector: { app: 'api' },
        ports: [
          { name: 'a', port: 1, targetPort: 1 as never, appProtocol: 'grpc' },
          { name: 'b', port: 2, targetPort: 2 as never, appProtocol: 'http2' },
          { name: 'c', port: 3, targetPort: 3 as never, appProtocol: 'kubernetes.io/h2c' },
          { name: 'd', port: 4, targetPort: 4 as never, appProtocol: 'HTTP' },
          { name: 'e', port: 5, targetPort: 5 as never, appProtocol: 'mysql' },
          { name: 'grpc', port: 6, targetPort: 6 as never },
          { name: 'grpc-api', port: 7, targetPort: 7 as never },
          { name: 'http2', port: 8, targetPort: 8 as never },
          { name: 'http2-web', port: 9, targetPort: 9 as never },
          { name: 'http-web', port: 10, targetPort: 10 as never },
          { name: 'grpcish', port: 11, targetPort: 11 as never },
        ],
      }),
    ],
  });
  const cfg = validate(s);
  t.same(
    cfg.services[0]!.ports.map((p) => `${p.port}:${p.protocol}`),
    ['1:grpc', '2:http2', '3:http2', '4:http', '5:tcp', '6:grpc', '7:grpc', '8:http2', '9:http2', '10:http', '11:tcp'],
  );
});

t.test('traffic policies: oldest wins, malformed references are refused', async (t) => {
  const older = cr('TrafficPolicy', 'a', 'shop', { targetRef: { name: 'api' }, timeout: '1s' });
  older.metadata!.creationTimestamp = new Date('2026-01-01T00:00:00Z');
  const newer = cr('TrafficPolicy', 'b', 'shop', { targetRef: { name: 'api' }, timeout: '2s' });
  newer.metadata!.creationTimestamp = new Date('2026-02-01T00:00:00Z');
  const s = state({
    namespaces: [ns('shop', MESHED)],
    services: [svc('api', 'shop', { clusterIP: '10.96.0.20', selector: { app: 'api' }, ports: [{ port: 80 }] })],
    trafficPolicies: [
      newer,
      older,
      cr('TrafficPolicy', 'c', 'shop', { timeout: '1s' }),
      cr('TrafficPolicy', 'd', 'shop', { targetRef: { kind: 'Deployment', name: 'api' } }),
      cr('TrafficPolicy', 'e', 'shop', 'nonsense'),
      cr('TrafficPolicy', 'f', 'shop', { targetRef: { name: 'not-yet' } }),
    ],
  });
  const tr = translate(s, ctx());
  t.same(tr.raw.services[0]!.trafficPolicy, { timeout: '1s' });
  t.same(tr.origins.trafficPolicies[0]?.name, 'a');
  t.same(
    tr.rejected.map((r) => `${r.origin.name}: ${r.problems[0]}`).sort(),
    [
      'b: spec.targetRef: Service shop/api already has TrafficPolicy a (the oldest one applies)',
      'c: spec.targetRef.name: required (the Service this policy applies to)',
      'd: spec.targetRef.kind: "Deployment" is not supported (only Service)',
      'e: spec: must be an object',
    ],
    'a policy for a Service that does not exist yet is not an error',
  );
});

t.test('blame maps loader problems to objects', async (t) => {
  const s = state({
    namespaces: [ns('shop', MESHED)],
    services: [svc('api', 'shop', { clusterIP: '10.96.0.20', selector: { app: 'api' }, ports: [{ port: 80 }] })],
    trafficPolicies: [cr('TrafficPolicy', 'tp', 'shop', { targetRef: { name: 'api' }, retries: { attempts: 99 } })],
    authorizationPolicies: [cr('AuthorizationPolicy', 'ap', 'shop', { action: 'ALLOW', rules: [{ to: [{ paths: ['items'] }] }] })],
  });
  const tr = translate(s, ctx());
  let problems: string[] = [];
  try {
    normalizeConfig({ node: { name: NODE, address: '10.77.0.1' }, ...tr.raw }, 'test');
  } catch (err) {
    problems = (err as ConfigError).problems;
  }
  t.ok(problems.length > 0);
  const { blamed, unattributed } = blame([...problems, 'ports.admin: nonsense'], tr.origins);
  t.same(unattributed, ['ports.admin: nonsense']);
  t.same(
    blamed.map((b) => [b.origin.kind, b.origin.name, b.problems]),
    [['TrafficPolicy', 'tp', ['spec.retries.attempts: must be an integer from 0 to 10 (got 99)']]],
    'schema problems come first; the loader stops before cross-field checks',
  );
  const again = translate(s, { ...ctx(), exclude: new Set(['TrafficPolicy shop/tp']) });
  let second: string[] = [];
  try {
    normalizeConfig({ node: { name: NODE, address: '10.77.0.1' }, ...again.raw }, 'test');
  } catch (err) {
    second = (err as ConfigError).problems;
  }
  t.match(blame(second, again.origins).blamed, [{ origin: { kind: 'AuthorizationPolicy', name: 'ap' }, problems: [/^spec\.rules\[0\]\.to\[0\]\.paths\[0\]: "items": a path must start with \//] }]);
});

t.test('nodes: the address is the first IPv4 InternalIP, else ExternalIP', async (t) => {
  const at = (...addresses: [string, string][]) => nodeAddressOf(node('2026-01-01T00:00:00Z', 'n', '', { addresses: addresses.map(([type, address]) => ({ type, address })) }));
  t.equal(at(['Hostname', 'n'], ['ExternalIP', '203.0.113.1'], ['InternalIP', '10.0.0.1']), '10.0.0.1', 'InternalIP first, whatever the order');
  t.equal(at(['InternalIP', 'fd00::1'], ['InternalIP', '10.0.0.2']), '10.0.0.2', 'IPv4 only');
  t.equal(at(['InternalIP', 'fd00::1'], ['ExternalIP', '203.0.113.1']), '203.0.113.1', 'ExternalIP when no IPv4 InternalIP');
  t.equal(at(['Hostname', 'n'], ['InternalDNS', 'n.internal'], ['ExternalIP', '2001:db8::1']), undefined, 'none');
  t.equal(at(), undefined, 'a node that has not reported its addresses yet');
});

t.test('trimNode keeps the name, addresses and creation time', async (t) => {
  const full = node('2026-01-01T00:00:00Z', 'node-b', '10.77.0.2', {
    addresses: [
      { type: 'InternalIP', address: '10.77.0.2' },
      { type: 'Hostname', address: 'node-b' },
      { type: 'ExternalIP', address: '203.0.113.2' },
    ],
  });
  full.metadata!.resourceVersion = '42';
  const trimmed = trimNode(full);
  t.same(trimmed, {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name: 'node-b', resourceVersion: '42', creationTimestamp: '2026-01-01T00:00:00Z' },
    status: {
      addresses: [
        { type: 'InternalIP', address: '10.77.0.2' },
        { type: 'ExternalIP', address: '203.0.113.2' },
      ],
    },
  });
  t.ok(JSON.stringify(trimmed).length * 5 < JSON.stringify(full).length, 'a fraction of the object');
  t.same(translate(state({ nodes: [trimmed] }), ctx()).raw.nodes, translate(state({ nodes: [full] }), ctx()).raw.nodes, 'same translation');

  // A status report (conditions, heartbeat) changes nothing translation reads.
  const notReady = trimNode({ ...node('2026-01-01T00:00:00Z', 'node-b', '10.77.0.2', { ready: false }), metadata: { ...full.metadata, resourceVersion: '43' } });
  t.equal(nodeFingerprint(notReady), nodeFingerprint(trimmed));
  t.not(nodeFingerprint(trimNode(node('2026-01-01T00:00:00Z', 'node-b', '10.77.0.9'))), nodeFingerprint(trimmed), 'an address change does');
});

t.test('nodes: every node with an address, sorted; one owner per address', async (t) => {
  const s = state({
    nodes: [
      node('2026-01-03T00:00:00Z', 'node-c', '10.77.0.3'),
      node('2026-01-01T00:00:00Z', NODE, '10.77.0.1'),
      node('2026-01-01T00:00:00Z', 'node-b', '10.77.0.2'),
      node('2026-01-01T00:00:00Z', 'node-new', '', { addresses: [] }),
      node('2026-01-01T00:00:00Z', 'node-v6', '', { addresses: [{ type: 'InternalIP', address: 'fd00::5' }] }),
      // A stale Node whose address a newer node took.
      node('2025-06-01T00:00:00Z', 'node-old', '10.77.0.3'),
      // Another node claiming this node's address.
      node('2026-02-01T00:00:00Z', 'node-x', '10.77.0.1'),
    ],
  });
  const tr = translate(s, { ...ctx(), nodeAddress: '10.77.0.1' });
  t.same(
    tr.raw.nodes,
    [
      { name: NODE, address: '10.77.0.1' },
      { name: 'node-b', address: '10.77.0.2' },
      { name: 'node-c', address: '10.77.0.3' },
    ],
    'this node too, as in a file',
  );
  t.same(
    tr.origins.nodes.map((o) => o.name),
    [NODE, 'node-b', 'node-c'],
  );
  t.match(tr.warnings, [
    /^Node node-new: no IPv4 InternalIP or ExternalIP/,
    /^Node node-v6: no IPv4 InternalIP or ExternalIP/,
    /^Node node-old: address 10\.77\.0\.3 is also Node node-c's, which keeps it \(the newer one\)/,
    /^Node node-x: address 10\.77\.0\.1 is this node's \(node-a\)/,
  ]);
  const cfg = validate(s);
  t.same(
    cfg.nodes,
    [
      { name: 'node-b', address: '10.77.0.2' },
      { name: 'node-c', address: '10.77.0.3' },
    ],
    'the loader drops this node',
  );

  // This node keeps its address even against a newer node, whatever NODE_IP says.
  const mine = translate(state({ nodes: [node('2026-01-01T00:00:00Z', NODE, '10.77.0.8'), node('2026-03-01T00:00:00Z', 'node-y', '10.77.0.8')] }), ctx());
  t.same(mine.raw.nodes, [{ name: NODE, address: '10.77.0.8' }]);
  t.match(mine.warnings, [/^Node node-y: .* which keeps it \(this node\)/]);
});

t.test('blame: a node whose address disagrees with node.address', async (t) => {
  const tr = translate(state({ nodes: [node('2026-01-01T00:00:00Z', NODE, '10.77.0.8'), node('2026-01-01T00:00:00Z', 'node-b', '10.77.0.2')] }), ctx());
  let problems: string[] = [];
  try {
    normalizeConfig({ node: { name: NODE, address: '10.77.0.1' }, ...tr.raw }, 'test');
  } catch (err) {
    problems = (err as ConfigError).problems;
  }
  const { blamed, unattributed } = blame(problems, tr.origins);
  t.same(unattributed, []);
  t.match(blamed, [{ origin: { kind: 'Node', name: NODE }, problems: [/^nodes\[0\]\.address: node-a is this node, whose address is 10\.77\.0\.1/] }]);
});

t.test('a RequestAuthentication naming a jwksFile is refused: a tenant cannot make the agent read node files', async (t) => {
  const s = state({
    namespaces: [ns('shop', MESHED)],
    requestAuthentications: [
      cr('RequestAuthentication', 'file', 'shop', {
        selector: { app: 'api' },
        jwtRules: [
          { issuer: 'https://i', jwksUri: 'https://i/jwks' },
          { issuer: 'https://j', jwksFile: '/dev/zero' },
        ],
      }),
      cr('RequestAuthentication', 'uri', 'shop', { selector: { app: 'api' }, jwtRules: [{ issuer: 'https://i', jwksUri: 'https://i/jwks' }] }),
    ],
  });
  const tr = translate(s, ctx());
  t.same(
    tr.rejected.map((r) => `${r.origin.name}: ${r.problems.join('; ')}`),
    ['file: spec.jwtRules[1].jwksFile: not allowed in Kubernetes (it would read a file on the node); use jwksUri'],
  );
  t.same(
    tr.raw.requestAuthentications.map((r) => r.name),
    ['uri'],
    'the other RequestAuthentication applies',
  );
});
