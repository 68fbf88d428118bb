/**
 * JWT request authentication (Istio RequestAuthentication semantics).
 *
 * - A request without a token passes on, with no request principal (an AuthorizationPolicy
 *   with `requestPrincipals` is what makes a token mandatory).
 * - A request with a token must present a valid one, else it is answered 401: bad signature,
 *   expired or not yet valid, issuer that no rule of the workload names, audience not in the
 *   rule's `audiences` (when given), algorithm outside the allow-list, malformed.
 * - A valid token yields the request principal `iss/sub`.
 *
 * Where a token is read: each rule's `fromHeader`, or by default `authorization` with the
 * `Bearer` scheme (another scheme, e.g. `Basic`, is not a token: it passes on). When rules of
 * the workload name several headers and more than one carries a token, every token must be
 * valid; the principal comes from the first (in rule order).
 */

import type * as Jose from 'jose';
import type { errors, JWTPayload, JWTVerifyOptions } from 'jose';
import { ConfigError } from '../errors.js';
import type { JwtRule, RequestAuthentication } from '../config/types.js';
import { workloadKey, type WorkloadRef } from './engine.js';
import { DEFAULT_KEY_SET_OPTIONS, FileKeySet, loadJose, UriKeySet, type AuthnLogger, type KeySet, type KeySetOptions, type KeySetStatus } from './jwks.js';

export type { AuthnLogger, KeySetStatus } from './jwks.js';

