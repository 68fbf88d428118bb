/**
 * A local Kubernetes API server for tests: real HTTP on 127.0.0.1, the real list and watch
 * wire protocol, for the kinds weft's Kubernetes discovery reads. Nothing else.
 *
 * What it speaks:
 * - `GET <collection>` (cluster-wide or namespaced): a `<Kind>List` with
 *   `metadata.resourceVersion`; `limit`/`continue` are ignored (one page, no `continue`).
 * - `GET <collection>?watch=1|true&resourceVersion=N[&allowWatchBookmarks=true]`: a chunked
 *   stream of JSON lines `{type, object}` (ADDED | MODIFIED | DELETED | BOOKMARK | ERROR), first
 *   the history after N, then live changes. Watching from a compacted version answers one
 *   ERROR event (a `Status` with code 410, "too old resource version") and closes, as the
 *   real server does. `resourceVersion` empty or `0` starts with synthetic ADDED events.
 * - `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and
 *   `fieldSelector` (`f=v`, `f==v`, `f!=v`, e.g. `spec.nodeName=node-a`) on the fields the
 *   real server supports for the kind (`metadata.name`, `metadata.namespace` for namespaced
 *   kinds; Pods also `spec.nodeName`, `spec.serviceAccountName`, `spec.hostNetwork`,
 *   `status.phase`, `status.podIP`... see FIELDS); any other field is 400 BadRequest `field
 *   label not supported: F`, as the real server answers. An object that stops (starts)
 *   matching a watch's selectors is sent as DELETED (ADDED), like the real watch cache
 *   (cacheWatcher.convertToWatchEvent): the DELETED carries the object as it was before the
 *   change, with the change's resourceVersion.
 * - `GET <collection>/<name>` for one object.
 * - `POST <namespaced collection>`: create (201; 409 AlreadyExists; `metadata.generateName`
 *   honoured), as controllers create Events (`events.k8s.io/v1`).
 * - `PATCH <collection>/<name>` with a JSON merge patch (`application/merge-patch+json`): the
 *   object changes, `status` excepted for kinds with a status subresource (custom kinds).
 * - `PATCH <collection>/<name>/status`: the status subresource (only `status` changes).
 * - Custom kinds have the status subresource: `apply` without `status` keeps the stored one,
 *   as an update of the main resource does.
 * - `PUT <collection>/<name>` replaces one object, with `metadata.resourceVersion` as a
 *   precondition (409 Conflict): what the CA's trust-bundle publisher relies on.
 * - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a TokenReview answered from a table the
 *   test supplies (`setToken`, `serviceAccountToken`), honouring `spec.audiences` as the real
 *   server does: the token must carry one of them, and `status.audiences` is the intersection
 *   (with no `spec.audiences`, the API server's own audience). An unknown token, or one for
 *   other audiences, is `authenticated: false` with `status.error`.
 *
 * One resourceVersion counter for all kinds (etcd's revision). Test hooks: `apply`, `delete`,
 * `compact` (forget history: older watches get 410), `dropWatches` (cut every stream),
 * `bookmark` (send BOOKMARK to watches that asked for them), `failNext` (answer the next
 * requests with an error status), `requests` (what the client asked), `setToken` /
 * `deleteToken` (the TokenReview table), `traffic` / `resetTraffic` (objects and bytes the
 * server sent, per kind, in list answers and watch events: the API load of its clients).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { KubeConfig } from '@kubernetes/client-node';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    creationTimestamp?: string;
    generation?: number;
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

interface KindInfo {
  kind: string;
  group: string;
  version: string;
  plural: string;
  namespaced: boolean;
  /** Custom resources keep apiVersion/kind on list items; built-in types drop them. */
  custom: boolean;
}

