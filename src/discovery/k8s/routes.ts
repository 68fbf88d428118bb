/**
 * Gateway API routes (GAMMA: parentRefs that are Services) -> `routes:` of the raw config.
 * Pure functions over the informer caches, shared by the agents (which route by them) and the
 * one status writer (route-status.ts, which tells users what the agents made of them).
 *
 * - HTTPRoute, GRPCRoute (gateway.networking.k8s.io/v1) and TCPRoute (v1alpha2) in a meshed
 *   namespace, with parentRefs of kind Service (group "" or "core") in the route's own
 *   namespace; parentRefs to Gateways are another controller's business and are ignored.
 * - The spec maps field by field onto the file format (the same names: matches, filters,
 *   backendRefs, timeouts, retry); what weft does not implement (backendRef filters,
 *   sessionPersistence, other filter types) refuses the route, as the Gateway API asks
 *   (Accepted=False, UnsupportedValue), rather than half-applying it.
 * - `fault` is an ExtensionRef filter naming a weft.io/v1alpha1 FaultInjection of the route's
 *   namespace (its spec is the file's `fault:`). One that does not exist answers 500 to the
 *   rule's requests, as the Gateway API requires for an unresolved custom filter.
 * - A backendRef to another namespace (which would need a ReferenceGrant) or to a kind other
 *   than Service is left out of the rule (ResolvedRefs=False: RefNotPermitted / InvalidKind).
 * - Order: oldest first (creationTimestamp), then namespace/name: the Gateway API's tie-break
 *   between routes, which the route table applies by position.
 */
import type { KubernetesObject } from '@kubernetes/client-node';

export const GATEWAY_GROUP = 'gateway.networking.k8s.io';
export const ROUTE_KINDS = ['HTTPRoute', 'GRPCRoute', 'TCPRoute'] as const;
export type GatewayRouteKind = (typeof ROUTE_KINDS)[number];

