// Routes on the bookinfo shape through real eBPF capture: productpage (a pod in its own netns
// and cgroup) calls the reviews VIP; connect4 sends the connection to the agent, whose route
// stage picks the rule. Root only.
import t from 'tap';
import { MeshSandbox } from '../../src/sandbox/mesh-sandbox.js';
import { canRunE2e, curlBurst, until } from '../lib/e2e.js';

const config = (canary: string) => `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${WEFT_STATE_DIR}
namespaces:
  - { name: bookinfo, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: productpage-0, namespace: bookinfo, ip: 10.77.0.51, serviceAccount: productpage, labels: { app: productpage }, cgroup: "\${CGROUP_ROOT}/productpage-0" }
  - { name: reviews-v1-0, namespace: bookinfo, ip: 10.77.0.52, serviceAccount: reviews, labels: { app: reviews, version: v1 }, cgroup: "\${CGROUP_ROOT}/reviews-v1-0" }
  - { name: reviews-v2-0, namespace: bookinfo, ip: 10.77.0.53, serviceAccount: reviews, labels: { app: reviews, version: v2 }, cgroup: "\${CGROUP_ROOT}/reviews-v2-0" }
  - { name: reviews-v3-0, namespace: bookinfo, ip: 10.77.0.54, serviceAccount: reviews, labels: { app: reviews, version: v3 }, cgroup: "\${CGROUP_ROOT}/reviews-v3-0" }
  - { name: shadow-0, namespace: bookinfo, ip: 10.77.0.55, serviceAccount: shadow, labels: { app: shadow }, cgroup: "\${CGROUP_ROOT}/shadow-0" }
services:
  - { name: productpage, namespace: bookinfo, vip: 10.96.0.50, ports: [ { port: 9080, targetPort: 8080, protocol: http } ], selector: { app: productpage } }
  - { name: reviews, namespace: bookinfo, vip: 10.96.0.51, ports: [ { port: 9080, targetPort: 8080, protocol: http } ], selector: { app: reviews, version: v1 } }
  - { name: reviews-v1, namespace: bookinfo, vip: 10.96.0.52, ports: [ { port: 9080, targetPort: 8080, protocol: http } ], selector: { app: reviews, version: v1 } }
  - { name: reviews-v2, namespace: bookinfo, vip: 10.96.0.53, ports: [ { port: 9080, targetPort: 8080, protocol: http } ], selector: { app: reviews, version: v2 } }
  - { name: reviews-v3, namespace: bookinfo, vip: 10.96.0.54, ports: [ { port: 9080, targetPort: 8080, protocol: http } ], selector: { app: reviews, version: v3 } }
  - { name: shadow, namespace: bookinfo, vip: 10.96.0.55, ports: [ { port: 9080, targetPort: 8080, protocol: http } ], selector: { app: shadow } }
routes:
  - name: reviews
    namespace: bookinfo
    parentRefs: [ { name: reviews, port: 9080 } ]
    rules:
      - name: jason
        matches: [ { path: { value: /reviews }, headers: [ { name: end-user, value: jason } ] } ]
        backendRefs: [ { name: reviews-v2 } ]
      - name: tester
        matches: [ { path: { value: /reviews }, headers: [ { name: end-user, value: tester } ] } ]
        fault: { abort: { httpStatus: 503, percent: 100 } }
      - name: canary
        matches: [ { path: { value: /reviews } } ]
        filters:
          - { type: RequestMirror, requestMirror: { backendRef: { name: shadow } } }
        backendRefs:
${canary}
`;

const SPLIT = '          - { name: reviews-v1, weight: 80 }\n          - { name: reviews-v3, weight: 20 }';

t.test('bookinfo routes through eBPF capture', async (t) => {
  if (!canRunE2e(t)) return;
  const sb = await MeshSandbox.create({ configText: config(SPLIT), prefix: 'weft-rt' });
  t.teardown(() => sb.destroy());
  const pp = sb.pod('productpage-0');
  const url = 'http://10.96.0.51:9080/reviews/1';
  const state = async (w: string) => {
    const pod = sb.pod(w);
    const r = await pod.node.exec('curl', ['-s', '--max-time', '3', '--interface', pod.node.address, `http://${pod.ip}:8080/_ctl/state`]);
    try {
      return JSON.parse(r.stdout).state.requests as number;
    } catch {
      return -1; // not answered (yet): the caller waits
    }
  };

  const jason = await curlBurst(pp, url, 10, ['-H', 'end-user: jason']);
  t.same(jason.pods, { 'reviews-v2-0': 10 }, 'end-user: jason always reaches v2');

  const n = 200;
  const split = await curlBurst(pp, url, n);
  t.same(split.statuses, { 200: n });
  // v3 ~ Binomial(200, 0.2): mean 40, sd 5.7; +-5 sd is [12, 68].
  const v3 = split.pods['reviews-v3-0'] ?? 0;
  t.ok(v3 > 12 && v3 < 68, `reviews-v3-0 got ${v3} of ${n}`);
  t.equal((split.pods['reviews-v1-0'] ?? 0) + v3, n, 'only v1 and v3 serve the canary');
  // The mirror is checked on the agent's own count too: copies sent and answered.
  await until('the mirror copies', async () => (await sb.configDump()).routes.mirror.answered >= n, 15_000);
  const shadow = await state('shadow-0');
  t.ok(shadow === -1 || shadow >= n, `the shadow's own count: ${shadow} (-1: its control port not reachable from the node)`);

  const tester = await curlBurst(pp, url, 3, ['-H', 'end-user: tester']);
  t.same(tester.statuses, { 503: 3 }, 'the fault for tester');
  t.same(tester.errors, {}, 'an injected fault is no agent error');

  const other = await curlBurst(pp, 'http://10.96.0.51:9080/details', 1);
  t.same(other.errors, { no_route: 1 });
  t.same(other.statuses, { 404: 1 });

  // Live: all of the canary to v3, and a backend that does not exist yet.
  await sb.writeConfig(config('          - { name: reviews-v3, weight: 1 }\n          - { name: reviews-v9, weight: 0 }'));
  await until('the new split', async () => (await curlBurst(pp, url, 1)).pods['reviews-v3-0'] === 1, 15_000);
  t.same((await curlBurst(pp, url, 20)).pods, { 'reviews-v3-0': 20 });
  await sb.writeConfig(config('          - { name: reviews-v9 }'));
  await until('no_backend', async () => (await curlBurst(pp, url, 1)).errors.no_backend === 1, 15_000);
  t.same((await curlBurst(pp, url, 1, ['-H', 'end-user: jason'])).pods, { 'reviews-v2-0': 1 }, 'the rest of the route works');

  const access = sb.agentLines().filter((l) => l.msg === 'access' && l.route === 'bookinfo/reviews');
  t.ok(new Set(access.map((l) => l.rule)).has('jason') && access.some((l) => l.rule === 'canary'), 'access lines name the route and rule');
});
