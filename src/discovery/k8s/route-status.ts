/**
 * The cluster's one status writer. Route status (this file), and the status and refusal
 * Events of weft's own custom resources (cr-status.ts), from the same informers and rounds.
 *
 * Route status for the cluster: `status.parents[]` of each Gateway API route whose parentRefs
 * are Services in a meshed namespace, with the conditions users read (`kubectl describe
 * httproute`): Accepted (True; or False with NoMatchingParent, UnsupportedValue) and
 * ResolvedRefs (True; or False with BackendNotFound, RefNotPermitted, InvalidKind).
 *
 * ONE writer for the cluster: the CA Deployment (`weft ca --kubernetes`), never the agents
 * (a DaemonSet of N agents writing one object would be N writers racing, N times the API
 * load). The CA may run several replicas; of those, only the one whose pod name sorts first
 * among the running weft-ca pods writes (each replica lists them, with the pod-list
 * permission it already has), so a scale-up or a rollout hands the job over without a Lease.
 * Writes are JSON merge patches on the status subresource, preconditioned on the
 * resourceVersion read (a 409 is retried on the next round), that keep the entries of other
 * controllers (a Gateway's), and that are skipped when nothing but timestamps would change.
 *
 * What the status says is computed by the same code that the agents route by: the
 * translation (routes.ts) and the file loader's validation (normalizeConfig) of the route on
 * its own against the cluster's Services.
 */
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type KubernetesListObject, type KubernetesObject, type V1Namespace, type V1Pod, type V1Service } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { normalizeConfig } from '../../config/normalize.js';
import { ConfigError } from '../../errors.js';
import { apiWrite } from './api-write.js';
import { CrStatus, type CrStatusInputs } from './cr-status.js';
import { ResourceInformer, type ListPage } from './informer.js';
import { GATEWAY_GROUP, isServiceRef, translateRoute, type GatewayRouteKind, type RouteObject } from './routes.js';
import { translate, type CustomObject } from './translate.js';

export const CONTROLLER_NAME = 'weft.io/mesh';

export interface Condition {
  type: 'Accepted' | 'ResolvedRefs';
  status: 'True' | 'False';
  reason: string;
  message: string;
  observedGeneration?: number;
  lastTransitionTime?: string;
}

export interface ParentStatus {
  parentRef: Record<string, unknown>;
  controllerName: string;
  conditions: Condition[];
}

const VERSIONS: Record<GatewayRouteKind, string> = { HTTPRoute: 'v1', GRPCRoute: 'v1', TCPRoute: 'v1alpha2' };
const PLURALS: Record<GatewayRouteKind, string> = { HTTPRoute: 'httproutes', GRPCRoute: 'grpcroutes', TCPRoute: 'tcproutes' };

export interface StatusInputs {
  namespaces: readonly V1Namespace[];
  services: readonly V1Service[];
  faultInjections: readonly CustomObject[];
}

/**
 * The status entries weft owns for one route (one per Service parentRef), or undefined when
 * the route is not the mesh's (no Service parentRef, or not in a meshed namespace).
 */
