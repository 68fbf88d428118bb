/**
 * JSON Web Key Sets for request authentication, from a file or a URI, kept fresh in the
 * background. A key set that fails to load or parse never replaces the last good one.
 *
 * The verification keys are wrapped once per key-set change with jose's `createLocalJWKSet`,
 * which imports each JWK on first use and caches the `CryptoKey`: the request path never
 * re-imports a key.
 */

import { readFile, stat } from 'node:fs/promises';
import { unwatchFile, watchFile, type Stats } from 'node:fs';
import { createLocalJWKSet, type JSONWebKeySet, type JWK, type LocalJWKSet } from 'jose';

/** Minimal logger (pino-compatible). */
export interface AuthnLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface KeySetOptions {
  /** Periodic re-read (file) or re-fetch (URI), ms. Default 5 minutes. */
  refreshInterval: number;
  /** How often a file's mtime/size is polled for changes, ms. Default 2s. */
  fileCheckInterval: number;
  /** Timeout for one JWKS fetch, ms. Default 5s. */
  fetchTimeout: number;
  /** Minimum time between refreshes forced by a token whose key is unknown, ms. Default 30s. */
  cooldown: number;
  /** First retry delay after a failed fetch, ms; doubles up to `refreshInterval`. Default 2s. */
  retryDelay: number;
  now: () => number;
  fetch: typeof fetch;
  logger?: AuthnLogger;
}

export const DEFAULT_KEY_SET_OPTIONS: KeySetOptions = {
  refreshInterval: 5 * 60_000,
  fileCheckInterval: 2_000,
  fetchTimeout: 5_000,
  cooldown: 30_000,
  retryDelay: 2_000,
  now: () => Date.now(),
  fetch: (...args) => fetch(...args),
};

/** Largest JWKS document accepted, bytes. */
const MAX_JWKS_BYTES = 1 << 20;

/** Private and symmetric members: never needed to verify, dropped from every key. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'] as const;

/**
 * Parses a JWKS document and keeps only asymmetric signature keys (RSA, EC, OKP), public
 * members only. Throws on a malformed document.
 */
