/**
 * How an agent gets its workload certificates signed: `CaClient` talks HTTPS to a `weft ca`
 * server (`ca: { url, rootCert, tokenFile }`); `EmbeddedCaClient` signs in-process with a CA
 * kept in the agent's own state directory (`ca: {}`). Both implement `CertificateSigner`, the
 * interface the cert manager uses.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import * as https from 'node:https';
import { join } from 'node:path';
import * as tls from 'node:tls';
import type { Logger } from 'pino';
import type { CaConfig } from '../config/types.js';
import { WeftError } from '../errors.js';
import { CA_SERVER_NAME, CertificateAuthority } from './ca.js';
import { spiffeId } from './spiffe.js';
import { TrustBundle, TrustBundleError } from './trust-bundle.js';

/** A signed certificate: `certChain` is leaf first, root last. */
export interface SignedCertificate {
  certChain: string[];
  notAfter: Date;
}

/** Anything that can get a CSR signed for a workload identity. */
export interface CertificateSigner {
  /** The trust bundle (PEM, one or more roots) that issued certificates chain to, and that peers are checked against. */
  readonly rootPem: string;
  /** When the roots can change while the agent runs (a `ca.rootCert` file): its watcher. */
  readonly trust?: TrustBundle;
  /** The SPIFFE trust domain of issued identities, when the signer knows it. */
  readonly trustDomain?: string;
  /** Releases what the signer holds (the root file's watcher). */
  close?(): void;
  /** Gets `csrPem` signed for `namespace/serviceAccount`; `ttlMs` is the lifetime asked for (the CA may cut it). */
  sign(csrPem: string, namespace: string, serviceAccount: string, ttlMs?: number): Promise<SignedCertificate>;
}

export type CaErrorReason = 'unreachable' | 'timeout' | 'tls' | 'unauthenticated' | 'denied' | 'bad_request' | 'server' | 'protocol' | 'config';

/** A failed request to the CA; `reason` says which kind, `status` carries the HTTP status when there was one. */
export class CaRequestError extends WeftError {
  readonly reason: CaErrorReason;
  readonly status: number | undefined;
  constructor(reason: CaErrorReason, message: string, opts: { status?: number; cause?: unknown } = {}) {
    super('WEFT_ERR_IDENTITY', message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CaRequestError';
    this.reason = reason;
    this.status = opts.status;
  }
}

export interface CaClientOptions {
  /** `https://host:port` of the `weft ca` server. */
  url: string;
  /** The roots to trust (one or more PEM certificates): PEM text, or the path of a PEM file, re-read when it changes. */
  rootCert: string;
  /** How often the root file is re-read besides fs.watch events, ms (default 10 s). */
  trustPollMs?: number;
  /** File holding this node's bootstrap token (`weft ca token`); read at each request, so it can be replaced. */
  tokenFile: string;
  /** Per-request timeout, ms (default 10s). */
  timeoutMs?: number;
  log?: Logger;
}

const MAX_RESPONSE_BYTES = 1 << 20;
/** TLS verification failures (OpenSSL verify codes and Node's hostname error). */
const TLS_ERROR_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_PURPOSE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'ERR_SSL_WRONG_VERSION_NUMBER',
]);

/**
 * Accepts the CA server's certificate under the name `weft-ca` whatever address was dialed.
 * Only the CA's serving certificate has DNS `weft-ca` and no URI SAN; every workload
 * certificate has a SPIFFE URI SAN, so none can pass for the CA. Node calls this only after
 * the chain verified against the root.
 */
export function checkCaServerIdentity(host: string, cert: tls.PeerCertificate): Error | undefined {
  const err = tls.checkServerIdentity(host, cert);
  if (!err) return undefined;
  const sans = (cert.subjectaltname ?? '').split(', ');
  if (sans.includes(`DNS:${CA_SERVER_NAME}`) && !sans.some((s) => s.startsWith('URI:'))) return undefined;
  return err;
}

/** Talks to a `weft ca` server over HTTPS, verifying it against the configured root. */
export class CaClient implements CertificateSigner {
  readonly url: URL;
  readonly trust: TrustBundle;
  readonly trustDomain = undefined;
  private readonly tokenFile: string;
  private readonly timeoutMs: number;
  private readonly log: Logger | undefined;

