import { EventEmitter } from 'node:events';
import { canonicalService, workloadName } from '../telemetry/labels.js';
import { MESH_LABEL, MESH_LABEL_ENABLED, type MeshConfig, type Protocol, type Namespace, type Service, type ServicePort, type Workload } from '../config/types.js';
import type { EndpointInfo } from '../cluster/endpoint.js';
import { attachRoutes, type PortRoutes } from '../proxy/l7/routes/table.js';

/** A service port as the proxy resolves it from an original destination. */
export interface ServiceTarget {
  kind: 'service';
  service: Service;
  port: ServicePort;
  /** `ns/name:port`: the key of the cluster that serves it. */
  key: string;
}

/** A connection dialed straight at a meshed pod's ip:port. */
export interface PodTarget {
  kind: 'pod';
  workload: Workload;
  port: number;
  protocol: Protocol;
  key: string;
  /** Upgrade types allowed on this port: those of the services that target it (see proxy/l7/upgrade.ts). */
  upgrades?: string[];
}

export type Target = ServiceTarget | PodTarget;

export function serviceKey(s: { namespace: string; name: string }): string {
  return `${s.namespace}/${s.name}`;
}

export function workloadKey(w: { namespace: string; name: string }): string {
  return `${w.namespace}/${w.name}`;
}

/**
 * The workloads of each namespace by label pair (`key=value`), so that a service's endpoints
 * come from the smallest list of one of its selector's pairs instead of a scan of the whole
 * namespace per service: with 100 services over 10,000 workloads the scan was a million
 * label checks (and as many temporary arrays) on every config change.
 */
class LabelIndex {
  private readonly byPair = new Map<string, Workload[]>();

  constructor(workloads: readonly Workload[]) {
    for (const w of workloads) {
      for (const k in w.labels) {
        const key = pairKey(w.namespace, k, w.labels[k]!);
        const list = this.byPair.get(key);
        if (list) list.push(w);
        else this.byPair.set(key, [w]);
      }
    }
  }

  /**
   * The workloads of `namespace` whose labels hold every pair of `selector`, in config order.
   * A service without a selector has no endpoints we derive.
   */
  select(namespace: string, selector: Record<string, string>): Workload[] {
    let smallest: Workload[] | undefined;
    for (const k in selector) {
      const list = this.byPair.get(pairKey(namespace, k, selector[k]!));
      if (!list) return [];
      if (!smallest || list.length < smallest.length) smallest = list;
    }
    if (!smallest) return [];
    // Checked again pair by pair: the index key alone could be ambiguous (see pairKey).
    return smallest.filter((w) => {
      for (const k in selector) if (w.labels[k] !== selector[k]) return false;
      return true;
    });
  }
}

/**
 * The index key of a label pair. Kubernetes label keys and values cannot hold NUL; a config
 * file's could, which makes the key ambiguous: select() checks every candidate's labels.
 */
function pairKey(namespace: string, key: string, value: string): string {
  return `${namespace}\0${key}\0${value}`;
}

/**
 * The state store: filled by discovery, read by capture and the proxy; nothing else writes it.
 * Each `apply` takes a whole snapshot, rebuilds the indexes (linear in the config size) and
 * emits `change` once. Readers hold no references across changes except by key.
 */
export class StateStore extends EventEmitter {
  private cfg!: MeshConfig;
  private namespaces = new Map<string, Namespace>();
  private workloadsByIp = new Map<string, Workload>();
  private workloads = new Map<string, Workload>();
  private services = new Map<string, Service>();
  private byDestination = new Map<string, Target>();
  private endpointsByService = new Map<string, Workload[]>();
  private servicesByWorkload = new Map<string, Service[]>();
  private portRoutes = new Map<string, PortRoutes>();
  /** Bumped on every apply: clusters compare it to know when to re-read. */
  generation = 0;

  constructor(cfg?: MeshConfig) {
    super();
    if (cfg) this.apply(cfg);
  }

  get config(): MeshConfig {
    return this.cfg;
  }

  get nodeName(): string {
    return this.cfg.node.name;
  }

