import t from 'tap';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { configProblems } from '../lib/config-problems.js';

/** A small valid config, fresh each call so that tests can edit it. */
function base(): any {
  return {
    node: { name: 'node-a', address: '10.77.0.1' },
    namespaces: [{ name: 'shop', labels: { 'weft.io/mesh': 'enabled' } }],
    workloads: [
      { name: 'api-0', namespace: 'shop', ip: '10.77.0.11', serviceAccount: 'api', labels: { app: 'api' } },
      { name: 'api-1', namespace: 'shop', ip: '10.77.0.12', serviceAccount: 'api', labels: { app: 'api' } },
    ],
    services: [
      { name: 'api', namespace: 'shop', vip: '10.96.0.20', ports: [{ port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'api' } },
      { name: 'api-degraded', namespace: 'shop', vip: '10.96.0.21', ports: [{ port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'x' } },
    ],
  };
}

const problemsOfText = configProblems;
const problemsOf = (raw: unknown) => problemsOfText(stringify(raw));

function withPolicy(tp: unknown): any {
  const c = base();
  c.services[0].trafficPolicy = tp;
  return c;
}
const TP = 'services[0].trafficPolicy';

t.test('the base config is valid', async (t) => {
  t.same(problemsOf(base()), []);
});

t.test('ConfigError names the source and every problem', async (t) => {
  const c = base();
  c.node.address = 'nope';
  c.workloads[0].weight = 0;
  const err = t.throws(() => parseConfig(stringify(c), 'mesh.yaml', { env: {} })) as ConfigError;
  t.type(err, ConfigError);
  t.equal(err.code, 'WEFT_ERR_CONFIG');
  t.match(err.message, /^invalid config mesh\.yaml: node\.address: must be an IPv4 address/);
  t.same(err.problems, ['node.address: must be an IPv4 address like 10.77.0.1 (got "nope")', 'workloads[0].weight: must be an integer from 1 to 1000000 (got 0)']);
});

t.test('YAML syntax errors carry line and column', async (t) => {
  t.same(problemsOfText('node: { name: a, address: 10.0.0.1 }\nnode: {}\n'), ['line 2, column 1: Map keys must be unique']);
  const p = problemsOfText('node:\n  name: a\n   address: [\n');
  t.ok(p.length >= 1);
  t.match(p[0], /^line \d+, column \d+: /);
  t.same(problemsOfText(''), ['(top level): the config is empty; it needs at least node: { name, address }']);
  t.same(problemsOfText('- a\n- b\n'), ['(top level): must be a mapping (got a list)']);
});

t.test('required keys and unknown keys', async (t) => {
  t.same(problemsOfText('mesh: {}\n'), ['node: is required']);
  t.same(problemsOfText('node: { name: a }\n'), ['node.address: is required']);
  const c = base();
  c.services[0].trafficPolicy = { loadBalncer: { type: 'random' } };
  c.workloads[0].wieght = 2;
  c.extra = true;
  t.same(problemsOf(c), [
    'extra: unknown key; expected one of: node, nodes, mesh, ports, ca, stateDir, namespaces, workloads, services, requestAuthentications, policies, routes, agent',
    'workloads[0].wieght: unknown key (did you mean "weight"?)',
    'services[0].trafficPolicy.loadBalncer: unknown key (did you mean "loadBalancer"?)',
  ]);
  const d = base();
  d.services[0].trafficPolicy = null;
  t.same(problemsOf(d), [`${TP}: must be a mapping (write {} to take every default)`]);
});

t.test('types, enums and names', async (t) => {
  const c = base();
  c.services[0].trafficPolicy = { loadBalancer: { type: 'round_robin' } };
  c.services[0].ports[0].protocol = 'udp';
  c.workloads[0].labels = { app: 'api', version: 1 };
  c.workloads[0].ready = 'yes';
  c.namespaces[0].name = 'Shop';
  t.same(problemsOf(c), [
    'namespaces[0].name: must be a DNS label: lower-case letters, digits and "-", at most 63 characters (got "Shop")',
    'workloads[0].labels.version: must be a string (quote numbers and booleans: "1", "true")',
    'workloads[0].ready: must be a boolean (true or false) (got "yes")',
    'services[0].ports[0].protocol: must be one of http, http2, grpc, tcp (got "udp")',
    `${TP}.loadBalancer.type: must be one of random, round-robin, weighted-round-robin, least-request, peak-ewma, ring-hash, maglev (got "round_robin")`,
  ]);
});

t.test('durations are checked where they appear', async (t) => {
  t.same(problemsOf(withPolicy({ timeout: 10, healthCheck: { interval: '1x' } })), [
    `${TP}.healthCheck.interval: "1x" is not a duration: use <number><unit> with units ms, s, m, h (e.g. "250ms", "1m30s")`,
    `${TP}.timeout: 10 has no unit: write e.g. "10ms" or "10s" (only 0 may be written bare)`,
  ]);
  t.same(problemsOf(withPolicy({ timeout: 0, connectionPool: { connectTimeout: '0s' } })), [`${TP}.connectionPool.connectTimeout: must be greater than 0`]);
});

t.test('IPv4 addresses', async (t) => {
  const c = base();
  c.workloads[0].ip = '10.77.0.256';
  c.services[0].vip = '10.96.0';
  c.node.address = '::1';
  t.same(problemsOf(c), [
    'node.address: must be an IPv4 address like 10.77.0.1 (got "::1")',
    'workloads[0].ip: must be an IPv4 address like 10.77.0.1 (got "10.77.0.256")',
    'services[0].vip: must be an IPv4 address like 10.77.0.1 (got "10.96.0")',
  ]);
});

t.test('ports and ranges', async (t) => {
  const c = base();
  c.services[0].ports = [{ port: 0, targetPort: 70000 }];
  c.ports = { outbound: 15001, inbound: 15001, admin: -1 };
  t.same(problemsOf(c), [
    'ports.admin: must be an integer from 0 to 65535 (got -1)',
    'services[0].ports[0].port: must be an integer from 1 to 65535 (got 0)',
    'services[0].ports[0].targetPort: must be an integer from 1 to 65535 (got 70000)',
  ]);
  const d = base();
  d.ports = { outbound: 15001, inbound: 15001 };
  t.same(problemsOf(d), ["ports.inbound: 15001 is already the outbound port; the agent's ports must differ"]);
  const e = base();
  e.ports = { outbound: 0, inbound: 0, tunnel: 0, admin: 0, metrics: 0 };
  t.same(problemsOf(e), [], 'port 0 (any free port) may repeat');
  const f = base();
  f.services[0].ports = [{ port: 80 }, { port: 80, name: 'a' }, { port: 81, name: 'a' }];
  t.same(problemsOf(f), ['services[0].ports[1].port: port 80 is listed twice', 'services[0].ports[2].name: port name a is used twice']);
  const g = base();
  g.services[0].ports = [];
  t.same(problemsOf(g), ['services[0].ports: must not be empty']);
});

t.test('duplicates', async (t) => {
  const c = base();
  c.namespaces.push({ name: 'shop' });
  c.workloads.push({ name: 'api-0', namespace: 'shop', ip: '10.77.0.11' });
  c.workloads.push({ name: 'api-0', namespace: 'other', ip: '10.77.0.99' }); // another namespace: fine
  c.services.push({ name: 'api', namespace: 'shop', vip: '10.96.0.20', ports: [{ port: 80 }] });
  c.services.push({ name: 'web', namespace: 'other', vip: '10.96.0.20', ports: [{ port: 81 }] }); // other port: fine
  t.same(problemsOf(c), [
    'namespaces[1].name: duplicate namespace shop (also namespaces[0])',
    'workloads[2].name: duplicate workload shop/api-0 (also workloads[0])',
    'workloads[2].ip: 10.77.0.11 is already the ip of workloads[0]',
    'services[2].name: duplicate service shop/api (also services[0])',
  ]);
  const d = base();
  d.services.push({ name: 'web', namespace: 'shop', vip: '10.96.0.20', ports: [{ port: 80 }] });
  t.same(problemsOf(d), ['services[2].ports[0].port: 10.96.0.20:80 is already service shop/api']);
  const e = base();
  e.workloads[0].cgroup = '/sys/fs/cgroup/a';
  e.workloads[1].cgroup = '/sys/fs/cgroup/a/';
  e.services[1].vip = '10.77.0.11';
  e.services.push({ name: 'x', namespace: 'shop', vip: '10.77.0.1', ports: [{ port: 1 }] });
  t.same(problemsOf(e), [
    'workloads[1].cgroup: /sys/fs/cgroup/a/ is already the cgroup of workloads[0]',
    'services[1].vip: 10.77.0.11 is the ip of workloads[0]; a VIP must not be a pod ip',
    'services[2].vip: 10.77.0.1 is the node address',
  ]);
  const f = base();
  f.workloads[0].cgroup = 'relative/path';
  t.same(problemsOf(f), ['workloads[0].cgroup: must be an absolute path (got "relative/path")']);
  const n = base();
  n.workloads[0].cgroup = '/sys/fs/cgroup/kubepods/pod-a';
  n.workloads[1].cgroup = '/sys/fs/cgroup/kubepods/pod-a/inner';
  t.same(problemsOf(n), ["workloads[1].cgroup: /sys/fs/cgroup/kubepods/pod-a/inner and the cgroup of workloads[0] (/sys/fs/cgroup/kubepods/pod-a) are nested: a pod's cgroup cannot hold another's"]);
  const p = base();
  p.workloads[0].probePorts = [8080, 0, 'x'];
  t.match(problemsOf(p), [/^workloads\[0\]\.probePorts\[1\]: /, /^workloads\[0\]\.probePorts\[2\]: /]);
});

t.test('load balancer and hashOn', async (t) => {
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'ring-hash' } })), [`${TP}.loadBalancer.hashOn: is required for ring-hash: { header: <name> } or { sourceIp: true }`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'maglev' } })), [`${TP}.loadBalancer.hashOn: is required for maglev: { header: <name> } or { sourceIp: true }`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'least-request', hashOn: { header: 'x-user' } } })), [`${TP}.loadBalancer.hashOn: only ring-hash and maglev use hashOn, not least-request`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { hashOn: { sourceIp: true } } })), [`${TP}.loadBalancer.hashOn: only ring-hash and maglev use hashOn, not round-robin`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'ring-hash', hashOn: { header: 'x-user', sourceIp: true } } })), [`${TP}.loadBalancer.hashOn: set either header or sourceIp, not both`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'ring-hash', hashOn: {} } })), [`${TP}.loadBalancer.hashOn: must set at least one of: header, sourceIp`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'ring-hash', hashOn: { sourceIp: false } } })), [`${TP}.loadBalancer.hashOn.sourceIp: must be true (to hash on a header, use header: <name>)`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'maglev', hashOn: { header: 'x user' } } })), [`${TP}.loadBalancer.hashOn.header: must be an HTTP header name (got "x user")`]);
  t.same(problemsOf(withPolicy({ loadBalancer: { type: 'maglev', hashOn: { sourceIp: true }, tableSize: 65536, minRingSize: 10 } })), [
    `${TP}.loadBalancer.minRingSize: only applies to ring-hash, not maglev`,
    `${TP}.loadBalancer.tableSize: must be a prime number (got 65536; e.g. 65537)`,
  ]);
  const tcp = withPolicy({ loadBalancer: { type: 'ring-hash', hashOn: { header: 'x-user' } } });
  tcp.services[0].ports[0].protocol = 'tcp';
  t.same(problemsOf(tcp), [`${TP}.loadBalancer.hashOn.header: needs an http port; this service has only tcp ports (use sourceIp: true)`]);
});

