import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { defaultConfigPath } from '../../src/config/default-config.js';
import { DEFAULT_CIRCUIT_BREAKER, DEFAULT_CONNECTION_POOL, DEFAULT_HEALTH_CHECK, DEFAULT_OUTLIER_DETECTION, DEFAULT_RETRIES } from '../../src/config/defaults.js';
import { loadConfigFile, parseConfig } from '../../src/config/load.js';
import { DEFAULT_PORTS, MESH_LABEL, MESH_LABEL_ENABLED } from '../../src/config/types.js';
import type { ConfigError } from '../../src/errors.js';

const MINIMAL = `
node: { name: node-a, address: 10.77.0.1 }
workloads:
  - { name: api-0, namespace: shop, ip: 10.77.0.11 }
services:
  - { name: api, namespace: shop, vip: 10.96.0.20, ports: [ { port: 80 } ] }
`;

t.test('top-level defaults', async (t) => {
  const c = parseConfig('node: { name: node-a, address: 10.77.0.1 }\n', 't', { env: {} });
  t.same(c, {
    node: { name: 'node-a', address: '10.77.0.1' },
    nodes: [],
    mesh: { trustDomain: 'cluster.local' },
    ports: DEFAULT_PORTS,
    ca: {},
    stateDir: '/var/lib/weft',
    namespaces: [],
    workloads: [],
    services: [],
    requestAuthentications: [],
    policies: [],
    routes: [],
    agent: { drainTimeout: 20_000, logLevel: 'info', jwksAllowLocalUris: false, maxDownstreamConnections: { outbound: 16_384, inbound: 4_096, tunnel: 16_384 } },
  });
  t.not(c.ports, DEFAULT_PORTS, 'a copy, not the shared constant');
  const p = parseConfig('node: { name: n, address: 10.0.0.1 }\nports: { admin: 9000 }\n', 't', { env: {} });
  t.same(p.ports, { ...DEFAULT_PORTS, admin: 9000 }, 'partial ports merge with the defaults');
});

t.test('workload, service and namespace defaults', async (t) => {
  const c = parseConfig(MINIMAL, 't', { env: {} });
  t.same(c.workloads, [{ name: 'api-0', namespace: 'shop', node: 'node-a', ip: '10.77.0.11', serviceAccount: 'default', labels: {}, weight: 1, ready: true, probePorts: [] }]);
  t.same(c.namespaces, [{ name: 'shop', labels: {}, peerAuthentication: 'strict' }], 'an undeclared namespace exists, unlabelled');
  t.same(c.services[0], {
    name: 'api',
    namespace: 'shop',
    vip: '10.96.0.20',
    ports: [{ port: 80, targetPort: 80, protocol: 'tcp' }],
    selector: {},
    trafficPolicy: { loadBalancer: { type: 'round-robin' }, timeout: 15_000, connectionPool: DEFAULT_CONNECTION_POOL },
  });
  const named = parseConfig(
    `node: { name: n, address: 10.0.0.1 }
services:
  - name: s
    namespace: a
    vip: 10.96.0.1
    ports: [ { name: http, port: 80 }, { name: http-alt, port: 81 }, { name: grpc-api, port: 82 }, { name: https, port: 443 }, { name: http, port: 84, protocol: tcp } ]
`.replace('{ name: http, port: 84', '{ name: plain, port: 84'),
    't',
    { env: {} },
  );
  t.same(
    named.services[0]!.ports.map((p) => p.protocol),
    ['http', 'http', 'grpc', 'tcp', 'tcp'],
    'protocol from the port name (Istio convention; grpc-* is gRPC, DESIGN.md)',
  );
});

t.test('peer authentication: key, then label, then strict', async (t) => {
  const c = parseConfig(
    `node: { name: n, address: 10.0.0.1 }
namespaces:
  - { name: a, labels: { weft.io/mesh: enabled } }
  - { name: b, labels: { weft.io/peer-authentication: permissive } }
  - { name: c, labels: { weft.io/peer-authentication: permissive }, peerAuthentication: strict }
  - { name: d, peerAuthentication: permissive }
`,
    't',
    { env: {} },
  );
  t.same(
    c.namespaces.map((n) => [n.name, n.peerAuthentication]),
    [
      ['a', 'strict'],
      ['b', 'permissive'],
      ['c', 'strict'],
      ['d', 'permissive'],
    ],
  );
  t.equal(c.namespaces[0]!.labels[MESH_LABEL], MESH_LABEL_ENABLED);
});

