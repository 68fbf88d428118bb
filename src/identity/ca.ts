/**
 * The certificate authority: one ECDSA P-256 root, kept in a state directory, that signs
 * short-lived workload certificates (X.509-SVIDs) and issues node bootstrap tokens.
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
import { assertTrustDomain, parseSpiffeId } from './spiffe.js';
import { EC_P256, ECDSA_SHA256, generateP256, isP256, privateKeyToPem, subtle, x509 } from './x509.js';

export const ROOT_CERT_FILE = 'root.pem';
export const ROOT_KEY_FILE = 'root-key.pem';
export const TOKEN_SECRET_FILE = 'token-secret';

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
  log?: Logger;
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
  /** The root certificate, PEM: what every agent trusts. */
  readonly rootPem: string;
  private readonly root: x509.X509Certificate;
  private readonly rootKey: CryptoKey;
  private readonly rootKeyId: string;
  private tokenSecret: Buffer;
  private readonly log: Logger | undefined;

  private constructor(init: {
    stateDir: string;
    trustDomain: string;
    maxTtlMs: number;
    root: x509.X509Certificate;
    rootKey: CryptoKey;
    rootKeyId: string;
    tokenSecret: Buffer;
    log: Logger | undefined;
  }) {
    this.stateDir = init.stateDir;
    this.trustDomain = init.trustDomain;
    this.maxTtlMs = init.maxTtlMs;
    this.root = init.root;
    this.rootPem = init.root.toString('pem') + '\n';
    this.rootKey = init.rootKey;
    this.rootKeyId = init.rootKeyId;
    this.tokenSecret = init.tokenSecret;
    this.log = init.log;
  }

  /**
   * Opens the CA kept in `stateDir`, creating the directory (0700), the root key and
   * certificate and the token secret on first start. A root certificate without its key,
   * or a key that does not match the certificate, is refused rather than replaced: a new
   * root would silently break every agent that trusts the old one.
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

    const certPath = join(stateDir, ROOT_CERT_FILE);
    const keyPath = join(stateDir, ROOT_KEY_FILE);
    let loaded = await loadRoot(certPath, keyPath);
    if (!loaded) {
      loaded = await createRoot(certPath, keyPath, trustDomain);
      if (loaded.created) log?.info({ stateDir }, 'created a new root certificate');
    }
    const tokenSecret = await loadOrCreateSecret(join(stateDir, TOKEN_SECRET_FILE));
    const ski = loaded.cert.getExtension(x509.SubjectKeyIdentifierExtension);
    const rootKeyId = ski?.keyId ?? (await x509.SubjectKeyIdentifierExtension.create(loaded.cert.publicKey)).keyId;
    return new CertificateAuthority({
      stateDir,
      trustDomain,
      maxTtlMs,
      root: loaded.cert,
      rootKey: loaded.key,
      rootKeyId,
      tokenSecret,
      log,
    });
  }

  /** When the root certificate expires. */
  get rootNotAfter(): Date {
    return this.root.notAfter;
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
    const cert = await this.issue(keys.publicKey, names, Math.min(ttlMs, this.root.notAfter.getTime() - Date.now()), {
      subject: `CN=${CA_SERVER_NAME}`,
      extKeyUsage: [x509.ExtendedKeyUsage.serverAuth],
    });
    return { keyPem: await privateKeyToPem(keys.privateKey), certPem: cert.toString('pem') + '\n', notAfter: cert.notAfter };
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
    return Math.min(ttl, this.maxTtlMs, this.root.notAfter.getTime() - Date.now());
  }

  private async issue(publicKey: x509.PublicKeyType, names: x509.JsonGeneralName[], ttlMs: number, extra: { subject?: string; extKeyUsage?: string[] } = {}): Promise<x509.X509Certificate> {
    const now = Date.now();
    const subject = extra.subject ?? '';
    return x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject,
      issuer: this.root.subjectName,
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(now + ttlMs),
      publicKey,
      signingKey: this.rootKey,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension(extra.extKeyUsage ?? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        // RFC 5280: with an empty subject the SAN extension must be critical.
        new x509.SubjectAlternativeNameExtension(names, subject === ''),
        await x509.SubjectKeyIdentifierExtension.create(publicKey),
        new x509.AuthorityKeyIdentifierExtension(this.rootKeyId),
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

interface LoadedRoot {
  cert: x509.X509Certificate;
  key: CryptoKey;
  created?: boolean;
}

async function loadRoot(certPath: string, keyPath: string): Promise<LoadedRoot | undefined> {
  const [haveCert, haveKey] = await Promise.all([exists(certPath), exists(keyPath)]);
  if (!haveCert && !haveKey) return undefined;
  if (!haveCert) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${keyPath} exists but ${certPath} is missing; restore it (or remove both to create a new root)`);
  }
  if (!haveKey) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${certPath} exists but its key ${keyPath} is missing; restore it (or remove both to create a new root)`);
  }
  const [certPem, keyPem] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);
  let cert: x509.X509Certificate;
  let nodeCert: X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
    nodeCert = new X509Certificate(certPem);
  } catch (err) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: cannot parse ${certPath}: ${(err as Error).message}`, { cause: err });
  }
  let spki: Buffer;
  try {
    spki = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: cannot parse ${keyPath}: ${(err as Error).message}`, { cause: err });
  }
  if (!spki.equals(nodeCert.publicKey.export({ type: 'spki', format: 'der' }))) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${keyPath} is not the key of ${certPath}`);
  }
  if (!nodeCert.ca || !isP256(cert.publicKey.algorithm)) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: ${certPath} is not an ECDSA P-256 CA certificate`);
  }
  if (cert.notAfter.getTime() <= Date.now()) {
    throw new WeftError('WEFT_ERR_IDENTITY', `CA state: the root certificate ${certPath} expired on ${cert.notAfter.toISOString()}`);
  }
  const der = x509.PemConverter.decodeFirst(keyPem);
  const key = (await subtle.importKey('pkcs8', der, EC_P256, false, ['sign'])) as CryptoKey;
  return { cert, key };
}

async function createRoot(certPath: string, keyPath: string, trustDomain: string): Promise<LoadedRoot> {
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
  const keyPem = await privateKeyToPem(keys.privateKey);
  const tag = `${process.pid}.${randomBytes(4).toString('hex')}`;
  const keyTmp = `${keyPath}.${tag}.tmp`;
  const certTmp = `${certPath}.${tag}.tmp`;
  await writeFile(keyTmp, keyPem, { mode: 0o600, flag: 'wx' });
  await writeFile(certTmp, cert.toString('pem') + '\n', { mode: 0o644, flag: 'wx' });
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
  const key = (await subtle.importKey('pkcs8', await subtle.exportKey('pkcs8', keys.privateKey), EC_P256, false, ['sign'])) as CryptoKey;
  return { cert, key, created: true };
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