t.test('health checks', async (t) => {
  t.same(problemsOf(withPolicy({ healthCheck: { type: 'http', interval: '1s', timeout: '1s' } })), [`${TP}.healthCheck.timeout: must be shorter than interval (1s >= 1s)`]);
  t.same(problemsOf(withPolicy({ healthCheck: { interval: '500ms' } })), [`${TP}.healthCheck.timeout: must be shorter than interval (1s >= 500ms)`], 'the default timeout counts too');
  t.same(problemsOf(withPolicy({ healthCheck: { unhealthyThreshold: 0, healthyThreshold: 1.5, jitter: 2 } })), [
    `${TP}.healthCheck.unhealthyThreshold: must be an integer >= 1 (got 0)`,
    `${TP}.healthCheck.healthyThreshold: must be an integer (got 1.5)`,
    `${TP}.healthCheck.jitter: must be a number from 0 to 1 (got 2)`,
  ]);
  t.same(problemsOf(withPolicy({ healthCheck: { path: '/ready' } })), [`${TP}.healthCheck.path: is only used by http health checks; add type: http`]);
  t.same(problemsOf(withPolicy({ healthCheck: { type: 'http', path: 'ready' } })), [`${TP}.healthCheck.path: must be an absolute request path, like /healthz (got "ready")`]);
  t.same(problemsOf(withPolicy({ healthCheck: { interval: 0 } })), [`${TP}.healthCheck.interval: must be greater than 0`]);
});

