/**
 * The certificate authority: an ECDSA P-256 signing certificate that signs short-lived
 * workload certificates (X.509-SVIDs), and the node bootstrap tokens.
 *
 * Where the signing certificate comes from, first match wins:
 *   1. `cacerts` (Istio's layout, e.g. a Secret issued by cert-manager or a corporate PKI):
 *        ca-cert.pem     the intermediate that signs workload certificates
 *        ca-key.pem      its private key (PKCS#8 or SEC1 PEM)
 *        root-cert.pem   the trust bundle: the root(s) agents trust (several during a rotation)
 *        cert-chain.pem  the chain from ca-cert.pem up to a root in root-cert.pem (optional
 *                        when ca-cert.pem is issued by that root directly)
 *      Leaves are returned with the intermediates, so peers that hold only the root verify them.
 *   2. `rootStore` (Kubernetes: a Secret): a self-signed root created there on first start,
 *      create-if-absent, so that replicas and restarts share one root.
 *   3. The state directory: root.pem / root-key.pem, created on first start (the simple layout).
 *
 * State directory (mode 0700):
 *   root.pem        the self-signed root certificate (10 years): what agents trust
 *   root-key.pem    its PKCS#8 private key (mode 0600)
 *   token-secret    the HMAC-SHA256 key of node tokens (mode 0600)
 *
 * Node tokens (`weft1.<node, base64url>.<issued at, unix seconds>.<HMAC, base64url>`) are
 * stored nowhere: the CA recognizes them by their MAC. They do not expire; to revoke every
 * token at once, rotate the secret (`weft ca rotate-token-secret --state-dir DIR`, or
 * `rotateTokenSecret()`) and restart the CA, then hand each node a new token.
 */
import { createHmac, createPrivateKey, createPublicKey, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { chmod, link, mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DEFAULT_TRUST_DOMAIN } from '../config/defaults.js';
import { WeftError } from '../errors.js';
import { anchorOf, parseTrustBundle, splitPem } from './pem.js';
import { assertTrustDomain, parseSpiffeId } from './spiffe.js';
import { EC_P256, ECDSA_SHA256, generateP256, isP256, privateKeyToPem, subtle, x509 } from './x509.js';

export const ROOT_CERT_FILE = 'root.pem';
export const ROOT_KEY_FILE = 'root-key.pem';
export const TOKEN_SECRET_FILE = 'token-secret';
/** The files of Istio's `cacerts` layout. */
export const CACERTS_FILES = { cert: 'ca-cert.pem', key: 'ca-key.pem', roots: 'root-cert.pem', chain: 'cert-chain.pem' } as const;

/** Default lifetime of a workload certificate. */
export const DEFAULT_CERT_TTL_MS = 24 * 3600_000;
/** Longest lifetime the CA grants; longer requests are cut to it. */
export const MAX_CERT_TTL_MS = 7 * 24 * 3600_000;
const ROOT_TTL_MS = 10 * 365 * 24 * 3600_000;
/** notBefore is set this far in the past, so a peer whose clock is a little behind accepts the cert. */
export const CLOCK_SKEW_MS = 60_000;
const TOKEN_PREFIX = 'weft1';
const NODE_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

export interface CaOptions {
  /** Trust domain of the SPIFFE IDs this CA signs (default `cluster.local`). */
  trustDomain?: string;
  /** Longest certificate lifetime granted, ms (default 7 days). */
  maxTtlMs?: number;
  /** A directory in Istio's `cacerts` layout: sign with its intermediate (see the file comment). */
  cacerts?: string;
  /** Where a self-signed root is kept when no `cacerts` is given (Kubernetes: a Secret). */
  rootStore?: RootStore;
  log?: Logger;
}

/** A root key and certificate, as PEM. */
export interface RootMaterial {
  certPem: string;
  keyPem: string;
}

/**
 * Somewhere outside the state directory that keeps the CA's self-signed root (ca-root-store.ts:
 * a Kubernetes Secret). `createIfAbsent` must be atomic: when another replica created one
 * first, it returns that one, and every replica signs under the same root.
 */
export interface RootStore {
  /** For messages, e.g. `Secret weft-system/weft-ca-root`. */
  readonly describe: string;
  load(): Promise<RootMaterial | undefined>;
  createIfAbsent(material: RootMaterial): Promise<{ material: RootMaterial; created: boolean }>;
}

export interface SignOptions {
  /** The workload's SPIFFE ID: the certificate's only URI SAN. */
  spiffeId: string;
  /** Lifetime, ms (default 24h; cut to the CA's maximum). */
  ttlMs?: number;
  /** Extra DNS SANs. */
  dnsNames?: string[];
}

/** What `sign` accepts as the subject key: a PKCS#10 CSR (PEM), an SPKI PEM, or a public CryptoKey. */
export type SignInput = string | CryptoKey;

export interface ServingCertificate {
  keyPem: string;
  certPem: string;
  notAfter: Date;
}

function badRequest(message: string, cause?: unknown): WeftError {
  return new WeftError('WEFT_ERR_BAD_REQUEST', message, cause === undefined ? undefined : { cause });
}

/** 128 random bits as a positive DER INTEGER with no leading zero byte (hex). */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f || 0x01;
  return b.toString('hex');
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Writes `data` to a temp file beside `path` with `mode`, then renames it into place. */
async function writeAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, data, { mode, flag: 'wx' });
  await rename(tmp, path);
}