export interface RouteObject extends KubernetesObject {
  spec?: unknown;
  status?: unknown;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** A Service parentRef (group "" / core, kind Service), as the Gateway API spells it. */
export function isServiceRef(ref: Obj): boolean {
  const group = ref.group ?? '';
  return (group === '' || group === 'core') && ref.kind === 'Service';
}

function isServiceBackend(ref: Obj): boolean {
  const group = ref.group ?? '';
  return (group === '' || group === 'core') && (ref.kind ?? 'Service') === 'Service';
}

export function creationMs(o: KubernetesObject): number {
  const t = o.metadata?.creationTimestamp as unknown;
  const ms = t instanceof Date ? t.getTime() : typeof t === 'string' ? Date.parse(t) : NaN;
  return Number.isFinite(ms) ? ms : 0;
}

/** Oldest first, then namespace/name (Gateway API's tie-break between routes). */
export function routeOrder(a: KubernetesObject, b: KubernetesObject): number {
  const d = creationMs(a) - creationMs(b);
  if (d !== 0) return d;
  const ka = `${a.metadata?.namespace}/${a.metadata?.name}`;
  const kb = `${b.metadata?.namespace}/${b.metadata?.name}`;
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

/** What became of one backendRef or filter reference (for ResolvedRefs). */
export interface RefProblem {
  reason: 'BackendNotFound' | 'RefNotPermitted' | 'InvalidKind';
  message: string;
}

export interface TranslatedRoute {
  /** The file-format entry, or undefined when the route is refused. */
  raw: Obj | undefined;
  /** Why it is refused (Accepted=False), with the Gateway API reason. */
  refused?: { reason: 'UnsupportedValue' | 'NoMatchingParent'; problems: string[] };
  /** References left out or unresolved (ResolvedRefs=False). */
  refs: RefProblem[];
}

const MATCH_KEYS = new Set(['path', 'headers', 'queryParams', 'method']);
const FILTER_KEYS: Record<string, string> = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  URLRewrite: 'urlRewrite',
  RequestRedirect: 'requestRedirect',
  RequestMirror: 'requestMirror',
};

function pick(o: unknown, keys: readonly string[]): Obj {
  const out: Obj = {};
  if (!isObj(o)) return out;
  for (const k of keys) if (o[k] !== undefined && o[k] !== null) out[k] = o[k];
  return out;
}

/**
 * One route object -> the file format's entry, given the FaultInjections of its namespace
 * (by name) and whether `serviceExists(ns, name)`.
 */
export function translateRoute(kind: GatewayRouteKind, o: RouteObject, faults: ReadonlyMap<string, unknown>, serviceExists: (ns: string, name: string) => boolean): TranslatedRoute {
  const ns = o.metadata?.namespace ?? 'default';
  const name = o.metadata?.name ?? '';
  const spec = isObj(o.spec) ? o.spec : {};
  const unsupported: string[] = [];
  const refs: RefProblem[] = [];

  const parentRefs: Obj[] = [];
  for (const ref of arr(spec.parentRefs)) {
    if (!isObj(ref) || !isServiceRef(ref)) continue;
    if (ref.namespace !== undefined && ref.namespace !== ns) {
      unsupported.push(`spec.parentRefs: Service ${String(ref.namespace)}/${String(ref.name)} is in another namespace; weft attaches a route to the Services of its own namespace`);
      continue;
    }
    parentRefs.push(pick(ref, ['name', 'port']));
  }
  if (parentRefs.length === 0) return { raw: undefined, refs };
  const missing = parentRefs.filter((r) => !serviceExists(ns, String(r.name)));
  if (missing.length === parentRefs.length) {
    return { raw: undefined, refused: { reason: 'NoMatchingParent', problems: missing.map((r) => `spec.parentRefs: no Service ${ns}/${String(r.name)} in the mesh`) }, refs };
  }
  const presentParents = parentRefs.filter((r) => !missing.includes(r));

  const backendRefs = (list: unknown, at: string): Obj[] => {
    const out: Obj[] = [];
    arr(list).forEach((b, i) => {
      if (!isObj(b)) return;
      if (arr(b.filters).length) unsupported.push(`${at}[${i}].filters: per-backend filters are not supported; put them on the rule`);
      if (!isServiceBackend(b)) {
        refs.push({ reason: 'InvalidKind', message: `${at}[${i}]: ${String(b.group ?? '')}/${String(b.kind)} is not a Service` });
        return;
      }
      if (b.namespace !== undefined && b.namespace !== ns) {
        refs.push({ reason: 'RefNotPermitted', message: `${at}[${i}]: Service ${String(b.namespace)}/${String(b.name)} is in another namespace (cross-namespace backends are not supported)` });
        return;
      }
      if (!serviceExists(ns, String(b.name))) refs.push({ reason: 'BackendNotFound', message: `${at}[${i}]: no Service ${ns}/${String(b.name)} (its share of requests is answered 500 no_backend)` });
      out.push(pick(b, ['name', 'port', 'weight']));
    });
    return out;
  };

  const rules: Obj[] = [];
  arr(spec.rules).forEach((r, i) => {
    if (!isObj(r)) return;
    const at = `spec.rules[${i}]`;
    const rule: Obj = {};
    if (typeof r.name === 'string') rule.name = r.name;
    if (r.sessionPersistence !== undefined) unsupported.push(`${at}.sessionPersistence: not supported`);
    if (kind !== 'TCPRoute' && r.matches !== undefined) {
      rule.matches = arr(r.matches).map((m) => {
        const out: Obj = {};
        if (!isObj(m)) return out;
        for (const [k, v] of Object.entries(m)) if (MATCH_KEYS.has(k) && v !== null) out[k] = v;
        return out;
      });
    }
    const filters: Obj[] = [];
    arr(r.filters).forEach((f, j) => {
      if (!isObj(f)) return;
      const type = String(f.type);
      if (type === 'ExtensionRef' && isObj(f.extensionRef) && f.extensionRef.group === 'weft.io' && f.extensionRef.kind === 'FaultInjection') {
        const faultName = String(f.extensionRef.name);
        const fault = faults.get(faultName);
        if (isObj(fault)) rule.fault = fault;
        else {
          // Gateway API: an unresolved custom filter must not be skipped; its requests get a 500.
          refs.push({ reason: 'BackendNotFound', message: `${at}.filters[${j}]: no FaultInjection ${ns}/${faultName} (the rule answers 500 until it exists)` });
          rule.fault = { abort: { httpStatus: 500, percent: 100 } };
        }
        return;
      }
      const key = FILTER_KEYS[type];
      if (key === undefined) {
        unsupported.push(`${at}.filters[${j}].type: ${type} is not supported (supported: ${[...Object.keys(FILTER_KEYS), 'ExtensionRef to weft.io FaultInjection'].join(', ')})`);
        return;
      }
      let value = f[key];
      if (type === 'RequestMirror' && isObj(value)) {
        const mirror: Obj = { backendRef: pick(value.backendRef, ['name', 'port']) };
        if (typeof value.percent === 'number') mirror.percent = value.percent;
        else if (isObj(value.fraction) && typeof value.fraction.numerator === 'number') {
          const den = typeof value.fraction.denominator === 'number' && value.fraction.denominator > 0 ? value.fraction.denominator : 100;
          mirror.percent = Math.min(100, (100 * value.fraction.numerator) / den);
        }
        const mref = isObj(value.backendRef) ? value.backendRef : {};
        if (mref.namespace !== undefined && mref.namespace !== ns) {
          refs.push({ reason: 'RefNotPermitted', message: `${at}.filters[${j}].requestMirror.backendRef: another namespace` });
          return;
        }
        if (!serviceExists(ns, String(mref.name)))
          refs.push({ reason: 'BackendNotFound', message: `${at}.filters[${j}].requestMirror.backendRef: no Service ${ns}/${String(mref.name)} (nothing is mirrored)` });
        value = mirror;
      }
      if (type === 'RequestRedirect' && isObj(value)) {
        // A null scheme/port is the API's "unset".
        value = pick(value, ['scheme', 'hostname', 'port', 'path', 'statusCode']);
      }
      filters.push({ type, [key]: value });
    });
    if (filters.length) rule.filters = filters;
    rule.backendRefs = backendRefs(r.backendRefs, `${at}.backendRefs`);
    if (arr(r.backendRefs).length > 0 && (rule.backendRefs as Obj[]).length === 0) {
      // Every backend was left out: the rule must answer 500, not fall back to the parent
      // (what an empty list means in GAMMA). A zero weight is "no backend" to the route table.
      rule.backendRefs = [{ name: String(presentParents[0]!.name), weight: 0 }];
    }
    if (isObj(r.timeouts)) rule.timeouts = pick(r.timeouts, ['request', 'backendRequest']);
    if (isObj(r.retry)) rule.retry = pick(r.retry, ['attempts', 'codes', 'backoff']);
    rules.push(rule);
  });
  if (unsupported.length) return { raw: undefined, refused: { reason: 'UnsupportedValue', problems: unsupported }, refs };
  return { raw: { name, namespace: ns, kind, parentRefs: presentParents, rules }, refs };
}
