/**
 * KubernetesDiscovery against a real HTTP API server speaking list+watch (test/lib/fake-apiserver.ts),
 * with @kubernetes/client-node's real informers. Loopback only.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import type { MeshConfig, Workload } from '../../src/config/types.js';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, endpointSliceObject, namespaceObject, nodeObject, podObject, serviceObject, weftObject } from '../lib/fake-apiserver.js';

const NODE = 'node-a';
const NODE_IP = '10.77.0.1';
const MESHED = { 'weft.io/mesh': 'enabled' };

interface Env {
  server: FakeApiServer;
  discovery: KubernetesDiscovery;
  cgroupRoot: string;
  /** Every snapshot emitted after start, in order. */
  updates: MeshConfig[];
  rejected: ConfigError[];
  /** The next snapshot (after now) that satisfies `pred`. */
  until(pred: (c: MeshConfig) => boolean, what: string, timeoutMs?: number): Promise<MeshConfig>;
  start(): Promise<MeshConfig>;
}

async function setup(t: Test, opts: { startTimeoutMs?: number; listTimeoutMs?: number } = {}): Promise<Env> {
  const server = await FakeApiServer.start();
  const cgroupRoot = mkdtempSync(path.join(tmpdir(), 'weft-k8s-cg-'));
  const discovery = new KubernetesDiscovery({
    nodeName: NODE,
    nodeAddress: NODE_IP,
    kubeConfig: server.kubeConfig(),
    static: { mesh: { trustDomain: 'example.org' }, stateDir: '/tmp/weft-state' },
    log: silentLogger,
    cgroupRoot,
    debounceMs: 20,
    backoffMs: 20,
    maxBackoffMs: 200,
    cgroupRetryMs: 20,
    startTimeoutMs: opts.startTimeoutMs ?? 10_000,
    listTimeoutMs: opts.listTimeoutMs,
  });
  const updates: MeshConfig[] = [];
  const rejected: ConfigError[] = [];
  const waiters = new Set<{ pred: (c: MeshConfig) => boolean; resolve: (c: MeshConfig) => void }>();
  discovery.on('update', (c: MeshConfig) => {
    updates.push(c);
    for (const w of [...waiters]) {
      if (w.pred(c)) {
        waiters.delete(w);
        w.resolve(c);
      }
    }
  });
  discovery.on('rejected', (e: ConfigError) => rejected.push(e));
  t.teardown(async () => {
    await discovery.stop();
    await server.close();
    rmSync(cgroupRoot, { recursive: true, force: true });
  });
  return {
    server,
    discovery,
    cgroupRoot,
    updates,
    rejected,
    start: () => discovery.start(),
    until(pred, what, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const w = { pred, resolve: (c: MeshConfig) => (clearTimeout(timer), resolve(c)) };
        const timer = setTimeout(() => {
          waiters.delete(w);
          const last = updates.at(-1) ?? discovery.config;
          reject(new Error(`timed out waiting for: ${what}; last snapshot workloads=${JSON.stringify(last?.workloads.map((x) => `${x.namespace}/${x.name}:${x.ready}`))}`));
        }, timeoutMs);
        waiters.add(w);
      });
    },
  };
}

const wl = (c: MeshConfig, ns: string, name: string): Workload | undefined => c.workloads.find((w) => w.namespace === ns && w.name === name);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function podLists(server: FakeApiServer): number {
  return server.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch).length;
}

