/**
 * Gateway API routes from the Kubernetes API (a real HTTP server speaking list+watch,
 * test/lib/fake-apiserver.ts, and the real client informers): HTTPRoute, GRPCRoute and
 * TCPRoute on Services of meshed namespaces become `routes`, a FaultInjection ExtensionRef
 * becomes `fault`, a missing Gateway API CRD is a warning and no routes, and installing it
 * later is noticed. Loopback only.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import type { MeshConfig } from '../../src/config/types.js';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import type { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, gatewayRouteObject, namespaceObject, serviceObject, weftObject } from '../lib/fake-apiserver.js';

const MESHED = { 'weft.io/mesh': 'enabled' };

async function setup(t: Test, prepare: (s: FakeApiServer) => void) {
  const server = await FakeApiServer.start();
  const cgroupRoot = mkdtempSync(path.join(tmpdir(), 'weft-k8s-routes-'));
  prepare(server);
  const discovery = new KubernetesDiscovery({
    nodeName: 'node-a',
    nodeAddress: '10.77.0.1',
    kubeConfig: server.kubeConfig(),
    log: silentLogger,
    cgroupRoot,
    debounceMs: 20,
    backoffMs: 20,
    maxBackoffMs: 200,
    absentRetryMs: 100,
    startTimeoutMs: 10_000,
  });
  const rejected: ConfigError[] = [];
  discovery.on('rejected', (e: ConfigError) => rejected.push(e));
  t.teardown(async () => {
    await discovery.stop();
    await server.close();
    rmSync(cgroupRoot, { recursive: true, force: true });
  });
  const until = (pred: (c: MeshConfig) => boolean, what: string) =>
    new Promise<MeshConfig>((resolve, reject) => {
      if (discovery.config && pred(discovery.config)) return resolve(discovery.config);
      const timer = setTimeout(() => {
        discovery.off('update', on);
        reject(new Error(`timed out waiting for ${what}; routes: ${JSON.stringify(discovery.config?.routes)}`));
      }, 5000);
      const on = (c: MeshConfig) => {
        if (!pred(c)) return;
        clearTimeout(timer);
        discovery.off('update', on);
        resolve(c);
      };
      discovery.on('update', on);
    });
  return { server, discovery, rejected, until };
}

function bookinfo(s: FakeApiServer): void {
  s.apply(namespaceObject('bookinfo', MESHED));
  s.apply(namespaceObject('plain'));
  for (const [name, ip] of [
    ['reviews', '10.96.0.10'],
    ['reviews-v1', '10.96.0.11'],
    ['reviews-v2', '10.96.0.12'],
  ] as const) {
    s.apply(serviceObject(name, 'bookinfo', { clusterIP: ip, selector: { app: name }, ports: [{ name: 'http', port: 9080 }] }));
  }
  s.apply(serviceObject('db', 'bookinfo', { clusterIP: '10.96.0.13', selector: { app: 'db' }, ports: [{ name: 'tcp', port: 5432 }] }));
  s.apply(serviceObject('web', 'plain', { clusterIP: '10.96.0.14', selector: { app: 'web' }, ports: [{ name: 'http', port: 80 }] }));
}

const svcRef = (name: string, port?: number) => ({ group: '', kind: 'Service', name, ...(port ? { port } : {}) });

t.test('HTTPRoute, GRPCRoute and TCPRoute on meshed Services become routes; FaultInjection becomes fault', async (t) => {
  const env = await setup(t, (s) => {
    bookinfo(s);
    s.apply(weftObject('FaultInjection', 'jason-delay', 'bookinfo', { delay: { fixedDelay: '7s', percent: 100 } }));
    s.apply(
      gatewayRouteObject('HTTPRoute', 'reviews', 'bookinfo', {
        parentRefs: [svcRef('reviews', 9080), { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'ingress' }],
        rules: [
          {
            matches: [{ path: { type: 'PathPrefix', value: '/' }, headers: [{ type: 'Exact', name: 'end-user', value: 'jason' }] }],
            filters: [{ type: 'ExtensionRef', extensionRef: { group: 'weft.io', kind: 'FaultInjection', name: 'jason-delay' } }],
            backendRefs: [{ group: '', kind: 'Service', name: 'reviews-v2', port: 9080, weight: 1 }],
          },
          {
            matches: [{ path: { type: 'PathPrefix', value: '/' } }],
            filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'reviews-v2', port: 9080 }, fraction: { numerator: 1, denominator: 4 } } }],
            backendRefs: [
              { name: 'reviews-v1', port: 9080, weight: 80 },
              { name: 'reviews-v3', port: 9080, weight: 20 },
            ],
            timeouts: { request: '2s' },
          },
        ],
      }),
    );
    s.apply(gatewayRouteObject('GRPCRoute', 'grpc', 'bookinfo', { parentRefs: [svcRef('reviews-v1')], rules: [{ matches: [{ method: { type: 'Exact', service: 'pkg.Svc' } }] }] }));
    s.apply(gatewayRouteObject('TCPRoute', 'db', 'bookinfo', { parentRefs: [svcRef('db', 5432)], rules: [{ backendRefs: [{ name: 'db', port: 5432 }] }] }));
    // Not for the mesh: a route in an unmeshed namespace, and one attached to a Gateway only.
    s.apply(gatewayRouteObject('HTTPRoute', 'web', 'plain', { parentRefs: [svcRef('web')], rules: [{}] }));
    s.apply(gatewayRouteObject('HTTPRoute', 'edge', 'bookinfo', { parentRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'ingress' }], rules: [{}] }));
  });
  const cfg = await env.discovery.start();
  t.same(cfg.routes!.map((r) => `${r.kind} ${r.namespace}/${r.name}`).sort(), ['GRPCRoute bookinfo/grpc', 'HTTPRoute bookinfo/reviews', 'TCPRoute bookinfo/db']);
  const reviews = cfg.routes!.find((r) => r.name === 'reviews')!;
  t.same(reviews.parentRefs, [{ name: 'reviews', port: 9080 }], "the Gateway parentRef is another controller's");
  t.same(reviews.rules[0]!.fault, { delay: { fixedDelay: 7000, percent: 100 } });
  t.same(reviews.rules[0]!.matches[0]!.headers, [{ type: 'Exact', name: 'end-user', value: 'jason' }]);
  t.same(
    reviews.rules[1]!.backendRefs,
    [
      { name: 'reviews-v1', port: 9080, weight: 80 },
      { name: 'reviews-v3', port: 9080, weight: 20 },
    ],
    'a missing backend is kept: no_backend at run time',
  );
  t.same(reviews.rules[1]!.filters, [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'reviews-v2', port: 9080 }, percent: 25 } }]);
  t.same(reviews.rules[1]!.timeouts, { request: 2000 });
  t.same(env.rejected, []);

  // Live: a route change is a new snapshot; the FaultInjection going away makes the rule answer 500.
  env.server.delete('FaultInjection', 'bookinfo', 'jason-delay');
  const next = await env.until((c) => c.routes!.find((r) => r.name === 'reviews')?.rules[0]?.fault?.abort !== undefined, 'the unresolved fault');
  t.same(next.routes!.find((r) => r.name === 'reviews')!.rules[0]!.fault, { abort: { httpStatus: 500, percent: 100 } });
  env.server.delete('HTTPRoute', 'bookinfo', 'reviews');
  await env.until((c) => !c.routes!.some((r) => r.name === 'reviews'), 'the route deleted');
});

t.test('an invalid or unsupported route is rejected alone; the rest applies', async (t) => {
  const env = await setup(t, (s) => {
    bookinfo(s);
    s.apply(gatewayRouteObject('HTTPRoute', 'bad-regex', 'bookinfo', { parentRefs: [svcRef('reviews')], rules: [{ matches: [{ path: { type: 'RegularExpression', value: '/[' } }] }] }));
    s.apply(gatewayRouteObject('HTTPRoute', 'cors', 'bookinfo', { parentRefs: [svcRef('reviews-v1')], rules: [{ filters: [{ type: 'CORS', cors: {} }] }] }));
    s.apply(gatewayRouteObject('HTTPRoute', 'good', 'bookinfo', { parentRefs: [svcRef('reviews-v2')], rules: [{ backendRefs: [{ name: 'reviews-v1', port: 9080 }] }] }));
  });
  const cfg = await env.discovery.start();
  t.same(
    cfg.routes!.map((r) => r.name),
    ['good'],
  );
  const problems = Object.fromEntries(env.rejected.map((e) => [e.message.split(':')[0], e.problems]));
  t.match(problems['invalid config HTTPRoute bookinfo/bad-regex'], [/^spec\.rules\[0\]\.matches\[0\]\.path\.value: is not a valid regular expression/]);
  t.match(problems['invalid config HTTPRoute bookinfo/cors'], [/^spec\.rules\[0\]\.filters\[0\]\.type: CORS is not supported/]);
});

t.test('without the Gateway API CRDs the agent starts (a warning) and picks routes up once they are installed', async (t) => {
  const env = await setup(t, (s) => {
    bookinfo(s);
    s.uninstall('HTTPRoute');
    s.uninstall('GRPCRoute');
    s.uninstall('TCPRoute');
  });
  const cfg = await env.discovery.start();
  t.same(cfg.routes, []);
  t.ok(cfg.services.length > 0, 'the rest of the mesh is there');
  t.same(env.discovery.cacheStatus().HTTPRoute?.synced, true, 'an absent resource counts as synced and empty');
  env.server.install('HTTPRoute');
  env.server.apply(gatewayRouteObject('HTTPRoute', 'late', 'bookinfo', { parentRefs: [svcRef('reviews')], rules: [{}] }));
  const later = await env.until((c) => c.routes!.some((r) => r.name === 'late'), 'the route after the CRD was installed');
  t.same(
    later.routes!.map((r) => r.name),
    ['late'],
  );
});
