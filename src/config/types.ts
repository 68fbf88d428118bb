/**
 * The normalized mesh configuration: what discovery (the YAML file, or the Kubernetes API)
 * hands to the state store. Durations are milliseconds here; the YAML spells them `250ms`, `5s`.
 * Every discovery source produces exactly this shape, so nothing downstream can tell them apart.
 *
 * Defaults below are those the file loader (config/load.ts) fills in; the constants live in
 * config/defaults.ts. Optional policy blocks (healthCheck, outlierDetection, retries,
 * circuitBreaker) are absent unless the YAML has the key; when it does, every field missing
 * from it takes its default (`healthCheck: {}` is a TCP check with all defaults).
 */

export const MESH_LABEL = 'weft.io/mesh';
export const MESH_LABEL_ENABLED = 'enabled';

/** The agent's ports. Each defaults to DEFAULT_PORTS; 0 means any free port (tests). */
export interface Ports {
  outbound: number;
  inbound: number;
  tunnel: number;
  admin: number;
  metrics: number;
}

export const DEFAULT_PORTS: Ports = { outbound: 15001, inbound: 15006, tunnel: 15008, admin: 15000, metrics: 15020 };

export interface NodeConfig {
  name: string;
  /** The node address: the agent's outbound, tunnel and metrics listeners bind here. */
  address: string;
}

/**
 * Another node of the mesh (`nodes:`): where its agent is reached. Traffic to a meshed pod
 * on that node goes through an mTLS tunnel to `address:<ports.tunnel>` (every agent uses the
 * same ports), and strict pods on this node admit connections from `address` (the agents'
 * health checks). The local node may be listed too (with its own address) or left out.
 */
export interface PeerNode {
  name: string;
  address: string;
}

/**
 * Remote CA (`weft ca`); absent fields mean the embedded CA. With `url`, `rootCert` and
 * `tokenFile` are required; without it, they are refused. File paths are absolute
 * (relative ones in the YAML are resolved against the config file's directory).
 */
export interface CaConfig {
  url?: string;
  rootCert?: string;
  tokenFile?: string;
  /** Certificate lifetime asked of the CA, ms (default 24h; the loader leaves it absent when not given). */
  certTtl?: number;
}

export type PeerAuthMode = 'strict' | 'permissive';

/**
 * A namespace. Namespaces that workloads, services or policies use but the file does not
 * declare are added by the loader: unlabelled (not meshed), strict.
 */
export interface Namespace {
  name: string;
  /** Default {}. The namespace is meshed when `labels['weft.io/mesh'] === 'enabled'`. */
  labels: Record<string, string>;
  /**
   * mTLS mode for the namespace's pods: the `peerAuthentication:` key, else the label
   * `weft.io/peer-authentication` (strict | permissive), else strict. The key wins over the label.
   */
  peerAuthentication: PeerAuthMode;
}

export interface Workload {
  name: string;
  namespace: string;
  /**
   * The workload the pod belongs to, for metric labels (DESIGN.md "Metric labels"): in
   * Kubernetes the pod's owner (Deployment, StatefulSet, DaemonSet, Job), in a file
   * `workloads[].workload`. Absent: the entry's own name.
   */
  workload?: string;
  /** The node the pod runs on (default: this agent's node.name). */
  node: string;
  ip: string;
  /**
   * Default `default`, as in Kubernetes. Empty for a pod of another node whose service account
   * is not known (`peerIdentity: true`; in Kubernetes a remote endpoint taken from an
   * EndpointSlice): the tunnel asks the peer agent for the pod and accepts any identity of the
   * pod's namespace (src/proxy/hbone.ts).
   */
  serviceAccount: string;
  /** Default {}. */
  labels: Record<string, string>;
  /** Relative weight for weighted balancing, an integer >= 1 (default 1). */
  weight: number;
  /** Readiness from discovery: false takes the pod out of rotation (default true). */
  ready: boolean;
  /** The pod's cgroup v2 directory (absolute); may be absent for pods on other nodes. Unique per workload. */
  cgroup?: string;
  /** Kubernetes pod UID, when known. */
  uid?: string;
  /**
   * Ports the kubelet probes (readiness, liveness, startup): in strict mode the pod admits
   * connections from the node address to these and to no other port. Default [].
   */
  probePorts: number[];
}

