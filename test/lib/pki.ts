/**
 * Test PKI: roots and intermediates as an operator's PKI (cert-manager, a corporate CA,
 * `openssl`) would hand them to weft, and writers of Istio's `cacerts` layout. Knobs make
 * the bad inputs the CA must refuse (not a CA, no keyCertSign, expired, RSA).
 */
import { generateKeyPairSync, webcrypto } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { x509 } from '../../src/identity/x509.js';

export interface TestCa {
  certPem: string;
  keyPem: string;
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIG = { name: 'ECDSA', hash: 'SHA-256' } as const;
let serial = 1;

async function keyPem(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

export interface CaKnobs {
  /** basicConstraints CA (default true). */
  ca?: boolean;
  /** keyUsage with keyCertSign (default true). */
  keyCertSign?: boolean;
  notBefore?: Date;
  notAfter?: Date;
}

function extensions(knobs: CaKnobs): x509.Extension[] {
  const usage = (knobs.keyCertSign ?? true) ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign : x509.KeyUsageFlags.digitalSignature;
  return [new x509.BasicConstraintsExtension(knobs.ca ?? true, undefined, true), new x509.KeyUsagesExtension(usage, true)];
}

/** A self-signed P-256 root named `cn`. */
export async function makeRootCa(cn: string, knobs: CaKnobs = {}): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    name: `CN=${cn}, O=test PKI`,
    notBefore: knobs.notBefore ?? new Date(Date.now() - 3600_000),
    notAfter: knobs.notAfter ?? new Date(Date.now() + 365 * 24 * 3600_000),
    keys,
    signingAlgorithm: SIG,
    extensions: [...extensions(knobs), await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)],
  });
  return { certPem: `${cert.toString('pem')}\n`, keyPem: await keyPem(keys.privateKey), cert, keys };
}

/** A P-256 intermediate `cn` signed by `issuer`. */
export async function makeIntermediate(issuer: TestCa, cn: string, knobs: CaKnobs = {}): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    subject: `CN=${cn}, O=test PKI`,
    issuer: issuer.cert.subjectName,
    notBefore: knobs.notBefore ?? new Date(Date.now() - 3600_000),
    notAfter: knobs.notAfter ?? new Date(Date.now() + 180 * 24 * 3600_000),
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: SIG,
    extensions: [...extensions(knobs), await x509.SubjectKeyIdentifierExtension.create(keys.publicKey), await x509.AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey)],
  });
  return { certPem: `${cert.toString('pem')}\n`, keyPem: await keyPem(keys.privateKey), cert, keys };
}

/** An RSA-2048 key (PKCS#8 PEM): cert-manager's default, which weft refuses. */
export function rsaKeyPem(): string {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/**
 * Writes Istio's `cacerts` layout into `dir`: ca-cert.pem and ca-key.pem of `signer`,
 * root-cert.pem (the given roots), cert-chain.pem (`chain`, or omitted when null).
 */
export function writeCacerts(dir: string, o: { signer: { certPem: string; keyPem: string }; roots: Array<{ certPem: string }>; chain: Array<{ certPem: string }> | null }): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'ca-cert.pem'), o.signer.certPem);
  writeFileSync(join(dir, 'ca-key.pem'), o.signer.keyPem, { mode: 0o600 });
  writeFileSync(join(dir, 'root-cert.pem'), o.roots.map((r) => r.certPem).join(''));
  if (o.chain) writeFileSync(join(dir, 'cert-chain.pem'), o.chain.map((c) => c.certPem).join(''));
  return dir;
}
