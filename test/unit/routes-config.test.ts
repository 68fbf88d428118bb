/** `routes:` in the config: what is accepted, the defaults, and every refusal with its problem path. */
import t from 'tap';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { configProblems } from '../lib/config-problems.js';

function base(routes: unknown[]): any {
  return {
    node: { name: 'node-a', address: '10.77.0.1' },
    namespaces: [{ name: 'bookinfo', labels: { 'weft.io/mesh': 'enabled' } }],
    services: [
      {
        name: 'reviews',
        namespace: 'bookinfo',
        vip: '10.96.0.20',
        ports: [
          { port: 9080, protocol: 'http' },
          { port: 5432, protocol: 'tcp' },
        ],
      },
      { name: 'reviews-v1', namespace: 'bookinfo', vip: '10.96.0.21', ports: [{ port: 9080, protocol: 'http' }] },
      { name: 'other', namespace: 'elsewhere', vip: '10.96.0.22', ports: [{ port: 9080, protocol: 'http' }] },
    ],
    routes,
  };
}
const problems = (routes: unknown[]) => configProblems(stringify(base(routes)));
const ok = (rules: unknown[], extra: object = {}) => ({ name: 'reviews', namespace: 'bookinfo', parentRefs: [{ name: 'reviews', port: 9080 }], rules, ...extra });

t.test('a full HTTPRoute is accepted with its defaults filled in', async (t) => {
  const cfg = parseConfig(
    stringify(
      base([
        ok([
          {
            matches: [{ path: { value: '/api' }, headers: [{ name: 'End-User', value: 'jason' }], queryParams: [{ name: 'v', value: '2' }], method: 'GET' }],
            filters: [
              { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-a', value: '1' }] } },
              { type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/v2' } } },
              { type: 'RequestMirror', requestMirror: { backendRef: { name: 'reviews-shadow', port: 9080 } } },
            ],
            backendRefs: [{ name: 'reviews-v1', port: 9080, weight: 80 }, { name: 'reviews-v3' }],
            timeouts: { request: '2s', backendRequest: '500ms' },
            retry: { attempts: 2, codes: [503], backoff: '25ms' },
            fault: { delay: { fixedDelay: '500ms', percent: 10 }, abort: { httpStatus: 503 } },
          },
        ]),
      ]),
    ),
    'mesh.yaml',
    { env: {} },
  );
  const r = cfg.routes![0]!;
  t.equal(r.kind, 'HTTPRoute');
  const rule = r.rules[0]!;
  t.same(rule.matches[0], {
    path: { type: 'PathPrefix', value: '/api' },
    headers: [{ type: 'Exact', name: 'end-user', value: 'jason' }],
    queryParams: [{ type: 'Exact', name: 'v', value: '2' }],
    method: 'GET',
  });
  t.same(
    rule.backendRefs,
    [
      { name: 'reviews-v1', port: 9080, weight: 80 },
      { name: 'reviews-v3', weight: 1 },
    ],
    'a backend that does not exist is not an error',
  );
  t.same(rule.timeouts, { request: 2000, backendRequest: 500 });
  t.same(rule.retry, { attempts: 2, codes: [503], backoff: 25 });
  t.same(rule.fault, { delay: { fixedDelay: 500, percent: 10 }, abort: { httpStatus: 503, percent: 100 } });
  t.same(rule.filters[2], { type: 'RequestMirror', requestMirror: { backendRef: { name: 'reviews-shadow', port: 9080 }, percent: 100 } });
  t.same(parseConfig(stringify(base([])), 'x', { env: {} }).routes, []);
});

t.test('shape problems carry their path', async (t) => {
  t.same(problems([ok([{ matches: [{ path: { type: 'Prefix', value: '/' } }] }])]), ['routes[0].rules[0].matches[0].path.type: must be one of Exact, PathPrefix, RegularExpression (got "Prefix")']);
  t.same(problems([ok([{ matches: [{ method: 'get' }] }])]), ['routes[0].rules[0].matches[0].method: must be an upper-case HTTP method, like GET (got "get")']);
  t.same(problems([ok([{ filters: [{ type: 'Rewrite' }] }])]), [
    'routes[0].rules[0].filters[0].type: must be one of RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror (got "Rewrite")',
  ]);
  t.same(problems([ok([{ backendRefs: [{ name: 'reviews-v1', wieght: 3 }] }])]), ['routes[0].rules[0].backendRefs[0].wieght: unknown key (did you mean "weight"?)']);
  t.same(problems([ok([{ fault: { abort: { httpStatus: 503, percent: 120 } } }])]), ['routes[0].rules[0].fault.abort.percent: must be a number from 0 to 100 (got 120)']);
  t.same(problems([ok([])])[0], 'routes[0].rules: must not be empty');
  t.same(problems([ok([{ filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 304 } }] }])]), [
    'routes[0].rules[0].filters[0].requestRedirect.statusCode: must be one of 301, 302, 303, 307, 308 (got 304)',
  ]);
});

t.test('invalid regular expressions are refused', async (t) => {
  t.same(
    problems([ok([{ matches: [{ path: { type: 'RegularExpression', value: '/items/[0-9' } }] }])]).map((p) => p.replace(/: is not.*/, '')),
    ['routes[0].rules[0].matches[0].path.value'],
  );
  const p = problems([ok([{ matches: [{ headers: [{ type: 'RegularExpression', name: 'x', value: '(' }] }] }])]);
  t.match(p, [/^routes\[0\]\.rules\[0\]\.matches\[0\]\.headers\[0\]\.value: is not a valid regular expression/]);
});