  /**
   * Reads the roots now (throws a CaRequestError with reason `config` if it cannot) and
   * watches the file: each request verifies the CA against the roots in force then.
   */
  constructor(opts: CaClientOptions) {
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch {
      throw new CaRequestError('config', `invalid CA url ${JSON.stringify(opts.url)}`);
    }
    if (url.protocol !== 'https:') throw new CaRequestError('config', `the CA url must be https: ${opts.url}`);
    this.url = url;
    try {
      this.trust = new TrustBundle(opts.rootCert, { pollMs: opts.trustPollMs, log: opts.log });
    } catch (err) {
      if (err instanceof TrustBundleError) throw new CaRequestError('config', err.message, { cause: err });
      throw err;
    }
    this.trust.start();
    this.tokenFile = opts.tokenFile;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.log = opts.log?.child({ component: 'ca-client' });
  }

  /** The roots in force (PEM). */
  get rootPem(): string {
    return this.trust.pem;
  }

  /** Stops watching the root file. */
  close(): void {
    this.trust.stop();
  }

  async sign(csrPem: string, namespace: string, serviceAccount: string, ttlMs?: number): Promise<SignedCertificate> {
    const token = await this.readToken();
    const body: Record<string, unknown> = { csr: csrPem, namespace, serviceAccount };
    if (ttlMs !== undefined) body.ttlSeconds = Math.max(1, Math.round(ttlMs / 1000));
    const { status, payload } = await this.request('POST', '/v1/sign', JSON.stringify(body), token);
    const what = `the CA at ${this.url.origin}`;
    if (status !== 200) {
      const message = errorMessage(payload);
      switch (status) {
        case 401:
          throw new CaRequestError('unauthenticated', `${what} rejected this node's token (${this.tokenFile}): ${message}`, { status });
        case 403:
          throw new CaRequestError('denied', `${what} refused identity ${namespace}/${serviceAccount} to this node: ${message}`, { status });
        case 400:
        case 413:
          throw new CaRequestError('bad_request', `${what} rejected the request for ${namespace}/${serviceAccount}: ${message}`, { status });
        default:
          throw new CaRequestError('server', `${what} answered ${status}: ${message}`, { status });
      }
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload);
    } catch {
      throw new CaRequestError('protocol', `${what} answered 200 with a body that is not JSON`);
    }
    const chain = (parsed as { certChain?: unknown }).certChain;
    if (!Array.isArray(chain) || chain.length === 0 || !chain.every((c) => typeof c === 'string')) {
      throw new CaRequestError('protocol', `${what} answered 200 without a certChain`);
    }
    let leaf: X509Certificate;
    try {
      leaf = new X509Certificate(chain[0] as string);
    } catch (err) {
      throw new CaRequestError('protocol', `${what} returned a certificate that does not parse: ${(err as Error).message}`);
    }
    this.log?.debug({ namespace, serviceAccount, notAfter: leaf.validTo }, 'certificate signed by the CA');
    return { certChain: chain as string[], notAfter: new Date(leaf.validTo) };
  }

  private async readToken(): Promise<string> {
    let token: string;
    try {
      token = (await readFile(this.tokenFile, 'utf8')).trim();
    } catch (err) {
      throw new CaRequestError('config', `cannot read the node token file ${this.tokenFile}: ${(err as Error).message}`, { cause: err });
    }
    if (!token) throw new CaRequestError('config', `the node token file ${this.tokenFile} is empty`);
    return token;
  }

  private request(method: string, path: string, body: string | undefined, token: string): Promise<{ status: number; payload: string }> {
    const url = this.url;
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          protocol: 'https:',
          hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
          port: url.port || 443,
          path,
          method,
          agent: false,
          // The roots in force now: a rotated bundle applies from the next request.
          ca: this.trust.pem,
          minVersion: 'TLSv1.2',
          checkServerIdentity: checkCaServerIdentity,
          timeout: this.timeoutMs,
          headers: {
            authorization: `Bearer ${token}`,
            accept: 'application/json',
            ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_RESPONSE_BYTES) {
              req.destroy(new CaRequestError('protocol', `the CA at ${url.origin} sent more than ${MAX_RESPONSE_BYTES} bytes`));
              return;
            }
            chunks.push(c);
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, payload: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', (err) => reject(this.translate(err)));
        },
      );
      req.on('timeout', () => req.destroy(new CaRequestError('timeout', `the CA at ${url.origin} did not answer within ${this.timeoutMs} ms`)));
      req.on('error', (err) => reject(this.translate(err)));
      req.end(body);
    });
  }

  private translate(err: Error): Error {
    if (err instanceof CaRequestError) return err;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (TLS_ERROR_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) {
      return new CaRequestError('tls', `cannot verify the CA at ${this.url.origin} against the roots in ${this.trust.source}: ${err.message} (${code})`, { cause: err });
    }
    return new CaRequestError('unreachable', `cannot reach the CA at ${this.url.origin}: ${err.message}`, { cause: err });
  }
}

