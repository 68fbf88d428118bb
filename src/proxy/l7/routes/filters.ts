/**
 * What a rule's filters do to a request or an answer, as pure functions of header lists
 * ([name, value, ...], as the HTTP/1 parser gives them) and paths. Header names compare
 * case-insensitively; the names written by a filter keep the case the route gave them.
 */
import type { HeaderModifier, PathModifier, RouteFilter } from '../../../config/types.js';
import { normalizePrefix } from './match.js';

/**
 * Gateway API's HTTPHeaderFilter, in its order: remove, then set (replaces every value of
 * the name), then add (one more line; a recipient joins repeated lines with `,`).
 */
export function modifyHeaders(flat: readonly string[], mod: HeaderModifier): string[] {
  const drop = new Set<string>();
  for (const n of mod.remove) drop.add(n.toLowerCase());
  for (const h of mod.set) drop.add(h.name.toLowerCase());
  const out: string[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    if (!drop.has(flat[i]!.toLowerCase())) out.push(flat[i]!, flat[i + 1]!);
  }
  for (const h of mod.set) out.push(h.name, h.value);
  for (const h of mod.add) out.push(h.name, h.value);
  return out;
}

/**
 * The new path of a rewrite or redirect. ReplacePrefixMatch replaces the matched prefix
 * element-wise: prefix /foo with /xyz makes /foo/bar -> /xyz/bar and /foo -> /xyz; with /
 * it makes /foo/bar -> /bar and /foo -> /.
 */
export function replacePath(path: string, mod: PathModifier, matchedPrefix: string | undefined): string {
  if (mod.type === 'ReplaceFullPath') return mod.replaceFullPath;
  const prefix = normalizePrefix(matchedPrefix ?? '/');
  const rest = prefix === '/' ? (path === '/' ? '' : path) : path.slice(prefix.length);
  const replacement = mod.replacePrefixMatch.replace(/\/+$/, '');
  const out = replacement + rest;
  return out === '' ? '/' : out.startsWith('/') ? out : `/${out}`;
}

/** A request target from a path and a query. */
export function joinTarget(path: string, query: string | undefined): string {
  return query === undefined ? path : `${path}?${query}`;
}

const DEFAULT_PORTS: Record<string, number> = { http: 80, https: 443 };

/** The request's Host header split into name and port. */
export function splitHost(host: string): { name: string; port: number | undefined } {
  const m = /^(.*?)(?::(\d+))?$/.exec(host)!;
  return { name: m[1]!, port: m[2] === undefined ? undefined : Number(m[2]) };
}

/**
 * The Location of a RequestRedirect (Gateway API HTTPRequestRedirectFilter): every part not
 * set by the filter comes from the request. The port is the filter's, else the request's
 * (unless the scheme changed: then the scheme's well-known one); a well-known port of the
 * scheme is left out. The query is kept.
 */
export function redirectLocation(
  req: { scheme: 'http' | 'https'; host: string; path: string; query: string | undefined },
  redirect: Extract<RouteFilter, { type: 'RequestRedirect' }>['requestRedirect'],
  matchedPrefix: string | undefined,
): string {
  const scheme = redirect.scheme ?? req.scheme;
  const fromReq = splitHost(req.host);
  const hostname = redirect.hostname ?? fromReq.name;
  let port = redirect.port;
  if (port === undefined && redirect.scheme === undefined) port = fromReq.port;
  const portPart = port === undefined || port === DEFAULT_PORTS[scheme] ? '' : `:${port}`;
  const path = redirect.path ? replacePath(req.path, redirect.path, matchedPrefix) : req.path;
  return `${scheme}://${hostname}${portPart}${joinTarget(path, req.query)}`;
}

/** modifyHeaders for a header object with lower-case names (node:http2's shape). */
export function modifyHeaderObject<T extends Record<string, unknown>>(obj: T, mod: HeaderModifier): T {
  const out: Record<string, unknown> = { ...obj };
  for (const n of mod.remove) delete out[n.toLowerCase()];
  for (const h of mod.set) out[h.name.toLowerCase()] = h.value;
  for (const h of mod.add) {
    const k = h.name.toLowerCase();
    const prev = out[k];
    out[k] = prev === undefined ? h.value : Array.isArray(prev) ? [...(prev as unknown[]), h.value] : [String(prev), h.value];
  }
  return out as T;
}

/** modifyHeaders for header lines (`name: value\r\n` each), the HTTP/1 forwarder's shape. */
export function modifyHeaderLines(lines: string, mod: HeaderModifier): string {
  const flat: string[] = [];
  for (const line of lines.split('\r\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    flat.push(line.slice(0, i), line.slice(i + 1).trim());
  }
  let out = '';
  const edited = modifyHeaders(flat, mod);
  for (let i = 0; i < edited.length; i += 2) out += `${edited[i]!}: ${edited[i + 1]!}\r\n`;
  return out;
}
