// The default of agent.workers: the cores the agent may use, from its cgroup's CPU quota
// (cgroup v2 cpu.max, v1 cfs quota and period, the tightest level from the process's cgroup up).
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroupCpuLimit, usableCores } from '../../src/workers/cores.js';

function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'weft-cores-'));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

t.test('cgroup v2: cpu.max of the process cgroup and its parents, rounded up', async (t) => {
  const root = tree({
    'proc-cgroup': '0::/kubepods/pod1/agent\n',
    'fs/cpu.max': 'max 100000\n',
    'fs/kubepods/cpu.max': 'max 100000\n',
    'fs/kubepods/pod1/cpu.max': '250000 100000\n',
    'fs/kubepods/pod1/agent/cpu.max': '150000 100000\n',
  });
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  t.equal(cgroupCpuLimit(join(root, 'fs'), join(root, 'proc-cgroup')), 2, '1.5 CPUs: 2 threads');
  writeFileSync(join(root, 'fs/kubepods/pod1/cpu.max'), '50000 100000\n');
  t.equal(cgroupCpuLimit(join(root, 'fs'), join(root, 'proc-cgroup')), 1, 'a parent’s tighter quota binds');
});

t.test('cgroup v2 without a quota, and no cgroup file: no limit', async (t) => {
  const root = tree({ 'proc-cgroup': '0::/a\n', 'fs/cpu.max': 'max 100000\n', 'fs/a/cpu.max': 'max 100000\n' });
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  t.equal(cgroupCpuLimit(join(root, 'fs'), join(root, 'proc-cgroup')), undefined);
  t.equal(cgroupCpuLimit(join(root, 'fs'), join(root, 'missing')), undefined);
});

t.test('cgroup v1: cfs quota and period of the cpu controller', async (t) => {
  const root = tree({
    'proc-cgroup': '4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n',
    'fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us': '300000\n',
    'fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us': '100000\n',
    'fs/cpu,cpuacct/cpu.cfs_quota_us': '-1\n',
    'fs/cpu,cpuacct/cpu.cfs_period_us': '100000\n',
  });
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  t.equal(cgroupCpuLimit(join(root, 'fs'), join(root, 'proc-cgroup')), 3);
});

t.test('usableCores: at most the CPUs the affinity allows, at least 1', async (t) => {
  const n = usableCores();
  t.ok(n >= 1 && n <= availableParallelism(), `${n} of ${availableParallelism()}`);
});