export class CertificateAuthority {
  readonly stateDir: string;
  readonly trustDomain: string;
  readonly maxTtlMs: number;
  /**
   * The trust bundle, PEM: every root agents trust (one, or several during a rotation). The
   * certificates this CA issues lead to one of them (`anchorPem`).
   */
  readonly rootPem: string;
  /** The root the signing certificate leads to. */
  readonly anchorPem: string;
  /** The CA certificates between a leaf and `anchorPem`, signing certificate first (none when the root signs). */
  readonly intermediatesPem: readonly string[];
  /** Where the signing certificate came from, for logs. */
  readonly source: string;
  private readonly signer: x509.X509Certificate;
  private readonly signerKey: CryptoKey;
  private readonly signerKeyId: string;
  /** The earliest notAfter of the signing certificate, the intermediates and the anchor. */
  private readonly chainNotAfter: Date;
  private tokenSecret: Buffer;
  private readonly log: Logger | undefined;

  private constructor(init: { stateDir: string; trustDomain: string; maxTtlMs: number; material: SigningMaterial; signerKeyId: string; tokenSecret: Buffer; log: Logger | undefined }) {
    const m = init.material;
    this.stateDir = init.stateDir;
    this.trustDomain = init.trustDomain;
    this.maxTtlMs = init.maxTtlMs;
    this.signer = m.cert;
    this.signerKey = m.key;
    this.signerKeyId = init.signerKeyId;
    this.rootPem = m.rootsPem;
    this.anchorPem = m.anchorPem;
    this.intermediatesPem = m.intermediatesPem;
    this.source = m.source;
    const ends = [m.cert.notAfter.getTime(), new X509Certificate(m.anchorPem).validToDate.getTime(), ...m.intermediatesPem.map((p) => new X509Certificate(p).validToDate.getTime())];
    this.chainNotAfter = new Date(Math.min(...ends));
    this.tokenSecret = init.tokenSecret;
    this.log = init.log;
  }

