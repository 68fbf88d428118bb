/**
 * Route matching and precedence without sockets. The cases follow the Gateway API
 * conformance suite (conformance/tests/httproute-*-matching, httproute-path-match-order,
 * mesh/httproute-matching): the same routes, the same requests, the backend each must reach;
 * written here as our own table tests.
 */
import t from 'tap';
import type { Route, RouteMatch, RouteRule } from '../../src/config/types.js';
import { headerReader } from '../../src/proxy/l7/routes/match.js';
import { PortRoutes } from '../../src/proxy/l7/routes/table.js';

type M = Partial<RouteMatch>;
function rule(backend: string, ...matches: M[]): RouteRule {
  return { matches: matches.map((m) => ({ headers: [], queryParams: [], ...m })), filters: [], backendRefs: [{ name: backend, weight: 1 }] };
}
function route(rules: RouteRule[], name = 'r', kind: Route['kind'] = 'HTTPRoute'): Route {
  return { name, namespace: 'ns', kind, parentRefs: [{ name: 'svc' }], rules };
}
const exact = (value: string) => ({ path: { type: 'Exact' as const, value } });
const prefix = (value: string) => ({ path: { type: 'PathPrefix' as const, value } });
const hdr = (name: string, value: string, type: 'Exact' | 'RegularExpression' = 'Exact') => ({ type, name, value });

/** The backend a request reaches, or undefined (no_route). */
function backendOf(table: PortRoutes, target: string, headers: Record<string, string> = {}, method = 'GET'): string | undefined {
  const flat = Object.entries(headers).flat();
  const plan = table.plan({ method, target, header: headerReader(flat), host: 'svc' }, () => 0);
  if (plan === undefined) return undefined;
  if (plan.kind !== 'forward') return `redirect:${plan.location}`;
  return typeof plan.backend === 'object' ? plan.backend.name : plan.backend;
}

t.test('path match order: exact first, then the longest prefix (httproute-path-match-order)', async (t) => {
  const table = new PortRoutes([
    route([
      rule('v1', exact('/match')),
      rule('v2', exact('/match/exact')),
      rule('v3', exact('/match/exact/one')),
      rule('v3', prefix('/match/')),
      rule('v1', prefix('/match/prefix/')),
      rule('v2', prefix('/match/prefix/one')),
    ]),
  ]);
  t.equal(backendOf(table, '/match/exact/one'), 'v3');
  t.equal(backendOf(table, '/match/exact'), 'v2');
  t.equal(backendOf(table, '/match'), 'v1');
  t.equal(backendOf(table, '/match/prefix/one/any'), 'v2');
  t.equal(backendOf(table, '/match/prefix/any'), 'v1');
  t.equal(backendOf(table, '/match/any'), 'v3');
  t.equal(backendOf(table, '/other'), undefined, 'nothing matches: no_route');
});

t.test('prefixes match whole path segments (httproute-matching)', async (t) => {
  const table = new PortRoutes([route([rule('v1', prefix('/'), { headers: [hdr('version', 'one')] }), rule('v2', prefix('/v2'), { headers: [hdr('version', 'two')] })])]);
  t.equal(backendOf(table, '/'), 'v1');
  t.equal(backendOf(table, '/example'), 'v1');
  t.equal(backendOf(table, '/', { Version: 'one' }), 'v1');
  t.equal(backendOf(table, '/v2'), 'v2');
  t.equal(backendOf(table, '/v2/example'), 'v2');
  t.equal(backendOf(table, '/', { Version: 'two' }), 'v2');
  t.equal(backendOf(table, '/v2/'), 'v2');
  t.equal(backendOf(table, '/v2example'), 'v1', '/v2 does not match /v2example');
  t.equal(backendOf(table, '/foo/v2/example'), 'v1');
  t.equal(backendOf(table, '/v2?x=1'), 'v2', 'the query is not part of the path');
});

t.test('a trailing slash in a prefix is ignored', async (t) => {
  const table = new PortRoutes([route([rule('api', prefix('/api/'))])]);
  t.equal(backendOf(table, '/api'), 'api');
  t.equal(backendOf(table, '/api/'), 'api');
  t.equal(backendOf(table, '/api/x'), 'api');
  t.equal(backendOf(table, '/apix'), undefined);
});

t.test('header matching: more headers win, ties go to the first rule, names are case-insensitive (httproute-header-matching)', async (t) => {
  const table = new PortRoutes([
    route([
      rule('v1', { headers: [hdr('version', 'one')] }),
      rule('v2', { headers: [hdr('version', 'two')] }),
      rule('v1', { headers: [hdr('version', 'two'), hdr('color', 'orange')] }),
      rule('v1', { headers: [hdr('color', 'blue')] }, { headers: [hdr('color', 'green')] }),
      rule('v2', { headers: [hdr('color', 'red')] }, { headers: [hdr('color', 'yellow')] }),
    ]),
  ]);
  t.equal(backendOf(table, '/', { Version: 'one' }), 'v1');
  t.equal(backendOf(table, '/', { Version: 'two' }), 'v2');
  t.equal(backendOf(table, '/', { Version: 'two', Color: 'orange' }), 'v1', 'two header matches beat one');
  t.equal(backendOf(table, '/', { Version: 'two', Color: 'blue' }), 'v2', 'a tie goes to the earlier rule');
  t.equal(backendOf(table, '/', { Color: 'orange' }), undefined);
  t.equal(backendOf(table, '/', { 'Some-Other-Header': 'one' }), undefined);
  t.equal(backendOf(table, '/', { Color: 'blue' }), 'v1');
  t.equal(backendOf(table, '/', { Color: 'green' }), 'v1');
  t.equal(backendOf(table, '/', { Color: 'red' }), 'v2');
  t.equal(backendOf(table, '/', { Color: 'yellow' }), 'v2');
  t.equal(backendOf(table, '/', { Color: 'purple' }), undefined);
  t.equal(backendOf(table, '/', { VERSION: 'one' }), 'v1');
  t.equal(backendOf(table, '/', { version: 'ONE' }), undefined, 'values are case-sensitive');
});