t.test('a namespace labelled live meshes its local pods, with their cgroups', async (t) => {
  const env = await setup(t);
  const { server } = env;
  const uid = '11111111-2222-3333-4444-555555555555';
  const cgroup = path.join(env.cgroupRoot, `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${uid.replace(/-/g, '_')}.slice`);
  mkdirSync(cgroup, { recursive: true });
  server.apply(namespaceObject('shop'));
  server.apply(podObject('api-0', 'shop', { node: NODE, ip: '10.1.0.10', uid, serviceAccount: 'api', labels: { app: 'api' }, annotations: { 'weft.io/weight': '3' } }));
  server.apply(podObject('web-0', 'shop', { node: 'node-b', ip: '10.1.1.10', labels: { app: 'web' } }));

  const first = await env.start();
  t.equal(first.node.name, NODE);
  t.equal(first.node.address, NODE_IP);
  t.equal(first.mesh.trustDomain, 'example.org', 'static settings apply');
  t.equal(first.stateDir, '/tmp/weft-state');
  t.ok(
    first.namespaces.find((n) => n.name === 'shop'),
    'the namespace is known',
  );
  t.equal(wl(first, 'shop', 'api-0'), undefined, 'not meshed yet: no workload');

  server.apply(namespaceObject('shop', MESHED));
  const meshed = await env.until((c) => !!wl(c, 'shop', 'api-0'), 'api-0 meshed');
  const api0 = wl(meshed, 'shop', 'api-0')!;
  t.match(api0, { node: NODE, ip: '10.1.0.10', serviceAccount: 'api', weight: 3, ready: true, uid, cgroup, labels: { app: 'api' } });
  t.same(meshed.namespaces.find((n) => n.name === 'shop')?.labels, MESHED);
  t.equal(wl(meshed, 'shop', 'web-0'), undefined, 'a pod of another node is not watched: it is known through the EndpointSlices of its Services');
  t.same(server.traffic().Pod?.listed, 1, "the pod list sent this node's pod only");
  t.ok(
    server.requests.filter((r) => r.path === '/api/v1/pods').every((r) => r.query.fieldSelector === `spec.nodeName=${NODE}`),
    "every pod list and watch asks for this node's pods",
  );
  server.apply(serviceObject('web', 'shop', { clusterIP: '10.96.0.50', selector: { app: 'web' }, ports: [{ name: 'http', port: 80 }] }));
  server.apply(endpointSliceObject('web-1', 'shop', 'web', [{ ip: '10.1.1.10', pod: 'web-0', node: 'node-b' }], [{ name: 'http', port: 80 }]));
  const viaSlice = await env.until((c) => !!wl(c, 'shop', 'web-0'), 'web-0 through its slice');
  t.match(
    wl(viaSlice, 'shop', 'web-0'),
    { node: 'node-b', ip: '10.1.1.10', serviceAccount: '', labels: { app: 'web' }, ready: true, weight: 1 },
    'a remote endpoint: labels from the selector, service account learnt at the tunnel',
  );
  t.equal(wl(viaSlice, 'shop', 'web-0')?.cgroup, undefined, 'remote pods have no cgroup');

  // A pod scheduled before its cgroup exists gets it when the kubelet creates it.
  const uid2 = '66666666-7777-8888-9999-000000000000';
  server.apply(podObject('api-1', 'shop', { node: NODE, ip: '10.1.0.11', uid: uid2, qosClass: 'Guaranteed', labels: { app: 'api' } }));
  const noCg = await env.until((c) => !!wl(c, 'shop', 'api-1'), 'api-1 appears');
  t.equal(wl(noCg, 'shop', 'api-1')?.cgroup, undefined, 'no cgroup yet');
  const cg2 = path.join(env.cgroupRoot, `kubepods.slice/kubepods-pod${uid2.replace(/-/g, '_')}.slice`);
  mkdirSync(cg2, { recursive: true });
  const withCg = await env.until((c) => wl(c, 'shop', 'api-1')?.cgroup === cg2, 'api-1 cgroup resolved');
  t.ok(withCg);

  server.apply(namespaceObject('shop'));
  await env.until((c) => !wl(c, 'shop', 'api-0') && !wl(c, 'shop', 'api-1'), 'un-meshed');
  // Deleting a namespace deletes its objects first (the namespace controller).
  server.delete('EndpointSlice', 'shop', 'web-1');
  server.delete('Service', 'shop', 'web');
  server.delete('Namespace', undefined, 'shop');
  await env.until((c) => !c.namespaces.some((n) => n.name === 'shop'), 'namespace gone');
});