t.test('parentRefs name a service (and port) of the route namespace that fits the kind', async (t) => {
  t.same(problems([{ ...ok([{}]), parentRefs: [{ name: 'nope' }] }]), ['routes[0].parentRefs[0].name: no service nope in namespace bookinfo (a route attaches to a service of its own namespace)']);
  t.same(problems([{ ...ok([{}]), parentRefs: [{ name: 'other' }] }]), ['routes[0].parentRefs[0].name: no service other in namespace bookinfo (a route attaches to a service of its own namespace)']);
  t.same(problems([{ ...ok([{}]), parentRefs: [{ name: 'reviews', port: 80 }] }]), ['routes[0].parentRefs[0].port: service reviews has no port 80 (it has 9080, 5432)']);
  t.same(problems([{ ...ok([{}]), parentRefs: [{ name: 'reviews', port: 5432 }] }]), ['routes[0].parentRefs[0].port: HTTPRoute needs a http port; reviews port 5432 is tcp']);
  t.same(problems([ok([{}]), { name: 't', namespace: 'bookinfo', kind: 'TCPRoute', parentRefs: [{ name: 'reviews', port: 9080 }], rules: [{ backendRefs: [{ name: 'reviews-v1' }] }] }]), [
    'routes[1].parentRefs[0].port: TCPRoute needs a tcp port; reviews port 9080 is http',
  ]);
  t.same(problems([ok([{}]), ok([{}])]), ['routes[1].name: duplicate HTTPRoute bookinfo/reviews (also routes[0])']);
});

t.test('rules: kind-specific keys, filters that cannot go together', async (t) => {
  t.same(problems([ok([{ matches: [{ path: { type: 'Exact', value: '/a' } }], filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/b' } } }] }])]), [
    'routes[0].rules[0].filters[0].urlRewrite.path.type: ReplacePrefixMatch needs exactly one match in the rule, with a path of type PathPrefix (the prefix it replaces)',
  ]);
  t.same(problems([ok([{ filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath' } } }] }])]), [
    'routes[0].rules[0].filters[0].urlRewrite.path.replaceFullPath: is required with type ReplaceFullPath',
  ]);
  t.same(problems([ok([{ filters: [{ type: 'RequestRedirect', requestRedirect: { hostname: 'x' } }], backendRefs: [{ name: 'reviews-v1' }] }])]), [
    'routes[0].rules[0].filters[0].type: a RequestRedirect answers the request itself: the rule must not have backendRefs',
  ]);
  t.same(problems([ok([{ filters: [{ type: 'RequestHeaderModifier', responseHeaderModifier: { remove: ['x'] } }] }])]), [
    'routes[0].rules[0].filters[0].responseHeaderModifier: does not belong to a filter of type RequestHeaderModifier (which takes requestHeaderModifier)',
    'routes[0].rules[0].filters[0].requestHeaderModifier: is required with type RequestHeaderModifier',
  ]);
  t.same(problems([ok([{ timeouts: { request: '1s', backendRequest: '2s' } }])]), ['routes[0].rules[0].timeouts.backendRequest: must not be longer than timeouts.request']);
  const grpc = { name: 'g', namespace: 'bookinfo', kind: 'GRPCRoute', parentRefs: [{ name: 'reviews-v1' }] };
  t.same(problems([{ ...grpc, rules: [{ matches: [{ method: { service: 'pkg.Svc', method: 'Get' } }] }] }]), []);
  t.same(problems([{ ...grpc, rules: [{ matches: [{ method: 'GET' }] }] }]), ['routes[0].rules[0].matches[0].method: a GRPCRoute matches method: { service, method } (got an HTTP method)']);
  t.same(problems([{ ...grpc, rules: [{ filters: [{ type: 'URLRewrite', urlRewrite: { hostname: 'x' } }] }] }]), [
    'routes[0].rules[0].filters[0].type: a GRPCRoute takes RequestHeaderModifier, ResponseHeaderModifier, RequestMirror filters, not URLRewrite',
  ]);
  t.same(problems([ok([{ matches: [{ method: { service: 'pkg.Svc' } }] }])]), [
    'routes[0].rules[0].matches[0].method: HTTPRoute matches an HTTP method like GET; { service, method } is for a GRPCRoute',
  ]);
  const tcp = { name: 't', namespace: 'bookinfo', kind: 'TCPRoute', parentRefs: [{ name: 'reviews', port: 5432 }] };
  t.same(problems([{ ...tcp, rules: [{ backendRefs: [{ name: 'reviews-v1', weight: 1 }] }] }]), []);
  t.same(problems([{ ...tcp, rules: [{ matches: [{}], backendRefs: [{ name: 'a' }] }] }]), [
    'routes[0].rules[0].matches: a TCPRoute rule takes only backendRefs (a connection has no request to match or filter)',
  ]);
  t.same(problems([{ ...tcp, rules: [{}] }]), ['routes[0].rules[0].backendRefs: a TCPRoute rule needs at least one backendRef']);
});
