/**
 * Kubernetes discovery: the mesh from the API server, as whole MeshConfig snapshots.
 *
 * List+watch caches (k8s/informer.ts): Namespaces, Pods, Services, EndpointSlices, Nodes,
 * weft's TrafficPolicy, AuthorizationPolicy, RequestAuthentication and FaultInjection
 * (weft.io/v1alpha1), and the Gateway API's HTTPRoute, GRPCRoute (v1) and TCPRoute (v1alpha2)
 * when their CRDs are installed (k8s/routes.ts; a missing one is a warning and an empty list).
 * Any change schedules a rebuild (for a Node, only a change of what translation reads: its
 * address; kubelet status reports alone would otherwise rebuild every few minutes per node); changes within `debounceMs` of the first one coalesce into
 * one snapshot (a rollout touching 100 pods yields a handful of snapshots, not 300). A rebuild
 * translates the caches into the file format's raw shape (k8s/translate.ts) and runs the file
 * loader's validation and defaults on it (`normalizeConfig`), so a TrafficPolicy means exactly
 * what the same YAML in a file means. A snapshot equal to the last one is not emitted.
 *
 * Pods are watched on this node only (`fieldSelector=spec.nodeName=<node>`, as the kubelet
 * and Cilium's agent do): they are what capture, certificates, authorization and probes act
 * on. Pods of other nodes reach the agent as EndpointSlice endpoints (k8s/translate.ts: the
 * address, node, readiness and pod name; the Services' selectors stand for the labels; the
 * service account is learnt from the peer agent at the tunnel handshake). So the API server
 * sends each agent the changes of its own ~100 pods and of the slices, not every pod change
 * of the cluster (docs/benchmarks/api-load.md has the numbers). A pod of another node that
 * no Service selects is not known here: connections to its address are not captured.
 *
 * Nodes fill `nodes` (where each node's agent is reached, k8s/translate.ts), trimmed in the
 * cache to name, addresses and creationTimestamp.
 *
 * An object that fails validation is dropped from the snapshot, reported once (log and a
 * `rejected` event with a ConfigError naming the object, e.g. `TrafficPolicy shop/api`), and
 * the rest applies: one team's typo must not freeze the mesh for everyone. An invalid
 * AuthorizationPolicy is not dropped but fails closed: it becomes an ALLOW policy with no
 * rules for its selector (allow nothing), since dropping it would open what it guarded. The
 * CRD schemas refuse most bad objects at admission already. Only when a problem cannot be
 * pinned on an object is the whole snapshot refused and the last good one kept.
 */
