import t from 'tap';
import type { AuthorizationPolicy, PolicyOperation, PolicySource } from '../../src/config/types.js';
import { compilePolicies, type AuthzRequest, type Decision } from '../../src/authz/engine.js';
import { ConfigError } from '../../src/errors.js';

const API = { namespace: 'shop', labels: { app: 'api', version: 'v1' } };
const CLIENT = 'cluster.local/ns/shop/sa/client';
const OTHER = 'cluster.local/ns/shop/sa/other';

function policy(
  name: string,
  action: 'ALLOW' | 'DENY',
  rules: { from?: PolicySource[]; to?: PolicyOperation[] }[],
  selector: Record<string, string> = { app: 'api' },
  namespace = 'shop',
): AuthorizationPolicy {
  return { name, namespace, selector, action, rules: rules.map((r) => ({ from: r.from ?? [], to: r.to ?? [] })) };
}

function http(extra: Partial<AuthzRequest> = {}): AuthzRequest {
  return { protocol: 'http', sourcePrincipal: CLIENT, port: 8080, method: 'GET', path: '/items', host: 'api.shop', ...extra };
}

function tcp(extra: Partial<AuthzRequest> = {}): AuthzRequest {
  return { protocol: 'tcp', sourcePrincipal: CLIENT, port: 8080, ...extra };
}

function decide(policies: AuthorizationPolicy[], req: AuthzRequest, w = API): Decision {
  return compilePolicies(policies).forWorkload(w).evaluate(req);
}

t.test('no policies: allowed, no deciding policy', async (t) => {
  t.same(decide([], http()), { allowed: true });
});

t.test('ALLOW by principal; another principal is default-denied', async (t) => {
  const p = [policy('readers', 'ALLOW', [{ from: [{ principals: [CLIENT] }] }])];
  t.same(decide(p, http()), { allowed: true, policy: 'shop/readers', action: 'ALLOW' });
  t.same(decide(p, http({ sourcePrincipal: OTHER })), { allowed: false, policy: 'default-deny' });
  t.same(decide(p, http({ sourcePrincipal: undefined })), { allowed: false, policy: 'default-deny' }, 'plaintext has no principal');
  t.same(decide(p, http({ sourcePrincipal: `spiffe://${CLIENT}` })).allowed, true, 'spiffe:// prefix is tolerated');
});

t.test('DESIGN example: from alternatives, to conditions', async (t) => {
  const p = [
    policy('api-readers', 'ALLOW', [
      {
        from: [{ principals: ['cluster.local/ns/shop/sa/client'] }, { namespaces: ['web'] }, { requestPrincipals: ['https://issuer.example/alice'] }],
        to: [{ ports: [8080], methods: ['GET'], paths: ['/items', '/items/*'] }],
      },
    ]),
  ];
  t.ok(decide(p, http()).allowed);
  t.ok(decide(p, http({ path: '/items/42?x=1' })).allowed);
  t.ok(decide(p, http({ sourcePrincipal: 'cluster.local/ns/web/sa/front' })).allowed, 'namespace from the principal');
  t.ok(decide(p, http({ sourcePrincipal: undefined, requestPrincipal: 'https://issuer.example/alice' })).allowed);
  t.notOk(decide(p, http({ sourcePrincipal: undefined, requestPrincipal: 'https://issuer.example/bob' })).allowed);
  t.notOk(decide(p, http({ method: 'POST' })).allowed, 'method mismatch');
  t.notOk(decide(p, http({ path: '/admin' })).allowed, 'path mismatch');
  t.notOk(decide(p, http({ path: '/itemsx' })).allowed, '/items/* is not /items*');
  t.notOk(decide(p, http({ port: 9090 })).allowed, 'port mismatch');
});