t.test('optional policy blocks take defaults only when present', async (t) => {
  const c = parseConfig(
    `node: { name: n, address: 10.0.0.1 }
services:
  - name: a
    namespace: x
    vip: 10.96.0.1
    ports: [ { port: 80, protocol: http } ]
    trafficPolicy:
      healthCheck: {}
      outlierDetection: {}
      retries: {}
      circuitBreaker: {}
      connectionPool: { maxConnections: 10 }
  - name: b
    namespace: x
    vip: 10.96.0.2
    ports: [ { port: 80, protocol: http } ]
    trafficPolicy:
      loadBalancer: { type: ring-hash, hashOn: { header: X-User } }
      healthCheck: { type: http, interval: 10s }
      outlierDetection: { baseEjectionTime: 10m }
      retries: { attempts: 5, retryOn: [retriable-status-codes], retriableStatusCodes: [503], budget: { percent: 50 }, backoff: { base: 100ms } }
      circuitBreaker: { openDuration: 2m }
      timeout: 0
  - name: c
    namespace: x
    vip: 10.96.0.3
    ports: [ { port: 80 } ]
    trafficPolicy: { loadBalancer: { type: maglev, hashOn: { sourceIp: true } } }
`,
    't',
    { env: {} },
  );
  const [a, b, cc] = c.services.map((s) => s.trafficPolicy);
  t.same(a!.healthCheck, DEFAULT_HEALTH_CHECK);
  t.same(a!.outlierDetection, DEFAULT_OUTLIER_DETECTION);
  t.same(a!.retries, DEFAULT_RETRIES);
  t.same(a!.circuitBreaker, DEFAULT_CIRCUIT_BREAKER);
  t.same(a!.connectionPool, { ...DEFAULT_CONNECTION_POOL, maxConnections: 10 });
  t.same(DEFAULT_HEALTH_CHECK, { type: 'tcp', path: '/healthz', interval: 5000, timeout: 1000, unhealthyThreshold: 3, healthyThreshold: 2, jitter: 0.1 });
  t.same(DEFAULT_RETRIES, {
    attempts: 2,
    perTryTimeout: 0,
    retryOn: ['connect-failure', 'reset', '5xx'],
    retriableStatusCodes: [],
    budget: { percent: 20, minPerSecond: 10 },
    backoff: { base: 25, max: 250 },
  });
  t.same(DEFAULT_CIRCUIT_BREAKER, { consecutiveFailures: 5, openDuration: 5000, maxOpenDuration: 60_000, halfOpenRequests: 1 });
  t.same(DEFAULT_OUTLIER_DETECTION, {
    consecutive5xx: 5,
    consecutiveGatewayErrors: 5,
    interval: 10_000,
    baseEjectionTime: 30_000,
    maxEjectionTime: 300_000,
    maxEjectionPercent: 10,
    successRateMinimumHosts: 5,
    successRateRequestVolume: 100,
    successRateStdevFactor: 1.9,
    panicThreshold: 50,
  });
  t.same(DEFAULT_CONNECTION_POOL, { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, connectTimeout: 5000, idleTimeout: 3_600_000 });

  t.same(b!.loadBalancer, { type: 'ring-hash', hashOn: { header: 'x-user' }, minRingSize: 1024 }, 'header lower-cased, ring size default');
  t.same(b!.healthCheck, { ...DEFAULT_HEALTH_CHECK, type: 'http', interval: 10_000 });
  t.equal(b!.outlierDetection!.maxEjectionTime, 600_000, 'the ejection cap follows a longer base');
  t.same(b!.retries, {
    ...DEFAULT_RETRIES,
    attempts: 5,
    retryOn: ['retriable-status-codes'],
    retriableStatusCodes: [503],
    budget: { percent: 50, minPerSecond: 10 },
    backoff: { base: 100, max: 1000 },
  });
  t.same(b!.circuitBreaker, { ...DEFAULT_CIRCUIT_BREAKER, openDuration: 120_000, maxOpenDuration: 120_000 });
  t.equal(b!.timeout, 0, 'timeout 0 disables');
  t.same(cc!.loadBalancer, { type: 'maglev', hashOn: { sourceIp: true }, tableSize: 65537 });
  t.notOk('healthCheck' in cc!, 'absent blocks stay absent');
  t.notOk('retries' in cc!);
});