  /**
   * Opens the CA kept in `stateDir`, creating the directory (0700) and the token secret on
   * first start; the signing certificate comes from `opts.cacerts`, else `opts.rootStore`,
   * else the state directory's root (created on first start). A root certificate without its
   * key, or a key that does not match the certificate, is refused rather than replaced: a
   * new root would silently break every agent that trusts the old one. Bad `cacerts` input
   * is refused with a WeftError (WEFT_ERR_IDENTITY) that names the file and the problem.
   */
  static async open(stateDir: string, opts: CaOptions = {}): Promise<CertificateAuthority> {
    const trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    assertTrustDomain(trustDomain);
    const maxTtlMs = opts.maxTtlMs ?? MAX_CERT_TTL_MS;
    const log = opts.log?.child({ component: 'ca' });
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    // mkdir leaves an existing directory's mode alone; the key lives here, so tighten it.
    await chmod(stateDir, 0o700).catch((err: unknown) => {
      log?.warn({ err, stateDir }, 'cannot set the CA state directory to mode 0700');
    });

    let material: SigningMaterial;
    if (opts.cacerts) {
      material = await loadCaCerts(opts.cacerts, log);
    } else if (opts.rootStore) {
      material = await rootFromStore(opts.rootStore, trustDomain, log);
    } else {
      const certPath = join(stateDir, ROOT_CERT_FILE);
      const keyPath = join(stateDir, ROOT_KEY_FILE);
      let loaded = await loadRoot(certPath, keyPath);
      if (!loaded) {
        loaded = await createRoot(certPath, keyPath, trustDomain);
        if (loaded.created) log?.info({ stateDir }, 'created a new root certificate');
      }
      material = loaded;
    }
    const tokenSecret = await loadOrCreateSecret(join(stateDir, TOKEN_SECRET_FILE));
    const ski = material.cert.getExtension(x509.SubjectKeyIdentifierExtension);
    const signerKeyId = ski?.keyId ?? (await x509.SubjectKeyIdentifierExtension.create(material.cert.publicKey)).keyId;
    const ca = new CertificateAuthority({ stateDir, trustDomain, maxTtlMs, material, signerKeyId, tokenSecret, log });
    log?.info(
      { source: ca.source, signer: material.cert.subject, intermediates: ca.intermediatesPem.length, roots: splitPem(ca.rootPem).length, signerNotAfter: ca.chainNotAfter.toISOString() },
      'CA signing certificate loaded',
    );
    return ca;
  }

  /** When the signing chain (signing certificate, intermediates, root) first expires: no leaf outlives it. */
  get rootNotAfter(): Date {
    return this.chainNotAfter;
  }

  /** The chain to hand out with a leaf: the leaf, the intermediates, and the root they lead to. */
  certChainOf(leafPem: string): string[] {
    return [leafPem, ...this.intermediatesPem, this.anchorPem];
  }