t.test('outlier detection, retries, breaker, percentages', async (t) => {
  t.same(problemsOf(withPolicy({ outlierDetection: { maxEjectionPercent: 101, panicThreshold: -1, baseEjectionTime: '1m', maxEjectionTime: '30s' } })), [
    `${TP}.outlierDetection.maxEjectionPercent: must be a number from 0 to 100 (got 101)`,
    `${TP}.outlierDetection.panicThreshold: must be a number from 0 to 100 (got -1)`,
  ]);
  t.same(problemsOf(withPolicy({ outlierDetection: { baseEjectionTime: '1m', maxEjectionTime: '30s' } })), [`${TP}.outlierDetection.maxEjectionTime: must not be shorter than baseEjectionTime`]);
  t.same(problemsOf(withPolicy({ retries: { attempts: 11, budget: { percent: 150 }, retryOn: ['5xx', 'timeout'] } })), [
    `${TP}.retries.attempts: must be an integer from 0 to 10 (got 11)`,
    `${TP}.retries.retryOn[1]: must be one of connect-failure, reset, 5xx, gateway-error, retriable-status-codes, unavailable, resource-exhausted, cancelled, deadline-exceeded, internal (got "timeout")`,
    `${TP}.retries.budget.percent: must be a number from 0 to 100 (got 150)`,
  ]);
  t.same(problemsOf(withPolicy({ retries: { retryOn: ['retriable-status-codes'] } })), [`${TP}.retries.retriableStatusCodes: is required when retryOn includes retriable-status-codes`]);
  t.same(problemsOf(withPolicy({ retries: { retriableStatusCodes: [503] } })), [`${TP}.retries.retriableStatusCodes: is only used when retryOn includes retriable-status-codes`]);
  t.same(problemsOf(withPolicy({ retries: { retryOn: ['5xx', '5xx'] } })), [`${TP}.retries.retryOn: must not repeat an item (items 0 and 1 are equal)`]);
  t.same(problemsOf(withPolicy({ timeout: '1s', retries: { perTryTimeout: '2s', backoff: { base: '1s', max: '100ms' } } })), [
    `${TP}.retries.perTryTimeout: is longer than the service timeout (1s), so it never fires`,
    `${TP}.retries.backoff.max: must not be shorter than backoff.base`,
  ]);
  t.same(problemsOf(withPolicy({ circuitBreaker: { consecutiveFailures: 0, halfOpenRequests: 0 } })), [
    `${TP}.circuitBreaker.consecutiveFailures: must be an integer >= 1 (got 0)`,
    `${TP}.circuitBreaker.halfOpenRequests: must be an integer >= 1 (got 0)`,
  ]);
  t.same(problemsOf(withPolicy({ circuitBreaker: { openDuration: '10s', maxOpenDuration: '5s' } })), [`${TP}.circuitBreaker.maxOpenDuration: must not be shorter than openDuration`]);
  t.same(problemsOf(withPolicy({ connectionPool: { maxConnections: 0 } })), [`${TP}.connectionPool.maxConnections: must be an integer >= 1 (got 0)`]);
});