/** Signature algorithms accepted by default: asymmetric only (never `none`, never HS*). */
export const DEFAULT_JWT_ALGORITHMS: readonly string[] = Object.freeze(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519']);

export interface JwtAuthenticatorOptions extends Partial<KeySetOptions> {
  /** Clock skew tolerated on `exp` / `nbf`, seconds. Default 60 (Envoy's default). */
  clockSkew?: number;
  /** Accepted `alg` values; a subset of {@link DEFAULT_JWT_ALGORITHMS}. Default: all of those. */
  algorithms?: string[];
  /** Verified tokens remembered (until they expire or their key set changes). Default 1000; 0 disables. */
  cacheSize?: number;
}

/** Header values as Node gives them (`IncomingHttpHeaders`, HTTP/2 headers): lower-case names. */
export type HeaderMap = Record<string, string | string[] | undefined>;

export type AuthnResult =
  | {
      ok: true;
      /** `iss/sub` of the validated token; absent when the request carried no token. */
      principal?: string;
      claims?: JWTPayload;
      /** The header the validated token came from. */
      header?: string;
      /** False when the rule asks the token be removed before the request reaches the workload. */
      forwardOriginalToken?: boolean;
    }
  | { ok: false; reason: string };

export interface JwtRulesDescription {
  requestAuthentication: string;
  issuer: string;
  audiences: string[];
  jwks: string;
  fromHeader: string;
}

/** A rule, compiled: its key set resolved to the shared `KeySet`. */
interface CompiledRule {
  id: number;
  owner: string;
  issuer: string;
  audiences: string[] | undefined;
  header: string;
  forward: boolean;
  keys: KeySet;
}

interface CompiledAuthn {
  name: string;
  namespace: string;
  selector: [string, string][];
  rules: CompiledRule[];
}

interface CacheEntry {
  rule: number;
  generation: number;
  /** ms; Infinity for a token without `exp`. */
  validUntil: number;
  principal: string;
  claims: JWTPayload;
}

const DEFAULT_HEADER = 'authorization';
const NO_TOKEN: AuthnResult = Object.freeze({ ok: true });

/**
 * Checks RequestAuthentications. Returns every problem (empty when valid), each prefixed by
 * its path under `base` (default `requestAuthentications`).
 */
export function validateRequestAuthentications(ras: unknown, base = 'requestAuthentications'): string[] {
  const out: string[] = [];
  if (ras === undefined) return out;
  if (!Array.isArray(ras)) return [`${base}: must be a list`];
  ras.forEach((ra: unknown, i) => {
    const path = `${base}[${i}]`;
    if (typeof ra !== 'object' || ra === null) {
      out.push(`${path}: must be a mapping`);
      return;
    }
    const r = ra as Partial<RequestAuthentication>;
    if (typeof r.name !== 'string' || r.name === '') out.push(`${path}.name: required`);
    if (typeof r.namespace !== 'string' || r.namespace === '') out.push(`${path}.namespace: required`);
    if (!Array.isArray(r.jwtRules)) {
      out.push(`${path}.jwtRules: must be a list`);
      return;
    }
    r.jwtRules.forEach((rule: Partial<JwtRule>, j) => {
      const rp = `${path}.jwtRules[${j}]`;
      if (typeof rule !== 'object' || rule === null) {
        out.push(`${rp}: must be a mapping`);
        return;
      }
      if (typeof rule.issuer !== 'string' || rule.issuer === '') out.push(`${rp}.issuer: required`);
      if (rule.audiences !== undefined && (!Array.isArray(rule.audiences) || rule.audiences.some((a) => typeof a !== 'string' || a === ''))) {
        out.push(`${rp}.audiences: must be a list of non-empty strings`);
      }
      const hasFile = typeof rule.jwksFile === 'string' && rule.jwksFile !== '';
      const hasUri = typeof rule.jwksUri === 'string' && rule.jwksUri !== '';
      if (hasFile === hasUri) out.push(`${rp}: exactly one of jwksFile and jwksUri is required`);
      if (hasUri) {
        let url: URL | undefined;
        try {
          url = new URL(rule.jwksUri as string);
        } catch {
          url = undefined;
        }
        if (url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
          out.push(`${rp}.jwksUri: '${rule.jwksUri}' is not an http(s) URL`);
        }
      }
      if (rule.fromHeader !== undefined && (typeof rule.fromHeader !== 'string' || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(rule.fromHeader))) {
        out.push(`${rp}.fromHeader: '${String(rule.fromHeader)}' is not a header name`);
      }
    });
  });
  return out;
}

function selects(a: CompiledAuthn, w: WorkloadRef): boolean {
  if (a.namespace !== w.namespace) return false;
  for (const [k, v] of a.selector) if (w.labels[k] !== v) return false;
  return true;
}

/** Reads a token from one header; undefined = no token, null = unusable (malformed). */
function extractToken(headers: HeaderMap, header: string): string | undefined | null {
  const raw = headers[header];
  if (raw === undefined) return undefined;
  if (Array.isArray(raw)) {
    if (raw.length === 0) return undefined;
    if (raw.length > 1) return null;
  }
  const value = (Array.isArray(raw) ? raw[0]! : raw).trim();
  if (value === '') return undefined;
  const bearer = /^bearer(?:\s+(.*))?$/i.exec(value);
  if (header === DEFAULT_HEADER) {
    if (bearer === null) return undefined; // another scheme (Basic, ...): not ours
    const token = bearer[1]?.trim() ?? '';
    return token === '' || /\s/.test(token) ? null : token;
  }
  const token = bearer !== null ? (bearer[1]?.trim() ?? '') : value;
  return token === '' || /\s/.test(token) ? null : token;
}

/** Turns a jose failure into a short reason for the 401 answer and the access log. */
function reasonOf(err: unknown, { errors }: typeof Jose): string {
  if (err instanceof errors.JWTExpired) return 'token expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf') return 'token not yet valid';
    if (err.claim === 'aud') return 'audience not allowed';
    if (err.claim === 'iss') return 'issuer mismatch';
    return `claim '${err.claim}' invalid: ${err.reason}`;
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'signature verification failed';
  if (err instanceof errors.JOSEAlgNotAllowed) return 'algorithm not allowed';
  if (err instanceof errors.JWKSNoMatchingKey) return 'no matching key';
  if (err instanceof errors.JWKSMultipleMatchingKeys) return 'signature verification failed';
  if (err instanceof errors.JOSENotSupported) return 'algorithm not supported';
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) return 'malformed token';
  if (err instanceof errors.JOSEError) return `invalid token (${err.code})`;
  return 'invalid token';
}