t.test('Services and EndpointSlices: ports, readiness, new endpoints', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(namespaceObject('shop', MESHED));
  server.apply(podObject('api-0', 'shop', { node: NODE, ip: '10.1.0.10', serviceAccount: 'api', labels: { app: 'api' }, ports: { web: 8080 } }));
  server.apply(podObject('api-1', 'shop', { node: 'node-b', ip: '10.1.1.10', serviceAccount: 'api', labels: { app: 'api' }, ports: { web: 8080 } }));
  server.apply(
    serviceObject('api', 'shop', {
      clusterIP: '10.96.0.20',
      selector: { app: 'api' },
      ports: [
        { name: 'http', port: 80, targetPort: 'web' },
        { name: 'grpc-x', port: 9000, targetPort: 9090, appProtocol: 'tcp' },
        { name: 'dns', port: 53, protocol: 'UDP' },
      ],
    }),
  );
  // Not captured: no selector (like default/kubernetes), headless.
  server.apply(serviceObject('kubernetes', 'default', { clusterIP: '10.96.0.1', ports: [{ name: 'https', port: 443, targetPort: 6443 }] }));
  server.apply(serviceObject('api-headless', 'shop', { clusterIP: 'None', selector: { app: 'api' }, ports: [{ port: 80 }] }));
  const endpoints = [
    { ip: '10.1.0.10', pod: 'api-0', node: NODE },
    { ip: '10.1.1.10', pod: 'api-1', node: 'node-b' },
  ];
  server.apply(
    endpointSliceObject('api-abc', 'shop', 'api', endpoints, [
      { name: 'http', port: 8080 },
      { name: 'grpc-x', port: 9090 },
    ]),
  );

  const first = await env.start();
  t.same(
    first.services.map((s) => `${s.namespace}/${s.name}`),
    ['shop/api'],
    'selector-less and headless services are left alone',
  );
  const api = first.services[0]!;
  t.equal(api.vip, '10.96.0.20');
  t.same(api.selector, { app: 'api' });
  t.same(
    api.ports,
    [
      { name: 'http', port: 80, targetPort: 8080, protocol: 'http' },
      { name: 'grpc-x', port: 9000, targetPort: 9090, protocol: 'tcp' },
    ],
    'named targetPort resolved, appProtocol wins over the name, UDP left out',
  );
  t.equal(api.trafficPolicy.loadBalancer.type, 'round-robin', 'default traffic policy');
  t.match(wl(first, 'shop', 'api-1'), { ready: true, serviceAccount: '', node: 'node-b', labels: { app: 'api' } });
  t.match(wl(first, 'shop', 'api-0'), { serviceAccount: 'api' }, 'a local pod keeps its service account');

  // An endpoint goes not ready.
  server.apply(endpointSliceObject('api-abc', 'shop', 'api', [endpoints[0]!, { ...endpoints[1]!, ready: false }], [{ name: 'http', port: 8080 }]));
  const notReady = await env.until((c) => wl(c, 'shop', 'api-1')?.ready === false, 'api-1 not ready');
  t.equal(wl(notReady, 'shop', 'api-0')?.ready, true);

  // A terminating endpoint is not ready either, even if the slice still calls it serving.
  server.apply(endpointSliceObject('api-abc', 'shop', 'api', [{ ...endpoints[0]!, terminating: true, ready: true }, endpoints[1]!], [{ name: 'http', port: 8080 }]));
  await env.until((c) => wl(c, 'shop', 'api-0')?.ready === false && wl(c, 'shop', 'api-1')?.ready === true, 'api-0 terminating');

  // A new endpoint: a backend in a namespace that is not meshed becomes a workload through the slice.
  server.apply(namespaceObject('legacy'));
  server.apply(podObject('db-0', 'legacy', { node: 'node-c', ip: '10.1.2.10', serviceAccount: 'db', labels: { app: 'db' } }));
  server.apply(serviceObject('db', 'legacy', { clusterIP: '10.96.0.30', selector: { app: 'db' }, ports: [{ name: 'tcp-pg', port: 5432 }] }));
  const before = await env.until((c) => c.services.some((s) => s.name === 'db'), 'db service');
  t.equal(wl(before, 'legacy', 'db-0'), undefined, 'not meshed and not an endpoint yet');
  server.apply(endpointSliceObject('db-xyz', 'legacy', 'db', [{ ip: '10.1.2.10', pod: 'db-0', node: 'node-c' }], [{ name: 'tcp-pg', port: 5432 }]));
  const added = await env.until((c) => !!wl(c, 'legacy', 'db-0'), 'db-0 endpoint');
  t.match(wl(added, 'legacy', 'db-0'), { ready: true, serviceAccount: '', ip: '10.1.2.10', node: 'node-c' });
  t.equal(added.namespaces.find((n) => n.name === 'legacy')?.labels['weft.io/mesh'], undefined);

  // Host-network backends cannot be represented: their Service is not captured.
  server.apply(podObject('agent-x', 'legacy', { node: NODE, ip: NODE_IP, hostNetwork: true, labels: { app: 'hn' } }));
  server.apply(serviceObject('hn', 'legacy', { clusterIP: '10.96.0.40', selector: { app: 'hn' }, ports: [{ port: 9100 }] }));
  server.apply(endpointSliceObject('hn-1', 'legacy', 'hn', [{ ip: NODE_IP, pod: 'agent-x', node: NODE }], [{ port: 9100 }]));
  await sleep(150);
  const last = env.discovery.config!;
  t.notOk(
    last.services.some((s) => s.name === 'hn'),
    'host-network-backed service left alone',
  );
  t.notOk(wl(last, 'legacy', 'agent-x'), 'host-network pod is no workload');
});

