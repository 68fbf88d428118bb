/**
 * The authorization engine: Istio AuthorizationPolicy semantics, compiled once per config
 * change and evaluated per connection (TCP) or per request (HTTP).
 *
 * Order of evaluation for one workload:
 * 1. DENY policies: if any rule of any DENY policy matches, the request is denied.
 * 2. ALLOW policies: if at least one ALLOW policy selects the workload, a rule of one of
 *    them must match, else the request is denied (`policy: 'default-deny'`).
 * 3. No ALLOW policy selects the workload: allowed.
 *
 * A policy selects a workload when it lives in the workload's namespace and its selector's
 * labels are a subset of the workload's (an empty selector selects the whole namespace).
 *
 * Within a rule: `from` entries are alternatives, `to` entries are alternatives, and the rule
 * matches when one of each matches (an absent/empty `from` or `to` matches anything). Within
 * an entry every field present must match; a list field matches when any value matches, a
 * `not*` field when none does. An empty list is the same as an absent field. A policy with
 * `rules: []` matches nothing (on ALLOW: allow-nothing, everything is default-denied).
 *
 * A request attribute that is absent (no mTLS principal, no JWT, no source IP) never
 * satisfies a positive field and always satisfies a `not*` field: `notPrincipals: ['*']`
 * matches plaintext, `requestPrincipals: ['*']` requires a validated JWT.
 */

import { ConfigError } from '../errors.js';
import type { AuthorizationPolicy, PolicyOperation, PolicySource } from '../config/types.js';
import { compileIpBlocks, parseIp, type IpAddress } from './cidr.js';
import { compileHostPatterns, compilePatterns, normalizePath, type StringMatcher } from './match.js';
import { validatePolicies } from './validate.js';

export { validatePolicies } from './validate.js';

/** What the proxy knows about one connection or request. */
export interface AuthzRequest {
  protocol: 'http' | 'tcp';
  /** The peer's SPIFFE ID without `spiffe://` (from its mTLS certificate); absent on plaintext. */
  sourcePrincipal?: string;
  /** The source namespace; when absent it is read from the principal (`<td>/ns/<ns>/sa/<sa>`). */
  sourceNamespace?: string;
  sourceIp?: string;
  /** `iss/sub` of a validated JWT (see `JwtAuthenticator`). */
  requestPrincipal?: string;
  /** Destination (target) port. */
  port: number;
  method?: string;
  /** The raw request path (query allowed); normalized here, see `normalizePath`. */
  path?: string;
  /** The `:authority` / `host` header. */
  host?: string;
}

export interface Decision {
  allowed: boolean;
  /**
   * What decided: `ns/name` of the matching policy; `default-deny` when ALLOW policies select
   * the workload and none matched; `invalid-path` when the path could not be normalized and a
   * policy has a path condition; absent when no policy had an opinion (allowed).
   */
  policy?: string;
  action?: 'ALLOW' | 'DENY';
}

export interface WorkloadRef {
  namespace: string;
  labels: Record<string, string>;
}

export interface CompileOptions {
  /**
   * The mesh's trust domain. When given, the source namespace is read only from principals
   * of this trust domain (a foreign identity has no namespace here). Default: any.
   */
  trustDomain?: string;
}

export interface WorkloadPoliciesDescription {
  namespace: string;
  labels: Record<string, string>;
  /** DENY policies that select the workload, `ns/name`, in evaluation order. */
  deny: string[];
  /** ALLOW policies that select the workload. */
  allow: string[];
  /** True when ALLOW policies exist, so anything they do not match is denied. */
  defaultDeny: boolean;
}

export interface CompiledPoliciesDescription {
  trustDomain?: string;
  policies: { policy: string; action: 'ALLOW' | 'DENY'; selector: Record<string, string>; rules: number }[];
  workloads?: (WorkloadPoliciesDescription & { name?: string })[];
}

/** The policies that select one workload, ready to evaluate. */
export interface WorkloadPolicies {
  /**
   * Decides one request or connection. Synchronous, allocation-light.
   *
   * TCP (`protocol: 'tcp'`): the HTTP-only fields (`methods`, `paths`, `hosts`,
   * `requestPrincipals` and their `not*` forms) cannot be evaluated. As Istio does, an ALLOW
   * rule that has any of them does not match at all (fails closed), while a DENY rule is
   * evaluated with those fields ignored, so it matches when its remaining conditions match
   * and denies the whole connection.
   *
   * HTTP: when a selecting policy has a `paths`/`notPaths` condition and the request path
   * cannot be normalized safely (encoded `/` or `\`, control characters, malformed escapes,
   * not starting with `/`), the request is denied with `policy: 'invalid-path'`.
   */
  evaluate(req: AuthzRequest): Decision;
  describe(): WorkloadPoliciesDescription;
  /** `ns/name` of the DENY and ALLOW policies that apply. */
  readonly deny: readonly string[];
  readonly allow: readonly string[];
}

