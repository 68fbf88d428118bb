/**
 * The API load of one agent (issue 18, item 4), in the local API server: a synthetic cluster
 * of 5,000 pods on 50 nodes, 500 Services with their EndpointSlices, 20 namespaces. What the
 * server sends the agent (objects and bytes, from FakeApiServer.traffic) in the initial list
 * and over a churn of pod changes, with the agent's pod watch as it is (this node's pods) and
 * as it was (every pod of the cluster, measured with a plain list+watch of /api/v1/pods).
 * The assertions are structural: the agent received exactly the pods of its node. The numbers
 * are printed for docs/benchmarks/api-load.md.
 */
import http from 'node:http';
import t from 'tap';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, endpointSliceObject, namespaceObject, nodeObject, podObject, serviceObject, type EndpointLite } from '../lib/fake-apiserver.js';

const NODES = 50;
const NAMESPACES = 20;
const SERVICES = 500;
const PODS_PER_SERVICE = 10;
const CHURN = 500;
const node = (i: number) => `node-${i}`;
const NODE = node(0);
const MESHED = { 'weft.io/mesh': 'enabled' };

/** Pod j of service s: spread over the nodes round-robin (10 pods of one service on 10 nodes). */
function place(s: number, j: number) {
  const n = (s * PODS_PER_SERVICE + j) % NODES;
  const ip = `10.${100 + Math.floor((s * PODS_PER_SERVICE + j) / 65536)}.${Math.floor(((s * PODS_PER_SERVICE + j) % 65536) / 256)}.${(s * PODS_PER_SERVICE + j) % 256}`;
  return { node: node(n), ip, name: `svc-${s}-7d9c5b4f8-${'bcdfg'[j % 5]}x${j}zq`.slice(0, 40) };
}

function load(server: FakeApiServer): void {
  for (let i = 0; i < NODES; i++) server.apply(nodeObject(node(i), `10.77.${Math.floor(i / 250)}.${(i % 250) + 1}`));
  for (let n = 0; n < NAMESPACES; n++) server.apply(namespaceObject(`ns-${n}`, MESHED));
  for (let s = 0; s < SERVICES; s++) {
    const ns = `ns-${s % NAMESPACES}`;
    const eps: EndpointLite[] = [];
    for (let j = 0; j < PODS_PER_SERVICE; j++) {
      const p = place(s, j);
      server.apply(podObject(p.name, ns, { node: p.node, ip: p.ip, serviceAccount: `sa-${s}`, labels: { app: `svc-${s}` }, ports: { http: 8080 } }));
      eps.push({ ip: p.ip, pod: p.name, node: p.node });
    }
    server.apply(serviceObject(`svc-${s}`, ns, { clusterIP: `10.96.${Math.floor(s / 250)}.${(s % 250) + 1}`, selector: { app: `svc-${s}` }, ports: [{ name: 'http', port: 80, targetPort: 'http' }] }));
    server.apply(endpointSliceObject(`svc-${s}-abcde`, ns, `svc-${s}`, eps, [{ name: 'http', port: 8080 }]));
  }
}

/**
 * Churn: each change flips one pod's readiness (a status update, the most common pod event),
 * and the EndpointSlice controller updates that pod's slice, as it would.
 */
function churn(server: FakeApiServer, n: number): void {
  for (let k = 0; k < n; k++) {
    const s = (k * 37) % SERVICES;
    const j = k % PODS_PER_SERVICE;
    const ns = `ns-${s % NAMESPACES}`;
    const p = place(s, j);
    const ready = k % 2 === 1;
    server.apply(podObject(p.name, ns, { node: p.node, ip: p.ip, serviceAccount: `sa-${s}`, labels: { app: `svc-${s}` }, ports: { http: 8080 }, ready }));
    const eps: EndpointLite[] = [];
    for (let i = 0; i < PODS_PER_SERVICE; i++) {
      const q = place(s, i);
      eps.push({ ip: q.ip, pod: q.name, node: q.node, ready: i === j ? ready : true });
    }
    server.apply(endpointSliceObject(`svc-${s}-abcde`, ns, `svc-${s}`, eps, [{ name: 'http', port: 8080 }]));
  }
}

/** How many of the churned pods run on `nodeName`. */
function churnedOn(nodeName: string, n: number): number {
  let c = 0;
  for (let k = 0; k < n; k++) if (place((k * 37) % SERVICES, k % PODS_PER_SERVICE).node === nodeName) c++;
  return c;
}

