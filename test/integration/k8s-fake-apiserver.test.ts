/**
 * The fake API server speaks the wire protocol the real one does: checked with plain HTTP,
 * so that the discovery tests rest on a server that behaves like Kubernetes.
 */
import http from 'node:http';
import t from 'tap';
import { API_SERVER_AUDIENCE, FakeApiServer, namespaceObject, podObject, serviceAccountToken } from '../lib/fake-apiserver.js';

async function get(server: FakeApiServer, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(server.url + path);
  return { status: res.status, body: await res.json() };
}

/** Open a watch; collect events as they arrive. */
function watch(server: FakeApiServer, path: string) {
  const events: { type: string; object: any }[] = [];
  let ended = false;
  let buf = '';
  const req = http.get(server.url + path, (res) => {
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        events.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    });
    res.on('end', () => (ended = true));
    res.on('error', () => (ended = true));
  });
  req.on('error', () => (ended = true));
  return {
    events,
    get ended() {
      return ended;
    },
    close: () => req.destroy(),
    async until(n: number) {
      const deadline = Date.now() + 2000;
      while (events.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      return events;
    },
    /** Whether the stream ended (waited for up to 5 s, not assumed after a fixed time). */
    async endedSoon() {
      const deadline = Date.now() + 5000;
      while (!ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      return ended;
    },
  };
}

t.test('list, get, selectors', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.apply(namespaceObject('shop', { team: 'a' }));
  server.apply(podObject('p1', 'shop', { node: 'node-a', ip: '10.1.0.1', labels: { app: 'api', tier: 'web' } }));
  server.apply(podObject('p2', 'shop', { node: 'node-b', ip: '10.1.0.2', labels: { app: 'db' } }));
  server.apply(podObject('p3', 'other', { node: 'node-a', ip: '10.1.0.3' }));

  const all = await get(server, '/api/v1/pods');
  t.equal(all.body.kind, 'PodList');
  t.equal(all.body.metadata.resourceVersion, String(server.resourceVersion));
  t.equal(all.body.items.length, 3);
  t.equal(all.body.items[0].kind, undefined, 'built-in list items carry no kind, as in the real API');
  const names = async (q: string) => (await get(server, q)).body.items.map((p: any) => p.metadata.name).sort();
  t.same(await names('/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a'), ['p1', 'p3']);
  t.same(await names('/api/v1/pods?fieldSelector=spec.nodeName!%3Dnode-a'), ['p2']);
  t.same(await names('/api/v1/namespaces/shop/pods'), ['p1', 'p2']);
  t.same(await names('/api/v1/namespaces/shop/pods?fieldSelector=spec.nodeName%3Dnode-a'), ['p1'], 'namespaced list with a field selector');
  t.same(await names('/api/v1/namespaces/other/pods?fieldSelector=spec.nodeName%3Dnode-b'), []);
  t.same(await names('/api/v1/pods?labelSelector=app%3Dapi'), ['p1']);
  t.same(await names('/api/v1/pods?labelSelector=app%20in%20(api,db),!tier'), ['p2']);
  t.same(await names('/api/v1/pods?labelSelector=tier'), ['p1']);
  t.same(await names('/api/v1/pods?labelSelector=app%20notin%20(api)'), ['p2', 'p3']);
  t.same(await names('/api/v1/pods?fieldSelector=metadata.name%3Dp2'), ['p2'], 'metadata.name, on every kind');
  t.same(await names('/api/v1/pods?fieldSelector=metadata.namespace%3Dother'), ['p3']);
  t.same(await names('/api/v1/pods?fieldSelector=spec.nodeName%3D%3Dnode-a,metadata.namespace!%3Dother'), ['p1'], 'terms are ANDed; == is =');
  t.same(await names('/api/v1/pods?fieldSelector=spec.hostNetwork%3Dfalse'), ['p1', 'p2', 'p3'], 'an unset boolean field reads false');
  t.same(await names('/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&labelSelector=app%3Dapi'), ['p1'], 'field and label selectors together');
  t.same(await names('/api/v1/namespaces?fieldSelector=metadata.name%3Dshop'), ['shop']);
  const unsupported = await get(server, '/api/v1/pods?fieldSelector=spec.containers%3Dx');
  t.equal(unsupported.status, 400, 'a field the kind does not index is refused, as the real server does');
  t.match(unsupported.body, { kind: 'Status', reason: 'BadRequest', code: 400, message: /field label not supported: spec\.containers$/ });
  t.equal((await get(server, '/api/v1/services?fieldSelector=spec.nodeName%3Dnode-a')).status, 400, 'spec.nodeName exists for pods only');
  t.equal((await get(server, '/api/v1/namespaces?fieldSelector=metadata.namespace%3Dx')).status, 400, 'a cluster-scoped kind has no metadata.namespace');
  t.equal((await get(server, '/api/v1/pods?watch=1&fieldSelector=nope%3D1')).status, 400, 'a watch is refused the same way');
  t.equal((await get(server, '/api/v1/namespaces/shop')).body.metadata.labels.team, 'a');
  t.equal((await get(server, '/api/v1/namespaces/shop/pods/p9')).status, 404);
  t.equal((await get(server, '/apis/weft.io/v1alpha1/nothings')).status, 404);
  server.failNext(1, 503);
  t.equal((await get(server, '/api/v1/pods')).status, 503);
  t.equal((await get(server, '/api/v1/pods')).status, 200);
});

