/**
 * From raw (schema-valid) config to MeshConfig: the checks that span fields or objects,
 * then the defaults. Every problem is collected before anything is thrown, so one run of the
 * loader lists all that is wrong with a file.
 *
 * Decisions worth knowing (also in types.ts):
 * - A namespace that workloads, services or policies use but `namespaces:` does not declare
 *   exists, unlabelled (so not meshed), strict: it is added to MeshConfig.namespaces. That is
 *   how Kubernetes behaves for a namespace without the opt-in label, and it lets a file list
 *   off-mesh pods without ceremony.
 * - Relative file paths (stateDir, ca.rootCert, ca.tokenFile, jwtRules[].jwksFile) are
 *   resolved against the config file's directory.
 */
import { fromIstioShape } from '../authz/istio-shape.js';
import { validatePolicies } from '../authz/validate.js';
import { validateRequestAuthentications } from '../authz/jwt.js';
import { resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import {
  DEFAULT_AGENT,
  DEFAULT_CIRCUIT_BREAKER,
  DEFAULT_CONNECTION_POOL,
  DEFAULT_HEALTH_CHECK,
  DEFAULT_LOAD_BALANCER,
  DEFAULT_MAGLEV_TABLE_SIZE,
  DEFAULT_OUTLIER_DETECTION,
  DEFAULT_PEER_AUTHENTICATION,
  DEFAULT_RETRIES,
  DEFAULT_RING_SIZE,
  DEFAULT_SERVICE_ACCOUNT,
  DEFAULT_STATE_DIR,
  DEFAULT_TIMEOUT,
  DEFAULT_TRUST_DOMAIN,
  PEER_AUTH_LABEL,
} from './defaults.js';
import { formatDuration, parseDuration } from './duration.js';
import { formatPath, type PathSegment } from './path.js';
import { isIPv4Block, matchPatternProblem } from './patterns.js';
import { schemaProblems } from './schema.js';
import {
  DEFAULT_PORTS,
  type AuthorizationPolicy,
  type CaConfig,
  type CircuitBreakerPolicy,
  type ConnectionPoolPolicy,
  type HealthCheckPolicy,
  type JwtRule,
  type LoadBalancerPolicy,
  type LoadBalancerType,
  type MeshConfig,
  type Namespace,
  type OutlierDetectionPolicy,
  type PeerAuthMode,
  type PeerNode,
  type PolicyOperation,
  type PolicyRule,
  type PolicySource,
  type Ports,
  type Protocol,
  type RequestAuthentication,
  type RetryOn,
  type RetryPolicy,
  type Service,
  type ServicePort,
  type TrafficPolicy,
  type Workload,
  type HeaderModifier,
  type PathMatchType,
  type PathModifier,
  type Route,
  type RouteBackendRef,
  type RouteFault,
  type RouteFilter,
  type RouteKind,
  type RouteMatch,
  type RouteParentRef,
  type RouteRule,
  type StringMatchType,
} from './types.js';

// --- raw shapes (what CONFIG_SCHEMA admits) ----------------------------------------------

type RawDuration = string | number;
type Labels = Record<string, string>;

interface RawTrafficPolicy {
  loadBalancer?: {
    type?: LoadBalancerType;
    hashOn?: { header?: string; sourceIp?: boolean };
    minRingSize?: number;
    tableSize?: number;
  };
  healthCheck?: {
    type?: 'tcp' | 'http';
    path?: string;
    interval?: RawDuration;
    timeout?: RawDuration;
    unhealthyThreshold?: number;
    healthyThreshold?: number;
    jitter?: number;
  };
  outlierDetection?: Partial<Record<keyof OutlierDetectionPolicy, number | RawDuration>>;
  retries?: {
    attempts?: number;
    perTryTimeout?: RawDuration;
    retryOn?: RetryOn[];
    retriableStatusCodes?: number[];
    budget?: { percent?: number; minPerSecond?: number };
    backoff?: { base?: RawDuration; max?: RawDuration };
  };
  timeout?: RawDuration;
  connectionPool?: Partial<Record<keyof ConnectionPoolPolicy, number | RawDuration>>;
  circuitBreaker?: Partial<Record<keyof CircuitBreakerPolicy, number | RawDuration>>;
  fallback?: { service: string };
  upgrades?: string[];
}

interface RawConfig {
  node: { name: string; address: string };
  nodes?: { name: string; address: string }[];
  mesh?: { trustDomain?: string };
  ports?: Partial<Ports>;
  ca?: { url?: string; rootCert?: string; tokenFile?: string; certTtl?: RawDuration };
  stateDir?: string;
  namespaces?: { name: string; labels?: Labels; peerAuthentication?: PeerAuthMode }[];
  workloads?: {
    name: string;
    namespace: string;
    workload?: string;
    node?: string;
    ip: string;
    serviceAccount?: string;
    labels?: Labels;
    weight?: number;
    ready?: boolean;
    peerIdentity?: boolean;
    cgroup?: string;
    uid?: string;
    probePorts?: number[];
  }[];
  services?: {
    name: string;
    namespace: string;
    vip: string;
    ports: { name?: string; port: number; targetPort?: number; protocol?: Protocol }[];
    selector?: Labels;
    trafficPolicy?: RawTrafficPolicy;
  }[];
  requestAuthentications?: {
    name: string;
    namespace: string;
    selector?: Labels;
    jwtRules: {
      issuer: string;
      audiences?: string[];
      jwksFile?: string;
      jwksUri?: string;
      fromHeader?: string;
      forwardOriginalToken?: boolean;
    }[];
  }[];
  policies?: {
    name: string;
    namespace: string;
    selector?: Labels;
    action?: 'ALLOW' | 'DENY';
    rules?: { from?: PolicySource[]; to?: PolicyOperation[] }[];
  }[];
  routes?: RawRoute[];
  agent?: { drainTimeout?: RawDuration; logLevel?: string; jwksAllowLocalUris?: boolean; maxDownstreamConnections?: { outbound?: number; inbound?: number; tunnel?: number }; workers?: number };
}

export interface NormalizeOptions {
  /** Directory that relative file paths are resolved against (default: the working directory). */
  baseDir?: string;
}

// --- the checker -------------------------------------------------------------------------

class Problems {
  readonly list: string[] = [];
  add(path: readonly PathSegment[], message: string): void {
    this.list.push(`${formatPath(path)}: ${message}`);
  }
  /** parseDuration, with failures recorded (the schema has already vetted syntax). */
  duration(value: RawDuration | undefined, fallback: number, path: readonly PathSegment[], positive = false): number {
    if (value === undefined) return fallback;
    let ms: number;
    try {
      ms = parseDuration(value);
    } catch (err) {
      this.add(path, (err as Error).message);
      return fallback;
    }
    if (positive && ms === 0) this.add(path, 'must be greater than 0');
    return ms;
  }
}

/**
 * Validate raw config (a parsed YAML document, after env substitution) and normalize it.
 * @throws ConfigError listing every problem, schema and semantic.
 */
export function normalizeConfig(raw: unknown, source: string, opts: NormalizeOptions = {}): MeshConfig {
  raw = withIstioPolicies(raw, source);
  const shape = schemaProblems(raw);
  // Cross-field checks assume the shape; on a malformed document they would only add noise.
  if (shape.length) throw new ConfigError(source, shape);
  const problems = new Problems();
  const config = build(raw as RawConfig, problems, opts.baseDir ?? process.cwd());
  if (problems.list.length) throw new ConfigError(source, problems.list);
  // The policy engine is the final word on what it can compile: a config it would refuse
  // must be refused here, while the last good one is still in force.
  const late = [...validatePolicies(config.policies), ...validateRequestAuthentications(config.requestAuthentications, 'requestAuthentications')];
  if (late.length) throw new ConfigError(source, late);
  return config;
}

/**
 * Policies written in Istio's AuthorizationPolicy shape (src/authz/istio-shape.ts) become
 * weft's before validation; what cannot be converted is refused, by name.
 */
function withIstioPolicies(raw: unknown, source: string): unknown {
  if (typeof raw !== 'object' || raw === null || !Array.isArray((raw as RawConfig).policies)) return raw;
  const problems: string[] = [];
  const policies = (raw as RawConfig).policies!.map((pol, i) => {
    if (typeof pol !== 'object' || pol === null) return pol;
    const r = fromIstioShape(pol as unknown as Record<string, unknown>);
    problems.push(...r.problems.map((m) => m.replace(/^spec\./, `policies[${i}].`)));
    return r.spec as unknown as typeof pol;
  });
  if (problems.length) throw new ConfigError(source, problems);
  return { ...(raw as RawConfig), policies };
}

function build(raw: RawConfig, p: Problems, baseDir: string): MeshConfig {
  const ports: Ports = { ...DEFAULT_PORTS, ...raw.ports };
  const byPort = new Map<number, string>();
  for (const [name, value] of Object.entries(ports)) {
    if (value === 0) continue; // any free port: never a clash
    const other = byPort.get(value);
    if (other) p.add(['ports', name], `${value} is already the ${other} port; the agent's ports must differ`);
    else byPort.set(value, name);
  }

  // Built in document order, so that problems are listed in the order of the file.
  const nodes = buildNodes(raw, p);
  const ca = buildCa(raw, p, baseDir);
  const namespaces = buildNamespaces(raw, p);
  const workloads = buildWorkloads(raw, p, raw.node.name);
  const services = buildServices(raw, p, workloads);
  const requestAuthentications = buildRequestAuthentications(raw, p, baseDir);
  const policies = buildPolicies(raw, p);
  const routes = buildRoutes(raw.routes ?? [], services, p);

  // Namespaces that are used but not declared exist, unlabelled (see the file comment).
  const known = new Set(namespaces.map((n) => n.name));
  for (const { namespace } of [...workloads, ...services, ...requestAuthentications, ...policies]) {
    if (known.has(namespace)) continue;
    known.add(namespace);
    namespaces.push({ name: namespace, labels: {}, peerAuthentication: DEFAULT_PEER_AUTHENTICATION });
  }

  for (const [i, s] of services.entries()) {
    if (s.vip === raw.node.address) p.add(['services', i, 'vip'], `${s.vip} is the node address`);
  }

  return {
    node: { name: raw.node.name, address: raw.node.address },
    nodes,
    mesh: { trustDomain: raw.mesh?.trustDomain ?? DEFAULT_TRUST_DOMAIN },
    ports,
    ca,
    stateDir: resolve(baseDir, raw.stateDir ?? DEFAULT_STATE_DIR),
    namespaces,
    workloads,
    services,
    requestAuthentications,
    policies,
    routes,
    agent: {
      drainTimeout: p.duration(raw.agent?.drainTimeout, DEFAULT_AGENT.drainTimeout, ['agent', 'drainTimeout']),
      logLevel: raw.agent?.logLevel ?? DEFAULT_AGENT.logLevel,
      jwksAllowLocalUris: raw.agent?.jwksAllowLocalUris ?? DEFAULT_AGENT.jwksAllowLocalUris,
      maxDownstreamConnections: { ...DEFAULT_AGENT.maxDownstreamConnections, ...raw.agent?.maxDownstreamConnections },
      ...(raw.agent?.workers !== undefined ? { workers: raw.agent.workers } : {}),
    },
  };
}

/**
 * `nodes:` without the local node: the local node may be listed (it keeps the file the same
 * on every node), but then with its own address.
 */
function buildNodes(raw: RawConfig, p: Problems): PeerNode[] {
  const names = new Map<string, number>();
  const addresses = new Map<string, number>();
  const out: PeerNode[] = [];
  (raw.nodes ?? []).forEach((n, i) => {
    const dupName = names.get(n.name);
    if (dupName !== undefined) p.add(['nodes', i, 'name'], `duplicate node ${n.name} (also nodes[${dupName}])`);
    else names.set(n.name, i);
    const dupAddr = addresses.get(n.address);
    if (dupAddr !== undefined) p.add(['nodes', i, 'address'], `${n.address} is already the address of nodes[${dupAddr}]`);
    else addresses.set(n.address, i);
    if (n.name === raw.node.name) {
      if (n.address !== raw.node.address) p.add(['nodes', i, 'address'], `${n.name} is this node, whose address is ${raw.node.address} (node.address)`);
      return;
    }
    if (n.address === raw.node.address) p.add(['nodes', i, 'address'], `${n.address} is this node's address (node.address), not ${n.name}'s`);
    out.push({ name: n.name, address: n.address });
  });
  return out;
}

function buildCa(raw: RawConfig, p: Problems, baseDir: string): CaConfig {
  const ca = raw.ca ?? {};
  const out: CaConfig = {};
  if (ca.url !== undefined) {
    out.url = ca.url;
    if (ca.rootCert === undefined) p.add(['ca', 'rootCert'], "is required with ca.url (the remote CA's root certificate)");
    if (ca.tokenFile === undefined) p.add(['ca', 'tokenFile'], 'is required with ca.url (from `weft ca token`)');
  } else {
    for (const key of ['rootCert', 'tokenFile'] as const) {
      if (ca[key] !== undefined) p.add(['ca', key], 'is only used with ca.url (a remote CA); the embedded CA needs none');
    }
  }
  if (ca.rootCert !== undefined) out.rootCert = resolve(baseDir, ca.rootCert);
  if (ca.tokenFile !== undefined) out.tokenFile = resolve(baseDir, ca.tokenFile);
  if (ca.certTtl !== undefined) out.certTtl = p.duration(ca.certTtl, 0, ['ca', 'certTtl'], true);
  return out;
}

function buildNamespaces(raw: RawConfig, p: Problems): Namespace[] {
  const seen = new Map<string, number>();
  return (raw.namespaces ?? []).map((ns, i) => {
    const first = seen.get(ns.name);
    if (first !== undefined) p.add(['namespaces', i, 'name'], `duplicate namespace ${ns.name} (also namespaces[${first}])`);
    else seen.set(ns.name, i);
    const labels = { ...ns.labels };
    const label = labels[PEER_AUTH_LABEL];
    if (label !== undefined && label !== 'strict' && label !== 'permissive') {
      p.add(['namespaces', i, 'labels', PEER_AUTH_LABEL], `must be strict or permissive (got "${label}")`);
    }
    // The explicit key wins over the label (it is the more specific, file-only spelling).
    const peerAuthentication: PeerAuthMode = ns.peerAuthentication ?? (label === 'permissive' || label === 'strict' ? label : DEFAULT_PEER_AUTHENTICATION);
    return { name: ns.name, labels, peerAuthentication };
  });
}

function buildWorkloads(raw: RawConfig, p: Problems, nodeName: string): Workload[] {
  const names = new Map<string, number>();
  const ips = new Map<string, number>();
  const cgroups = new Map<string, number>();
  return (raw.workloads ?? []).map((w, i) => {
    const key = `${w.namespace}/${w.name}`;
    const dupName = names.get(key);
    if (dupName !== undefined) p.add(['workloads', i, 'name'], `duplicate workload ${key} (also workloads[${dupName}])`);
    else names.set(key, i);
    const dupIp = ips.get(w.ip);
    if (dupIp !== undefined) p.add(['workloads', i, 'ip'], `${w.ip} is already the ip of workloads[${dupIp}]`);
    else ips.set(w.ip, i);
    if (w.cgroup !== undefined) {
      // The cgroup tells the agent which workload is calling: two workloads cannot share one.
      const cg = w.cgroup.replace(/\/+$/, '') || '/';
      const dupCg = cgroups.get(cg);
      if (dupCg !== undefined) p.add(['workloads', i, 'cgroup'], `${w.cgroup} is already the cgroup of workloads[${dupCg}]`);
      else {
        // A caller is the pod whose cgroup holds its own at any depth: pod cgroups cannot nest.
        for (const [other, j] of cgroups) {
          if (cg.startsWith(other === '/' ? '/' : `${other}/`) || other.startsWith(cg === '/' ? '/' : `${cg}/`)) {
            p.add(['workloads', i, 'cgroup'], `${w.cgroup} and the cgroup of workloads[${j}] (${other}) are nested: a pod's cgroup cannot hold another's`);
            break;
          }
        }
        cgroups.set(cg, i);
      }
    }
    const out: Workload = {
      name: w.name,
      namespace: w.namespace,
      node: w.node ?? nodeName,
      ip: w.ip,
      // peerIdentity: not known here; the tunnel learns it from the peer (Workload.serviceAccount).
      serviceAccount: w.peerIdentity && w.node !== undefined && w.node !== nodeName ? '' : (w.serviceAccount ?? DEFAULT_SERVICE_ACCOUNT),
      labels: { ...w.labels },
      weight: w.weight ?? 1,
      ready: w.ready ?? true,
      probePorts: [...new Set(w.probePorts ?? [])].sort((a, b) => a - b),
    };
    if (w.cgroup !== undefined) out.cgroup = w.cgroup;
    if (w.uid !== undefined) out.uid = w.uid;
    if (w.workload !== undefined) out.workload = w.workload;
    return out;
  });
}

/** Istio's convention: a port named `grpc`/`grpc-*` speaks gRPC, `http2`/`http2-*` HTTP/2, `http`/`http-*` HTTP; anything else TCP. */
export function protocolFromName(name: string | undefined): Protocol {
  const m = name === undefined ? null : /^(http2|grpc|http)(-|$)/.exec(name);
  return m === null ? 'tcp' : (m[1] as Protocol);
}

function buildServices(raw: RawConfig, p: Problems, workloads: Workload[]): Service[] {
  const names = new Map<string, number>();
  const vipPorts = new Map<string, string>();
  const workloadIps = new Map(workloads.map((w, i) => [w.ip, i]));
  const services = (raw.services ?? []).map((s, i): Service => {
    const at: PathSegment[] = ['services', i];
    const key = `${s.namespace}/${s.name}`;
    const dup = names.get(key);
    if (dup !== undefined) p.add([...at, 'name'], `duplicate service ${key} (also services[${dup}])`);
    else names.set(key, i);
    const podIndex = workloadIps.get(s.vip);
    if (podIndex !== undefined) p.add([...at, 'vip'], `${s.vip} is the ip of workloads[${podIndex}]; a VIP must not be a pod ip`);

    const portNumbers = new Set<number>();
    const portNames = new Set<string>();
    const ports = s.ports.map((sp, j): ServicePort => {
      const pat = [...at, 'ports', j];
      if (portNumbers.has(sp.port)) p.add([...pat, 'port'], `port ${sp.port} is listed twice`);
      portNumbers.add(sp.port);
      if (sp.name !== undefined) {
        if (portNames.has(sp.name)) p.add([...pat, 'name'], `port name ${sp.name} is used twice`);
        portNames.add(sp.name);
      }
      const vipPort = `${s.vip}:${sp.port}`;
      const owner = vipPorts.get(vipPort);
      if (owner !== undefined && owner !== key) p.add([...pat, 'port'], `${vipPort} is already service ${owner}`);
      else vipPorts.set(vipPort, key);
      const out: ServicePort = {
        port: sp.port,
        targetPort: sp.targetPort ?? sp.port,
        protocol: sp.protocol ?? protocolFromName(sp.name),
      };
      if (sp.name !== undefined) out.name = sp.name;
      return out;
    });
    return {
      name: s.name,
      namespace: s.namespace,
      vip: s.vip,
      ports,
      selector: { ...s.selector },
      trafficPolicy: buildTrafficPolicy(s.trafficPolicy ?? {}, [...at, 'trafficPolicy'], p, ports),
    };
  });
  checkFallbacks(services, p);
  return services;
}

function checkFallbacks(services: Service[], p: Problems): void {
  const byKey = new Map(services.map((s) => [`${s.namespace}/${s.name}`, s]));
  for (const [i, s] of services.entries()) {
    const fb = s.trafficPolicy.fallback;
    if (!fb) continue;
    const at = ['services', i, 'trafficPolicy', 'fallback', 'service'];
    if (fb.service === s.name) {
      p.add(at, 'a service cannot be its own fallback');
      continue;
    }
    const target = byKey.get(`${s.namespace}/${fb.service}`);
    if (!target) {
      p.add(at, `no service ${fb.service} in namespace ${s.namespace} (a fallback must be in the same namespace)`);
      continue;
    }
    // A request to port P falls back to the fallback's port P, so each port must exist there.
    for (const sp of s.ports) {
      const there = target.ports.find((tp) => tp.port === sp.port);
      if (!there) p.add(at, `${fb.service} has no port ${sp.port}, which ${s.name} serves`);
      else if (there.protocol !== sp.protocol) {
        p.add(at, `${fb.service} port ${sp.port} is ${there.protocol}, but ${s.name} port ${sp.port} is ${sp.protocol}`);
      }
    }
    // Fallbacks may chain, but not in a circle.
    const chain = [s.name];
    let cur: Service | undefined = target;
    while (cur) {
      if (chain.includes(cur.name)) {
        if (cur.name === s.name) p.add(at, `fallbacks form a cycle: ${[...chain, cur.name].join(' -> ')}`);
        break;
      }
      chain.push(cur.name);
      const next: string | undefined = cur.trafficPolicy.fallback?.service;
      cur = next === undefined ? undefined : byKey.get(`${s.namespace}/${next}`);
    }
  }
}

function isPrime(n: number): boolean {
  if (n < 2) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

function buildTrafficPolicy(raw: RawTrafficPolicy, at: PathSegment[], p: Problems, ports: ServicePort[]): TrafficPolicy {
  const lbAt = [...at, 'loadBalancer'];
  const type = raw.loadBalancer?.type ?? DEFAULT_LOAD_BALANCER;
  const loadBalancer: LoadBalancerPolicy = { type };
  const hashed = type === 'ring-hash' || type === 'maglev';
  const hashOn = raw.loadBalancer?.hashOn;
  if (hashed && !hashOn) {
    p.add([...lbAt, 'hashOn'], `is required for ${type}: { header: <name> } or { sourceIp: true }`);
  } else if (!hashed && hashOn) {
    p.add([...lbAt, 'hashOn'], `only ring-hash and maglev use hashOn, not ${type}`);
  } else if (hashOn) {
    if (hashOn.header !== undefined && hashOn.sourceIp !== undefined) {
      p.add([...lbAt, 'hashOn'], 'set either header or sourceIp, not both');
    } else if (hashOn.sourceIp === false) {
      p.add([...lbAt, 'hashOn', 'sourceIp'], 'must be true (to hash on a header, use header: <name>)');
    } else if (hashOn.header !== undefined && !ports.some((sp) => sp.protocol === 'http')) {
      p.add([...lbAt, 'hashOn', 'header'], 'needs an http port; this service has only tcp ports (use sourceIp: true)');
    }
    loadBalancer.hashOn = hashOn.header !== undefined ? { header: hashOn.header.toLowerCase() } : { sourceIp: true };
  }
  const { minRingSize, tableSize } = raw.loadBalancer ?? {};
  if (minRingSize !== undefined && type !== 'ring-hash') p.add([...lbAt, 'minRingSize'], `only applies to ring-hash, not ${type}`);
  if (tableSize !== undefined && type !== 'maglev') p.add([...lbAt, 'tableSize'], `only applies to maglev, not ${type}`);
  if (tableSize !== undefined && !isPrime(tableSize)) p.add([...lbAt, 'tableSize'], `must be a prime number (got ${tableSize}; e.g. 65537)`);
  if (type === 'ring-hash') loadBalancer.minRingSize = minRingSize ?? DEFAULT_RING_SIZE;
  if (type === 'maglev') loadBalancer.tableSize = tableSize ?? DEFAULT_MAGLEV_TABLE_SIZE;

  const timeout = p.duration(raw.timeout, DEFAULT_TIMEOUT, [...at, 'timeout']);
  const cpRaw = raw.connectionPool ?? {};
  const cpAt = [...at, 'connectionPool'];
  const connectionPool: ConnectionPoolPolicy = {
    maxConnections: (cpRaw.maxConnections as number | undefined) ?? DEFAULT_CONNECTION_POOL.maxConnections,
    maxPendingRequests: (cpRaw.maxPendingRequests as number | undefined) ?? DEFAULT_CONNECTION_POOL.maxPendingRequests,
    maxRequests: (cpRaw.maxRequests as number | undefined) ?? DEFAULT_CONNECTION_POOL.maxRequests,
    connectTimeout: p.duration(cpRaw.connectTimeout, DEFAULT_CONNECTION_POOL.connectTimeout, [...cpAt, 'connectTimeout'], true),
    idleTimeout: p.duration(cpRaw.idleTimeout, DEFAULT_CONNECTION_POOL.idleTimeout, [...cpAt, 'idleTimeout']),
  };

  const policy: TrafficPolicy = { loadBalancer, timeout, connectionPool };
  if (raw.healthCheck) policy.healthCheck = buildHealthCheck(raw.healthCheck, [...at, 'healthCheck'], p);
  if (raw.outlierDetection) policy.outlierDetection = buildOutlierDetection(raw.outlierDetection, [...at, 'outlierDetection'], p);
  if (raw.retries) policy.retries = buildRetries(raw.retries, [...at, 'retries'], p, timeout);
  if (raw.circuitBreaker) policy.circuitBreaker = buildCircuitBreaker(raw.circuitBreaker, [...at, 'circuitBreaker'], p);
  if (raw.fallback) policy.fallback = { service: raw.fallback.service };
  if (raw.upgrades) policy.upgrades = [...new Set(raw.upgrades.map((u) => u.toLowerCase()))];
  return policy;
}

function buildHealthCheck(raw: NonNullable<RawTrafficPolicy['healthCheck']>, at: PathSegment[], p: Problems): HealthCheckPolicy {
  const d = DEFAULT_HEALTH_CHECK;
  const type = raw.type ?? d.type;
  if (raw.path !== undefined && type !== 'http') {
    p.add([...at, 'path'], 'is only used by http health checks; add type: http');
  }
  const interval = p.duration(raw.interval, d.interval, [...at, 'interval'], true);
  const timeout = p.duration(raw.timeout, d.timeout, [...at, 'timeout'], true);
  if (timeout >= interval && interval > 0) {
    p.add([...at, 'timeout'], `must be shorter than interval (${formatDuration(timeout)} >= ${formatDuration(interval)})`);
  }
  return {
    type,
    path: raw.path ?? d.path,
    interval,
    timeout,
    unhealthyThreshold: raw.unhealthyThreshold ?? d.unhealthyThreshold,
    healthyThreshold: raw.healthyThreshold ?? d.healthyThreshold,
    jitter: raw.jitter ?? d.jitter,
  };
}

function buildOutlierDetection(raw: NonNullable<RawTrafficPolicy['outlierDetection']>, at: PathSegment[], p: Problems): OutlierDetectionPolicy {
  const d = DEFAULT_OUTLIER_DETECTION;
  const n = (k: keyof OutlierDetectionPolicy) => (raw[k] as number | undefined) ?? d[k];
  const baseEjectionTime = p.duration(raw.baseEjectionTime, d.baseEjectionTime, [...at, 'baseEjectionTime'], true);
  // An explicit base above the default cap raises the cap with it, unless the cap is explicit too.
  const maxDefault = Math.max(d.maxEjectionTime, baseEjectionTime);
  const maxEjectionTime = p.duration(raw.maxEjectionTime, maxDefault, [...at, 'maxEjectionTime'], true);
  if (maxEjectionTime < baseEjectionTime) p.add([...at, 'maxEjectionTime'], 'must not be shorter than baseEjectionTime');
  return {
    consecutive5xx: n('consecutive5xx'),
    consecutiveGatewayErrors: n('consecutiveGatewayErrors'),
    interval: p.duration(raw.interval, d.interval, [...at, 'interval'], true),
    baseEjectionTime,
    maxEjectionTime,
    maxEjectionPercent: n('maxEjectionPercent'),
    successRateMinimumHosts: n('successRateMinimumHosts'),
    successRateRequestVolume: n('successRateRequestVolume'),
    successRateStdevFactor: n('successRateStdevFactor'),
    panicThreshold: n('panicThreshold'),
  };
}

function buildRetries(raw: NonNullable<RawTrafficPolicy['retries']>, at: PathSegment[], p: Problems, timeout: number): RetryPolicy {
  const d = DEFAULT_RETRIES;
  const retryOn = raw.retryOn ?? d.retryOn;
  const codes = raw.retriableStatusCodes ?? d.retriableStatusCodes;
  if (retryOn.includes('retriable-status-codes') && codes.length === 0) {
    p.add([...at, 'retriableStatusCodes'], 'is required when retryOn includes retriable-status-codes');
  }
  if (codes.length > 0 && !retryOn.includes('retriable-status-codes')) {
    p.add([...at, 'retriableStatusCodes'], 'is only used when retryOn includes retriable-status-codes');
  }
  const perTryTimeout = p.duration(raw.perTryTimeout, d.perTryTimeout, [...at, 'perTryTimeout']);
  if (timeout > 0 && perTryTimeout > timeout) {
    p.add([...at, 'perTryTimeout'], `is longer than the service timeout (${formatDuration(timeout)}), so it never fires`);
  }
  const base = p.duration(raw.backoff?.base, d.backoff.base, [...at, 'backoff', 'base'], true);
  // As with Envoy, the cap follows an explicit base (10x) unless it is explicit too.
  const max = p.duration(raw.backoff?.max, raw.backoff?.base !== undefined ? base * 10 : d.backoff.max, [...at, 'backoff', 'max'], true);
  if (max < base) p.add([...at, 'backoff', 'max'], 'must not be shorter than backoff.base');
  return {
    attempts: raw.attempts ?? d.attempts,
    perTryTimeout,
    retryOn: [...retryOn],
    retriableStatusCodes: [...codes],
    budget: {
      percent: raw.budget?.percent ?? d.budget.percent,
      minPerSecond: raw.budget?.minPerSecond ?? d.budget.minPerSecond,
    },
    backoff: { base, max },
  };
}

function buildCircuitBreaker(raw: NonNullable<RawTrafficPolicy['circuitBreaker']>, at: PathSegment[], p: Problems): CircuitBreakerPolicy {
  const d = DEFAULT_CIRCUIT_BREAKER;
  const openDuration = p.duration(raw.openDuration, d.openDuration, [...at, 'openDuration'], true);
  const maxOpenDuration = p.duration(raw.maxOpenDuration, Math.max(d.maxOpenDuration, openDuration), [...at, 'maxOpenDuration'], true);
  if (maxOpenDuration < openDuration) p.add([...at, 'maxOpenDuration'], 'must not be shorter than openDuration');
  return {
    consecutiveFailures: (raw.consecutiveFailures as number | undefined) ?? d.consecutiveFailures,
    openDuration,
    maxOpenDuration,
    halfOpenRequests: (raw.halfOpenRequests as number | undefined) ?? d.halfOpenRequests,
  };
}

function checkDuplicateNames(items: { name: string; namespace: string }[], kind: string, top: string, p: Problems): void {
  const seen = new Map<string, number>();
  for (const [i, item] of items.entries()) {
    const key = `${item.namespace}/${item.name}`;
    const first = seen.get(key);
    if (first !== undefined) p.add([top, i, 'name'], `duplicate ${kind} ${key} (also ${top}[${first}])`);
    else seen.set(key, i);
  }
}

function buildRequestAuthentications(raw: RawConfig, p: Problems, baseDir: string): RequestAuthentication[] {
  const list = raw.requestAuthentications ?? [];
  checkDuplicateNames(list, 'request authentication', 'requestAuthentications', p);
  return list.map((ra, i) => ({
    name: ra.name,
    namespace: ra.namespace,
    selector: { ...ra.selector },
    jwtRules: ra.jwtRules.map((r, j): JwtRule => {
      const at = ['requestAuthentications', i, 'jwtRules', j];
      if ((r.jwksFile === undefined) === (r.jwksUri === undefined)) {
        p.add(at, 'set exactly one of jwksFile or jwksUri');
      }
      const out: JwtRule = {
        issuer: r.issuer,
        audiences: [...(r.audiences ?? [])],
        forwardOriginalToken: r.forwardOriginalToken ?? true,
      };
      if (r.jwksFile !== undefined) out.jwksFile = resolve(baseDir, r.jwksFile);
      if (r.jwksUri !== undefined) out.jwksUri = r.jwksUri;
      if (r.fromHeader !== undefined) out.fromHeader = r.fromHeader.toLowerCase();
      return out;
    }),
  }));
}

const PATTERN_FIELDS = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces', 'requestPrincipals', 'notRequestPrincipals', 'hosts', 'notHosts', 'paths', 'notPaths'] as const;

function checkPolicyStrings(entry: PolicySource & PolicyOperation, at: PathSegment[], p: Problems): void {
  for (const field of PATTERN_FIELDS) {
    for (const [k, value] of (entry[field] ?? []).entries()) {
      const where = [...at, field, k];
      const bad = matchPatternProblem(value);
      if (bad) p.add(where, bad);
      else if ((field === 'principals' || field === 'notPrincipals') && value.startsWith('spiffe://')) {
        p.add(where, `write principals without "spiffe://" (e.g. ${value.slice('spiffe://'.length)})`);
      } else if ((field === 'paths' || field === 'notPaths') && !value.startsWith('/') && !value.startsWith('*')) {
        p.add(where, `"${value}": a path must start with / (or * for a suffix match)`);
      }
    }
  }
  for (const field of ['ipBlocks', 'notIpBlocks'] as const) {
    for (const [k, value] of (entry[field] ?? []).entries()) {
      if (!isIPv4Block(value)) p.add([...at, field, k], `must be an IPv4 address or CIDR block like 10.0.0.0/8 (got "${value}")`);
    }
  }
}

function buildPolicies(raw: RawConfig, p: Problems): AuthorizationPolicy[] {
  const list = raw.policies ?? [];
  checkDuplicateNames(list, 'policy', 'policies', p);
  return list.map((pol, i) => ({
    name: pol.name,
    namespace: pol.namespace,
    selector: { ...pol.selector },
    action: pol.action ?? 'ALLOW',
    rules: (pol.rules ?? []).map((rule, j): PolicyRule => {
      const at = ['policies', i, 'rules', j];
      (rule.from ?? []).forEach((src, k) => checkPolicyStrings(src, [...at, 'from', k], p));
      (rule.to ?? []).forEach((op, k) => checkPolicyStrings(op, [...at, 'to', k], p));
      return {
        from: (rule.from ?? []).map((src) => structuredClone(src)),
        to: (rule.to ?? []).map((op) => structuredClone(op)),
      };
    }),
  }));
}

// --- routes ------------------------------------------------------------------------------

interface RawRouteMatch {
  path?: { type?: PathMatchType; value: string };
  headers?: { type?: StringMatchType; name: string; value: string }[];
  queryParams?: { type?: StringMatchType; name: string; value: string }[];
  method?: string | { type?: StringMatchType; service?: string; method?: string };
}
interface RawPathModifier {
  type: 'ReplaceFullPath' | 'ReplacePrefixMatch';
  replaceFullPath?: string;
  replacePrefixMatch?: string;
}
interface RawHeaderModifier {
  set?: { name: string; value: string }[];
  add?: { name: string; value: string }[];
  remove?: string[];
}
interface RawRouteFilter {
  type: RouteFilter['type'];
  requestHeaderModifier?: RawHeaderModifier;
  responseHeaderModifier?: RawHeaderModifier;
  urlRewrite?: { hostname?: string; path?: RawPathModifier };
  requestRedirect?: { scheme?: 'http' | 'https'; hostname?: string; port?: number; path?: RawPathModifier; statusCode?: 301 | 302 | 303 | 307 | 308 };
  requestMirror?: { backendRef: { name: string; port?: number }; percent?: number };
}
export interface RawRoute {
  name: string;
  namespace: string;
  kind?: RouteKind;
  parentRefs: { name: string; port?: number }[];
  rules: {
    name?: string;
    matches?: RawRouteMatch[];
    filters?: RawRouteFilter[];
    backendRefs?: { name: string; port?: number; weight?: number }[];
    timeouts?: { request?: RawDuration; backendRequest?: RawDuration };
    retry?: { attempts?: number; codes?: number[]; backoff?: RawDuration };
    fault?: {
      delay?: { fixedDelay: RawDuration; percent?: number };
      abort?: { httpStatus: number; percent?: number };
    };
  }[];
}

/** The config key of each filter type. */
const FILTER_KEYS = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  URLRewrite: 'urlRewrite',
  RequestRedirect: 'requestRedirect',
  RequestMirror: 'requestMirror',
} as const;

/** Filters a GRPCRoute takes (Gateway API: no rewrite, no redirect). */
const GRPC_FILTERS = new Set<string>(['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestMirror']);

/** Route defaults (Gateway API's): a retry without codes retries these statuses. */
export const DEFAULT_ROUTE_RETRY_CODES = [500, 502, 503, 504];

function regexProblem(source: string): string | undefined {
  try {
    new RegExp(source);
    return undefined;
  } catch (err) {
    return `is not a valid regular expression: ${(err as Error).message}`;
  }
}

/**
 * `routes:`. What a route may name is checked against the services of the same file: a
 * parentRef must be a service (and port) of the route's namespace whose protocol fits the
 * kind. A backendRef is NOT checked: a backend that does not exist yet is a runtime state
 * (500 no_backend for that rule, Gateway API's ResolvedRefs=False), not a config error.
 */
export function buildRoutes(
  rawRoutes: readonly RawRoute[],
  services: readonly Service[],
  p: { add(path: readonly PathSegment[], message: string): void; duration(value: RawDuration | undefined, fallback: number, path: readonly PathSegment[], positive?: boolean): number },
  top: PathSegment[] = ['routes'],
): Route[] {
  const byKey = new Map(services.map((s) => [`${s.namespace}/${s.name}`, s]));
  const names = new Map<string, number>();
  /** `ns/svc:port` -> the kind attached there and where, so HTTP and TCP routes do not share a port. */
  const attached = new Map<string, { kind: RouteKind; at: string }>();
  return rawRoutes.map((r, i): Route => {
    const at = [...top, i];
    const kind: RouteKind = r.kind ?? 'HTTPRoute';
    const key = `${kind}/${r.namespace}/${r.name}`;
    const dup = names.get(key);
    if (dup !== undefined) p.add([...at, 'name'], `duplicate ${kind} ${r.namespace}/${r.name} (also ${formatPath([...top, dup])})`);
    else names.set(key, i);

    const parentRefs: RouteParentRef[] = r.parentRefs.map((ref, j) => {
      const pat = [...at, 'parentRefs', j];
      const svc = byKey.get(`${r.namespace}/${ref.name}`);
      const out: RouteParentRef = { name: ref.name };
      if (ref.port !== undefined) out.port = ref.port;
      if (!svc) {
        p.add([...pat, 'name'], `no service ${ref.name} in namespace ${r.namespace} (a route attaches to a service of its own namespace)`);
        return out;
      }
      const wanted: Protocol = kind === 'TCPRoute' ? 'tcp' : 'http';
      let ports = svc.ports;
      if (ref.port !== undefined) {
        const sp = svc.ports.find((x) => x.port === ref.port);
        if (!sp) {
          p.add([...pat, 'port'], `service ${ref.name} has no port ${ref.port} (it has ${svc.ports.map((x) => x.port).join(', ')})`);
          return out;
        }
        if (sp.protocol !== wanted) {
          p.add([...pat, 'port'], `${kind} needs a ${wanted} port; ${ref.name} port ${ref.port} is ${sp.protocol}`);
          return out;
        }
        ports = [sp];
      } else {
        ports = svc.ports.filter((x) => x.protocol === wanted);
        if (ports.length === 0) p.add([...pat, 'name'], `${kind} needs a ${wanted} port; service ${ref.name} has none`);
      }
      for (const sp of ports) {
        const portKey = `${r.namespace}/${ref.name}:${sp.port}`;
        const other = attached.get(portKey);
        const here = formatPath(pat);
        if (other && other.kind !== kind) p.add(pat, `${ref.name} port ${sp.port} already has a ${other.kind} (${other.at}); one port takes one kind of route`);
        else if (!other) attached.set(portKey, { kind, at: here });
      }
      return out;
    });

    const ruleNames = new Map<string, number>();
    const rules = r.rules.map((rule, j): RouteRule => {
      const rat = [...at, 'rules', j];
      if (rule.name !== undefined) {
        const first = ruleNames.get(rule.name);
        if (first !== undefined) p.add([...rat, 'name'], `duplicate rule name ${rule.name} (also rules[${first}])`);
        else ruleNames.set(rule.name, j);
      }
      const out: RouteRule = {
        matches: (rule.matches ?? []).map((m, k) => buildRouteMatch(m, kind, [...rat, 'matches', k], p)),
        filters: buildRouteFilters(rule.filters ?? [], kind, rule, [...rat, 'filters'], p),
        backendRefs: (rule.backendRefs ?? []).map((b) => {
          const ref: RouteBackendRef = { name: b.name, weight: b.weight ?? 1 };
          if (b.port !== undefined) ref.port = b.port;
          return ref;
        }),
      };
      if (rule.name !== undefined) out.name = rule.name;
      if (kind === 'TCPRoute') {
        for (const k of ['matches', 'filters', 'timeouts', 'retry', 'fault'] as const) {
          if (rule[k] !== undefined) p.add([...rat, k], 'a TCPRoute rule takes only backendRefs (a connection has no request to match or filter)');
        }
        if (out.backendRefs.length === 0) p.add([...rat, 'backendRefs'], 'a TCPRoute rule needs at least one backendRef');
        if (j > 0) p.add(rat, 'a TCPRoute takes one rule (its connections have nothing to choose a rule by)');
        return out;
      }
      if (rule.timeouts) {
        const tat = [...rat, 'timeouts'];
        const request = p.duration(rule.timeouts.request, 0, [...tat, 'request']);
        const backendRequest = p.duration(rule.timeouts.backendRequest, 0, [...tat, 'backendRequest']);
        if (request > 0 && backendRequest > request) p.add([...tat, 'backendRequest'], 'must not be longer than timeouts.request');
        out.timeouts = {};
        if (rule.timeouts.request !== undefined) out.timeouts.request = request;
        if (rule.timeouts.backendRequest !== undefined) out.timeouts.backendRequest = backendRequest;
      }
      if (rule.retry) {
        out.retry = {
          attempts: rule.retry.attempts ?? 1,
          codes: [...(rule.retry.codes ?? DEFAULT_ROUTE_RETRY_CODES)],
          backoff: p.duration(rule.retry.backoff, 25, [...rat, 'retry', 'backoff']),
        };
      }
      if (rule.fault) {
        const fault: RouteFault = {};
        if (rule.fault.delay) {
          fault.delay = {
            fixedDelay: p.duration(rule.fault.delay.fixedDelay, 0, [...rat, 'fault', 'delay', 'fixedDelay'], true),
            percent: rule.fault.delay.percent ?? 100,
          };
        }
        if (rule.fault.abort) fault.abort = { httpStatus: rule.fault.abort.httpStatus, percent: rule.fault.abort.percent ?? 100 };
        out.fault = fault;
      }
      return out;
    });
    return { name: r.name, namespace: r.namespace, kind, parentRefs, rules };
  });
}

function buildRouteMatch(m: RawRouteMatch, kind: RouteKind, at: PathSegment[], p: { add(path: readonly PathSegment[], message: string): void }): RouteMatch {
  const out: RouteMatch = { headers: [], queryParams: [] };
  if (m.path !== undefined) {
    const type = m.path.type ?? 'PathPrefix';
    if (kind === 'GRPCRoute') p.add([...at, 'path'], 'a GRPCRoute matches method: { service, method }, not a path');
    else if (type === 'RegularExpression') {
      const bad = regexProblem(m.path.value);
      if (bad) p.add([...at, 'path', 'value'], bad);
    } else if (!m.path.value.startsWith('/')) p.add([...at, 'path', 'value'], `must be an absolute path, starting with / (got "${m.path.value}")`);
    else if (/[?#]/.test(m.path.value)) p.add([...at, 'path', 'value'], 'must not contain ? or # (match query parameters with queryParams)');
    out.path = { type, value: m.path.value };
  }
  const seenHeaders = new Set<string>();
  (m.headers ?? []).forEach((h, k) => {
    const type = h.type ?? 'Exact';
    const name = h.name.toLowerCase();
    if (seenHeaders.has(name)) p.add([...at, 'headers', k, 'name'], `header ${h.name} is matched twice in one match`);
    seenHeaders.add(name);
    if (type === 'RegularExpression') {
      const bad = regexProblem(h.value);
      if (bad) p.add([...at, 'headers', k, 'value'], bad);
    }
    out.headers.push({ type, name, value: h.value });
  });
  const seenParams = new Set<string>();
  (m.queryParams ?? []).forEach((q, k) => {
    const type = q.type ?? 'Exact';
    if (kind === 'GRPCRoute') p.add([...at, 'queryParams'], 'a GRPCRoute has no query parameters');
    if (seenParams.has(q.name)) p.add([...at, 'queryParams', k, 'name'], `query parameter ${q.name} is matched twice in one match`);
    seenParams.add(q.name);
    if (type === 'RegularExpression') {
      const bad = regexProblem(q.value);
      if (bad) p.add([...at, 'queryParams', k, 'value'], bad);
    }
    out.queryParams.push({ type, name: q.name, value: q.value });
  });
  if (m.method !== undefined) {
    if (typeof m.method === 'string') {
      if (kind === 'GRPCRoute') p.add([...at, 'method'], 'a GRPCRoute matches method: { service, method } (got an HTTP method)');
      else out.method = m.method;
    } else if (kind !== 'GRPCRoute') {
      p.add([...at, 'method'], `${kind} matches an HTTP method like GET; { service, method } is for a GRPCRoute`);
    } else {
      const type = m.method.type ?? 'Exact';
      const grpc: NonNullable<RouteMatch['grpc']> = { type };
      for (const k of ['service', 'method'] as const) {
        const v = m.method[k];
        if (v === undefined) continue;
        if (type === 'RegularExpression') {
          const bad = regexProblem(v);
          if (bad) p.add([...at, 'method', k], bad);
        } else if (/[/\s]/.test(v)) p.add([...at, 'method', k], `must not contain "/" or spaces (got "${v}")`);
        grpc[k] = v;
      }
      out.grpc = grpc;
    }
  }
  return out;
}

function buildHeaderModifier(raw: RawHeaderModifier, at: PathSegment[], p: { add(path: readonly PathSegment[], message: string): void }): HeaderModifier {
  for (const k of ['set', 'add'] as const) {
    const seen = new Map<string, number>();
    (raw[k] ?? []).forEach((h, i) => {
      const n = h.name.toLowerCase();
      const first = seen.get(n);
      if (first !== undefined) p.add([...at, k, i, 'name'], `header ${h.name} is listed twice (also ${k}[${first}])`);
      else seen.set(n, i);
    });
  }
  return {
    set: (raw.set ?? []).map((h) => ({ name: h.name, value: h.value })),
    add: (raw.add ?? []).map((h) => ({ name: h.name, value: h.value })),
    remove: [...(raw.remove ?? [])],
  };
}

function buildPathModifier(raw: RawPathModifier, at: PathSegment[], matches: RawRouteMatch[] | undefined, p: { add(path: readonly PathSegment[], message: string): void }): PathModifier | undefined {
  if (raw.type === 'ReplaceFullPath') {
    if (raw.replacePrefixMatch !== undefined) p.add([...at, 'replacePrefixMatch'], 'is for type ReplacePrefixMatch; type ReplaceFullPath takes replaceFullPath');
    if (raw.replaceFullPath === undefined) {
      p.add([...at, 'replaceFullPath'], 'is required with type ReplaceFullPath');
      return undefined;
    }
    return { type: 'ReplaceFullPath', replaceFullPath: raw.replaceFullPath };
  }
  if (raw.replaceFullPath !== undefined) p.add([...at, 'replaceFullPath'], 'is for type ReplaceFullPath; type ReplacePrefixMatch takes replacePrefixMatch');
  if (raw.replacePrefixMatch === undefined) {
    p.add([...at, 'replacePrefixMatch'], 'is required with type ReplacePrefixMatch');
    return undefined;
  }
  // Gateway API: the prefix replaced is the one matched, so every match must be a PathPrefix.
  if (matches?.length !== 1 || matches[0]!.path === undefined || (matches[0]!.path.type ?? 'PathPrefix') !== 'PathPrefix') {
    p.add([...at, 'type'], 'ReplacePrefixMatch needs exactly one match in the rule, with a path of type PathPrefix (the prefix it replaces)');
  }
  return { type: 'ReplacePrefixMatch', replacePrefixMatch: raw.replacePrefixMatch };
}

function buildRouteFilters(raw: RawRouteFilter[], kind: RouteKind, rule: RawRoute['rules'][number], at: PathSegment[], p: { add(path: readonly PathSegment[], message: string): void }): RouteFilter[] {
  const out: RouteFilter[] = [];
  const seen = new Map<string, number>();
  raw.forEach((f, i) => {
    const fat = [...at, i];
    const key = FILTER_KEYS[f.type];
    for (const other of Object.values(FILTER_KEYS)) {
      if (other !== key && f[other] !== undefined) p.add([...fat, other], `does not belong to a filter of type ${f.type} (which takes ${key})`);
    }
    if (kind === 'GRPCRoute' && !GRPC_FILTERS.has(f.type)) {
      p.add([...fat, 'type'], `a GRPCRoute takes ${[...GRPC_FILTERS].join(', ')} filters, not ${f.type}`);
      return;
    }
    if (f.type !== 'RequestMirror') {
      const first = seen.get(f.type);
      if (first !== undefined) p.add([...fat, 'type'], `${f.type} is used twice in one rule (also filters[${first}])`);
      else seen.set(f.type, i);
    }
    if (f[key] === undefined) {
      p.add([...fat, key], `is required with type ${f.type}`);
      return;
    }
    switch (f.type) {
      case 'RequestHeaderModifier':
        out.push({ type: f.type, requestHeaderModifier: buildHeaderModifier(f.requestHeaderModifier!, [...fat, key], p) });
        break;
      case 'ResponseHeaderModifier':
        out.push({ type: f.type, responseHeaderModifier: buildHeaderModifier(f.responseHeaderModifier!, [...fat, key], p) });
        break;
      case 'URLRewrite': {
        const u = f.urlRewrite!;
        const rewrite: { hostname?: string; path?: PathModifier } = {};
        if (u.hostname !== undefined) rewrite.hostname = u.hostname;
        if (u.path) {
          const pm = buildPathModifier(u.path, [...fat, key, 'path'], rule.matches, p);
          if (pm) rewrite.path = pm;
        }
        out.push({ type: f.type, urlRewrite: rewrite });
        break;
      }
      case 'RequestRedirect': {
        const r = f.requestRedirect!;
        const redirect: Extract<RouteFilter, { type: 'RequestRedirect' }>['requestRedirect'] = { statusCode: r.statusCode ?? 302 };
        if (r.scheme !== undefined) redirect.scheme = r.scheme;
        if (r.hostname !== undefined) redirect.hostname = r.hostname;
        if (r.port !== undefined) redirect.port = r.port;
        if (r.path) {
          const pm = buildPathModifier(r.path, [...fat, key, 'path'], rule.matches, p);
          if (pm) redirect.path = pm;
        }
        if (rule.backendRefs?.length) p.add([...fat, 'type'], 'a RequestRedirect answers the request itself: the rule must not have backendRefs');
        if (seen.has('URLRewrite') || raw.some((x) => x.type === 'URLRewrite')) p.add([...fat, 'type'], 'RequestRedirect and URLRewrite cannot be used in the same rule');
        out.push({ type: f.type, requestRedirect: redirect });
        break;
      }
      case 'RequestMirror': {
        const m = f.requestMirror!;
        const backendRef: { name: string; port?: number } = { name: m.backendRef.name };
        if (m.backendRef.port !== undefined) backendRef.port = m.backendRef.port;
        out.push({ type: f.type, requestMirror: { backendRef, percent: m.percent ?? 100 } });
        break;
      }
    }
  });
  return out;
}