  /**
   * Signs a workload certificate for `opts.spiffeId` and returns it (PEM).
   *
   * `input` is a PKCS#10 CSR (PEM; its signature is checked, and its URI SANs, if any, must
   * be exactly the requested ID), an SPKI public key PEM, or a public CryptoKey. The key must
   * be ECDSA P-256. The certificate: empty subject, critical SAN with the SPIFFE ID (plus
   * `dnsNames`), keyUsage digitalSignature+keyAgreement, extKeyUsage serverAuth+clientAuth,
   * CA:false, a random 128-bit serial, SKI/AKI, notBefore one minute in the past, lifetime
   * `ttlMs` (default 24h, cut to the CA maximum and to the root's own expiry).
   * Throws WeftError WEFT_ERR_BAD_REQUEST for a bad CSR or key, WEFT_ERR_IDENTITY for an ID
   * outside this CA's trust domain.
   */
  async sign(input: SignInput, opts: SignOptions): Promise<string> {
    const id = parseSpiffeId(opts.spiffeId);
    if (id.trustDomain !== this.trustDomain) {
      throw new WeftError('WEFT_ERR_IDENTITY', `SPIFFE ID ${opts.spiffeId} is outside this CA's trust domain ${this.trustDomain}`);
    }
    const publicKey = await subjectKeyOf(input, opts.spiffeId);
    const dnsNames = opts.dnsNames ?? [];
    for (const name of dnsNames) {
      if (!/^[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(name)) throw badRequest(`invalid DNS name ${JSON.stringify(name)}`);
    }
    const names: x509.JsonGeneralName[] = [{ type: 'url', value: opts.spiffeId }, ...dnsNames.map((value) => ({ type: 'dns' as const, value }))];
    const cert = await this.issue(publicKey, names, this.ttl(opts.ttlMs));
    this.log?.debug({ spiffeId: opts.spiffeId, serial: cert.serialNumber, notAfter: cert.notAfter }, 'signed a workload certificate');
    return cert.toString('pem') + '\n';
  }

  /**
   * A key and certificate for the CA's own HTTPS server: SANs for the given DNS names and IP
   * addresses (always including DNS `weft-ca`), serverAuth only, no URI SAN, so that no
   * workload certificate can pass for it and it cannot pass for a workload.
   */
  async issueServingCertificate(hosts: string[], ttlMs = 90 * 24 * 3600_000): Promise<ServingCertificate> {
    const keys = await generateP256();
    const names: x509.JsonGeneralName[] = [{ type: 'dns', value: CA_SERVER_NAME }];
    for (const host of new Set(hosts)) {
      if (host === CA_SERVER_NAME || host === '') continue;
      names.push(isIP(host) ? { type: 'ip', value: host } : { type: 'dns', value: host });
    }
    const cert = await this.issue(keys.publicKey, names, Math.min(ttlMs, this.chainNotAfter.getTime() - Date.now()), {
      subject: `CN=${CA_SERVER_NAME}`,
      extKeyUsage: [x509.ExtendedKeyUsage.serverAuth],
    });
    // Served with the intermediates: agents hold only the root(s).
    return { keyPem: await privateKeyToPem(keys.privateKey), certPem: [cert.toString('pem') + '\n', ...this.intermediatesPem].join(''), notAfter: cert.notAfter };
  }

  /** A bootstrap token for `node`: `weft1.<node b64url>.<issuedAt>.<mac>`. */
  issueNodeToken(node: string): string {
    if (typeof node !== 'string' || !NODE_NAME_RE.test(node)) {
      throw badRequest(`invalid node name ${JSON.stringify(node)}`);
    }
    const body = `${TOKEN_PREFIX}.${Buffer.from(node, 'utf8').toString('base64url')}.${Math.floor(Date.now() / 1000)}`;
    return `${body}.${this.mac(body)}`;
  }

  /** The node a token was issued for; throws WeftError WEFT_ERR_UNAUTHENTICATED if it is not valid. */
  verifyNodeToken(token: string): string {
    const fail = (why: string): never => {
      throw new WeftError('WEFT_ERR_UNAUTHENTICATED', `invalid node token: ${why}`);
    };
    if (typeof token !== 'string' || token.length > 1024) fail('malformed');
    const parts = token.trim().split('.');
    if (parts.length !== 4 || parts[0] !== TOKEN_PREFIX) fail('malformed');
    const [prefix, nodeB64, issuedAt, mac] = parts as [string, string, string, string];
    if (!/^[0-9]{1,12}$/.test(issuedAt) || !/^[A-Za-z0-9_-]+$/.test(nodeB64)) fail('malformed');
    const expected = Buffer.from(this.mac(`${prefix}.${nodeB64}.${issuedAt}`), 'base64url');
    const given = Buffer.from(mac, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) fail('bad signature');
    const node = Buffer.from(nodeB64, 'base64url').toString('utf8');
    if (!NODE_NAME_RE.test(node)) fail('malformed');
    return node;
  }

  /**
   * Replaces the token secret (in memory and in the state directory): every token issued
   * before is rejected from now on. A CA server in another process picks the new secret up
   * when it restarts.
   */
  async rotateTokenSecret(): Promise<void> {
    const secret = randomBytes(32);
    await writeAtomic(join(this.stateDir, TOKEN_SECRET_FILE), secret.toString('base64') + '\n', 0o600);
    this.tokenSecret = secret;
    this.log?.info('rotated the node token secret; earlier tokens are now invalid');
  }

  private mac(body: string): string {
    return createHmac('sha256', this.tokenSecret).update(body).digest('base64url');
  }

  private ttl(requested: number | undefined): number {
    const ttl = requested ?? DEFAULT_CERT_TTL_MS;
    if (!Number.isFinite(ttl) || ttl <= 0) throw badRequest(`invalid certificate lifetime ${ttl} ms`);
    return Math.min(ttl, this.maxTtlMs, this.chainNotAfter.getTime() - Date.now());
  }

  private async issue(publicKey: x509.PublicKeyType, names: x509.JsonGeneralName[], ttlMs: number, extra: { subject?: string; extKeyUsage?: string[] } = {}): Promise<x509.X509Certificate> {
    const now = Date.now();
    const subject = extra.subject ?? '';
    return x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject,
      issuer: this.signer.subjectName,
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(now + ttlMs),
      publicKey,
      signingKey: this.signerKey,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension(extra.extKeyUsage ?? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        // RFC 5280: with an empty subject the SAN extension must be critical.
        new x509.SubjectAlternativeNameExtension(names, subject === ''),
        await x509.SubjectKeyIdentifierExtension.create(publicKey),
        new x509.AuthorityKeyIdentifierExtension(this.signerKeyId),
      ],
    });
  }
}