t.test('watch: history, live events, selector transitions, bookmarks, 410', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.apply(podObject('p1', 'shop', { node: 'node-a', ip: '10.1.0.1' }));
  const rv = server.resourceVersion;
  server.apply(podObject('p2', 'shop', { node: 'node-a', ip: '10.1.0.2' }));

  const w = watch(server, `/api/v1/pods?watch=1&resourceVersion=${rv}&allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dnode-a`);
  await w.until(1);
  t.same(
    w.events.map((e) => `${e.type} ${e.object.metadata.name}`),
    ['ADDED p2'],
    'history after the version',
  );
  server.apply(podObject('p2', 'shop', { node: 'node-a', ip: '10.1.0.2', ready: false }));
  const moved = server.apply(podObject('p1', 'shop', { node: 'node-b', ip: '10.1.0.1' }));
  server.apply(podObject('p1', 'shop', { node: 'node-a', ip: '10.1.0.1' }));
  server.delete('Pod', 'shop', 'p2');
  server.bookmark();
  await w.until(6);
  t.same(
    w.events.map((e) => `${e.type} ${e.object.metadata.name}`),
    ['ADDED p2', 'MODIFIED p2', 'DELETED p1', 'ADDED p1', 'DELETED p2', 'BOOKMARK '],
    'leaving and entering the selector are DELETED and ADDED',
  );
  t.equal(w.events.at(-1)!.object.metadata.resourceVersion, String(server.resourceVersion));
  const left = w.events[2]!;
  t.equal(left.object.spec.nodeName, 'node-a', 'DELETED on leaving the selection carries the object as it was (the watch cache sends PrevObject)');
  t.equal(left.object.metadata.resourceVersion, moved.metadata.resourceVersion, '... at the version of the change that moved it');
  const rvs = w.events.slice(0, -1).map((e) => Number(e.object.metadata.resourceVersion));
  t.same(
    rvs,
    [...rvs].sort((a, b) => a - b),
    'resourceVersions increase',
  );

  server.dropWatches();
  t.ok(await w.endedSoon(), 'the stream was cut');

  server.compact();
  const gone = watch(server, `/api/v1/pods?watch=true&resourceVersion=${rv}`);
  await gone.until(1);
  t.match(gone.events, [{ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: /too old resource version/ } }]);
  t.ok(await gone.endedSoon(), 'closed after the 410');
  const fresh = watch(server, `/api/v1/pods?watch=true&resourceVersion=${server.resourceVersion}`);
  server.apply(podObject('p4', 'shop', { node: 'node-a', ip: '10.1.0.4' }));
  await fresh.until(1);
  t.same(
    fresh.events.map((e) => e.type),
    ['ADDED'],
    'watching from the head still works after compaction',
  );
  fresh.close();
});