export function routeStatus(kind: GatewayRouteKind, o: RouteObject, inputs: StatusInputs): ParentStatus[] | undefined {
  const ns = o.metadata?.namespace ?? 'default';
  const spec = (o.spec ?? {}) as { parentRefs?: Record<string, unknown>[] };
  const refs = (spec.parentRefs ?? []).filter((r) => typeof r === 'object' && r !== null && isServiceRef(r));
  if (refs.length === 0) return undefined;
  // The cluster as an agent would translate it, without pods (status does not depend on them).
  const t = translate(
    {
      namespaces: inputs.namespaces,
      pods: [],
      services: inputs.services,
      endpointSlices: [],
      nodes: [],
      trafficPolicies: [],
      authorizationPolicies: [],
      requestAuthentications: [],
      faultInjections: inputs.faultInjections,
    },
    { nodeName: 'route-status', cgroupOf: () => undefined },
  );
  if (!t.raw.namespaces.some((n) => n.name === ns && n.labels['weft.io/mesh'] === 'enabled')) return undefined;
  const services = new Set(t.raw.services.map((s) => `${s.namespace}/${s.name}`));
  const faults = new Map<string, unknown>();
  for (const f of inputs.faultInjections) if ((f.metadata?.namespace ?? 'default') === ns) faults.set(f.metadata?.name ?? '', f.spec);
  const tr = translateRoute(kind, o, faults, (n, name) => services.has(`${n}/${name}`));
  const generation = o.metadata?.generation;
  let accepted: Condition = { type: 'Accepted', status: 'True', reason: 'Accepted', message: 'the mesh routes requests to this Service by this route' };
  if (tr.refused) accepted = { type: 'Accepted', status: 'False', reason: tr.refused.reason, message: tr.refused.problems.join('; ') };
  else if (tr.raw) {
    try {
      normalizeConfig({ node: { name: 'route-status', address: '127.0.0.1' }, namespaces: t.raw.namespaces, services: t.raw.services, routes: [tr.raw] }, `${kind} ${ns}/${o.metadata?.name}`);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      const problems = err.problems.map((p) => p.replace(/^routes\[0\]/, 'spec'));
      accepted = { type: 'Accepted', status: 'False', reason: 'UnsupportedValue', message: problems.join('; ') };
    }
  }
  const first = tr.refs[0];
  const resolved: Condition = first
    ? { type: 'ResolvedRefs', status: 'False', reason: first.reason, message: tr.refs.map((r) => r.message).join('; ') }
    : { type: 'ResolvedRefs', status: 'True', reason: 'ResolvedRefs', message: 'every reference resolved' };
  return refs.map((ref) => {
    const missing = !services.has(`${ns}/${String(ref.name)}`);
    const acc: Condition =
      missing && accepted.status === 'True' ? { type: 'Accepted', status: 'False', reason: 'NoMatchingParent', message: `no Service ${ns}/${String(ref.name)} in the mesh` } : accepted;
    return {
      parentRef: ref,
      controllerName: CONTROLLER_NAME,
      conditions: [acc, resolved].map((c) => (generation !== undefined ? { ...c, observedGeneration: generation } : { ...c })),
    };
  });
}

/** The new `status.parents`: other controllers' entries kept, weft's replaced; transition times kept where a condition did not change. */
export function mergeParents(existing: readonly ParentStatus[], ours: readonly ParentStatus[], now: string): ParentStatus[] {
  const key = (p: ParentStatus) => JSON.stringify([p.parentRef.group ?? '', p.parentRef.kind ?? '', p.parentRef.name, p.parentRef.port ?? null]);
  const old = new Map(existing.filter((p) => p.controllerName === CONTROLLER_NAME).map((p) => [key(p), p]));
  const out = existing.filter((p) => p.controllerName !== CONTROLLER_NAME).map((p) => ({ ...p }));
  for (const p of ours) {
    const prev = old.get(key(p));
    out.push({
      ...p,
      conditions: p.conditions.map((c) => {
        const was = prev?.conditions.find((x) => x.type === c.type);
        const same = was !== undefined && was.status === c.status && was.reason === c.reason;
        return { ...c, lastTransitionTime: same && was.lastTransitionTime ? was.lastTransitionTime : now };
      }),
    });
  }
  return out;
}

export interface RouteStatusWriterOptions {
  kubeConfig: KubeConfig;
  log: Logger;
  /** This CA pod (POD_NAME / POD_NAMESPACE): with them, only the first running weft-ca pod by name writes. */
  podName?: string;
  podNamespace?: string;
  /** Label selector of the CA's pods (default app.kubernetes.io/name=weft-ca). */
  podSelector?: string;
  debounceMs?: number;
  /** Full recheck period, ms (default 30000): catches a lost write or a leadership change. */
  resyncMs?: number;
  absentRetryMs?: number;
  /** The mesh's trust domain (as the agents'), for validating policies' principals. */
  trustDomain?: string;
}