/**
 * Validates JWTs for the workloads that RequestAuthentications select. Build one per config
 * change, or call {@link JwtAuthenticator.update} to keep key sets that are still named;
 * {@link JwtAuthenticator.close} stops the background refreshes.
 */
export class JwtAuthenticator {
  private readonly opts: KeySetOptions;
  private readonly clockSkew: number;
  private readonly algorithms: string[];
  private readonly cacheSize: number;
  private keySets = new Map<string, KeySet>();
  private authns: CompiledAuthn[] = [];
  private byWorkload = new Map<string, CompiledRule[]>();
  private readonly verified = new Map<string, CacheEntry>();
  private nextRuleId = 0;

  /** Throws `ConfigError` when a RequestAuthentication is invalid or an algorithm is unsafe. */
  constructor(configs: RequestAuthentication[], opts: JwtAuthenticatorOptions = {}) {
    const { clockSkew, algorithms, cacheSize, ...keyOpts } = opts;
    this.opts = { ...DEFAULT_KEY_SET_OPTIONS };
    for (const [k, v] of Object.entries(keyOpts)) if (v !== undefined) (this.opts as unknown as Record<string, unknown>)[k] = v;
    this.clockSkew = clockSkew ?? 60;
    const algs = algorithms ?? [...DEFAULT_JWT_ALGORITHMS];
    const unsafe = algs.filter((a) => !DEFAULT_JWT_ALGORITHMS.includes(a));
    if (unsafe.length > 0) {
      throw new ConfigError('jwt options', [`algorithms: ${unsafe.join(', ')} not allowed (asymmetric signatures only)`]);
    }
    this.algorithms = algs;
    this.cacheSize = cacheSize ?? 1000;
    this.update(configs);
  }

  /**
   * Replaces the RequestAuthentications. Key sets still named (same file or URI) are kept
   * with their loaded keys; the others are closed. Throws `ConfigError` when invalid, keeping
   * the previous configuration.
   */
  update(configs: RequestAuthentication[]): void {
    const problems = validateRequestAuthentications(configs);
    if (problems.length > 0) throw new ConfigError('request authentications', problems);
    const keySets = new Map<string, KeySet>();
    const keySetFor = (rule: JwtRule): KeySet => {
      const key = rule.jwksFile !== undefined && rule.jwksFile !== '' ? `file:${rule.jwksFile}` : `uri:${rule.jwksUri}`;
      let ks = keySets.get(key) ?? this.keySets.get(key);
      if (ks === undefined) {
        ks = key.startsWith('file:') ? new FileKeySet(rule.jwksFile as string, this.opts) : new UriKeySet(rule.jwksUri as string, this.opts);
      }
      keySets.set(key, ks);
      return ks;
    };
    const authns = configs.map(
      (ra): CompiledAuthn => ({
        name: ra.name,
        namespace: ra.namespace,
        selector: Object.entries(ra.selector ?? {}),
        rules: ra.jwtRules.map((r) => ({
          id: this.nextRuleId++,
          owner: `${ra.namespace}/${ra.name}`,
          issuer: r.issuer,
          audiences: r.audiences !== undefined && r.audiences.length > 0 ? [...r.audiences] : undefined,
          header: (r.fromHeader ?? DEFAULT_HEADER).toLowerCase(),
          forward: r.forwardOriginalToken !== false,
          keys: keySetFor(r),
        })),
      }),
    );
    for (const [key, ks] of this.keySets) if (!keySets.has(key)) ks.close();
    this.keySets = keySets;
    this.authns = authns;
    this.byWorkload = new Map();
    this.verified.clear();
  }

