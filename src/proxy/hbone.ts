/**
 * The tunnel between agents (HBONE-style, as Istio ambient's ztunnel): HTTP/2 over mutual
 * TLS 1.3 on the tunnel port (15008), one CONNECT stream per proxied connection.
 *
 * - The client (the source's agent) presents the certificate of the SOURCE workload's
 *   identity; the server takes the caller's identity from that certificate only (its single
 *   SPIFFE URI SAN, chained to the mesh root), never from a header.
 * - The client asks, by SNI, for the DESTINATION workload's identity: `<sa>.<ns>.weft`
 *   (a namespace is a DNS label, so the last label before `.weft` is the namespace and the
 *   rest the service account). The server presents that identity's certificate and the
 *   client checks that its URI SAN is exactly `spiffe://<td>/ns/<ns>/sa/<sa>`: a node cannot
 *   answer for a workload it does not run, since the CA signs only its own workloads.
 * - When the client does not know the destination's service account (Kubernetes: a remote
 *   endpoint, learnt from an EndpointSlice, which carries no service account), it asks by SNI
 *   for the POD instead: `<ip with dashes>.<ns>.weft-pod`. The server presents the
 *   certificate of the identity that local meshed pod runs as, and the client checks that the
 *   URI SAN is `spiffe://<td>/ns/<ns>/sa/<any>`: the namespace is pinned, the service account
 *   is learnt from the peer (it is what logs and the session key then use).
 * - `:authority` of the CONNECT is the target pod `ip:port`; the server accepts it only for a
 *   local meshed pod that runs as the identity the SNI named (else 421).
 * - `forwarded: for=<ip>` may carry the source pod's address. It is a hint for logs and
 *   metrics, used only when the pod with that address runs as the verified identity.
 *
 * Status codes of a CONNECT answer: 200 connected; 400 malformed; 403 denied by
 * authorization; 404 not a local meshed pod; 405 not a CONNECT; 421 the target does not run
 * as the identity of the session; 503 the pod did not accept the connection.
 */
import type { ServerHttp2Stream } from 'node:http2';
import { constants as h2 } from 'node:http2';
import type net from 'node:net';
import type { Duplex } from 'node:stream';

/** ALPN of the tunnel. */
export const HBONE_ALPN = 'h2';
/** SNI suffix of tunnel server names. */
export const SNI_SUFFIX = '.weft';

/**
 * HTTP/2 flow-control windows. Node's default (64 KiB per stream and per session) caps a
 * stream at 64 KiB per round trip; 4 MiB per stream and 16 MiB per session keep a bulk
 * transfer moving while leaving room for the session's other streams.
 */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const SESSION_WINDOW = 16 * 1024 * 1024;
/**
 * Largest DATA frame a peer may send us (HTTP/2 default 16 KiB): bigger frames mean fewer
 * frame headers and fewer trips through nghttp2 for a bulk transfer.
 */
export const MAX_FRAME_SIZE = 256 * 1024;
/** Concurrent CONNECT streams per session. */
export const MAX_CONCURRENT_STREAMS = 10_000;

/** The SNI that asks for the certificate of `namespace/serviceAccount`. */
export function serverNameFor(namespace: string, serviceAccount: string): string {
  return `${serviceAccount}.${namespace}${SNI_SUFFIX}`;
}

/** The identity a tunnel SNI names, or undefined when it is not one. */
export function identityOfServerName(name: string | undefined | null | false): { namespace: string; serviceAccount: string } | undefined {
  if (!name || !name.endsWith(SNI_SUFFIX)) return undefined;
  const rest = name.slice(0, -SNI_SUFFIX.length);
  const dot = rest.lastIndexOf('.');
  if (dot <= 0 || dot === rest.length - 1) return undefined;
  return { namespace: rest.slice(dot + 1), serviceAccount: rest.slice(0, dot) };
}

/** SNI suffix of tunnel server names that ask for a pod (by address) rather than an identity. */
export const POD_SNI_SUFFIX = '.weft-pod';

/** The SNI that asks for the certificate of whatever identity the pod `ip` of `namespace` runs as. */
export function serverNameForPod(namespace: string, ip: string): string {
  return `${ip.replace(/\./g, '-')}.${namespace}${POD_SNI_SUFFIX}`;
}

/** The pod a pod-form tunnel SNI names, or undefined when it is not one. */
export function podOfServerName(name: string | undefined | null | false): { namespace: string; ip: string } | undefined {
  const m = name ? /^(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.weft-pod$/.exec(name) : null;
  if (!m || [m[1], m[2], m[3], m[4]].some((o) => Number(o) > 255)) return undefined;
  return { namespace: m[5]!, ip: `${m[1]}.${m[2]}.${m[3]}.${m[4]}` };
}

/** `ip:port` of a CONNECT authority (IPv4), or undefined. */
export function parseAuthority(authority: string | undefined): { ip: string; port: number } | undefined {
  const m = authority ? /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(authority) : null;
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535 || m[1]!.split('.').some((o) => Number(o) > 255)) return undefined;
  return { ip: m[1]!, port };
}

/** The `for=` address of a `forwarded` header (RFC 7239), IPv4 only. */
export function forwardedFor(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  const m = v ? /(?:^|[;,\s])for="?(\d{1,3}(?:\.\d{1,3}){3})"?/i.exec(v) : null;
  return m?.[1];
}

/**
 * Node 20 corrupts latin1 strings written to an HTTP/2 stream (the bytes go out after the
 * string's memory is reused: node:http writes response heads, and undici request heads, that
 * way). Having the Writable turn every string into a Buffer first avoids that path.
 */
export function buffersOnly<T extends Duplex>(stream: T): T {
  (stream as unknown as { _writableState: { decodeStrings: boolean } })._writableState.decodeStrings = true;
  return stream;
}

/**
 * Makes an inbound CONNECT stream usable where the proxy expects a downstream socket
 * (`proxyTcp`, `HttpProxy.accept`): the few net.Socket members they use, on the stream
 * itself (no extra copy of the bytes). `onReset` runs for `resetAndDestroy()`: before the
 * CONNECT was answered it answers with an error status, after that it resets the stream.
 */
export function streamAsSocket(stream: ServerHttp2Stream, peer: { ip: string; port?: number }, onReset: () => void): net.Socket {
  const s = buffersOnly(stream) as unknown as net.Socket & Record<string, unknown>;
  Object.defineProperty(s, 'remoteAddress', { value: peer.ip, configurable: true });
  Object.defineProperty(s, 'remotePort', { value: peer.port ?? 0, configurable: true });
  Object.defineProperty(s, 'remoteFamily', { value: 'IPv4', configurable: true });
  s.setNoDelay = (() => s) as never;
  s.setKeepAlive = (() => s) as never;
  s.ref = (() => s) as never;
  s.unref = (() => s) as never;
  s.resetAndDestroy = (() => {
    onReset();
    return s;
  }) as never;
  return s;
}

/** RST_STREAM code for a tunnelled connection that failed (RFC 9113 CONNECT_ERROR). */
export const CONNECT_ERROR = h2.NGHTTP2_CONNECT_ERROR;