/** `http`: HTTP/1.1 or h2c (prior knowledge) from clients, HTTP/1.1 upstream; `http2` and `grpc`: HTTP/2 both ways (DESIGN.md "Protocols"). */
export type Protocol = 'http' | 'http2' | 'grpc' | 'tcp';

export interface ServicePort {
  name?: string;
  port: number;
  /** Default: `port`. */
  targetPort: number;
  /**
   * Default tcp, except for a port whose name is `http`, `http-*`, `http2*` or `grpc*`
   * (Istio's naming convention), which defaults to http.
   */
  protocol: Protocol;
}

export type LoadBalancerType = 'random' | 'round-robin' | 'weighted-round-robin' | 'least-request' | 'peak-ewma' | 'ring-hash' | 'maglev';

/** Exactly one of the two is set. A header name is lower-cased. */
export interface HashOn {
  header?: string;
  sourceIp?: boolean;
}

export interface LoadBalancerPolicy {
  /** Default round-robin. */
  type: LoadBalancerType;
  /** Required for ring-hash and maglev, refused for the others. `header` needs an http port. */
  hashOn?: HashOn;
  /** ring-hash: minimum ring size (default 1024; set by the loader for ring-hash only). */
  minRingSize?: number;
  /** maglev: table size, a prime (default 65537; set by the loader for maglev only). */
  tableSize?: number;
}

export interface HealthCheckPolicy {
  /** Default tcp. */
  type: 'tcp' | 'http';
  /** HTTP path probed (default /healthz); setting it on a tcp check is refused. */
  path: string;
  /** Default 5s. */
  interval: number;
  /** Default 1s; must be shorter than interval. */
  timeout: number;
  /** Consecutive failures that mark an endpoint unhealthy (default 3). */
  unhealthyThreshold: number;
  /** Consecutive successes that mark it healthy again (default 2). */
  healthyThreshold: number;
  /** Random extra delay added to each interval, as a fraction of it (default 0.1). */
  jitter: number;
}

export interface OutlierDetectionPolicy {
  /** Consecutive failures (any 5xx, connect failure, reset, timeout) that eject an endpoint (default 5; 0 disables). */
  consecutive5xx: number;
  /** Consecutive gateway errors (502/503/504, connect failure, reset, timeout) that eject an endpoint (default 5; 0 disables). */
  consecutiveGatewayErrors: number;
  /** How often ejections are evaluated and expire (default 10s). */
  interval: number;
  /** Ejection time, multiplied by the endpoint's ejection count (default 30s). */
  baseEjectionTime: number;
  /** Cap on the ejection time (default 300s, or baseEjectionTime if that is longer). */
  maxEjectionTime: number;
  /** At most this percentage of endpoints is ejected at once (default 10). */
  maxEjectionPercent: number;
  /**
   * Success-rate ejection: endpoints below mean - stdevFactor*stdev (over endpoints with at
   * least successRateRequestVolume requests in the interval), evaluated only when at least
   * this many endpoints qualify (default 5). 0 disables success-rate ejection.
   */
  successRateMinimumHosts: number;
  /** Requests an endpoint needs in an interval to count for success-rate ejection (default 100). */
  successRateRequestVolume: number;
  /** Default 1.9 (Envoy's 1900 / 1000). */
  successRateStdevFactor: number;
  /** Below this percentage of healthy endpoints the balancer spreads over all of them (Envoy's panic threshold; default 50). */
  panicThreshold: number;
}

