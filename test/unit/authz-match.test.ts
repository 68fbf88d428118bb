import t from 'tap';
import { compileHostPatterns, compilePatterns, normalizePath, validatePattern } from '../../src/authz/match.js';
import { parseCidr, parseIp, inBlock } from '../../src/authz/cidr.js';

t.test('pattern forms', async (t) => {
  const exact = compilePatterns(['abc']);
  t.ok(exact('abc'));
  t.notOk(exact('abcd'));
  t.notOk(exact('xabc'));

  const prefix = compilePatterns(['abc*']);
  t.ok(prefix('abc'), 'prefix matches itself');
  t.ok(prefix('abcdef'));
  t.notOk(prefix('xabc'));

  const suffix = compilePatterns(['*abc']);
  t.ok(suffix('abc'));
  t.ok(suffix('xyzabc'));
  t.notOk(suffix('abcx'));

  const presence = compilePatterns(['*']);
  t.ok(presence('anything'));
  t.notOk(presence(''), 'presence needs a non-empty value');

  const mixed = compilePatterns(['/a', '/b/*', '*.png']);
  t.ok(mixed('/a'));
  t.ok(mixed('/b/c/d'));
  t.ok(mixed('/img/x.png'));
  t.notOk(mixed('/c'));

  const folded = compilePatterns(['API.Shop*'], { ignoreCase: true });
  t.ok(folded('api.shop.svc'));
});

t.test('validatePattern', async (t) => {
  t.equal(validatePattern('abc'), undefined);
  t.equal(validatePattern('abc*'), undefined);
  t.equal(validatePattern('*abc'), undefined);
  t.equal(validatePattern('*'), undefined);
  t.equal(validatePattern('a*c'), "'*' may only lead or trail");
  t.match(validatePattern('*abc*'), /only once/);
  t.match(validatePattern('**'), /only once/);
  t.equal(validatePattern(''), 'must not be empty');
  t.equal(validatePattern(3), 'must be a string');
  t.throws(() => compilePatterns(['a*b']));
});

t.test('hosts: case-insensitive, any port unless the pattern names one, trailing dot', async (t) => {
  const m = compileHostPatterns(['api.shop.svc', '*.example.com', 'admin.local:8443']);
  t.ok(m('API.shop.svc'));
  t.ok(m('api.shop.svc:8080'));
  t.ok(m('api.shop.svc.'));
  t.ok(m('www.Example.com:80'));
  t.ok(m('admin.local:8443'));
  t.notOk(m('admin.local:9000'));
  t.notOk(m('admin.local'), 'a pattern with a port needs that port');
  t.notOk(m('evil.com'));
  t.notOk(m(''));
  const v6 = compileHostPatterns(['[::1]']);
  t.ok(v6('[::1]:8080'));
});

t.test('normalizePath', async (t) => {
  const cases: [string, string | undefined][] = [
    ['/', '/'],
    ['/items', '/items'],
    ['/items/', '/items/'],
    ['/items?x=1', '/items'],
    ['/items#frag', '/items'],
    ['/items/../admin', '/admin'],
    ['/items/./a', '/items/a'],
    ['/a/b/..', '/a/'],
    ['/a/b/.', '/a/b/'],
    ['/../../admin', '/admin'],
    ['//admin', '/admin'],
    ['/items//x///y', '/items/x/y'],
    ['/%61dmin', '/admin'],
    ['/items/%2e%2e/admin', '/admin'],
    ['/items/%2E%2E/admin', '/admin'],
    ['/a%20b', '/a%20b'],
    ['/a%3fb', '/a%3Fb'],
    ['/a.b/c.d', '/a.b/c.d'],
    ['/.well-known/x', '/.well-known/x'],
    ['/admin%2Fx', undefined],
    ['/admin%2fx', undefined],
    ['/admin%5Cx', undefined],
    ['/admin\\x', undefined],
    ['/a%00', undefined],
    ['/a%zz', undefined],
    ['/a%4', undefined],
    ['/a b', undefined],
    ['*', undefined],
    ['http://h/admin', undefined],
    ['', undefined],
  ];
  for (const [input, want] of cases) t.equal(normalizePath(input), want, JSON.stringify(input));
});

t.test('CIDR', async (t) => {
  const b = parseCidr('10.1.0.0/16')!;
  t.ok(inBlock(parseIp('10.1.2.3')!, b));
  t.notOk(inBlock(parseIp('10.2.0.1')!, b));
  t.ok(inBlock(parseIp('::ffff:10.1.9.9')!, b), 'IPv4-mapped IPv6 is IPv4');
  t.ok(inBlock(parseIp('10.1.0.1')!, parseCidr('10.1.7.7/16')!), 'host bits are masked');
  t.ok(inBlock(parseIp('192.168.1.1')!, parseCidr('192.168.1.1')!), 'a bare address is a /32');
  t.notOk(inBlock(parseIp('192.168.1.2')!, parseCidr('192.168.1.1')!));
  t.ok(inBlock(parseIp('1.2.3.4')!, parseCidr('0.0.0.0/0')!));
  const v6 = parseCidr('fd00:1::/32')!;
  t.ok(inBlock(parseIp('fd00:1:2::5')!, v6));
  t.notOk(inBlock(parseIp('fd00:2::5')!, v6));
  t.notOk(inBlock(parseIp('10.1.2.3')!, parseCidr('::/0')!), 'families do not mix');
  t.ok(inBlock(parseIp('::1')!, parseCidr('::1/128')!));
  t.ok(inBlock(parseIp('10.0.0.1')!, parseCidr('::ffff:10.0.0.0/104')!));
  for (const bad of ['10.0.0.0/33', '10.0.0/8', 'fd00::/129', 'x', '10.0.0.0/', '10.0.0.0/-1', 'fe80::1%eth0']) {
    t.equal(parseCidr(bad), undefined, bad);
  }
  t.equal(parseIp('nope'), undefined);
});