t.test('within an entry all fields must match', async (t) => {
  const p = [policy('a', 'ALLOW', [{ from: [{ principals: [CLIENT, OTHER], namespaces: ['shop'], notPrincipals: [OTHER] }] }])];
  t.ok(decide(p, http()).allowed);
  t.notOk(decide(p, http({ sourcePrincipal: OTHER })).allowed, 'notPrincipals excludes');
  t.notOk(decide(p, http({ sourceNamespace: 'web' })).allowed, 'explicit sourceNamespace wins over the principal');
});

t.test('to entries are alternatives; to and from both needed', async (t) => {
  const p = [policy('a', 'ALLOW', [{ from: [{ namespaces: ['shop'] }], to: [{ methods: ['GET'] }, { methods: ['POST'], paths: ['/orders'] }] }])];
  t.ok(decide(p, http()).allowed);
  t.ok(decide(p, http({ method: 'POST', path: '/orders' })).allowed);
  t.notOk(decide(p, http({ method: 'POST', path: '/items' })).allowed);
  t.notOk(decide(p, http({ sourcePrincipal: 'cluster.local/ns/web/sa/x' })).allowed);
});

t.test('string forms on paths, methods, hosts, principals', async (t) => {
  const p = [
    policy('a', 'ALLOW', [
      { to: [{ paths: ['/static/*', '*.png', '/exact'] }] },
      { to: [{ methods: ['PATCH*'], paths: ['/m'] }] },
      { to: [{ hosts: ['*.shop.svc'], paths: ['/h'] }] },
      { from: [{ principals: ['cluster.local/ns/ops/*'] }], to: [{ paths: ['/ops'] }] },
      { from: [{ principals: ['*'] }], to: [{ paths: ['/authn'] }] },
    ]),
  ];
  t.ok(decide(p, http({ path: '/static/a/b.css' })).allowed, 'prefix');
  t.ok(decide(p, http({ path: '/img/logo.png' })).allowed, 'suffix');
  t.ok(decide(p, http({ path: '/exact' })).allowed, 'exact');
  t.notOk(decide(p, http({ path: '/exact/more' })).allowed);
  t.ok(decide(p, http({ method: 'PATCH', path: '/m' })).allowed);
  t.notOk(decide(p, http({ method: 'GET', path: '/m' })).allowed);
  t.ok(decide(p, http({ host: 'API.shop.svc:8080', path: '/h' })).allowed, 'host suffix, case and port');
  t.notOk(decide(p, http({ host: 'api.other.svc', path: '/h' })).allowed);
  t.ok(decide(p, http({ sourcePrincipal: 'cluster.local/ns/ops/sa/bot', path: '/ops' })).allowed);
  t.notOk(decide(p, http({ path: '/ops' })).allowed);
  t.ok(decide(p, http({ path: '/authn' })).allowed, 'presence: any principal');
  t.notOk(decide(p, http({ path: '/authn', sourcePrincipal: undefined })).allowed, 'presence: plaintext has none');
});

t.test('not* forms', async (t) => {
  const allow = [policy('a', 'ALLOW', [{ to: [{ notPaths: ['/admin', '/admin/*'], notMethods: ['DELETE'], notPorts: [9000] }] }])];
  t.ok(decide(allow, http()).allowed);
  t.notOk(decide(allow, http({ path: '/admin/users' })).allowed);
  t.notOk(decide(allow, http({ method: 'DELETE' })).allowed);
  t.notOk(decide(allow, http({ port: 9000 })).allowed);

  const deny = [policy('d', 'DENY', [{ from: [{ notNamespaces: ['shop'] }] }])];
  t.ok(decide(deny, http()).allowed);
  t.same(decide(deny, http({ sourcePrincipal: 'cluster.local/ns/web/sa/x' })), { allowed: false, policy: 'shop/d', action: 'DENY' });
  t.notOk(decide(deny, http({ sourcePrincipal: undefined })).allowed, 'no namespace at all satisfies notNamespaces');

  const needJwt = [policy('jwt', 'DENY', [{ from: [{ notRequestPrincipals: ['*'] }] }])];
  t.notOk(decide(needJwt, http()).allowed, 'no JWT: denied');
  t.ok(decide(needJwt, http({ requestPrincipal: 'iss/alice' })).allowed);

  const hosts = [policy('h', 'DENY', [{ to: [{ notHosts: ['api.shop'] }] }])];
  t.ok(decide(hosts, http()).allowed);
  t.notOk(decide(hosts, http({ host: 'evil' })).allowed);
});

