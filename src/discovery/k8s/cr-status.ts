/**
 * Status of weft's own custom resources (TrafficPolicy, AuthorizationPolicy,
 * RequestAuthentication, FaultInjection): an `Accepted` condition in `status.conditions`
 * (True; or False with reason `Refused` and the problems the agents log), and a Warning Event
 * regarding the object when it is refused, so that `kubectl describe` and `kubectl get events`
 * say what each agent's log says.
 *
 * Written by the cluster's one status writer (route-status.ts: the first running CA replica),
 * never by the agents. The verdict is the agents' own: meshVerdict (verdict.ts), the call the
 * agent builds its config with, over the cluster's objects without this node's pods. A
 * FaultInjection has no verdict of its own (the routes that name it carry its spec): it is
 * refused when a route is refused for a problem inside the fault it names.
 *
 * Writes happen only on change: a status patch when the condition differs from the stored
 * one (beyond its timestamp), an Event when an object becomes refused (or its problems
 * change). The same refusal seen again by this writer (a fix undone) adds to that Event's
 * `series` (count and last time, as `kubectl get events` shows) instead of a new Event.
 */
import type { KubeConfig, V1Namespace, V1Service } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { fromIstioShape } from '../../authz/istio-shape.js';
import { normalizeConfig } from '../../config/normalize.js';
import { apiWrite } from './api-write.js';
import type { RouteObject } from './routes.js';
import { objectKey, type ClusterState, type CustomObject } from './translate.js';
import { meshVerdict, refusalProblems } from './verdict.js';

export const WEFT_CR_KINDS = {
  TrafficPolicy: 'trafficpolicies',
  AuthorizationPolicy: 'authorizationpolicies',
  RequestAuthentication: 'requestauthentications',
  FaultInjection: 'faultinjections',
} as const;
export type WeftCrKind = keyof typeof WEFT_CR_KINDS;

/** The reporting controller named on Events (and the routes' controllerName). */
export const REPORTING_CONTROLLER = 'weft.io/mesh';

export interface CrCondition {
  type: 'Accepted';
  status: 'True' | 'False';
  reason: 'Accepted' | 'ConvertedFromIstio' | 'Refused';
  message: string;
  observedGeneration?: number;
  lastTransitionTime?: string;
}

export interface CrStatusInputs {
  namespaces: readonly V1Namespace[];
  services: readonly V1Service[];
  trafficPolicies: readonly CustomObject[];
  authorizationPolicies: readonly CustomObject[];
  requestAuthentications: readonly CustomObject[];
  faultInjections: readonly CustomObject[];
  httpRoutes: readonly RouteObject[];
  grpcRoutes: readonly RouteObject[];
  tcpRoutes: readonly RouteObject[];
  /** The mesh's trust domain (the agents' WEFT_TRUST_DOMAIN). */
  trustDomain?: string;
}