/** All policies of the mesh, compiled; `forWorkload` picks (and caches) a workload's subset. */
export interface CompiledPolicies {
  forWorkload(w: WorkloadRef): WorkloadPolicies;
  /** For /config_dump: every policy and, when workloads are given, which apply to each. */
  describe(workloads?: (WorkloadRef & { name?: string })[]): CompiledPoliciesDescription;
  readonly size: number;
}

// ---------------------------------------------------------------------------------------
// Evaluation context: request attributes derived lazily, at most once per evaluation.

const UNSET = Symbol('unset');
const SPIFFE_NS = /^([^/]+)\/ns\/([^/]+)\/sa\/[^/]+$/;

class EvalContext {
  readonly req: AuthzRequest;
  readonly principal: string | undefined;
  private readonly trustDomain: string | undefined;
  private ns: string | undefined | typeof UNSET = UNSET;
  private ip: IpAddress | undefined | typeof UNSET = UNSET;
  private normPath: string | undefined | typeof UNSET = UNSET;

  constructor(req: AuthzRequest, trustDomain: string | undefined) {
    this.req = req;
    this.trustDomain = trustDomain;
    const p = req.sourcePrincipal;
    this.principal = p !== undefined && p.startsWith('spiffe://') ? p.slice(9) : p;
  }

  get namespace(): string | undefined {
    if (this.ns === UNSET) {
      if (this.req.sourceNamespace !== undefined && this.req.sourceNamespace !== '') this.ns = this.req.sourceNamespace;
      else {
        const m = this.principal !== undefined ? SPIFFE_NS.exec(this.principal) : null;
        this.ns = m !== null && (this.trustDomain === undefined || m[1] === this.trustDomain) ? m[2] : undefined;
      }
    }
    return this.ns;
  }

  get sourceIp(): IpAddress | undefined {
    if (this.ip === UNSET) this.ip = this.req.sourceIp !== undefined ? parseIp(this.req.sourceIp) : undefined;
    return this.ip;
  }

  get path(): string | undefined {
    if (this.normPath === UNSET) this.normPath = this.req.path !== undefined ? normalizePath(this.req.path) : undefined;
    return this.normPath;
  }
}

// ---------------------------------------------------------------------------------------
// Compiled form

interface Condition {
  /** HTTP-only: ignored by DENY rules on TCP; makes ALLOW rules fail on TCP. */
  http: boolean;
  test: (ctx: EvalContext) => boolean;
}

/** One `from` or `to` entry: all conditions must hold. */
type Clause = Condition[];

interface CompiledRule {
  from: Clause[];
  to: Clause[];
  hasHttp: boolean;
}

interface CompiledPolicy {
  id: string;
  namespace: string;
  selector: [string, string][];
  rawSelector: Record<string, string>;
  action: 'ALLOW' | 'DENY';
  rules: CompiledRule[];
  usesPath: boolean;
  /** The decision returned when this policy decides (shared, frozen). */
  decision: Decision;
}

function present<T>(list: readonly T[] | undefined): list is readonly T[] {
  return list !== undefined && list.length > 0;
}

/** A positive (`x`) or negative (`notX`) condition over an optional string attribute. */
function stringCondition(http: boolean, get: (ctx: EvalContext) => string | undefined, m: StringMatcher, negate: boolean): Condition {
  return negate
    ? {
        http,
        test: (ctx) => {
          const v = get(ctx);
          return v === undefined || !m(v);
        },
      }
    : {
        http,
        test: (ctx) => {
          const v = get(ctx);
          return v !== undefined && m(v);
        },
      };
}

function compileSource(s: PolicySource): Clause {
  const out: Clause = [];
  const strings: [keyof PolicySource, boolean, (ctx: EvalContext) => string | undefined, boolean][] = [
    ['principals', false, (c) => c.principal, false],
    ['notPrincipals', false, (c) => c.principal, true],
    ['namespaces', false, (c) => c.namespace, false],
    ['notNamespaces', false, (c) => c.namespace, true],
    ['requestPrincipals', true, (c) => c.req.requestPrincipal, false],
    ['notRequestPrincipals', true, (c) => c.req.requestPrincipal, true],
  ];
  for (const [field, http, get, negate] of strings) {
    const list = s[field];
    if (present(list)) out.push(stringCondition(http, get, compilePatterns(list), negate));
  }
  if (present(s.ipBlocks)) {
    const m = compileIpBlocks(s.ipBlocks);
    out.push({ http: false, test: (ctx) => (ctx.sourceIp !== undefined ? m(ctx.sourceIp) : false) });
  }
  if (present(s.notIpBlocks)) {
    const m = compileIpBlocks(s.notIpBlocks);
    out.push({ http: false, test: (ctx) => (ctx.sourceIp !== undefined ? !m(ctx.sourceIp) : true) });
  }
  return out;
}

