/**
 * How many cores the agent may use: the default of `agent.workers`. The smallest of
 * - the CPUs its affinity allows (`os.availableParallelism()`, libuv's sched_getaffinity),
 * - its cgroup's CPU quota, rounded up (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
 *   `cpu.cfs_period_us`): a pod limited to 1.5 CPUs gets 2 threads, not one per node core.
 * Kubernetes sets the quota from `resources.limits.cpu`; without a limit only the affinity counts.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** CPUs from a quota and a period (either side unlimited or unreadable: undefined). */
function fromQuota(quota: number, period: number): number | undefined {
  if (!(quota > 0) || !(period > 0)) return undefined;
  return Math.max(1, Math.ceil(quota / period));
}

/**
 * The CPU quota of the cgroup this process runs in (and of its ancestors: the tightest), in
 * whole CPUs rounded up; undefined when there is none. `root` and `procCgroup` are for tests.
 */
export function cgroupCpuLimit(root = '/sys/fs/cgroup', procCgroup = '/proc/self/cgroup'): number | undefined {
  const lines = read(procCgroup)?.split('\n') ?? [];
  let best: number | undefined;
  const take = (n: number | undefined): void => {
    if (n !== undefined && (best === undefined || n < best)) best = n;
  };
  for (const line of lines) {
    const [, controllers, path] = line.split(':', 3) as [string, string, string];
    if (path === undefined) continue;
    // Every level from the process's own cgroup up to the root: a parent's quota binds too.
    const levels: string[] = [];
    for (let p = path; ; p = p.slice(0, p.lastIndexOf('/'))) {
      levels.push(p || '/');
      if (!p || p === '/') break;
    }
    if (controllers === '') {
      // cgroup v2: "max 100000" or "150000 100000".
      for (const p of levels) {
        const v = read(join(root, p, 'cpu.max'));
        if (!v) continue;
        const [q, per] = v.split(/\s+/);
        if (q !== 'max') take(fromQuota(Number(q), Number(per)));
      }
    } else if (controllers.split(',').includes('cpu')) {
      // cgroup v1 (the cpu controller may be mounted as cpu or cpu,cpuacct).
      for (const dir of ['cpu', 'cpu,cpuacct']) {
        for (const p of levels) {
          const q = read(join(root, dir, p, 'cpu.cfs_quota_us'));
          if (q === undefined) continue;
          take(fromQuota(Number(q), Number(read(join(root, dir, p, 'cpu.cfs_period_us')))));
        }
      }
    }
  }
  return best;
}

/** The default of `agent.workers`: the cores this process may run on. */
export function usableCores(): number {
  const affinity = availableParallelism();
  const quota = cgroupCpuLimit();
  return Math.max(1, Math.min(affinity, quota ?? affinity));
}
