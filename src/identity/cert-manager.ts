/**
 * Keeps one certificate per workload identity (namespace/serviceAccount) that runs on this
 * node: a fresh P-256 key (in memory only) and a CSR per issuance, refresh at about half the
 * lifetime, retries with exponential backoff while the CA is down, and the current
 * certificate kept in service until it expires. The tunnel asks for `tlsContextFor(ns, sa)`.
 *
 * Events:
 *   'issued'        (cert: WorkloadCertificate) every new certificate, the first one included
 *   'rotated'       (cert: WorkloadCertificate) a new certificate replaced an earlier one
 *   'refreshFailed' ({ namespace, serviceAccount, spiffeId, error, attempt, retryInMs })
 *   'expired'       ({ namespace, serviceAccount, spiffeId }) the certificate expired before a new one came
 *   'trustChanged'  (pem: string, certs: WorkloadCertificate[]) the trust bundle (`ca.rootCert`) changed;
 *                   every TLS context is rebuilt with it, and certificates that no longer lead to
 *                   a trusted root are requested anew at once
 */
import { EventEmitter } from 'node:events';
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import * as tls from 'node:tls';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Logger } from 'pino';
import { WeftError } from '../errors.js';
import type { CertificateSigner } from './ca-client.js';
import { identityKey, principalOf, spiffeId as makeSpiffeId } from './spiffe.js';
import { anchorOf, chainWithoutRoot, parseTrustBundle, rootName, splitPem } from './pem.js';
import { uriSans } from './verify.js';
import { ECDSA_SHA256, generateP256, privateKeyToPem, x509 } from './x509.js';

/** One workload identity's current key and certificate. */
export interface WorkloadCertificate {
  namespace: string;
  serviceAccount: string;
  spiffeId: string;
  /** The private key (also as `keyPem`), never written to disk. */
  key: KeyObject;
  keyPem: string;
  /** The leaf certificate. */
  certPem: string;
  /** The chain as the CA returned it: leaf first, root last. */
  chainPem: string;
  /** The trust bundle peers are verified against (one or more roots; replaced when it changes). */
  rootPem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface BackoffOptions {
  /** First retry delay, ms (default 1s). */
  initialMs?: number;
  /** Longest retry delay, ms (default 60s). */
  maxMs?: number;
}

export interface CertManagerOptions {
  client: CertificateSigner;
  trustDomain: string;
  /** The agent's metrics registry: `weft_cert_expiry_seconds{identity}` is registered in it. */
  registry?: Registry;
  log?: Logger;
  /** Refresh when this fraction of the remaining lifetime has passed (default 0.5). */
  refreshFraction?: number;
  /** Random spread of the refresh time, as a fraction of it (default 0.1). */
  jitter?: number;
  /** Retry delays while the CA fails. */
  backoff?: BackoffOptions;
  /** Lifetime asked of the CA, ms (default: the CA's default, 24h). */
  ttlMs?: number;
}

/** A summary of one identity for admin output (no key material). */
export interface CertStatus {
  identity: string;
  namespace: string;
  serviceAccount: string;
  state: 'pending' | 'valid' | 'expired';
  notAfter?: string;
  /** The issuer's subject (the CA's signing certificate: a root, or an intermediate). */
  issuer?: string;
  nextRefresh?: string;
  failures: number;
}

interface Entry {
  namespace: string;
  serviceAccount: string;
  spiffeId: string;
  current?: WorkloadCertificate;
  context?: tls.SecureContext;
  timer?: NodeJS.Timeout;
  nextRefreshAt?: number;
  failures: number;
  inflight: boolean;
  expiredReported: boolean;
  ready: Promise<WorkloadCertificate>;
  resolveReady: (cert: WorkloadCertificate) => void;
  rejectReady: (err: Error) => void;
}

export class CertManager extends EventEmitter {
  readonly client: CertificateSigner;
  readonly trustDomain: string;
  private readonly log: Logger | undefined;
  private readonly refreshFraction: number;
  private readonly jitter: number;
  private readonly backoffInitial: number;
  private readonly backoffMax: number;
  private readonly ttlMs: number | undefined;
  private readonly entries = new Map<string, Entry>();
  private readonly refreshErrors: Counter | undefined;
  private stopped = false;
  private rootsOf: { pem: string; roots: X509Certificate[] } | undefined;
  private readonly trustListener = (pem: string, roots: X509Certificate[]) => this.onTrustChanged(pem, roots);

