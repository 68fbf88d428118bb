/**
 * Which workload identities this node holds certificates for: exactly those of the meshed
 * workloads scheduled here. A certificate is requested when the first such workload appears
 * and released when the last one leaves (or its namespace leaves the mesh); the cert manager
 * keeps it fresh in between. The tunnel asks here for TLS contexts, on both ends.
 */
import type * as tls from 'node:tls';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { CertManager, CertStatus } from './cert-manager.js';
import { rootName } from './pem.js';
import { identityKey } from './spiffe.js';

export class LocalIdentities {
  private wanted = new Set<string>();

  constructor(
    readonly certs: CertManager,
    private readonly log: Logger,
  ) {}

  get trustDomain(): string {
    return this.certs.trustDomain;
  }

  /** The trust bundle (PEM, one or more roots) peers are verified against. */
  get rootPem(): string {
    return this.certs.rootPem;
  }

  /** Brings the kept identities in line with the state's local meshed workloads. */
  sync(state: StateStore): void {
    const next = new Map<string, { namespace: string; serviceAccount: string }>();
    for (const w of state.meshedLocalWorkloads()) next.set(identityKey(w.namespace, w.serviceAccount), { namespace: w.namespace, serviceAccount: w.serviceAccount });
    const before = this.wanted;
    // Updated first: the embedded CA asks `has()` whether it may sign.
    this.wanted = new Set(next.keys());
    for (const [key, id] of next) {
      if (before.has(key)) continue;
      // Fire and forget: the cert manager retries in the background while the CA fails.
      void this.certs.ensure(id.namespace, id.serviceAccount).catch(() => undefined);
    }
    for (const key of before) {
      if (next.has(key)) continue;
      const [namespace, serviceAccount] = key.split('/') as [string, string];
      this.certs.release(namespace, serviceAccount);
    }
  }

  /** True when a local meshed workload runs as `namespace/serviceAccount`. */
  has(namespace: string, serviceAccount: string): boolean {
    return this.wanted.has(identityKey(namespace, serviceAccount));
  }

  /**
   * The TLS context of a local identity, waiting up to `waitMs` for its first certificate
   * (or for a new one, after the current one expired). Undefined when the identity is not
   * local or no valid certificate came in time.
   */
  async context(namespace: string, serviceAccount: string, waitMs: number): Promise<tls.SecureContext | undefined> {
    const now = this.certs.tlsContextFor(namespace, serviceAccount);
    if (now || !this.has(namespace, serviceAccount) || waitMs <= 0) return now;
    const deadline = Date.now() + waitMs;
    // ensure() resolves on the first certificate; after an expiry it is already resolved,
    // so poll (briefly) for the next one as well.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((r) => {
      timer = setTimeout(r, waitMs);
      timer.unref();
    });
    await Promise.race([
      this.certs.ensure(namespace, serviceAccount).then(
        () => undefined,
        () => undefined,
      ),
      timeout,
    ]);
    clearTimeout(timer);
    for (;;) {
      const ctx = this.certs.tlsContextFor(namespace, serviceAccount);
      if (ctx || Date.now() >= deadline || !this.has(namespace, serviceAccount)) return ctx;
      await new Promise((r) => setTimeout(r, Math.min(100, deadline - Date.now())).unref());
    }
  }

  /**
   * Waits up to `waitMs` for a certificate of every local identity: true when all came. What
   * a successor waits for before the agent it replaces stops accepting.
   */
  async ready(waitMs: number): Promise<boolean> {
    const ids = [...this.wanted].map((key) => key.split('/') as [string, string]);
    const got = await Promise.all(ids.map(([ns, sa]) => this.context(ns, sa, waitMs)));
    return got.every((c) => c !== undefined);
  }

  status(): CertStatus[] {
    return this.certs.status();
  }

  /** The roots peers are verified against now, for config_dump. */
  roots(): Array<{ root: string; notAfter: string }> {
    return this.certs.trustedRoots().map((r) => ({ root: rootName(r), notAfter: r.validToDate.toISOString() }));
  }

  stop(): void {
    this.certs.stop();
    this.certs.client.close?.();
    this.wanted.clear();
    this.log.debug('workload identities released');
  }
}