t.test('DENY overrides ALLOW', async (t) => {
  const p = [policy('allow-all-shop', 'ALLOW', [{ from: [{ namespaces: ['shop'] }] }]), policy('no-delete', 'DENY', [{ to: [{ methods: ['DELETE'] }] }])];
  t.same(decide(p, http()), { allowed: true, policy: 'shop/allow-all-shop', action: 'ALLOW' });
  t.same(decide(p, http({ method: 'DELETE' })), { allowed: false, policy: 'shop/no-delete', action: 'DENY' });
});

t.test('only DENY policies: what they do not match is allowed', async (t) => {
  const p = [policy('d', 'DENY', [{ from: [{ principals: [OTHER] }] }])];
  t.same(decide(p, http()), { allowed: true });
  t.notOk(decide(p, http({ sourcePrincipal: OTHER })).allowed);
});

t.test('rule shapes: empty rule matches all; rules: [] matches nothing', async (t) => {
  t.same(decide([policy('all', 'ALLOW', [{}])], http({ sourcePrincipal: undefined })), { allowed: true, policy: 'shop/all', action: 'ALLOW' });
  t.same(decide([policy('nothing', 'ALLOW', [])], http()), { allowed: false, policy: 'default-deny' }, 'allow-nothing');
  t.same(decide([policy('nothing', 'DENY', [])], http()), { allowed: true }, 'DENY with no rules denies nothing');
  t.same(decide([policy('all', 'DENY', [{}])], http()), { allowed: false, policy: 'shop/all', action: 'DENY' });
  t.ok(decide([policy('a', 'ALLOW', [{ from: [{ principals: [] }] }])], http({ sourcePrincipal: undefined })).allowed, 'empty list = absent');
});

t.test('selectors', async (t) => {
  const denyAll = (selector: Record<string, string>, ns = 'shop') => [policy('d', 'DENY', [{}], selector, ns)];
  t.notOk(decide(denyAll({}), http()).allowed, 'empty selector: whole namespace');
  t.notOk(decide(denyAll({ app: 'api' }), http()).allowed, 'subset');
  t.notOk(decide(denyAll({ app: 'api', version: 'v1' }), http()).allowed);
  t.ok(decide(denyAll({ app: 'api', version: 'v2' }), http()).allowed, 'label value mismatch');
  t.ok(decide(denyAll({ app: 'api', tier: 'x' }), http()).allowed, 'label missing on workload');
  t.ok(decide(denyAll({}, 'web'), http()).allowed, 'other namespace');

  const compiled = compilePolicies([policy('a', 'ALLOW', [{}], { app: 'web' })]);
  const wp = compiled.forWorkload(API);
  t.same(wp.allow, []);
  t.same(wp.evaluate(http({ sourcePrincipal: undefined })), { allowed: true }, 'selector mismatch: no policies');
  t.equal(compiled.forWorkload({ namespace: 'shop', labels: { version: 'v1', app: 'api' } }), wp, 'cached by namespace + labels');
});