  constructor(opts: CertManagerOptions) {
    super();
    this.client = opts.client;
    this.trustDomain = opts.trustDomain;
    this.log = opts.log?.child({ component: 'cert-manager' });
    this.refreshFraction = opts.refreshFraction ?? 0.5;
    if (!(this.refreshFraction > 0 && this.refreshFraction < 1)) {
      throw new WeftError('WEFT_ERR_CONFIG', `refreshFraction must be between 0 and 1, not ${this.refreshFraction}`);
    }
    this.jitter = opts.jitter ?? 0.1;
    this.backoffInitial = opts.backoff?.initialMs ?? 1000;
    this.backoffMax = opts.backoff?.maxMs ?? 60_000;
    this.ttlMs = opts.ttlMs;
    this.client.trust?.on('changed', this.trustListener);
    if (opts.registry) {
      const entries = this.entries;
      const self = this;
      new Gauge({
        name: 'weft_cert_expiry_seconds',
        help: 'Seconds until the current certificate of each local workload identity expires, and each trusted root (identity="root:<CN> <sha256 prefix>")',
        labelNames: ['identity'],
        registers: [opts.registry],
        collect() {
          this.reset();
          const now = Date.now();
          for (const e of entries.values()) {
            if (e.current) this.set({ identity: principalOf(e.spiffeId) }, (e.current.notAfter.getTime() - now) / 1000);
          }
          for (const r of self.trustedRoots()) this.set({ identity: `root:${rootName(r)}` }, (r.validToDate.getTime() - now) / 1000);
        },
      });
      this.refreshErrors = new Counter({
        name: 'weft_cert_refresh_errors_total',
        help: 'Failed attempts to get a workload certificate signed',
        registers: [opts.registry],
      });
    }
  }

  /** The trust bundle for peer verification (PEM, one or more roots). */
  get rootPem(): string {
    return this.client.rootPem;
  }

  /** The roots in force. */
  trustedRoots(): readonly X509Certificate[] {
    if (this.client.trust) return this.client.trust.roots;
    if (this.rootsOf?.pem !== this.client.rootPem) this.rootsOf = { pem: this.client.rootPem, roots: parseTrustBundle(this.client.rootPem, 'the CA root') };
    return this.rootsOf.roots;
  }

  /**
   * The trust bundle changed (a root added or removed): every TLS context is rebuilt with it
   * on its next use (connections already up keep going), and a certificate that no longer
   * leads to a trusted root is replaced now.
   */
  private onTrustChanged(pem: string, roots: X509Certificate[]): void {
    for (const entry of this.entries.values()) {
      entry.context = undefined;
      if (!entry.current) continue;
      entry.current = { ...entry.current, rootPem: pem };
      const chain = splitPem(entry.current.chainPem).map((p) => new X509Certificate(p));
      if (!anchorOf(chain, roots) && !entry.inflight) {
        this.log?.warn({ identity: principalOf(entry.spiffeId) }, 'the certificate no longer leads to a trusted root; requesting a new one now');
        this.schedule(entry, 0);
      }
    }
    this.emit('trustChanged', pem, this.current());
  }

