/**
 * The cluster's one writer of route status (src/discovery/k8s/route-status.ts) against a real
 * HTTP API server speaking list+watch and merge-patching the status subresource
 * (test/lib/fake-apiserver.ts): Accepted and ResolvedRefs with their reasons, other
 * controllers' entries kept, nothing rewritten when nothing changed, and only the first CA
 * pod by name writes. Loopback only.
 */
import t from 'tap';
import { CONTROLLER_NAME, RouteStatusWriter } from '../../src/discovery/k8s/route-status.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, gatewayRouteObject, namespaceObject, podObject, serviceObject } from '../lib/fake-apiserver.js';

const svc = (name: string) => ({ group: '', kind: 'Service', name, port: 9080 });

async function until<T>(what: string, f: () => T | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function conditions(server: FakeApiServer, kind: string, name: string): Record<string, string> | undefined {
  const o = server.get(kind, 'bookinfo', name) as any;
  const ours = o?.status?.parents?.find((p: any) => p.controllerName === CONTROLLER_NAME);
  if (!ours) return undefined;
  return Object.fromEntries(ours.conditions.map((c: any) => [c.type, `${c.status}:${c.reason}`]));
}

t.test('Accepted and ResolvedRefs, with reasons, for each route on a meshed Service', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.apply(namespaceObject('bookinfo', { 'weft.io/mesh': 'enabled' }));
  for (const [name, ip] of [
    ['reviews', '10.96.0.10'],
    ['reviews-v1', '10.96.0.11'],
  ] as const) {
    server.apply(serviceObject(name, 'bookinfo', { clusterIP: ip, selector: { app: name }, ports: [{ name: 'http', port: 9080 }] }));
  }
  server.apply(
    gatewayRouteObject('HTTPRoute', 'good', 'bookinfo', {
      parentRefs: [svc('reviews'), { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'edge' }],
      rules: [{ backendRefs: [{ name: 'reviews-v1', port: 9080 }] }],
    }),
  );
  server.apply(gatewayRouteObject('HTTPRoute', 'dangling', 'bookinfo', { parentRefs: [svc('reviews')], rules: [{ backendRefs: [{ name: 'reviews-v9', port: 9080 }] }] }));
  server.apply(gatewayRouteObject('HTTPRoute', 'orphan', 'bookinfo', { parentRefs: [svc('nope')], rules: [{}] }));
  server.apply(gatewayRouteObject('HTTPRoute', 'bad', 'bookinfo', { parentRefs: [svc('reviews')], rules: [{ matches: [{ path: { type: 'RegularExpression', value: '/[' } }] }] }));
  // A Gateway controller's entry on the good route must survive our writes.
  const good = server.get('HTTPRoute', 'bookinfo', 'good')!;
  (good as any).status = { parents: [{ parentRef: { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'edge' }, controllerName: 'example.com/gateway', conditions: [] }] };
  server.apply(good);

  const writer = new RouteStatusWriter({ kubeConfig: server.kubeConfig(), log: silentLogger, debounceMs: 20, resyncMs: 60_000, absentRetryMs: 100 });
  writer.start();
  t.teardown(() => writer.stop());

  t.same(await until('good', () => conditions(server, 'HTTPRoute', 'good')), { Accepted: 'True:Accepted', ResolvedRefs: 'True:ResolvedRefs' });
  t.same(await until('dangling', () => conditions(server, 'HTTPRoute', 'dangling')), { Accepted: 'True:Accepted', ResolvedRefs: 'False:BackendNotFound' });
  t.same(await until('orphan', () => conditions(server, 'HTTPRoute', 'orphan')), { Accepted: 'False:NoMatchingParent', ResolvedRefs: 'True:ResolvedRefs' });
  t.same(await until('bad', () => conditions(server, 'HTTPRoute', 'bad')), { Accepted: 'False:UnsupportedValue', ResolvedRefs: 'True:ResolvedRefs' });
  const bad = server.get('HTTPRoute', 'bookinfo', 'bad') as any;
  t.match(bad.status.parents[0].conditions[0].message, /^spec\.rules\[0\]\.matches\[0\]\.path\.value: is not a valid regular expression/);
  const parents = (server.get('HTTPRoute', 'bookinfo', 'good') as any).status.parents;
  t.same(parents.map((p: any) => p.controllerName).sort(), ['example.com/gateway', CONTROLLER_NAME], "the other controller's entry is kept");

  // Nothing changed: nothing is written again. A fix flips the condition.
  // Each of the four routes written once (a write counts when its PATCH has been answered).
  await until('four writes', () => (writer.writes === 4 ? true : undefined));
  const writes = writer.writes;
  server.apply(serviceObject('reviews-v9', 'bookinfo', { clusterIP: '10.96.0.19', selector: { app: 'v9' }, ports: [{ name: 'http', port: 9080 }] }));
  t.same(await until('dangling resolved', () => (conditions(server, 'HTTPRoute', 'dangling')?.ResolvedRefs === 'True:ResolvedRefs' ? conditions(server, 'HTTPRoute', 'dangling') : undefined)), {
    Accepted: 'True:Accepted',
    ResolvedRefs: 'True:ResolvedRefs',
  });
  // The stored status can be seen a moment before the writer has read the PATCH's answer (same process).
  await until('the write answered', () => (writer.writes > writes ? true : undefined));
  t.equal(writer.writes, writes + 1, 'only the route whose status changed was written');
});

t.test('only the first running CA pod by name writes', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.apply(namespaceObject('bookinfo', { 'weft.io/mesh': 'enabled' }));
  server.apply(serviceObject('reviews', 'bookinfo', { clusterIP: '10.96.0.10', selector: { app: 'reviews' }, ports: [{ name: 'http', port: 9080 }] }));
  server.apply(gatewayRouteObject('HTTPRoute', 'r', 'bookinfo', { parentRefs: [svc('reviews')], rules: [{}] }));
  for (const name of ['weft-ca-a', 'weft-ca-b']) {
    const pod = podObject(name, 'weft-system', { node: 'n1', ip: name.endsWith('a') ? '10.0.0.1' : '10.0.0.2' }) as any;
    pod.metadata.labels = { 'app.kubernetes.io/name': 'weft-ca' };
    server.apply(pod);
  }
  const second = new RouteStatusWriter({ kubeConfig: server.kubeConfig(), log: silentLogger, podName: 'weft-ca-b', podNamespace: 'weft-system', debounceMs: 20, resyncMs: 100, absentRetryMs: 100 });
  second.start();
  t.teardown(() => second.stop());
  await new Promise((r) => setTimeout(r, 500));
  t.equal(conditions(server, 'HTTPRoute', 'r'), undefined, 'the second replica does not write');
  server.delete('Pod', 'weft-system', 'weft-ca-a');
  t.same(await until('the second takes over', () => conditions(server, 'HTTPRoute', 'r')), { Accepted: 'True:Accepted', ResolvedRefs: 'True:ResolvedRefs' });
});