import { EventEmitter } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import {
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type V1EndpointSlice,
  type V1Namespace,
  type V1Node,
  type V1Pod,
  type V1Service,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { CgroupResolver, findCgroup2Mount } from '../capture/cgroup-resolver.js';
import { normalizeConfig } from '../config/normalize.js';
import type { MeshConfig } from '../config/types.js';
import { ConfigError, WeftError } from '../errors.js';
import { silentLogger } from '../telemetry/log.js';
import { ResourceInformer, type ChangeType, type ListPage } from './k8s/informer.js';
import { nodeFingerprint, objectKey, trimNode, trimPod, type ClusterState, type CustomObject, type Origin, type RawMeshState } from './k8s/translate.js';
import { meshVerdict, refusalProblems } from './k8s/verdict.js';
import { GATEWAY_GROUP, type RouteObject } from './k8s/routes.js';
import type { Discovery } from './types.js';

export const WEFT_GROUP = 'weft.io';
export const WEFT_VERSION = 'v1alpha1';

export interface KubernetesDiscoveryOptions {
  /** This node's name (`spec.nodeName` of its pods; the DaemonSet passes it as NODE_NAME). */
  nodeName: string;
  /** This node's IPv4 address (the DaemonSet passes `status.hostIP` as NODE_IP). */
  nodeAddress: string;
  /** Default: in-cluster config when running in a pod (and KUBECONFIG is unset), else KUBECONFIG / ~/.kube/config. */
  kubeConfig?: KubeConfig;
  /** Agent-level settings from flags/env (ports, ca, stateDir, mesh.trustDomain, agent); they override the defaults. */
  static?: Partial<MeshConfig>;
  log?: Logger;
  /** Changes within this many ms of the first one coalesce into one snapshot (default 50). */
  debounceMs?: number;
  /** cgroup v2 mount to find pod cgroups under (default: from /proc/mounts). */
  cgroupRoot?: string;
  /** start() rejects if the caches have not synced by then, ms (default 60000). */
  startTimeoutMs?: number;
  /** First retry delay after an API error, ms (default 250; doubles up to maxBackoffMs). */
  backoffMs?: number;
  /** Cap on the API retry delay, ms (default 30000). */
  maxBackoffMs?: number;
  /** Deadline of one list call, ms (default 60000). */
  listTimeoutMs?: number;
  /** First retry delay for a pod cgroup that does not exist yet, ms (default 200). */
  cgroupRetryMs?: number;
  /** How often to look again for a CRD that is not installed (Gateway API routes), ms (default 60000). */
  absentRetryMs?: number;
}

/** Source name in ConfigErrors about the snapshot as a whole. */
const SOURCE = 'kubernetes';

function defaultKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  if (!process.env.KUBECONFIG && process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

function defaultCgroupRoot(): string {
  let mounts = '';
  try {
    mounts = readFileSync('/proc/mounts', 'utf8');
  } catch {
    // Not Linux: resolution finds nothing, which only matters on a real node.
  }
  return findCgroup2Mount(mounts, existsSync) ?? '/sys/fs/cgroup';
}

type Informers = {
  namespaces: ResourceInformer<V1Namespace>;
  pods: ResourceInformer<V1Pod>;
  services: ResourceInformer<V1Service>;
  endpointSlices: ResourceInformer<V1EndpointSlice>;
  nodes: ResourceInformer<V1Node>;
  trafficPolicies: ResourceInformer<CustomObject>;
  authorizationPolicies: ResourceInformer<CustomObject>;
  requestAuthentications: ResourceInformer<CustomObject>;
  faultInjections: ResourceInformer<CustomObject>;
  httpRoutes: ResourceInformer<RouteObject>;
  grpcRoutes: ResourceInformer<RouteObject>;
  tcpRoutes: ResourceInformer<RouteObject>;
};

/**
 * Events (see Discovery):
 * - `update` (MeshConfig): a new snapshot is in force.
 * - `rejected` (ConfigError): an object was refused (`source` names it; the rest applied), or a
 *   whole snapshot was (`source` "kubernetes"; the last good one stays in force).
 */
export class KubernetesDiscovery extends EventEmitter implements Discovery {
  readonly nodeName: string;
  readonly nodeAddress: string;
  private readonly log: Logger;
  private readonly staticConfig: Partial<MeshConfig>;
  private readonly debounceMs: number;
  private readonly startTimeoutMs: number;
  private readonly informers: Informers;
  private readonly resolver: CgroupResolver;

  private current: MeshConfig | undefined;
  private currentJson = '';
  private started = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  /** What has been reported, so that each problem is logged and emitted once. */
  private reported = new Map<string, string>();
  private warned = new Set<string>();
  /** Problems of the last snapshot refused as a whole (empty: the last one was good). */
  private snapshotProblems: string[] = [];
  /** nodeFingerprint of each cached Node, to ignore updates that change nothing translation reads. */
  private nodeFingerprints = new Map<string, string>();

  constructor(opts: KubernetesDiscoveryOptions) {
    super();
    this.nodeName = opts.nodeName;
    this.nodeAddress = opts.nodeAddress;
    this.log = (opts.log ?? silentLogger).child({ component: 'discovery', source: SOURCE });
    this.staticConfig = opts.static ?? {};
    this.debounceMs = opts.debounceMs ?? 50;
    this.startTimeoutMs = opts.startTimeoutMs ?? 60_000;
    const kc = opts.kubeConfig ?? defaultKubeConfig();
    this.resolver = new CgroupResolver({ cgroupRoot: opts.cgroupRoot ?? defaultCgroupRoot(), retryMs: opts.cgroupRetryMs });
    this.resolver.on('resolved', (uid: string, path: string) => {
      this.log.debug({ uid, cgroup: path }, 'pod cgroup resolved');
      this.schedule();
    });

    const core = kc.makeApiClient(CoreV1Api);
    const discovery = kc.makeApiClient(DiscoveryV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    const common = {
      kubeConfig: kc,
      log: this.log,
      backoffMs: opts.backoffMs,
      maxBackoffMs: opts.maxBackoffMs,
      listTimeoutMs: opts.listTimeoutMs,
    };
    // This node's pods only; the others' endpoints come from the EndpointSlices.
    const podFieldSelector = `spec.nodeName=${opts.nodeName}`;
    const crd = (kind: string, plural: string, group = WEFT_GROUP, version = WEFT_VERSION, optional = false) =>
      new ResourceInformer<CustomObject>({
        ...common,
        kind,
        path: `/apis/${group}/${version}/${plural}`,
        list: ((p) => custom.listClusterCustomObject({ group, version, plural, ...p })) as ListPage<CustomObject>,
        optional,
        absentRetryMs: opts.absentRetryMs,
      });
    this.informers = {
      namespaces: new ResourceInformer<V1Namespace>({
        ...common,
        kind: 'Namespace',
        path: '/api/v1/namespaces',
        list: (p) => core.listNamespace(p) as Promise<KubernetesListObject<V1Namespace>>,
      }),
      pods: new ResourceInformer<V1Pod>({
        ...common,
        kind: 'Pod',
        path: '/api/v1/pods',
        fieldSelector: podFieldSelector,
        list: (p) => core.listPodForAllNamespaces({ ...p, fieldSelector: podFieldSelector }) as Promise<KubernetesListObject<V1Pod>>,
        trim: trimPod,
      }),
      services: new ResourceInformer<V1Service>({
        ...common,
        kind: 'Service',
        path: '/api/v1/services',
        list: (p) => core.listServiceForAllNamespaces(p) as Promise<KubernetesListObject<V1Service>>,
      }),
      endpointSlices: new ResourceInformer<V1EndpointSlice>({
        ...common,
        kind: 'EndpointSlice',
        path: '/apis/discovery.k8s.io/v1/endpointslices',
        list: (p) => discovery.listEndpointSliceForAllNamespaces(p) as Promise<KubernetesListObject<V1EndpointSlice>>,
      }),
      nodes: new ResourceInformer<V1Node>({
        ...common,
        kind: 'Node',
        path: '/api/v1/nodes',
        list: (p) => core.listNode(p) as Promise<KubernetesListObject<V1Node>>,
        trim: trimNode,
      }),
      trafficPolicies: crd('TrafficPolicy', 'trafficpolicies'),
      authorizationPolicies: crd('AuthorizationPolicy', 'authorizationpolicies'),
      requestAuthentications: crd('RequestAuthentication', 'requestauthentications'),
      // Routes: the Gateway API's CRDs may not be installed (a warning, not a failure); a
      // cluster upgraded from a weft without routes may lack the FaultInjection CRD too.
      faultInjections: crd('FaultInjection', 'faultinjections', WEFT_GROUP, WEFT_VERSION, true),
      httpRoutes: crd('HTTPRoute', 'httproutes', GATEWAY_GROUP, 'v1', true),
      grpcRoutes: crd('GRPCRoute', 'grpcroutes', GATEWAY_GROUP, 'v1', true),
      tcpRoutes: crd('TCPRoute', 'tcproutes', GATEWAY_GROUP, 'v1alpha2', true),
    };
    this.informers.pods.on('change', (type: ChangeType, pod: V1Pod) => this.onPod(type, pod));
    this.informers.nodes.on('change', (type: ChangeType, node: V1Node) => this.onNode(type, node));
    for (const inf of Object.values(this.informers) as ResourceInformer<KubernetesObject>[]) {
      if (inf !== this.informers.nodes) inf.on('change', () => this.schedule());
    }
  }

  /** The snapshot in force, once start() has resolved. */
  get config(): MeshConfig | undefined {
    return this.current;
  }

  /**
   * Sync every cache, wait for the cgroups of this node's pods that already exist, and build
   * the first snapshot.
   * @throws WeftError when the caches do not sync within startTimeoutMs (API unreachable,
   *   RBAC, CRDs not installed: the message names the resources still missing), or
   *   ConfigError when the first snapshot is invalid as a whole.
   */
  async start(): Promise<MeshConfig> {
    const infs = Object.values(this.informers) as ResourceInformer<KubernetesObject>[];
    const lastErrors = new Map<string, string>();
    const onFailure = (kind: string) => (err: Error) => lastErrors.set(kind, err.message);
    const failureHandlers = infs.map((inf) => [inf, onFailure(inf.kind)] as const);
    for (const [inf, h] of failureHandlers) inf.on('failure', h);
    for (const inf of infs) inf.start();

    let timeout: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        Promise.all(infs.map((inf) => (inf.synced ? undefined : new Promise((r) => inf.once('synced', r))))),
        new Promise((_, reject) => {
          timeout = setTimeout(() => {
            const missing = infs
              .filter((i) => !i.synced)
              .map((i) => {
                const e = lastErrors.get(i.kind);
                return e ? `${i.kind} (${e})` : i.kind;
              });
            reject(
              new WeftError(
                'WEFT_ERR_CONFIG',
                `kubernetes: caches not synced after ${this.startTimeoutMs}ms: ${missing.join(', ')}` +
                  " (is the API server reachable, does the agent's ClusterRole allow list/watch, are the weft.io CRDs installed?)",
              ),
            );
          }, this.startTimeoutMs);
        }),
      ]);
    } catch (err) {
      await this.stop();
      throw err;
    } finally {
      clearTimeout(timeout);
      for (const [inf, h] of failureHandlers) inf.off('failure', h);
    }

    // Pods whose cgroup exists now are captured from the first snapshot on.
    await Promise.all(
      this.informers.pods
        .list()
        .filter((p) => this.isLocal(p))
        .map((p) => this.resolver.track({ uid: p.metadata!.uid!, qosClass: p.status?.qosClass })),
    );

    const cfg = this.build();
    if (!cfg) {
      await this.stop();
      throw new ConfigError(SOURCE, this.snapshotProblems.length ? this.snapshotProblems : ['no valid snapshot']);
    }
    this.publish(cfg);
    this.started = true;
    this.log.info({ namespaces: cfg.namespaces.length, workloads: cfg.workloads.length, services: cfg.services.length, nodes: cfg.nodes?.length ?? 0 }, 'kubernetes discovery synced');
    return cfg;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.resolver.stop();
    await Promise.all((Object.values(this.informers) as ResourceInformer<KubernetesObject>[]).map((i) => i.stop()));
  }

  /**
   * Per resource kind: whether its cache has synced, the resourceVersion its next watch
   * resumes from ('' when a relist is due), and how many objects it holds. For config_dump.
   */
  cacheStatus(): Record<string, { synced: boolean; resourceVersion: string; objects: number }> {
    const out: Record<string, { synced: boolean; resourceVersion: string; objects: number }> = {};
    for (const inf of Object.values(this.informers) as ResourceInformer<KubernetesObject>[]) {
      out[inf.kind] = { synced: inf.synced, resourceVersion: inf.resourceVersion(), objects: inf.list().length };
    }
    return out;
  }

  /** Rebuild now instead of after the debounce (tests, admin). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.started || this.stopped) return;
    const cfg = this.build();
    if (cfg) this.publish(cfg);
  }

  private isLocal(pod: V1Pod): boolean {
    return pod.spec?.nodeName === this.nodeName && !pod.spec?.hostNetwork && !!pod.metadata?.uid;
  }

  private onPod(type: ChangeType, pod: V1Pod): void {
    const uid = pod.metadata?.uid;
    if (!uid) return;
    if (type === 'delete' || !this.isLocal(pod) || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') {
      this.resolver.forget(uid);
      return;
    }
    void this.resolver.track({ uid, qosClass: pod.status?.qosClass });
  }

  private onNode(type: ChangeType, node: V1Node): void {
    const name = node.metadata?.name ?? '';
    if (type === 'delete') {
      this.nodeFingerprints.delete(name);
      this.schedule();
      return;
    }
    const fp = nodeFingerprint(node);
    if (this.nodeFingerprints.get(name) === fp) return;
    this.nodeFingerprints.set(name, fp);
    this.schedule();
  }

  private schedule(): void {
    if (!this.started || this.stopped || this.timer) return;
    this.timer = setTimeout(() => this.flush(), this.debounceMs);
  }

  private publish(cfg: MeshConfig): void {
    const json = JSON.stringify(cfg);
    if (json === this.currentJson) return;
    this.current = cfg;
    this.currentJson = json;
    if (this.started) this.emit('update', cfg);
  }

  private state(): ClusterState {
    const i = this.informers;
    return {
      namespaces: i.namespaces.list(),
      pods: i.pods.list(),
      services: i.services.list(),
      endpointSlices: i.endpointSlices.list(),
      nodes: i.nodes.list(),
      trafficPolicies: i.trafficPolicies.list(),
      authorizationPolicies: i.authorizationPolicies.list(),
      requestAuthentications: i.requestAuthentications.list(),
      faultInjections: i.faultInjections.list(),
      httpRoutes: i.httpRoutes.list(),
      grpcRoutes: i.grpcRoutes.list(),
      tcpRoutes: i.tcpRoutes.list(),
    };
  }

  private normalize(raw: RawMeshState): MeshConfig {
    const s = this.staticConfig;
    // jwksFile paths in CRs are paths in the agent's container: relative ones resolve from /.
    return normalizeConfig(
      {
        node: { name: this.nodeName, address: this.nodeAddress },
        ...(s.mesh?.trustDomain ? { mesh: { trustDomain: s.mesh.trustDomain } } : {}),
        ...raw,
      },
      SOURCE,
      { baseDir: '/' },
    );
  }

  /**
   * Translate and validate, dropping objects that fail until the rest is valid (verdict.ts,
   * the same call the cluster's status writer reports from).
   * @returns undefined when the snapshot cannot be made valid (reported as `rejected`).
   */
  private build(): MeshConfig | undefined {
    const v = meshVerdict(this.state(), { nodeName: this.nodeName, nodeAddress: this.nodeAddress, cgroupOf: (uid: string) => this.resolver.get(uid) }, (raw) => this.normalize(raw));
    if (!v.cfg) {
      this.rejectSnapshot(v.snapshotProblems);
      return undefined;
    }
    this.snapshotProblems = [];
    this.report(v.rejections);
    for (const w of v.warnings) if (!this.warned.has(w)) this.log.warn(w);
    this.warned = new Set(v.warnings);
    return this.overlay(v.cfg);
  }

  private overlay(cfg: MeshConfig): MeshConfig {
    const s = this.staticConfig;
    return {
      ...cfg,
      mesh: { ...cfg.mesh, ...s.mesh },
      ports: { ...cfg.ports, ...s.ports },
      ca: s.ca ? { ...s.ca } : cfg.ca,
      stateDir: s.stateDir ?? cfg.stateDir,
      agent: { ...cfg.agent, ...s.agent },
    };
  }

  private report(rejections: Map<string, { origin: Origin; problems: string[] }>): void {
    const next = new Map<string, string>();
    for (const [key, { origin, problems }] of rejections) {
      const signature = `${origin.resourceVersion ?? ''}|${problems.join('|')}`;
      next.set(key, signature);
      if (this.reported.get(key) === signature) continue;
      const closed = origin.kind === 'AuthorizationPolicy';
      const err = new ConfigError(key, refusalProblems({ origin, problems }));
      this.log.warn(
        { object: key, problems },
        closed ? `${key} rejected; it allows nothing until fixed (fail closed); the rest of the mesh config applies` : `${key} rejected; the rest of the mesh config applies`,
      );
      this.emit('rejected', err);
    }
    this.reported = next;
  }

  private rejectSnapshot(problems: string[]): void {
    if (problems.join('|') === this.snapshotProblems.join('|')) return;
    this.snapshotProblems = problems;
    const err = new ConfigError(SOURCE, problems);
    this.log.error({ problems }, 'kubernetes snapshot rejected; the last good config stays in force');
    if (this.started) this.emit('rejected', err);
  }
}