  apply(cfg: MeshConfig): void {
    this.cfg = cfg;
    this.namespaces = new Map(cfg.namespaces.map((n) => [n.name, n]));
    this.workloads = new Map(cfg.workloads.map((w) => [workloadKey(w), w]));
    this.workloadsByIp = new Map(cfg.workloads.map((w) => [w.ip, w]));
    this.services = new Map(cfg.services.map((s) => [serviceKey(s), s]));

    this.endpointsByService = new Map();
    this.servicesByWorkload = new Map();
    const index = new LabelIndex(cfg.workloads);
    for (const s of cfg.services) {
      const eps = index.select(s.namespace, s.selector);
      this.endpointsByService.set(serviceKey(s), eps);
      for (const w of eps) {
        const k = workloadKey(w);
        const list = this.servicesByWorkload.get(k);
        if (list) list.push(s);
        else this.servicesByWorkload.set(k, [s]);
      }
    }

    this.byDestination = new Map();
    for (const s of cfg.services) {
      for (const p of s.ports) {
        this.byDestination.set(`${s.vip}:${p.port}`, { kind: 'service', service: s, port: p, key: `${serviceKey(s)}:${p.port}` });
      }
    }
    // Meshed pods dialed directly (pod ip:port): the ports their services target.
    for (const w of cfg.workloads) {
      if (!this.isMeshed(w.namespace)) continue;
      for (const s of this.servicesByWorkload.get(workloadKey(w)) ?? []) {
        for (const p of s.ports) {
          const dest = `${w.ip}:${p.targetPort}`;
          const known = this.byDestination.get(dest);
          if (!known) {
            const t: PodTarget = { kind: 'pod', workload: w, port: p.targetPort, protocol: p.protocol, key: `pod:${dest}` };
            if (s.trafficPolicy.upgrades) t.upgrades = s.trafficPolicy.upgrades;
            this.byDestination.set(dest, t);
          } else if (known.kind === 'pod' && s.trafficPolicy.upgrades) {
            // Several services target the port: it accepts what any of them allows.
            known.upgrades = [...new Set([...(known.upgrades ?? ['websocket']), ...s.trafficPolicy.upgrades])];
          } else if (known.kind === 'pod' && known.upgrades) {
            known.upgrades = [...new Set([...known.upgrades, 'websocket'])];
          }
        }
      }
    }
    // Routes attached to each service port, compiled once per snapshot (regexes included).
    this.portRoutes = attachRoutes(cfg.routes ?? [], cfg.services);
    this.generation++;
    this.emit('change', cfg);
  }

  namespace(name: string): Namespace | undefined {
    return this.namespaces.get(name);
  }

  /** A namespace is meshed when it carries `weft.io/mesh: enabled`. */
  isMeshed(ns: string): boolean {
    return this.namespaces.get(ns)?.labels[MESH_LABEL] === MESH_LABEL_ENABLED;
  }

  service(ns: string, name: string): Service | undefined {
    return this.services.get(`${ns}/${name}`);
  }

  workload(ns: string, name: string): Workload | undefined {
    return this.workloads.get(`${ns}/${name}`);
  }

  workloadByIp(ip: string): Workload | undefined {
    return this.workloadsByIp.get(ip);
  }

  allWorkloads(): readonly Workload[] {
    return this.cfg.workloads;
  }

  allServices(): readonly Service[] {
    return this.cfg.services;
  }

  /** Workloads scheduled on this node whose namespace is meshed: the ones capture attaches to. */
  meshedLocalWorkloads(): Workload[] {
    return this.cfg.workloads.filter((w) => w.node === this.cfg.node.name && this.isMeshed(w.namespace));
  }

  /** What an original destination (ip, port) means to the mesh, if anything. */
  resolve(ip: string, port: number): Target | undefined {
    return this.byDestination.get(`${ip}:${port}`);
  }

  /**
   * The routes attached to a service port (`ns/name:port`, a ServiceTarget's key), or
   * undefined: then the port behaves as if routes did not exist.
   */
  routesFor(key: string): PortRoutes | undefined {
    return this.portRoutes.get(key);
  }

  /** Every service port with routes attached. */
  routedPorts(): ReadonlyMap<string, PortRoutes> {
    return this.portRoutes;
  }

  /**
   * A route's backendRef as a target: the service `name` of namespace `ns`, port `port`; or
   * undefined when no such service (or port) exists (500 no_backend for that request).
   */
  backendTarget(ns: string, name: string, port: number): ServiceTarget | undefined {
    const service = this.services.get(`${ns}/${name}`);
    const sp = service?.ports.find((x) => x.port === port);
    if (!service || !sp) return undefined;
    return { kind: 'service', service, port: sp, key: `${serviceKey(service)}:${sp.port}` };
  }

  /** Every (ip, port) that connect4 should redirect: service VIP ports and meshed pods' target ports. */
  destinations(): { ip: string; port: number }[] {
    const out: { ip: string; port: number }[] = [];
    for (const k of this.byDestination.keys()) {
      const i = k.lastIndexOf(':');
      out.push({ ip: k.slice(0, i), port: Number(k.slice(i + 1)) });
    }
    return out;
  }

  /** The endpoints (pods) of a service port, described for the data plane. */
  endpointsOf(service: Service, port: ServicePort): EndpointInfo[] {
    const eps = this.endpointsByService.get(serviceKey(service)) ?? [];
    return eps.map((w) => this.endpointInfo(w, port.targetPort));
  }

  endpointInfo(w: Workload, port: number): EndpointInfo {
    return {
      ip: w.ip,
      port,
      weight: w.weight,
      workload: w.name,
      owner: workloadName(w),
      canonicalService: canonicalService(w),
      namespace: w.namespace,
      node: w.node,
      serviceAccount: w.serviceAccount,
      ready: w.ready,
      local: w.node === this.cfg.node.name,
      meshed: this.isMeshed(w.namespace),
    };
  }

  servicesOf(w: Workload): readonly Service[] {
    return this.servicesByWorkload.get(workloadKey(w)) ?? [];
  }
}