function errorMessage(payload: string): string {
  try {
    const parsed = JSON.parse(payload) as { error?: { message?: unknown } };
    if (typeof parsed.error?.message === 'string') return parsed.error.message;
  } catch {
    // not JSON: fall through to the raw text
  }
  return payload.slice(0, 200) || '(no message)';
}

export interface EmbeddedCaClientOptions {
  ca: CertificateAuthority;
  /**
   * True when a workload on this node runs as `namespace/serviceAccount`. The embedded CA
   * signs nothing else, so a bug elsewhere in the agent cannot mint other identities.
   * Default: every identity.
   */
  isLocal?: (namespace: string, serviceAccount: string) => boolean;
}

/** The `ca: {}` mode: signs in-process with a CA kept in the agent's state directory. */
export class EmbeddedCaClient implements CertificateSigner {
  readonly ca: CertificateAuthority;
  private readonly isLocal: (namespace: string, serviceAccount: string) => boolean;

  constructor(opts: EmbeddedCaClientOptions) {
    this.ca = opts.ca;
    this.isLocal = opts.isLocal ?? (() => true);
  }

  /** Opens (or creates) the CA in `join(stateDir, 'ca')`. */
  static async open(stateDir: string, opts: { trustDomain?: string; isLocal?: (namespace: string, serviceAccount: string) => boolean; log?: Logger } = {}): Promise<EmbeddedCaClient> {
    const ca = await CertificateAuthority.open(join(stateDir, 'ca'), { trustDomain: opts.trustDomain, log: opts.log });
    return new EmbeddedCaClient({ ca, isLocal: opts.isLocal });
  }

  get rootPem(): string {
    return this.ca.rootPem;
  }

  get trustDomain(): string {
    return this.ca.trustDomain;
  }

  async sign(csrPem: string, namespace: string, serviceAccount: string, ttlMs?: number): Promise<SignedCertificate> {
    if (!this.isLocal(namespace, serviceAccount)) {
      throw new CaRequestError('denied', `no workload on this node runs as ${namespace}/${serviceAccount}`);
    }
    const leaf = await this.ca.sign(csrPem, { spiffeId: spiffeId(this.ca.trustDomain, namespace, serviceAccount), ttlMs });
    return { certChain: this.ca.certChainOf(leaf), notAfter: new Date(new X509Certificate(leaf).validTo) };
  }
}

/**
 * The signer for a `ca:` config block: a `CaClient` when `url` is set (then `rootCert` and
 * `tokenFile` are required), else an `EmbeddedCaClient` in `join(stateDir, 'ca')`.
 */
export async function createCertificateSigner(
  ca: CaConfig,
  opts: { stateDir: string; trustDomain: string; isLocal?: (namespace: string, serviceAccount: string) => boolean; log?: Logger; trustPollMs?: number },
): Promise<CertificateSigner> {
  if (ca.url) {
    if (!ca.rootCert || !ca.tokenFile) {
      throw new CaRequestError('config', "ca.url needs ca.rootCert (the CA root certificate file) and ca.tokenFile (this node's token)");
    }
    return new CaClient({ url: ca.url, rootCert: ca.rootCert, tokenFile: ca.tokenFile, log: opts.log, trustPollMs: opts.trustPollMs });
  }
  return EmbeddedCaClient.open(opts.stateDir, { trustDomain: opts.trustDomain, isLocal: opts.isLocal, log: opts.log });
}