t.test('traffic: objects and bytes sent per kind, in lists and watch events', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.apply(podObject('p1', 'shop', { node: 'node-a', ip: '10.1.0.1' }));
  server.apply(podObject('p2', 'shop', { node: 'node-b', ip: '10.1.0.2' }));
  server.apply(namespaceObject('shop'));
  const res = await fetch(`${server.url}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a`);
  const listBytes = (await res.arrayBuffer()).byteLength;
  t.same(server.traffic(), { Pod: { listed: 1, events: 0, bytes: listBytes } }, 'a list counts its items and body');
  const w = watch(server, `/api/v1/pods?watch=1&resourceVersion=${server.resourceVersion}&allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dnode-a`);
  await new Promise((r) => setTimeout(r, 50));
  server.apply(podObject('p2', 'shop', { node: 'node-b', ip: '10.1.0.2', ready: false }));
  server.apply(podObject('p1', 'shop', { node: 'node-a', ip: '10.1.0.1', ready: false }));
  server.bookmark();
  await w.until(2);
  const pods = server.traffic().Pod!;
  t.equal(pods.events, 1, 'only the event the watch selects is counted; a bookmark is not an object');
  t.ok(pods.bytes > listBytes, 'watch lines add their bytes');
  w.close();
  server.resetTraffic();
  t.same(server.traffic(), {});
});

t.test('TokenReview: the test-supplied table, audiences honoured', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.setToken('agent', serviceAccountToken('weft-system', 'weft-agent', { pod: 'agent-a', podUid: 'u1', node: 'node-a', audiences: ['weft-ca'] }));
  server.setToken('default-aud', serviceAccountToken('shop', 'api', { pod: 'api-0' }));
  const review = async (token: string, audiences?: string[]) => {
    const res = await fetch(`${server.url}/apis/authentication.k8s.io/v1/tokenreviews`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, ...(audiences ? { audiences } : {}) } }),
    });
    return { status: res.status, body: (await res.json()) as any };
  };
  const ok = await review('agent', ['weft-ca', 'other']);
  t.equal(ok.status, 201);
  t.equal(ok.body.kind, 'TokenReview');
  t.match(ok.body.status, {
    authenticated: true,
    audiences: ['weft-ca'],
    user: {
      username: 'system:serviceaccount:weft-system:weft-agent',
      groups: ['system:serviceaccounts', 'system:serviceaccounts:weft-system', 'system:authenticated'],
      extra: {
        'authentication.kubernetes.io/pod-name': ['agent-a'],
        'authentication.kubernetes.io/pod-uid': ['u1'],
        'authentication.kubernetes.io/node-name': ['node-a'],
      },
    },
  });
  t.match((await review('agent')).body.status, { authenticated: false, error: /audiences is invalid/ }, "no audiences: the API server's own");
  t.match((await review('default-aud')).body.status, { authenticated: true, audiences: [API_SERVER_AUDIENCE] });
  t.match((await review('default-aud', ['weft-ca'])).body.status, { authenticated: false });
  t.match((await review('nope', ['weft-ca'])).body.status, { authenticated: false, error: /invalid bearer token/ });
  server.setToken('expired', { ...serviceAccountToken('shop', 'api'), authenticated: false, error: 'expired' });
  t.same((await review('expired')).body.status, { authenticated: false, user: {}, error: 'expired' });
  t.ok(server.deleteToken('agent'));
  t.match((await review('agent', ['weft-ca'])).body.status, { authenticated: false });
  t.equal((await review('')).status, 400);
  const get = await fetch(`${server.url}/apis/authentication.k8s.io/v1/tokenreviews`);
  t.equal(get.status, 405);
  t.match(server.requests.at(-2), { method: 'POST', body: { spec: { token: '' } } }, 'POST bodies are recorded');
});