t.test('fallback', async (t) => {
  t.same(problemsOf(withPolicy({ fallback: { service: 'api-degraded' } })), []);
  t.same(problemsOf(withPolicy({ fallback: { service: 'api' } })), [`${TP}.fallback.service: a service cannot be its own fallback`]);
  t.same(problemsOf(withPolicy({ fallback: { service: 'nope' } })), [`${TP}.fallback.service: no service nope in namespace shop (a fallback must be in the same namespace)`]);
  const other = withPolicy({ fallback: { service: 'elsewhere' } });
  other.services.push({ name: 'elsewhere', namespace: 'other', vip: '10.96.0.99', ports: [{ port: 80, protocol: 'http' }] });
  t.same(problemsOf(other), [`${TP}.fallback.service: no service elsewhere in namespace shop (a fallback must be in the same namespace)`]);
  const ports = withPolicy({ fallback: { service: 'api-degraded' } });
  ports.services[0].ports.push({ port: 90, protocol: 'tcp' });
  ports.services[1].ports[0].protocol = 'tcp';
  t.same(problemsOf(ports), [`${TP}.fallback.service: api-degraded port 80 is tcp, but api port 80 is http`, `${TP}.fallback.service: api-degraded has no port 90, which api serves`]);
  const cycle = withPolicy({ fallback: { service: 'api-degraded' } });
  cycle.services[1].trafficPolicy = { fallback: { service: 'api' } };
  t.same(problemsOf(cycle), [
    `${TP}.fallback.service: fallbacks form a cycle: api -> api-degraded -> api`,
    `services[1].trafficPolicy.fallback.service: fallbacks form a cycle: api-degraded -> api -> api-degraded`,
  ]);
});