/** The kinds this server knows. */
export const KINDS: readonly KindInfo[] = [
  { kind: 'Namespace', group: '', version: 'v1', plural: 'namespaces', namespaced: false, custom: false },
  { kind: 'Pod', group: '', version: 'v1', plural: 'pods', namespaced: true, custom: false },
  { kind: 'Service', group: '', version: 'v1', plural: 'services', namespaced: true, custom: false },
  { kind: 'Node', group: '', version: 'v1', plural: 'nodes', namespaced: false, custom: false },
  { kind: 'Secret', group: '', version: 'v1', plural: 'secrets', namespaced: true, custom: false },
  { kind: 'ConfigMap', group: '', version: 'v1', plural: 'configmaps', namespaced: true, custom: false },
  { kind: 'EndpointSlice', group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', namespaced: true, custom: false },
  { kind: 'TrafficPolicy', group: 'weft.io', version: 'v1alpha1', plural: 'trafficpolicies', namespaced: true, custom: true },
  { kind: 'AuthorizationPolicy', group: 'weft.io', version: 'v1alpha1', plural: 'authorizationpolicies', namespaced: true, custom: true },
  { kind: 'RequestAuthentication', group: 'weft.io', version: 'v1alpha1', plural: 'requestauthentications', namespaced: true, custom: true },
  { kind: 'FaultInjection', group: 'weft.io', version: 'v1alpha1', plural: 'faultinjections', namespaced: true, custom: true },
  { kind: 'HTTPRoute', group: 'gateway.networking.k8s.io', version: 'v1', plural: 'httproutes', namespaced: true, custom: true },
  { kind: 'GRPCRoute', group: 'gateway.networking.k8s.io', version: 'v1', plural: 'grpcroutes', namespaced: true, custom: true },
  { kind: 'TCPRoute', group: 'gateway.networking.k8s.io', version: 'v1alpha2', plural: 'tcproutes', namespaced: true, custom: true },
  { kind: 'Event', group: 'events.k8s.io', version: 'v1', plural: 'events', namespaced: true, custom: false },
];

const byKind = new Map(KINDS.map((k) => [k.kind, k]));
const apiVersionOf = (k: KindInfo) => (k.group ? `${k.group}/${k.version}` : k.version);

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

interface HistoryEvent {
  rv: number;
  type: EventType;
  kind: string;
  object: KubeObject;
  /** The object before this change (MODIFIED), for selector transitions. */
  previous?: KubeObject;
}

type Matcher = (obj: KubeObject) => boolean;

interface WatchStream {
  kind: string;
  namespace?: string;
  matches: Matcher;
  bookmarks: boolean;
  res: http.ServerResponse;
}

/** One request as the server saw it. */
export interface RequestRecord {
  method: string;
  path: string;
  query: Record<string, string>;
  watch: boolean;
  /** The parsed JSON body of a POST. */
  body?: unknown;
}

/** The API server's own audience: what a TokenReview without `spec.audiences` checks against. */
export const API_SERVER_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';

/** What the fake's TokenReview answers for one token. */
export interface TokenReviewEntry {
  /** Default true. false: the token is known but invalid (expired, bound object deleted). */
  authenticated?: boolean;
  user: { username: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  /** The token's own audiences (`aud`); default [API_SERVER_AUDIENCE]. */
  audiences?: string[];
  /** status.error when not authenticated. */
  error?: string;
}

/**
 * A projected ServiceAccount token's review, as a real API server (1.30+) answers it: the
 * username and groups of `namespace/serviceAccount`, and the bound pod (and its node, unless
 * `node` is omitted, as before the node-binding feature) in `status.user.extra`.
 */
export function serviceAccountToken(namespace: string, serviceAccount: string, bound: { pod?: string; podUid?: string; node?: string; nodeUid?: string; audiences?: string[] } = {}): TokenReviewEntry {
  const extra: Record<string, string[]> = {};
  if (bound.pod) {
    extra['authentication.kubernetes.io/pod-name'] = [bound.pod];
    extra['authentication.kubernetes.io/pod-uid'] = [bound.podUid ?? randomUUID()];
  }
  if (bound.node) {
    extra['authentication.kubernetes.io/node-name'] = [bound.node];
    extra['authentication.kubernetes.io/node-uid'] = [bound.nodeUid ?? randomUUID()];
  }
  extra['authentication.kubernetes.io/credential-id'] = [`JTI=${randomUUID()}`];
  return {
    user: {
      username: `system:serviceaccount:${namespace}:${serviceAccount}`,
      uid: randomUUID(),
      groups: ['system:serviceaccounts', `system:serviceaccounts:${namespace}`, 'system:authenticated'],
      extra,
    },
    audiences: bound.audiences ?? [API_SERVER_AUDIENCE],
  };
}

const clone = <T>(v: T): T => structuredClone(v);

function parseLabelSelector(selector: string): Matcher {
  const terms: Matcher[] = [];
  // Split on commas that are not inside parentheses.
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of selector) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur.trim()) parts.push(cur);
  for (const raw of parts) {
    const part = raw.trim();
    let m: RegExpMatchArray | null;
    if ((m = part.match(/^([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)$/))) {
      const [, key, op, list] = m;
      const values = new Set(list!.split(',').map((s) => s.trim()));
      terms.push((o) => {
        const v = o.metadata.labels?.[key!];
        return op === 'in' ? v !== undefined && values.has(v) : v === undefined || !values.has(v);
      });
    } else if ((m = part.match(/^([^\s!=]+)\s*!=\s*(\S*)$/))) {
      const [, key, value] = m;
      terms.push((o) => o.metadata.labels?.[key!] !== value);
    } else if ((m = part.match(/^([^\s!=]+)\s*==?\s*(\S*)$/))) {
      const [, key, value] = m;
      terms.push((o) => o.metadata.labels?.[key!] === value);
    } else if ((m = part.match(/^!\s*(\S+)$/))) {
      const key = m[1]!;
      terms.push((o) => o.metadata.labels?.[key] === undefined);
    } else if ((m = part.match(/^(\S+)$/))) {
      const key = m[1]!;
      terms.push((o) => o.metadata.labels?.[key] !== undefined);
    } else {
      throw new Error(`unable to parse requirement: ${part}`);
    }
  }
  return (o) => terms.every((t) => t(o));
}

function fieldValue(obj: unknown, path: string): string {
  let cur: unknown = obj;
  for (const key of path.split('.')) {
    if (cur === null || typeof cur !== 'object') return '';
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur === undefined || cur === null ? '' : String(cur);
}

/**
 * The fields a field selector may name, per kind, beyond `metadata.name` (every kind) and
 * `metadata.namespace` (namespaced kinds): the real server's `ToSelectableFields` (pods:
 * pkg/registry/core/pod/strategy.go; namespaces, nodes likewise), with the value it compares
 * (a missing boolean reads "false"). Custom resources have only the metadata fields unless
 * their CRD declares selectableFields, which weft's do not.
 */
const FIELDS: Readonly<Record<string, Readonly<Record<string, (o: KubeObject) => string>>>> = {
  Pod: {
    'spec.nodeName': (o) => fieldValue(o, 'spec.nodeName'),
    'spec.restartPolicy': (o) => fieldValue(o, 'spec.restartPolicy'),
    'spec.schedulerName': (o) => fieldValue(o, 'spec.schedulerName'),
    'spec.serviceAccountName': (o) => fieldValue(o, 'spec.serviceAccountName'),
    'spec.hostNetwork': (o) => String(fieldValue(o, 'spec.hostNetwork') === 'true'),
    'status.phase': (o) => fieldValue(o, 'status.phase'),
    'status.podIP': (o) => fieldValue(o, 'status.podIP'),
    'status.nominatedNodeName': (o) => fieldValue(o, 'status.nominatedNodeName'),
  },
  Namespace: { 'status.phase': (o) => fieldValue(o, 'status.phase') },
  Node: { 'spec.unschedulable': (o) => String(fieldValue(o, 'spec.unschedulable') === 'true') },
};

/** A field selector of `info`'s kind; throws the real server's message for a field it does not support. */
function parseFieldSelector(selector: string, info: KindInfo): Matcher {
  const fields: Record<string, (o: KubeObject) => string> = {
    'metadata.name': (o) => o.metadata.name,
    ...(info.namespaced ? { 'metadata.namespace': (o: KubeObject) => o.metadata.namespace ?? '' } : {}),
    ...FIELDS[info.kind],
  };
  const terms: Matcher[] = [];
  for (const raw of selector.split(',')) {
    const part = raw.trim();
    if (!part) continue;
    const m = part.match(/^([^\s!=]+)\s*(!=|==|=)\s*(.*)$/);
    if (!m) throw new Error(`invalid selector: '${selector}'; can't understand '${part}'`);
    const [, path, op, value] = m;
    const read = Object.hasOwn(fields, path!) ? fields[path!]! : undefined;
    if (!read) throw new Error(`field label not supported: ${path}`);
    terms.push((o) => (read(o) === value) === (op !== '!='));
  }
  return (o) => terms.every((t) => t(o));
}

/** Objects and bytes a server sent for one kind. */
export interface KindTraffic {
  /** Objects in list answers. */
  listed: number;
  /** ADDED, MODIFIED and DELETED events on watches (BOOKMARKs are not objects). */
  events: number;
  /** Bytes of list bodies and watch event lines. */
  bytes: number;
}

export class FakeApiServer {
  /** Every request, in order. */
  readonly requests: RequestRecord[] = [];
  private readonly server: http.Server;
  private readonly objects = new Map<string, KubeObject>();
  private history: HistoryEvent[] = [];
  private readonly watches = new Set<WatchStream>();
  private rv = 1;
  /** Watching from a version below this answers 410 Gone. */
  private compactedRv = 0;
  private failures: { count: number; status: number }[] = [];
  private readonly tokens = new Map<string, TokenReviewEntry>();
  /** Kinds whose CRD is "not installed": their API paths answer 404. */
  private readonly uninstalled = new Set<string>();
  private sent = new Map<string, KindTraffic>();

  private constructor(server: http.Server) {
    this.server = server;
  }

  /** Listen on 127.0.0.1, port 0 (or `port`: to come back where a closed server was). */
  static async start(opts: { port?: number } = {}): Promise<FakeApiServer> {
    let self: FakeApiServer | undefined;
    const server = http.createServer((req, res) => self!.handle(req, res));
    self = new FakeApiServer(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
    });
    return self;
  }

  get url(): string {
    const { port } = this.server.address() as AddressInfo;
    return `http://127.0.0.1:${port}`;
  }

  /** The current (latest) resourceVersion. */
  get resourceVersion(): number {
    return this.rv;
  }

  /** Number of open watch streams (optionally of one kind). */
  watchCount(kind?: string): number {
    let n = 0;
    for (const w of this.watches) if (!kind || w.kind === kind) n++;
    return n;
  }

  /** A KubeConfig pointing at this server (plain http, hence skipTLSVerify). */
  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'test', token: 'test-token' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'test' }],
      currentContext: 'fake',
    });
    return kc;
  }

  /** Create or replace an object (kind from `obj.kind`); returns the stored copy. */
  apply(obj: KubeObject): KubeObject {
    const info = byKind.get(obj.kind ?? '');
    if (!info) throw new Error(`fake apiserver: unknown kind ${obj.kind}`);
    const stored = clone(obj);
    stored.apiVersion = apiVersionOf(info);
    if (!info.namespaced) delete stored.metadata.namespace;
    else stored.metadata.namespace ??= 'default';
    const key = this.key(info.kind, stored.metadata.namespace, stored.metadata.name);
    const previous = this.objects.get(key);
    if (info.custom && previous?.status !== undefined && stored.status === undefined) stored.status = clone(previous.status);
    stored.metadata.uid = previous?.metadata.uid ?? stored.metadata.uid ?? randomUUID();
    stored.metadata.creationTimestamp = previous?.metadata.creationTimestamp ?? stored.metadata.creationTimestamp ?? new Date().toISOString();
    stored.metadata.generation = (previous?.metadata.generation ?? 0) + 1;
    stored.metadata.resourceVersion = String(++this.rv);
    this.objects.set(key, stored);
    this.record({ rv: this.rv, type: previous ? 'MODIFIED' : 'ADDED', kind: info.kind, object: stored, previous });
    return clone(stored);
  }

  /** Delete an object; returns false when there was none. `ns` is ignored for cluster-scoped kinds. */
  delete(kind: string, ns: string | undefined, name: string): boolean {
    const info = byKind.get(kind);
    if (!info) throw new Error(`fake apiserver: unknown kind ${kind}`);
    const key = this.key(kind, info.namespaced ? (ns ?? 'default') : undefined, name);
    const previous = this.objects.get(key);
    if (!previous) return false;
    this.objects.delete(key);
    const tombstone = clone(previous);
    tombstone.metadata.resourceVersion = String(++this.rv);
    this.record({ rv: this.rv, type: 'DELETED', kind, object: tombstone });
    return true;
  }

  get(kind: string, ns: string | undefined, name: string): KubeObject | undefined {
    const info = byKind.get(kind);
    if (!info) return undefined;
    const obj = this.objects.get(this.key(kind, info.namespaced ? (ns ?? 'default') : undefined, name));
    return obj && clone(obj);
  }

  /** Forget all history: a watch from any version older than the current one gets 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv;
    this.history = [];
  }

  /**
   * Cut every open watch stream. By default the TCP connection is destroyed mid-stream (the
   * client sees an error); `graceful` ends the chunked response instead (a server-side timeout).
   */
  dropWatches(opts: { graceful?: boolean } = {}): number {
    const n = this.watches.size;
    for (const w of [...this.watches]) {
      this.watches.delete(w);
      if (opts.graceful) w.res.end();
      else w.res.socket?.destroy();
    }
    return n;
  }

  /** Send a BOOKMARK at the current resourceVersion to every watch that allows bookmarks. */
  bookmark(): number {
    let n = 0;
    for (const w of this.watches) {
      if (!w.bookmarks) continue;
      const info = byKind.get(w.kind)!;
      this.send(w, 'BOOKMARK', {
        apiVersion: apiVersionOf(info),
        kind: info.kind,
        metadata: { name: '', resourceVersion: String(this.rv) },
      });
      n++;
    }
    return n;
  }

  /**
   * Per kind, what the server has sent since it started (or since `resetTraffic`): objects
   * in list answers, watch events, and bytes. With one client, that client's API load.
   */
  traffic(): Record<string, KindTraffic> {
    return Object.fromEntries([...this.sent].map(([k, v]) => [k, { ...v }]));
  }

  resetTraffic(): void {
    this.sent = new Map();
  }

  private count(kind: string, listed: number, events: number, bytes: number): void {
    const t = this.sent.get(kind) ?? { listed: 0, events: 0, bytes: 0 };
    t.listed += listed;
    t.events += events;
    t.bytes += bytes;
    this.sent.set(kind, t);
  }

  /** Make a kind's API answer 404, as when its CRD is not installed. */
  uninstall(kind: string): void {
    this.uninstalled.add(kind);
  }

  /** Serve a kind again (its CRD was installed). */
  install(kind: string): void {
    this.uninstalled.delete(kind);
  }

  /** What TokenReview answers for `token` from now on. */
  setToken(token: string, entry: TokenReviewEntry): void {
    this.tokens.set(token, structuredClone(entry));
  }

  /** Forget `token`: TokenReview answers `authenticated: false` for it. */
  deleteToken(token: string): boolean {
    return this.tokens.delete(token);
  }

  /** Answer the next `count` API requests with `status` (default 500); status 0: never answer them. */
  failNext(count: number, status = 500): void {
    this.failures.push({ count, status });
  }

  async close(): Promise<void> {
    this.dropWatches();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private key(kind: string, ns: string | undefined, name: string): string {
    return `${kind}/${ns ?? ''}/${name}`;
  }

  private record(ev: HistoryEvent): void {
    this.history.push(ev);
    for (const w of this.watches) this.deliver(w, ev);
  }

  /** Send `ev` to `w` if it concerns it, turning selector transitions into ADDED/DELETED. */
  private deliver(w: WatchStream, ev: HistoryEvent): void {
    if (ev.kind !== w.kind) return;
    if (w.namespace !== undefined && ev.object.metadata.namespace !== w.namespace) return;
    const now = w.matches(ev.object);
    if (ev.type === 'MODIFIED') {
      const before = ev.previous ? w.matches(ev.previous) : false;
      if (before && now) this.send(w, 'MODIFIED', ev.object);
      else if (!before && now) this.send(w, 'ADDED', ev.object);
      else if (before && !now && ev.previous) {
        // As the watch cache does: the object as the watcher last saw it, at the new version.
        const gone = clone(ev.previous);
        gone.metadata.resourceVersion = ev.object.metadata.resourceVersion;
        this.send(w, 'DELETED', gone);
      }
    } else if (now) {
      this.send(w, ev.type, ev.object);
    }
  }

  /**
   * PATCH .../NAME/status with a JSON merge patch (RFC 7386) on `status`, as the status
   * subresource takes it: only `status` changes; `metadata.resourceVersion` in the patch is a
   * precondition (409 Conflict when the object has moved on).
   */
  private patchStatus(req: http.IncomingMessage, res: http.ServerResponse, pathname: string, body: unknown): void {
    const route = this.route(pathname);
    if (!route || route.name === undefined || this.uninstalled.has(route.info.kind)) {
      this.status(res, 404, 'NotFound', `the server could not find the requested resource (${pathname}/status)`);
      return;
    }
    if (!/merge-patch\+json/.test(req.headers['content-type'] ?? '')) {
      this.status(
        res,
        415,
        'UnsupportedMediaType',
        `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got ${req.headers['content-type']})`,
      );
      return;
    }
    const key = this.key(route.info.kind, route.namespace, route.name);
    const previous = this.objects.get(key);
    if (!previous) {
      this.status(res, 404, 'NotFound', `${route.info.plural} "${route.name}" not found`);
      return;
    }
    const patch = (body ?? {}) as { metadata?: { resourceVersion?: string }; status?: unknown };
    const precondition = patch.metadata?.resourceVersion;
    if (precondition !== undefined && precondition !== previous.metadata.resourceVersion) {
      this.status(
        res,
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${route.info.plural} "${route.name}": the object has been modified; please apply your changes to the latest version and try again`,
      );
      return;
    }
    const stored = clone(previous);
    stored.status = mergePatch(stored.status, patch.status);
    stored.metadata.resourceVersion = String(++this.rv);
    this.objects.set(key, stored);
    this.record({ rv: this.rv, type: 'MODIFIED', kind: route.info.kind, object: stored, previous });
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(stored));
  }

  /** POST (create) on a namespaced collection, PUT (replace) or PATCH (JSON merge patch) on one object. */
  private write(req: http.IncomingMessage, res: http.ServerResponse, pathname: string, body: unknown): void {
    const route = this.route(pathname);
    if (!route || this.uninstalled.has(route.info.kind)) {
      this.status(res, 404, 'NotFound', `the server could not find the requested resource (${pathname})`);
      return;
    }
    const { info, namespace, name } = route;
    if (typeof body !== 'object' || body === null) {
      this.status(res, 400, 'BadRequest', 'the request body is not a JSON object');
      return;
    }
    if (req.method === 'POST') {
      if (name !== undefined || (info.namespaced && namespace === undefined)) {
        this.status(res, 405, 'MethodNotAllowed', `POST is not supported on ${pathname}`);
        return;
      }
      const obj = clone(body) as KubeObject;
      obj.metadata ??= { name: '' };
      if (!obj.metadata.name && typeof obj.metadata.generateName === 'string') obj.metadata.name = `${obj.metadata.generateName}${randomUUID().slice(0, 5)}`;
      if (!obj.metadata.name) {
        this.status(res, 422, 'Invalid', `${info.kind} is invalid: metadata.name: Required value: name or generateName is required`);
        return;
      }
      if (obj.metadata.namespace !== undefined && obj.metadata.namespace !== namespace) {
        this.status(res, 400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request');
        return;
      }
      obj.metadata.namespace = namespace;
      if (this.objects.has(this.key(info.kind, namespace, obj.metadata.name))) {
        this.status(res, 409, 'AlreadyExists', `${info.plural} "${obj.metadata.name}" already exists`);
        return;
      }
      obj.kind = info.kind;
      const stored = this.apply(obj);
      res.writeHead(201, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(stored));
      return;
    }
    if (req.method === 'PUT') {
      const obj = clone(body) as KubeObject;
      if (name === undefined || obj.metadata?.name !== name) {
        this.status(res, 400, 'BadRequest', `metadata.name: Required value (or it does not match the URL)`);
        return;
      }
      const previous = this.objects.get(this.key(info.kind, namespace, name));
      if (!previous) {
        this.status(res, 404, 'NotFound', `${info.plural} "${name}" not found`);
        return;
      }
      const rv = obj.metadata.resourceVersion;
      if (rv !== undefined && rv !== previous.metadata.resourceVersion) {
        this.status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${info.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
        return;
      }
      const stored = this.apply({ ...obj, kind: info.kind, metadata: { ...obj.metadata, ...(namespace ? { namespace } : {}) } });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(stored));
      return;
    }
    if (name === undefined) {
      this.status(res, 405, 'MethodNotAllowed', `PATCH is not supported on ${pathname}`);
      return;
    }
    if (!/merge-patch\+json/.test(req.headers['content-type'] ?? '')) {
      this.status(
        res,
        415,
        'UnsupportedMediaType',
        `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got ${req.headers['content-type']})`,
      );
      return;
    }
    const previous = this.objects.get(this.key(info.kind, namespace, name));
    if (!previous) {
      this.status(res, 404, 'NotFound', `${info.plural} "${name}" not found`);
      return;
    }
    const patch = clone(body) as { metadata?: { resourceVersion?: string }; status?: unknown };
    if (patch.metadata?.resourceVersion !== undefined && patch.metadata.resourceVersion !== previous.metadata.resourceVersion) {
      this.status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${info.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
      return;
    }
    if (info.custom) delete patch.status;
    const merged = mergePatch(clone(previous), patch) as KubeObject;
    merged.metadata.name = name;
    const stored = this.apply(merged);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(stored));
  }

  private send(w: WatchStream, type: string, object: unknown): void {
    if (w.res.writableEnded || w.res.destroyed) return;
    const line = `${JSON.stringify({ type, object })}\n`;
    this.count(w.kind, 0, type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED' ? 1 : 0, Buffer.byteLength(line));
    w.res.write(line);
  }

  private status(res: http.ServerResponse, code: number, reason: string, message: string): void {
    res.writeHead(code, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code }));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method === 'POST' || req.method === 'PATCH' || req.method === 'PUT') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => this.handleRequest(req, res, Buffer.concat(chunks).toString('utf8')));
      return;
    }
    this.handleRequest(req, res, undefined);
  }

  private handleRequest(req: http.IncomingMessage, res: http.ServerResponse, text: string | undefined): void {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const query = Object.fromEntries(url.searchParams.entries());
    const watch = query.watch === 'true' || query.watch === '1';
    let body: unknown;
    if (text !== undefined) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    }
    this.requests.push({ method: req.method ?? 'GET', path: url.pathname, query, watch, ...(text !== undefined ? { body } : {}) });

    const failure = this.failures[0];
    if (failure) {
      if (--failure.count <= 0) this.failures.shift();
      // Status 0: hang (close() ends the connection).
      if (failure.status !== 0) this.status(res, failure.status, 'InternalError', 'injected failure');
      return;
    }
    if (url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') {
      if (req.method !== 'POST') this.status(res, 405, 'MethodNotAllowed', `${req.method} is not supported on tokenreviews`);
      else this.tokenReview(res, body);
      return;
    }
    if (req.method === 'PATCH' && url.pathname.endsWith('/status')) {
      this.patchStatus(req, res, url.pathname.slice(0, -'/status'.length), body);
      return;
    }
    if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
      this.write(req, res, url.pathname, body);
      return;
    }
    if (req.method !== 'GET') {
      this.status(res, 405, 'MethodNotAllowed', `${req.method} is not supported by the fake apiserver`);
      return;
    }
    const route = this.route(url.pathname);
    if (!route || this.uninstalled.has(route.info.kind)) {
      this.status(res, 404, 'NotFound', `the server could not find the requested resource (${url.pathname})`);
      return;
    }
    const { info, namespace, name } = route;
    let matches: Matcher;
    try {
      const label = query.labelSelector ? parseLabelSelector(query.labelSelector) : () => true;
      const field = query.fieldSelector ? parseFieldSelector(query.fieldSelector, info) : () => true;
      matches = (o) => label(o) && field(o);
    } catch (err) {
      const message = (err as Error).message;
      // The real server's wording (what `kubectl get pods --field-selector spec.foo=x` prints).
      this.status(
        res,
        400,
        'BadRequest',
        message.startsWith('field label')
          ? `Unable to find {"${info.group}" "${info.version}" "${info.plural}"} that match label selector "${query.labelSelector ?? ''}", field selector "${query.fieldSelector ?? ''}": ${message}`
          : message,
      );
      return;
    }

    if (name !== undefined) {
      const obj = this.objects.get(this.key(info.kind, namespace, name));
      if (!obj) {
        this.status(res, 404, 'NotFound', `${info.plural} "${name}" not found`);
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(obj));
      return;
    }

    const current = [...this.objects.values()].filter((o) => o.kind === info.kind && (namespace === undefined || o.metadata.namespace === namespace) && matches(o));

    if (!watch) {
      const items = current.map((o) => {
        if (info.custom) return o;
        const { apiVersion: _a, kind: _k, ...rest } = o;
        return rest;
      });
      const text = JSON.stringify({
        apiVersion: apiVersionOf(info),
        kind: `${info.kind}List`,
        metadata: { resourceVersion: String(this.rv) },
        items,
      });
      this.count(info.kind, items.length, 0, Buffer.byteLength(text));
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(text);
      return;
    }

    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    const stream: WatchStream = {
      kind: info.kind,
      namespace,
      matches,
      bookmarks: query.allowWatchBookmarks === 'true' || query.allowWatchBookmarks === '1',
      res,
    };
    const from = query.resourceVersion ?? '';
    if (from === '' || from === '0') {
      for (const o of current) this.send(stream, 'ADDED', o);
    } else {
      const fromRv = Number(from);
      if (!Number.isInteger(fromRv) || fromRv < this.compactedRv) {
        this.send(stream, 'ERROR', {
          kind: 'Status',
          apiVersion: 'v1',
          metadata: {},
          status: 'Failure',
          message: `too old resource version: ${from} (${this.compactedRv})`,
          reason: 'Expired',
          code: 410,
        });
        res.end();
        return;
      }
      for (const ev of this.history) if (ev.rv > fromRv) this.deliver(stream, ev);
    }
    this.watches.add(stream);
    const forget = () => this.watches.delete(stream);
    res.on('close', forget);
    req.on('close', forget);
  }

  /** TokenReview, as kube-apiserver's token authenticators answer it (201 Created). */
  private tokenReview(res: http.ServerResponse, body: unknown): void {
    const spec = (body as { spec?: { token?: unknown; audiences?: unknown } } | undefined)?.spec;
    if (typeof spec?.token !== 'string' || spec.token === '') {
      this.status(res, 400, 'BadRequest', 'TokenReview.authentication.k8s.io is invalid: spec.token: Required value');
      return;
    }
    const wanted = Array.isArray(spec.audiences) && spec.audiences.length ? (spec.audiences as string[]) : [API_SERVER_AUDIENCE];
    const entry = this.tokens.get(spec.token);
    let status: Record<string, unknown>;
    if (!entry) {
      status = { authenticated: false, user: {}, error: '[invalid bearer token, square/go-jose: error in cryptographic primitive]' };
    } else {
      const audiences = wanted.filter((a) => (entry.audiences ?? [API_SERVER_AUDIENCE]).includes(a));
      if (!audiences.length) {
        status = { authenticated: false, user: {}, error: '[invalid bearer token, token audiences is invalid for the target audiences]' };
      } else if (entry.authenticated === false) {
        status = { authenticated: false, user: {}, error: entry.error ?? '[invalid bearer token, service account token has expired]' };
      } else {
        status = { authenticated: true, user: clone(entry.user), audiences };
      }
    }
    res.writeHead(201, { 'Content-Type': 'application/json' });
    res.end(
      JSON.stringify({
        kind: 'TokenReview',
        apiVersion: 'authentication.k8s.io/v1',
        metadata: { creationTimestamp: null },
        spec: { token: spec.token, ...(Array.isArray(spec.audiences) ? { audiences: spec.audiences } : {}) },
        status,
      }),
    );
  }

  private route(pathname: string): { info: KindInfo; namespace?: string; name?: string } | undefined {
    const seg = pathname.split('/').filter(Boolean);
    let group: string;
    let version: string;
    let rest: string[];
    if (seg[0] === 'api') {
      group = '';
      version = seg[1] ?? '';
      rest = seg.slice(2);
    } else if (seg[0] === 'apis') {
      group = seg[1] ?? '';
      version = seg[2] ?? '';
      rest = seg.slice(3);
    } else return undefined;
    const find = (plural: string | undefined) => KINDS.find((k) => k.group === group && k.version === version && k.plural === plural);

    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const info = find(rest[0]);
    if (!info || rest.length > 2) return undefined;
    if (namespace !== undefined && !info.namespaced) return undefined;
    return { info, namespace, name: rest[1] };
  }
}

// --- real object JSON, as the API server would hold it ---------------------------------

export function namespaceObject(name: string, labels: Record<string, string> = {}): KubeObject {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels }, spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' } };
}

export interface NodeSpecLite {
  /** Replaces the default addresses (the InternalIP and a Hostname), e.g. to test ExternalIP or IPv6. */
  addresses?: { type: string; address: string }[];
  labels?: Record<string, string>;
  ready?: boolean;
}

/**
 * A Node as the kubelet registers it: InternalIP and Hostname addresses, conditions, capacity,
 * nodeInfo and an image list (the bulk a trimmed cache must drop).
 */
export function nodeObject(name: string, internalIP: string, n: NodeSpecLite = {}): KubeObject {
  const ready = n.ready ?? true;
  const now = '2026-01-01T00:00:00Z';
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name,
      labels: {
        'kubernetes.io/arch': 'amd64',
        'kubernetes.io/hostname': name,
        'kubernetes.io/os': 'linux',
        ...n.labels,
      },
      annotations: { 'node.alpha.kubernetes.io/ttl': '0', 'volumes.kubernetes.io/controller-managed-attach-detach': 'true' },
    },
    spec: { podCIDR: '10.1.0.0/24', podCIDRs: ['10.1.0.0/24'] },
    status: {
      addresses: n.addresses ?? [
        { type: 'InternalIP', address: internalIP },
        { type: 'Hostname', address: name },
      ],
      capacity: { cpu: '4', memory: '16374584Ki', pods: '110' },
      allocatable: { cpu: '4', memory: '16272184Ki', pods: '110' },
      conditions: [
        { type: 'MemoryPressure', status: 'False', reason: 'KubeletHasSufficientMemory', lastHeartbeatTime: now, lastTransitionTime: now },
        { type: 'DiskPressure', status: 'False', reason: 'KubeletHasNoDiskPressure', lastHeartbeatTime: now, lastTransitionTime: now },
        { type: 'PIDPressure', status: 'False', reason: 'KubeletHasSufficientPID', lastHeartbeatTime: now, lastTransitionTime: now },
        { type: 'Ready', status: ready ? 'True' : 'False', reason: ready ? 'KubeletReady' : 'KubeletNotReady', lastHeartbeatTime: now, lastTransitionTime: now },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
      nodeInfo: {
        architecture: 'amd64',
        containerRuntimeVersion: 'containerd://1.7.22',
        kernelVersion: '6.8.0-45-generic',
        kubeProxyVersion: 'v1.31.1',
        kubeletVersion: 'v1.31.1',
        operatingSystem: 'linux',
        osImage: 'Ubuntu 24.04.1 LTS',
        machineID: randomUUID().replace(/-/g, ''),
        systemUUID: randomUUID(),
        bootID: randomUUID(),
      },
      images: [
        { names: ['registry.k8s.io/kube-proxy@sha256:' + '0'.repeat(64), 'registry.k8s.io/kube-proxy:v1.31.1'], sizeBytes: 30211855 },
        { names: ['registry.example/weft@sha256:' + '1'.repeat(64), 'registry.example/weft:1'], sizeBytes: 61000000 },
      ],
    },
  };
}

export interface PodSpecLite {
  node: string;
  ip?: string;
  serviceAccount?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  uid?: string;
  qosClass?: 'Guaranteed' | 'Burstable' | 'BestEffort';
  ready?: boolean;
  hostNetwork?: boolean;
  /** Named container ports, e.g. { http: 8080 }. */
  ports?: Record<string, number>;
  phase?: string;
}

export function podObject(name: string, namespace: string, p: PodSpecLite): KubeObject {
  const ready = p.ready ?? true;
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace,
      ...(p.uid ? { uid: p.uid } : {}),
      labels: p.labels ?? {},
      annotations: { 'kubectl.kubernetes.io/restartedAt': '2026-01-01T00:00:00Z', ...p.annotations },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${name}-rs`, uid: randomUUID(), controller: true }],
    },
    spec: {
      nodeName: p.node,
      serviceAccountName: p.serviceAccount ?? 'default',
      hostNetwork: p.hostNetwork,
      restartPolicy: 'Always',
      containers: [
        {
          name: 'app',
          image: 'registry.example/app:1',
          ports: Object.entries(p.ports ?? {}).map(([portName, containerPort]) => ({ name: portName, containerPort, protocol: 'TCP' })),
          resources: {},
        },
      ],
    },
    status: {
      phase: p.phase ?? 'Running',
      qosClass: p.qosClass ?? 'BestEffort',
      hostIP: '10.77.0.1',
      ...(p.ip ? { podIP: p.ip, podIPs: [{ ip: p.ip }] } : {}),
      conditions: [
        { type: 'Initialized', status: 'True' },
        { type: 'Ready', status: ready ? 'True' : 'False' },
        { type: 'ContainersReady', status: ready ? 'True' : 'False' },
        { type: 'PodScheduled', status: 'True' },
      ],
    },
  };
}