t.test('Nodes fill nodes: added, readdressed, deleted; the cache holds them trimmed', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(nodeObject(NODE, NODE_IP));
  server.apply(nodeObject('node-c', '10.77.0.3'));
  server.apply(
    nodeObject('node-b', '10.77.0.2', {
      addresses: [
        { type: 'Hostname', address: 'node-b' },
        { type: 'ExternalIP', address: '203.0.113.2' },
        { type: 'InternalIP', address: '10.77.0.2' },
      ],
    }),
  );
  const nodes = (c: MeshConfig) => (c.nodes ?? []).map((n) => `${n.name}=${n.address}`);

  const first = await env.start();
  t.same(nodes(first), ['node-b=10.77.0.2', 'node-c=10.77.0.3'], 'the other nodes by InternalIP, sorted (this node is node.address)');
  t.equal(env.rejected.length, 0, 'this node agrees with NODE_IP');
  t.equal(env.discovery.cacheStatus().Node?.objects, 3);
  t.ok(
    server.requests.some((r) => r.path === '/api/v1/nodes' && r.watch),
    'nodes are watched cluster-wide',
  );
  const cached = (env.discovery as unknown as { informers: { nodes: { get(n: string): unknown } } }).informers.nodes.get('node-b');
  // As JSON: the list's items carry no apiVersion/kind, and the client parses dates.
  t.same(
    JSON.parse(JSON.stringify(cached)),
    {
      metadata: {
        name: 'node-b',
        resourceVersion: server.get('Node', undefined, 'node-b')!.metadata.resourceVersion,
        creationTimestamp: server.get('Node', undefined, 'node-b')!.metadata.creationTimestamp,
      },
      status: {
        addresses: [
          { type: 'ExternalIP', address: '203.0.113.2' },
          { type: 'InternalIP', address: '10.77.0.2' },
        ],
      },
    },
    'the cache keeps the name, addresses and creation time only',
  );

  // A new node; then a node's address changes.
  server.apply(nodeObject('node-d', '10.77.0.4'));
  await env.until((c) => nodes(c).includes('node-d=10.77.0.4'), 'node-d added');
  server.apply(nodeObject('node-c', '10.77.0.13'));
  const moved = await env.until((c) => nodes(c).includes('node-c=10.77.0.13'), 'node-c readdressed');
  t.same(nodes(moved), ['node-b=10.77.0.2', 'node-c=10.77.0.13', 'node-d=10.77.0.4']);

  // A status report that changes no address does not even rebuild (kubelets report every few
  // minutes; with many nodes, every agent would rebuild several times a second).
  let rebuilds = 0;
  const flush = env.discovery.flush.bind(env.discovery);
  env.discovery.flush = () => (rebuilds++, flush());
  server.apply(
    nodeObject('node-b', '10.77.0.2', {
      ready: false,
      addresses: [
        { type: 'ExternalIP', address: '203.0.113.2' },
        { type: 'InternalIP', address: '10.77.0.2' },
      ],
    }),
  );
  // The watch event first (waited for, not slept for), then the debounce (20 ms) it would
  // have scheduled a rebuild within.
  const cachedRv = () => env.discovery.cacheStatus().Node?.resourceVersion;
  for (let i = 0; i < 250 && cachedRv() !== String(server.resourceVersion); i++) await sleep(20);
  t.equal(cachedRv(), String(server.resourceVersion), 'the update reached the cache');
  await sleep(150);
  t.equal(rebuilds, 0, 'no rebuild for a NotReady status');

  // A node whose addresses go: left out. A deleted node: gone.
  server.apply(nodeObject('node-d', '', { addresses: [{ type: 'InternalIP', address: 'fd00::4' }] }));
  await env.until((c) => !nodes(c).some((n) => n.startsWith('node-d=')), 'node-d without an IPv4 address');
  server.delete('Node', undefined, 'node-c');
  const gone = await env.until((c) => !nodes(c).some((n) => n.startsWith('node-c=')), 'node-c deleted');
  t.same(nodes(gone), ['node-b=10.77.0.2']);
  t.equal(env.discovery.cacheStatus().Node?.objects, 3);

  // This node's Node disagreeing with NODE_IP (peers would dial an address its agent does not
  // listen on) is reported against the Node; the rest applies.
  server.apply(nodeObject(NODE, '10.77.0.99'));
  server.apply(nodeObject('node-e', '10.77.0.5'));
  await env.until((c) => nodes(c).includes('node-e=10.77.0.5'), 'node-e despite the bad local node');
  t.match(env.rejected.at(-1), { message: /Node node-a: .*node-a is this node, whose address is 10\.77\.0\.1/ });
});