export type RetryOn =
  | 'connect-failure'
  | 'reset'
  | '5xx'
  | 'gateway-error'
  | 'retriable-status-codes'
  // gRPC statuses (grpc-status of a trailers-only answer)
  | 'unavailable'
  | 'resource-exhausted'
  | 'cancelled'
  | 'deadline-exceeded'
  | 'internal';

export interface RetryPolicy {
  /** Retries after the first try, 0..10 (default 2). */
  attempts: number;
  /** Timeout of each try, ms (default 0: each try may use what is left of the request timeout). */
  perTryTimeout: number;
  /** Default [connect-failure, reset, 5xx]. */
  retryOn: RetryOn[];
  /** Statuses retried under `retriable-status-codes`; required with it, refused without it (default []). */
  retriableStatusCodes: number[];
  /** Retries allowed: percent of active requests, and a floor per second (default { percent: 20, minPerSecond: 10 }). */
  budget: { percent: number; minPerSecond: number };
  /** Exponential backoff with jitter between tries (default { base: 25ms, max: 250ms }; an explicit base alone gets max = 10 x base). */
  backoff: { base: number; max: number };
}

export interface ConnectionPoolPolicy {
  /** Upstream connections per service (default 1024). */
  maxConnections: number;
  /** Requests waiting for a connection (default 1024). */
  maxPendingRequests: number;
  /** Concurrent requests per service (default 1024). */
  maxRequests: number;
  /** Upstream connect timeout, ms (default 5s). */
  connectTimeout: number;
  /** L4 idle timeout, ms (default 1h; 0 = none). */
  idleTimeout: number;
}

export interface CircuitBreakerPolicy {
  /** Consecutive failures that open the circuit (default 5). */
  consecutiveFailures: number;
  /** Time the circuit stays open before a half-open probe (default 5s). */
  openDuration: number;
  /** Cap on the open duration as it grows with repeated trips (default 60s, or openDuration if that is longer). */
  maxOpenDuration: number;
  /** Requests let through while half-open (default 1). */
  halfOpenRequests: number;
}

export interface TrafficPolicy {
  loadBalancer: LoadBalancerPolicy;
  healthCheck?: HealthCheckPolicy;
  outlierDetection?: OutlierDetectionPolicy;
  retries?: RetryPolicy;
  /**
   * Whole-request timeout, ms; 0 disables. Default 15s (Envoy's route timeout): a hung
   * upstream must not hold a client and a proxy slot forever.
   */
  timeout: number;
  /** Each field defaults separately (see ConnectionPoolPolicy). */
  connectionPool: ConnectionPoolPolicy;
  circuitBreaker?: CircuitBreakerPolicy;
  /**
   * A service in the same namespace (not this one; no cycles) used when this one has no
   * healthy endpoint or its circuit is open. A request to port P goes to the fallback's port
   * P: the loader checks that the fallback has each of this service's ports, same protocol.
   */
  fallback?: { service: string };
  /**
   * Protocol upgrades forwarded to this service (lower-case `Upgrade` protocol names); a
   * request asking for another is served as plain HTTP. Absent: `websocket` only. `h2c` is
   * never allowed unless listed.
   */
  upgrades?: string[];
}

export interface Service {
  name: string;
  namespace: string;
  /** Unique per port: no two services share a vip:port; never a pod ip or the node address. */
  vip: string;
  ports: ServicePort[];
  /** Default {} (selects nothing). */
  selector: Record<string, string>;
  /** Default: every default (round-robin, 15s timeout, default connection pool). */
  trafficPolicy: TrafficPolicy;
}

export interface JwtRule {
  issuer: string;
  /** Accepted `aud` values (default []: the audience is not checked). */
  audiences: string[];
  /** Exactly one of jwksFile (absolute after loading) and jwksUri is set. */
  jwksFile?: string;
  jwksUri?: string;
  /** Header the token is read from, lower-cased (default authorization, Bearer scheme). */
  fromHeader?: string;
  /** Forward the token to the workload (default true). */
  forwardOriginalToken: boolean;
}