function compileOperation(o: PolicyOperation): Clause {
  const out: Clause = [];
  if (present(o.ports)) {
    const ports = new Set(o.ports.map(Number));
    out.push({ http: false, test: (ctx) => ports.has(ctx.req.port) });
  }
  if (present(o.notPorts)) {
    const ports = new Set(o.notPorts.map(Number));
    out.push({ http: false, test: (ctx) => !ports.has(ctx.req.port) });
  }
  const method = (c: EvalContext): string | undefined => c.req.method;
  const path = (c: EvalContext): string | undefined => c.path;
  const host = (c: EvalContext): string | undefined => c.req.host;
  if (present(o.methods)) out.push(stringCondition(true, method, compilePatterns(o.methods), false));
  if (present(o.notMethods)) out.push(stringCondition(true, method, compilePatterns(o.notMethods), true));
  if (present(o.paths)) out.push(stringCondition(true, path, compilePatterns(o.paths), false));
  if (present(o.notPaths)) out.push(stringCondition(true, path, compilePatterns(o.notPaths), true));
  if (present(o.hosts)) out.push(stringCondition(true, host, compileHostPatterns(o.hosts), false));
  if (present(o.notHosts)) out.push(stringCondition(true, host, compileHostPatterns(o.notHosts), true));
  return out;
}

function compilePolicy(p: AuthorizationPolicy): CompiledPolicy {
  const id = `${p.namespace}/${p.name}`;
  let usesPath = false;
  const rules = (p.rules ?? []).map((r): CompiledRule => {
    const from = (r.from ?? []).map(compileSource);
    const to = (r.to ?? []).map(compileOperation);
    for (const o of r.to ?? []) if (present(o.paths) || present(o.notPaths)) usesPath = true;
    const hasHttp = [...from, ...to].some((clause) => clause.some((c) => c.http));
    return { from, to, hasHttp };
  });
  const selector = p.selector ?? {};
  return {
    id,
    namespace: p.namespace,
    selector: Object.entries(selector),
    rawSelector: { ...selector },
    action: p.action,
    rules,
    usesPath,
    decision: Object.freeze({ allowed: p.action === 'ALLOW', policy: id, action: p.action }),
  };
}

function clauseMatches(clause: Clause, ctx: EvalContext, skipHttp: boolean): boolean {
  for (const c of clause) {
    if (skipHttp && c.http) continue;
    if (!c.test(ctx)) return false;
  }
  return true;
}

function sideMatches(clauses: Clause[], ctx: EvalContext, skipHttp: boolean): boolean {
  if (clauses.length === 0) return true;
  for (const clause of clauses) if (clauseMatches(clause, ctx, skipHttp)) return true;
  return false;
}

function ruleMatches(rule: CompiledRule, ctx: EvalContext, tcp: boolean, action: 'ALLOW' | 'DENY'): boolean {
  // TCP: ALLOW rules with HTTP-only fields fail closed; DENY rules ignore those fields.
  if (tcp && rule.hasHttp && action === 'ALLOW') return false;
  const skipHttp = tcp;
  return sideMatches(rule.from, ctx, skipHttp) && sideMatches(rule.to, ctx, skipHttp);
}

function policyMatches(p: CompiledPolicy, ctx: EvalContext, tcp: boolean): boolean {
  for (const rule of p.rules) if (ruleMatches(rule, ctx, tcp, p.action)) return true;
  return false;
}

function selects(p: CompiledPolicy, w: WorkloadRef): boolean {
  if (p.namespace !== w.namespace) return false;
  for (const [k, v] of p.selector) if (w.labels[k] !== v) return false;
  return true;
}

const ALLOW_NO_POLICY: Decision = Object.freeze({ allowed: true });
const DEFAULT_DENY: Decision = Object.freeze({ allowed: false, policy: 'default-deny' });
const INVALID_PATH: Decision = Object.freeze({ allowed: false, policy: 'invalid-path' });

class WorkloadPoliciesImpl implements WorkloadPolicies {
  readonly deny: readonly string[];
  readonly allow: readonly string[];
  private readonly denyPolicies: CompiledPolicy[];
  private readonly allowPolicies: CompiledPolicy[];
  private readonly usesPath: boolean;

