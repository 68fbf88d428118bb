/**
 * JSON Web Key Sets for request authentication, from a file or a URI, kept fresh in the
 * background. A key set that fails to load or parse never replaces the last good one; one
 * that never loaded fails its rules closed (a token for them is answered 401).
 *
 * Every source is read defensively, since it is named by configuration that a namespace
 * tenant may write (in Kubernetes, through a RequestAuthentication): a file must be a regular
 * file (opened non-blocking, so a FIFO cannot hang a thread), every read is streamed with a
 * size cap ({@link MAX_JWKS_BYTES}) and a time cap (`fetchTimeout`), redirects are not
 * followed, and a URI whose host is a loopback, link-local or this node's own address is
 * refused unless `allowLocalUris` is set.
 *
 * The verification keys are wrapped once per key-set change with jose's `createLocalJWKSet`,
 * which imports each JWK on first use and caches the `CryptoKey`: the request path never
 * re-imports a key.
 */

import { open } from 'node:fs/promises';
import { constants, unwatchFile, watchFile, type Stats } from 'node:fs';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import http from '../node-http.js';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { networkInterfaces } from 'node:os';
import type * as Jose from 'jose';
import type { JSONWebKeySet, JWK, LocalJWKSet } from 'jose';

let jose: Promise<typeof Jose> | undefined;

/**
 * jose, loaded on first use (a key set loaded, a token checked) rather than at agent start:
 * its ~46 modules cost ~100 ms of CPU that a restarted agent would spend before it serves,
 * and most nodes have no RequestAuthentication (docs/benchmarks/startup.md).
 */
export function loadJose(): Promise<typeof Jose> {
  return (jose ??= import('jose'));
}

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
  /** Time cap on one JWKS read (file) or fetch (URI, from connect to the last byte), ms. Default 5s. */
  fetchTimeout: number;
  /** Minimum time between refreshes forced by a token whose key is unknown, ms. Default 30s. */
  cooldown: number;
  /** First retry delay after a failed fetch, ms; doubles up to `refreshInterval`. Default 2s. */
  retryDelay: number;
  now: () => number;
  /**
   * Fetch a `jwksUri` whose host is (or resolves to) a loopback, link-local or this node's
   * own address. Default false: such a URI is refused (config `agent.jwksAllowLocalUris`).
   */
  allowLocalUris: boolean;
  /** Extra addresses counted as this node's (the node address from the config). */
  nodeAddresses: readonly string[];
  logger?: AuthnLogger;
}

export const DEFAULT_KEY_SET_OPTIONS: KeySetOptions = {
  refreshInterval: 5 * 60_000,
  fileCheckInterval: 2_000,
  fetchTimeout: 5_000,
  cooldown: 30_000,
  retryDelay: 2_000,
  now: () => Date.now(),
  allowLocalUris: false,
  nodeAddresses: [],
};

