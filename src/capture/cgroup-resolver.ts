/**
 * Finds a Kubernetes pod's cgroup v2 directory on this node, for the capture manager to
 * attach eBPF programs to. Programs attached to the pod-level cgroup apply to every container
 * of the pod (cgroup BPF programs are inherited by descendant cgroups).
 *
 * The kubelet names pod cgroups after the pod UID and QoS class, differently for each cgroup
 * driver:
 *
 * | QoS        | systemd driver                                                             | cgroupfs driver              |
 * |------------|-----------------------------------------------------------------------------|------------------------------|
 * | Guaranteed | `kubepods.slice/kubepods-pod<uid_>.slice`                                   | `kubepods/pod<uid>`          |
 * | Burstable  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` | `kubepods/burstable/pod<uid>` |
 * | BestEffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice` | `kubepods/besteffort/pod<uid>` |
 *
 * (`<uid_>` is the UID with `-` replaced by `_`: systemd reserves `-` for slice nesting.)
 * When none of those exists (a kubelet `--cgroup-root`, kind/k3s nesting such as
 * `kubelet.slice/kubelet-kubepods.slice/...`), a bounded breadth-first scan looks for a
 * directory named after the pod UID in either spelling.
 *
 * A pod event often arrives before the kubelet has created the cgroup, so `CgroupResolver`
 * retries until the directory appears and then emits `resolved`.
 */
import { EventEmitter } from 'node:events';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

export type QosClass = 'Guaranteed' | 'Burstable' | 'BestEffort';

export interface PodRef {
  uid: string;
  /** `status.qosClass`; when absent every class is tried. */
  qosClass?: string;
}

/** How deep the fallback scan goes below the cgroup root (kubepods nesting is 3-4 levels). */
const SCAN_DEPTH = 5;
/** Directories visited by one fallback scan, at most: it must stay cheap on a busy node. */
const SCAN_LIMIT = 20_000;

/** The candidate paths, relative to the cgroup root, in order of likelihood. */
export function podCgroupCandidates(uid: string, qosClass?: string): string[] {
  const u = uid.replace(/-/g, '_');
  const systemd: Record<QosClass, string> = {
    Guaranteed: `kubepods.slice/kubepods-pod${u}.slice`,
    Burstable: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${u}.slice`,
    BestEffort: `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${u}.slice`,
  };
  const cgroupfs: Record<QosClass, string> = {
    Guaranteed: `kubepods/pod${uid}`,
    Burstable: `kubepods/burstable/pod${uid}`,
    BestEffort: `kubepods/besteffort/pod${uid}`,
  };
  const classes: QosClass[] = ['Guaranteed', 'Burstable', 'BestEffort'];
  const known = classes.find((c) => c.toLowerCase() === qosClass?.toLowerCase());
  const order = known ? [known, ...classes.filter((c) => c !== known)] : classes;
  return order.flatMap((c) => [systemd[c], cgroupfs[c]]);
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** True when `name` is the pod-level cgroup directory of `uid` (either driver's spelling). */
function isPodDirName(name: string, uid: string): boolean {
  const u = uid.replace(/-/g, '_');
  return name === `pod${uid}` || name === `pod${u}` || name.endsWith(`-pod${u}.slice`) || name.endsWith(`-pod${uid}.slice`);
}

async function scan(cgroupRoot: string, uid: string): Promise<string | undefined> {
  let level = [cgroupRoot];
  let visited = 0;
  for (let depth = 0; depth < SCAN_DEPTH && level.length; depth++) {
    const next: string[] = [];
    for (const dir of level) {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        continue;
      }
      for (const e of entries) {
        if (!e.isDirectory()) continue;
        const full = path.join(dir, e.name);
        if (isPodDirName(e.name, uid)) return full;
        // Pod directories hold only container cgroups: no pod below another pod.
        if (/^pod|-pod[0-9a-f_-]+\.slice$/.test(e.name)) continue;
        if (++visited > SCAN_LIMIT) return undefined;
        next.push(full);
      }
    }
    level = next;
  }
  return undefined;
}

/**
 * The absolute cgroup v2 directory of a pod, or undefined when it does not exist (yet).
 * Tries the kubelet's systemd and cgroupfs layouts for the pod's QoS class first, then the
 * other classes, then a bounded scan of `cgroupRoot`.
 */
export async function resolvePodCgroup(pod: PodRef, cgroupRoot: string): Promise<string | undefined> {
  for (const rel of podCgroupCandidates(pod.uid, pod.qosClass)) {
    const full = path.join(cgroupRoot, rel);
    if (await isDir(full)) return full;
  }
  return scan(cgroupRoot, pod.uid);
}

export interface CgroupResolverOptions {
  /** The cgroup v2 mount point (e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`). */
  cgroupRoot: string;
  /** First retry delay, ms (default 200); doubles up to `maxRetryMs`. */
  retryMs?: number;
  /** Cap on the retry delay, ms (default 5000). */
  maxRetryMs?: number;
}