/**
 * Is this CA replica the cluster's one status writer: the first running weft-ca pod by name?
 * Without a pod identity (tests, a single CA), yes. Shared by the route and CR status writers.
 */
export async function isStatusWriter(core: CoreV1Api, opts: { podName?: string; podNamespace?: string; podSelector?: string }): Promise<boolean> {
  const { podName, podNamespace } = opts;
  if (!podName || !podNamespace) return true;
  const list = await core.listNamespacedPod({ namespace: podNamespace, labelSelector: opts.podSelector ?? 'app.kubernetes.io/name=weft-ca' });
  const live = (list.items as V1Pod[])
    .filter((p) => p.status?.phase === 'Running' && !p.metadata?.deletionTimestamp)
    .map((p) => p.metadata?.name ?? '')
    .sort();
  return live.length === 0 || live[0] === podName;
}

/** Writes route status for the cluster (see the file comment). */
export class RouteStatusWriter {
  private readonly informers: { kind: string; inf: ResourceInformer<KubernetesObject> }[] = [];
  private readonly namespaces: ResourceInformer<V1Namespace>;
  private readonly services: ResourceInformer<V1Service>;
  private readonly faults: ResourceInformer<CustomObject>;
  private readonly trafficPolicies: ResourceInformer<CustomObject>;
  private readonly authorizationPolicies: ResourceInformer<CustomObject>;
  private readonly requestAuthentications: ResourceInformer<CustomObject>;
  /** weft's own custom resources: their status and refusal Events (cr-status.ts). */
  readonly crStatus: CrStatus;
  private readonly routes: Record<GatewayRouteKind, ResourceInformer<RouteObject>>;
  private readonly core: CoreV1Api;
  private timer: NodeJS.Timeout | undefined;
  private resync: NodeJS.Timeout | undefined;
  private running = false;
  private busy = false;
  private again = false;
  /** Writes done (for tests and logs). */
  writes = 0;

  constructor(private readonly opts: RouteStatusWriterOptions) {
    const kc = opts.kubeConfig;
    const core = (this.core = kc.makeApiClient(CoreV1Api));
    const custom = kc.makeApiClient(CustomObjectsApi);
    const common = { kubeConfig: kc, log: opts.log, absentRetryMs: opts.absentRetryMs };
    const cr = <T extends KubernetesObject>(kind: string, group: string, version: string, plural: string) =>
      new ResourceInformer<T>({
        ...common,
        kind,
        path: `/apis/${group}/${version}/${plural}`,
        list: ((p) => custom.listClusterCustomObject({ group, version, plural, ...p })) as ListPage<T>,
        optional: true,
      });
    this.namespaces = new ResourceInformer<V1Namespace>({ ...common, kind: 'Namespace', path: '/api/v1/namespaces', list: (p) => core.listNamespace(p) as Promise<KubernetesListObject<V1Namespace>> });
    this.services = new ResourceInformer<V1Service>({
      ...common,
      kind: 'Service',
      path: '/api/v1/services',
      list: (p) => core.listServiceForAllNamespaces(p) as Promise<KubernetesListObject<V1Service>>,
    });
    this.faults = cr<CustomObject>('FaultInjection', 'weft.io', 'v1alpha1', 'faultinjections');
    this.trafficPolicies = cr<CustomObject>('TrafficPolicy', 'weft.io', 'v1alpha1', 'trafficpolicies');
    this.authorizationPolicies = cr<CustomObject>('AuthorizationPolicy', 'weft.io', 'v1alpha1', 'authorizationpolicies');
    this.requestAuthentications = cr<CustomObject>('RequestAuthentication', 'weft.io', 'v1alpha1', 'requestauthentications');
    this.crStatus = new CrStatus({ kubeConfig: kc, log: opts.log, podName: opts.podName });
    this.routes = {
      HTTPRoute: cr<RouteObject>('HTTPRoute', GATEWAY_GROUP, 'v1', 'httproutes'),
      GRPCRoute: cr<RouteObject>('GRPCRoute', GATEWAY_GROUP, 'v1', 'grpcroutes'),
      TCPRoute: cr<RouteObject>('TCPRoute', GATEWAY_GROUP, 'v1alpha2', 'tcproutes'),
    };
    for (const inf of [
      this.namespaces,
      this.services,
      this.faults,
      this.trafficPolicies,
      this.authorizationPolicies,
      this.requestAuthentications,
      ...Object.values(this.routes),
    ] as ResourceInformer<KubernetesObject>[]) {
      this.informers.push({ kind: inf.kind, inf });
      inf.on('change', () => this.schedule());
      inf.on('synced', () => this.schedule());
    }
  }

