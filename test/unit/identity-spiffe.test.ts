import t from 'tap';
import { idOfPrincipal, isSpiffeId, parseSpiffeId, principalOf, spiffeId } from '../../src/identity/spiffe.js';
import { parseSubjectAltName, uriSans } from '../../src/identity/verify.js';

t.test('spiffeId builds and parses workload IDs', async (t) => {
  const id = spiffeId('cluster.local', 'shop', 'api');
  t.equal(id, 'spiffe://cluster.local/ns/shop/sa/api');
  t.same(parseSpiffeId(id), { trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'api' });
  t.equal(principalOf(id), 'cluster.local/ns/shop/sa/api');
  t.equal(idOfPrincipal('cluster.local/ns/shop/sa/api'), id);
  t.equal(idOfPrincipal(id), id);
  t.ok(isSpiffeId(id));
});

t.test('invalid parts are refused with WEFT_ERR_IDENTITY', async (t) => {
  t.throws(() => spiffeId('Cluster.Local', 'shop', 'api'), { code: 'WEFT_ERR_IDENTITY' });
  t.throws(() => spiffeId('cluster.local', 'shop/x', 'api'), { code: 'WEFT_ERR_IDENTITY' });
  t.throws(() => spiffeId('cluster.local', '..', 'api'), { code: 'WEFT_ERR_IDENTITY' });
  t.throws(() => spiffeId('cluster.local', 'shop', ''), { code: 'WEFT_ERR_IDENTITY' });
  for (const bad of [
    'https://cluster.local/ns/shop/sa/api',
    'spiffe://cluster.local/ns/shop',
    'spiffe://cluster.local/ns/shop/sa/api/x',
    'spiffe://cluster.local/sa/shop/ns/api',
    'spiffe://cluster.local/ns/shop/sa/a%20b',
    'spiffe:///ns/shop/sa/api',
  ]) {
    t.notOk(isSpiffeId(bad), bad);
    t.throws(() => parseSpiffeId(bad), { code: 'WEFT_ERR_IDENTITY' }, bad);
  }
});

t.test('subjectAltName parsing does not let a quoted value smuggle in an entry', async (t) => {
  t.same(uriSans('URI:spiffe://td/ns/a/sa/b, DNS:x'), ['spiffe://td/ns/a/sa/b']);
  t.same(uriSans('DNS:"a, URI:spiffe://td/ns/evil/sa/x", URI:spiffe://td/ns/a/sa/b'), ['spiffe://td/ns/a/sa/b']);
  t.same(parseSubjectAltName('IP Address:127.0.0.1, DNS:weft-ca'), [
    { type: 'IP Address', value: '127.0.0.1' },
    { type: 'DNS', value: 'weft-ca' },
  ]);
  t.same(uriSans(undefined), []);
});