t.test('TCP: HTTP-only conditions', async (t) => {
  // ALLOW rule with HTTP-only fields fails closed, even when its other conditions match.
  const allow = [policy('a', 'ALLOW', [{ from: [{ principals: [CLIENT] }], to: [{ ports: [8080], methods: ['GET'] }] }])];
  t.same(decide(allow, tcp()), { allowed: false, policy: 'default-deny' });
  t.ok(decide(allow, http()).allowed, 'same rule works on HTTP');
  const allowJwt = [policy('a', 'ALLOW', [{ from: [{ principals: [CLIENT] }, { requestPrincipals: ['*'] }] }])];
  t.notOk(decide(allowJwt, tcp()).allowed, 'whole rule is skipped, not just the entry');
  const allowPlain = [policy('a', 'ALLOW', [{ from: [{ principals: [CLIENT] }], to: [{ ports: [8080] }] }])];
  t.ok(decide(allowPlain, tcp()).allowed, 'L4-only ALLOW works on TCP');

  // DENY rule: HTTP-only fields ignored; the rest must match; then the connection is denied.
  const deny = [policy('d', 'DENY', [{ from: [{ principals: [OTHER] }], to: [{ methods: ['DELETE'], paths: ['/admin'] }] }])];
  t.same(decide(deny, tcp({ sourcePrincipal: OTHER })), { allowed: false, policy: 'shop/d', action: 'DENY' });
  t.ok(decide(deny, tcp()).allowed, 'non-HTTP conditions still must match');
  t.ok(decide(deny, http({ sourcePrincipal: OTHER })).allowed, 'on HTTP the method/path must match');
  const denyOnlyHttp = [policy('d', 'DENY', [{ to: [{ paths: ['/admin'] }] }])];
  t.notOk(decide(denyOnlyHttp, tcp()).allowed, 'a DENY made only of HTTP conditions denies every TCP connection');
  const denyNotJwt = [policy('d', 'DENY', [{ from: [{ notRequestPrincipals: ['*'] }] }])];
  t.notOk(decide(denyNotJwt, tcp()).allowed);
});

t.test('namespaces from the principal; trust domain', async (t) => {
  const p = [policy('a', 'ALLOW', [{ from: [{ namespaces: ['web', 'ops*'] }] }])];
  t.ok(decide(p, http({ sourcePrincipal: 'cluster.local/ns/web/sa/front' })).allowed);
  t.ok(decide(p, http({ sourcePrincipal: 'cluster.local/ns/ops-tools/sa/x' })).allowed);
  t.notOk(decide(p, http({ sourcePrincipal: 'cluster.local/ns/shop/sa/x' })).allowed);
  t.notOk(decide(p, http({ sourcePrincipal: 'cluster.local/web' })).allowed, 'not a SPIFFE workload path');
  const scoped = compilePolicies(p, { trustDomain: 'cluster.local' }).forWorkload(API);
  t.ok(scoped.evaluate(http({ sourcePrincipal: 'cluster.local/ns/web/sa/front' })).allowed);
  t.notOk(scoped.evaluate(http({ sourcePrincipal: 'evil.example/ns/web/sa/front' })).allowed, 'foreign trust domain has no namespace');
});

t.test('ipBlocks', async (t) => {
  const p = [policy('a', 'ALLOW', [{ from: [{ ipBlocks: ['10.77.0.0/24', 'fd00::/8'], notIpBlocks: ['10.77.0.66'] }] }])];
  t.ok(decide(p, tcp({ sourceIp: '10.77.0.11' })).allowed);
  t.ok(decide(p, tcp({ sourceIp: '::ffff:10.77.0.12' })).allowed);
  t.ok(decide(p, tcp({ sourceIp: 'fd00::1' })).allowed);
  t.notOk(decide(p, tcp({ sourceIp: '10.77.0.66' })).allowed, 'notIpBlocks');
  t.notOk(decide(p, tcp({ sourceIp: '10.78.0.1' })).allowed);
  t.notOk(decide(p, tcp({ sourceIp: undefined })).allowed, 'unknown source IP never matches ipBlocks');
  t.notOk(decide(p, tcp({ sourceIp: 'garbage' })).allowed);
});

