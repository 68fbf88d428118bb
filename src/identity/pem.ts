/**
 * PEM bundles and chains, with Node's own X509Certificate only (no @peculiar/x509), so the
 * worker threads and the agent's start-up path can use them cheaply.
 *
 * A trust bundle is one or more self-signed CA certificates in one PEM text: the roots a
 * peer's chain may lead to. During a root rotation it holds the old and the new root.
 */
import { createHash, X509Certificate } from 'node:crypto';

const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The CERTIFICATE blocks of a PEM text, each ending in a newline. */
export function splitPem(pem: string): string[] {
  return (pem.match(PEM_CERT_RE) ?? []).map((b) => `${b}\n`);
}

/** True when `cert` is a CA certificate that signed itself (a root). */
export function isSelfSignedCa(cert: X509Certificate): boolean {
  return cert.ca && cert.checkIssued(cert) && cert.verify(cert.publicKey);
}

/** The PEM chain without its self-signed roots: what a TLS endpoint sends (peers hold the roots). */
export function chainWithoutRoot(chainPem: string): string {
  return splitPem(chainPem)
    .filter((b, i) => i === 0 || !isSelfSignedCa(new X509Certificate(b)))
    .join('');
}

/** A short, stable name of a root for logs and metric labels: its CN (or subject) and fingerprint prefix. */
export function rootName(cert: X509Certificate): string {
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? cert.subject.replace(/\n/g, ', ');
  const fp = createHash('sha256').update(cert.raw).digest('hex').slice(0, 16);
  return `${cn} ${fp}`;
}

/**
 * Parses a trust bundle: every block must be a certificate, and each a self-signed CA
 * certificate. Throws an Error naming the first bad block (by position) and why.
 * `what` names the source in messages (a file path, or "the configured root certificate").
 */
export function parseTrustBundle(pem: string, what: string): X509Certificate[] {
  const blocks = splitPem(pem);
  if (blocks.length === 0) throw new Error(`${what} holds no PEM certificate`);
  return blocks.map((b, i) => {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(b);
    } catch (err) {
      throw new Error(`${what}: certificate ${i + 1} of ${blocks.length} does not parse: ${(err as Error).message}`);
    }
    if (!isSelfSignedCa(cert)) {
      throw new Error(`${what}: certificate ${i + 1} of ${blocks.length} (${cert.subject.replace(/\n/g, ', ')}) is not a self-signed CA certificate: a trust bundle holds roots only`);
    }
    return cert;
  });
}

/**
 * The root of `roots` that `chain` leads to: chain[0] is signed by chain[1], ..., and the
 * last one by a root (or is one). Undefined when it leads to none. Validity dates are not
 * checked here.
 */
export function anchorOf(chain: X509Certificate[], roots: X509Certificate[]): X509Certificate | undefined {
  const certs = chain.filter((c) => !roots.some((r) => r.raw.equals(c.raw)));
  if (certs.length === 0) return roots.find((r) => r.raw.equals(chain[0]?.raw ?? Buffer.alloc(0)));
  for (let i = 0; i + 1 < certs.length; i++) {
    if (!certs[i]!.checkIssued(certs[i + 1]!) || !certs[i]!.verify(certs[i + 1]!.publicKey)) return undefined;
  }
  const last = certs[certs.length - 1]!;
  return roots.find((r) => last.checkIssued(r) && last.verify(r.publicKey));
}
