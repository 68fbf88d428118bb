import t from 'tap';
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair, base64url, type JWK, type CryptoKey } from 'jose';
import type { RequestAuthentication } from '../../src/config/types.js';
import { JwtAuthenticator, validateRequestAuthentications, type AuthnResult } from '../../src/authz/jwt.js';
import { ConfigError } from '../../src/errors.js';

const ISSUER = 'https://issuer.example';
const ES_ISSUER = 'https://es.example';
const API = { namespace: 'shop', labels: { app: 'api' } };

interface Signer {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  jwk: JWK;
}

async function signer(alg: 'RS256' | 'ES256', kid: string): Promise<Signer> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, jwk };
}

async function token(s: Signer, claims: { iss?: string; sub?: string; aud?: string | string[]; exp?: number; nbf?: number; iat?: number } = {}, header: { kid?: string | null } = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const body = { iss: ISSUER, sub: 'alice', aud: 'api', exp: now + 300, ...claims };
  const kid = header.kid === null ? undefined : (header.kid ?? s.kid);
  return new SignJWT(body).setProtectedHeader({ alg: s.alg, ...(kid !== undefined ? { kid } : {}) }).sign(s.privateKey);
}

function writeJwks(path: string, keys: JWK[]): void {
  // Atomic replace, as a ConfigMap update does.
  writeFileSync(`${path}.tmp`, JSON.stringify({ keys }));
  renameSync(`${path}.tmp`, path);
}

const bearer = (tok: string) => ({ authorization: `Bearer ${tok}` });

function ras(jwksFile: string, esFile: string): RequestAuthentication[] {
  return [
    { name: 'api-jwt', namespace: 'shop', selector: { app: 'api' }, jwtRules: [{ issuer: ISSUER, audiences: ['api'], jwksFile, forwardOriginalToken: true }] },
    {
      name: 'es-jwt',
      namespace: 'shop',
      selector: {},
      jwtRules: [{ issuer: ES_ISSUER, audiences: [], jwksFile: esFile, fromHeader: 'x-jwt', forwardOriginalToken: false }],
    },
  ];
}

