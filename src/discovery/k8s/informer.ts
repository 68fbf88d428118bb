/**
 * One resource's list+watch cache: @kubernetes/client-node's `ListWatch` (list, then watch from
 * the list's resourceVersion; on a 410 Gone, relist and diff; resume the watch from the last
 * seen resourceVersion after a clean close), plus what it leaves to its caller:
 *
 * - watch bookmarks (`allowWatchBookmarks=true`): the server periodically tells the cache the
 *   current resourceVersion, so a reconnect after a quiet period resumes instead of hitting
 *   410 Gone and relisting everything;
 * - restarts after errors (a refused connection, a 5xx, a stream cut mid-way) with capped,
 *   jittered exponential backoff; `ListWatch` alone stops for good on the first error;
 * - paged lists (`limit`/`continue`), so a large cluster is listed in bounded chunks, each
 *   with a deadline (a list that hangs is retried instead of stalling the cache forever);
 * - a server-side watch timeout (`timeoutSeconds`, 5-10 min, jittered so that the nodes do
 *   not reconnect in step): a watch on a connection that died silently is replaced within
 *   minutes; the new watch resumes from the last resourceVersion, so nothing is lost;
 * - an optional `trim` applied to every object before it is cached, to keep memory per
 *   object small for cluster-wide caches (pods).
 */
import { EventEmitter } from 'node:events';
import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';

/** One page of a list call. */
export type ListPage<T extends KubernetesObject> = (opts: { limit: number; _continue?: string }) => Promise<KubernetesListObject<T>>;

export interface ResourceInformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /** Kind, for logs. */
  kind: string;
  /** Collection path the watch uses, e.g. `/api/v1/pods`, `/apis/weft.io/v1alpha1/trafficpolicies`. */
  path: string;
  /** Lists one page; must apply the same selectors as `labelSelector`/`fieldSelector`. */
  list: ListPage<T>;
  labelSelector?: string;
  fieldSelector?: string;
  /** Reduce each object before caching it (keep `metadata.name/namespace/resourceVersion`). */
  trim?: (obj: T) => T;
  log: Logger;
  /** Page size for lists (default 500). */
  pageSize?: number;
  /** First retry delay after an error, ms (default 250); doubles up to `maxBackoffMs`. */
  backoffMs?: number;
  /** Cap on the retry delay, ms (default 30000). */
  maxBackoffMs?: number;
  /** Deadline of one list page, ms (default 60000). */
  listTimeoutMs?: number;
  /**
   * The resource may not exist (a CRD of another project, like the Gateway API's): a 404 on
   * the first list counts as synced and empty (`absent` is emitted, once), and the list is
   * retried every `absentRetryMs` (default 60000) so that installing the CRD later is noticed.
   */
  optional?: boolean;
  absentRetryMs?: number;
}

/** A `Watch` that asks for bookmarks and trims objects before `ListWatch` sees them. */
class BookmarkWatch extends Watch {
  constructor(
    config: KubeConfig,
    private readonly trim: ((obj: any) => any) | undefined,
  ) {
    super(config);
  }

  override watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: any, watchObj?: any) => void,
    done: (err: any) => void,
  ): Promise<AbortController> {
    const trim = this.trim;
    const cb = trim ? (phase: string, obj: any, raw?: any) => callback(phase, phase === 'ADDED' || phase === 'MODIFIED' || phase === 'DELETED' ? trim(obj) : obj, raw) : callback;
    const timeoutSeconds = 300 + Math.floor(Math.random() * 300);
    return super.watch(path, { ...queryParams, allowWatchBookmarks: true, timeoutSeconds }, cb, done);
  }
}

export type ChangeType = 'add' | 'update' | 'delete';

/**
 * A one-line description of a list/watch failure. The generated client's ApiException message
 * carries the whole response (headers and body); the Status message in the body is what
 * matters (`HTTP 403: pods is forbidden: User ... cannot list ...`).
 */
export function describeApiError(err: unknown): string {
  const e = err as { code?: unknown; statusCode?: unknown; body?: unknown; message?: unknown };
  const status = typeof e?.code === 'number' ? e.code : typeof e?.statusCode === 'number' ? e.statusCode : undefined;
  if (status !== undefined) {
    let detail: string | undefined;
    let body = e.body;
    if (typeof body === 'string') {
      const text = body;
      try {
        body = JSON.parse(text);
      } catch {
        detail = text.slice(0, 200);
      }
    }
    if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') {
      detail = (body as { message: string }).message;
    }
    if (!detail && typeof e.message === 'string') detail = e.message.split('\n')[0];
    return `HTTP ${status}${detail ? `: ${detail}` : ''}`;
  }
  const message = err instanceof Error ? err.message : String(err);
  return message.split('\n')[0] ?? message;
}

/** The HTTP status of an API error, if it has one. */
export function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  return typeof e?.code === 'number' ? e.code : typeof e?.statusCode === 'number' ? e.statusCode : undefined;
}

/**
 * A resource cache kept in sync with the API server.
 *
 * Events:
 * - `change` (type: ChangeType, obj: T): an object was added, updated or deleted (including the
 *   deletions a relist finds).
 * - `synced`: the first list succeeded and the watch is open.
 * - `failure` (err: Error): a list or watch failed; a retry is scheduled.
 */
