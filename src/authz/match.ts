/**
 * Istio string matching and request-path normalization for authorization policies.
 *
 * A policy value is one of four forms (Istio's `StringMatch` shorthand):
 * - exact `abc`
 * - prefix `abc*` (matches `abc` itself too)
 * - suffix `*abc` (matches `abc` itself too)
 * - presence `*` (any non-empty value)
 *
 * A `*` anywhere else (`a*c`, `*abc*`, `**`) is refused by {@link validatePattern}. Patterns are
 * compiled once into a closure; exact values go into a `Set` so a long list costs one lookup.
 */

/** A compiled list of patterns: true when the value matches any of them. */
export type StringMatcher = (value: string) => boolean;

export interface MatchOptions {
  /** Compare case-insensitively (hosts). Default false. */
  ignoreCase?: boolean;
}

/**
 * Checks one pattern. Returns a message for the first problem, or undefined when it is valid.
 */
export function validatePattern(p: unknown): string | undefined {
  if (typeof p !== 'string') return 'must be a string';
  if (p.length === 0) return 'must not be empty';
  if (p === '*') return undefined;
  const first = p.indexOf('*');
  if (first === -1) return undefined;
  const last = p.lastIndexOf('*');
  if (first !== last) return "'*' may appear only once (only a leading or a trailing '*' is supported)";
  if (first !== 0 && first !== p.length - 1) return "'*' may only lead or trail";
  return undefined;
}

/**
 * Compiles a list of patterns into one matcher (OR). The patterns must be valid
 * ({@link validatePattern}); an invalid one throws.
 */
export function compilePatterns(patterns: readonly string[], opts: MatchOptions = {}): StringMatcher {
  const fold = opts.ignoreCase === true;
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  let presence = false;
  for (const raw of patterns) {
    const problem = validatePattern(raw);
    if (problem !== undefined) throw new Error(`invalid pattern '${raw}': ${problem}`);
    const p = fold ? raw.toLowerCase() : raw;
    if (p === '*') presence = true;
    else if (p.endsWith('*')) prefixes.push(p.slice(0, -1));
    else if (p.startsWith('*')) suffixes.push(p.slice(1));
    else exact.add(p);
  }
  if (presence) return (v) => v.length > 0;
  if (prefixes.length === 0 && suffixes.length === 0) {
    if (exact.size === 1) {
      const only = exact.values().next().value as string;
      return fold ? (v) => v.toLowerCase() === only : (v) => v === only;
    }
    return fold ? (v) => exact.has(v.toLowerCase()) : (v) => exact.has(v);
  }
  return (value) => {
    const v = fold ? value.toLowerCase() : value;
    if (exact.has(v)) return true;
    for (const p of prefixes) if (v.startsWith(p)) return true;
    for (const s of suffixes) if (v.endsWith(s)) return true;
    return false;
  };
}

/**
 * Host matching as Istio does it: case-insensitive; a pattern without a port matches the
 * request's host with any port (or none), and a trailing dot on the request's host is ignored.
 * A pattern with a port (`api.shop:8080`) is compared with the full `host:port`.
 */
export function compileHostPatterns(patterns: readonly string[]): StringMatcher {
  const withPort = patterns.filter((p) => hasPort(p));
  const withoutPort = patterns.filter((p) => !hasPort(p));
  const full = withPort.length > 0 ? compilePatterns(withPort, { ignoreCase: true }) : undefined;
  const bare = withoutPort.length > 0 ? compilePatterns(withoutPort, { ignoreCase: true }) : undefined;
  return (host) => {
    if (host.length === 0) return false;
    if (full !== undefined && full(host)) return true;
    if (bare !== undefined) {
      let h = stripPort(host);
      if (h.endsWith('.')) h = h.slice(0, -1);
      if (h.length > 0 && bare(h)) return true;
    }
    return false;
  };
}

function hasPort(host: string): boolean {
  if (host.startsWith('[')) return /\]:\d+$/.test(host);
  const colon = host.indexOf(':');
  return colon !== -1 && colon === host.lastIndexOf(':') && /:\d+$/.test(host);
}

/** `a.b:80` -> `a.b`; `[::1]:80` -> `[::1]`; a bare IPv6 literal is left alone. */
export function stripPort(host: string): string {
  if (host.startsWith('[')) {
    const close = host.indexOf(']');
    return close === -1 ? host : host.slice(0, close + 1);
  }
  const colon = host.indexOf(':');
  if (colon === -1 || colon !== host.lastIndexOf(':')) return host;
  return host.slice(0, colon);
}

/**
 * Request paths are normalized once, where the proxy reads the request head (see
 * proxy/l7/normalize.ts: dot segments, unreserved escapes, merged slashes, `;` parameters),
 * and forwarded in that form; policies match the same form.
 */
export { normalizePath } from '../proxy/l7/normalize.js';