t.test('path normalization defeats bypasses', async (t) => {
  const deny = [policy('no-admin', 'DENY', [{ to: [{ paths: ['/admin', '/admin/*'] }] }])];
  for (const path of ['/admin', '/items/../admin', '//admin', '/./admin', '/%61dmin', '/items/%2e%2e/admin', '/admin/?x', '/admin//x', '/admin#x']) {
    t.notOk(decide(deny, http({ path })).allowed, `DENY catches ${path}`);
  }
  t.ok(decide(deny, http({ path: '/items/admin' })).allowed);
  for (const path of ['/admin%2Fx', '/x%5C..%5Cadmin', '/a\\..\\admin', '/a%00']) {
    t.same(decide(deny, http({ path })), { allowed: false, policy: 'invalid-path' }, `refuses ${path}`);
  }

  const allow = [policy('items', 'ALLOW', [{ to: [{ paths: ['/items', '/items/*'] }] }])];
  t.ok(decide(allow, http({ path: '/items/a/./b' })).allowed);
  t.notOk(decide(allow, http({ path: '/items/../admin' })).allowed, 'ALLOW on /items/* does not let ../ escape');
  t.notOk(decide(allow, http({ path: '/items/..%2Fadmin' })).allowed);

  const notPaths = [policy('np', 'ALLOW', [{ to: [{ notPaths: ['/admin/*'] }] }])];
  t.notOk(decide(notPaths, http({ path: '/admin%2Fsecret' })).allowed, 'notPaths cannot be dodged with an encoded slash');
  t.notOk(decide(notPaths, http({ path: '/public/../admin/x' })).allowed);

  // Policies without path conditions do not refuse odd paths: nothing to bypass.
  t.ok(decide([policy('p', 'ALLOW', [{ from: [{ principals: [CLIENT] }] }])], http({ path: '/repo/a%2Fb' })).allowed);
});

t.test('several policies: first deciding one is reported', async (t) => {
  const p = [policy('a1', 'ALLOW', [{ to: [{ methods: ['GET'] }] }]), policy('a2', 'ALLOW', [{ to: [{ methods: ['POST'] }] }]), policy('ns-wide', 'ALLOW', [{ to: [{ methods: ['PUT'] }] }], {})];
  t.equal(decide(p, http()).policy, 'shop/a1');
  t.equal(decide(p, http({ method: 'POST' })).policy, 'shop/a2');
  t.equal(decide(p, http({ method: 'PUT' })).policy, 'shop/ns-wide');
  t.equal(decide(p, http({ method: 'HEAD' })).policy, 'default-deny');
});

t.test('invalid policies are refused at compile', async (t) => {
  const bad = [policy('x', 'ALLOW', [{ to: [{ paths: ['/a*b'] }] }])];
  t.throws(() => compilePolicies(bad), ConfigError);
  try {
    compilePolicies(bad);
  } catch (err) {
    t.same((err as ConfigError).problems, ["policies[0].rules[0].to[0].paths[0]: '*' may only lead or trail"]);
  }
});

t.test('describe', async (t) => {
  const compiled = compilePolicies([policy('readers', 'ALLOW', [{}]), policy('no-delete', 'DENY', [{ to: [{ methods: ['DELETE'] }] }], {}), policy('web', 'ALLOW', [], {}, 'web')], {
    trustDomain: 'cluster.local',
  });
  t.equal(compiled.size, 3);
  const d = compiled.describe([
    { name: 'api-0', ...API },
    { name: 'db-0', namespace: 'shop', labels: { app: 'db' } },
  ]);
  t.equal(d.trustDomain, 'cluster.local');
  t.same(d.policies[0], { policy: 'shop/readers', action: 'ALLOW', selector: { app: 'api' }, rules: 1 });
  t.same(d.workloads, [
    { name: 'api-0', namespace: 'shop', labels: API.labels, deny: ['shop/no-delete'], allow: ['shop/readers'], defaultDeny: true },
    { name: 'db-0', namespace: 'shop', labels: { app: 'db' }, deny: ['shop/no-delete'], allow: [], defaultDeny: false },
  ]);
  t.doesNotThrow(() => JSON.stringify(d));
});