export interface CrVerdict {
  kind: WeftCrKind;
  object: CustomObject;
  condition: CrCondition;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A Service as the status writer sees it: without pods or EndpointSlices it cannot resolve a
 * named targetPort, which does not change any custom resource's verdict; the port stands in
 * for it, so that the Service (and the TrafficPolicy on it) is still validated.
 */
function withNumericTargetPorts(svc: V1Service): V1Service {
  const ports = svc.spec?.ports;
  if (!ports?.some((p) => typeof p.targetPort === 'string' && !/^\d+$/.test(p.targetPort))) return svc;
  return { ...svc, spec: { ...svc.spec, ports: ports.map((p) => (typeof p.targetPort === 'string' && !/^\d+$/.test(p.targetPort) ? { ...p, targetPort: p.port } : p)) } };
}

/**
 * The verdict on every weft custom resource, or undefined when the snapshot as a whole is
 * refused (then nothing can be said of one object; the agents keep their last good config).
 */
export function crVerdicts(inputs: CrStatusInputs): CrVerdict[] | undefined {
  const state: ClusterState = {
    namespaces: inputs.namespaces,
    pods: [],
    services: inputs.services.map(withNumericTargetPorts),
    endpointSlices: [],
    nodes: [],
    trafficPolicies: inputs.trafficPolicies,
    authorizationPolicies: inputs.authorizationPolicies,
    requestAuthentications: inputs.requestAuthentications,
    faultInjections: inputs.faultInjections,
    httpRoutes: inputs.httpRoutes,
    grpcRoutes: inputs.grpcRoutes,
    tcpRoutes: inputs.tcpRoutes,
  };
  const node = { name: 'weft-status', address: '127.0.0.1' };
  const v = meshVerdict(state, { nodeName: node.name, cgroupOf: () => undefined }, (raw) =>
    normalizeConfig({ node, ...(inputs.trustDomain ? { mesh: { trustDomain: inputs.trustDomain } } : {}), ...raw }, 'kubernetes', { baseDir: '/' }),
  );
  if (!v.cfg) return undefined;

  // FaultInjections: the problems inside `fault` of refused routes' rules that name them.
  const faultProblems = new Map<string, string[]>();
  const routeLists: [string, readonly RouteObject[]][] = [
    ['HTTPRoute', inputs.httpRoutes],
    ['GRPCRoute', inputs.grpcRoutes],
    ['TCPRoute', inputs.tcpRoutes],
  ];
  for (const [kind, list] of routeLists) {
    for (const o of list) {
      const ns = o.metadata?.namespace ?? 'default';
      const r = v.rejections.get(objectKey({ kind, namespace: ns, name: o.metadata?.name ?? '' }));
      if (!r) continue;
      const rules = isObj(o.spec) && Array.isArray(o.spec.rules) ? o.spec.rules : [];
      for (const p of r.problems) {
        const m = /^spec\.rules\[(\d+)\]\.fault(.*)$/.exec(p);
        if (!m) continue;
        const rule = rules[Number(m[1])];
        const filters = isObj(rule) && Array.isArray(rule.filters) ? rule.filters : [];
        for (const f of filters) {
          if (!isObj(f) || !isObj(f.extensionRef) || f.extensionRef.kind !== 'FaultInjection') continue;
          const key = `${ns}/${String(f.extensionRef.name)}`;
          const list = faultProblems.get(key) ?? [];
          list.push(`spec${m[2]} (${kind} ${ns}/${o.metadata?.name} is refused for it)`);
          faultProblems.set(key, list);
        }
      }
    }
  }

  const out: CrVerdict[] = [];
  const lists: [WeftCrKind, readonly CustomObject[]][] = [
    ['TrafficPolicy', inputs.trafficPolicies],
    ['AuthorizationPolicy', inputs.authorizationPolicies],
    ['RequestAuthentication', inputs.requestAuthentications],
    ['FaultInjection', inputs.faultInjections],
  ];
  for (const [kind, list] of lists) {
    for (const o of list) {
      const ns = o.metadata?.namespace ?? 'default';
      const name = o.metadata?.name ?? '';
      const generation = o.metadata?.generation;
      let problems: string[] | undefined;
      if (kind === 'FaultInjection') problems = faultProblems.get(`${ns}/${name}`);
      else {
        const r = v.rejections.get(objectKey({ kind, namespace: ns, name }));
        if (r) problems = refusalProblems(r);
      }
      let condition: CrCondition;
      if (problems?.length) condition = { type: 'Accepted', status: 'False', reason: 'Refused', message: problems.join('; ') };
      else if (kind === 'AuthorizationPolicy' && isObj(o.spec) && fromIstioShape(o.spec).converted) {
        condition = {
          type: 'Accepted',
          status: 'True',
          reason: 'ConvertedFromIstio',
          message: "the mesh enforces it; its Istio (security.istio.io) shape was converted to weft's (selector.matchLabels, from[].source, to[].operation, when[])",
        };
      } else condition = { type: 'Accepted', status: 'True', reason: 'Accepted', message: 'the mesh accepted it' };
      if (generation !== undefined) condition.observedGeneration = generation;
      out.push({ kind, object: o, condition });
    }
  }
  return out;
}

/** The new `status.conditions`: Accepted replaced (its transition time kept when status and reason did not change), others kept. */
export function mergeConditions(existing: readonly CrCondition[], ours: CrCondition, now: string): CrCondition[] {
  const was = existing.find((c) => c.type === ours.type);
  const same = was !== undefined && was.status === ours.status && was.reason === ours.reason;
  const next = { ...ours, lastTransitionTime: same && was.lastTransitionTime ? was.lastTransitionTime : now };
  return [...existing.filter((c) => c.type !== ours.type), next];
}

export interface CrStatusOptions {
  kubeConfig: KubeConfig;
  log: Logger;
  /** This CA pod's name: the Events' reportingInstance. */
  podName?: string;
}

/** Writes the custom resources' status and Events (see the file comment). */
export class CrStatus {
  /** Status patches done. */
  writes = 0;
  /** Events created or updated. */
  events = 0;
  /** Refusal Events this writer made: `uid|message` -> its name and count. */
  private readonly made = new Map<string, { namespace: string; name: string; count: number }>();
  private missingSubresource = new Set<string>();

  constructor(private readonly opts: CrStatusOptions) {}