t.test('a watch cut mid-stream resumes from its resourceVersion without losing events', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(namespaceObject('shop', MESHED));
  server.apply(podObject('a', 'shop', { node: NODE, ip: '10.1.1.1' }));
  await env.start();
  const lists = podLists(server);

  for (const graceful of [false, true]) {
    // Cut every stream and change things before the client can reconnect.
    t.equal(server.dropWatches({ graceful }), 12, 'twelve watches were open (eight kinds, FaultInjection and three Gateway API routes)');
    const n = graceful ? 'c' : 'b';
    server.apply(podObject(n, 'shop', { node: NODE, ip: graceful ? '10.1.1.3' : '10.1.1.2' }));
    server.delete('Pod', 'shop', graceful ? 'b' : 'a');
    const c = await env.until((c) => !!wl(c, 'shop', n), `pod ${n} after the cut (graceful=${graceful})`);
    t.notOk(wl(c, 'shop', graceful ? 'b' : 'a'), 'the deletion made while disconnected arrived');
  }
  t.equal(podLists(server), lists, 'resumed the watch: no relist');
  const resumed = server.requests.filter((r) => r.path === '/api/v1/pods' && r.watch);
  t.ok(resumed.length >= 3, 'the pod watch reconnected');
  t.ok(
    resumed.slice(1).every((r) => Number(r.query.resourceVersion) > 1),
    'with a resourceVersion',
  );
});

t.test('410 Gone after compaction: relist and converge', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(namespaceObject('shop', MESHED));
  server.apply(podObject('a', 'shop', { node: NODE, ip: '10.1.1.1' }));
  server.apply(podObject('b', 'shop', { node: NODE, ip: '10.1.1.2' }));
  await env.start();
  const lists = podLists(server);

  server.dropWatches();
  server.delete('Pod', 'shop', 'a');
  server.apply(podObject('c', 'shop', { node: NODE, ip: '10.1.1.3' }));
  server.compact();
  server.apply(podObject('b', 'shop', { node: NODE, ip: '10.1.1.2', ready: false }));

  const c = await env.until((c) => !wl(c, 'shop', 'a') && !!wl(c, 'shop', 'c') && wl(c, 'shop', 'b')?.ready === false, 'converged after relist');
  t.ok(c);
  t.ok(podLists(server) > lists, 'relisted pods');
  // Watching again after the relist works: a later change arrives.
  server.apply(podObject('d', 'shop', { node: NODE, ip: '10.1.1.4' }));
  await env.until((c) => !!wl(c, 'shop', 'd'), 'pod d after relist');
});

