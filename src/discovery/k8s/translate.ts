/**
 * Kubernetes objects -> the raw, YAML-shaped mesh config that the file loader validates
 * (`parseConfig`). Pure functions over the informer caches; no I/O.
 *
 * The mapping (README "Kubernetes" section has the user-facing version):
 * - Namespace -> `namespaces[]` (every namespace; meshed ones carry `weft.io/mesh: enabled`).
 * - Pod -> `workloads[]` when its namespace is meshed (anywhere in the cluster: a meshed pod's
 *   IP is a capture destination even when no Service selects it) or when an EndpointSlice
 *   lists it (a non-meshed backend of a Service). Pods without an IPv4 address and finished
 *   pods are left out; so are host-network pods (their address and cgroup are the node's),
 *   and the Services they back are not captured at all. Two pods with one IP (a terminating
 *   pod whose address was reused): the live, newest one keeps it. `serviceAccount` (the SPIFFE
 *   identity) comes from the pod spec; `weight` from the `weft.io/weight` annotation; `ready`
 *   from the EndpointSlice conditions that list the pod (all must say ready and not
 *   terminating), or from the pod's Ready condition when none does; `cgroup` only for pods of
 *   this node, once the resolver has found the directory.
 * - Service -> `services[]` when it has a ClusterIP and a selector (headless, ExternalName and
 *   selector-less Services, like `default/kubernetes`, are left alone: capture must not
 *   redirect a destination whose endpoints weft cannot know). TCP ports only; `appProtocol`
 *   (`http`; `http2` or `kubernetes.io/h2c` -> http2; `grpc`; anything else tcp), else the
 *   port name (`grpc`/`grpc-*`, `http2`/`http2-*`, `http`/`http-*`) gives the protocol,
 *   default tcp. A named `targetPort` resolves from the Service's EndpointSlices (which carry
 *   the resolved number under the Service port's name), else from the selected pods'
 *   container ports; a port that cannot be resolved yet is left out until it can.
 * - TrafficPolicy (weft.io/v1alpha1) -> the `trafficPolicy` of the Service `spec.targetRef`
 *   names, in the policy's namespace. Two policies for one Service: the oldest wins, the other
 *   is rejected.
 * - AuthorizationPolicy, RequestAuthentication -> `policies[]`, `requestAuthentications[]`: the
 *   spec is the file format's entry without name/namespace.
 * - Node -> `nodes[]` (sorted by name), where its agent is reached: the first IPv4 InternalIP
 *   of `status.addresses`, else the first IPv4 ExternalIP (the rule the kubelet uses for a
 *   pod's `status.hostIP`, which the DaemonSet passes as NODE_IP, so a node's entry is the
 *   address its own agent binds). Every node with such an address is listed, this one too
 *   (the loader checks that it agrees with `node.address` and drops it, as for a file); a node
 *   without one is left out with a warning. Two nodes with one address (a stale Node object
 *   whose address a new node took): this node keeps its own, else the newest node keeps it.
 */
import type { KubernetesObject, V1EndpointSlice, V1Namespace, V1Node, V1Pod, V1Service } from '@kubernetes/client-node';
import { isIPv4 } from '../../config/patterns.js';
import type { Protocol } from '../../config/types.js';
import { MESH_LABEL, MESH_LABEL_ENABLED } from '../../config/types.js';
import { routeOrder, translateRoute, type GatewayRouteKind, type RouteObject } from './routes.js';

export const WEIGHT_ANNOTATION = 'weft.io/weight';
export const PEER_AUTH_LABEL = 'weft.io/peer-authentication';
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

/** A weft custom resource as the API returns it. */
export interface CustomObject extends KubernetesObject {
  spec?: unknown;
}

/** What the informer caches hold. */
export interface ClusterState {
  namespaces: readonly V1Namespace[];
  pods: readonly V1Pod[];
  services: readonly V1Service[];
  endpointSlices: readonly V1EndpointSlice[];
  trafficPolicies: readonly CustomObject[];
  authorizationPolicies: readonly CustomObject[];
  requestAuthentications: readonly CustomObject[];
  nodes: readonly V1Node[];
  /** Gateway API routes and weft FaultInjections (absent or empty when their CRDs are not installed). */
  httpRoutes?: readonly RouteObject[];
  grpcRoutes?: readonly RouteObject[];
  tcpRoutes?: readonly RouteObject[];
  faultInjections?: readonly CustomObject[];
}

export interface TranslateContext {
  nodeName: string;
  /** This node's address (NODE_IP): no other Node may claim it. */
  nodeAddress?: string;
  /** The resolved cgroup directory of a local pod, by UID. */
  cgroupOf(uid: string): string | undefined;
  /** Objects to leave out (keys from `objectKey`): invalid ones found by an earlier attempt. */
  exclude?: ReadonlySet<string>;
  /**
   * AuthorizationPolicies found invalid by an earlier attempt: each is replaced by an ALLOW
   * policy with no rules for the same selector, which allows nothing to the workloads it
   * selects. Leaving an invalid policy out would fail open (an ALLOW policy that was the only
   * one selecting a workload, or any DENY policy); Istio fails closed here too.
   */
  failClosed?: ReadonlySet<string>;
}

