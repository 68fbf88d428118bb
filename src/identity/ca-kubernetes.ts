/**
 * `weft ca --kubernetes`: who an agent is, and which identities it may obtain, from the
 * Kubernetes API.
 *
 * Authentication. The agent presents its projected ServiceAccount token (audience `weft-ca`,
 * deploy/kubernetes/agent.yaml). The CA sends it to the TokenReview API with its own
 * credentials and `spec.audiences: [weft-ca]`, and requires:
 *   - `status.authenticated`, and `weft-ca` among `status.audiences` (an API server that is
 *     not audience-aware does not echo it: refused, since it would accept any of the pod's
 *     tokens, e.g. the one it uses for the API);
 *   - the user to be one of the agent ServiceAccounts (`--agent-service-account`, default
 *     `system:serviceaccount:weft-system:weft-agent`);
 *   - the token to be bound to a pod, whose node is the caller's node: taken from
 *     `status.user.extra["authentication.kubernetes.io/node-name"]` (Kubernetes >= 1.30), or
 *     else by reading the pod named in `.../pod-name` (its `spec.nodeName`; the pod's UID must
 *     be the token's `.../pod-uid`).
 * A TokenReview that authenticated is remembered for `tokenCacheMs` (10 s, keyed by the
 * token's SHA-256), so an agent renewing many identities at once costs one review.
 * `weft1.` bootstrap tokens are not accepted in this mode: a node's identity comes from the
 * cluster, not from a secret that could be copied between nodes.
 *
 * Authorization. `namespace/serviceAccount` (and the pod name, when the agent names it) is
 * granted to node N only when the API lists a pod in that namespace with
 * `fieldSelector=spec.nodeName=N` running as that ServiceAccount (Pending or Running; not
 * Succeeded or Failed). The list of one (node, namespace) is cached for `podCacheMs` (5 s);
 * a miss re-lists if the cached list is older than `missRefreshMs` (1 s), so a pod just
 * scheduled is found at once while a caller asking for identities it does not have cannot
 * make the CA list more than once a second per namespace.
 *
 * Answers: 401 the token is invalid, expired, for another audience, or bound to no pod;
 * 403 the token is valid but not an agent's, or the node runs no such pod; 503 the API server
 * could not be asked (unreachable, timed out, 5xx, or it refused the CA's own credentials:
 * check the weft-ca ClusterRole). The agent's CertManager retries each with backoff.
 */
import { createHash } from 'node:crypto';
import { ApiException, AuthenticationV1Api, CoreV1Api, KubeConfig, type V1Pod, type V1TokenReview } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { CaHttpError, type Authenticator, type Authorizer, type SignRequest } from './ca-server.js';

export const DEFAULT_TOKEN_AUDIENCE = 'weft-ca';
export const DEFAULT_AGENT_SERVICE_ACCOUNT = 'system:serviceaccount:weft-system:weft-agent';

export const EXTRA_NODE_NAME = 'authentication.kubernetes.io/node-name';
export const EXTRA_POD_NAME = 'authentication.kubernetes.io/pod-name';
export const EXTRA_POD_UID = 'authentication.kubernetes.io/pod-uid';

const SA_PREFIX = 'system:serviceaccount:';
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/**
 * `system:serviceaccount:NS:NAME` or `NS/NAME` -> the username TokenReview reports.
 * @throws Error naming the expected forms.
 */
export function agentUsername(value: string): string {
  const m = value.startsWith(SA_PREFIX) ? /^([^:/]+):([^:/]+)$/.exec(value.slice(SA_PREFIX.length)) : /^([^:/]+)\/([^:/]+)$/.exec(value);
  if (!m || !DNS_LABEL.test(m[1]!) || !DNS_SUBDOMAIN.test(m[2]!)) {
    throw new Error(`--agent-service-account ${value}: expected NAMESPACE/NAME or system:serviceaccount:NAMESPACE:NAME`);
  }
  return `${SA_PREFIX}${m[1]}:${m[2]}`;
}