t.test('policies and request authentications are normalized', async (t) => {
  const c = parseConfig(
    `node: { name: n, address: 10.0.0.1 }
requestAuthentications:
  - name: jwt
    namespace: shop
    jwtRules: [ { issuer: https://issuer.example, jwksFile: keys/jwks.json, fromHeader: X-Token } ]
policies:
  - name: deny-all
    namespace: shop
    action: DENY
    rules: [ {} ]
  - name: readers
    namespace: shop
    selector: { app: api }
    rules:
      - from: [ { principals: [cluster.local/ns/shop/sa/client] } ]
        to: [ { ports: [8080], methods: [GET], paths: [/items, /items/*] } ]
`,
    't',
    { env: {}, baseDir: '/etc/weft' },
  );
  t.same(c.requestAuthentications, [
    {
      name: 'jwt',
      namespace: 'shop',
      selector: {},
      jwtRules: [{ issuer: 'https://issuer.example', audiences: [], jwksFile: '/etc/weft/keys/jwks.json', fromHeader: 'x-token', forwardOriginalToken: true }],
    },
  ]);
  t.same(c.policies, [
    { name: 'deny-all', namespace: 'shop', selector: {}, action: 'DENY', rules: [{ from: [], to: [] }] },
    {
      name: 'readers',
      namespace: 'shop',
      selector: { app: 'api' },
      action: 'ALLOW',
      rules: [{ from: [{ principals: ['cluster.local/ns/shop/sa/client'] }], to: [{ ports: [8080], methods: ['GET'], paths: ['/items', '/items/*'] }] }],
    },
  ]);
  t.same(c.namespaces, [{ name: 'shop', labels: {}, peerAuthentication: 'strict' }]);
});

t.test('env substitution', async (t) => {
  const text = `
node: { name: node-a, address: 10.77.0.1 }
stateDir: \${STATE:-/tmp/weft-state}
ports:
  admin: \${ADMIN_PORT}
workloads:
  - { name: api-0, namespace: shop, ip: 10.77.0.11, cgroup: "\${CGROUP_ROOT}/shop/api-0", labels: { port: "\${ADMIN_PORT}", lit: "$\${NOT_A_VAR}" } }
`;
  const c = parseConfig(text, 't', { env: { CGROUP_ROOT: '/sys/fs/cgroup/unified/demo', ADMIN_PORT: '9000' } });
  t.equal(c.workloads[0]!.cgroup, '/sys/fs/cgroup/unified/demo/shop/api-0');
  t.equal(c.stateDir, '/tmp/weft-state', 'default when unset');
  t.equal(c.ports.admin, 9000, 'an unquoted value is typed after substitution');
  t.equal(c.workloads[0]!.labels.port, '9000', 'a quoted one stays a string');
  t.equal(c.workloads[0]!.labels.lit, '${NOT_A_VAR}', '$${ escapes');
  t.equal(parseConfig(text, 't', { env: { CGROUP_ROOT: '/x', ADMIN_PORT: '1', STATE: '/s' } }).stateDir, '/s');

  const err = t.throws(() => parseConfig(text, 'f.yaml', { env: { ADMIN_PORT: '9000' } })) as ConfigError;
  t.same(err.problems, ['workloads[0].cgroup (line 7): environment variable CGROUP_ROOT is not set (write ${CGROUP_ROOT:-default} to give a default)']);
  const bad = t.throws(() => parseConfig('node: { name: n, address: "${ADDR" }\n', 't', { env: {} })) as ConfigError;
  t.same(bad.problems, ['node.address (line 1): malformed reference in "${ADDR": write ${NAME} or ${NAME:-default} (or $${ for a literal ${)']);
  t.equal(parseConfig('node: { name: n, address: "${A}" }\n', 't', { env: { A: '10.1.2.3' } }).node.address, '10.1.2.3');
  const later = t.throws(() => parseConfig('node: { name: n, address: "${A}" }\n', 't', { env: { A: 'nope' } })) as ConfigError;
  t.same(later.problems, ['node.address: must be an IPv4 address like 10.77.0.1 (got "nope")'], 'substituted values are validated');
  const flow = t.throws(() => parseConfig('node: { name: n, address: ${A} }\n', 't', { env: { A: '10.0.0.1' } })) as ConfigError;
  t.match(flow.problems[0], /^line 1, column \d+: .*\(inside \{ \} or \[ \], quote a \$\{VAR\} value: "\$\{VAR\}"\)$/);
  t.ok(flow.problems.length <= 4, 'cascading YAML errors are capped');
  // Comments are not values: a ${VAR} there is ignored.
  t.ok(parseConfig('# uses ${NOTHING}\nnode: { name: n, address: 10.0.0.1 }\n', 't', { env: {} }));
});