export interface ServicePortLite {
  name?: string;
  port: number;
  targetPort?: number | string;
  appProtocol?: string;
  protocol?: 'TCP' | 'UDP';
}

export function serviceObject(name: string, namespace: string, s: { clusterIP: string; selector?: Record<string, string>; ports: ServicePortLite[]; type?: string }): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace },
    spec: {
      type: s.type ?? 'ClusterIP',
      clusterIP: s.clusterIP,
      clusterIPs: s.clusterIP === 'None' ? ['None'] : [s.clusterIP],
      ipFamilies: ['IPv4'],
      ...(s.selector ? { selector: s.selector } : {}),
      ports: s.ports.map((p) => ({ protocol: 'TCP', ...p })),
      sessionAffinity: 'None',
    },
    status: { loadBalancer: {} },
  };
}

export interface EndpointLite {
  ip: string;
  pod: string;
  node: string;
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
}

export function endpointSliceObject(name: string, namespace: string, service: string, endpoints: EndpointLite[], ports: { name?: string; port: number; appProtocol?: string }[]): KubeObject {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name,
      namespace,
      labels: { 'kubernetes.io/service-name': service, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' },
    },
    addressType: 'IPv4',
    endpoints: endpoints.map((e) => ({
      addresses: [e.ip],
      conditions: { ready: e.ready ?? true, serving: e.serving ?? e.ready ?? true, terminating: e.terminating ?? false },
      nodeName: e.node,
      targetRef: { kind: 'Pod', namespace, name: e.pod, uid: randomUUID() },
    })),
    ports: ports.map((p) => ({ protocol: 'TCP', ...p })),
  };
}

/** A weft.io/v1alpha1 custom resource. */
/** RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** A Gateway API route (HTTPRoute, GRPCRoute: v1; TCPRoute: v1alpha2). */
export function gatewayRouteObject(kind: 'HTTPRoute' | 'GRPCRoute' | 'TCPRoute', name: string, namespace: string, spec: unknown): KubeObject {
  return { apiVersion: `gateway.networking.k8s.io/${kind === 'TCPRoute' ? 'v1alpha2' : 'v1'}`, kind, metadata: { name, namespace }, spec };
}

export function weftObject(kind: 'TrafficPolicy' | 'AuthorizationPolicy' | 'RequestAuthentication' | 'FaultInjection', name: string, namespace: string, spec: unknown): KubeObject {
  return { apiVersion: 'weft.io/v1alpha1', kind, metadata: { name, namespace }, spec };
}