t.test('regular expressions match the whole value', async (t) => {
  const table = new PortRoutes([
    route([rule('user', { headers: [hdr('end-user', 'jason|json', 'RegularExpression')] }), rule('regex-path', { path: { type: 'RegularExpression', value: '/items/[0-9]+' } })]),
  ]);
  t.equal(backendOf(table, '/', { 'end-user': 'jason' }), 'user');
  t.equal(backendOf(table, '/', { 'end-user': 'jasonx' }), undefined, 'not a partial match');
  t.equal(backendOf(table, '/items/42'), 'regex-path');
  t.equal(backendOf(table, '/items/42/x'), undefined);
  t.equal(backendOf(table, '/x/items/42'), undefined);
});

t.test('a RegularExpression path ranks below every prefix; Exact above both', async (t) => {
  const table = new PortRoutes([route([rule('regex', { path: { type: 'RegularExpression', value: '/a/.*' } }), rule('prefix', prefix('/a')), rule('exact', exact('/a/b'))])]);
  t.equal(backendOf(table, '/a/c'), 'prefix');
  t.equal(backendOf(table, '/a/b'), 'exact');
});

t.test('query parameters (httproute-query-param-matching): exact, regex, the first value of a repeat, more win', async (t) => {
  const table = new PortRoutes([
    route([
      rule('v1', { queryParams: [hdr('animal', 'whale')] }),
      rule('v2', { queryParams: [hdr('animal', 'dolphin')] }),
      rule('v3', { queryParams: [hdr('animal', 'dolphin'), hdr('color', 'blue')] }),
      rule('v3', { queryParams: [hdr('ANIMAL', 'Whale')] }),
      rule('re', { queryParams: [hdr('id', '[0-9]{3}', 'RegularExpression')] }),
    ]),
  ]);
  t.equal(backendOf(table, '/?animal=whale'), 'v1');
  t.equal(backendOf(table, '/?animal=dolphin'), 'v2');
  t.equal(backendOf(table, '/?animal=dolphin&color=blue'), 'v3');
  t.equal(backendOf(table, '/?ANIMAL=Whale'), 'v3', 'names are case-sensitive');
  t.equal(backendOf(table, '/?animal=whale&animal=dolphin'), 'v1', 'the first value of a repeated parameter');
  t.equal(backendOf(table, '/?animal=orca'), undefined);
  t.equal(backendOf(table, '/?id=123'), 're');
  t.equal(backendOf(table, '/?id=1234'), undefined);
  t.equal(backendOf(table, '/'), undefined);
});

t.test('method matching (httproute-method-matching): a method outranks headers', async (t) => {
  const table = new PortRoutes([route([rule('post', { method: 'POST' }), rule('get', { method: 'GET' }), rule('hdr', { headers: [hdr('x', '1')] })])]);
  t.equal(backendOf(table, '/', {}, 'POST'), 'post');
  t.equal(backendOf(table, '/', {}, 'GET'), 'get');
  t.equal(backendOf(table, '/', { x: '1' }, 'GET'), 'get', 'method before header count');
  t.equal(backendOf(table, '/', { x: '1' }, 'PUT'), 'hdr');
  t.equal(backendOf(table, '/', {}, 'HEAD'), undefined);
});

t.test('across routes: precedence first, then the earlier route (matching-across-routes)', async (t) => {
  const a = route([rule('a-prefix', prefix('/'))], 'a');
  const b = route([rule('b-exact', exact('/x')), rule('b-prefix', prefix('/'))], 'b');
  const table = new PortRoutes([a, b]);
  t.equal(backendOf(table, '/x'), 'b-exact', 'a later route with a better match wins');
  t.equal(backendOf(table, '/y'), 'a-prefix', 'equal matches: the earlier route wins');
});

t.test('a rule without matches takes every request', async (t) => {
  const table = new PortRoutes([route([{ matches: [], filters: [], backendRefs: [{ name: 'all', weight: 1 }] }])]);
  t.equal(backendOf(table, '/anything?q=1', {}, 'DELETE'), 'all');
});

t.test('GRPCRoute: service and method, exact or regex; the longer service wins', async (t) => {
  const g = (backend: string, grpc: RouteMatch['grpc'], headers: RouteMatch['headers'] = []): RouteRule => rule(backend, { grpc, headers });
  const table = new PortRoutes([
    route(
      [
        g('svc', { type: 'Exact', service: 'shop.Cart' }),
        g('method', { type: 'Exact', service: 'shop.Cart', method: 'Add' }),
        g('any-get', { type: 'RegularExpression', method: 'Get.*' }),
        g('hdr', { type: 'Exact', service: 'shop.Cart', method: 'Add' }, [hdr('end-user', 'jason')]),
      ],
      'g',
      'GRPCRoute',
    ),
  ]);
  t.equal(backendOf(table, '/shop.Cart/Remove', {}, 'POST'), 'svc');
  t.equal(backendOf(table, '/shop.Cart/Add', {}, 'POST'), 'method');
  t.equal(backendOf(table, '/shop.Cart/Add', { 'end-user': 'jason' }, 'POST'), 'hdr');
  t.equal(backendOf(table, '/other.Svc/GetThing', {}, 'POST'), 'any-get');
  t.equal(backendOf(table, '/other.Svc/Put', {}, 'POST'), undefined);
  t.equal(backendOf(table, '/shop.Cart', {}, 'POST'), undefined, 'not a gRPC path');
});