t.test('bookmarks advance the resourceVersion, so a reconnect after compaction does not relist', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(namespaceObject('shop', MESHED));
  server.apply(podObject('a', 'shop', { node: NODE, ip: '10.1.1.1' }));
  await env.start();
  // Other kinds move the global resourceVersion; the pod cache does not see those events.
  for (let i = 0; i < 5; i++) server.apply(serviceObject(`s${i}`, 'shop', { clusterIP: `10.96.1.${i + 1}`, selector: { app: `s${i}` }, ports: [{ port: 80 }] }));
  await env.until((c) => c.services.length === 5, 'services');
  const podRv = () => env.discovery.cacheStatus().Pod!.resourceVersion;
  t.ok(Number(podRv()) < server.resourceVersion, 'pod cache behind the head');

  t.ok(server.bookmark() >= 8, 'bookmarks sent');
  const deadline = Date.now() + 3000;
  while (podRv() !== String(server.resourceVersion) && Date.now() < deadline) await sleep(10);
  t.equal(podRv(), String(server.resourceVersion), 'the bookmark moved the pod cache to the head');

  const lists = podLists(server);
  server.compact();
  server.dropWatches();
  server.apply(podObject('b', 'shop', { node: NODE, ip: '10.1.1.2' }));
  await env.until((c) => !!wl(c, 'shop', 'b'), 'pod b');
  t.equal(podLists(server), lists, 'no relist: the watch resumed from the bookmark');
});

t.test('a bad custom resource is rejected with a clear error; the rest applies', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(namespaceObject('shop', MESHED));
  server.apply(podObject('api-0', 'shop', { node: NODE, ip: '10.1.1.1', labels: { app: 'api' } }));
  for (const [name, ip] of [
    ['api', '10.96.0.20'],
    ['web', '10.96.0.21'],
    ['api-degraded', '10.96.0.22'],
  ] as const) {
    server.apply(serviceObject(name, 'shop', { clusterIP: ip, selector: { app: name }, ports: [{ name: 'http', port: 80 }] }));
  }
  server.apply(
    weftObject('TrafficPolicy', 'api', 'shop', {
      targetRef: { kind: 'Service', name: 'api' },
      loadBalancer: { type: 'least-request' },
      retries: { attempts: 50, perTryTimeout: '1s' },
    }),
  );
  server.apply(
    weftObject('TrafficPolicy', 'web', 'shop', {
      targetRef: { kind: 'Service', name: 'web' },
      loadBalancer: { type: 'ring-hash', hashOn: { header: 'x-user' } },
      timeout: '2s',
      fallback: { service: 'api-degraded' },
    }),
  );
  server.apply(
    weftObject('AuthorizationPolicy', 'api-readers', 'shop', {
      selector: { app: 'api' },
      action: 'ALLOW',
      rules: [{ from: [{ principals: ['cluster.local/ns/shop/sa/client'] }], to: [{ methods: ['GET'], paths: ['/items/*'] }] }],
    }),
  );
  server.apply(
    weftObject('RequestAuthentication', 'api-jwt', 'shop', {
      selector: { app: 'api' },
      jwtRules: [{ issuer: 'https://issuer.example', audiences: ['api'], jwksUri: 'https://issuer.example/jwks' }],
    }),
  );

  const cfg = await env.start();
  t.equal(env.rejected.length, 1, 'one rejection');
  const err = env.rejected[0]!;
  t.type(err, ConfigError);
  t.match(err.message, /TrafficPolicy shop\/api/);
  t.match(err.problems, [/^spec\.retries\.attempts: must be an integer from 0 to 10 \(got 50\)/]);
  const svc = (name: string) => cfg.services.find((s) => s.name === name)!;
  t.equal(svc('api').trafficPolicy.loadBalancer.type, 'round-robin', 'the bad policy is not applied (defaults)');
  t.equal(svc('api').trafficPolicy.retries, undefined);
  t.match(svc('web').trafficPolicy, { loadBalancer: { type: 'ring-hash', hashOn: { header: 'x-user' } }, timeout: 2000, fallback: { service: 'api-degraded' } });
  t.match(cfg.policies, [{ name: 'api-readers', namespace: 'shop', action: 'ALLOW', selector: { app: 'api' } }]);
  t.match(cfg.requestAuthentications, [{ name: 'api-jwt', jwtRules: [{ issuer: 'https://issuer.example', jwksUri: 'https://issuer.example/jwks' }] }]);

  // Fixing the object applies it; nothing more is rejected.
  server.apply(weftObject('TrafficPolicy', 'api', 'shop', { targetRef: { kind: 'Service', name: 'api' }, retries: { attempts: 3 } }));
  const fixed = await env.until((c) => c.services.find((s) => s.name === 'api')?.trafficPolicy.retries?.attempts === 3, 'fixed policy');
  t.ok(fixed);

  // A second policy for the same Service: the oldest wins, the other is rejected.
  // Rejections come with the snapshot the watch event leads to: wait for them, not for a time.
  const rejection = async (re: RegExp): Promise<ConfigError | undefined> => {
    for (let i = 0; i < 250 && !env.rejected.some((e) => re.test(e.message)); i++) await sleep(20);
    return env.rejected.find((e) => re.test(e.message));
  };
  server.apply(weftObject('TrafficPolicy', 'api-2', 'shop', { targetRef: { name: 'api' }, timeout: '1s' }));
  t.ok(await rejection(/TrafficPolicy shop\/api-2: .*already has TrafficPolicy api/), 'the second policy for api is rejected');
  // A policy that breaks a cross-object rule (fallback to a missing service) is dropped by name.
  server.apply(weftObject('TrafficPolicy', 'api-degraded', 'shop', { targetRef: { name: 'api-degraded' }, fallback: { service: 'nope' } }));
  server.apply(weftObject('AuthorizationPolicy', 'bad-authz', 'shop', { action: 'MAYBE' }));
  t.ok(await rejection(/TrafficPolicy shop\/api-degraded: spec\.fallback\.service: no service nope/), 'fallback problem named');
  t.ok(await rejection(/AuthorizationPolicy shop\/bad-authz: spec\.action: must be one of ALLOW, DENY/), 'authz problem named');
  for (let i = 0; i < 250 && !env.discovery.config!.policies.some((p) => p.name === 'bad-authz'); i++) await sleep(20);
  const now = env.discovery.config!;
  t.same(
    now.policies.map((p) => p.name),
    ['api-readers', 'bad-authz'],
  );
  t.match(
    now.policies.find((p) => p.name === 'bad-authz'),
    { action: 'ALLOW', rules: [], selector: {} },
    'the invalid policy fails closed: allow nothing (its selector was empty: the whole namespace)',
  );
  t.match(env.rejected.find((e) => /bad-authz/.test(e.message))?.problems.at(-1), /allows nothing .*fail closed/);
  t.equal(now.services.find((s) => s.name === 'api')?.trafficPolicy.retries?.attempts, 3, 'the rest still applies');
  const count = env.rejected.length;
  server.apply(podObject('api-1', 'shop', { node: NODE, ip: '10.1.1.2', labels: { app: 'api' } }));
  await env.until((c) => !!wl(c, 'shop', 'api-1'), 'unrelated change');
  t.equal(env.rejected.length, count, 'a standing rejection is reported once, not on every snapshot');
});