/** The DNS name in the CA server's certificate, accepted by agents whatever address they dial. */
export const CA_SERVER_NAME = 'weft-ca';

/** Turns the sign input into a verified P-256 public key. */
async function subjectKeyOf(input: SignInput, requestedId: string): Promise<x509.PublicKey> {
  let key: x509.PublicKey;
  if (typeof input === 'string') {
    if (input.includes('CERTIFICATE REQUEST-----')) {
      let csr: x509.Pkcs10CertificateRequest;
      try {
        csr = new x509.Pkcs10CertificateRequest(input);
      } catch (err) {
        throw badRequest(`malformed CSR: ${(err as Error).message}`, err);
      }
      let ok = false;
      try {
        ok = await csr.verify();
      } catch (err) {
        throw badRequest(`CSR signature does not verify: ${(err as Error).message}`, err);
      }
      if (!ok) throw badRequest('CSR signature does not verify');
      for (const ext of csr.extensions) {
        if (!(ext instanceof x509.SubjectAlternativeNameExtension)) continue;
        for (const name of ext.names.items) {
          if (name.type === 'url' && name.value !== requestedId) {
            throw new WeftError('WEFT_ERR_IDENTITY', `CSR asks for URI SAN ${name.value}, not the requested identity ${requestedId}`);
          }
        }
      }
      key = csr.publicKey;
    } else if (input.includes('PUBLIC KEY-----')) {
      try {
        key = new x509.PublicKey(input);
      } catch (err) {
        throw badRequest(`malformed public key: ${(err as Error).message}`, err);
      }
    } else {
      throw badRequest('expected a PEM certificate request (CSR) or public key');
    }
  } else {
    key = await x509.PublicKey.create(input);
  }
  if (!isP256(key.algorithm)) {
    throw badRequest(`unsupported key ${JSON.stringify(key.algorithm.name)}: weft certificates use ECDSA P-256`);
  }
  return key;
}

/** The signing certificate and key, and what a leaf's chain and the agents' trust need. */
interface SigningMaterial {
  cert: x509.X509Certificate;
  key: CryptoKey;
  /** CA certificates from the signing certificate up to (not including) the root: empty when the root signs. */
  intermediatesPem: string[];
  /** The root the chain leads to. */
  anchorPem: string;
  /** The trust bundle (the anchor, and any other roots). */
  rootsPem: string;
  source: string;
  created?: boolean;
}

function identityError(message: string, cause?: unknown): WeftError {
  return new WeftError('WEFT_ERR_IDENTITY', message, cause === undefined ? undefined : { cause });
}

