import t from 'tap';
import { X509Certificate, createPrivateKey, createPublicKey, webcrypto } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CertificateAuthority, MAX_CERT_TTL_MS } from '../../src/identity/ca.js';
import { x509, generateP256, ECDSA_SHA256 } from '../../src/identity/x509.js';
import { checkCaServerIdentity } from '../../src/identity/ca-client.js';
import type { PeerCertificate } from 'node:tls';

const ID = 'spiffe://cluster.local/ns/shop/sa/api';

async function csrFor(uris: string[] = [ID], keys?: CryptoKeyPair): Promise<string> {
  keys ??= await generateP256();
  const extensions = uris.length ? [new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: 'url' as const, value })))] : [];
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: ECDSA_SHA256, extensions });
  return csr.toString('pem');
}

t.test('open creates a root once and reloads the same one', async (t) => {
  const dir = join(t.testdir(), 'ca');
  const ca1 = await CertificateAuthority.open(dir);
  const mode = async (f: string) => (await stat(join(dir, f))).mode & 0o777;
  t.equal(await mode('.'), 0o700, 'state dir 0700');
  t.equal(await mode('root-key.pem'), 0o600, 'root key 0600');
  t.equal(await mode('token-secret'), 0o600, 'token secret 0600');
  t.equal(await readFile(join(dir, 'root.pem'), 'utf8'), ca1.rootPem);

  const root = new X509Certificate(ca1.rootPem);
  t.ok(root.ca, 'CA:true');
  t.ok(root.checkIssued(root) && root.verify(root.publicKey), 'self-signed');
  t.equal(root.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  const years = (Date.parse(root.validTo) - Date.now()) / (365 * 24 * 3600_000);
  t.ok(years > 9.9 && years < 10.1, `10 years (${years})`);
  t.match(root.subject, /O=weft/);
  t.match(root.subject, /CN=weft root CA cluster\.local/);

  const ca2 = await CertificateAuthority.open(dir);
  t.equal(ca2.rootPem, ca1.rootPem, 'same root after reopening');
  // A leaf signed by the reopened CA chains to the root of the first.
  const leaf = new X509Certificate(await ca2.sign(await csrFor(), { spiffeId: ID }));
  t.ok(leaf.verify(root.publicKey));
  // Tokens survive a restart too.
  t.equal(ca2.verifyNodeToken(ca1.issueNodeToken('node-a')), 'node-a');
});

t.test('a root key that does not match the certificate is refused', async (t) => {
  const base = t.testdir();
  const dir = join(base, 'a');
  const other = join(base, 'b');
  await CertificateAuthority.open(dir);
  await CertificateAuthority.open(join(other, 'x'));
  await writeFile(join(dir, 'root-key.pem'), await readFile(join(other, 'x', 'root-key.pem')));
  await t.rejects(CertificateAuthority.open(dir), { code: 'WEFT_ERR_IDENTITY', message: /is not the key of/ });
});

t.test('a root certificate without its key is refused, not replaced', async (t) => {
  const dir = t.testdir();
  const ca = await CertificateAuthority.open(dir);
  await writeFile(join(dir, 'root-key.pem.bak'), 'x');
  const { unlink } = await import('node:fs/promises');
  await unlink(join(dir, 'root-key.pem'));
  await t.rejects(CertificateAuthority.open(dir), /root-key\.pem is missing/);
  t.equal(await readFile(join(dir, 'root.pem'), 'utf8'), ca.rootPem);
});

t.test('sign: a workload certificate as SPIFFE expects', async (t) => {
  const ca = await CertificateAuthority.open(t.testdir());
  const root = new X509Certificate(ca.rootPem);
  const before = Date.now();
  const pem = await ca.sign(await csrFor(), { spiffeId: ID });
  const leaf = new X509Certificate(pem);
  t.equal(leaf.subjectAltName, `URI:${ID}`);
  t.equal(leaf.publicKey.asymmetricKeyType, 'ec');
  t.equal(leaf.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.notOk(leaf.ca, 'CA:false');
  t.ok(leaf.checkIssued(root), 'issued by the root');
  t.ok(leaf.verify(root.publicKey), 'signed by the root key');
  t.same(leaf.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'serverAuth + clientAuth');
  const ttl = Date.parse(leaf.validTo) - before;
  t.ok(Math.abs(ttl - 24 * 3600_000) < 5000, `24h default (${ttl})`);
  const back = before - Date.parse(leaf.validFrom);
  t.ok(back >= 59_000 && back <= 62_000, `notBefore backdated a minute (${back})`);
  t.equal(leaf.serialNumber.length, 32, '128-bit serial');
  const again = new X509Certificate(await ca.sign(await csrFor(), { spiffeId: ID }));
  t.not(again.serialNumber, leaf.serialNumber, 'random serials');

  // Extensions, read with @peculiar/x509: key usage, SKI, AKI = root SKI.
  const p = new x509.X509Certificate(pem);
  const ku = p.getExtension(x509.KeyUsagesExtension)!;
  t.equal(ku.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement);
  t.ok(ku.critical);
  t.ok(p.getExtension(x509.SubjectAlternativeNameExtension)!.critical, 'SAN critical (empty subject)');
  const rootSki = new x509.X509Certificate(ca.rootPem).getExtension(x509.SubjectKeyIdentifierExtension)!.keyId;
  t.equal(p.getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId, rootSki);
  t.ok(p.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId);
});

t.test('sign: ttl, DNS names, key input forms', async (t) => {
  const ca = await CertificateAuthority.open(t.testdir());
  const short = new X509Certificate(await ca.sign(await csrFor(), { spiffeId: ID, ttlMs: 3000 }));
  t.ok(Date.parse(short.validTo) - Date.now() <= 3000);
  const long = new X509Certificate(await ca.sign(await csrFor(), { spiffeId: ID, ttlMs: 30 * 24 * 3600_000 }));
  t.ok(Date.parse(long.validTo) - Date.now() <= MAX_CERT_TTL_MS, 'cut to the maximum');
  const dns = new X509Certificate(await ca.sign(await csrFor(), { spiffeId: ID, dnsNames: ['api.shop.svc'] }));
  t.equal(dns.subjectAltName, `URI:${ID}, DNS:api.shop.svc`);
  const keys = await generateP256();
  const fromKey = new X509Certificate(await ca.sign(keys.publicKey, { spiffeId: ID }));
  const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  t.ok(fromKey.publicKey.export({ type: 'spki', format: 'der' }).equals(spki), 'public CryptoKey');
  const spkiPem = x509.PemConverter.encode(spki.buffer.slice(spki.byteOffset, spki.byteOffset + spki.length), 'PUBLIC KEY');
  const fromPem = new X509Certificate(await ca.sign(spkiPem, { spiffeId: ID }));
  t.ok(fromPem.publicKey.export({ type: 'spki', format: 'der' }).equals(spki), 'SPKI PEM');
  const noSan = new X509Certificate(await ca.sign(await csrFor([]), { spiffeId: ID }));
  t.equal(noSan.subjectAltName, `URI:${ID}`, 'a CSR without SAN gets the requested ID');
  await t.rejects(ca.sign(await csrFor(), { spiffeId: ID, ttlMs: -1 }), { code: 'WEFT_ERR_BAD_REQUEST' });
});

t.test('sign: bad CSRs are rejected', async (t) => {
  const ca = await CertificateAuthority.open(t.testdir());
  await t.rejects(ca.sign('garbage', { spiffeId: ID }), { code: 'WEFT_ERR_BAD_REQUEST' });
  await t.rejects(ca.sign('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n', { spiffeId: ID }), { code: 'WEFT_ERR_BAD_REQUEST', message: /malformed CSR/ });

  // Same length, one byte changed inside the signed part: the structure parses, the signature fails.
  const good = new x509.Pkcs10CertificateRequest(await csrFor());
  const der = Buffer.from(good.rawData);
  const at = der.indexOf(Buffer.from('sa/api'));
  t.ok(at > 0);
  der[at + 5] = 'x'.charCodeAt(0);
  const tampered = x509.PemConverter.encode(der.buffer.slice(der.byteOffset, der.byteOffset + der.length), 'CERTIFICATE REQUEST');
  await t.rejects(ca.sign(tampered, { spiffeId: ID }), { code: 'WEFT_ERR_BAD_REQUEST', message: /signature/ });

  await t.rejects(ca.sign(await csrFor(['spiffe://cluster.local/ns/shop/sa/admin']), { spiffeId: ID }), {
    code: 'WEFT_ERR_IDENTITY',
    message: /not the requested identity/,
  });
  await t.rejects(ca.sign(await csrFor([ID, 'spiffe://cluster.local/ns/x/sa/y']), { spiffeId: ID }), { code: 'WEFT_ERR_IDENTITY' });

  const rsa = (await webcrypto.subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
  const rsaCsr = await x509.Pkcs10CertificateRequestGenerator.create({ keys: rsa, signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' } });
  await t.rejects(ca.sign(rsaCsr.toString('pem'), { spiffeId: ID }), { code: 'WEFT_ERR_BAD_REQUEST', message: /P-256/ });

  await t.rejects(ca.sign(await csrFor(['spiffe://other.domain/ns/shop/sa/api']), { spiffeId: 'spiffe://other.domain/ns/shop/sa/api' }), {
    code: 'WEFT_ERR_IDENTITY',
    message: /trust domain/,
  });
  await t.rejects(ca.sign(await csrFor([]), { spiffeId: 'spiffe://cluster.local/foo' }), { code: 'WEFT_ERR_IDENTITY' });
});

t.test('serving certificate: DNS weft-ca and the listen address, no URI SAN', async (t) => {
  const ca = await CertificateAuthority.open(t.testdir());
  const s = await ca.issueServingCertificate(['127.0.0.1', 'ca.example']);
  const cert = new X509Certificate(s.certPem);
  t.equal(cert.subjectAltName, 'DNS:weft-ca, IP Address:127.0.0.1, DNS:ca.example');
  t.same(cert.keyUsage, ['1.3.6.1.5.5.7.3.1']);
  t.ok(cert.checkPrivateKey(createPrivateKey(s.keyPem)));
  t.ok(cert.verify(new X509Certificate(ca.rootPem).publicKey));
});

t.test('node tokens', async (t) => {
  const base = t.testdir();
  const dir = join(base, 'ca');
  const ca = await CertificateAuthority.open(dir);
  const token = ca.issueNodeToken('node-a');
  t.match(token, /^weft1\.[A-Za-z0-9_-]+\.\d+\.[A-Za-z0-9_-]+$/);
  t.equal(ca.verifyNodeToken(token), 'node-a');
  t.equal(ca.verifyNodeToken(`${token}\n`), 'node-a', 'trailing newline from a file');

  const [p, node, at, mac] = token.split('.') as [string, string, string, string];
  const forged = [p, Buffer.from('node-b').toString('base64url'), at, mac].join('.');
  t.throws(() => ca.verifyNodeToken(forged), { code: 'WEFT_ERR_UNAUTHENTICATED' }, 'other node name');
  t.throws(() => ca.verifyNodeToken([p, node, String(Number(at) + 1), mac].join('.')), { code: 'WEFT_ERR_UNAUTHENTICATED' }, 'other time');
  const flipped = mac.slice(0, -2) + (mac.at(-2) === 'A' ? 'B' : 'A') + mac.at(-1);
  t.throws(() => ca.verifyNodeToken([p, node, at, flipped].join('.')), { code: 'WEFT_ERR_UNAUTHENTICATED' }, 'other MAC');
  for (const bad of ['', 'weft1', 'weft2.bm9kZQ.1.x', 'a.b.c.d.e', `${token}.x`]) {
    t.throws(() => ca.verifyNodeToken(bad), { code: 'WEFT_ERR_UNAUTHENTICATED' }, JSON.stringify(bad));
  }
  t.throws(() => ca.issueNodeToken('bad name'), { code: 'WEFT_ERR_BAD_REQUEST' });

  const other = await CertificateAuthority.open(join(base, 'other'));
  t.throws(() => other.verifyNodeToken(token), { code: 'WEFT_ERR_UNAUTHENTICATED' }, 'another CA secret');

  await ca.rotateTokenSecret();
  t.throws(() => ca.verifyNodeToken(token), { code: 'WEFT_ERR_UNAUTHENTICATED' }, 'revoked by rotation');
  const fresh = ca.issueNodeToken('node-a');
  const reopened = await CertificateAuthority.open(dir);
  t.equal(reopened.verifyNodeToken(fresh), 'node-a', 'the rotated secret is persisted');
  t.throws(() => reopened.verifyNodeToken(token), { code: 'WEFT_ERR_UNAUTHENTICATED' });
  t.equal((await stat(join(dir, 'token-secret'))).mode & 0o777, 0o600);
  t.ok(createPublicKey(ca.rootPem));
});

t.test('two CAs opened at once on one new directory agree on one root', async (t) => {
  const dir = join(t.testdir(), 'race');
  const [a, b, c] = await Promise.all([CertificateAuthority.open(dir), CertificateAuthority.open(dir), CertificateAuthority.open(dir)]);
  t.equal(a.rootPem, b.rootPem);
  t.equal(b.rootPem, c.rootPem);
  t.equal(a.verifyNodeToken(c.issueNodeToken('n1')), 'n1');
});

t.test('agents accept the CA server certificate under the name weft-ca, and nothing with a URI SAN', async (t) => {
  const peer = (subjectaltname: string) => ({ subject: {}, subjectaltname }) as unknown as PeerCertificate;
  t.equal(checkCaServerIdentity('10.1.2.3', peer('DNS:weft-ca, IP Address:10.9.9.9')), undefined);
  t.equal(checkCaServerIdentity('10.9.9.9', peer('DNS:weft-ca, IP Address:10.9.9.9')), undefined);
  t.type(checkCaServerIdentity('10.1.2.3', peer('URI:spiffe://cluster.local/ns/a/sa/b, DNS:weft-ca')), Error);
  t.type(checkCaServerIdentity('10.1.2.3', peer('DNS:"weft-ca, DNS:x"')), Error);
  t.type(checkCaServerIdentity('10.1.2.3', peer('DNS:other')), Error);
});