  /**
   * One round: write what changed. Returns true when a write met a newer version (409): the
   * watch brings it, and the caller runs another round.
   */
  async round(inputs: CrStatusInputs, now: string): Promise<boolean> {
    const verdicts = crVerdicts(inputs);
    if (!verdicts) {
      this.opts.log.warn("the cluster snapshot as a whole is refused (see the agents' logs); custom resource status left as it is");
      return false;
    }
    let again = false;
    for (const v of verdicts) {
      const st = (v.object as CustomObject & { status?: unknown }).status;
      const existing = (isObj(st) && Array.isArray(st.conditions) ? st.conditions : []) as CrCondition[];
      const was = existing.find((c) => c.type === 'Accepted');
      const next = mergeConditions(existing, v.condition, now);
      if (JSON.stringify(next) === JSON.stringify(existing)) continue;
      const written = await this.patch(v, next);
      if (written === 'conflict') {
        again = true;
        continue;
      }
      if (written === 'skipped') continue;
      const c = v.condition;
      if (c.status === 'False' && (was?.status !== 'False' || was.message !== c.message)) await this.event(v);
    }
    return again;
  }

  private async patch(v: CrVerdict, conditions: CrCondition[]): Promise<'written' | 'conflict' | 'skipped'> {
    const ns = v.object.metadata?.namespace ?? 'default';
    const name = v.object.metadata?.name ?? '';
    const path = `/apis/weft.io/v1alpha1/namespaces/${ns}/${WEFT_CR_KINDS[v.kind]}/${name}/status`;
    const { status } = await apiWrite(this.opts.kubeConfig, 'PATCH', path, { metadata: { resourceVersion: v.object.metadata?.resourceVersion }, status: { conditions } });
    if (status === 409) return 'conflict';
    if (status === 404 && !this.missingSubresource.has(v.kind)) {
      // A CRD from before the status subresource, or the object just went away.
      this.missingSubresource.add(v.kind);
      this.opts.log.warn({ kind: v.kind, object: `${ns}/${name}` }, 'cannot write status (404): apply the current CRDs (deploy/kubernetes/crds.yaml), which have the status subresource');
      return 'skipped';
    }
    if (status < 200 || status >= 300) throw new Error(`PATCH ${v.kind} ${ns}/${name} status: HTTP ${status}`);
    this.writes++;
    this.opts.log.info({ object: `${v.kind} ${ns}/${name}`, accepted: v.condition.status, reason: v.condition.reason }, 'custom resource status written');
    return 'written';
  }

  /** A Warning Event regarding the refused object (events.k8s.io/v1), or one more in its series. */
  private async event(v: CrVerdict): Promise<void> {
    const o = v.object;
    const ns = o.metadata?.namespace ?? 'default';
    const note = v.condition.message.length > 1024 ? `${v.condition.message.slice(0, 1021)}...` : v.condition.message;
    const key = `${o.metadata?.uid ?? `${ns}/${o.metadata?.name}`}|${note}`;
    const now = new Date().toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
    const prev = this.made.get(key);
    if (prev) {
      const count = prev.count + 1;
      const { status } = await apiWrite(this.opts.kubeConfig, 'PATCH', `/apis/events.k8s.io/v1/namespaces/${prev.namespace}/events/${prev.name}`, { series: { count, lastObservedTime: now } });
      if (status >= 200 && status < 300) {
        prev.count = count;
        this.events++;
        return;
      }
      // Gone (events expire after an hour): make a new one.
      this.made.delete(key);
    }
    const name = `${o.metadata?.name}.${Date.now().toString(16)}${Math.floor(Math.random() * 0xfff).toString(16)}`;
    const body = {
      apiVersion: 'events.k8s.io/v1',
      kind: 'Event',
      metadata: { name, namespace: ns },
      eventTime: now,
      type: 'Warning',
      reason: 'Refused',
      action: 'Validate',
      note,
      reportingController: REPORTING_CONTROLLER,
      reportingInstance: this.opts.podName ?? 'weft-ca',
      regarding: { apiVersion: 'weft.io/v1alpha1', kind: v.kind, namespace: ns, name: o.metadata?.name, uid: o.metadata?.uid, resourceVersion: o.metadata?.resourceVersion },
    };
    const { status } = await apiWrite(this.opts.kubeConfig, 'POST', `/apis/events.k8s.io/v1/namespaces/${ns}/events`, body);
    if (status < 200 || status >= 300) {
      this.opts.log.warn({ object: `${v.kind} ${ns}/${o.metadata?.name}`, status }, 'cannot create the refusal Event');
      return;
    }
    this.made.set(key, { namespace: ns, name, count: 1 });
    this.events++;
  }
}