  start(): void {
    this.running = true;
    for (const { inf } of this.informers) inf.start();
    this.resync = setInterval(() => this.schedule(), this.opts.resyncMs ?? 30_000);
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    clearInterval(this.resync);
    await Promise.all(this.informers.map(({ inf }) => inf.stop()));
  }

  private schedule(): void {
    if (!this.running || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.round();
    }, this.opts.debounceMs ?? 200);
  }

  /** Am I the one writer? */
  private leader(): Promise<boolean> {
    return isStatusWriter(this.core, this.opts);
  }

  private async round(): Promise<void> {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      if (!this.informers.every(({ inf }) => inf.synced)) return;
      if (!(await this.leader())) return;
      const inputs: StatusInputs = { namespaces: this.namespaces.list(), services: this.services.list(), faultInjections: this.faults.list() };
      const now = new Date().toISOString();
      for (const kind of Object.keys(this.routes) as GatewayRouteKind[]) {
        for (const o of this.routes[kind].list()) {
          const ours = routeStatus(kind, o, inputs);
          if (ours === undefined) continue;
          const existing = (((o.status ?? {}) as { parents?: ParentStatus[] }).parents ?? []) as ParentStatus[];
          const next = mergeParents(existing, ours, now);
          if (JSON.stringify(next) === JSON.stringify(existing)) continue;
          await this.patch(kind, o, next);
        }
      }
      const crInputs: CrStatusInputs = {
        namespaces: inputs.namespaces,
        services: inputs.services,
        trafficPolicies: this.trafficPolicies.list(),
        authorizationPolicies: this.authorizationPolicies.list(),
        requestAuthentications: this.requestAuthentications.list(),
        faultInjections: inputs.faultInjections,
        httpRoutes: this.routes.HTTPRoute.list(),
        grpcRoutes: this.routes.GRPCRoute.list(),
        tcpRoutes: this.routes.TCPRoute.list(),
        ...(this.opts.trustDomain ? { trustDomain: this.opts.trustDomain } : {}),
      };
      if (await this.crStatus.round(crInputs, now)) this.again = true;
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'route status round failed; retrying on the next change or resync');
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
    }
  }

  /** PATCH .../status with a JSON merge patch (the generated client picks the patch type poorly; this is explicit). */
  private async patch(kind: GatewayRouteKind, o: RouteObject, parents: ParentStatus[]): Promise<void> {
    const ns = o.metadata?.namespace ?? 'default';
    const name = o.metadata?.name ?? '';
    const { status } = await apiWrite(this.opts.kubeConfig, 'PATCH', `/apis/${GATEWAY_GROUP}/${VERSIONS[kind]}/namespaces/${ns}/${PLURALS[kind]}/${name}/status`, {
      metadata: { resourceVersion: o.metadata?.resourceVersion },
      status: { parents },
    });
    if (status === 409) {
      // Moved on since we read it: the watch brings the new version, and another round.
      this.again = true;
      return;
    }
    if (status < 200 || status >= 300) throw new Error(`PATCH ${kind} ${ns}/${name} status: HTTP ${status}`);
    this.writes++;
    this.opts.log.info(
      { route: `${kind} ${ns}/${name}`, conditions: parents.filter((p) => p.controllerName === CONTROLLER_NAME).flatMap((p) => p.conditions.map((c) => `${c.type}=${c.status}:${c.reason}`)) },
      'route status written',
    );
  }
}
