/**
 * Filters, weighted choice, mirrors and faults of a matched rule, without sockets. Rewrite,
 * redirect and header cases follow the Gateway API mesh conformance tests
 * (mesh/httproute-rewrite-path, -redirect-path, -redirect-port, -request-header-modifier).
 */
import t from 'tap';
import type { Route, RouteFilter, RouteRule } from '../../src/config/types.js';
import { modifyHeaders, redirectLocation, replacePath } from '../../src/proxy/l7/routes/filters.js';
import { headerReader } from '../../src/proxy/l7/routes/match.js';
import { chance, pickWeighted } from '../../src/proxy/l7/routes/select.js';
import { PortRoutes, type RoutePlan } from '../../src/proxy/l7/routes/table.js';

const pfx = (value: string) => [{ path: { type: 'PathPrefix' as const, value }, headers: [], queryParams: [] }];
function table(rules: RouteRule[]): PortRoutes {
  const r: Route = { name: 'r', namespace: 'ns', kind: 'HTTPRoute', parentRefs: [{ name: 'svc' }], rules };
  return new PortRoutes([r]);
}
function plan(tb: PortRoutes, target: string, headers: string[] = [], rand = () => 0.5, host = 'echo'): RoutePlan {
  const p = tb.plan({ method: 'GET', target, header: headerReader(headers), host }, rand);
  if (!p) throw new Error(`no route for ${target}`);
  return p;
}
/** The headers a codec sends after applying the plan's edits. */
const sent = (headers: string[], p: RoutePlan) => (p.kind === 'forward' ? p.requestHeaders.reduce((h, m) => modifyHeaders(h, m), headers) : headers);
const rewrite = (prefix: string, f: RouteFilter): RouteRule => ({ matches: pfx(prefix), filters: [f], backendRefs: [{ name: 'echo-v1', weight: 1 }] });

