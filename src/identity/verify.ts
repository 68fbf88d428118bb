/**
 * Peer identity checks for the tunnel: after a TLS handshake that verified the peer's chain
 * against the mesh root, the peer's identity is the single SPIFFE URI SAN of its certificate.
 */
import type { TLSSocket } from 'node:tls';
import { WeftError } from '../errors.js';
import { idOfPrincipal, isSpiffeId } from './spiffe.js';

const cache = new WeakMap<TLSSocket, string | undefined>();

/**
 * The SPIFFE ID of the peer of a TLS socket, or undefined when the peer's certificate was
 * not verified (`socket.authorized` false), is missing, or does not carry exactly one valid
 * SPIFFE URI SAN (X.509-SVID rule).
 *
 * Node sets `authorized` on client sockets and on sockets a `tls.Server` accepted (with
 * `requestCert: true`); a bare `new tls.TLSSocket(raw, { isServer: true })` never sets it, so
 * serve the tunnel with a `tls.Server` (e.g. `SNICallback` answering `tlsContextFor`), or
 * hand raw sockets to one with `server.emit('connection', raw)`.
 */
export function peerSpiffeId(socket: TLSSocket): string | undefined {
  if (!socket.authorized) return undefined;
  if (cache.has(socket)) return cache.get(socket);
  // getPeerCertificate(), not getPeerX509Certificate(): on Node 20 a client socket answers
  // the latter only once (later calls, and getPeerCertificate, then return nothing).
  const cert = socket.getPeerCertificate();
  if (!cert || !cert.raw) return undefined;
  const ids = uriSans(cert.subjectaltname).filter((u) => u.startsWith('spiffe://'));
  const id = ids.length === 1 && isSpiffeId(ids[0]!) ? ids[0] : undefined;
  cache.set(socket, id);
  return id;
}

/**
 * The verified SPIFFE ID of the peer; throws a WeftError (WEFT_ERR_UNAUTHENTICATED) when
 * the peer is not authenticated, or (WEFT_ERR_DENIED) when `expected` (a SPIFFE ID, or a
 * principal without `spiffe://`) is given and the peer is someone else.
 */
export function verifyPeer(socket: TLSSocket, expected?: string): string {
  if (!socket.authorized) {
    const why = socket.authorizationError ? String(socket.authorizationError) : 'no client certificate';
    throw new WeftError('WEFT_ERR_UNAUTHENTICATED', `peer not authenticated: ${why}`);
  }
  const id = peerSpiffeId(socket);
  if (!id) throw new WeftError('WEFT_ERR_UNAUTHENTICATED', 'peer certificate carries no valid SPIFFE ID');
  if (expected !== undefined && id !== idOfPrincipal(expected)) {
    throw new WeftError('WEFT_ERR_DENIED', `peer is ${id}, expected ${idOfPrincipal(expected)}`);
  }
  return id;
}

/** URI entries of a certificate's SAN as Node formats it (`X509Certificate.subjectAltName`). */
export function uriSans(subjectAltName: string | undefined): string[] {
  return parseSubjectAltName(subjectAltName)
    .filter((e) => e.type === 'URI')
    .map((e) => e.value);
}

/**
 * Parses Node's `subjectAltName` string: `TYPE:value` entries joined by ", ". Node quotes a
 * value as a JSON string when it holds a character that could be confused with the
 * separators, so quoted values are decoded rather than split: a name cannot smuggle in a
 * second entry.
 */
export function parseSubjectAltName(s: string | undefined): Array<{ type: string; value: string }> {
  const out: Array<{ type: string; value: string }> = [];
  if (!s) return out;
  let i = 0;
  while (i < s.length) {
    const colon = s.indexOf(':', i);
    if (colon < 0) break;
    const type = s.slice(i, colon);
    let j = colon + 1;
    let value: string;
    if (s[j] === '"') {
      let k = j + 1;
      while (k < s.length && s[k] !== '"') k += s[k] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(s.slice(j, k + 1)) as string;
      } catch {
        return out;
      }
      j = k + 1;
    } else {
      const end = s.indexOf(', ', j);
      value = s.slice(j, end < 0 ? s.length : end);
      j = end < 0 ? s.length : end;
    }
    out.push({ type, value });
    if (s.startsWith(', ', j)) j += 2;
    i = j;
  }
  return out;
}
