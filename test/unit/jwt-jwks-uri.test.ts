import t, { type Test } from 'tap';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, exportJWK, generateKeyPair, type JWK, type CryptoKey } from 'jose';
import { JwtAuthenticator } from '../../src/authz/jwt.js';

const ISSUER = 'https://issuer.example';
const API = { namespace: 'shop', labels: { app: 'api' } };

async function signer(kid: string): Promise<{ kid: string; privateKey: CryptoKey; jwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256' } };
}

function sign(s: { kid: string; privateKey: CryptoKey }, sub = 'alice'): Promise<string> {
  return new SignJWT({ iss: ISSUER, sub, aud: 'api' }).setProtectedHeader({ alg: 'RS256', kid: s.kid }).setExpirationTime('5m').sign(s.privateKey);
}

/** A JWKS endpoint on 127.0.0.1 whose key set and status the test changes. */
async function jwksServer(t: Test): Promise<{ url: string; state: { keys: JWK[]; status: number; hits: number } }> {
  const state = { keys: [] as JWK[], status: 200, hits: 0 };
  const server: Server = createServer((req, res) => {
    state.hits++;
    if (state.status !== 200) {
      res.writeHead(state.status).end('boom');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: state.keys }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/jwks`, state };
}

function authenticator(url: string, opts: ConstructorParameters<typeof JwtAuthenticator>[1]): JwtAuthenticator {
  return new JwtAuthenticator(
    [{ name: 'api-jwt', namespace: 'shop', selector: { app: 'api' }, jwtRules: [{ issuer: ISSUER, audiences: ['api'], jwksUri: url, forwardOriginalToken: true }] }],
    // The test's JWKS server is on loopback, which the agent refuses unless allowed.
    { allowLocalUris: true, ...opts },
  );
}

async function eventually(fn: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return fn();
}

t.test('key rotation is picked up by the background refresh', async (t) => {
  const { url, state } = await jwksServer(t);
  const k1 = await signer('k1');
  const k2 = await signer('k2');
  state.keys = [k1.jwk];
  const authn = authenticator(url, { refreshInterval: 1000, cooldown: 60_000 });
  t.teardown(() => authn.close());
  await authn.ready();

  t.match(await authn.authenticate(API, { authorization: `Bearer ${await sign(k1)}` }), { ok: true, principal: `${ISSUER}/alice` });
  const hitsAfterFirst = state.hits;
  await authn.authenticate(API, { authorization: `Bearer ${await sign(k1, 'bob')}` });
  t.equal(state.hits, hitsAfterFirst, 'the key set is cached, not fetched per request');

  state.keys = [k2.jwk];
  const t2 = await sign(k2);
  t.same(await authn.authenticate(API, { authorization: `Bearer ${t2}` }), { ok: false, reason: 'no matching key' }, 'before the refresh (cooldown holds the kid-miss reload)');
  t.ok(await eventually(async () => (await authn.authenticate(API, { authorization: `Bearer ${t2}` })).ok), 'after the refresh');
  t.same(await authn.authenticate(API, { authorization: `Bearer ${await sign(k1)}` }), { ok: false, reason: 'no matching key' }, 'the retired key is gone');
});

t.test('an unknown kid triggers an immediate fetch', async (t) => {
  const { url, state } = await jwksServer(t);
  const k1 = await signer('k1');
  const k2 = await signer('k2');
  state.keys = [k1.jwk];
  const authn = authenticator(url, { refreshInterval: 600_000, cooldown: 0 });
  t.teardown(() => authn.close());
  await authn.ready();
  state.keys = [k1.jwk, k2.jwk];
  t.match(await authn.authenticate(API, { authorization: `Bearer ${await sign(k2)}` }), { ok: true });
  await authn.refresh();
  t.match(await authn.authenticate(API, { authorization: `Bearer ${await sign(k1)}` }), { ok: true });
});

t.test('a failing endpoint keeps the last good keys', async (t) => {
  const { url, state } = await jwksServer(t);
  const k1 = await signer('k1');
  state.keys = [k1.jwk];
  const authn = authenticator(url, { refreshInterval: 600_000, retryDelay: 20 });
  t.teardown(() => authn.close());
  await authn.ready();
  state.status = 500;
  await authn.refresh();
  const ks = authn.describe().keySets[0]!;
  t.match(ks.lastError, /HTTP 500/);
  t.equal(ks.keys, 1);
  t.match(await authn.authenticate(API, { authorization: `Bearer ${await sign(k1)}` }), { ok: true }, 'still verifies');
  // Retries come sooner than the refresh interval; recovery clears the error.
  const hits = state.hits;
  state.status = 200;
  t.ok(await eventually(async () => state.hits > hits && authn.describe().keySets[0]!.lastError === undefined), 'retried and recovered');
});

t.test('an endpoint down at start: tokens fail closed until it answers', async (t) => {
  const { url, state } = await jwksServer(t);
  const k1 = await signer('k1');
  state.status = 503;
  const authn = authenticator(url, { refreshInterval: 600_000, retryDelay: 20, cooldown: 60_000 });
  t.teardown(() => authn.close());
  await authn.ready();
  const tok = await sign(k1);
  t.same(await authn.authenticate(API, { authorization: `Bearer ${tok}` }), { ok: false, reason: 'no verification keys available' });
  t.same(await authn.authenticate(API, {}), { ok: true });
  state.keys = [k1.jwk];
  state.status = 200;
  t.ok(await eventually(async () => (await authn.authenticate(API, { authorization: `Bearer ${tok}` })).ok), 'recovers on retry');
});

t.test('update keeps key sets still named, closes the others', async (t) => {
  const { url, state } = await jwksServer(t);
  const k1 = await signer('k1');
  state.keys = [k1.jwk];
  const authn = authenticator(url, { refreshInterval: 600_000 });
  t.teardown(() => authn.close());
  await authn.ready();
  const hits = state.hits;
  authn.update([{ name: 'renamed', namespace: 'shop', selector: {}, jwtRules: [{ issuer: ISSUER, audiences: [], jwksUri: url, forwardOriginalToken: true }] }]);
  await authn.ready();
  t.equal(state.hits, hits, 'no refetch for the same URI');
  t.match(await authn.authenticate({ namespace: 'shop', labels: {} }, { authorization: `Bearer ${await sign(k1)}` }), { ok: true });
  authn.update([]);
  t.same(authn.describe().keySets, []);
});
