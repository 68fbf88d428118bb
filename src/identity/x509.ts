/**
 * The one place that loads @peculiar/x509. Its dependency injection (tsyringe) needs the
 * reflect-metadata polyfill loaded first, and it needs a WebCrypto provider: Node's own.
 * Every identity module imports `x509` from here, never from the package directly.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };

/** ECDSA P-256 with SHA-256: the only key type weft issues, signs with or accepts. */
export const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
export const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;

export const subtle = webcrypto.subtle;

/** A new extractable P-256 key pair. */
export async function generateP256(): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(EC_P256, true, ['sign', 'verify'])) as CryptoKeyPair;
}

/** PKCS#8 PEM of a private CryptoKey (which must be extractable). */
export async function privateKeyToPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

/** True when a public key is EC P-256. */
export function isP256(algorithm: Algorithm): boolean {
  const a = algorithm as EcKeyAlgorithm;
  return a.name === 'ECDSA' && a.namedCurve === 'P-256';
}