/** The signing key: any PEM private key Node reads (PKCS#8, SEC1, encrypted ones not), which must be P-256 and match `cert`. */
async function importSigningKey(keyPem: string, cert: X509Certificate, where: { key: string; cert: string }, prefix: string): Promise<CryptoKey> {
  let pkcs8: Buffer;
  let spki: Buffer;
  try {
    const key = createPrivateKey(keyPem);
    pkcs8 = key.export({ type: 'pkcs8', format: 'der' });
    spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw identityError(`${prefix}cannot parse ${where.key}: ${(err as Error).message}`, err);
  }
  if (!spki.equals(cert.publicKey.export({ type: 'spki', format: 'der' }))) {
    throw identityError(`${prefix}${where.key} is not the key of ${where.cert} (the public keys differ)`);
  }
  const details = cert.publicKey.asymmetricKeyDetails;
  if (cert.publicKey.asymmetricKeyType !== 'ec' || details?.namedCurve !== 'prime256v1') {
    const what = cert.publicKey.asymmetricKeyType === 'ec' ? `EC ${details?.namedCurve}` : `${cert.publicKey.asymmetricKeyType?.toUpperCase()} ${details?.modulusLength ?? ''}`.trim();
    throw identityError(`${prefix}${where.cert} has a ${what} key: weft signs with ECDSA P-256 only (cert-manager: privateKey: { algorithm: ECDSA, size: 256 })`);
  }
  return (await subtle.importKey('pkcs8', Uint8Array.from(pkcs8), EC_P256, false, ['sign'])) as CryptoKey;
}

/** Refuses a certificate outside its validity period. */
function checkValidity(cert: X509Certificate, what: string, prefix: string): void {
  const now = Date.now();
  if (cert.validToDate.getTime() <= now) throw identityError(`${prefix}${what} expired on ${cert.validToDate.toISOString()}`);
  if (cert.validFromDate.getTime() > now + CLOCK_SKEW_MS) throw identityError(`${prefix}${what} is not valid before ${cert.validFromDate.toISOString()}`);
}

/** A self-signed root (simple layout, or the in-cluster root) as signing material. */
async function rootMaterial(certPem: string, keyPem: string, where: { cert: string; key: string }, prefix: string): Promise<SigningMaterial> {
  let cert: x509.X509Certificate;
  let nodeCert: X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
    nodeCert = new X509Certificate(certPem);
  } catch (err) {
    throw identityError(`${prefix}cannot parse ${where.cert}: ${(err as Error).message}`, err);
  }
  if (!nodeCert.ca || !isP256(cert.publicKey.algorithm)) {
    // Checked before the key, so a wrong kind of certificate is named as such.
    const key = await importSigningKey(keyPem, nodeCert, where, prefix).catch((err: WeftError) => err);
    if (key instanceof WeftError && /is not the key of|cannot parse/.test(key.message)) throw key;
    throw identityError(`${prefix}${where.cert} is not an ECDSA P-256 CA certificate`);
  }
  const key = await importSigningKey(keyPem, nodeCert, where, prefix);
  if (cert.notAfter.getTime() <= Date.now()) {
    throw identityError(`${prefix}the root certificate ${where.cert} expired on ${cert.notAfter.toISOString()}`);
  }
  const pem = cert.toString('pem') + '\n';
  return { cert, key, intermediatesPem: [], anchorPem: pem, rootsPem: pem, source: where.cert };
}

async function loadRoot(certPath: string, keyPath: string): Promise<SigningMaterial | undefined> {
  const [haveCert, haveKey] = await Promise.all([exists(certPath), exists(keyPath)]);
  if (!haveCert && !haveKey) return undefined;
  if (!haveCert) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${keyPath} exists but ${certPath} is missing; restore it (or remove both to create a new root)`);
  }
  if (!haveKey) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${certPath} exists but its key ${keyPath} is missing; restore it (or remove both to create a new root)`);
  }
  const [certPem, keyPem] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);
  return rootMaterial(certPem, keyPem, { cert: certPath, key: keyPath }, 'CA state: ');
}

/** A new self-signed root: 10 years, CA:true, keyCertSign+cRLSign. */
async function makeRoot(trustDomain: string): Promise<RootMaterial> {
  const keys = await generateP256();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ O: ['weft'] }, { CN: [`weft root CA ${trustDomain}`] }],
    notBefore: new Date(now - CLOCK_SKEW_MS),
    notAfter: new Date(now + ROOT_TTL_MS),
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem') + '\n', keyPem: await privateKeyToPem(keys.privateKey) };
}