t.test('JWKS file: validation outcomes', async (t) => {
  const dir = t.testdir({});
  const rs = await signer('RS256', 'rs-1');
  const es = await signer('ES256', 'es-1');
  const rsOther = await signer('RS256', 'rs-1'); // same kid, different key: a forged signature
  const stranger = await signer('RS256', 'rs-9');
  const rsFile = join(dir, 'jwks.json');
  const esFile = join(dir, 'es.json');
  writeJwks(rsFile, [rs.jwk]);
  writeJwks(esFile, [es.jwk]);

  const authn = new JwtAuthenticator(ras(rsFile, esFile), { fileCheckInterval: 20 });
  t.teardown(() => authn.close());
  await authn.ready();
  const check = (headers: Record<string, string | string[]>, w = API): Promise<AuthnResult> => authn.authenticate(w, headers);

  const good = await check(bearer(await token(rs)));
  t.match(good, { ok: true, principal: `${ISSUER}/alice`, header: 'authorization', forwardOriginalToken: true, claims: { sub: 'alice' } });

  t.same(await check({}), { ok: true }, 'no token: passes on without a principal');
  t.same(await check({ authorization: 'Basic dXNlcjpwdw==' }), { ok: true }, 'another scheme is not a token');
  t.match(await check({ authorization: 'bearer ' + (await token(rs)) }), { ok: true, principal: `${ISSUER}/alice` }, 'scheme is case-insensitive');

  const now = Math.floor(Date.now() / 1000);
  t.same(await check(bearer(await token(rs, { exp: now - 600 }))), { ok: false, reason: 'token expired' });
  t.match(await check(bearer(await token(rs, { exp: now - 10 }))), { ok: true }, 'within the clock skew');
  t.same(await check(bearer(await token(rs, { nbf: now + 600 }))), { ok: false, reason: 'token not yet valid' });
  t.same(await check(bearer(await token(rsOther))), { ok: false, reason: 'signature verification failed' }, 'other key');
  t.same(await check(bearer(await token(stranger))), { ok: false, reason: 'no matching key' }, 'unknown kid');
  t.same(await check(bearer(await token(rs, { iss: 'https://evil.example' }))), { ok: false, reason: 'unknown issuer' });
  t.same(await check(bearer(await token(rs, { aud: 'other' }))), { ok: false, reason: 'audience not allowed' });
  t.match(await check(bearer(await token(rs, { aud: ['other', 'api'] }))), { ok: true }, 'one of several audiences');
  t.same(await check(bearer(await token(rs, { iss: ES_ISSUER }))), { ok: false, reason: 'unknown issuer' }, 'the ES rule reads another header');
  t.match(await check(bearer(await token(rs, {}, { kid: null }))), { ok: true }, 'no kid: the one usable key');

  // alg none, and HS256 "signed" with the public key material: both refused.
  const payload = base64url.encode(JSON.stringify({ iss: ISSUER, sub: 'mallory', aud: 'api', exp: now + 300 }));
  const none = `${base64url.encode(JSON.stringify({ alg: 'none', kid: 'rs-1' }))}.${payload}.`;
  t.same(await check(bearer(none)), { ok: false, reason: 'algorithm not allowed' });
  const hs = await new SignJWT({ iss: ISSUER, sub: 'mallory', aud: 'api' }).setProtectedHeader({ alg: 'HS256', kid: 'rs-1' }).sign(new TextEncoder().encode(JSON.stringify(rs.jwk)));
  t.same(await check(bearer(hs)), { ok: false, reason: 'algorithm not allowed' });

  t.same(await check(bearer('not.a.jwt')), { ok: false, reason: 'malformed token' });
  t.same(await check(bearer('garbage')), { ok: false, reason: 'malformed token' });
  t.same(await check({ authorization: 'Bearer' }), { ok: false, reason: 'malformed authorization header' });
  t.same(await check({ authorization: ['Bearer a', 'Bearer b'] }), { ok: false, reason: 'malformed authorization header' });
  const tampered = (await token(rs)).split('.');
  tampered[1] = base64url.encode(JSON.stringify({ iss: ISSUER, sub: 'root', aud: 'api', exp: now + 300 }));
  t.same(await check(bearer(tampered.join('.'))), { ok: false, reason: 'signature verification failed' }, 'tampered payload');

  // ES256 from a custom header; the rule asks the token not be forwarded.
  const esTok = await token(es, { iss: ES_ISSUER, sub: 'svc-1', aud: 'anything' });
  t.match(await check({ 'x-jwt': esTok }), { ok: true, principal: `${ES_ISSUER}/svc-1`, header: 'x-jwt', forwardOriginalToken: false });
  t.match(await check({ 'x-jwt': `Bearer ${esTok}` }), { ok: true }, 'a Bearer prefix in a custom header is tolerated');
  t.same(await check({ 'x-jwt': await token(es, { iss: ES_ISSUER, exp: now - 3600 }) }), { ok: false, reason: 'token expired' });
  t.same(await check({ 'x-jwt': esTok, ...bearer(await token(rs, { exp: now - 3600 })) }), { ok: false, reason: 'token expired' }, 'every token present must be valid');

  // Selector: the ES rule selects the whole namespace, the RS rule only app=api.
  const db = { namespace: 'shop', labels: { app: 'db' } };
  t.same(await check(bearer(await token(rs)), db), { ok: true }, 'RS rule does not select db: the header is not a token there');
  t.match(await check({ 'x-jwt': esTok }, db), { ok: true, principal: `${ES_ISSUER}/svc-1` });
  t.same(await check(bearer('garbage'), { namespace: 'web', labels: { app: 'api' } }), { ok: true }, 'other namespace: no rules');
  t.ok(authn.appliesTo(API));
  t.notOk(authn.appliesTo({ namespace: 'web', labels: {} }));
});

t.test('JWKS file: rotation, bad files keep the last good keys, cache follows keys', async (t) => {
  const dir = t.testdir({});
  const k1 = await signer('RS256', 'k1');
  const k2 = await signer('ES256', 'k2');
  const file = join(dir, 'jwks.json');
  const esFile = join(dir, 'es.json');
  writeJwks(file, [k1.jwk]);
  writeJwks(esFile, []);
  const authn = new JwtAuthenticator(ras(file, esFile), { fileCheckInterval: 20, cooldown: 60_000 });
  t.teardown(() => authn.close());
  await authn.ready();

  const t1 = await token(k1);
  t.match(await authn.authenticate(API, bearer(t1)), { ok: true });
  t.match(await authn.authenticate(API, bearer(t1)), { ok: true }, 'cached');

  // A broken file is refused; the last good key set stays.
  writeFileSync(file, '{ not json');
  await authn.refresh();
  t.match(await authn.authenticate(API, bearer(await token(k1))), { ok: true }, 'last good keys kept');
  const status = authn.describe().keySets.find((k) => k.source === `file:${file}`)!;
  t.match(status.lastError, /not JSON/);
  t.same(status.kids, ['k1']);

  // Rotation: k1 out, k2 in; picked up by the file watch, without an explicit refresh.
  writeJwks(file, [k2.jwk]);
  const t2 = await token(k2);
  const deadline = Date.now() + 5000;
  let res = await authn.authenticate(API, bearer(t2));
  while (!res.ok && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 25));
    res = await authn.authenticate(API, bearer(t2));
  }
  t.match(res, { ok: true, principal: `${ISSUER}/alice` }, 'new key picked up by the watch');
  t.same(await authn.authenticate(API, bearer(t1)), { ok: false, reason: 'no matching key' }, 'cached success dropped with its key');
});