/** The Kubernetes object an entry of the raw config came from. */
export interface Origin {
  kind: string;
  namespace?: string;
  name: string;
  uid?: string;
  resourceVersion?: string;
}

/** `Kind ns/name` (or `Kind name`): the key for exclusion and for messages. */
export function objectKey(o: Origin): string {
  return o.namespace ? `${o.kind} ${o.namespace}/${o.name}` : `${o.kind} ${o.name}`;
}

function originOf(kind: string, obj: KubernetesObject): Origin {
  return {
    kind,
    namespace: obj.metadata?.namespace,
    name: obj.metadata?.name ?? '',
    uid: obj.metadata?.uid,
    resourceVersion: obj.metadata?.resourceVersion,
  };
}

export interface RawWorkload {
  name: string;
  namespace: string;
  /** The owning workload's name (workloadOfPod). */
  workload?: string;
  node: string;
  ip: string;
  serviceAccount?: string;
  labels: Record<string, string>;
  weight: number;
  ready: boolean;
  /** A pod of another node, from an EndpointSlice: its service account is learnt from its agent. */
  peerIdentity?: boolean;
  cgroup?: string;
  uid?: string;
  probePorts?: number[];
}

export interface RawService {
  name: string;
  namespace: string;
  vip: string;
  ports: { name?: string; port: number; targetPort: number; protocol?: Protocol }[];
  selector: Record<string, string>;
  trafficPolicy: Record<string, unknown>;
}

/** The dynamic part of the raw config (the static part comes from the agent's flags). */
export interface RawMeshState {
  namespaces: { name: string; labels: Record<string, string> }[];
  workloads: RawWorkload[];
  services: RawService[];
  policies: Record<string, unknown>[];
  requestAuthentications: Record<string, unknown>[];
  nodes: { name: string; address: string }[];
  routes: Record<string, unknown>[];
}

/** For each entry of each list of `RawMeshState`, where it came from. */
export interface Origins {
  namespaces: Origin[];
  workloads: Origin[];
  services: Origin[];
  /** The TrafficPolicy behind `services[i].trafficPolicy`, if any. */
  trafficPolicies: (Origin | undefined)[];
  policies: Origin[];
  requestAuthentications: Origin[];
  nodes: Origin[];
  routes: Origin[];
}

