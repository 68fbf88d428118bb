// The CA signing with an intermediate in Istio's `cacerts` layout: what a cert-manager or
// corporate PKI issues. Good layouts are checked with real TLS handshakes (a peer that holds
// only the root verifies the leaf through the intermediates sent with it); each bad input is
// refused at start with a message naming the file and the problem.
import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import * as tls from 'node:tls';
import { join } from 'node:path';
import { CertificateAuthority } from '../../src/identity/ca.js';
import { chainWithoutRoot } from '../../src/identity/pem.js';
import { generateP256, privateKeyToPem } from '../../src/identity/x509.js';
import { makeIntermediate, makeRootCa, rsaKeyPem, writeCacerts, type TestCa } from '../lib/pki.js';

const ID = 'spiffe://cluster.local/ns/shop/sa/api';

/** A leaf from `ca`, served over real TLS; resolves with what a client trusting `rootsPem` saw. */
async function handshake(ca: CertificateAuthority, rootsPem: string): Promise<{ authorized: boolean; error?: string; chainLength: number }> {
  const keys = await generateP256();
  const leaf = await ca.sign(keys.publicKey, { spiffeId: ID, ttlMs: 3600_000 });
  const chain = ca.certChainOf(leaf).join('');
  const server = tls.createServer({ key: await privateKeyToPem(keys.privateKey), cert: chainWithoutRoot(chain), minVersion: 'TLSv1.3' }, (s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    return await new Promise((resolve) => {
      const c = tls.connect({ host: '127.0.0.1', port: (server.address() as { port: number }).port, ca: rootsPem, rejectUnauthorized: false, checkServerIdentity: () => undefined });
      c.on('secureConnect', () => {
        let n = 0;
        for (let p = c.getPeerCertificate(true); p?.raw; p = p.issuerCertificate === p ? (undefined as never) : p.issuerCertificate) n++;
        resolve({ authorized: c.authorized, ...(c.authorizationError ? { error: String(c.authorizationError) } : {}), chainLength: n });
        c.destroy();
      });
      c.on('error', (err) => resolve({ authorized: false, error: err.message, chainLength: 0 }));
    });
  } finally {
    server.close();
  }
}

t.test('an intermediate from cacerts signs the leaves; peers that hold only the root verify them', async (t) => {
  const base = t.testdir();
  const root = await makeRootCa('corp root');
  const inter = await makeIntermediate(root, 'weft intermediate');
  const dir = writeCacerts(join(base, 'cacerts'), { signer: inter, roots: [root], chain: [inter, root] });
  const ca = await CertificateAuthority.open(join(base, 'state'), { cacerts: dir });
  t.equal(ca.rootPem, root.certPem, 'the trust bundle is root-cert.pem');
  t.equal(ca.intermediatesPem.length, 1);
  t.equal(ca.source, dir);

  const keys = await generateP256();
  const leafPem = await ca.sign(keys.publicKey, { spiffeId: ID });
  const leaf = new X509Certificate(leafPem);
  const interX = new X509Certificate(inter.certPem);
  t.ok(leaf.checkIssued(interX) && leaf.verify(interX.publicKey), 'the leaf is signed by the intermediate');
  t.notOk(leaf.verify(new X509Certificate(root.certPem).publicKey), 'not by the root');
  t.same(
    ca.certChainOf(leafPem).map((p) => new X509Certificate(p).subject),
    [leaf.subject, interX.subject, new X509Certificate(root.certPem).subject],
    'chain handed out: leaf, intermediate, root',
  );
  t.ok(leaf.validToDate <= interX.validToDate, 'no leaf outlives its intermediate');

  const seen = await handshake(ca, root.certPem);
  t.ok(seen.authorized, `a client trusting only the root verifies the leaf (${seen.error ?? 'ok'})`);
  t.equal(seen.chainLength, 3, 'leaf + intermediate sent, root completed from the trust store');
  const other = await makeRootCa('someone else');
  const refused = await handshake(ca, other.certPem);
  t.notOk(refused.authorized, 'a client trusting another root does not');
  t.match(refused.error, /UNABLE_TO_GET_ISSUER_CERT|unable to get/);

  const serving = await ca.issueServingCertificate(['127.0.0.1']);
  t.equal((serving.certPem.match(/BEGIN CERTIFICATE/g) ?? []).length, 2, "the CA server's own certificate is served with the intermediate");
});

t.test('two intermediates, cert-chain.pem without ca-cert.pem, no cert-chain.pem, a bundle of two roots', async (t) => {
  const base = t.testdir();
  const root = await makeRootCa('corp root');
  const policy = await makeIntermediate(root, 'policy CA');
  const issuing = await makeIntermediate(policy, 'issuing CA');
  const deep = writeCacerts(join(base, 'deep'), { signer: issuing, roots: [root], chain: [issuing, policy, root] });
  const ca = await CertificateAuthority.open(join(base, 's1'), { cacerts: deep });
  t.equal(ca.intermediatesPem.length, 2, 'both intermediates are handed out');
  const seen = await handshake(ca, root.certPem);
  t.ok(seen.authorized, `two levels verify (${seen.error ?? 'ok'})`);
  t.equal(seen.chainLength, 4);

  const above = writeCacerts(join(base, 'above'), { signer: issuing, roots: [root], chain: [policy] });
  t.equal((await CertificateAuthority.open(join(base, 's2'), { cacerts: above })).intermediatesPem.length, 2, 'cert-chain.pem may hold only what lies above ca-cert.pem');

  const inter = await makeIntermediate(root, 'direct');
  const noChain = writeCacerts(join(base, 'nochain'), { signer: inter, roots: [root], chain: null });
  t.ok(await CertificateAuthority.open(join(base, 's3'), { cacerts: noChain }), 'cert-chain.pem is optional when the root issued ca-cert.pem');

  const rootSigns = writeCacerts(join(base, 'rootsigns'), { signer: root, roots: [root], chain: null });
  const direct = await CertificateAuthority.open(join(base, 's5'), { cacerts: rootSigns });
  t.equal(direct.intermediatesPem.length, 0, 'ca-cert.pem may be the root itself (the first step of rotating a root the CA made)');
  t.ok((await handshake(direct, root.certPem)).authorized);

  const oldRoot = await makeRootCa('old root');
  const both = writeCacerts(join(base, 'both'), { signer: inter, roots: [oldRoot, root], chain: [inter, root] });
  const rotating = await CertificateAuthority.open(join(base, 's4'), { cacerts: both });
  t.equal(rotating.rootPem, oldRoot.certPem + root.certPem, 'root-cert.pem may hold several roots (a rotation)');
  t.equal(rotating.anchorPem, root.certPem, 'the leaves lead to the one ca-cert.pem is under');
  t.ok((await handshake(rotating, rotating.rootPem)).authorized, 'a peer trusting the bundle verifies');
});

t.test('bad cacerts input is refused with a message that names the file and the problem', async (t) => {
  const base = t.testdir();
  const root = await makeRootCa('corp root');
  const inter = await makeIntermediate(root, 'weft intermediate');
  const other = await makeRootCa('other root');
  let n = 0;
  const refuse = async (name: string, layout: Parameters<typeof writeCacerts>[1], re: RegExp, edit?: (dir: string) => void) => {
    const dir = writeCacerts(join(base, `bad${++n}`), layout);
    edit?.(dir);
    await t.rejects(CertificateAuthority.open(join(base, `state${n}`), { cacerts: dir }), { code: 'WEFT_ERR_IDENTITY', message: re }, name);
  };

  await refuse('key of another certificate', { signer: { certPem: inter.certPem, keyPem: other.keyPem }, roots: [root], chain: [inter, root] }, /ca-key\.pem is not the key of ca-cert\.pem/);
  const leafLike = await makeIntermediate(root, 'not a CA', { ca: false });
  await refuse('not a CA', { signer: leafLike, roots: [root], chain: [leafLike, root] }, /ca-cert\.pem is not a CA certificate \(basicConstraints CA:TRUE is missing\)/);
  const noSign = await makeIntermediate(root, 'cannot sign', { keyCertSign: false });
  await refuse('no keyCertSign', { signer: noSign, roots: [root], chain: [noSign, root] }, /ca-cert\.pem lacks keyCertSign/);
  await refuse('chain to another root', { signer: inter, roots: [other], chain: [inter, root] }, /cert-chain\.pem does not lead to a root in root-cert\.pem: the chain ends at .*CN=corp root/);
  await refuse('no chain, not under the root', { signer: inter, roots: [other], chain: null }, /ca-cert\.pem does not lead to a root in root-cert\.pem.*add cert-chain\.pem/);
  const expired = await makeIntermediate(root, 'expired', { notBefore: new Date(Date.now() - 10 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
  await refuse('expired intermediate', { signer: expired, roots: [root], chain: [expired, root] }, /ca-cert\.pem expired on \d{4}-/);
  const oldRoot = await makeRootCa('expired root', { notBefore: new Date(Date.now() - 10 * 86400_000), notAfter: new Date(Date.now() - 3600_000) });
  const underOld = await makeIntermediate(oldRoot, 'under an expired root');
  await refuse('expired root', { signer: underOld, roots: [oldRoot], chain: [underOld, oldRoot] }, /root-cert\.pem: the root .*CN=expired root.* expired on/);
  const future = await makeIntermediate(root, 'future', { notBefore: new Date(Date.now() + 86400_000) });
  await refuse('not yet valid', { signer: future, roots: [root], chain: [future, root] }, /ca-cert\.pem is not valid before/);
  await refuse('intermediate in the root bundle', { signer: inter, roots: [root, inter], chain: [inter, root] }, /root-cert\.pem: certificate 2 of 2 .*is not a self-signed CA certificate/);
  await refuse('RSA key', { signer: inter, roots: [root], chain: [inter, root] }, /ca-key\.pem is not the key of ca-cert\.pem/, (dir) => writeFileSync(join(dir, 'ca-key.pem'), rsaKeyPem()));
  await refuse('missing key', { signer: inter, roots: [root], chain: [inter, root] }, /ca-key\.pem is missing \(the layout: ca-cert\.pem, ca-key\.pem, root-cert\.pem, cert-chain\.pem\)/, (dir) =>
    rmSync(join(dir, 'ca-key.pem')),
  );
  await refuse('garbage root file', { signer: inter, roots: [root], chain: [inter, root] }, /root-cert\.pem holds no PEM certificate/, (dir) =>
    writeFileSync(join(dir, 'root-cert.pem'), 'not a certificate\n'),
  );
});

t.test('an RSA intermediate is named as such: weft signs with P-256 only', async (t) => {
  const base = t.testdir();
  // A CA certificate whose key is RSA: made with openssl-like tooling via @peculiar/x509.
  const { x509 } = await import('../../src/identity/x509.js');
  const { webcrypto } = await import('node:crypto');
  const root: TestCa = await makeRootCa('corp root');
  const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '7f01',
    subject: 'CN=rsa intermediate',
    issuer: root.cert.subjectName,
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 86400_000),
    publicKey: keys.publicKey,
    signingKey: root.keys.privateKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const keyPem = x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY');
  const dir = writeCacerts(join(base, 'rsa'), { signer: { certPem: cert.toString('pem'), keyPem }, roots: [root], chain: null });
  await t.rejects(CertificateAuthority.open(join(base, 'state'), { cacerts: dir }), {
    message: /ca-cert\.pem has a RSA 2048 key: weft signs with ECDSA P-256 only \(cert-manager: privateKey: \{ algorithm: ECDSA, size: 256 \}\)/,
  });
});

t.test('the simple layout still works: root.pem and root-key.pem in the state directory', async (t) => {
  const base = t.testdir();
  const ca = await CertificateAuthority.open(join(base, 'state'));
  t.equal(ca.intermediatesPem.length, 0);
  t.equal(ca.anchorPem, ca.rootPem);
  const seen = await handshake(ca, ca.rootPem);
  t.ok(seen.authorized);
  t.equal(seen.chainLength, 2, 'leaf and root');
});
