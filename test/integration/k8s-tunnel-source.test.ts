/**
 * Two agents with discovery from one Kubernetes API server (the fake one), each watching only
 * its own node's pods (`fieldSelector=spec.nodeName`), a `weft ca` shared by both, on
 * loopback: node-a (127.0.0.1) runs a Deployment's client pod, node-b (127.0.0.2) the api (HTTP)
 * and echo (TCP) pods. node-b never sees the client's Pod, yet its metrics and access log name
 * the client's Deployment, canonical service and pod: the source agent described them in the
 * tunnel's CONNECT.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Agent as UndiciAgent, request } from 'undici';
import { Agent } from '../../src/agent.js';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { startCaServer } from '../../src/identity/ca-server.js';
import { isoTime, silentLogger } from '../../src/telemetry/log.js';
import { startBackend } from '../../src/sandbox/backend.js';
import { freePort } from '../../bench/lib/net.js';
import { FakeApiServer, endpointSliceObject, namespaceObject, nodeObject, podObject, serviceObject } from '../lib/fake-apiserver.js';

const NODE_A = '127.0.0.1';
const NODE_B = '127.0.0.2';
const CLIENT_IP = '127.0.2.1';
const CLIENT_POD = 'client-5b8c7d9f4-x2z9q';

function capture(lines: Record<string, any>[]): pino.Logger {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return pino({ level: 'info', base: { pid: process.pid }, timestamp: isoTime }, sink);
}

t.test('node-b names the Deployment of a caller whose pod it does not watch', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-tunnel-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const quiet = () => undefined;
  const api = await startBackend({ name: 'api-0', host: '127.0.1.1', port: 0, log: quiet });
  const echo = await startBackend({ name: 'echo-0', host: '127.0.1.2', port: 0, tcpEchoPort: 0, log: quiet });
  t.teardown(() => Promise.all([api.close(), echo.close()]));

  const ca = await CertificateAuthority.open(join(dir, 'ca'));
  for (const n of ['node-a', 'node-b']) writeFileSync(join(dir, `${n}.token`), ca.issueNodeToken(n));
  // The CA's view (in a cluster: the pods the API server lists per node).
  const runs: Record<string, string[]> = { 'node-a': ['shop/client'], 'node-b': ['shop/api', 'shop/echo'] };
  const caServer = await startCaServer({ ca, listen: { host: '127.0.0.1', port: 0 }, authorize: (node, req) => runs[node]?.includes(`${req.namespace}/${req.serviceAccount}`) ?? false });
  t.teardown(() => caServer.close());

  const server = await FakeApiServer.start();
  t.teardown(() => server.close());
  server.apply(namespaceObject('shop', { 'weft.io/mesh': 'enabled' }));
  server.apply(nodeObject('node-a', NODE_A));
  server.apply(nodeObject('node-b', NODE_B));
  // A Deployment's pod: owned by ReplicaSet client-5b8c7d9f4, whose pods carry pod-template-hash.
  const client = podObject(CLIENT_POD, 'shop', {
    node: 'node-a',
    ip: CLIENT_IP,
    serviceAccount: 'client',
    labels: { app: 'client', 'app.kubernetes.io/name': 'storefront', 'pod-template-hash': '5b8c7d9f4' },
  });
  (client.metadata as any).ownerReferences[0].name = 'client-5b8c7d9f4';
  server.apply(client);
  server.apply(podObject('api-0', 'shop', { node: 'node-b', ip: '127.0.1.1', serviceAccount: 'api', labels: { app: 'api' } }));
  server.apply(podObject('echo-0', 'shop', { node: 'node-b', ip: '127.0.1.2', serviceAccount: 'echo', labels: { app: 'echo' } }));
  server.apply(serviceObject('api', 'shop', { clusterIP: '10.96.0.20', selector: { app: 'api' }, ports: [{ name: 'http', port: 80, targetPort: api.port, appProtocol: 'http' }] }));
  server.apply(serviceObject('echo', 'shop', { clusterIP: '10.96.0.40', selector: { app: 'echo' }, ports: [{ name: 'tcp', port: 7000, targetPort: echo.tcpEchoPort! }] }));
  server.apply(endpointSliceObject('api-x1', 'shop', 'api', [{ ip: '127.0.1.1', pod: 'api-0', node: 'node-b' }], [{ name: 'http', port: api.port, appProtocol: 'http' }]));
  server.apply(endpointSliceObject('echo-x1', 'shop', 'echo', [{ ip: '127.0.1.2', pod: 'echo-0', node: 'node-b' }], [{ name: 'tcp', port: echo.tcpEchoPort! }]));

  const tunnelPort = await freePort(NODE_B);
  const start = async (node: string, address: string, log: pino.Logger, dest?: string) => {
    const cgroupRoot = mkdtempSync(join(dir, `cg-${node}-`));
    const discovery = new KubernetesDiscovery({
      nodeName: node,
      nodeAddress: address,
      kubeConfig: server.kubeConfig(),
      static: {
        ports: { outbound: 0, inbound: 0, tunnel: tunnelPort, admin: 0, metrics: 0 },
        stateDir: join(dir, `state-${node}`),
        ca: { url: caServer.url, rootCert: join(dir, 'ca', 'root.pem'), tokenFile: join(dir, `${node}.token`) },
      },
      log: silentLogger,
      cgroupRoot,
      debounceMs: 20,
      backoffMs: 20,
      startTimeoutMs: 10_000,
    });
    let agent: Agent | undefined;
    agent = await Agent.start({
      discovery,
      log,
      capture: false,
      origDst: (s: Socket) => {
        if (s.remoteAddress !== CLIENT_IP || !dest) return undefined;
        const i = dest.lastIndexOf(':');
        return { ip: dest.slice(0, i), port: Number(dest.slice(i + 1)) };
      },
      sourceLookup: (_od, srcIp) => (srcIp === CLIENT_IP ? agent?.state.workload('shop', CLIENT_POD) : undefined),
    });
    t.teardown(() => agent!.stop({ drainMs: 0 }));
    return { agent, setDest: (d: string) => (dest = d) };
  };
  const linesB: Record<string, any>[] = [];
  const b = await start('node-b', NODE_B, capture(linesB));
  const a = await start('node-a', NODE_A, silentLogger);
  t.notOk(b.agent.state.workload('shop', CLIENT_POD), "node-b does not know the client's pod");
  t.equal(a.agent.state.workload('shop', CLIENT_POD)?.workload, 'client', "node-a knows it, and its Deployment's name");

  const dispatcher = new UndiciAgent({
    connect: ((opts: { hostname: string; port: string }, cb: (e: Error | null, s: Socket | null) => void) => {
      const s = netConnect({ host: opts.hostname, port: Number(opts.port), localAddress: CLIENT_IP });
      s.once('connect', () => cb(null, s));
      s.once('error', (e) => cb(e, null));
    }) as never,
  });
  t.teardown(() => dispatcher.close());
  const metricsB = async () => (await (await request(`http://${NODE_B}:${b.agent.addresses.metrics}/metrics`)).body.text()).split('\n');

  await t.test('HTTP', async (t) => {
    a.setDest('10.96.0.20:80');
    for (let i = 0; i < 3; i++) {
      const r = await request(`http://127.0.0.1:${a.agent.addresses.outbound}/k8s`, { dispatcher });
      await r.body.text();
      t.equal(r.statusCode, 200, `request ${i} crossed the tunnel`);
      t.equal(r.headers['x-pod'], 'api-0');
    }
    const m = await metricsB();
    t.ok(
      m.some((l) =>
        /^weft_requests_total\{source_workload="client",source_namespace="shop",destination_service="shop\/api-0",.*response_code="200",.*connection_security_policy="mutual_tls",source_canonical_service="storefront",.*\} 3$/.test(
          l,
        ),
      ),
      `node-b counts the client's Deployment and canonical service: ${m.filter((l) => l.startsWith('weft_requests_total{')).join(' | ')}`,
    );
    t.ok(m.some((l) => /^weft_request_duration_seconds_count\{source_workload="client",source_namespace="shop",.*source_canonical_service="storefront",.*\} 3$/.test(l)));
    const line = linesB.find((l) => l.msg === 'access' && l.path === '/k8s');
    t.equal(line?.src_workload, `shop/${CLIENT_POD}`, "node-b's access line names the calling pod");
    t.equal(line?.principal, 'cluster.local/ns/shop/sa/client');
  });

  await t.test('TCP', async (t) => {
    a.setDest('10.96.0.40:7000');
    const got = await new Promise<string>((resolve, reject) => {
      const s = netConnect({ host: '127.0.0.1', port: a.agent.addresses.outbound, localAddress: CLIENT_IP });
      let b = '';
      s.on('connect', () => s.write('k8s-tcp'));
      s.on('data', (d) => {
        b += d.toString();
        if (b.includes('k8s-tcp')) s.end();
      });
      s.on('close', () => resolve(b));
      s.on('error', reject);
    });
    t.match(got, /k8s-tcp/);
    let m: string[] = [];
    for (let i = 0; i < 100; i++) {
      m = await metricsB();
      if (m.some((l) => l.startsWith('weft_tcp_connections_closed_total{source_workload="client"'))) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    t.ok(
      m.some((l) =>
        /^weft_tcp_connections_opened_total\{source_workload="client",source_namespace="shop",source_canonical_service="storefront",destination_service="shop\/echo-0",connection_security_policy="mutual_tls"\} 1$/.test(
          l,
        ),
      ),
      `node-b: ${m.filter((l) => l.startsWith('weft_tcp_connections_opened_total{')).join(' | ')}`,
    );
    const line = linesB.find((l) => l.msg === 'access' && l.protocol === 'tcp' && l.direction === 'inbound');
    t.equal(line?.src_workload, `shop/${CLIENT_POD}`);
  });
});
