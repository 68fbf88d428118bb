/**
 * A worker thread's copy of the node's workload identities: the control thread owns the CA
 * client and the cert manager (issuing, rotation) and sends each new certificate; the
 * worker builds its own TLS contexts from them for the tunnel, both ends (HboneTunnel, TunnelServer).
 * Same shape as LocalIdentities, as far as the tunnel uses it.
 */
import { EventEmitter } from 'node:events';
import * as tls from 'node:tls';
import { chainWithoutRoot } from '../identity/pem.js';
import { identityKey } from '../identity/spiffe.js';
import type { StateStore } from '../state/store.js';
import type { CertSnapshot } from './protocol.js';

interface Held {
  cert: CertSnapshot;
  context?: tls.SecureContext;
}

export class WorkerIdentities {
  /** Emits `rotated` ({namespace, serviceAccount}) when a certificate is replaced. */
  readonly certs = new EventEmitter();
  private readonly held = new Map<string, Held>();
  private readonly waiters = new Map<string, Array<() => void>>();

  constructor(
    readonly trustDomain: string,
    /** The mesh root (PEM): what the tunnel listener verifies callers against. */
    readonly rootPem: string,
    private readonly state: StateStore,
  ) {}

  /** A certificate from the control thread (first one, or a rotation). */
  put(cert: CertSnapshot): void {
    const key = identityKey(cert.namespace, cert.serviceAccount);
    const had = this.held.has(key);
    this.held.set(key, { cert });
    if (had) this.certs.emit('rotated', { namespace: cert.namespace, serviceAccount: cert.serviceAccount });
    for (const w of this.waiters.get(key) ?? []) w();
    this.waiters.delete(key);
  }

  /** True when a local meshed workload runs as `namespace/serviceAccount`. */
  has(namespace: string, serviceAccount: string): boolean {
    for (const w of this.state.meshedLocalWorkloads()) if (w.namespace === namespace && w.serviceAccount === serviceAccount) return true;
    return false;
  }

  private contextNow(key: string): tls.SecureContext | undefined {
    const h = this.held.get(key);
    if (!h || h.cert.notAfter <= Date.now()) return undefined;
    h.context ??= tls.createSecureContext({ key: h.cert.keyPem, cert: chainWithoutRoot(h.cert.chainPem), ca: h.cert.rootPem, minVersion: 'TLSv1.3' });
    return h.context;
  }

  async context(namespace: string, serviceAccount: string, waitMs: number): Promise<tls.SecureContext | undefined> {
    const key = identityKey(namespace, serviceAccount);
    const now = this.contextNow(key);
    if (now || waitMs <= 0 || !this.has(namespace, serviceAccount)) return now;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      timer.unref();
      const list = this.waiters.get(key) ?? [];
      list.push(() => {
        clearTimeout(timer);
        resolve();
      });
      this.waiters.set(key, list);
    });
    return this.contextNow(key);
  }
}