export interface Translation {
  raw: RawMeshState;
  origins: Origins;
  /** Objects refused before validation (conflicts, malformed references), with their problems. */
  rejected: { origin: Origin; problems: string[] }[];
  /** Non-fatal oddities worth a log line (bad annotations, unresolved named ports). */
  warnings: string[];
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The first IPv4 address among `ips` (weft captures IPv4 only: connect4). */
function pickIp(...ips: (string | undefined)[]): string | undefined {
  return ips.find((ip): ip is string => !!ip && isIPv4(ip));
}

/**
 * The ports the kubelet probes (readiness, liveness, startup; httpGet, tcpSocket, grpc) of
 * every container, a named port resolved against that container's ports. Strict ingress
 * admits the node address to these only. Exec probes have no port; a probe with `host` set
 * is sent elsewhere, not to the pod.
 */
export function probePorts(pod: V1Pod): number[] {
  const out = new Set<number>();
  for (const c of pod.spec?.containers ?? []) {
    for (const probe of [c.readinessProbe, c.livenessProbe, c.startupProbe]) {
      if (!probe) continue;
      const ports: (number | string | undefined)[] = [];
      if (probe.httpGet && !probe.httpGet.host) ports.push(probe.httpGet.port as number | string);
      if (probe.tcpSocket && !probe.tcpSocket.host) ports.push(probe.tcpSocket.port as number | string);
      if (probe.grpc) ports.push(probe.grpc.port);
      for (const p of ports) {
        const n = typeof p === 'string' ? (/^\d+$/.test(p) ? Number(p) : c.ports?.find((cp) => cp.name === p)?.containerPort) : p;
        if (n !== undefined && Number.isInteger(n) && n >= 1 && n <= 65535) out.add(n);
      }
    }
  }
  return [...out].sort((a, b) => a - b);
}

function podIp(pod: V1Pod): string | undefined {
  return pickIp(pod.status?.podIP, ...(pod.status?.podIPs ?? []).map((p) => p.ip));
}

/** The mTLS mode label, normalized: anything but `permissive` is strict (fail closed). */
export function peerAuthenticationOf(labels: Record<string, string> | undefined): 'strict' | 'permissive' {
  return labels?.[PEER_AUTH_LABEL]?.toLowerCase() === 'permissive' ? 'permissive' : 'strict';
}

/** `appProtocol` values that mean HTTP (the loader's port-name rule covers the rest). */
/** appProtocol -> protocol (DESIGN.md "Protocols"); any other value is TCP. */
const APP_PROTOCOLS: Readonly<Record<string, Protocol>> = { http: 'http', http2: 'http2', 'kubernetes.io/h2c': 'http2', grpc: 'grpc' };

/**
 * The protocol of a Service port from its `appProtocol`; undefined leaves it to the loader's
 * port-name convention (`http`, `http-*`, `http2*`, `grpc*` are HTTP; anything else TCP), so a
 * port reads the same in a file and in Kubernetes.
 */
function protocolOf(appProtocol: string | undefined): Protocol | undefined {
  if (!appProtocol) return undefined;
  return Object.hasOwn(APP_PROTOCOLS, appProtocol.toLowerCase()) ? APP_PROTOCOLS[appProtocol.toLowerCase()]! : 'tcp';
}

function labelsMatch(selector: Record<string, string>, labels: Record<string, string> | undefined): boolean {
  for (const [k, v] of Object.entries(selector)) if (labels?.[k] !== v) return false;
  return true;
}

function creationMs(o: KubernetesObject): number {
  const t = o.metadata?.creationTimestamp as unknown;
  if (t instanceof Date) return t.getTime();
  const ms = typeof t === 'string' ? Date.parse(t) : NaN;
  return Number.isNaN(ms) ? 0 : ms;
}

/** Address types a node is reached at, in order of preference (IPv4 only). */
const NODE_ADDRESS_TYPES = ['InternalIP', 'ExternalIP'] as const;

/** Where a node's agent is reached: its first IPv4 InternalIP, else its first IPv4 ExternalIP. */
export function nodeAddressOf(node: V1Node): string | undefined {
  const addresses = node.status?.addresses ?? [];
  for (const type of NODE_ADDRESS_TYPES) {
    const a = addresses.find((x) => x.type === type && isIPv4(x.address));
    if (a) return a.address;
  }
  return undefined;
}

/**
 * Keep only what translation reads from a Node: its name, its InternalIP/ExternalIP addresses
 * and its creationTimestamp (which of two nodes claiming one address is newer), plus the
 * resourceVersion the cache needs. A full Node (images, conditions, capacity) is kilobytes.
 */
export function trimNode(node: V1Node): V1Node {
  const m = node.metadata ?? {};
  return {
    apiVersion: node.apiVersion,
    kind: node.kind,
    metadata: { name: m.name, resourceVersion: m.resourceVersion, creationTimestamp: m.creationTimestamp },
    status: {
      addresses: (node.status?.addresses ?? []).filter((a) => (NODE_ADDRESS_TYPES as readonly string[]).includes(a.type)).map((a) => ({ type: a.type, address: a.address })),
    },
  } as V1Node;
}

/**
 * What of a (trimmed) Node translation depends on: an update that leaves it unchanged (a
 * kubelet status report, a label) needs no rebuild.
 */
export function nodeFingerprint(node: V1Node): string {
  // creationMs: a listed Node has a Date here, a watched one the API's string.
  return JSON.stringify([creationMs(node), nodeAddressOf(node) ?? null]);
}

/**
 * The workload a pod belongs to (DESIGN.md "Metric labels"), from its controller reference:
 * a ReplicaSet's pods belong to its Deployment (the ReplicaSet is `<deployment>-<pod-template-hash>`,
 * the hash also being the pod's `pod-template-hash` label; a ReplicaSet made by hand keeps its
 * own name); StatefulSet, DaemonSet and Job pods to those; a Job that a CronJob made
 * (`<cronjob>-<minutes since epoch>`) to the CronJob. A pod with no controller is its own workload.
 */
export function workloadOfPod(pod: V1Pod): string {
  const name = pod.metadata?.name ?? '';
  const owner = pod.metadata?.ownerReferences?.find((o) => o.controller) ?? pod.metadata?.ownerReferences?.[0];
  if (!owner?.name) return name;
  switch (owner.kind) {
    case 'ReplicaSet': {
      const hash = pod.metadata?.labels?.['pod-template-hash'];
      return hash && owner.name.endsWith(`-${hash}`) ? owner.name.slice(0, -hash.length - 1) : owner.name;
    }
    case 'Job': {
      const m = /^(.+)-\d{8,}$/.exec(owner.name);
      return m ? m[1]! : owner.name;
    }
    default:
      return owner.name;
  }
}

/** Characters of the random and hash suffixes Kubernetes appends to names (rand.SafeEncodeString). */
const SUFFIX = '[bcdfghjklmnpqrstvwxz2456789]';
const CRONJOB_POD = new RegExp(`^(.+)-\\d{8,}-${SUFFIX}{5}$`);
const DEPLOYMENT_POD = new RegExp(`^(.+)-${SUFFIX}{6,10}-${SUFFIX}{5}$`);
const GENERATED_POD = new RegExp(`^(.+)-${SUFFIX}{5}$`);
const STATEFUL_POD = /^(.+)-\d+$/;

/**
 * The workload of a pod known by name only (a remote endpoint: its owner references are on the
 * Pod, which this agent does not watch), from the names controllers give their pods: a
 * CronJob's `<cronjob>-<minutes>-<5>`, a Deployment's `<deployment>-<pod-template-hash>-<5>`,
 * a DaemonSet's or Job's `<name>-<5>`, a StatefulSet's `<name>-<ordinal>`; else the pod's own
 * name. Only for metric labels: a bare pod whose name has one of these shapes is labelled as
 * if a controller made it.
 */
export function workloadOfPodName(name: string): string {
  for (const re of [CRONJOB_POD, DEPLOYMENT_POD, GENERATED_POD, STATEFUL_POD]) {
    const m = re.exec(name);
    if (m) return m[1]!;
  }
  return name;
}

/**
 * Keep only what translation reads from a Pod: cluster-wide pod caches are the agent's
 * largest memory cost, and a full Pod object is 10-50x larger than this.
 */
export function trimPod(pod: V1Pod): V1Pod {
  const m = pod.metadata ?? {};
  const annotations: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.annotations ?? {})) if (k.startsWith('weft.io/')) annotations[k] = v;
  return {
    apiVersion: pod.apiVersion,
    kind: pod.kind,
    metadata: {
      name: m.name,
      namespace: m.namespace,
      uid: m.uid,
      resourceVersion: m.resourceVersion,
      labels: m.labels,
      annotations,
      // Only the controller reference: it names the pod's workload (workloadOfPod).
      ownerReferences: (m.ownerReferences ?? []).filter((o) => o.controller).map((o) => ({ apiVersion: o.apiVersion, kind: o.kind, name: o.name, uid: o.uid, controller: true })),
      creationTimestamp: m.creationTimestamp,
      deletionTimestamp: m.deletionTimestamp,
    },
    spec: {
      nodeName: pod.spec?.nodeName,
      serviceAccountName: pod.spec?.serviceAccountName,
      hostNetwork: pod.spec?.hostNetwork,
      containers: (pod.spec?.containers ?? []).map((c) => ({
        name: c.name,
        ports: c.ports,
        // The probes, for their ports (strict ingress admits the kubelet there only).
        ...(c.readinessProbe && { readinessProbe: c.readinessProbe }),
        ...(c.livenessProbe && { livenessProbe: c.livenessProbe }),
        ...(c.startupProbe && { startupProbe: c.startupProbe }),
      })),
    },
    status: {
      phase: pod.status?.phase,
      podIP: pod.status?.podIP,
      podIPs: pod.status?.podIPs,
      qosClass: pod.status?.qosClass,
      conditions: (pod.status?.conditions ?? []).filter((c) => c.type === 'Ready'),
    },
  } as V1Pod;
}