export class ResourceInformer<T extends KubernetesObject> extends EventEmitter {
  readonly kind: string;
  private readonly lw: ListWatch<T>;
  private readonly log: Logger;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private running = false;
  private attemptFailed = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private consecutiveFailures = 0;
  private isSynced = false;
  private readonly optional: boolean;
  private readonly absentRetryMs: number;
  private isAbsent = false;

  constructor(opts: ResourceInformerOptions<T>) {
    super();
    this.kind = opts.kind;
    this.log = opts.log.child({ resource: opts.kind });
    this.backoffMs = opts.backoffMs ?? 250;
    this.maxBackoffMs = opts.maxBackoffMs ?? 30_000;
    this.optional = opts.optional ?? false;
    this.absentRetryMs = opts.absentRetryMs ?? 60_000;
    const pageSize = opts.pageSize ?? 500;
    const listTimeoutMs = opts.listTimeoutMs ?? 60_000;
    const page = (cont: string | undefined) => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([
        opts.list({ limit: pageSize, _continue: cont }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`list ${opts.kind} timed out after ${listTimeoutMs}ms`)), listTimeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
    };
    const trim = opts.trim;
    const listAll = async (): Promise<KubernetesListObject<T>> => {
      // All pages share the first page's resourceVersion (a consistent snapshot).
      let first: KubernetesListObject<T> | undefined;
      const items: T[] = [];
      let cont: string | undefined;
      do {
        const result = await page(cont);
        first ??= result;
        for (const item of result.items ?? []) items.push(trim ? trim(item) : item);
        cont = result.metadata?._continue || undefined;
      } while (cont);
      return { ...first, metadata: { ...first.metadata, _continue: undefined }, items };
    };
    this.lw = new ListWatch<T>(opts.path, new BookmarkWatch(opts.kubeConfig, trim), listAll, false, opts.labelSelector, opts.fieldSelector);
    this.lw.on('add', (o) => this.onChange('add', o));
    this.lw.on('update', (o) => this.onChange('update', o));
    this.lw.on('delete', (o) => this.onChange('delete', o));
    this.lw.on('error', (err) => this.onError(err));
  }

  get synced(): boolean {
    return this.isSynced;
  }

  /** An optional resource whose API the server does not serve (its CRD is not installed). */
  get absent(): boolean {
    return this.isAbsent;
  }

  /** Begin listing and watching; `synced` follows. Errors are retried, never thrown. */
  start(): void {
    if (this.running) return;
    this.running = true;
    void this.attempt();
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.lw.stop();
  }

  list(): readonly T[] {
    return this.lw.list();
  }

  get(name: string, namespace?: string): T | undefined {
    return this.lw.get(name, namespace);
  }

  /** The resourceVersion the next watch resumes from ('' when a relist is due). */
  resourceVersion(): string {
    return this.lw.latestResourceVersion();
  }

  private async attempt(): Promise<void> {
    this.retryTimer = undefined;
    if (!this.running) return;
    this.attemptFailed = false;
    // Resumes the watch from the last resourceVersion, or relists when there is none.
    await this.lw.start();
    if (!this.running) {
      // stop() raced with a list in flight: the watch that list opened must not outlive us.
      await this.lw.stop();
      return;
    }
    if (this.attemptFailed) return;
    this.consecutiveFailures = 0;
    if (this.isAbsent) {
      this.isAbsent = false;
      this.log.info('resource now served by the API server; watching it');
    }
    if (!this.isSynced) {
      this.isSynced = true;
      this.log.debug({ resourceVersion: this.resourceVersion() }, 'synced');
      this.emit('synced');
    }
  }

  private onChange(type: ChangeType, obj: T): void {
    this.consecutiveFailures = 0;
    this.emit('change', type, obj);
  }

  private onError(err: unknown): void {
    // Aborts of our own stop() arrive here too.
    if (!this.running) return;
    this.attemptFailed = true;
    if (this.retryTimer) return;
    if (this.optional && statusOf(err) === 404 && (this.isAbsent || !this.isSynced || this.list().length === 0)) {
      // Not installed: an empty, synced cache, and a slow re-check for when it is installed.
      if (!this.isAbsent) {
        this.isAbsent = true;
        this.log.warn({ retryInMs: this.absentRetryMs }, `${this.kind} is not served by the API server (CRD not installed?); treated as none until it is`);
        this.emit('absent');
      }
      if (!this.isSynced) {
        this.isSynced = true;
        this.emit('synced');
      }
      this.retryTimer = setTimeout(() => void this.attempt(), this.absentRetryMs);
      return;
    }
    const n = this.consecutiveFailures++;
    const cap = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** Math.min(n, 20));
    const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
    const e = new Error(describeApiError(err), { cause: err });
    const level = n < 3 ? 'info' : 'warn';
    this.log[level]({ err: e.message, retryInMs: delay, failures: n + 1 }, 'list/watch failed; retrying');
    this.emit('failure', e);
    this.retryTimer = setTimeout(() => void this.attempt(), delay);
  }
}
