import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CgroupResolver, findCgroup2Mount, podCgroupCandidates, resolvePodCgroup } from '../../src/capture/cgroup-resolver.js';

const UID = '3f6c2a1e-8b4d-4c3a-9e2f-1a2b3c4d5e6f';
const UID_ = UID.replace(/-/g, '_');

function tree(t: Test, dirs: string[]): string {
  const root = mkdtempSync(path.join(tmpdir(), 'weft-cgroup-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const d of dirs) mkdirSync(path.join(root, d), { recursive: true });
  return root;
}

t.test('systemd driver: each QoS class', async (t) => {
  const cases: [string, string][] = [
    ['Guaranteed', `kubepods.slice/kubepods-pod${UID_}.slice`],
    ['Burstable', `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice`],
    ['BestEffort', `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice`],
  ];
  for (const [qos, rel] of cases) {
    const root = tree(t, [`${rel}/cri-containerd-abc.scope`, 'kubepods.slice/kubepods-besteffort.slice', 'system.slice']);
    t.equal(await resolvePodCgroup({ uid: UID, qosClass: qos }, root), path.join(root, rel), qos);
    // A wrong or missing QoS class still finds it: every class is tried.
    t.equal(await resolvePodCgroup({ uid: UID }, root), path.join(root, rel), `${qos} without qosClass`);
  }
});

t.test('cgroupfs driver: each QoS class', async (t) => {
  const cases: [string, string][] = [
    ['Guaranteed', `kubepods/pod${UID}`],
    ['Burstable', `kubepods/burstable/pod${UID}`],
    ['BestEffort', `kubepods/besteffort/pod${UID}`],
  ];
  for (const [qos, rel] of cases) {
    const root = tree(t, [`${rel}/0123456789ab`]);
    t.equal(await resolvePodCgroup({ uid: UID, qosClass: qos }, root), path.join(root, rel), qos);
  }
});

t.test('the QoS class orders the candidates', async (t) => {
  const c = podCgroupCandidates(UID, 'BestEffort');
  t.equal(c[0], `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice`);
  t.equal(c[1], `kubepods/besteffort/pod${UID}`);
  t.equal(c.length, 6);
});

t.test('scan fallback: nested kubelet roots (kind, --cgroup-root)', async (t) => {
  const rel = `kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${UID_}.slice`;
  const root = tree(t, [rel, 'kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-podother_1.slice', 'system.slice/foo']);
  t.equal(await resolvePodCgroup({ uid: UID, qosClass: 'BestEffort' }, root), path.join(root, rel));
  const root2 = tree(t, [`custom/kubepods/burstable/pod${UID}`]);
  t.equal(await resolvePodCgroup({ uid: UID }, root2), path.join(root2, `custom/kubepods/burstable/pod${UID}`));
});

t.test('missing: undefined', async (t) => {
  const root = tree(t, ['kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podaaaa_bbbb.slice']);
  t.equal(await resolvePodCgroup({ uid: UID, qosClass: 'BestEffort' }, root), undefined);
  t.equal(await resolvePodCgroup({ uid: UID }, path.join(root, 'does-not-exist')), undefined);
});

t.test('CgroupResolver retries until the directory appears', async (t) => {
  const root = tree(t, ['kubepods.slice/kubepods-burstable.slice']);
  const r = new CgroupResolver({ cgroupRoot: root, retryMs: 10, maxRetryMs: 40 });
  t.teardown(() => r.stop());
  const resolved = new Promise<[string, string]>((resolve) => r.once('resolved', (uid: string, p: string) => resolve([uid, p])));
  t.equal(await r.track({ uid: UID, qosClass: 'Burstable' }), undefined, 'first attempt: not there yet');
  t.equal(r.get(UID), undefined);
  const rel = `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice`;
  setTimeout(() => mkdirSync(path.join(root, rel)), 60);
  const [uid, p] = await resolved;
  t.equal(uid, UID);
  t.equal(p, path.join(root, rel));
  t.equal(r.get(UID), p);
  t.equal(await r.track({ uid: UID }), p, 'tracking again answers at once');
});

t.test('CgroupResolver resolves an existing pod on the first attempt; forget stops retries', async (t) => {
  const rel = `kubepods/pod${UID}`;
  const root = tree(t, [rel]);
  const r = new CgroupResolver({ cgroupRoot: root, retryMs: 10 });
  t.teardown(() => r.stop());
  t.equal(await r.track({ uid: UID, qosClass: 'Guaranteed' }), path.join(root, rel));

  const other = 'aaaaaaaa-0000-0000-0000-000000000000';
  let events = 0;
  r.on('resolved', () => events++);
  await r.track({ uid: other });
  r.forget(other);
  t.same(r.tracked(), [UID]);
  mkdirSync(path.join(root, `kubepods/pod${other}`));
  await new Promise((res) => setTimeout(res, 80));
  t.equal(events, 0, 'a forgotten pod is not resolved');
});

t.test('findCgroup2Mount', async (t) => {
  const hybrid = ['tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0', 'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0', 'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0'].join('\n');
  t.equal(
    findCgroup2Mount(hybrid, () => false),
    '/sys/fs/cgroup/unified',
  );
  const container = ['cgroup2 /sys/fs/cgroup cgroup2 ro,nosuid 0 0', 'cgroup2 /host/sys/fs/cgroup cgroup2 rw 0 0', 'cgroup2 /other cgroup2 rw 0 0'].join('\n');
  t.equal(
    findCgroup2Mount(container, (p) => p === '/host/sys/fs/cgroup/kubepods.slice'),
    '/host/sys/fs/cgroup',
  );
  t.equal(
    findCgroup2Mount(container, () => false),
    '/other',
    'else the last one',
  );
  t.equal(
    findCgroup2Mount('proc /proc proc rw 0 0', () => false),
    undefined,
  );
});
