/**
 * The access log's one schema: every field an access line (`msg: "access"`) may carry, in the
 * order the agent writes them, with its type, when it is present, and the Envoy / ztunnel
 * name a log pipeline maps it from. docs/access-log.md documents it for users and
 * docs/access-log.schema.json (generated from ACCESS_LOG_FIELDS by
 * test/unit/access-log-schema.test.ts) is the JSON Schema every emitted line validates
 * against. Code that writes access lines takes field names from here (and a hand-built line
 * must keep this order and these names).
 *
 * Also here: the Envoy response flags a weft error kind maps to (RESPONSE_FLAGS), and the
 * Envoy-style upstream cluster name (upstreamCluster).
 */
import type { WeftErrorCode } from '../errors.js';

export type AccessFieldType = 'string' | 'integer' | 'number' | 'boolean';

/** Which access lines carry a field: HTTP requests (L7), TCP connections (L4), tunnel streams (HBONE). */
export type AccessLine = 'http' | 'tcp' | 'hbone';

export interface AccessField {
  name: string;
  type: AccessFieldType;
  /** Allowed values, when the set is closed. */
  enum?: readonly (string | number)[];
  /** The lines that may carry it. */
  lines: readonly AccessLine[];
  /** When it is present (absent fields are left out of the line, never written as null). */
  when: string;
  /** Envoy's access-log command operator (or header) carrying the same thing. */
  envoy?: string;
  /** ztunnel's access-log field carrying the same thing. */
  ztunnel?: string;
  description: string;
}

const ALL: readonly AccessLine[] = ['http', 'tcp', 'hbone'];
const HTTP: readonly AccessLine[] = ['http'];
const L4: readonly AccessLine[] = ['tcp'];
const HTTP_TCP: readonly AccessLine[] = ['http', 'tcp'];
const HBONE: readonly AccessLine[] = ['hbone'];

