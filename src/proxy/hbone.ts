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
 * - `baggage` (W3C Baggage, as ztunnel sends it) describes the source workload for the
 *   destination's telemetry: `k8s.namespace.name`, `k8s.workload.name` (the metric label
 *   `source_workload`), `service.name` (`source_canonical_service`) and `k8s.pod.name` (the
 *   access log's `src_workload`). The destination uses it only for metric labels and
 *   access-log fields, only when its namespace is the verified identity's and every value is
 *   a bounded name (parseSourceBaggage), and never for authorization, which takes the
 *   certificate's identity alone. A destination that knows the source pod itself (its address
 *   in `forwarded`, running as the verified identity) keeps what it knows.
 *
 * Status codes of a CONNECT answer: 200 connected; 400 malformed; 403 denied by
 * authorization; 404 not a local meshed pod; 405 not a CONNECT; 421 the target does not run
 * as the identity of the session; 503 the pod did not accept the connection.
 */
import type { ServerHttp2Stream } from 'node:http2';
import { constants as h2 } from 'node:http2';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { DescribedSource } from '../telemetry/labels.js';

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
 * The CONNECT header that describes the source workload (W3C Baggage, the header ztunnel
 * sends its workload's metadata in), for the destination's metrics and access log only.
 */
export const SOURCE_BAGGAGE_HEADER = 'baggage';

/** Longest `baggage` value the destination reads; a longer one is ignored whole. */
export const MAX_BAGGAGE_LENGTH = 1024;
/** Baggage keys, with OpenTelemetry's names where there is one (ztunnel's too). */
const BAGGAGE_KEYS = { namespace: 'k8s.namespace.name', workload: 'k8s.workload.name', canonicalService: 'service.name', pod: 'k8s.pod.name' } as const;
const BY_KEY = new Map<string, keyof typeof BAGGAGE_KEYS>(Object.entries(BAGGAGE_KEYS).map(([field, key]) => [key, field as keyof typeof BAGGAGE_KEYS]));
/** A namespace: a DNS label. */
const NAMESPACE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** A workload, pod or canonical service: a DNS subdomain or a label value (letters, digits, `-_.`), at most 253 characters. */
const NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$/;

/**
 * The `baggage` value describing a source (only the values that are valid names go out, so
 * the peer never has to refuse one of ours for its charset), or undefined when the namespace
 * or the workload is not one.
 */
export function sourceBaggage(src: DescribedSource): string | undefined {
  if (!NAMESPACE.test(src.namespace) || !NAME.test(src.workload)) return undefined;
  let v = `${BAGGAGE_KEYS.namespace}=${src.namespace},${BAGGAGE_KEYS.workload}=${src.workload}`;
  if (NAME.test(src.canonicalService)) v += `,${BAGGAGE_KEYS.canonicalService}=${src.canonicalService}`;
  if (src.pod !== undefined && NAME.test(src.pod)) v += `,${BAGGAGE_KEYS.pod}=${src.pod}`;
  return v;
}

/**
 * The source a `baggage` value describes, or why it describes none (the reason is for a debug
 * line). Members with other keys are skipped (W3C Baggage is shared by many producers); a
 * member's properties (`;...`) are ignored. Rejected whole: longer than
 * {@link MAX_BAGGAGE_LENGTH}, a known key twice, a value that is not a bounded name, no
 * namespace or no workload. The caller still checks the namespace against the verified peer.
 */
export function parseSourceBaggage(value: string | string[] | undefined): DescribedSource | string {
  // Several baggage headers are one list (RFC 9110 field lines).
  const v = Array.isArray(value) ? value.join(',') : value;
  if (v === undefined || v === '') return 'no baggage';
  if (v.length > MAX_BAGGAGE_LENGTH) return `baggage longer than ${MAX_BAGGAGE_LENGTH} characters`;
  const got: Partial<Record<keyof typeof BAGGAGE_KEYS, string>> = {};
  for (const member of v.split(',')) {
    const semi = member.indexOf(';');
    const pair = semi < 0 ? member : member.slice(0, semi);
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    const field = BY_KEY.get(pair.slice(0, eq).trim());
    if (field === undefined) continue;
    const val = pair.slice(eq + 1).trim();
    if (got[field] !== undefined) return `baggage names ${BAGGAGE_KEYS[field]} twice`;
    if (!(field === 'namespace' ? NAMESPACE : NAME).test(val)) return `baggage ${BAGGAGE_KEYS[field]} is not a name`;
    got[field] = val;
  }
  if (got.namespace === undefined || got.workload === undefined) return 'baggage without a namespace and a workload';
  const out: DescribedSource = { namespace: got.namespace, workload: got.workload, canonicalService: got.canonicalService ?? got.workload };
  if (got.pod !== undefined) out.pod = got.pod;
  return out;
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