async function createRoot(certPath: string, keyPath: string, trustDomain: string): Promise<SigningMaterial> {
  const root = await makeRoot(trustDomain);
  const tag = `${process.pid}.${randomBytes(4).toString('hex')}`;
  const keyTmp = `${keyPath}.${tag}.tmp`;
  const certTmp = `${certPath}.${tag}.tmp`;
  await writeFile(keyTmp, root.keyPem, { mode: 0o600, flag: 'wx' });
  await writeFile(certTmp, root.certPem, { mode: 0o644, flag: 'wx' });
  try {
    // link() fails if the key exists: two processes starting at once agree on one root.
    await link(keyTmp, keyPath);
  } catch (err) {
    await Promise.all([unlink(keyTmp), unlink(certTmp)]).catch(() => undefined);
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    for (let i = 0; i < 50 && !(await exists(certPath)); i++) await new Promise((r) => setTimeout(r, 20));
    const other = await loadRoot(certPath, keyPath);
    if (!other) throw err;
    return other;
  }
  await unlink(keyTmp);
  await rename(certTmp, certPath);
  return { ...(await rootMaterial(root.certPem, root.keyPem, { cert: certPath, key: keyPath }, 'CA state: ')), created: true };
}

/**
 * The root kept in `store`, created there when absent. Two replicas starting at once both
 * make a root; the store keeps the first, and the other reads it back and uses it.
 */
async function rootFromStore(store: RootStore, trustDomain: string, log: Logger | undefined): Promise<SigningMaterial> {
  const where = { cert: `${store.describe} (tls.crt)`, key: `${store.describe} (tls.key)` };
  const prefix = 'CA root: ';
  const existing = await store.load();
  if (existing) return { ...(await rootMaterial(existing.certPem, existing.keyPem, where, prefix)), source: store.describe };
  const { material, created } = await store.createIfAbsent(await makeRoot(trustDomain));
  if (created) log?.info({ store: store.describe }, 'created a new root certificate');
  else log?.info({ store: store.describe }, 'another replica created the root first; using it');
  return { ...(await rootMaterial(material.certPem, material.keyPem, where, prefix)), source: store.describe, created };
}

/**
 * Reads and checks a directory in Istio's `cacerts` layout. Every problem is a WeftError
 * naming the file: a missing file, a key that is not the certificate's, a ca-cert.pem that is
 * not a CA or may not sign certificates, a chain that does not lead to a root of
 * root-cert.pem, or a certificate outside its validity period.
 */