t.test('unknown kid forces a reload (outside the cooldown)', async (t) => {
  const dir = t.testdir({});
  const k1 = await signer('RS256', 'k1');
  const k2 = await signer('RS256', 'k2');
  const file = join(dir, 'jwks.json');
  writeJwks(file, [k1.jwk]);
  // A slow poll, so only the kid-miss path can pick the new key up.
  const authn = new JwtAuthenticator([{ name: 'a', namespace: 'shop', selector: {}, jwtRules: [{ issuer: ISSUER, audiences: [], jwksFile: file, forwardOriginalToken: true }] }], {
    fileCheckInterval: 60_000,
    cooldown: 0,
  });
  t.teardown(() => authn.close());
  await authn.ready();
  writeJwks(file, [k1.jwk, k2.jwk]);
  t.match(await authn.authenticate(API, bearer(await token(k2))), { ok: true });
});

t.test('a missing JWKS file: tokens fail closed, no-token requests pass', async (t) => {
  const dir = t.testdir({});
  const s = await signer('RS256', 'k1');
  const authn = new JwtAuthenticator([{ name: 'a', namespace: 'shop', selector: {}, jwtRules: [{ issuer: ISSUER, audiences: [], jwksFile: join(dir, 'absent.json'), forwardOriginalToken: true }] }], {
    fileCheckInterval: 60_000,
  });
  t.teardown(() => authn.close());
  await authn.ready();
  t.same(await authn.authenticate(API, bearer(await token(s))), { ok: false, reason: 'no verification keys available' });
  t.same(await authn.authenticate(API, {}), { ok: true });
});

t.test('configuration problems', async (t) => {
  t.same(validateRequestAuthentications([]), []);
  t.same(
    validateRequestAuthentications([
      { name: 'a', namespace: 'shop', selector: {}, jwtRules: [{ issuer: '', audiences: [''], forwardOriginalToken: true }] },
      { name: 'b', namespace: 'shop', selector: {}, jwtRules: [{ issuer: 'i', audiences: [], jwksFile: '/f', jwksUri: 'https://x/jwks', forwardOriginalToken: true }] },
      { name: 'c', namespace: '', selector: {}, jwtRules: [{ issuer: 'i', audiences: [], jwksUri: 'ftp://x/jwks', fromHeader: 'bad header', forwardOriginalToken: true }] },
    ]),
    [
      'requestAuthentications[0].jwtRules[0].issuer: required',
      'requestAuthentications[0].jwtRules[0].audiences: must be a list of non-empty strings',
      'requestAuthentications[0].jwtRules[0]: exactly one of jwksFile and jwksUri is required',
      'requestAuthentications[1].jwtRules[0]: exactly one of jwksFile and jwksUri is required',
      'requestAuthentications[2].namespace: required',
      "requestAuthentications[2].jwtRules[0].jwksUri: 'ftp://x/jwks' is not an http(s) URL",
      "requestAuthentications[2].jwtRules[0].fromHeader: 'bad header' is not a header name",
    ],
  );
  t.throws(() => new JwtAuthenticator([], { algorithms: ['RS256', 'HS256'] }), ConfigError);
  t.throws(() => new JwtAuthenticator([], { algorithms: ['none'] }), ConfigError);
  t.throws(() => new JwtAuthenticator([{ name: 'a', namespace: 'shop', selector: {}, jwtRules: [{ issuer: 'i', audiences: [], forwardOriginalToken: true }] }]), ConfigError);
});

t.test('describe', async (t) => {
  const dir = t.testdir({});
  const s = await signer('ES256', 'e1');
  const file = join(dir, 'jwks.json');
  writeJwks(file, [s.jwk]);
  const authn = new JwtAuthenticator(ras(file, file), { fileCheckInterval: 60_000 });
  t.teardown(() => authn.close());
  await authn.ready();
  const d = authn.describe([{ name: 'api-0', ...API }]);
  t.same(d.rules, [
    { requestAuthentication: 'shop/api-jwt', issuer: ISSUER, audiences: ['api'], jwks: `file:${file}`, fromHeader: 'authorization' },
    { requestAuthentication: 'shop/es-jwt', issuer: ES_ISSUER, audiences: [], jwks: `file:${file}`, fromHeader: 'x-jwt' },
  ]);
  t.equal(d.keySets.length, 1, 'one key set shared by both rules');
  t.match(d.keySets[0], { source: `file:${file}`, keys: 1, kids: ['e1'], generation: 1, lastLoaded: String });
  t.same(d.workloads, [{ name: 'api-0', namespace: 'shop', issuers: [ISSUER, ES_ISSUER] }]);
});