interface Tracked {
  pod: PodRef;
  path?: string;
  timer?: NodeJS.Timeout;
  delay: number;
  generation: number;
  /** Settles with the outcome of the first attempt. */
  first: Promise<string | undefined>;
}

/**
 * Resolves pod cgroups and keeps retrying the ones that do not exist yet.
 *
 * Events:
 * - `resolved` (uid: string, path: string): a tracked pod's cgroup was found (once per pod,
 *   and again if it is re-tracked after `forget`).
 */
export class CgroupResolver extends EventEmitter {
  private readonly root: string;
  private readonly retryMs: number;
  private readonly maxRetryMs: number;
  private readonly pods = new Map<string, Tracked>();
  private stopped = false;

  constructor(opts: CgroupResolverOptions) {
    super();
    this.root = opts.cgroupRoot;
    this.retryMs = opts.retryMs ?? 200;
    this.maxRetryMs = opts.maxRetryMs ?? 5000;
  }

  /** The resolved path of a tracked pod, if known. */
  get(uid: string): string | undefined {
    return this.pods.get(uid)?.path;
  }

  /**
   * Start resolving a pod (idempotent). Resolution is asynchronous: the path is available from
   * `get` once `resolved` has been emitted. The promise settles with the first attempt's
   * outcome (undefined: not there yet, retries continue), so a caller can wait for the pods
   * whose cgroups already exist.
   */
  track(pod: PodRef): Promise<string | undefined> {
    if (this.stopped) return Promise.resolve(undefined);
    const existing = this.pods.get(pod.uid);
    if (existing) {
      // The QoS class is immutable for a pod, but the first event may not have carried it.
      if (!existing.pod.qosClass && pod.qosClass) existing.pod = pod;
      return existing.path !== undefined ? Promise.resolve(existing.path) : existing.first;
    }
    let settle!: (v: string | undefined) => void;
    const first = new Promise<string | undefined>((resolve) => (settle = resolve));
    const t: Tracked = { pod, delay: this.retryMs, generation: 0, first };
    this.pods.set(pod.uid, t);
    void this.attempt(t, settle);
    return first;
  }

  /** Stop tracking a pod (deleted, moved off the node). */
  forget(uid: string): void {
    const t = this.pods.get(uid);
    if (!t) return;
    clearTimeout(t.timer);
    t.generation++;
    this.pods.delete(uid);
  }

  /** UIDs currently tracked. */
  tracked(): string[] {
    return [...this.pods.keys()];
  }

  stop(): void {
    this.stopped = true;
    for (const uid of [...this.pods.keys()]) this.forget(uid);
  }

  private async attempt(t: Tracked, settle?: (v: string | undefined) => void): Promise<void> {
    const gen = t.generation;
    const found = await resolvePodCgroup(t.pod, this.root);
    if (this.stopped || this.pods.get(t.pod.uid) !== t || gen !== t.generation) {
      settle?.(undefined);
      return;
    }
    if (found) {
      t.path = found;
      settle?.(found);
      this.emit('resolved', t.pod.uid, found);
      return;
    }
    settle?.(undefined);
    t.timer = setTimeout(() => void this.attempt(t), t.delay);
    t.delay = Math.min(t.delay * 2, this.maxRetryMs);
  }
}

/**
 * The cgroup v2 mount point to resolve pods under, from `/proc/mounts` text: of the cgroup2
 * mounts, the one holding a kubelet tree (`kubepods.slice` or `kubepods`), else the last one
 * listed (a hostPath mount of the host's hierarchy over the container's own comes last).
 */
export function findCgroup2Mount(procMounts: string, exists: (p: string) => boolean): string | undefined {
  const mounts = procMounts
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[2] === 'cgroup2' && f[1])
    // /proc/mounts escapes spaces and the like as octal.
    .map((f) => f[1]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  const withKubelet = mounts.filter((m) => exists(path.join(m, 'kubepods.slice')) || exists(path.join(m, 'kubepods')));
  return withKubelet.at(-1) ?? mounts.at(-1);
}