t.test('API errors are retried with backoff', async (t) => {
  const env = await setup(t);
  const { server } = env;
  server.apply(namespaceObject('shop', MESHED));
  server.apply(podObject('a', 'shop', { node: NODE, ip: '10.1.1.1' }));
  server.failNext(10, 503);
  const cfg = await env.start();
  t.ok(wl(cfg, 'shop', 'a'), 'started after the failures');
  server.failNext(5, 500);
  server.dropWatches();
  server.apply(podObject('b', 'shop', { node: NODE, ip: '10.1.1.2' }));
  await env.until((c) => !!wl(c, 'shop', 'b'), 'recovered');
});

t.test('a list that hangs is abandoned after its deadline and retried', async (t) => {
  const env = await setup(t, { listTimeoutMs: 200 });
  env.server.apply(namespaceObject('shop', MESHED));
  env.server.apply(podObject('a', 'shop', { node: NODE, ip: '10.1.1.1' }));
  env.server.failNext(2, 0);
  const cfg = await env.start();
  t.ok(wl(cfg, 'shop', 'a'));
});

t.test('start() fails with a clear error when resources cannot be listed', async (t) => {
  const env = await setup(t, { startTimeoutMs: 400 });
  env.server.failNext(100_000, 404);
  await t.rejects(env.start(), { code: 'WEFT_ERR_CONFIG', message: /caches not synced after 400ms: .*TrafficPolicy/ });
});