  constructor(
    private readonly workload: WorkloadRef,
    policies: CompiledPolicy[],
    private readonly trustDomain: string | undefined,
  ) {
    this.denyPolicies = policies.filter((p) => p.action === 'DENY');
    this.allowPolicies = policies.filter((p) => p.action === 'ALLOW');
    this.deny = Object.freeze(this.denyPolicies.map((p) => p.id));
    this.allow = Object.freeze(this.allowPolicies.map((p) => p.id));
    this.usesPath = policies.some((p) => p.usesPath);
  }

  evaluate(req: AuthzRequest): Decision {
    if (this.denyPolicies.length === 0 && this.allowPolicies.length === 0) return ALLOW_NO_POLICY;
    const ctx = new EvalContext(req, this.trustDomain);
    const tcp = req.protocol === 'tcp';
    if (!tcp && this.usesPath && req.path !== undefined && ctx.path === undefined) return INVALID_PATH;
    for (const p of this.denyPolicies) if (policyMatches(p, ctx, tcp)) return p.decision;
    if (this.allowPolicies.length === 0) return ALLOW_NO_POLICY;
    for (const p of this.allowPolicies) if (policyMatches(p, ctx, tcp)) return p.decision;
    return DEFAULT_DENY;
  }

  describe(): WorkloadPoliciesDescription {
    return {
      namespace: this.workload.namespace,
      labels: { ...this.workload.labels },
      deny: [...this.deny],
      allow: [...this.allow],
      defaultDeny: this.allow.length > 0,
    };
  }
}

/** Keys already computed, by workload object: config snapshots are not changed in place. */
const workloadKeys = new WeakMap<WorkloadRef, string>();

/** A stable key for a workload's policy set (namespace and labels), memoized per object. */
export function workloadKey(w: WorkloadRef): string {
  let key = workloadKeys.get(w);
  if (key === undefined) {
    const labels = Object.keys(w.labels)
      .sort()
      .map((k) => [k, w.labels[k]]);
    key = JSON.stringify([w.namespace, labels]);
    workloadKeys.set(w, key);
  }
  return key;
}

/** Bound on the per-workload cache, so a churn of label sets cannot grow it without limit. */
const CACHE_LIMIT = 4096;

class CompiledPoliciesImpl implements CompiledPolicies {
  private readonly cache = new Map<string, WorkloadPoliciesImpl>();
  private readonly byNamespace = new Map<string, CompiledPolicy[]>();

  constructor(
    private readonly policies: CompiledPolicy[],
    private readonly trustDomain: string | undefined,
  ) {
    for (const p of policies) {
      const list = this.byNamespace.get(p.namespace);
      if (list === undefined) this.byNamespace.set(p.namespace, [p]);
      else list.push(p);
    }
  }

  get size(): number {
    return this.policies.length;
  }

  forWorkload(w: WorkloadRef): WorkloadPolicies {
    const key = workloadKey(w);
    let wp = this.cache.get(key);
    if (wp === undefined) {
      const selected = (this.byNamespace.get(w.namespace) ?? []).filter((p) => selects(p, w));
      wp = new WorkloadPoliciesImpl({ namespace: w.namespace, labels: { ...w.labels } }, selected, this.trustDomain);
      if (this.cache.size >= CACHE_LIMIT) this.cache.delete(this.cache.keys().next().value as string);
      this.cache.set(key, wp);
    }
    return wp;
  }

  describe(workloads?: (WorkloadRef & { name?: string })[]): CompiledPoliciesDescription {
    const out: CompiledPoliciesDescription = {
      ...(this.trustDomain !== undefined ? { trustDomain: this.trustDomain } : {}),
      policies: this.policies.map((p) => ({ policy: p.id, action: p.action, selector: { ...p.rawSelector }, rules: p.rules.length })),
    };
    if (workloads !== undefined) {
      out.workloads = workloads.map((w) => ({
        ...(w.name !== undefined ? { name: w.name } : {}),
        ...this.forWorkload(w).describe(),
      }));
    }
    return out;
  }
}

/**
 * Compiles the mesh's authorization policies. Throws a `ConfigError` listing every problem
 * (see {@link validatePolicies}) when any policy is invalid; the caller keeps the last good
 * compilation. Call once per config change; `forWorkload` results are cached.
 */
export function compilePolicies(policies: AuthorizationPolicy[], opts: CompileOptions = {}): CompiledPolicies {
  const problems = validatePolicies(policies);
  if (problems.length > 0) throw new ConfigError('authorization policies', problems);
  return new CompiledPoliciesImpl(policies.map(compilePolicy), opts.trustDomain);
}
