import t from 'tap';
import { normalizePath, normalizeRequestTarget } from '../../src/proxy/l7/normalize.js';
import { allowedUpgradeOffer } from '../../src/proxy/l7/upgrade.js';

t.test('normalizePath: a table of attacks and ordinary paths', async (t) => {
  const cases: [string, string | undefined][] = [
    ['/', '/'],
    ['/items', '/items'],
    ['/items/', '/items/'],
    ['/public/./x', '/public/x'],
    ['/public/../admin', '/admin'],
    ['/public/..;/admin', '/admin'],
    ['/public/..;x=1/admin', '/admin'],
    ['/public/.;/admin', '/public/admin'],
    ['/admin;jsessionid=1', '/admin'],
    ['/admin;a/b;c', '/admin/b'],
    ['/a%3Bb', '/a%3Bb'],
    ['/a%3bb', '/a%3Bb'],
    ['//admin', '/admin'],
    ['///admin//x', '/admin/x'],
    ['/%2e%2e/admin', '/admin'],
    ['/public/%2E%2e/admin', '/admin'],
    ['/public/%2e/x', '/public/x'],
    ['/%61dmin', '/admin'],
    ['/%7Euser', '/~user'],
    ['/a%20b', '/a%20b'],
    ['/a/b/..', '/a/'],
    ['/a/b/.', '/a/b/'],
    ['/../../admin', '/admin'],
    ['/items?x=/../admin', '/items'],
    ['/admin%2Fx', undefined],
    ['/admin%2fx', undefined],
    ['/admin%5Cx', undefined],
    ['/admin\\x', undefined],
    ['/a%00', undefined],
    ['/a%zz', undefined],
    ['/a;%zz', undefined],
    ['/a%4', undefined],
    ['*', undefined],
    ['', undefined],
  ];
  for (const [input, want] of cases) {
    const got = normalizePath(input);
    t.equal(got, want, JSON.stringify(input));
    if (got !== undefined) t.equal(normalizePath(got), got, `${JSON.stringify(input)}: normalizing again changes nothing`);
  }
});

t.test('normalizeRequestTarget: target and Host', async (t) => {
  const ok = (method: string, target: string, headers: string[]) => {
    const h = [...headers];
    const r = normalizeRequestTarget(method, target, h);
    return r.ok ? { url: r.url, host: r.host, headers: h } : { reason: r.reason };
  };
  t.same(ok('GET', '/a/./b?q=1', ['Host', 'api']), { url: '/a/b?q=1', host: 'api', headers: ['Host', 'api'] });
  t.same(ok('GET', 'http://admin.shop/x', []), { url: '/x', host: 'admin.shop', headers: ['Host', 'admin.shop'] }, 'absolute-form: the authority becomes Host');
  t.same(ok('GET', 'http://Admin.shop:8080', ['host', 'admin.SHOP:8080']), { url: '/', host: 'Admin.shop:8080', headers: ['host', 'Admin.shop:8080'] }, 'same authority, any case');
  t.same(ok('GET', 'http://a.shop?x=1', ['Host', 'a.shop']), { url: '/?x=1', host: 'a.shop', headers: ['Host', 'a.shop'] });
  t.same(ok('GET', 'http://a.shop/..;/admin', []), { url: '/admin', host: 'a.shop', headers: ['Host', 'a.shop'] });
  t.same(ok('CONNECT', 'a.shop:443', ['Host', 'a.shop:443']), { url: 'a.shop:443', host: 'a.shop:443', headers: ['Host', 'a.shop:443'] });
  t.same(ok('OPTIONS', '*', ['Host', 'a']), { url: '*', host: 'a', headers: ['Host', 'a'] });
  t.same(ok('GET', '/a%2Fb/../c', ['Host', 'a']), { url: '/a%2Fb/../c', host: 'a', headers: ['Host', 'a'] }, 'a path that cannot be normalized goes as received (authz refuses it where paths matter)');
  const refused: [string, string[], RegExp][] = [
    ['/x#frag', ['Host', 'a'], /fragment/],
    ['/x', ['Host', 'a', 'Host', 'b'], /two Host/],
    ['/x', ['Host', 'a', 'host', 'a'], /two Host/],
    ['/x', ['Host', 'a, b'], /more than one/],
    ['http://admin.shop/x', ['Host', 'api.shop'], /differs/],
    ['http://user@admin.shop/x', [], /userinfo/],
    ['http:///x', [], /without an authority/],
    ['ftp://a/x', [], /scheme ftp/],
    ['admin', ['Host', 'a'], /not an absolute path/],
  ];
  for (const [target, headers, reason] of refused) t.match(ok('GET', target, headers), { reason }, `${target} ${headers.join(':')}`);
});

t.test('allowedUpgradeOffer', async (t) => {
  t.equal(allowedUpgradeOffer(['Upgrade', 'websocket'], ['websocket']), 'websocket');
  t.equal(allowedUpgradeOffer(['Upgrade', 'WebSocket'], ['websocket']), 'WebSocket', 'names compare case-insensitively');
  t.equal(allowedUpgradeOffer(['Upgrade', 'h2c'], ['websocket']), undefined, 'h2c is not allowed by default');
  t.equal(allowedUpgradeOffer(['Upgrade', 'h2c, websocket'], ['websocket']), 'websocket', 'only allowed offers are kept');
  t.equal(allowedUpgradeOffer(['Upgrade', 'x/2'], ['websocket', 'x']), 'x/2', 'a version is kept');
  t.equal(allowedUpgradeOffer(['Host', 'a'], ['websocket']), undefined);
});