/** Every access-log field, in the order the agent writes them. */
export const ACCESS_LOG_FIELDS: readonly AccessField[] = [
  // pino's own fields.
  { name: 'level', type: 'integer', enum: [30, 40], lines: ALL, when: 'always', description: 'pino level: 30 (info); 40 (warn) for a TCP connection refused before any upstream was reached' },
  { name: 'time', type: 'string', lines: ALL, when: 'always', envoy: '%START_TIME%', description: 'when the line was written (the end of the request or connection), ISO 8601 UTC' },
  { name: 'pid', type: 'integer', lines: ALL, when: 'always', description: "the agent's process id" },
  { name: 'component', type: 'string', lines: ALL, when: 'always', description: 'the agent part that wrote the line (http, tcp, tunnel, socket-lb, ...)' },
  { name: 'entry', type: 'string', lines: ALL, when: 'when the part has more than one listener', description: 'which listener accepted the connection (outbound, tunnel, plaintext)' },
  // Who called what (peerFields, shared by L4 and L7).
  {
    name: 'direction',
    type: 'string',
    enum: ['outbound', 'inbound'],
    lines: ALL,
    when: 'always',
    ztunnel: 'direction',
    description: 'outbound: the calling pod is on this node; inbound: the call arrived through the tunnel (or plaintext, permissive mode) for a pod on this node',
  },
  {
    name: 'src_workload',
    type: 'string',
    lines: ALL,
    when: "when the calling pod is known: inbound through the tunnel, to this agent or as the caller's agent described it (the CONNECT's baggage, when consistent with the verified peer)",
    ztunnel: 'src.workload + src.namespace',
    description: 'the calling pod, namespace/name',
  },
  { name: 'src_ip', type: 'string', lines: HTTP_TCP, when: 'always', envoy: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%', ztunnel: 'src.addr (address part)', description: "the caller's address" },
  {
    name: 'principal',
    type: 'string',
    lines: HTTP_TCP,
    when: 'when mTLS carried the call (security mutual_tls)',
    envoy: '%DOWNSTREAM_PEER_URI_SAN% (without spiffe://)',
    ztunnel: 'src.identity (without spiffe://)',
    description:
      "the caller's SPIFFE identity as mTLS authenticated it, without the spiffe:// scheme (the form authorization policies match): on inbound the verified peer certificate's, on outbound the one this agent presented for the calling pod",
  },
  { name: 'src_principal', type: 'string', lines: HBONE, when: 'always', ztunnel: 'src.identity (without spiffe://)', description: 'the tunnel stream: the identity the client side presented' },
  {
    name: 'dst_principal',
    type: 'string',
    lines: HBONE,
    when: 'always',
    ztunnel: 'dst.identity (without spiffe://)',
    envoy: '%UPSTREAM_PEER_URI_SAN%',
    description: 'the tunnel stream: the identity of the destination pod',
  },
  { name: 'peer', type: 'string', lines: HBONE, when: 'outbound tunnel streams', description: "the peer agent's tunnel address host:port" },
  { name: 'peer_ip', type: 'string', lines: HBONE, when: 'inbound tunnel streams', description: "the peer agent's address" },
  {
    name: 'dst',
    type: 'string',
    lines: ALL,
    when: 'always',
    envoy: '%DOWNSTREAM_LOCAL_ADDRESS% (the original destination)',
    ztunnel: 'dst.addr',
    description: 'the address the caller dialed, ip:port (a Service VIP or a pod)',
  },
  {
    name: 'dst_service',
    type: 'string',
    lines: HTTP_TCP,
    when: 'when the destination resolved to a service or pod',
    ztunnel: 'dst.service',
    description: 'the service (namespace/name) whose cluster served the call',
  },
  {
    name: 'dst_workload',
    type: 'string',
    lines: ALL,
    when: 'when an endpoint was picked',
    ztunnel: 'dst.workload + dst.namespace',
    description: 'the workload of the endpoint that served the call, namespace/workload',
  },
  { name: 'endpoint', type: 'string', lines: HTTP_TCP, when: 'when an endpoint was picked', envoy: '%UPSTREAM_HOST%', description: 'the endpoint that served the call, ip:port' },
  {
    name: 'upstream_cluster',
    type: 'string',
    lines: HTTP_TCP,
    when: 'when the destination resolved to a service or pod',
    envoy: '%UPSTREAM_CLUSTER%',
    description: "Istio's cluster name: outbound|<port>||<service>.<namespace>.svc for a service, outbound|<port>||<pod ip> for a pod dialed directly, inbound|<port>|| on the receiving side",
  },
  {
    name: 'security',
    type: 'string',
    enum: ['mutual_tls', 'none'],
    lines: ALL,
    when: 'when an endpoint was picked (always on hbone)',
    envoy: '%CONNECTION_SECURITY_POLICY% (Istio metric label)',
    description: 'whether mTLS carried the call',
  },
  { name: 'app_protocol', type: 'string', lines: HBONE, when: 'inbound tunnel streams', description: "the destination port's protocol (http, http2, grpc, tcp)" },
  { name: 'protocol', type: 'string', enum: ['http/1.1', 'h2', 'tcp', 'hbone'], lines: ALL, when: 'always', envoy: '%PROTOCOL%', description: 'the protocol the caller spoke' },
  // HTTP requests.
  {
    name: 'request_id',
    type: 'string',
    lines: HTTP,
    when: 'always',
    envoy: '%REQ(X-REQUEST-ID)%',
    description: "the x-request-id header: the caller's, or one the agent generated (a UUID) and sent upstream, so both agents and the application log the same id",
  },
  { name: 'method', type: 'string', lines: HTTP, when: 'always', envoy: '%REQ(:METHOD)%', description: 'the request method' },
  {
    name: 'path',
    type: 'string',
    lines: HTTP,
    when: 'always',
    envoy: '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%',
    description: 'the request target as the caller sent it (for gRPC, /package.Service/Method)',
  },
  { name: 'host', type: 'string', lines: HTTP, when: 'when the request had a Host / :authority', envoy: '%REQ(:AUTHORITY)%', description: 'the Host header or :authority' },
  { name: 'status', type: 'integer', lines: HTTP, when: 'always', envoy: '%RESPONSE_CODE%', description: 'the HTTP status answered to the caller (0: no answer was sent, see response_flags)' },
  { name: 'grpc_status', type: 'integer', lines: HTTP, when: 'gRPC calls', envoy: '%GRPC_STATUS_NUMBER%', description: 'the grpc-status answered' },
  { name: 'attempts', type: 'integer', lines: HTTP, when: 'always', envoy: '%UPSTREAM_REQUEST_ATTEMPT_COUNT%', description: 'upstream attempts made (retries + 1; 0 when none was made)' },
  { name: 'route', type: 'string', lines: HTTP, when: 'on a service port with routes, when a route matched', envoy: '%ROUTE_NAME%', description: 'the route (namespace/name) that decided' },
  { name: 'rule', type: 'string', lines: HTTP, when: 'with route', description: "the route's rule that matched: its name, or its index" },
  // TCP connections.
  { name: 'policy', type: 'string', lines: L4, when: 'a connection denied by authorization', description: 'the policy (namespace/name) that denied it' },
  {
    name: 'sent_bytes',
    type: 'integer',
    lines: L4,
    when: 'connections that reached an upstream',
    envoy: '%BYTES_RECEIVED% (from the caller)',
    ztunnel: 'bytes_sent',
    description: 'bytes from the caller to the upstream',
  },
  {
    name: 'received_bytes',
    type: 'integer',
    lines: L4,
    when: 'connections that reached an upstream',
    envoy: '%BYTES_SENT% (to the caller)',
    ztunnel: 'bytes_recv',
    description: 'bytes from the upstream to the caller',
  },
  {
    name: 'close',
    type: 'string',
    lines: L4,
    when: 'connections that reached an upstream',
    envoy: '%CONNECTION_TERMINATION_DETAILS%',
    description: "which side closed: downstream_close, upstream_close, idle_timeout, closed (socket-lb), or the splice's reason",
  },
  { name: 'spliced', type: 'boolean', lines: L4, when: 'connections that reached an upstream', description: "the bytes were moved by the kernel (splice), not through the agent's buffers" },
  {
    name: 'socket_lb',
    type: 'boolean',
    lines: L4,
    when: 'connections balanced in the kernel at connect time',
    description: 'the connection never passed through the agent (socket-level load balancing)',
  },
  // Both.
  {
    name: 'duration_ms',
    type: 'number',
    lines: ALL,
    when: 'always, except a TCP connection refused before any upstream',
    envoy: '%DURATION%',
    ztunnel: 'duration',
    description: 'milliseconds from the start of the request (connection) to its end',
  },
  { name: 'rst_code', type: 'integer', lines: HBONE, when: 'when the tunnel stream was reset', description: 'the HTTP/2 RST_STREAM code' },
  {
    name: 'response_flags',
    type: 'string',
    lines: HTTP_TCP,
    when: 'always ("-" when none)',
    envoy: '%RESPONSE_FLAGS%',
    description: 'Envoy response flags (comma-separated) saying why the call ended as it did; see RESPONSE_FLAGS',
  },
  {
    name: 'error',
    type: 'string',
    lines: HTTP_TCP,
    when: 'when the agent answered or ended the call because of an error',
    ztunnel: 'error',
    description: 'the x-weft-error kind (no_healthy_upstream, denied, ...) or, on TCP, the socket error',
  },
  { name: 'reason', type: 'string', lines: HTTP_TCP, when: 'with error, when there is more to say', envoy: '%RESPONSE_CODE_DETAILS%', description: 'a human-readable reason for the error' },
  { name: 'msg', type: 'string', enum: ['access', 'access: connection refused'], lines: ALL, when: 'always', description: 'the line kind: every access line starts with "access"' },
];

/** The names, in order (for hand-built lines and tests). */
export const ACCESS_LOG_FIELD_NAMES: readonly string[] = ACCESS_LOG_FIELDS.map((f) => f.name);

/**
 * Envoy's response flag for each weft error kind (the x-weft-error value), so that a pipeline
 * keyed on %RESPONSE_FLAGS% reads weft's lines the same way:
 * UH no healthy upstream, UO overflow (circuit breaking), UT upstream request timeout,
 * UR upstream remote reset, UF upstream connection failure, RBAC denied by authorization,
 * UAEX unauthorized (weft: the request's JWT was invalid), DPE downstream protocol error,
 * NR no route, NC no cluster (a route's backend does not exist).
 */
export const RESPONSE_FLAGS: Readonly<Partial<Record<WeftErrorCode, string>>> = {
  WEFT_ERR_NO_HEALTHY_UPSTREAM: 'UH',
  WEFT_ERR_CIRCUIT_OPEN: 'UO',
  WEFT_ERR_OVERFLOW: 'UO',
  WEFT_ERR_UPSTREAM_TIMEOUT: 'UT',
  WEFT_ERR_UPSTREAM_RESET: 'UR',
  WEFT_ERR_CONNECT_FAILURE: 'UF',
  WEFT_ERR_DENIED: 'RBAC',
  WEFT_ERR_UNAUTHENTICATED: 'UAEX',
  WEFT_ERR_BAD_REQUEST: 'DPE',
  WEFT_ERR_NO_ROUTE: 'NR',
  WEFT_ERR_NO_BACKEND: 'NC',
};

/** Flags that do not come from an error kind. */
export const EXTRA_FLAGS = {
  /** Retries were made and the last attempt still failed (Envoy URX: upstream retry limit exceeded). */
  retryLimitExceeded: 'URX',
  /** The caller went away before the answer was complete (Envoy DC: downstream connection termination). */
  downstreamClosed: 'DC',
  /** A fault rule aborted the request (Envoy FI: fault injected). */
  faultAbort: 'FI',
  /** A fault rule delayed the request (Envoy DI: delay injected). */
  faultDelay: 'DI',
  /** A TCP connection idled out (Envoy SI: stream idle timeout). */
  idleTimeout: 'SI',
  /** A TCP connection closed with a socket error on the upstream side (Envoy UR: upstream remote reset). */
  upstreamReset: 'UR',
} as const;

/** %RESPONSE_FLAGS%: the flags, comma-separated, or "-" as Envoy writes none. */
export function responseFlags(error: WeftErrorCode | undefined, extra?: readonly string[]): string {
  const main = error ? RESPONSE_FLAGS[error] : undefined;
  if (main === undefined && (extra === undefined || extra.length === 0)) return '-';
  const all = main === undefined ? [...(extra ?? [])] : [main, ...(extra ?? []).filter((f) => f !== main)];
  return all.length ? all.join(',') : '-';
}

/**
 * %UPSTREAM_CLUSTER% in Istio's form, from a weft cluster key (`ns/name:port`, or
 * `pod:ip:port` for a pod dialed directly): `outbound|9080||reviews.bookinfo.svc`,
 * `outbound|8080||10.77.0.11`; on the receiving side `inbound|<port>||`. The host omits the
 * cluster DNS domain, which the agent does not know.
 */
export function upstreamCluster(clusterKey: string, inbound: boolean): string {
  const colon = clusterKey.lastIndexOf(':');
  const port = clusterKey.slice(colon + 1);
  if (inbound) return `inbound|${port}||`;
  const host = clusterKey.slice(0, colon);
  if (host.startsWith('pod:')) return `outbound|${port}||${host.slice(4)}`;
  const slash = host.indexOf('/');
  return slash < 0 ? `outbound|${port}||${host}` : `outbound|${port}||${host.slice(slash + 1)}.${host.slice(0, slash)}.svc`;
}

/** The JSON Schema (draft 2020-12) of one access line, generated from ACCESS_LOG_FIELDS. */
export function accessLogJsonSchema(): Record<string, unknown> {
  const properties: Record<string, unknown> = {};
  for (const f of ACCESS_LOG_FIELDS) {
    properties[f.name] = {
      type: f.type,
      ...(f.enum ? { enum: [...f.enum] } : {}),
      description: `${f.description}. Present: ${f.when}. Lines: ${f.lines.join(', ')}.${f.envoy ? ` Envoy: ${f.envoy}.` : ''}${f.ztunnel ? ` ztunnel: ${f.ztunnel}.` : ''}`,
    };
  }
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://weft.io/schemas/access-log.schema.json',
    title: 'weft access log line',
    description: 'One JSON line per HTTP request and per TCP connection (msg starts with "access"). Generated from src/telemetry/access-log.ts; see docs/access-log.md.',
    type: 'object',
    required: ACCESS_LOG_FIELDS.filter((f) => f.when === 'always' || f.when.startsWith('always '))
      .filter((f) => f.lines.length === ALL.length)
      .map((f) => f.name),
    properties,
    additionalProperties: false,
  };
}