t.test('request authentications', async (t) => {
  const c = base();
  c.requestAuthentications = [
    { name: 'a', namespace: 'shop', jwtRules: [{ issuer: 'https://i', jwksFile: '/j.json', jwksUri: 'https://i/jwks' }] },
    { name: 'b', namespace: 'shop', jwtRules: [{ issuer: 'https://i' }, { issuer: 'https://i', jwksUri: 'ftp://x' }] },
    { name: 'a', namespace: 'shop', jwtRules: [] },
  ];
  t.same(problemsOf(c), ['requestAuthentications[1].jwtRules[1].jwksUri: must be an http:// or https:// URL (got "ftp://x")', 'requestAuthentications[2].jwtRules: must not be empty']);
  c.requestAuthentications[1].jwtRules[1].jwksUri = 'https://i/jwks';
  c.requestAuthentications[2].jwtRules = [{ issuer: 'x', jwksUri: 'https://x' }];
  t.same(problemsOf(c), [
    'requestAuthentications[2].name: duplicate request authentication shop/a (also requestAuthentications[0])',
    'requestAuthentications[0].jwtRules[0]: set exactly one of jwksFile or jwksUri',
    'requestAuthentications[1].jwtRules[0]: set exactly one of jwksFile or jwksUri',
  ]);
});

t.test('authorization policies', async (t) => {
  const c = base();
  c.policies = [
    {
      name: 'p',
      namespace: 'shop',
      action: 'ALLOW',
      rules: [
        {
          from: [{ principals: ['cluster.local/ns/shop/sa/*', 'spiffe://cluster.local/ns/a/sa/b', 'cluster.*/ns'] }, { namespaces: ['*'], notIpBlocks: ['10.0.0.0/8', '10.0.0.0/33', 'host'] }, {}],
          to: [{ ports: [8080, 0], methods: ['GET', 'get'], paths: ['/items', '/items/*', '*.json', '/a/*/b', 'items', '**'] }, { hosts: ['*.example.com', 'a*b'] }],
        },
      ],
    },
  ];
  t.same(problemsOf(c), [
    'policies[0].rules[0].from[2]: must set at least one of: principals, notPrincipals, namespaces, notNamespaces, requestPrincipals, notRequestPrincipals, ipBlocks, notIpBlocks',
    'policies[0].rules[0].to[0].ports[1]: must be an integer from 1 to 65535 (got 0)',
    'policies[0].rules[0].to[0].methods[1]: must be an upper-case HTTP method, like GET (got "get")',
  ]);
  c.policies[0].rules[0].from.pop();
  c.policies[0].rules[0].to[0].ports = [8080];
  c.policies[0].rules[0].to[0].methods = ['GET'];
  t.same(problemsOf(c), [
    'policies[0].rules[0].from[0].principals[1]: write principals without "spiffe://" (e.g. cluster.local/ns/a/sa/b)',
    'policies[0].rules[0].from[0].principals[2]: "cluster.*/ns": a * is allowed only alone, at the start (suffix match) or at the end (prefix match)',
    'policies[0].rules[0].from[1].notIpBlocks[1]: must be an IPv4 address or CIDR block like 10.0.0.0/8 (got "10.0.0.0/33")',
    'policies[0].rules[0].from[1].notIpBlocks[2]: must be an IPv4 address or CIDR block like 10.0.0.0/8 (got "host")',
    'policies[0].rules[0].to[0].paths[3]: "/a/*/b": a * is allowed only alone, at the start (suffix match) or at the end (prefix match)',
    'policies[0].rules[0].to[0].paths[4]: "items": a path must start with / (or * for a suffix match)',
    'policies[0].rules[0].to[0].paths[5]: "**": a * is allowed only alone, at the start (suffix match) or at the end (prefix match)',
    'policies[0].rules[0].to[1].hosts[1]: "a*b": a * is allowed only alone, at the start (suffix match) or at the end (prefix match)',
  ]);
  const d = base();
  d.policies = [
    { name: 'p', namespace: 'shop', action: 'allow', rules: [{ from: [{ principals: [] }], unless: [] }] },
    { name: 'p', namespace: 'shop' },
  ];
  t.same(problemsOf(d), [
    'policies[0].action: must be one of ALLOW, DENY (got "allow")',
    'policies[0].rules[0].unless: unknown key; expected one of: from, to',
    'policies[0].rules[0].from[0].principals: must not be empty',
  ]);
  d.policies[0] = { name: 'p', namespace: 'shop', action: 'DENY' };
  t.same(problemsOf(d), ['policies[1].name: duplicate policy shop/p (also policies[0])']);
});