  /**
   * Starts keeping a certificate for `namespace/serviceAccount` (idempotent). Resolves with
   * the first certificate; while the CA fails it keeps retrying in the background, and the
   * promise rejects only if the identity is released or the manager stopped first. Callers
   * need not wait on it.
   */
  ensure(namespace: string, serviceAccount: string): Promise<WorkloadCertificate> {
    if (this.stopped) return Promise.reject(new WeftError('WEFT_ERR_IDENTITY', 'the certificate manager is stopped'));
    const key = identityKey(namespace, serviceAccount);
    const existing = this.entries.get(key);
    if (existing) return existing.ready;
    let id: string;
    try {
      id = makeSpiffeId(this.trustDomain, namespace, serviceAccount);
    } catch (err) {
      return Promise.reject(err);
    }
    let resolveReady!: (cert: WorkloadCertificate) => void;
    let rejectReady!: (err: Error) => void;
    const ready = new Promise<WorkloadCertificate>((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    // Fire-and-forget callers must not see an unhandled rejection.
    ready.catch(() => undefined);
    const entry: Entry = {
      namespace,
      serviceAccount,
      spiffeId: id,
      failures: 0,
      inflight: false,
      expiredReported: false,
      ready,
      resolveReady,
      rejectReady,
    };
    this.entries.set(key, entry);
    this.log?.info({ identity: principalOf(id) }, 'requesting a certificate');
    void this.refresh(entry);
    return ready;
  }

  /** Stops keeping the certificate of `namespace/serviceAccount`: no local workload uses it any more. */
  release(namespace: string, serviceAccount: string): void {
    const key = identityKey(namespace, serviceAccount);
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    this.drop(entry, 'released');
    this.log?.info({ identity: principalOf(entry.spiffeId) }, 'released a certificate');
  }

  /** The current, unexpired certificate of `namespace/serviceAccount`, or undefined. */
  get(namespace: string, serviceAccount: string): WorkloadCertificate | undefined {
    const entry = this.entries.get(identityKey(namespace, serviceAccount));
    if (!entry?.current) return undefined;
    if (entry.current.notAfter.getTime() <= Date.now()) {
      this.reportExpired(entry);
      return undefined;
    }
    return entry.current;
  }

  /**
   * A TLS context with the identity's key, certificate chain and the trust bundle as the only CAs, for both
   * ends of a tunnel (`tls.connect({ secureContext })`, or a server's SNICallback). Cached; a
   * new one is built after each rotation. Undefined while there is no valid certificate.
   */
  tlsContextFor(namespace: string, serviceAccount: string): tls.SecureContext | undefined {
    const cert = this.get(namespace, serviceAccount);
    if (!cert) return undefined;
    const entry = this.entries.get(identityKey(namespace, serviceAccount))!;
    if (!entry.context) {
      entry.context = tls.createSecureContext({
        key: cert.keyPem,
        // The leaf and any intermediates; peers already hold the root.
        cert: chainWithoutRoot(cert.chainPem),
        ca: this.client.rootPem,
        minVersion: 'TLSv1.3',
      });
    }
    return entry.context;
  }

  /** The current certificates (expired ones included). */
  private current(): WorkloadCertificate[] {
    return [...this.entries.values()].flatMap((e) => (e.current ? [e.current] : []));
  }

  /** Every identity kept, for config_dump. */
  status(): CertStatus[] {
    const now = Date.now();
    return [...this.entries.values()].map((e) => ({
      identity: principalOf(e.spiffeId),
      namespace: e.namespace,
      serviceAccount: e.serviceAccount,
      state: !e.current ? 'pending' : e.current.notAfter.getTime() <= now ? 'expired' : 'valid',
      ...(e.current ? { notAfter: e.current.notAfter.toISOString(), issuer: new X509Certificate(e.current.certPem).issuer.replace(/\n/g, ', ') } : {}),
      ...(e.nextRefreshAt !== undefined ? { nextRefresh: new Date(e.nextRefreshAt).toISOString() } : {}),
      failures: e.failures,
    }));
  }

  /** Clears every timer and forgets every identity; pending `ensure` promises reject. */
  stop(): void {
    this.stopped = true;
    this.client.trust?.off('changed', this.trustListener);
    for (const entry of this.entries.values()) this.drop(entry, 'stopped');
    this.entries.clear();
  }

  private drop(entry: Entry, why: string): void {
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.nextRefreshAt = undefined;
    entry.rejectReady(new WeftError('WEFT_ERR_IDENTITY', `certificate for ${principalOf(entry.spiffeId)} ${why} before it was issued`));
  }

  private isLive(entry: Entry): boolean {
    return !this.stopped && this.entries.get(identityKey(entry.namespace, entry.serviceAccount)) === entry;
  }

  private schedule(entry: Entry, delayMs: number): void {
    if (entry.timer) clearTimeout(entry.timer);
    const delay = Math.max(0, Math.min(delayMs, 2 ** 31 - 1));
    entry.nextRefreshAt = Date.now() + delay;
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      void this.refresh(entry);
    }, delay);
    entry.timer.unref();
  }