  /** Settles when every key set has made its first load attempt. */
  async ready(): Promise<void> {
    await Promise.all([...this.keySets.values()].map((ks) => ks.initial));
  }

  /** Re-reads / re-fetches every key set now (e.g. on SIGHUP, or in tests). */
  async refresh(): Promise<void> {
    await Promise.all([...this.keySets.values()].map((ks) => ks.refresh()));
  }

  /** Stops file watches and background fetches. */
  close(): void {
    for (const ks of this.keySets.values()) ks.close();
  }

  /** True when some RequestAuthentication selects the workload. */
  appliesTo(w: WorkloadRef): boolean {
    return this.rulesFor(w).length > 0;
  }

  private rulesFor(w: WorkloadRef): CompiledRule[] {
    const key = workloadKey(w);
    let rules = this.byWorkload.get(key);
    if (rules === undefined) {
      rules = this.authns.filter((a) => selects(a, w)).flatMap((a) => a.rules);
      if (this.byWorkload.size >= 4096) this.byWorkload.delete(this.byWorkload.keys().next().value as string);
      this.byWorkload.set(key, rules);
    }
    return rules;
  }

  /**
   * Authenticates one request for the destination workload. No RequestAuthentication
   * selecting the workload, or no token: `{ ok: true }` without a principal.
   */
  async authenticate(w: WorkloadRef, headers: HeaderMap): Promise<AuthnResult> {
    const rules = this.rulesFor(w);
    if (rules.length === 0) return NO_TOKEN;
    let first: AuthnResult | undefined;
    const seenHeaders = new Set<string>();
    for (const rule of rules) {
      if (seenHeaders.has(rule.header)) continue;
      seenHeaders.add(rule.header);
      const token = extractToken(headers, rule.header);
      if (token === undefined) continue;
      if (token === null) return { ok: false, reason: `malformed ${rule.header} header` };
      const result = await this.verify(
        token,
        rules.filter((r) => r.header === rule.header),
      );
      if (!result.ok) return result;
      first ??= result;
    }
    return first ?? NO_TOKEN;
  }

  private async verify(token: string, candidates: CompiledRule[]): Promise<AuthnResult> {
    let iss: string | undefined;
    let alg: unknown;
    const { decodeJwt, decodeProtectedHeader } = await loadJose();
    try {
      alg = decodeProtectedHeader(token).alg;
      const claimedIss = decodeJwt(token).iss;
      iss = typeof claimedIss === 'string' ? claimedIss : undefined;
    } catch {
      return { ok: false, reason: 'malformed token' };
    }
    if (typeof alg !== 'string' || !this.algorithms.includes(alg)) return { ok: false, reason: 'algorithm not allowed' };
    if (iss === undefined) return { ok: false, reason: 'token has no issuer' };
    const rules = candidates.filter((r) => r.issuer === iss);
    if (rules.length === 0) return { ok: false, reason: 'unknown issuer' };

    const now = this.opts.now();
    let firstFailure: string | undefined;
    for (const rule of rules) {
      const cacheKey = this.cacheSize > 0 ? `${rule.id}\0${token}` : undefined;
      if (cacheKey !== undefined) {
        const hit = this.verified.get(cacheKey);
        if (hit !== undefined) {
          if (hit.generation === rule.keys.generation && now < hit.validUntil) return this.success(rule, hit.principal, hit.claims);
          this.verified.delete(cacheKey);
        }
      }
      const outcome = await this.verifyWithRule(token, rule, now);
      if (typeof outcome === 'string') {
        firstFailure ??= outcome;
        continue;
      }
      const principal = `${iss}/${typeof outcome.payload.sub === 'string' ? outcome.payload.sub : ''}`;
      if (cacheKey !== undefined) this.remember(cacheKey, rule, outcome.generation, principal, outcome.payload);
      return this.success(rule, principal, outcome.payload);
    }
    return { ok: false, reason: firstFailure ?? 'invalid token' };
  }

