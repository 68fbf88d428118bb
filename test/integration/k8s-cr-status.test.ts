/**
 * The cluster's one status writer (weft ca --route-status: src/discovery/k8s/route-status.ts
 * with cr-status.ts) on weft's own custom resources, against the local API server speaking
 * list+watch, the status subresource and Event creation (test/lib/fake-apiserver.ts): a
 * refused object gets Accepted=False with the problems an agent reports for it and one
 * Warning Event; resyncs write nothing; fixing it flips the condition to True; a second CA
 * replica writes nothing. Loopback only.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { RouteStatusWriter } from '../../src/discovery/k8s/route-status.js';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import type { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, gatewayRouteObject, namespaceObject, podObject, serviceObject, weftObject } from '../lib/fake-apiserver.js';

const NS = 'shop';

async function until<T>(what: string, f: () => T | undefined, ms = 8000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function accepted(server: FakeApiServer, kind: string, name: string): any {
  const o = server.get(kind, NS, name) as any;
  return o?.status?.conditions?.find((c: any) => c.type === 'Accepted');
}

function events(server: FakeApiServer): any[] {
  return server.requests.filter((r) => r.method === 'POST' && r.path === `/apis/events.k8s.io/v1/namespaces/${NS}/events`).map((r) => r.body as any);
}

/** An Istio-shaped policy whose `when` key weft has no equivalent for: refused by name. */
const REFUSED_AP = {
  selector: { matchLabels: { app: 'api' } },
  action: 'ALLOW',
  rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/web'] } }], when: [{ key: 'request.headers[x-tenant]', values: ['a'] }] }],
};
const FIXED_AP = { selector: { matchLabels: { app: 'api' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/web'] } }] }] };

function seed(server: FakeApiServer): void {
  server.apply(namespaceObject(NS, { 'weft.io/mesh': 'enabled' }));
  server.apply(serviceObject('api', NS, { clusterIP: '10.96.0.20', selector: { app: 'api' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }));
  server.apply(weftObject('AuthorizationPolicy', 'istio-bad', NS, REFUSED_AP));
  server.apply(weftObject('AuthorizationPolicy', 'istio-good', NS, FIXED_AP));
  server.apply(weftObject('TrafficPolicy', 'api-tp', NS, { targetRef: { kind: 'Service', name: 'api' }, retries: { attempts: -1 } }));
  server.apply(weftObject('RequestAuthentication', 'api-jwt', NS, { selector: { app: 'api' }, jwtRules: [{ issuer: 'https://issuer.example', jwksFile: '/etc/passwd' }] }));
  server.apply(weftObject('FaultInjection', 'too-much', NS, { abort: { httpStatus: 503, percent: 250 } }));
  server.apply(
    gatewayRouteObject('HTTPRoute', 'api', NS, {
      parentRefs: [{ group: '', kind: 'Service', name: 'api', port: 80 }],
      rules: [{ filters: [{ type: 'ExtensionRef', extensionRef: { group: 'weft.io', kind: 'FaultInjection', name: 'too-much' } }], backendRefs: [{ name: 'api', port: 80 }] }],
    }),
  );
}

t.test("a refused custom resource: Accepted=False with the agent's problems, one Warning Event; a fix flips it to True", async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  seed(server);

  const writer = new RouteStatusWriter({ kubeConfig: server.kubeConfig(), log: silentLogger, debounceMs: 20, resyncMs: 100, absentRetryMs: 100 });
  writer.start();
  t.teardown(() => writer.stop());

  const bad = await until('istio-bad status', () => accepted(server, 'AuthorizationPolicy', 'istio-bad'));
  t.equal(bad.status, 'False');
  t.equal(bad.reason, 'Refused');
  t.match(bad.message, /^spec\.rules\[0\]\.when\[0\]\.key: request\.headers\[x-tenant\] has no weft equivalent/);
  t.match(bad.message, /allows nothing to the workloads it selects \(fail closed\)$/);
  t.equal(bad.observedGeneration, server.get('AuthorizationPolicy', NS, 'istio-bad')!.metadata.generation);
  t.ok(Date.parse(bad.lastTransitionTime), 'lastTransitionTime is a time');

  const good = await until('istio-good status', () => accepted(server, 'AuthorizationPolicy', 'istio-good'));
  t.same([good.status, good.reason], ['True', 'ConvertedFromIstio'], 'an Istio-shaped policy converted is accepted and says so');
  const tp = await until('api-tp status', () => accepted(server, 'TrafficPolicy', 'api-tp'));
  t.same([tp.status, tp.reason], ['False', 'Refused']);
  t.match(tp.message, /^spec\.retries\.attempts: /);
  const ra = await until('api-jwt status', () => accepted(server, 'RequestAuthentication', 'api-jwt'));
  t.match(ra, { status: 'False', reason: 'Refused', message: /^spec\.jwtRules\[0\]\.jwksFile: not allowed in Kubernetes/ });
  const fi = await until('too-much status', () => accepted(server, 'FaultInjection', 'too-much'));
  t.match(fi, { status: 'False', reason: 'Refused', message: /^spec\.abort\.percent: .*\(HTTPRoute shop\/api is refused for it\)/ });

  // One Warning Event per refused object, regarding it, as kubectl describe lists them.
  await until('four events', () => (events(server).length >= 4 ? true : undefined));
  const byObject = new Map(events(server).map((e) => [`${e.regarding.kind}/${e.regarding.name}`, e]));
  t.same([...byObject.keys()].sort(), ['AuthorizationPolicy/istio-bad', 'FaultInjection/too-much', 'RequestAuthentication/api-jwt', 'TrafficPolicy/api-tp']);
  const ev = byObject.get('AuthorizationPolicy/istio-bad');
  t.match(ev, { type: 'Warning', reason: 'Refused', action: 'Validate', reportingController: 'weft.io/mesh', note: bad.message });
  t.equal(ev.regarding.uid, server.get('AuthorizationPolicy', NS, 'istio-bad')!.metadata.uid);
  t.ok(server.get('Event', NS, ev.metadata.name), 'the Event is stored');

  // Resyncs (every 100 ms here) write nothing more: neither status nor Events.
  const writes = writer.crStatus.writes;
  const made = events(server).length;
  await new Promise((r) => setTimeout(r, 600));
  t.equal(writer.crStatus.writes, writes, 'no status rewrites on resync');
  t.equal(events(server).length, made, 'no Event per resync');
  t.equal(made, 4, 'one Event per refused object');

  // The fix: the condition flips to True for the new generation, with no new Event.
  const fixed = server.apply(weftObject('AuthorizationPolicy', 'istio-bad', NS, FIXED_AP));
  const now = await until('fixed', () => {
    const c = accepted(server, 'AuthorizationPolicy', 'istio-bad');
    return c?.status === 'True' ? c : undefined;
  });
  t.same([now.reason, now.observedGeneration], ['ConvertedFromIstio', fixed.metadata.generation]);
  t.not(now.lastTransitionTime, undefined);
  t.equal(events(server).length, 4, 'a fix makes no Warning');

  // Broken again the same way: the same Event's series counts it (count 2), no second Event.
  server.apply(weftObject('AuthorizationPolicy', 'istio-bad', NS, REFUSED_AP));
  await until('refused again', () => (accepted(server, 'AuthorizationPolicy', 'istio-bad')?.status === 'False' ? true : undefined));
  const stored = await until('series', () => {
    const e = server.get('Event', NS, ev.metadata.name) as any;
    return e?.series?.count === 2 ? e : undefined;
  });
  t.ok(Date.parse(stored.series.lastObservedTime));
  t.equal(events(server).length, 4, 'the repeat is a series on the first Event');
});

t.test('the condition carries the problems the agent reports for the same object', async (t) => {
  const server = await FakeApiServer.start();
  const cgroupRoot = mkdtempSync(path.join(tmpdir(), 'weft-cr-status-'));
  t.teardown(async () => {
    await server.close();
    rmSync(cgroupRoot, { recursive: true, force: true });
  });
  seed(server);
  const agent = new KubernetesDiscovery({
    nodeName: 'node-a',
    nodeAddress: '10.77.0.1',
    kubeConfig: server.kubeConfig(),
    static: {},
    log: silentLogger,
    cgroupRoot,
    debounceMs: 20,
    backoffMs: 20,
    startTimeoutMs: 10_000,
  });
  const rejected: ConfigError[] = [];
  agent.on('rejected', (e: ConfigError) => rejected.push(e));
  const writer = new RouteStatusWriter({ kubeConfig: server.kubeConfig(), log: silentLogger, debounceMs: 20, resyncMs: 60_000, absentRetryMs: 100 });
  writer.start();
  t.teardown(() => writer.stop());
  await agent.start();
  t.teardown(() => agent.stop());

  for (const [kind, name] of [
    ['AuthorizationPolicy', 'istio-bad'],
    ['TrafficPolicy', 'api-tp'],
    ['RequestAuthentication', 'api-jwt'],
  ] as const) {
    const c = await until(`${name} status`, () => accepted(server, kind, name));
    const agentSays = await until(`the agent's rejection of ${name}`, () => rejected.find((e) => e.message.startsWith(`invalid config ${kind} ${NS}/${name}:`)));
    t.equal(c.message, agentSays.problems.join('; '), `${kind} ${name}: the status says what the agent logs`);
  }
});

t.test('a second CA replica writes neither status nor Events', async (t) => {
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  seed(server);
  for (const name of ['weft-ca-a', 'weft-ca-b']) {
    const pod = podObject(name, 'weft-system', { node: 'n1', ip: name.endsWith('a') ? '10.0.0.1' : '10.0.0.2' }) as any;
    pod.metadata.labels = { 'app.kubernetes.io/name': 'weft-ca' };
    server.apply(pod);
  }
  const second = new RouteStatusWriter({ kubeConfig: server.kubeConfig(), log: silentLogger, podName: 'weft-ca-b', podNamespace: 'weft-system', debounceMs: 20, resyncMs: 100, absentRetryMs: 100 });
  second.start();
  t.teardown(() => second.stop());
  await new Promise((r) => setTimeout(r, 600));
  t.equal(accepted(server, 'AuthorizationPolicy', 'istio-bad'), undefined, 'no status from the second replica');
  t.equal(events(server).length, 0, 'no Event from the second replica');
  t.equal(server.requests.filter((r) => r.method !== 'GET').length, 0, 'no write at all');
  // The first one goes: the second takes over, and reports once.
  server.delete('Pod', 'weft-system', 'weft-ca-a');
  const c = await until('takeover', () => accepted(server, 'AuthorizationPolicy', 'istio-bad'));
  t.equal(c.status, 'False');
  await until('events', () => (events(server).length === 4 ? true : undefined));
  t.match(events(server)[0], { reportingInstance: 'weft-ca-b' });
});