t.test('the embedded default.yaml parses', async (t) => {
  const c = parseConfig(readFileSync(defaultConfigPath(), 'utf8'), 'default.yaml', { env: { CGROUP_ROOT: '/sys/fs/cgroup/unified/weft' } });
  t.same(c.node, { name: 'node-a', address: '10.77.0.1' });
  t.same(
    c.namespaces.map((n) => [n.name, n.labels[MESH_LABEL] ?? null]),
    [
      ['shop', 'enabled'],
      ['legacy', null],
      ['bookinfo', 'enabled'],
    ],
  );
  const api = c.workloads.filter((w) => w.labels.app === 'api');
  t.same(
    api.map((w) => [w.name, w.weight, w.node]),
    [
      ['api-0', 1, 'node-a'],
      ['api-1', 1, 'node-a'],
      ['api-2', 2, 'node-a'],
      ['api-3', 1, 'node-b'],
    ],
  );
  t.same(
    c.workloads.filter((w) => w.labels.app === 'web').map((w) => w.name),
    ['web-0', 'web-1'],
  );
  t.equal(c.workloads[0]!.cgroup, '/sys/fs/cgroup/unified/weft/api-0');
  const svc = Object.fromEntries(c.services.map((s) => [s.name, s]));
  t.equal(svc.api!.trafficPolicy.loadBalancer.type, 'round-robin');
  t.equal(svc.web!.trafficPolicy.loadBalancer.type, 'peak-ewma');
  t.equal(svc.echo!.ports[0]!.protocol, 'tcp');
  t.same(svc.api!.trafficPolicy.fallback, { service: 'api-degraded' });
  t.ok(svc.api!.trafficPolicy.healthCheck && svc.api!.trafficPolicy.outlierDetection && svc.api!.trafficPolicy.retries && svc.api!.trafficPolicy.circuitBreaker);
  t.equal(c.workloads.filter((w) => w.labels.app === 'api-degraded').length, 1);
  t.throws(() => parseConfig(readFileSync(defaultConfigPath(), 'utf8'), 'default.yaml', { env: {} }), { message: /CGROUP_ROOT is not set/ });
});

t.test('loadConfigFile: relative paths against the file, unreadable file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, stringify({ node: { name: 'n', address: '10.0.0.1' }, stateDir: 'state', ca: { url: 'https://ca:1', rootCert: 'root.pem', tokenFile: '/abs/token' } }));
  const c = await loadConfigFile(file, { env: {} });
  t.equal(c.stateDir, join(dir, 'state'));
  t.same(c.ca, { url: 'https://ca:1', rootCert: join(dir, 'root.pem'), tokenFile: '/abs/token' });
  await t.rejects(loadConfigFile(join(dir, 'missing.yaml')), { name: 'ConfigError', problems: [/^cannot read the config file: ENOENT/] });
});

t.test('YAML anchors and merge keys share policy; x- keys hold them', async (t) => {
  const c = parseConfig(
    `node: { name: n, address: 10.0.0.1 }
x-policy: &policy
  loadBalancer: { type: least-request }
  timeout: 3s
services:
  - { name: a, namespace: x, vip: 10.96.0.1, ports: [ { port: 80 } ], trafficPolicy: *policy }
  - name: b
    namespace: x
    vip: 10.96.0.2
    ports: [ { port: 80 } ]
    trafficPolicy: { <<: *policy, timeout: 4s }
`,
    't',
    { env: {} },
  );
  t.same(
    c.services.map((s) => [s.trafficPolicy.loadBalancer.type, s.trafficPolicy.timeout]),
    [
      ['least-request', 3000],
      ['least-request', 4000],
    ],
  );
  t.notOk('x-policy' in c);
});