export interface RequestAuthentication {
  name: string;
  namespace: string;
  /** Default {}: every workload of the namespace. */
  selector: Record<string, string>;
  /** At least one. */
  jwtRules: JwtRule[];
}

/**
 * Where a request comes from. Set fields must all match; at least one is set. String fields
 * take Istio match patterns: exact, `prefix*`, `*suffix` or `*`. Principals have no
 * `spiffe://`. ipBlocks are IPv4 addresses or CIDR blocks.
 */
export interface PolicySource {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  requestPrincipals?: string[];
  notRequestPrincipals?: string[];
  ipBlocks?: string[];
  notIpBlocks?: string[];
}

/**
 * What a request asks for. Set fields must all match; at least one is set. Paths and hosts
 * take Istio match patterns (paths start with `/` unless they start with `*`); methods are
 * upper-case tokens, matched exactly.
 */
export interface PolicyOperation {
  ports?: number[];
  notPorts?: number[];
  methods?: string[];
  notMethods?: string[];
  paths?: string[];
  notPaths?: string[];
  hosts?: string[];
  notHosts?: string[];
}

export interface PolicyRule {
  /** Alternatives (any one matches); default [] = any source. */
  from: PolicySource[];
  /** Alternatives (any one matches); default [] = any operation. */
  to: PolicyOperation[];
}

export interface AuthorizationPolicy {
  name: string;
  namespace: string;
  /** Empty selector: every workload of the namespace (default {}). */
  selector: Record<string, string>;
  /** Default ALLOW (as in Istio). */
  action: 'ALLOW' | 'DENY';
  /** Default []: an ALLOW policy without rules allows nothing, a DENY one denies nothing (Istio). */
  rules: PolicyRule[];
}

/** A Service (and optionally one of its ports) a route attaches to; same namespace as the route. */
export interface RouteParentRef {
  name: string;
  /** Absent: every port of the service. */
  port?: number;
}

export type RouteKind = 'HTTPRoute' | 'GRPCRoute' | 'TCPRoute';

export type PathMatchType = 'Exact' | 'PathPrefix' | 'RegularExpression';
export type StringMatchType = 'Exact' | 'RegularExpression';

/** A header (names lower-cased) or query parameter condition. Regular expressions match the whole value. */
export interface RouteValueMatch {
  type: StringMatchType;
  name: string;
  value: string;
}

/** One alternative of a rule: every condition it sets must hold. */
export interface RouteMatch {
  /** HTTPRoute; absent means any path (Gateway API's default, PathPrefix /). Regexes match the whole path. */
  path?: { type: PathMatchType; value: string };
  /** Default []. */
  headers: RouteValueMatch[];
  /** HTTPRoute; default []. */
  queryParams: RouteValueMatch[];
  /** HTTPRoute: an upper-case method. */
  method?: string;
  /** GRPCRoute: the call's service and/or method (at least one). */
  grpc?: { type: StringMatchType; service?: string; method?: string };
}

export interface HeaderModifier {
  /** Names as written; matched case-insensitively. Default [] each. */
  set: { name: string; value: string }[];
  add: { name: string; value: string }[];
  remove: string[];
}

export type PathModifier = { type: 'ReplaceFullPath'; replaceFullPath: string } | { type: 'ReplacePrefixMatch'; replacePrefixMatch: string };

export interface RouteBackendRef {
  /** A Service in the route's namespace; it may not exist (then requests picked for it get 500 no_backend). */
  name: string;
  /** Default: the port the request arrived on. */
  port?: number;
  /** Default 1; 0 receives nothing. */
  weight: number;
}