/** An invalid policy's selector when it is a valid label map, else `{}` (the whole namespace). */
function safeSelector(spec: unknown): Record<string, string> {
  const sel = isObject(spec) ? spec.selector : undefined;
  if (!isObject(sel) || !Object.values(sel).every((v) => typeof v === 'string')) return {};
  return { ...(sel as Record<string, string>) };
}

/** Build the raw config from the caches. */
export function translate(state: ClusterState, ctx: TranslateContext): Translation {
  const exclude = ctx.exclude ?? new Set<string>();
  const skip = (kind: string, o: KubernetesObject) => exclude.has(objectKey(originOf(kind, o)));
  const warnings: string[] = [];
  const rejected: Translation['rejected'] = [];
  const raw: RawMeshState = { namespaces: [], workloads: [], services: [], policies: [], requestAuthentications: [], nodes: [], routes: [] };
  const origins: Origins = {
    namespaces: [],
    workloads: [],
    services: [],
    trafficPolicies: [],
    policies: [],
    requestAuthentications: [],
    nodes: [],
    routes: [],
  };

  // Nodes: where each one's agent is reached.
  const nodeByAddress = new Map<string, { node: V1Node; name: string }>();
  const nodeRank = (name: string, n: V1Node) => (name === ctx.nodeName ? 1 : 0) * 1e15 + creationMs(n);
  for (const node of state.nodes) {
    const name = node.metadata?.name;
    if (!name || skip('Node', node)) continue;
    const address = nodeAddressOf(node);
    if (!address) {
      warnings.push(`Node ${name}: no IPv4 InternalIP or ExternalIP; left out of nodes (its pods cannot be tunnelled to)`);
      continue;
    }
    if (address === ctx.nodeAddress && name !== ctx.nodeName) {
      warnings.push(`Node ${name}: address ${address} is this node's (${ctx.nodeName}); left out of nodes`);
      continue;
    }
    const other = nodeByAddress.get(address);
    if (other) {
      const [keep, drop] =
        nodeRank(other.name, other.node) > nodeRank(name, node) || (nodeRank(other.name, other.node) === nodeRank(name, node) && other.name < name) ? [other.name, name] : [name, other.name];
      const why = keep === ctx.nodeName ? 'this node' : 'the newer one';
      warnings.push(`Node ${drop}: address ${address} is also Node ${keep}'s, which keeps it (${why}); left out of nodes`);
      if (keep === other.name) continue;
    }
    nodeByAddress.set(address, { node, name });
  }
  for (const { node, name } of [...nodeByAddress.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    raw.nodes.push({ name, address: nodeAddressOf(node)! });
    origins.nodes.push(originOf('Node', node));
  }

  // Namespaces.
  const meshed = new Set<string>();
  for (const ns of state.namespaces) {
    const name = ns.metadata?.name;
    if (!name || skip('Namespace', ns)) continue;
    const labels = { ...(ns.metadata?.labels ?? {}) };
    if (labels[PEER_AUTH_LABEL] !== undefined) {
      const mode = peerAuthenticationOf(labels);
      if (labels[PEER_AUTH_LABEL] !== mode) {
        warnings.push(`Namespace ${name}: label ${PEER_AUTH_LABEL}="${labels[PEER_AUTH_LABEL]}" is not strict|permissive; using strict`);
        labels[PEER_AUTH_LABEL] = mode;
      }
    }
    if (labels[MESH_LABEL] === MESH_LABEL_ENABLED) meshed.add(name);
    raw.namespaces.push({ name, labels });
    origins.namespaces.push(originOf('Namespace', ns));
  }

  // EndpointSlice conditions per pod, and resolved port numbers per service port name.
  const podReady = new Map<string, boolean>();
  const slicePorts = new Map<string, Map<string, number>>();
  const podServices = new Map<string, string[]>();
  for (const slice of state.endpointSlices) {
    const ns = slice.metadata?.namespace ?? '';
    const svc = slice.metadata?.labels?.[SERVICE_NAME_LABEL];
    if (svc) {
      const ports = slicePorts.get(`${ns}/${svc}`) ?? new Map<string, number>();
      for (const p of slice.ports ?? []) if (p.port !== undefined) ports.set(p.name ?? '', p.port);
      slicePorts.set(`${ns}/${svc}`, ports);
    }
    for (const ep of slice.endpoints ?? []) {
      const ref = ep.targetRef;
      if (ref?.kind !== 'Pod' || !ref.name) continue;
      const key = `${ref.namespace ?? ns}/${ref.name}`;
      if (svc) podServices.set(key, [...(podServices.get(key) ?? []), `${ns}/${svc}`]);
      const ready = (ep.conditions?.ready ?? true) && !(ep.conditions?.terminating ?? false);
      podReady.set(key, (podReady.get(key) ?? true) && ready);
    }
  }

  // Pods -> workloads.
  const podsByNs = new Map<string, V1Pod[]>();
  /** Services that host-network pods back: weft cannot represent their endpoints. */
  const hostNetworkBacked = new Set<string>();
  const candidates: { pod: V1Pod; workload: RawWorkload }[] = [];
  for (const pod of state.pods) {
    const name = pod.metadata?.name;
    const ns = pod.metadata?.namespace;
    if (!name || !ns || skip('Pod', pod)) continue;
    const list = podsByNs.get(ns) ?? [];
    list.push(pod);
    podsByNs.set(ns, list);

    const key = `${ns}/${name}`;
    const inSlice = podReady.has(key);
    if (pod.spec?.hostNetwork) {
      // The node's address and cgroup tree: neither an endpoint weft can route to by pod IP
      // nor a pod it can capture.
      for (const svc of podServices.get(key) ?? []) hostNetworkBacked.add(svc);
      continue;
    }
    const ip = podIp(pod);
    const phase = pod.status?.phase;
    if (!ip || phase === 'Succeeded' || phase === 'Failed') continue;
    if (!meshed.has(ns) && !inSlice) continue;

    let weight = 1;
    const w = pod.metadata?.annotations?.[WEIGHT_ANNOTATION];
    if (w !== undefined) {
      const n = Number(w.trim());
      if (w.trim() !== '' && Number.isInteger(n) && n >= 1 && n <= 1_000_000) weight = n;
      else warnings.push(`Pod ${key}: annotation ${WEIGHT_ANNOTATION}="${w}" is not an integer from 1 to 1000000; using 1`);
    }
    const condReady = pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true && !pod.metadata?.deletionTimestamp;
    const workload: RawWorkload = {
      name,
      namespace: ns,
      node: pod.spec?.nodeName ?? '',
      ip,
      serviceAccount: pod.spec?.serviceAccountName || 'default',
      labels: { ...(pod.metadata?.labels ?? {}) },
      weight,
      ready: inSlice ? podReady.get(key)! : condReady,
    };
    const owner = workloadOfPod(pod);
    if (owner !== name) workload.workload = owner;
    const uid = pod.metadata?.uid;
    if (uid && pod.spec?.nodeName === ctx.nodeName) {
      const cg = ctx.cgroupOf(uid);
      if (cg) workload.cgroup = cg;
    }
    if (uid) workload.uid = uid;
    const probes = probePorts(pod);
    if (probes.length) workload.probePorts = probes;
    candidates.push({ pod, workload });
  }
  // Pods of other nodes: not watched (the agent watches its own node's pods only); their
  // endpoints come from the EndpointSlices. What a slice endpoint gives: address, node,
  // readiness (above), the pod's name and namespace (targetRef). What it lacks is filled in:
  // - labels: the selectors of the Services whose slices list the pod. The pod's real labels
  //   hold each of them, so any selector made of these pairs selects the pod for real, and the
  //   state's selector matching finds exactly the Services that list it;
  // - serviceAccount: unknown (peerIdentity): the tunnel asks the peer agent for the pod and
  //   learns the identity from its certificate, pinned to the pod's namespace;
  // - workload (metric label): from the pod name's shape (workloadOfPodName);
  // - weight: 1 (the `weft.io/weight` annotation is on the Pod; it weighs local pods only).
  // An endpoint at a node's own address is a host-network pod: its Services are not captured.
  const nodeAddresses = new Set<string>();
  for (const n of state.nodes) for (const a of n.status?.addresses ?? []) nodeAddresses.add(a.address);
  const watched = new Set(state.pods.map((p) => `${p.metadata?.namespace}/${p.metadata?.name}`));
  const selectorOf = new Map(state.services.map((s) => [`${s.metadata?.namespace}/${s.metadata?.name}`, s.spec?.selector ?? {}]));
  const remote = new Map<string, RawWorkload>();
  for (const slice of state.endpointSlices) {
    const ns = slice.metadata?.namespace ?? '';
    const svc = slice.metadata?.labels?.[SERVICE_NAME_LABEL];
    if (!svc || (slice.addressType ?? 'IPv4') !== 'IPv4') continue;
    for (const ep of slice.endpoints ?? []) {
      const ref = ep.targetRef;
      if (ref?.kind !== 'Pod' || !ref.name) continue;
      const podNs = ref.namespace ?? ns;
      const key = `${podNs}/${ref.name}`;
      const node = ep.nodeName;
      const ip = pickIp(...(ep.addresses ?? []));
      if (watched.has(key) || !node || node === ctx.nodeName || !ip) continue;
      if (nodeAddresses.has(ip)) {
        hostNetworkBacked.add(`${ns}/${svc}`);
        continue;
      }
      let w = remote.get(key);
      if (!w) {
        w = { name: ref.name, namespace: podNs, node, ip, peerIdentity: true, labels: {}, weight: 1, ready: podReady.get(key) ?? true };
        const owner = workloadOfPodName(ref.name);
        if (owner !== ref.name) w.workload = owner;
        if (ref.uid) w.uid = ref.uid;
        remote.set(key, w);
        const stub = { metadata: { name: ref.name, namespace: podNs, uid: ref.uid } } as V1Pod;
        if (!skip('Pod', stub)) candidates.push({ pod: stub, workload: w });
      }
      Object.assign(w.labels, selectorOf.get(`${ns}/${svc}`) ?? {});
    }
  }

  // Two pods with one IP: a terminating pod whose address was already reused. The live one
  // (not being deleted, then the newest) keeps the address.
  const byIp = new Map<string, { pod: V1Pod; workload: RawWorkload }>();
  const rank = (p: V1Pod) => (p.metadata?.deletionTimestamp ? 0 : 1) * 1e15 + creationMs(p);
  for (const c of candidates) {
    const other = byIp.get(c.workload.ip);
    if (other && rank(other.pod) >= rank(c.pod)) continue;
    byIp.set(c.workload.ip, c);
  }
  for (const c of candidates) {
    if (byIp.get(c.workload.ip) !== c) {
      warnings.push(`Pod ${c.workload.namespace}/${c.workload.name}: ip ${c.workload.ip} belongs to a newer pod; left out`);
      continue;
    }
    raw.workloads.push(c.workload);
    origins.workloads.push(originOf('Pod', c.pod));
  }

  // TrafficPolicies: which one applies to which Service.
  const policyFor = new Map<string, CustomObject>();
  const tps = state.trafficPolicies
    .filter((tp) => !skip('TrafficPolicy', tp))
    .slice()
    .sort((a, b) => creationMs(a) - creationMs(b) || (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? ''));
  for (const tp of tps) {
    const origin = originOf('TrafficPolicy', tp);
    const spec = tp.spec;
    if (!isObject(spec)) {
      rejected.push({ origin, problems: ['spec: must be an object'] });
      continue;
    }
    const ref = spec.targetRef;
    if (!isObject(ref) || typeof ref.name !== 'string' || !ref.name) {
      rejected.push({ origin, problems: ['spec.targetRef.name: required (the Service this policy applies to)'] });
      continue;
    }
    if (ref.kind !== undefined && ref.kind !== 'Service') {
      rejected.push({ origin, problems: [`spec.targetRef.kind: "${String(ref.kind)}" is not supported (only Service)`] });
      continue;
    }
    if (ref.group !== undefined && ref.group !== '' && ref.group !== 'core') {
      rejected.push({ origin, problems: [`spec.targetRef.group: "${String(ref.group)}" is not supported (only the core group "")`] });
      continue;
    }
    const key = `${origin.namespace}/${ref.name}`;
    const winner = policyFor.get(key);
    if (winner) {
      rejected.push({
        origin,
        problems: [`spec.targetRef: Service ${key} already has TrafficPolicy ${winner.metadata?.name} (the oldest one applies)`],
      });
      continue;
    }
    policyFor.set(key, tp);
  }

  // Services.
  for (const svc of state.services) {
    const name = svc.metadata?.name;
    const ns = svc.metadata?.namespace;
    if (!name || !ns || skip('Service', svc)) continue;
    const spec = svc.spec;
    const selector = spec?.selector ?? {};
    if (spec?.type === 'ExternalName' || Object.keys(selector).length === 0) continue;
    const vip = pickIp(...(spec?.clusterIPs ?? []), spec?.clusterIP);
    if (!vip || vip === 'None') continue;
    const key = `${ns}/${name}`;
    if (hostNetworkBacked.has(key)) {
      warnings.push(`Service ${key}: backed by host-network pods; not captured`);
      continue;
    }
    const ports: RawService['ports'] = [];
    for (const p of spec?.ports ?? []) {
      if ((p.protocol ?? 'TCP') !== 'TCP') continue;
      let targetPort: number | undefined;
      const tp = p.targetPort as unknown;
      if (tp === undefined || tp === null || tp === '') targetPort = p.port;
      else if (typeof tp === 'number') targetPort = tp;
      else if (typeof tp === 'string' && /^\d+$/.test(tp)) targetPort = Number(tp);
      else if (typeof tp === 'string') {
        targetPort = slicePorts.get(key)?.get(p.name ?? '');
        if (targetPort === undefined) {
          for (const pod of podsByNs.get(ns) ?? []) {
            if (!labelsMatch(selector, pod.metadata?.labels)) continue;
            for (const c of pod.spec?.containers ?? []) {
              const cp = c.ports?.find((x) => x.name === tp && (x.protocol ?? 'TCP') === 'TCP');
              if (cp) targetPort = cp.containerPort;
            }
            if (targetPort !== undefined) break;
          }
        }
        if (targetPort === undefined) {
          warnings.push(`Service ${key}: port ${p.port} targetPort "${tp}" matches no container port yet; port left out`);
          continue;
        }
      }
      if (targetPort === undefined) continue;
      const protocol = protocolOf(p.appProtocol);
      ports.push({
        ...(p.name ? { name: p.name } : {}),
        port: p.port,
        targetPort,
        ...(protocol ? { protocol } : {}),
      });
    }
    if (ports.length === 0) continue;
    const tp = policyFor.get(key);
    let trafficPolicy: Record<string, unknown> = {};
    if (tp) {
      const { targetRef: _ref, ...rest } = tp.spec as Record<string, unknown>;
      trafficPolicy = rest;
    }
    raw.services.push({ name, namespace: ns, vip, ports, selector: { ...selector }, trafficPolicy });
    origins.services.push(originOf('Service', svc));
    origins.trafficPolicies.push(tp ? originOf('TrafficPolicy', tp) : undefined);
  }

  // AuthorizationPolicies and RequestAuthentications: spec is the file entry.
  const failClosed = ctx.failClosed ?? new Set<string>();
  const crList = (kind: string, objs: readonly CustomObject[], out: Record<string, unknown>[], outOrigins: Origin[]) => {
    for (const o of objs) {
      if (skip(kind, o)) continue;
      const origin = originOf(kind, o);
      const closed = kind === 'AuthorizationPolicy' && failClosed.has(objectKey(origin));
      if (!isObject(o.spec) || closed) {
        if (!isObject(o.spec)) rejected.push({ origin, problems: ['spec: must be an object'] });
        if (kind !== 'AuthorizationPolicy') continue;
        out.push({ name: origin.name, namespace: origin.namespace, selector: safeSelector(o.spec), action: 'ALLOW', rules: [] });
        outOrigins.push(origin);
        continue;
      }
      if (kind === 'RequestAuthentication') {
        const problems = jwksFileProblems(o.spec);
        if (problems.length > 0) {
          rejected.push({ origin, problems });
          continue;
        }
      }
      out.push({ ...o.spec, name: origin.name, namespace: origin.namespace });
      outOrigins.push(origin);
    }
  };
  crList('AuthorizationPolicy', state.authorizationPolicies, raw.policies, origins.policies);
  crList('RequestAuthentication', state.requestAuthentications, raw.requestAuthentications, origins.requestAuthentications);

  // Gateway API routes on the mesh's Services (k8s/routes.ts).
  const captured = new Set(raw.services.map((s) => `${s.namespace}/${s.name}`));
  const faultsByNs = new Map<string, Map<string, unknown>>();
  for (const f of state.faultInjections ?? []) {
    const ns = f.metadata?.namespace ?? 'default';
    if (!faultsByNs.has(ns)) faultsByNs.set(ns, new Map());
    faultsByNs.get(ns)!.set(f.metadata?.name ?? '', f.spec);
  }
  const routeObjects: [GatewayRouteKind, RouteObject][] = [
    ...(state.httpRoutes ?? []).map((o) => ['HTTPRoute', o] as [GatewayRouteKind, RouteObject]),
    ...(state.grpcRoutes ?? []).map((o) => ['GRPCRoute', o] as [GatewayRouteKind, RouteObject]),
    ...(state.tcpRoutes ?? []).map((o) => ['TCPRoute', o] as [GatewayRouteKind, RouteObject]),
  ].sort((a, b) => routeOrder(a[1], b[1]));
  for (const [kind, o] of routeObjects) {
    const ns = o.metadata?.namespace ?? 'default';
    if (!meshed.has(ns) || skip(kind, o)) continue;
    const t = translateRoute(kind, o, faultsByNs.get(ns) ?? new Map(), (n, name) => captured.has(`${n}/${name}`));
    if (t.refused) {
      rejected.push({ origin: originOf(kind, o), problems: t.refused.problems });
      continue;
    }
    if (!t.raw) continue;
    for (const r of t.refs) warnings.push(`${kind} ${ns}/${o.metadata?.name}: ${r.message}`);
    raw.routes.push(t.raw);
    origins.routes.push(originOf(kind, o));
  }

  return { raw, origins, rejected, warnings };
}

/**
 * A RequestAuthentication object is written by a namespace tenant, and `jwksFile` would make
 * the agent read any file on the node: in Kubernetes only `jwksUri` is accepted (and the
 * agent refuses URIs pointing at the node itself, see authz/jwks.ts).
 */
function jwksFileProblems(spec: Record<string, unknown>): string[] {
  const rules = Array.isArray(spec.jwtRules) ? spec.jwtRules : [];
  const out: string[] = [];
  rules.forEach((r, i) => {
    if (isObject(r) && r.jwksFile !== undefined) out.push(`spec.jwtRules[${i}].jwksFile: not allowed in Kubernetes (it would read a file on the node); use jwksUri`);
  });
  return out;
}

export interface Blame {
  origin: Origin;
  /** The problems, rewritten to the object's own paths (`spec.retries.attempts: ...`). */
  problems: string[];
}

/**
 * Attribute validation problems (`services[3].trafficPolicy.retries: ...`) to the objects that
 * produced them. Problems whose path names no entry are returned in `unattributed`.
 */
export function blame(problems: readonly string[], origins: Origins): { blamed: Blame[]; unattributed: string[] } {
  const byKey = new Map<string, Blame>();
  const unattributed: string[] = [];
  const add = (origin: Origin, problem: string) => {
    const key = objectKey(origin);
    const b = byKey.get(key) ?? { origin, problems: [] };
    b.problems.push(problem);
    byKey.set(key, b);
  };
  for (const problem of problems) {
    const m = problem.match(/^(namespaces|workloads|services|policies|requestAuthentications|nodes|routes)(?:\[(\d+)\]|\.(\d+))(.*)$/);
    if (!m) {
      unattributed.push(problem);
      continue;
    }
    const list = m[1] as keyof Origins;
    const index = Number(m[2] ?? m[3]);
    const rest = m[4] ?? '';
    if (list === 'services') {
      const tp = origins.trafficPolicies[index];
      const tpm = rest.match(/^\.trafficPolicy(.*)$/);
      if (tp && tpm) {
        add(tp, `spec${tpm[1]}`);
        continue;
      }
    }
    const origin = origins[list][index];
    if (!origin) {
      unattributed.push(problem);
      continue;
    }
    const custom = list === 'policies' || list === 'requestAuthentications' || list === 'routes';
    add(origin, custom ? `spec${rest}` : `${list}[${index}]${rest}`);
  }
  return { blamed: [...byKey.values()], unattributed };
}