  private async refresh(entry: Entry): Promise<void> {
    if (entry.inflight || !this.isLive(entry)) return;
    entry.inflight = true;
    entry.nextRefreshAt = undefined;
    try {
      const cert = await this.issue(entry);
      if (!this.isLive(entry)) return;
      const previous = entry.current;
      entry.current = cert;
      entry.context = undefined;
      entry.failures = 0;
      entry.expiredReported = false;
      const remaining = cert.notAfter.getTime() - Date.now();
      const base = remaining * this.refreshFraction;
      this.schedule(entry, base * (1 + this.jitter * (2 * Math.random() - 1)));
      this.log?.info({ identity: principalOf(entry.spiffeId), notAfter: cert.notAfter.toISOString() }, previous ? 'rotated a certificate' : 'got a certificate');
      entry.resolveReady(cert);
      this.emit('issued', cert);
      if (previous) this.emit('rotated', cert);
    } catch (err) {
      if (!this.isLive(entry)) return;
      entry.failures++;
      this.refreshErrors?.inc();
      const exp = Math.min(this.backoffMax, this.backoffInitial * 2 ** Math.min(entry.failures - 1, 30));
      // "Equal jitter": half fixed, half random, so retries from many nodes spread out.
      const retryInMs = exp / 2 + (Math.random() * exp) / 2;
      const still = entry.current && entry.current.notAfter.getTime() > Date.now();
      this.log?.warn(
        { err, identity: principalOf(entry.spiffeId), attempt: entry.failures, retryInMs: Math.round(retryInMs), servingUntil: still ? entry.current!.notAfter.toISOString() : undefined },
        still ? 'certificate refresh failed; keeping the current certificate' : 'certificate request failed',
      );
      this.schedule(entry, retryInMs);
      this.emit('refreshFailed', {
        namespace: entry.namespace,
        serviceAccount: entry.serviceAccount,
        spiffeId: entry.spiffeId,
        error: err,
        attempt: entry.failures,
        retryInMs,
      });
    } finally {
      entry.inflight = false;
    }
  }

  private reportExpired(entry: Entry): void {
    if (entry.expiredReported) return;
    entry.expiredReported = true;
    entry.context = undefined;
    this.log?.error({ identity: principalOf(entry.spiffeId) }, 'certificate expired and no new one could be obtained');
    this.emit('expired', { namespace: entry.namespace, serviceAccount: entry.serviceAccount, spiffeId: entry.spiffeId });
  }

  /** New key, CSR, signature; then checks that what came back is what was asked for. */
  private async issue(entry: Entry): Promise<WorkloadCertificate> {
    const keys = await generateP256();
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      keys,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: entry.spiffeId }])],
    });
    const signed = await this.client.sign(csr.toString('pem'), entry.namespace, entry.serviceAccount, this.ttlMs);
    const keyPem = await privateKeyToPem(keys.privateKey);
    const key = createPrivateKey(keyPem);
    const rootPem = this.client.rootPem;
    const leafPem = signed.certChain[0]!;
    const leaf = new X509Certificate(leafPem);
    const fail = (why: string): never => {
      throw new WeftError('WEFT_ERR_IDENTITY', `the CA returned an unusable certificate for ${principalOf(entry.spiffeId)}: ${why}`);
    };
    if (!leaf.checkPrivateKey(key)) fail('it is not for the key in the CSR');
    const anchor = anchorOf(
      signed.certChain.map((p) => new X509Certificate(p)),
      [...this.trustedRoots()],
    );
    if (!anchor) fail(`it does not chain to a trusted root (${this.trustedRoots().map(rootName).join(', ')})`);
    const uris = uriSans(leaf.subjectAltName);
    if (uris.length !== 1 || uris[0] !== entry.spiffeId) fail(`its URI SAN is ${uris.join(', ') || 'missing'}`);
    const chainPem = signed.certChain.map((p) => (p.endsWith('\n') ? p : p + '\n')).join('');
    return {
      namespace: entry.namespace,
      serviceAccount: entry.serviceAccount,
      spiffeId: entry.spiffeId,
      key,
      keyPem,
      certPem: leafPem,
      chainPem,
      rootPem,
      notBefore: new Date(leaf.validFrom),
      notAfter: new Date(leaf.validTo),
    };
  }
}