export type RouteFilter =
  | { type: 'RequestHeaderModifier'; requestHeaderModifier: HeaderModifier }
  | { type: 'ResponseHeaderModifier'; responseHeaderModifier: HeaderModifier }
  | { type: 'URLRewrite'; urlRewrite: { hostname?: string; path?: PathModifier } }
  | {
      type: 'RequestRedirect';
      requestRedirect: { scheme?: 'http' | 'https'; hostname?: string; port?: number; path?: PathModifier; statusCode: 301 | 302 | 303 | 307 | 308 };
    }
  /** percent default 100. The mirror's answer is dropped. */
  | { type: 'RequestMirror'; requestMirror: { backendRef: { name: string; port?: number }; percent: number } };

/** weft's fault injection: each part applies to `percent` of the rule's requests (default 100). */
export interface RouteFault {
  delay?: { fixedDelay: number; percent: number };
  abort?: { httpStatus: number; percent: number };
}

export interface RouteRule {
  /** Optional (Gateway API's rule name); access logs name a rule by it, else by its index. */
  name?: string;
  /** Alternatives; [] means every request (HTTPRoute/GRPCRoute). TCPRoute: always []. */
  matches: RouteMatch[];
  /** In order; default []. */
  filters: RouteFilter[];
  /** Default []: the parent service itself (GAMMA). */
  backendRefs: RouteBackendRef[];
  /** ms; request: the whole request including retries, backendRequest: each try. 0 or absent: the service's. */
  timeouts?: { request?: number; backendRequest?: number };
  /** Replaces the service's retries for this rule: retries after the first try, on these statuses (and connection failures). */
  retry?: { attempts: number; codes: number[]; backoff: number };
  fault?: RouteFault;
}

export interface Route {
  name: string;
  namespace: string;
  /** Default HTTPRoute. */
  kind: RouteKind;
  /** At least one; each names a service of the route's namespace. */
  parentRefs: RouteParentRef[];
  rules: RouteRule[];
}

export interface MeshConfig {
  node: NodeConfig;
  /**
   * The other nodes of the mesh, by name (default []; the file loader never lists the local
   * node here). Optional so that a discovery source that knows no peers may leave it out.
   */
  nodes?: PeerNode[];
  /** trustDomain default cluster.local. */
  mesh: { trustDomain: string };
  ports: Ports;
  /** Default {}: the embedded CA. */
  ca: CaConfig;
  /** Absolute (default /var/lib/weft). */
  stateDir: string;
  namespaces: Namespace[];
  workloads: Workload[];
  services: Service[];
  requestAuthentications: RequestAuthentication[];
  policies: AuthorizationPolicy[];
  /**
   * Traffic routes (Gateway API semantics, GAMMA-style on a Service). Optional so that a
   * discovery source without routes may leave it out; the file loader always sets it. Order
   * matters on ties of precedence (it stands for Gateway API's creation timestamp).
   */
  routes?: Route[];
  /** Agent-level knobs. */
  agent: {
    /** Grace period for in-flight requests on SIGTERM, ms (default 20s). */
    drainTimeout: number;
    /** Log level: fatal | error | warn | info | debug | trace | silent (default info). */
    logLevel: string;
    /**
     * Allow `jwksUri` hosts that are (or resolve to) a loopback, link-local or this node's
     * own address (default false: refused, the rule fails closed). Read at start.
     */
    jwksAllowLocalUris: boolean;
    /**
     * Open downstream connections accepted per listener; beyond it a new connection is
     * closed at once and counted in `weft_downstream_connections_rejected_total{listener}`.
     * Defaults: outbound 16384, tunnel 16384, inbound 4096. Applied live.
     */
    maxDownstreamConnections: { outbound: number; inbound: number; tunnel: number };
    /**
     * Threads that serve connections (src/workers/). Absent: the cores the agent may use (its
     * CPU affinity and its cgroup's CPU quota, src/workers/cores.ts). 1: the control thread
     * serves alone, as before workers existed.
     */
    workers?: number;
  };
}