t.test('ReplacePrefixMatch and ReplaceFullPath (mesh/httproute-rewrite-path)', async (t) => {
  const tb = table([
    rewrite('/prefix/one', { type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/one' } } }),
    rewrite('/strip-prefix', { type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/' } } }),
    rewrite('/full/one', { type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath', replaceFullPath: '/one' } } }),
    rewrite('/host', { type: 'URLRewrite', urlRewrite: { hostname: 'elsewhere.example' } }),
  ]);
  const target = (p: RoutePlan) => (p.kind === 'forward' ? (p.target ?? 'unchanged') : p.location);
  t.equal(target(plan(tb, '/prefix/one/two')), '/one/two');
  t.equal(target(plan(tb, '/prefix/one')), '/one');
  t.equal(target(plan(tb, '/strip-prefix/three')), '/three');
  t.equal(target(plan(tb, '/strip-prefix')), '/');
  t.equal(target(plan(tb, '/full/one/two')), '/one');
  t.equal(target(plan(tb, '/prefix/one/two?a=1&b=2')), '/one/two?a=1&b=2', 'the query is kept');
  const hosted = plan(tb, '/host/x', ['Host', 'echo', 'Accept', '*/*']);
  t.equal(hosted.kind === 'forward' && hosted.target, undefined, 'the path is unchanged');
  t.same(hosted.kind === 'forward' && sent(['Host', 'echo', 'Accept', '*/*'], hosted), ['Accept', '*/*', 'host', 'elsewhere.example'], 'Host is replaced');
});

t.test('replacePath edge cases', async (t) => {
  const m = (r: string) => ({ type: 'ReplacePrefixMatch' as const, replacePrefixMatch: r });
  t.equal(replacePath('/foo/bar', m('/xyz'), '/foo'), '/xyz/bar');
  t.equal(replacePath('/foo/bar', m('/xyz/'), '/foo/'), '/xyz/bar', 'trailing slashes do not double');
  t.equal(replacePath('/foo', m('/xyz'), '/foo'), '/xyz');
  t.equal(replacePath('/anything', m('/v2'), '/'), '/v2/anything', 'prefix / keeps the whole path');
  t.equal(replacePath('/', m('/v2'), '/'), '/v2');
});

t.test('header modifiers: set replaces every value, add appends, remove drops; names case-insensitive', async (t) => {
  const mod = {
    set: [{ name: 'X-Header-Set', value: 'set-overwrites-values' }],
    add: [
      { name: 'X-Header-Add', value: 'header-val-1' },
      { name: 'X-Header-Add-Append', value: 'header-val-2' },
    ],
    remove: ['X-Header-Remove'],
  };
  const out = modifyHeaders(['x-header-remove', 'remove-val', 'X-HEADER-ADD-APPEND', 'append-val-1', 'x-header-set', 'set-val', 'x-header-set', 'other', 'Keep', 'k'], mod);
  t.same(out, ['X-HEADER-ADD-APPEND', 'append-val-1', 'Keep', 'k', 'X-Header-Set', 'set-overwrites-values', 'X-Header-Add', 'header-val-1', 'X-Header-Add-Append', 'header-val-2']);
  const read = headerReader(out);
  t.equal(read('x-header-add-append'), 'append-val-1,header-val-2', 'a reader joins the added value to the old one');
  t.equal(read('x-header-remove'), undefined);
});

t.test('a rule applies its header modifier to what it forwards, after the rewrite', async (t) => {
  const tb = table([
    {
      matches: pfx('/full/rewrite-path-and-modify-headers'),
      filters: [
        { type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath', replaceFullPath: '/test' } } },
        { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'X-Header-Set', value: 'set-overwrites-values' }], add: [], remove: ['X-Header-Remove'] } },
      ],
      backendRefs: [{ name: 'echo-v1', weight: 1 }],
    },
  ]);
  const p = plan(tb, '/full/rewrite-path-and-modify-headers/test', ['X-Header-Remove', 'remove-val', 'X-Header-Set', 'set-val']);
  t.equal(p.kind, 'forward');
  if (p.kind !== 'forward') return;
  t.equal(p.target, '/test');
  t.same(sent(['X-Header-Remove', 'remove-val', 'X-Header-Set', 'set-val'], p), ['X-Header-Set', 'set-overwrites-values']);
});

t.test('redirects (mesh/httproute-redirect-path, -redirect-port, -redirect-scheme)', async (t) => {
  const red = (prefix: string, requestRedirect: Extract<RouteFilter, { type: 'RequestRedirect' }>['requestRedirect']): RouteRule => ({
    matches: pfx(prefix),
    filters: [{ type: 'RequestRedirect', requestRedirect }],
    backendRefs: [],
  });
  const tb = table([
    red('/original-prefix', { statusCode: 302, path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/replacement-prefix' } }),
    red('/full', { statusCode: 302, path: { type: 'ReplaceFullPath', replaceFullPath: '/full-path-replacement' } }),
    red('/path-and-host', { statusCode: 302, hostname: 'example.org', path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/replacement-prefix' } }),
    red('/path-and-status', { statusCode: 301, path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/replacement-prefix' } }),
    red('/port', { statusCode: 302, port: 8083 }),
    red('/port-and-host', { statusCode: 302, port: 8083, hostname: 'example.org' }),
    red('/scheme', { statusCode: 302, scheme: 'https' }),
    red('/scheme-and-port', { statusCode: 302, scheme: 'https', port: 443 }),
  ]);
  const loc = (target: string, host = 'echo') => {
    const p = plan(tb, target, [], () => 0.5, host);
    return p.kind === 'redirect' ? `${p.status} ${p.location}` : 'not a redirect';
  };
  t.equal(loc('/original-prefix/lemon'), '302 http://echo/replacement-prefix/lemon');
  t.equal(loc('/full/path/original'), '302 http://echo/full-path-replacement');
  t.equal(loc('/path-and-host'), '302 http://example.org/replacement-prefix');
  t.equal(loc('/path-and-status'), '301 http://echo/replacement-prefix');
  t.equal(loc('/port'), '302 http://echo:8083/port');
  t.equal(loc('/port-and-host'), '302 http://example.org:8083/port-and-host');
  t.equal(loc('/scheme?x=1', 'echo:9080'), '302 https://echo/scheme?x=1', 'a new scheme drops the old port');
  t.equal(loc('/scheme-and-port'), '302 https://echo/scheme-and-port', 'the well-known port is left out');
  t.equal(loc('/original-prefix', 'echo:9080'), '302 http://echo:9080/replacement-prefix', 'the request port is kept');
  t.equal(redirectLocation({ scheme: 'http', host: 'a:80', path: '/p', query: undefined }, { statusCode: 302 }, undefined), 'http://a/p');
});

t.test('weighted choice follows the weights; weight 0 never; all zero: none', async (t) => {
  const seq = (n: number) => Array.from({ length: n }, (_, i) => (i + 0.5) / n);
  const counts = [0, 0, 0];
  for (const x of seq(1000)) counts[pickWeighted([80, 0, 20], () => x)!]!++;
  t.same(counts, [800, 0, 200], 'evenly spread draws split exactly by weight');
  t.equal(
    pickWeighted([0, 0], () => 0.3),
    undefined,
  );
  t.equal(
    pickWeighted([0, 5], () => 0.999999),
    1,
  );
  t.equal(
    pickWeighted([3], () => 0.99),
    0,
  );
});

t.test('chance: percent of draws', async (t) => {
  t.equal(
    chance(0, () => 0),
    false,
  );
  t.equal(
    chance(100, () => 0.9999),
    true,
  );
  t.equal(
    chance(10, () => 0.099),
    true,
  );
  t.equal(
    chance(10, () => 0.1),
    false,
  );
});

t.test('plan: backends by weight, no backendRefs means the parent, all-zero means none', async (t) => {
  const tb = table([
    {
      matches: pfx('/split'),
      filters: [],
      backendRefs: [
        { name: 'v1', weight: 80 },
        { name: 'v3', port: 9080, weight: 20 },
      ],
    },
    { matches: pfx('/parent'), filters: [], backendRefs: [] },
    { matches: pfx('/zero'), filters: [], backendRefs: [{ name: 'v1', weight: 0 }] },
  ]);
  const backend = (target: string, x: number) => {
    const p = plan(tb, target, [], () => x);
    return p.kind === 'forward' ? (typeof p.backend === 'object' ? `${p.backend.name}:${p.backend.port ?? '-'}` : String(p.backend)) : 'redirect';
  };
  t.equal(backend('/split', 0.1), 'v1:-');
  t.equal(backend('/split', 0.79), 'v1:-');
  t.equal(backend('/split', 0.81), 'v3:9080');
  t.equal(backend('/parent', 0.5), 'parent');
  t.equal(backend('/zero', 0.5), 'undefined');
});

t.test('plan: faults and mirrors roll their percent per request', async (t) => {
  const tb = table([
    {
      matches: pfx('/'),
      filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', port: 9080 }, percent: 50 } }],
      backendRefs: [{ name: 'v1', weight: 1 }],
      fault: { delay: { fixedDelay: 7000, percent: 10 }, abort: { httpStatus: 503, percent: 5 } },
    },
  ]);
  const at = (x: number) => {
    const p = plan(tb, '/', [], () => x);
    if (p.kind !== 'forward') throw new Error('expected forward');
    return { delay: p.delay, abort: p.abort, mirrors: p.mirrors.map((m) => m.name) };
  };
  t.same(at(0.01), { delay: 7000, abort: 503, mirrors: ['shadow'] });
  t.same(at(0.07), { delay: 7000, abort: undefined, mirrors: ['shadow'] });
  t.same(at(0.3), { delay: 0, abort: undefined, mirrors: ['shadow'] });
  t.same(at(0.7), { delay: 0, abort: undefined, mirrors: [] });
});

t.test('TCPRoute: connections split by weight', async (t) => {
  const r: Route = {
    name: 't',
    namespace: 'ns',
    kind: 'TCPRoute',
    parentRefs: [{ name: 'db' }],
    rules: [
      {
        matches: [],
        filters: [],
        backendRefs: [
          { name: 'a', weight: 1 },
          { name: 'b', weight: 3 },
        ],
      },
    ],
  };
  const tb = new PortRoutes([r]);
  const pick = (x: number) => {
    const b = tb.pickTcp(() => x);
    return typeof b === 'object' ? b.name : b;
  };
  t.equal(pick(0.2), 'a');
  t.equal(pick(0.3), 'b');
  t.equal(pick(0.99), 'b');
});