async function loadCaCerts(dir: string, log: Logger | undefined): Promise<SigningMaterial> {
  const prefix = `cacerts ${dir}: `;
  const path = (f: string) => join(dir, f);
  const read = async (file: string, required: boolean): Promise<string | undefined> => {
    try {
      return await readFile(path(file), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !required) return undefined;
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : `cannot be read: ${(err as Error).message}`;
      throw identityError(`${prefix}${file} ${why} (the layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)`, err);
    }
  };
  const [certText, keyPem, rootsText, chainText] = await Promise.all([
    read(CACERTS_FILES.cert, true),
    read(CACERTS_FILES.key, true),
    read(CACERTS_FILES.roots, true),
    read(CACERTS_FILES.chain, false),
  ]);
  const certBlock = splitPem(certText!)[0];
  if (!certBlock) throw identityError(`${prefix}${CACERTS_FILES.cert} holds no PEM certificate`);
  let cert: x509.X509Certificate;
  let nodeCert: X509Certificate;
  try {
    cert = new x509.X509Certificate(certBlock);
    nodeCert = new X509Certificate(certBlock);
  } catch (err) {
    throw identityError(`${prefix}cannot parse ${CACERTS_FILES.cert}: ${(err as Error).message}`, err);
  }
  const key = await importSigningKey(keyPem!, nodeCert, { cert: CACERTS_FILES.cert, key: CACERTS_FILES.key }, prefix);
  // Not nodeCert.ca: OpenSSL's answer is also false for a CA without keyCertSign, checked next.
  if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw identityError(`${prefix}${CACERTS_FILES.cert} is not a CA certificate (basicConstraints CA:TRUE is missing): it cannot sign workload certificates`);
  }
  const usage = cert.getExtension(x509.KeyUsagesExtension);
  if (usage && !(usage.usages & x509.KeyUsageFlags.keyCertSign)) {
    throw identityError(`${prefix}${CACERTS_FILES.cert} lacks keyCertSign in its keyUsage: it may not sign certificates`);
  }
  checkValidity(nodeCert, CACERTS_FILES.cert, prefix);

  let roots: X509Certificate[];
  try {
    roots = parseTrustBundle(rootsText!, CACERTS_FILES.roots);
  } catch (err) {
    throw identityError(`${prefix}${(err as Error).message}`, err);
  }
  // cert-chain.pem: ca-cert.pem first (Istio's convention), or only what lies above it.
  let above: X509Certificate[] = [];
  if (chainText !== undefined) {
    const blocks = splitPem(chainText);
    if (blocks.length === 0) throw identityError(`${prefix}${CACERTS_FILES.chain} holds no PEM certificate`);
    try {
      above = blocks.map((b) => new X509Certificate(b));
    } catch (err) {
      throw identityError(`${prefix}cannot parse ${CACERTS_FILES.chain}: ${(err as Error).message}`, err);
    }
    if (above[0]!.raw.equals(nodeCert.raw)) above = above.slice(1);
  }
  const chain = [nodeCert, ...above];
  const anchor = anchorOf(chain, roots);
  if (!anchor) {
    const last = chain.filter((c) => !roots.some((r) => r.raw.equals(c.raw))).at(-1) ?? nodeCert;
    throw identityError(
      `${prefix}${chainText === undefined ? CACERTS_FILES.cert : CACERTS_FILES.chain} does not lead to a root in ${CACERTS_FILES.roots}: the chain ends at ${last.subject.replace(/\n/g, ', ')}, issued by ${last.issuer.replace(/\n/g, ', ')}, which is not one of the ${roots.length} root(s) there${chainText === undefined ? ` (add ${CACERTS_FILES.chain} if there are intermediates between them)` : ''}`,
    );
  }
  const intermediates = chain.filter((c) => !roots.some((r) => r.raw.equals(c.raw)));
  for (const [i, c] of intermediates.entries()) {
    if (i > 0) {
      if (!c.ca) throw identityError(`${prefix}${CACERTS_FILES.chain}: ${c.subject.replace(/\n/g, ', ')} is not a CA certificate`);
      checkValidity(c, `${CACERTS_FILES.chain}: ${c.subject.replace(/\n/g, ', ')}`, prefix);
    }
  }
  checkValidity(anchor, `${CACERTS_FILES.roots}: the root ${anchor.subject.replace(/\n/g, ', ')} that ${CACERTS_FILES.cert} leads to`, prefix);
  for (const r of roots) {
    if (r !== anchor && r.validToDate.getTime() <= Date.now()) {
      log?.warn({ root: r.subject, notAfter: r.validToDate.toISOString() }, `${CACERTS_FILES.roots} holds an expired root; remove it from the bundle`);
    }
  }
  const toPem = (c: X509Certificate) => (c.toString().endsWith('\n') ? c.toString() : `${c.toString()}\n`);
  return {
    cert,
    key,
    intermediatesPem: intermediates.map(toPem),
    anchorPem: toPem(anchor),
    rootsPem: roots.map(toPem).join(''),
    source: dir,
  };
}

async function loadOrCreateSecret(path: string): Promise<Buffer> {
  if (!(await exists(path))) {
    // Written whole to a temp file, then linked: a concurrent reader never sees it half-written.
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    await writeFile(tmp, randomBytes(32).toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
    try {
      await link(tmp, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }
  const secret = Buffer.from((await readFile(path, 'utf8')).trim(), 'base64');
  if (secret.length < 16) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${path} holds no usable secret (expected base64 of 32 random bytes)`);
  }
  return secret;
}