/** Largest JWKS document accepted, bytes (a key set of a few dozen RSA keys fits). */
export const MAX_JWKS_BYTES = 64 * 1024;

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
      this.resolver = (await loadJose()).createLocalJWKSet(jwks);
      this.fingerprint = fingerprint;
      this.kids = jwks.keys.map((k) => k.kid).filter((k): k is string => typeof k === 'string');
      this.count = jwks.keys.length;
      this.generation++;
      this.opts.logger?.info({ source: this.source, keys: this.count, kids: this.kids }, 'jwks loaded');
    } catch (err) {
      this.lastError = (err as Error).message;
      this.onFailure();
      this.opts.logger?.warn({ source: this.source, err: this.lastError, keepingLastGood: this.resolver !== undefined }, 'jwks load failed');
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

  protected read(): Promise<string> {
    return withTimeout(readRegularFile(this.path), this.opts.fetchTimeout, `reading ${this.path}`);
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

  protected read(): Promise<string> {
    return fetchCapped(this.uri, this.opts);
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

// ---------------------------------------------------------------------------------------
// Reading a source with caps

function tooLarge(): Error {
  return new Error(`JWKS larger than ${MAX_JWKS_BYTES} bytes`);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms}ms`)), ms);
    timer.unref();
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * A JWKS file, read only when it is a regular file: opened with O_NONBLOCK (opening a FIFO
 * for reading would otherwise wait for a writer, holding a libuv thread), then checked with
 * fstat on the open descriptor (no race with a rename), then read up to the cap (a device
 * such as /dev/zero reports size 0 and never ends; it is refused before any read).
 */
export async function readRegularFile(path: string): Promise<string> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    if (st.size > MAX_JWKS_BYTES) throw tooLarge();
    const buf = Buffer.allocUnsafe(MAX_JWKS_BYTES + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > MAX_JWKS_BYTES) throw tooLarge();
    }
    return buf.toString('utf8', 0, n);
  } finally {
    await fh.close();
  }
}

/** Is `ip` a loopback, link-local, unspecified or this node's own address? */
export function isLocalAddress(ip: string, nodeAddresses: readonly string[] = []): boolean {
  let a = ip.toLowerCase();
  if (a.startsWith('::ffff:') && isIP(a.slice(7)) === 4) a = a.slice(7);
  if (isIP(a) === 4) {
    const [o1, o2] = a.split('.').map(Number) as [number, number];
    if (o1 === 127 || o1 === 0 || (o1 === 169 && o2 === 254)) return true;
  } else if (isIP(a) === 6) {
    if (a === '::1' || a === '::' || /^fe[89ab]/.test(a)) return true;
  }
  if (nodeAddresses.includes(a)) return true;
  for (const list of Object.values(networkInterfaces())) {
    for (const i of list ?? []) if (i.address.toLowerCase() === a) return true;
  }
  return false;
}

/** A DNS lookup that fails when any address of the name is local (checked where the connection is made, so a re-resolving name cannot slip one in). */
function guardedLookup(nodeAddresses: readonly string[]): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { family: options.family, hints: options.hints, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return (callback as (e: Error) => void)(err);
      const local = addresses.find((x) => isLocalAddress(x.address, nodeAddresses));
      if (local !== undefined || addresses.length === 0) {
        const e = new Error(`${hostname} resolves to ${local?.address ?? 'nothing'}, a local address: refused (agent.jwksAllowLocalUris)`);
        return (callback as (e: Error) => void)(e);
      }
      if ((options as { all?: boolean }).all) (callback as (e: null, a: LookupAddress[]) => void)(null, addresses);
      else (callback as (e: null, a: string, f: number) => void)(null, addresses[0]!.address, addresses[0]!.family);
    });
  };
}

/**
 * GET a JWKS URI: no redirects (a 3xx is a failure), the body streamed and cut at the size
 * cap whatever its framing, the whole exchange within `fetchTimeout`, and local addresses
 * refused unless `allowLocalUris`.
 */
export function fetchCapped(uri: string, opts: Pick<KeySetOptions, 'fetchTimeout' | 'allowLocalUris' | 'nodeAddresses'>): Promise<string> {
  return new Promise((resolve, reject) => {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      reject(new Error(`${uri} is not a URL`));
      return;
    }
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (!opts.allowLocalUris && isIP(host) !== 0 && isLocalAddress(host, opts.nodeAddresses)) {
      reject(new Error(`${uri}: ${host} is a local address: refused (agent.jwksAllowLocalUris)`));
      return;
    }
    const mod = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : undefined;
    if (mod === undefined) {
      reject(new Error(`${uri}: not http(s)`));
      return;
    }
    let done = false;
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.destroy();
      reject(err);
    };
    const req = mod.request(url, {
      method: 'GET',
      agent: false,
      headers: { accept: 'application/json, application/jwk-set+json' },
      ...(opts.allowLocalUris ? {} : { lookup: guardedLookup(opts.nodeAddresses) }),
    });
    const timer = setTimeout(() => fail(new Error(`GET ${uri}: no complete answer within ${opts.fetchTimeout}ms`)), opts.fetchTimeout);
    timer.unref();
    req.on('error', (err) => fail(new Error(`GET ${uri}: ${err.message}`)));
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400) return fail(new Error(`GET ${uri}: HTTP ${status} redirect to ${res.headers.location ?? '?'} (redirects are not followed)`));
      if (status < 200 || status >= 300) return fail(new Error(`GET ${uri}: HTTP ${status}`));
      if (Number(res.headers['content-length'] ?? 0) > MAX_JWKS_BYTES) return fail(tooLarge());
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (d: Buffer) => {
        n += d.length;
        if (n > MAX_JWKS_BYTES) return fail(tooLarge());
        parts.push(d);
      });
      res.on('error', (err) => fail(new Error(`GET ${uri}: ${err.message}`)));
      res.on('end', () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve(Buffer.concat(parts).toString('utf8'));
      });
    });
    req.end();
  });
}
