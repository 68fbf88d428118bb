/**
 * Route matching, without sockets: one compiled match per `matches[]` entry of a rule
 * (Gateway API HTTPRouteMatch / GRPCRouteMatch). Regular expressions are compiled once, when
 * the route table is built, and match the WHOLE value (path, header, query value, gRPC
 * service or method), as Envoy's safe_regex does.
 */
import type { RouteKind, RouteMatch, RouteValueMatch } from '../../../config/types.js';

/** What matching reads of a request. Header names are lower-case. */
export interface RouteRequest {
  method: string;
  /** The request target's path, without the query. */
  path: string;
  /** The raw query (after `?`, without it), or undefined. */
  query: string | undefined;
  /** A header's value (repeated headers joined with `,`), or undefined. */
  header(name: string): string | undefined;
}

/** Split a request target into path and query (a fragment is refused earlier, by the parser's caller). */
export function splitTarget(target: string): { path: string; query: string | undefined } {
  const q = target.indexOf('?');
  return q < 0 ? { path: target, query: undefined } : { path: target.slice(0, q), query: target.slice(q + 1) };
}

/** A header list ([name, value, ...]) as RouteRequest.header reads it. */
export function headerReader(flat: readonly string[]): (name: string) => string | undefined {
  return (name) => {
    let v: string | undefined;
    for (let i = 0; i < flat.length; i += 2) {
      const n = flat[i]!;
      if (n.length === name.length && n.toLowerCase() === name) v = v === undefined ? flat[i + 1]! : `${v},${flat[i + 1]!}`;
    }
    return v;
  };
}

type ValueTest = (v: string) => boolean;

function anchored(source: string): RegExp {
  return new RegExp(`^(?:${source})$`);
}

function valueTest(m: { type: string; value: string }): ValueTest {
  if (m.type === 'RegularExpression') {
    const re = anchored(m.value);
    return (v) => re.test(v);
  }
  const want = m.value;
  return (v) => v === want;
}

/**
 * The prefix as PathPrefix matches it: element-wise, a trailing `/` ignored (Gateway API:
 * `/abc` matches `/abc`, `/abc/` and `/abc/def`, not `/abcd`). `/` matches every path.
 */
export function normalizePrefix(value: string): string {
  return value === '/' ? '/' : value.replace(/\/+$/, '') || '/';
}

export function prefixMatches(prefix: string, path: string): boolean {
  if (prefix === '/') return true;
  return path === prefix || (path.startsWith(prefix) && path.charCodeAt(prefix.length) === 0x2f) /* / */;
}

export interface CompiledMatch {
  /** The configured match (for the config dump and precedence). */
  readonly spec: RouteMatch;
  /** PathPrefix matches: the normalized prefix (what ReplacePrefixMatch replaces). */
  readonly prefix: string | undefined;
  test(req: RouteRequest): boolean;
}

/** A rule without `matches` matches every request: Gateway API's default PathPrefix `/`. */
export const MATCH_ALL: RouteMatch = { headers: [], queryParams: [] };

export function compileMatch(spec: RouteMatch, kind: RouteKind): CompiledMatch {
  const tests: ((req: RouteRequest) => boolean)[] = [];
  let prefix: string | undefined;
  if (kind === 'GRPCRoute') {
    const g = spec.grpc;
    if (g !== undefined) {
      const svc = g.service === undefined ? undefined : valueTest({ type: g.type, value: g.service });
      const mth = g.method === undefined ? undefined : valueTest({ type: g.type, value: g.method });
      tests.push((req) => {
        // A gRPC call's path is /package.Service/Method.
        const p = req.path;
        const slash = p.indexOf('/', 1);
        if (p.charCodeAt(0) !== 0x2f || slash < 0) return false;
        if (svc !== undefined && !svc(p.slice(1, slash))) return false;
        return mth === undefined || mth(p.slice(slash + 1));
      });
    }
  } else {
    const path = spec.path ?? { type: 'PathPrefix' as const, value: '/' };
    if (path.type === 'Exact') {
      const want = path.value;
      tests.push((req) => req.path === want);
    } else if (path.type === 'PathPrefix') {
      const pre = (prefix = normalizePrefix(path.value));
      if (pre !== '/') tests.push((req) => prefixMatches(pre, req.path));
    } else {
      const re = anchored(path.value);
      tests.push((req) => re.test(req.path));
    }
    if (spec.method !== undefined) {
      const want = spec.method;
      tests.push((req) => req.method === want);
    }
  }
  for (const h of spec.headers) tests.push(headerTest(h));
  if (spec.queryParams.length) {
    const params = spec.queryParams.map((q) => ({ name: q.name, test: valueTest(q) }));
    tests.push((req) => {
      if (req.query === undefined) return false;
      const sp = new URLSearchParams(req.query);
      // Gateway API recommends the first value of a repeated parameter.
      for (const q of params) {
        const v = sp.get(q.name);
        if (v === null || !q.test(v)) return false;
      }
      return true;
    });
  }
  return {
    spec,
    prefix,
    test(req) {
      for (let i = 0; i < tests.length; i++) if (!tests[i]!(req)) return false;
      return true;
    },
  };
}

function headerTest(h: RouteValueMatch): (req: RouteRequest) => boolean {
  const name = h.name.toLowerCase();
  const test = valueTest(h);
  return (req) => {
    const v = req.header(name);
    return v !== undefined && test(v);
  };
}