async function until(pred: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const podsOfNode = (name: string) => {
  let c = 0;
  for (let s = 0; s < SERVICES; s++) for (let j = 0; j < PODS_PER_SERVICE; j++) if (place(s, j).node === name) c++;
  return c;
};

t.test('one agent on a 5,000-pod cluster receives its node pods and the slices, not every pod', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  load(server);
  const local = podsOfNode(NODE);
  t.equal(local, (SERVICES * PODS_PER_SERVICE) / NODES, '100 pods per node');

  const discovery = new KubernetesDiscovery({
    nodeName: NODE,
    nodeAddress: '10.77.0.1',
    kubeConfig: server.kubeConfig(),
    log: silentLogger,
    cgroupRoot: '/nonexistent-weft-cgroup-root',
    debounceMs: 200,
    startTimeoutMs: 120_000,
  });
  t.teardown(() => discovery.stop());
  server.resetTraffic();
  const cfg = await discovery.start();
  const initial = server.traffic();
  t.equal(initial.Pod?.listed, local, "the initial list sent exactly this node's pods");
  t.equal(initial.EndpointSlice?.listed, SERVICES, 'and every EndpointSlice');
  t.equal(cfg.workloads.length, SERVICES * PODS_PER_SERVICE, 'yet every pod of the cluster is an endpoint (local from Pods, remote from slices)');
  t.equal(cfg.workloads.filter((w) => w.node === NODE && w.serviceAccount !== '').length, local, 'local pods carry their service account');
  const svc = cfg.services.find((s) => s.name === 'svc-0')!;
  t.same(svc.ports, [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }]);

  server.resetTraffic();
  churn(server, CHURN);
  await until(() => (server.traffic().EndpointSlice?.events ?? 0) >= CHURN, 'the slice events of the churn');
  await until(() => (server.traffic().Pod?.events ?? 0) >= churnedOn(NODE, CHURN), 'the pod events of the churn');
  await new Promise((r) => setTimeout(r, 300));
  const during = server.traffic();
  t.equal(during.Pod?.events ?? 0, churnedOn(NODE, CHURN), "over the churn, pod events only for this node's pods");
  t.equal(during.EndpointSlice?.events, CHURN, 'and every slice change');
  await discovery.stop();

  // As before: every pod of the cluster, listed and watched (what the pod informer asked for).
  const before = await FakeApiServer.start();
  t.teardown(() => before.close());
  load(before);
  before.resetTraffic();
  const list = await fetch(`${before.url}/api/v1/pods?limit=500`);
  const rv = ((await list.json()) as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
  const allInitial = before.traffic().Pod!;
  t.equal(allInitial.listed, SERVICES * PODS_PER_SERVICE, 'a cluster-wide pod list sends every pod');
  before.resetTraffic();
  const req = http.get(`${before.url}/api/v1/pods?watch=true&resourceVersion=${rv}`, (res) => res.resume());
  t.teardown(() => req.destroy());
  await until(() => before.watchCount('Pod') === 1, 'the cluster-wide watch');
  churn(before, CHURN);
  await until(() => (before.traffic().Pod?.events ?? 0) >= CHURN, 'the cluster-wide pod events');
  const allChurn = before.traffic().Pod!;
  t.equal(allChurn.events, CHURN, 'a cluster-wide pod watch sends every pod change');

  const row = (what: string, objects: number, bytes: number) => `| ${what} | ${objects.toLocaleString('en')} | ${(bytes / 1024).toFixed(0)} KiB |`;
  t.comment(
    [
      '| what one agent receives | objects | bytes |',
      '|---|---|---|',
      row('pods, initial list: every pod (before)', allInitial.listed, allInitial.bytes),
      row(`pods, initial list: ${NODE}'s (after)`, initial.Pod!.listed, initial.Pod!.bytes),
      row('EndpointSlices, initial list (both)', initial.EndpointSlice!.listed, initial.EndpointSlice!.bytes),
      row('Services, initial list (both)', initial.Service!.listed, initial.Service!.bytes),
      row(`pod events over ${CHURN} pod changes (before)`, allChurn.events, allChurn.bytes),
      row(`pod events over ${CHURN} pod changes (after)`, during.Pod?.events ?? 0, during.Pod?.bytes ?? 0),
      row(`slice events over ${CHURN} pod changes (both)`, during.EndpointSlice!.events, during.EndpointSlice!.bytes),
    ].join('\n'),
  );
});