export function parseJwks(text: string): JSONWebKeySet {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`JWKS is not JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { keys?: unknown }).keys)) {
    throw new Error("JWKS has no 'keys' list");
  }
  const keys: JWK[] = [];
  for (const k of (doc as { keys: unknown[] }).keys) {
    if (typeof k !== 'object' || k === null) continue;
    const jwk = { ...(k as JWK) };
    if (jwk.kty !== 'RSA' && jwk.kty !== 'EC' && jwk.kty !== 'OKP') continue;
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    for (const m of PRIVATE_MEMBERS) delete (jwk as Record<string, unknown>)[m];
    keys.push(jwk);
  }
  return { keys };
}

export interface KeySetStatus {
  source: string;
  keys: number;
  kids: string[];
  /** Bumped each time the usable keys change. */
  generation: number;
  lastLoaded?: string;
  lastError?: string;
}

/** One key set (file or URI), shared by every rule that names it. */
export abstract class KeySet {
  /** The current verification key resolver; undefined until a load succeeded. */
  resolver: LocalJWKSet | undefined;
  generation = 0;
  readonly source: string;
  protected readonly opts: KeySetOptions;
  protected closed = false;
  private fingerprint = '';
  private kids: string[] = [];
  private count = 0;
  private lastLoaded: number | undefined;
  private lastError: string | undefined;
  private lastAttempt = Number.NEGATIVE_INFINITY;
  private inflight: Promise<void> | undefined;
  /** Settles after the first load attempt, success or not. */
  initial: Promise<void> = Promise.resolve();

  constructor(source: string, opts: KeySetOptions) {
    this.source = source;
    this.opts = opts;
  }

  /** Starts the first load; subclasses call it once their own fields are set. */
  protected start(): void {
    this.initial = this.refresh();
  }

  /** Reads or fetches the document; throws on failure. */
  protected abstract read(): Promise<string>;

  /** Re-loads now (single flight). Never throws; failure keeps the last good keys. */
  refresh(): Promise<void> {
    if (this.inflight !== undefined) return this.inflight;
    this.lastAttempt = this.opts.now();
    this.inflight = this.load().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  /**
   * A token named a key we do not have (rotation at the issuer): re-load unless we did so
   * within the cooldown. Resolves true when a re-load happened.
   */
  async refreshForUnknownKey(): Promise<boolean> {
    if (this.inflight !== undefined) {
      await this.inflight;
      return true;
    }
    if (this.opts.now() - this.lastAttempt < this.opts.cooldown) return false;
    await this.refresh();
    return true;
  }

  private async load(): Promise<void> {
    try {
      const jwks = parseJwks(await this.read());
      this.lastLoaded = this.opts.now();
      this.lastError = undefined;
      this.onSuccess();
      const fingerprint = JSON.stringify(jwks.keys);
      if (fingerprint === this.fingerprint && this.resolver !== undefined) return;
      this.resolver = createLocalJWKSet(jwks);
      this.fingerprint = fingerprint;
      this.kids = jwks.keys.map((k) => k.kid).filter((k): k is string => typeof k === 'string');
      this.count = jwks.keys.length;
      this.generation++;
      this.opts.logger?.info({ source: this.source, keys: this.count, kids: this.kids }, 'jwks loaded');
    } catch (err) {
      this.lastError = (err as Error).message;
      this.onFailure();
      this.opts.logger?.warn(
        { source: this.source, err: this.lastError, keepingLastGood: this.resolver !== undefined },
        'jwks load failed',
      );
    }
  }

  protected onSuccess(): void {}
  protected onFailure(): void {}

  status(): KeySetStatus {
    return {
      source: this.source,
      keys: this.count,
      kids: [...this.kids],
      generation: this.generation,
      ...(this.lastLoaded !== undefined ? { lastLoaded: new Date(this.lastLoaded).toISOString() } : {}),
      ...(this.lastError !== undefined ? { lastError: this.lastError } : {}),
    };
  }

  close(): void {
    this.closed = true;
  }
}

/** A JWKS file: re-read when its mtime or size changes, and every `refreshInterval`. */
export class FileKeySet extends KeySet {
  private readonly path: string;
  private timer: NodeJS.Timeout | undefined;
  private readonly onChange: (cur: Stats, prev: Stats) => void;

  constructor(path: string, opts: KeySetOptions) {
    super(`file:${path}`, opts);
    this.path = path;
    // watchFile polls stat(): it survives the atomic rename a ConfigMap/Secret update does,
    // where fs.watch on the old inode would go quiet.
    this.onChange = (cur, prev) => {
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) void this.refresh();
    };
    watchFile(path, { interval: opts.fileCheckInterval, persistent: false }, this.onChange);
    this.timer = setInterval(() => void this.refresh(), opts.refreshInterval);
    this.timer.unref();
    this.start();
  }

  protected async read(): Promise<string> {
    const st = await stat(this.path);
    if (st.size > MAX_JWKS_BYTES) throw new Error(`JWKS file larger than ${MAX_JWKS_BYTES} bytes`);
    return readFile(this.path, 'utf8');
  }

  override close(): void {
    super.close();
    unwatchFile(this.path, this.onChange);
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/**
 * A JWKS URI: fetched at start, then every `refreshInterval` in the background; after a
 * failure, retried with doubling delays from `retryDelay` up to `refreshInterval`.
 */
export class UriKeySet extends KeySet {
  private readonly uri: string;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;

  constructor(uri: string, opts: KeySetOptions) {
    super(`uri:${uri}`, opts);
    this.uri = uri;
    this.start();
  }

  protected async read(): Promise<string> {
    const res = await this.opts.fetch(this.uri, {
      headers: { accept: 'application/json, application/jwk-set+json' },
      signal: AbortSignal.timeout(this.opts.fetchTimeout),
    });
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`GET ${this.uri}: HTTP ${res.status}`);
    }
    const length = Number(res.headers.get('content-length') ?? '0');
    if (length > MAX_JWKS_BYTES) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`JWKS larger than ${MAX_JWKS_BYTES} bytes`);
    }
    const text = await res.text();
    if (text.length > MAX_JWKS_BYTES) throw new Error(`JWKS larger than ${MAX_JWKS_BYTES} bytes`);
    return text;
  }

  protected override onSuccess(): void {
    this.failures = 0;
    this.schedule(this.opts.refreshInterval);
  }

  protected override onFailure(): void {
    this.failures++;
    this.schedule(Math.min(this.opts.retryDelay * 2 ** (this.failures - 1), this.opts.refreshInterval));
  }

  private schedule(delay: number): void {
    if (this.closed) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.refresh(), delay);
    this.timer.unref();
  }

  override close(): void {
    super.close();
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
