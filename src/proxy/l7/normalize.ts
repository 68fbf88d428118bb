/**
 * The request target and Host as the mesh authorizes and forwards them, worked out once per
 * request head, before authorization, whatever protocol carried it. What policy matched is
 * what the upstream receives: the path is forwarded in its normalized form, an absolute-form
 * target becomes origin-form with its authority as Host, and a head that two readers could
 * take two ways (two Hosts, a Host that disagrees with the target, a fragment) is refused.
 */

/** A request head after normalization, or why it is refused (answered 400 `bad_request`). */
export type NormalizedTarget = { ok: true; url: string; host: string | undefined } | { ok: false; reason: string };

const ABSOLUTE_FORM = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?]*)(.*)$/;
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;
/** A path that needs no rebuilding: no dot segments, no empty segments, no escapes, no `;`. */
const CLEAN_PATH = /^(?:\/[A-Za-z0-9\-_~!$&'()*+,=:@]+(?:\.[A-Za-z0-9\-_~!$&'()*+,=:@]+)*)*\/?$/;

/**
 * Normalizes a request head's target and Host, in place on `headers` (a flat
 * [name, value, ...] array): an absolute-form target's authority replaces (or becomes) the
 * Host header. Refused: a fragment (`#`) in the target; two Host headers; a Host with a
 * comma; a Host that differs from the absolute-form target's authority; an absolute-form
 * target with userinfo or no authority, or a scheme other than http/https.
 *
 * CONNECT (authority-form) and `OPTIONS *` targets are left alone. The path is normalized
 * by {@link normalizePath}; one that cannot be normalized safely (an encoded `/` or `\`, a
 * malformed escape) is passed on as received and refused by authorization wherever a policy
 * matches on paths. The query is passed on as received.
 */
export function normalizeRequestTarget(method: string, target: string, headers: string[]): NormalizedTarget {
  if (target.includes('#')) return { ok: false, reason: 'a fragment (#) in the request target' };
  let hostAt = -1;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (hostAt !== -1) return { ok: false, reason: 'two Host headers' };
      hostAt = i + 1;
    }
  }
  let host = hostAt === -1 ? undefined : headers[hostAt]!;
  if (host !== undefined && host.includes(',')) return { ok: false, reason: 'a Host header with more than one value' };
  if (method === 'CONNECT' || target === '*') return { ok: true, url: target, host };
  let url = target;
  const abs = ABSOLUTE_FORM.exec(target);
  if (abs !== null) {
    const scheme = abs[1]!.toLowerCase();
    const authority = abs[2]!;
    if (scheme !== 'http' && scheme !== 'https') return { ok: false, reason: `an absolute-form target with scheme ${scheme}` };
    if (authority === '') return { ok: false, reason: 'an absolute-form target without an authority' };
    if (authority.includes('@')) return { ok: false, reason: 'userinfo in the request target' };
    if (host !== undefined && host.toLowerCase() !== authority.toLowerCase()) {
      return { ok: false, reason: `Host ${host} differs from the target's authority ${authority}` };
    }
    if (hostAt === -1) headers.push('Host', authority);
    else headers[hostAt] = authority;
    host = authority;
    url = abs[3]!;
    if (url === '' || url[0] === '?') url = `/${url}`;
  }
  if (url[0] !== '/') return { ok: false, reason: 'a request target that is not an absolute path' };
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  const norm = normalizePath(path);
  if (norm !== undefined && norm !== path) url = q === -1 ? norm : norm + url.slice(q);
  return { ok: true, url, host };
}

/**
 * Normalizes a request path (the part before `?`; a query or fragment is cut off here too,
 * for callers that pass a whole target). Returns undefined for a path that cannot be
 * normalized safely; authorization then refuses the request wherever a policy selecting the
 * workload has a path condition.
 *
 * Steps (Envoy's `normalize_path` and Istio's `MERGE_SLASHES`, plus `;` handling):
 * 1. Refuse anything that does not start with `/`.
 * 2. Refuse control characters, spaces, and a raw backslash (some servers treat `\` as `/`).
 * 3. Percent-decoding: `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded
 *    (`/%61dmin` is `/admin`, `%2e%2e` is `..`); an encoded slash or backslash (`%2F`, `%5C`)
 *    or control byte (`%00`..`%1F`, `%7F`) is refused, because backends disagree on whether it
 *    separates segments; any other escape is kept, with its hex digits upper-cased; a
 *    malformed escape (`%zz`, `%4`) is refused.
 * 4. Path parameters: everything from a raw `;` to the end of its segment is removed
 *    (`/admin;jsessionid=1` is `/admin`, `/..;x/` is `/../`). Servlet containers (Tomcat,
 *    Jetty) route on the segment without its parameters and take `..;` for `..`; others take
 *    `;` as a plain character. Removing the parameters from the forwarded path makes every
 *    backend see exactly the path that was authorized. An encoded `%3B` is data, not a
 *    delimiter, and is kept.
 * 5. Merge repeated slashes (`//admin` is `/admin`) and resolve `.` and `..` segments
 *    (`/items/../admin` is `/admin`; `..` above the root stays at the root). A trailing
 *    slash, or a final `.`/`..` segment, leaves a trailing slash (RFC 3986 5.2.4).
 *
 * The result is a fixed point: normalizing it again gives it back.
 */
export function normalizePath(raw: string): string | undefined {
  let end = raw.length;
  const q = raw.indexOf('?');
  if (q !== -1) end = q;
  const h = raw.indexOf('#');
  if (h !== -1 && h < end) end = h;
  const path = end === raw.length ? raw : raw.slice(0, end);
  if (path.charCodeAt(0) !== 0x2f /* / */) return undefined;

  // Fast path: the common, already-clean path needs no rebuilding.
  if (CLEAN_PATH.test(path)) return path;

  let decoded = '';
  let inParams = false;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c <= 0x20 || c === 0x7f || c === 0x5c /* \ */) return undefined;
    if (c === 0x2f /* / */) {
      inParams = false;
      decoded += '/';
      continue;
    }
    if (c === 0x3b /* ; */) {
      inParams = true;
      continue;
    }
    if (c !== 0x25 /* % */) {
      if (!inParams) decoded += path[i];
      continue;
    }
    const hex = path.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return undefined;
    const byte = parseInt(hex, 16);
    if (byte < 0x20 || byte === 0x7f || byte === 0x2f || byte === 0x5c) return undefined;
    i += 2;
    if (inParams) continue;
    const ch = String.fromCharCode(byte);
    decoded += UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
  }

  const out: string[] = [];
  const segments = decoded.split('/');
  // segments[0] is '' (the leading slash).
  let trailing = false;
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '' || seg === '.') {
      // A merged slash or a `.`; only at the end does it leave a trailing slash.
      if (last) trailing = true;
      continue;
    }
    if (seg === '..') {
      out.pop();
      if (last) trailing = true;
      continue;
    }
    out.push(seg);
  }
  if (out.length === 0) return '/';
  return `/${out.join('/')}${trailing ? '/' : ''}`;
}
