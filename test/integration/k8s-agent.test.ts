/**
 * The agent with discovery from a Kubernetes API server (the fake one, speaking the real list
 * and watch protocol): an EndpointSlice change reaches the balancer.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect, type Socket } from 'node:net';
import { Agent as UndiciAgent, request } from 'undici';
import { Agent } from '../../src/agent.js';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { startBackend } from '../../src/sandbox/backend.js';
import { allStarted } from '../lib/backends.js';
import { FakeApiServer, endpointSliceObject, namespaceObject, podObject, serviceObject, weftObject } from '../lib/fake-apiserver.js';

t.test('an EndpointSlice change reaches the balancer', async (t) => {
  const backends = await allStarted([1, 2].map((i) => startBackend({ name: `api-${i - 1}`, port: 8080, host: `127.0.1.${i}`, log: () => {} })));
  t.teardown(() => Promise.all(backends.map((b) => b.close())));
  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  const cgroupRoot = mkdtempSync(join(tmpdir(), 'weft-k8s-agent-'));
  t.teardown(() => rmSync(cgroupRoot, { recursive: true, force: true }));

  server.apply(namespaceObject('shop', { 'weft.io/mesh': 'enabled' }));
  for (const i of [0, 1]) server.apply(podObject(`api-${i}`, 'shop', { node: 'node-a', ip: `127.0.1.${i + 1}`, serviceAccount: 'api', labels: { app: 'api' } }));
  server.apply(serviceObject('api', 'shop', { clusterIP: '10.96.0.20', selector: { app: 'api' }, ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' }] }));
  const slice = (ready1: boolean) =>
    endpointSliceObject(
      'api-abc',
      'shop',
      'api',
      [
        { ip: '127.0.1.1', pod: 'api-0', node: 'node-a' },
        { ip: '127.0.1.2', pod: 'api-1', node: 'node-a', ready: ready1 },
      ],
      [{ name: 'http', port: 8080, appProtocol: 'http' }],
    );
  server.apply(slice(true));

  const discovery = new KubernetesDiscovery({
    nodeName: 'node-a',
    nodeAddress: '127.0.0.1',
    kubeConfig: server.kubeConfig(),
    static: { ports: { outbound: 0, inbound: 0, tunnel: 0, admin: 0, metrics: 0 }, stateDir: cgroupRoot },
    log: silentLogger,
    cgroupRoot,
    debounceMs: 20,
    backoffMs: 20,
    startTimeoutMs: 10_000,
  });
  const agent = await Agent.start({
    discovery,
    log: silentLogger,
    capture: false,
    origDst: (s: Socket) => (s.remoteAddress === '127.0.2.1' ? { ip: '10.96.0.20', port: 80 } : undefined),
  });
  t.teardown(() => agent.stop({ drainMs: 0 }));
  const dispatcher = new UndiciAgent({
    connect: ((opts: { hostname: string; port: string }, cb: (e: Error | null, s: Socket | null) => void) => {
      const s = netConnect({ host: opts.hostname, port: Number(opts.port), localAddress: '127.0.2.1' });
      s.once('connect', () => cb(null, s));
      s.once('error', (e) => cb(e, null));
    }) as never,
  });
  t.teardown(() => dispatcher.close());
  const tally = async (n: number) => {
    const out: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      const r = await request(`http://127.0.0.1:${agent.addresses.outbound}/`, { dispatcher });
      await r.body.text();
      const p = r.headers['x-pod'] as string;
      out[p] = (out[p] ?? 0) + 1;
    }
    return out;
  };
  t.same(await tally(4), { 'api-0': 2, 'api-1': 2 }, 'both ready endpoints take traffic');

  const gen = agent.state.generation;
  server.apply(slice(false));
  const deadline = Date.now() + 5000;
  while (agent.state.generation === gen && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.same(await tally(4), { 'api-0': 4 }, 'an endpoint the slice marks not ready leaves rotation');

  // A TrafficPolicy CR changes the balancer live.
  server.apply(weftObject('TrafficPolicy', 'api', 'shop', { targetRef: { name: 'api' }, loadBalancer: { type: 'least-request' } }));
  const d2 = Date.now() + 5000;
  while (agent.clusters.get('shop/api:80')?.balancerType !== 'least-request' && Date.now() < d2) await new Promise((r) => setTimeout(r, 20));
  t.equal(agent.clusters.get('shop/api:80')?.balancerType, 'least-request', 'a TrafficPolicy reaches the cluster');
});
