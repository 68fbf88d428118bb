/**
 * The roots an agent trusts (`ca.rootCert`): one or more self-signed CA certificates in one
 * PEM file, re-read when the file changes, so a root can be rotated without restarting the
 * agent (deploy/README.md "Rotating the root").
 *
 * A change is noticed two ways: fs.watch on the file's directory (Kubernetes updates a mounted
 * ConfigMap or Secret by swapping the `..data` symlink, which is an event on the directory,
 * not on the file), and a periodic re-read (`pollMs`, default 10 s) in case an event is lost
 * or the file system sends none. The content is compared by SHA-256, so a touch without a
 * change, or the symlink swap's intermediate states, change nothing. A new content that is
 * not a valid bundle (empty while being written, not PEM, a certificate that is not a
 * self-signed CA) is logged and the last good bundle stays in force.
 *
 * Events:
 *   'changed' (pem: string, roots: X509Certificate[]) a new valid bundle is in force
 */
import { createHash, type X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import { parseTrustBundle, rootName } from './pem.js';

export const DEFAULT_TRUST_POLL_MS = 10_000;

export class TrustBundleError extends Error {}

export interface TrustBundleOptions {
  /** How often the file is re-read besides fs.watch events, ms (default 10 s). */
  pollMs?: number;
  log?: Logger;
}

export class TrustBundle extends EventEmitter {
  /** The file, or undefined for PEM text given inline (which never changes). */
  readonly file: string | undefined;
  /** For messages: the file path, or "the configured root certificate". */
  readonly source: string;
  private current: { pem: string; roots: X509Certificate[]; hash: string };
  private readonly pollMs: number;
  private readonly log: Logger | undefined;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private checking: Promise<boolean> | undefined;

  /**
   * Reads the bundle now: `rootCert` is PEM text, or the path of a PEM file.
   * @throws TrustBundleError when it cannot be read or is not a bundle of roots.
   */
  constructor(rootCert: string, opts: TrustBundleOptions = {}) {
    super();
    this.pollMs = opts.pollMs ?? DEFAULT_TRUST_POLL_MS;
    this.log = opts.log?.child({ component: 'trust-bundle' });
    let pem: string;
    if (rootCert.includes('-----BEGIN CERTIFICATE-----')) {
      this.file = undefined;
      this.source = 'the configured root certificate';
      pem = rootCert;
    } else {
      this.file = rootCert;
      this.source = rootCert;
      try {
        pem = readFileSync(rootCert, 'utf8');
      } catch (err) {
        throw new TrustBundleError(`cannot read the CA root certificate ${rootCert}: ${(err as Error).message}`, { cause: err });
      }
    }
    this.current = this.parse(pem);
  }

  /** The roots in force, PEM (what TLS contexts take as `ca`). */
  get pem(): string {
    return this.current.pem;
  }

  get roots(): readonly X509Certificate[] {
    return this.current.roots;
  }

  /** Starts watching the file (no-op for inline PEM, or when started). */
  start(): void {
    if (!this.file || this.timer) return;
    const file = this.file;
    try {
      this.watcher = watch(dirname(file), { persistent: false }, (_event, name) => {
        // Any change in the directory may be the symlink swap of a mounted ConfigMap.
        if (name && name !== basename(file) && !String(name).startsWith('..')) return;
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => void this.check(), 50);
        this.debounce.unref();
      });
      this.watcher.on('error', (err) => this.log?.warn({ err: err.message, file }, 'cannot watch the trust bundle; re-reading it periodically only'));
    } catch (err) {
      this.log?.warn({ err: (err as Error).message, file }, 'cannot watch the trust bundle; re-reading it periodically only');
    }
    this.timer = setInterval(() => void this.check(), this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = undefined;
    clearInterval(this.timer);
    clearTimeout(this.debounce);
    this.timer = undefined;
  }

  /** Re-reads the file now; true when a new valid bundle came into force. */
  check(): Promise<boolean> {
    this.checking ??= this.reread().finally(() => (this.checking = undefined));
    return this.checking;
  }

  private async reread(): Promise<boolean> {
    if (!this.file) return false;
    let pem: string;
    try {
      pem = await readFile(this.file, 'utf8');
    } catch (err) {
      this.log?.error({ err: (err as Error).message, file: this.file }, 'cannot read the trust bundle; keeping the roots in force');
      return false;
    }
    const hash = createHash('sha256').update(pem).digest('hex');
    if (hash === this.current.hash) return false;
    let next: TrustBundle['current'];
    try {
      next = this.parse(pem);
    } catch (err) {
      this.log?.error({ err: (err as Error).message, file: this.file }, 'invalid trust bundle; keeping the roots in force');
      return false;
    }
    const before = new Set(this.current.roots.map(rootName));
    const after = new Set(next.roots.map(rootName));
    this.current = next;
    this.log?.info(
      { file: this.file, roots: [...after], added: [...after].filter((r) => !before.has(r)), removed: [...before].filter((r) => !after.has(r)) },
      'trust bundle changed; new connections verify peers against it',
    );
    this.emit('changed', next.pem, next.roots);
    return true;
  }

  private parse(pem: string): TrustBundle['current'] {
    let roots: X509Certificate[];
    try {
      roots = parseTrustBundle(pem, this.source);
    } catch (err) {
      throw new TrustBundleError((err as Error).message, { cause: err });
    }
    return { pem: roots.map((r) => (r.toString().endsWith('\n') ? r.toString() : `${r.toString()}\n`)).join(''), roots, hash: createHash('sha256').update(pem).digest('hex') };
  }
}