t.test('namespaces, peer authentication label, CA and agent', async (t) => {
  const c = base();
  c.namespaces[0].labels['weft.io/peer-authentication'] = 'off';
  c.namespaces[0].peerAuthentication = 'none';
  c.ca = { rootCert: 'root.pem' };
  c.agent = { logLevel: 'verbose', drainTimeout: '5' };
  c.mesh = { trustDomain: 'Cluster_Local' };
  t.same(problemsOf(c), [
    'mesh.trustDomain: must be a DNS name: lower-case letters, digits, "-" and ".", at most 253 characters (got "Cluster_Local")',
    'namespaces[0].peerAuthentication: must be one of strict, permissive (got "none")',
    'agent.drainTimeout: "5" has no unit: write e.g. "5ms" or "5s"',
    'agent.logLevel: must be one of fatal, error, warn, info, debug, trace, silent (got "verbose")',
  ]);
  delete c.namespaces[0].peerAuthentication;
  delete c.agent;
  delete c.mesh;
  t.same(problemsOf(c), [
    'ca.rootCert: is only used with ca.url (a remote CA); the embedded CA needs none',
    'namespaces[0].labels["weft.io/peer-authentication"]: must be strict or permissive (got "off")',
  ]);
  const d = base();
  d.ca = { url: 'http://ca:1234' };
  t.same(problemsOf(d), ['ca.url: must be an https:// URL (got "http://ca:1234")']);
  d.ca = { url: 'https://ca:1234' };
  t.same(problemsOf(d), ["ca.rootCert: is required with ca.url (the remote CA's root certificate)", 'ca.tokenFile: is required with ca.url (from `weft ca token`)']);
});

t.test('nodes: peer agents by name', async (t) => {
  const c = base();
  c.nodes = [
    { name: 'node-a', address: '10.77.0.1' },
    { name: 'node-b', address: '10.77.1.1' },
  ];
  t.same(problemsOf(c), [], 'the local node may be listed, with its own address');
  t.same(parseConfig(stringify(c), 't', { env: {} }).nodes, [{ name: 'node-b', address: '10.77.1.1' }], 'the local node is left out of MeshConfig.nodes');
  c.nodes = [
    { name: 'node-a', address: '10.77.0.9' },
    { name: 'node-b', address: '10.77.1.1' },
    { name: 'node-b', address: '10.77.2.1' },
    { name: 'node-c', address: '10.77.1.1' },
    { name: 'node-d', address: '10.77.0.1' },
    { name: 'node-e' },
  ];
  t.same(problemsOf(c), ['nodes[5].address: is required']);
  c.nodes.pop();
  t.same(problemsOf(c), [
    'nodes[0].address: node-a is this node, whose address is 10.77.0.1 (node.address)',
    'nodes[2].name: duplicate node node-b (also nodes[1])',
    'nodes[3].address: 10.77.1.1 is already the address of nodes[1]',
    "nodes[4].address: 10.77.0.1 is this node's address (node.address), not node-d's",
  ]);
});

t.test('every problem is reported at once, not just the first', async (t) => {
  const c = base();
  c.services[0].trafficPolicy = { loadBalancer: { type: 'ring-hash' }, healthCheck: { interval: '1s', timeout: '2s' }, fallback: { service: 'api' } };
  c.workloads[1].name = 'api-0';
  t.equal(problemsOf(c).length, 4);
});
