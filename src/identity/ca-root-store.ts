/**
 * The CA's root in the cluster, for `weft ca --kubernetes` without `--cacerts`:
 *
 * - `KubernetesRootStore`: the self-signed root and its key in a Secret of the CA's namespace
 *   (type kubernetes.io/tls: `tls.crt`, `tls.key`), created on first start. Two replicas
 *   starting at once both generate a root and POST it; the API server accepts one and answers
 *   the other 409 AlreadyExists, which then reads the winner back and signs under it. A
 *   restart reads it. RBAC: `get` on that Secret only (resourceNames), and `create` on
 *   secrets in the namespace (Kubernetes cannot restrict `create` by name).
 * - `publishTrustBundle`: the trust bundle (every root agents should trust) in a ConfigMap
 *   (key `root.pem`) that the agents mount as `ca.rootCert`; created, or replaced when it
 *   differs (with resourceVersion preconditions, retried on conflict). The kubelet updates
 *   the mounted file, and the agents re-read it (trust-bundle.ts).
 */
import { ApiException, CoreV1Api, type KubeConfig, type V1ConfigMap, type V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { WeftError } from '../errors.js';
import type { RootMaterial, RootStore } from './ca.js';

/** Key of the trust bundle in the ConfigMap (and the file agents read). */
export const TRUST_BUNDLE_KEY = 'root.pem';

function apiError(what: string, err: unknown): WeftError {
  if (err instanceof ApiException) {
    const hint = err.code === 403 ? ' (check the weft-ca Role: it must allow this on this object)' : '';
    return new WeftError('WEFT_ERR_IDENTITY', `cannot ${what}: the Kubernetes API answered ${err.code}${hint}`, { cause: err });
  }
  return new WeftError('WEFT_ERR_IDENTITY', `cannot ${what}: ${(err as Error).message}`, { cause: err });
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string | undefined) => (s === undefined ? undefined : Buffer.from(s, 'base64').toString('utf8'));

export interface KubernetesRootStoreOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  log?: Logger;
}

export class KubernetesRootStore implements RootStore {
  readonly describe: string;
  private readonly core: CoreV1Api;

  constructor(private readonly opts: KubernetesRootStoreOptions) {
    this.describe = `Secret ${opts.namespace}/${opts.name}`;
    this.core = opts.kubeConfig.makeApiClient(CoreV1Api);
  }

  async load(): Promise<RootMaterial | undefined> {
    let secret: V1Secret;
    try {
      secret = await this.core.readNamespacedSecret({ namespace: this.opts.namespace, name: this.opts.name });
    } catch (err) {
      if (err instanceof ApiException && err.code === 404) return undefined;
      throw apiError(`read the CA root from ${this.describe}`, err);
    }
    const certPem = unb64(secret.data?.['tls.crt']);
    const keyPem = unb64(secret.data?.['tls.key']);
    if (!certPem || !keyPem) {
      throw new WeftError(
        'WEFT_ERR_IDENTITY',
        `${this.describe} exists but lacks tls.crt or tls.key: restore it, or delete it to have the CA create a new root (every agent must then trust the new one)`,
      );
    }
    return { certPem, keyPem };
  }

  async createIfAbsent(material: RootMaterial): Promise<{ material: RootMaterial; created: boolean }> {
    try {
      await this.core.createNamespacedSecret({
        namespace: this.opts.namespace,
        body: {
          apiVersion: 'v1',
          kind: 'Secret',
          type: 'kubernetes.io/tls',
          metadata: { name: this.opts.name, namespace: this.opts.namespace, labels: { 'app.kubernetes.io/name': 'weft-ca', 'app.kubernetes.io/component': 'ca' } },
          data: { 'tls.crt': b64(material.certPem), 'tls.key': b64(material.keyPem) },
        },
      });
      return { material, created: true };
    } catch (err) {
      if (!(err instanceof ApiException && err.code === 409)) throw apiError(`create ${this.describe}`, err);
    }
    // Another replica created it first: use that root, not ours.
    const winner = await this.load();
    if (!winner) throw new WeftError('WEFT_ERR_IDENTITY', `${this.describe} was reported to exist (409) but cannot be read back`);
    return { material: winner, created: false };
  }
}

/**
 * Makes ConfigMap `namespace/name` hold `pem` under `root.pem`: created when absent,
 * replaced when different (preconditioned on the resourceVersion read; a conflict re-reads
 * and tries again, up to 5 times). Resolves with what it did.
 */
export async function publishTrustBundle(opts: { kubeConfig: KubeConfig; namespace: string; name: string; pem: string; log?: Logger }): Promise<'created' | 'updated' | 'unchanged'> {
  const core = opts.kubeConfig.makeApiClient(CoreV1Api);
  const what = `ConfigMap ${opts.namespace}/${opts.name}`;
  for (let attempt = 0; attempt < 5; attempt++) {
    let current: V1ConfigMap | undefined;
    try {
      current = await core.readNamespacedConfigMap({ namespace: opts.namespace, name: opts.name });
    } catch (err) {
      if (!(err instanceof ApiException && err.code === 404)) throw apiError(`read ${what}`, err);
    }
    try {
      if (!current) {
        await core.createNamespacedConfigMap({
          namespace: opts.namespace,
          body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: opts.name, namespace: opts.namespace }, data: { [TRUST_BUNDLE_KEY]: opts.pem } },
        });
        opts.log?.info({ configMap: what }, 'published the trust bundle');
        return 'created';
      }
      if (current.data?.[TRUST_BUNDLE_KEY] === opts.pem) return 'unchanged';
      await core.replaceNamespacedConfigMap({
        namespace: opts.namespace,
        name: opts.name,
        body: { ...current, data: { ...current.data, [TRUST_BUNDLE_KEY]: opts.pem } },
      });
      opts.log?.info({ configMap: what }, 'published a new trust bundle; agents pick it up when the kubelet updates their mounted copy');
      return 'updated';
    } catch (err) {
      if (err instanceof ApiException && err.code === 409) continue;
      throw apiError(`write ${what}`, err);
    }
  }
  throw new WeftError('WEFT_ERR_IDENTITY', `cannot write ${what}: it kept changing under the CA (5 conflicts)`);
}
