/**
 * CPU time and memory of a process and its descendants, from /proc. A proxy under test may
 * be more than one process (nginx: a master and a worker), so every figure is summed over
 * the tree rooted at the pid the bench spawned.
 */
import { readFileSync, readdirSync } from 'node:fs';

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on Linux: /proc reports utime and stime in these

/** The pid and all its live descendants (through every thread's children list). */
export function processTree(root: number): number[] {
  const out: number[] = [];
  const visit = (pid: number): void => {
    out.push(pid);
    let tids: string[];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      return; // gone
    }
    for (const tid of tids) {
      let children = '';
      try {
        children = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const c of children.split(' ').filter(Boolean)) visit(Number(c));
    }
  };
  visit(root);
  return out;
}

/** utime + stime of one process, seconds (0 when it is gone). */
function cpuSecondsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

const PF_KTHREAD = 0x00200000;

/**
 * CPU seconds used so far by kernel threads (ksoftirqd, kworkers...): network work done
 * on behalf of the processes under test lands there, and is not "other work".
 */
export function kernelThreadCpuSeconds(): number {
  let sum = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // f[6] is field 9, flags.
      if ((Number(f[6]) & PF_KTHREAD) !== 0) sum += (Number(f[11]) + Number(f[12])) / CLK_TCK;
    } catch {
      // gone
    }
  }
  return sum;
}

/** A field of /proc/PID/status in kB (VmRSS, VmHWM), 0 when missing. */
function statusKb(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** CPU seconds (user + system) used so far by the tree rooted at `pid`. */
export function treeCpuSeconds(pid: number): number {
  return processTree(pid).reduce((sum, p) => sum + cpuSecondsOf(p), 0);
}

/** Resident memory of the tree rooted at `pid`, MiB (VmRSS summed; shared pages count twice). */
export function treeRssMb(pid: number): number {
  return processTree(pid).reduce((sum, p) => sum + statusKb(p, 'VmRSS'), 0) / 1024;
}

/** Peak resident memory of the tree rooted at `pid`, MiB (VmHWM summed). */
export function treePeakRssMb(pid: number): number {
  return processTree(pid).reduce((sum, p) => sum + statusKb(p, 'VmHWM'), 0) / 1024;
}

/** The CPUs a process may run on, as `taskset -p` would print them (e.g. '1'). */
export function cpusAllowed(pid: number): string {
  try {
    return /^Cpus_allowed_list:\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '?';
  } catch {
    return '?';
  }
}

/** Per-core jiffies from /proc/stat: [user, nice, system, idle, iowait, irq, softirq, steal]. */
export function coreTimes(): number[][] {
  return readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((l) => /^cpu\d+ /.test(l))
    .map((l) => l.trim().split(/\s+/).slice(1, 9).map(Number));
}

export interface CoreUse {
  /** Per core, the busy share of the interval (everything but idle and iowait), 0..1. */
  busy: number[];
  /** Per core, the softirq share. */
  softirq: number[];
  /** user + nice + system over all cores, CPU seconds. */
  taskSeconds: number;
  seconds: number;
}

/** What the cores did between two coreTimes() snapshots taken `seconds` apart. */
export function coreUse(before: number[][], after: number[][], seconds: number): CoreUse {
  const busy: number[] = [];
  const softirq: number[] = [];
  let task = 0;
  after.forEach((a, i) => {
    const d = a.map((v, j) => v - (before[i]?.[j] ?? 0));
    const total = d.reduce((x, y) => x + y, 0) || 1;
    busy.push((total - d[3]! - d[4]!) / total);
    softirq.push(d[6]! / total);
    task += d[0]! + d[1]! + d[2]!;
  });
  return { busy, softirq, taskSeconds: task / CLK_TCK, seconds };
}

/** CPU seconds used so far by the processes of a cgroup v2 subtree (cpu.stat usage_usec). */
export function cgroupCpuSeconds(dir: string): number {
  try {
    const m = /^usage_usec (\d+)$/m.exec(readFileSync(`${dir}/cpu.stat`, 'utf8'));
    return m ? Number(m[1]) / 1e6 : 0;
  } catch {
    return 0;
  }
}

let quietBudgetMs = Number.POSITIVE_INFINITY;

/** Bound the total time all waitQuiet() calls may spend waiting, so a busy machine cannot stretch a run without end. */
export function setQuietBudget(ms: number): void {
  quietBudgetMs = ms;
}

/**
 * Wait until no core is busier than `maxBusy` over a `windowMs` sample (other work on the
 * machine skews every figure), at most `timeoutMs` (and what is left of the quiet budget).
 * Returns the last sample's busiest core.
 */
export async function waitQuiet(maxBusy: number, timeoutMs: number, windowMs = 500): Promise<{ quiet: boolean; busiest: number; waitedMs: number }> {
  const started = Date.now();
  const r = await sampleUntilQuiet(maxBusy, Math.min(timeoutMs, Math.max(0, quietBudgetMs)), windowMs);
  // The first window is the measurement itself, not a wait.
  quietBudgetMs -= Math.max(0, Date.now() - started - windowMs);
  return r;
}

async function sampleUntilQuiet(maxBusy: number, timeoutMs: number, windowMs: number): Promise<{ quiet: boolean; busiest: number; waitedMs: number }> {
  const started = Date.now();
  for (;;) {
    const a = coreTimes();
    await new Promise((r) => setTimeout(r, windowMs));
    const use = coreUse(a, coreTimes(), windowMs / 1000);
    const busiest = Math.max(...use.busy);
    const waitedMs = Date.now() - started;
    if (busiest <= maxBusy) return { quiet: true, busiest, waitedMs };
    if (waitedMs >= timeoutMs) return { quiet: false, busiest, waitedMs };
  }
}