  /** Verifies against one rule; a reason string on failure. */
  private async verifyWithRule(token: string, rule: CompiledRule, now: number): Promise<{ payload: JWTPayload; generation: number } | string> {
    const ks = rule.keys;
    if (ks.resolver === undefined) await ks.initial;
    const jose = await loadJose();
    const { errors, jwtVerify } = jose;
    for (let attempt = 0; ; attempt++) {
      const resolver = ks.resolver;
      const generation = ks.generation;
      if (resolver === undefined) {
        if (attempt === 0 && (await ks.refreshForUnknownKey())) continue;
        return 'no verification keys available';
      }
      const options = {
        issuer: rule.issuer,
        ...(rule.audiences !== undefined ? { audience: rule.audiences } : {}),
        algorithms: this.algorithms,
        clockTolerance: this.clockSkew,
        currentDate: new Date(now),
      };
      try {
        const { payload } = await jwtVerify(token, resolver, options);
        return { payload, generation };
      } catch (err) {
        // The issuer may have rotated its keys: re-load once (rate-limited) and retry.
        if (attempt === 0 && err instanceof errors.JWKSNoMatchingKey && (await ks.refreshForUnknownKey())) continue;
        // A token without `kid` that several keys could verify: try each (jose leaves this to us).
        if (err instanceof errors.JWKSMultipleMatchingKeys) return this.verifyWithEach(token, err, options, generation, jose);
        return reasonOf(err, jose);
      }
    }
  }

  private async verifyWithEach(
    token: string,
    candidates: errors.JWKSMultipleMatchingKeys,
    options: JWTVerifyOptions,
    generation: number,
    jose: typeof Jose,
  ): Promise<{ payload: JWTPayload; generation: number } | string> {
    const { errors, jwtVerify } = jose;
    let reason = 'signature verification failed';
    for await (const key of candidates) {
      try {
        const { payload } = await jwtVerify(token, key, options);
        return { payload, generation };
      } catch (err) {
        // A claim failure is the same whichever key verified the signature: report it.
        if (!(err instanceof errors.JWSSignatureVerificationFailed)) return reasonOf(err, jose);
        reason = reasonOf(err, jose);
      }
    }
    return reason;
  }

  private success(rule: CompiledRule, principal: string, claims: JWTPayload): AuthnResult {
    return { ok: true, principal, claims, header: rule.header, forwardOriginalToken: rule.forward };
  }

  private remember(key: string, rule: CompiledRule, generation: number, principal: string, claims: JWTPayload): void {
    const exp = typeof claims.exp === 'number' ? (claims.exp + this.clockSkew) * 1000 : Number.POSITIVE_INFINITY;
    if (this.verified.size >= this.cacheSize) this.verified.delete(this.verified.keys().next().value as string);
    this.verified.set(key, { rule: rule.id, generation, validUntil: exp, principal, claims });
  }

  /** For /config_dump: rules per RequestAuthentication, key set status, and per workload. */
  describe(workloads?: (WorkloadRef & { name?: string })[]): {
    rules: JwtRulesDescription[];
    keySets: KeySetStatus[];
    workloads?: { name?: string; namespace: string; issuers: string[] }[];
  } {
    const rules = this.authns.flatMap((a) =>
      a.rules.map((r) => ({
        requestAuthentication: r.owner,
        issuer: r.issuer,
        audiences: r.audiences ?? [],
        jwks: r.keys.source,
        fromHeader: r.header,
      })),
    );
    return {
      rules,
      keySets: [...this.keySets.values()].map((ks) => ks.status()),
      ...(workloads !== undefined
        ? {
            workloads: workloads.map((w) => ({
              ...(w.name !== undefined ? { name: w.name } : {}),
              namespace: w.namespace,
              issuers: [...new Set(this.rulesFor(w).map((r) => r.issuer))],
            })),
          }
        : {}),
    };
  }
}