/** Default: in-cluster config in a pod (when KUBECONFIG is unset), else KUBECONFIG / ~/.kube/config. */
export function defaultKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  if (!process.env.KUBECONFIG && process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

export interface KubernetesCaAuthOptions {
  kubeConfig: KubeConfig;
  /** The audience agents' tokens are projected for (default `weft-ca`). */
  audience?: string;
  /** Usernames (`system:serviceaccount:NS:NAME`) of the agents (default: weft-system/weft-agent). */
  agentUsernames?: string[];
  /** How long a node's pod list in one namespace is trusted, ms (default 5000). */
  podCacheMs?: number;
  /** A refused identity re-lists only if the cached list is older than this, ms (default 1000). */
  missRefreshMs?: number;
  /** How long an authenticated TokenReview is remembered, ms (default 10000; 0: not at all). */
  tokenCacheMs?: number;
  /** Deadline of one API call, ms (default 5000). */
  requestTimeoutMs?: number;
  log?: Logger;
}

interface PodEntry {
  name: string;
  serviceAccount: string;
}

interface PodListCache {
  at: number;
  pods: PodEntry[];
  pending?: Promise<PodListCache>;
}

function firstExtra(review: V1TokenReview, key: string): string | undefined {
  const v = review.status?.user?.extra?.[key];
  return Array.isArray(v) && typeof v[0] === 'string' && v[0] !== '' ? v[0] : undefined;
}

/** Authenticates agents by TokenReview and authorizes identities by the pods on their node. */
export class KubernetesCaAuth {
  readonly audience: string;
  readonly agentUsernames: ReadonlySet<string>;
  private readonly auth: AuthenticationV1Api;
  private readonly core: CoreV1Api;
  private readonly podCacheMs: number;
  private readonly missRefreshMs: number;
  private readonly tokenCacheMs: number;
  private readonly timeoutMs: number;
  private readonly log: Logger | undefined;
  private readonly pods = new Map<string, PodListCache>();
  private readonly tokens = new Map<string, { node: string; until: number }>();
  private readonly server: string;

  constructor(opts: KubernetesCaAuthOptions) {
    this.audience = opts.audience ?? DEFAULT_TOKEN_AUDIENCE;
    this.agentUsernames = new Set(opts.agentUsernames?.length ? opts.agentUsernames : [DEFAULT_AGENT_SERVICE_ACCOUNT]);
    this.auth = opts.kubeConfig.makeApiClient(AuthenticationV1Api);
    this.core = opts.kubeConfig.makeApiClient(CoreV1Api);
    this.server = opts.kubeConfig.getCurrentCluster()?.server ?? '(no cluster)';
    this.podCacheMs = opts.podCacheMs ?? 5000;
    this.missRefreshMs = Math.min(opts.missRefreshMs ?? 1000, this.podCacheMs);
    this.tokenCacheMs = opts.tokenCacheMs ?? 10_000;
    this.timeoutMs = opts.requestTimeoutMs ?? 5000;
    this.log = opts.log?.child({ component: 'ca-kubernetes' });
  }

  /** For `startCaServer({ authenticate })`. */
  get authenticator(): Authenticator {
    return (token) => this.authenticate(token);
  }

  /** For `startCaServer({ authorize })`. */
  get authorizer(): Authorizer {
    return (node, req) => this.authorize(node, req);
  }

  /**
   * The node of the agent holding `token`.
   * @throws CaHttpError 401 (invalid token), 403 (not an agent), 503 (API unavailable).
   */
  async authenticate(token: string): Promise<string> {
    if (token.startsWith('weft1.')) {
      throw new CaHttpError(
        401,
        'unauthenticated',
        'node bootstrap tokens (weft1.) are not accepted by a CA running with --kubernetes: present the projected ServiceAccount token (audience ' + `${this.audience})`,
      );
    }
    const key = createHash('sha256').update(token).digest('base64url');
    const now = Date.now();
    const cached = this.tokens.get(key);
    if (cached && cached.until > now) return cached.node;
    if (cached) this.tokens.delete(key);

    const review = await this.call('TokenReview', () =>
      this.auth.createTokenReview({
        body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [this.audience] } },
      }),
    );
    const status = review.status;
    if (!status?.authenticated) {
      const why = status?.error ? `: ${status.error}` : '';
      throw new CaHttpError(401, 'unauthenticated', `the Kubernetes API did not authenticate the token for audience ${this.audience}${why}`);
    }
    if (!status.audiences?.includes(this.audience)) {
      throw new CaHttpError(
        401,
        'unauthenticated',
        `the TokenReview did not confirm audience ${this.audience} (status.audiences: ${JSON.stringify(status.audiences ?? [])}): the token is not meant for the CA`,
      );
    }
    const username = status.user?.username ?? '';
    if (!this.agentUsernames.has(username)) {
      throw new CaHttpError(403, 'not_an_agent', `${username || "the token's user"} is not a weft agent: only ${[...this.agentUsernames].join(', ')} may ask for certificates`);
    }
    const node = await this.nodeOf(review, username);
    if (this.tokenCacheMs > 0) {
      this.tokens.set(key, { node, until: now + this.tokenCacheMs });
      if (this.tokens.size > 10_000) this.sweepTokens(now);
    }
    this.log?.debug({ node, user: username }, 'agent authenticated');
    return node;
  }

  /**
   * True when the API lists a pod on `node` in `req.namespace` running as
   * `req.serviceAccount` (named `req.workload`, if given).
   * @throws CaHttpError 503 when the API cannot be asked.
   */
  async authorize(node: string, req: SignRequest): Promise<boolean> {
    const matches = (p: PodEntry) => p.serviceAccount === req.serviceAccount && (req.workload === undefined || p.name === req.workload);
    const key = `${node}\0${req.namespace}`;
    let entry = this.pods.get(key);
    const now = Date.now();
    if (entry && now - entry.at < this.podCacheMs && (entry.pods.some(matches) || now - entry.at < this.missRefreshMs)) {
      return entry.pods.some(matches);
    }
    entry = await this.listPods(key, node, req.namespace);
    return entry.pods.some(matches);
  }

  private async nodeOf(review: V1TokenReview, username: string): Promise<string> {
    const bound = firstExtra(review, EXTRA_NODE_NAME);
    if (bound) return bound;
    const podName = firstExtra(review, EXTRA_POD_NAME);
    if (!podName) {
      throw new CaHttpError(401, 'unauthenticated', `the token of ${username} is bound to no pod (a legacy Secret token?): mount a projected ServiceAccount token with audience ${this.audience}`);
    }
    // system:serviceaccount:NS:NAME: the pod is in the ServiceAccount's namespace.
    const namespace = username.slice(SA_PREFIX.length).split(':')[0]!;
    let pod: V1Pod;
    try {
      pod = await this.call(`get pod ${namespace}/${podName}`, () => this.core.readNamespacedPod({ namespace, name: podName }), [404]);
    } catch (err) {
      if (err instanceof ApiException && err.code === 404) {
        throw new CaHttpError(401, 'unauthenticated', `the pod ${namespace}/${podName} that the token is bound to no longer exists`);
      }
      throw err;
    }
    const uid = firstExtra(review, EXTRA_POD_UID);
    if (uid && pod.metadata?.uid && uid !== pod.metadata.uid) {
      throw new CaHttpError(401, 'unauthenticated', `the token is bound to an earlier pod named ${namespace}/${podName} (uid ${uid}, now ${pod.metadata.uid})`);
    }
    const node = pod.spec?.nodeName;
    if (!node) throw new CaHttpError(403, 'denied', `the pod ${namespace}/${podName} that the token is bound to is not scheduled on a node`);
    return node;
  }

  private listPods(key: string, node: string, namespace: string): Promise<PodListCache> {
    const existing = this.pods.get(key);
    if (existing?.pending) return existing.pending;
    const pending = this.call(`list pods in ${namespace} on node ${node}`, () => this.core.listNamespacedPod({ namespace, fieldSelector: `spec.nodeName=${node}` })).then(
      (list) => {
        const pods = list.items
          .filter((p) => p.spec?.nodeName === node && p.status?.phase !== 'Succeeded' && p.status?.phase !== 'Failed')
          .map((p) => ({ name: p.metadata?.name ?? '', serviceAccount: p.spec?.serviceAccountName || 'default' }));
        const fresh: PodListCache = { at: Date.now(), pods };
        this.pods.set(key, fresh);
        this.sweepPods(fresh.at);
        return fresh;
      },
      (err: unknown) => {
        // Keep serving the last good list until it goes stale; then the error is the answer.
        if (existing) delete existing.pending;
        else this.pods.delete(key);
        throw err;
      },
    );
    if (existing) existing.pending = pending;
    else this.pods.set(key, { at: 0, pods: [], pending });
    return pending;
  }

  /** Runs one API call with a deadline; anything but `passThrough` statuses becomes a 503. */
  private async call<T>(what: string, fn: () => Promise<T>, passThrough: number[] = []): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        fn(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new CaHttpError(503, 'unavailable', `the Kubernetes API (${this.server}) did not answer ${what} within ${this.timeoutMs} ms`)), this.timeoutMs);
        }),
      ]);
    } catch (err) {
      if (err instanceof CaHttpError) throw err;
      if (err instanceof ApiException) {
        if (passThrough.includes(err.code)) throw err;
        const hint = err.code === 401 || err.code === 403 ? " (the CA's own credentials were refused: check the weft-ca ClusterRole and binding)" : '';
        throw new CaHttpError(503, 'unavailable', `the Kubernetes API (${this.server}) answered ${err.code} to ${what}${hint}: ${apiMessage(err)}`);
      }
      throw new CaHttpError(503, 'unavailable', `cannot reach the Kubernetes API (${this.server}) for ${what}: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  private sweepPods(now: number): void {
    if (this.pods.size < 1000) return;
    for (const [k, v] of this.pods) if (!v.pending && now - v.at >= this.podCacheMs) this.pods.delete(k);
  }

  private sweepTokens(now: number): void {
    for (const [k, v] of this.tokens) if (v.until <= now) this.tokens.delete(k);
  }
}

function apiMessage(err: ApiException<unknown>): string {
  const body = err.body;
  if (typeof body === 'string') {
    try {
      const parsed = JSON.parse(body) as { message?: unknown };
      if (typeof parsed.message === 'string') return parsed.message;
    } catch {
      // not JSON
    }
    return body.slice(0, 200) || err.message;
  }
  if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') return (body as { message: string }).message;
  return err.message.split('\n')[0] ?? 'error';
}
