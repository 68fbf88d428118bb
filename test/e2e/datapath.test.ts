// The kernel side for real: eBPF programs on a pod's cgroup v2 directory, network namespaces
// for a node and its pods, processes moved into the pod's cgroup. Root only.
//
// Topology (nothing links it to the machine's own network):
//   node netns  br0 10.77.0.1/24, lo + 10.96.0.20/32 (a "service VIP" that also answers
//               directly, so a connection that is NOT redirected is seen to land there)
//   pod netns   eth0 10.77.0.11/24 (veth to br0), default via 10.77.0.1; cgroup <cg2>/weft-test-R/pod
//   other netns eth0 10.77.0.12/24: a non-agent peer, for strict mode
// Listening sockets are created by small node processes inside those namespaces and handed
// to this process over IPC, so this process plays the agent: it accepts on 10.77.0.1:15001
// and looks up the original destination with Datapath.origDst.
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, rmdirSync } from 'node:fs';
import type { Server, Socket } from 'node:net';
import { join } from 'node:path';
import { BpfLink, BpfMap } from '../../src/capture/bpf.js';
import { MAP_NAMES } from '../../src/capture/constants.js';
import { BpfError } from '../../src/errors.js';
import { Datapath, OrigDstTable, cgroup2Mount, cgroupIdOf, type OrigDst } from '../../src/capture/datapath.js';

const NODE_IP = '10.77.0.1';
const POD_IP = '10.77.0.11';
const OTHER_IP = '10.77.0.12';
const VIP = '10.96.0.20';
const OUTBOUND = 15001;
const WEFT_PROGRAMS = ['cgroup_inet4_connect:weft_connect4', 'cgroup_inet4_getpeername:weft_getpeername4', 'cgroup_sock_ops:weft_sockops'];

function missingPrerequisites(): string | undefined {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root');
  if (!existsSync('/proc/sys/kernel/unprivileged_bpf_disabled')) missing.push('a kernel with the bpf() syscall (CONFIG_BPF_SYSCALL)');
  if (!readFileSync('/proc/mounts', 'utf8').includes(' cgroup2 ')) missing.push('a cgroup v2 mount');
  if (!existsSync('/proc/filesystems') || !readFileSync('/proc/filesystems', 'utf8').includes('\tbpf\n')) missing.push('bpffs support');
  return missing.length ? `needs ${missing.join(', ')}` : undefined;
}

const skip = missingPrerequisites();
if (skip) console.error(`# datapath e2e skipped: ${skip}`);

/** Child processes must not inherit tap's loader hooks. */
const childEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  return env;
};

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr || e.message}`);
  }
}

/** Programs attached to a cgroup, as bpftool sees them (independent of weft's own view). */
function cgroupPrograms(path: string): string[] {
  const out = run('bpftool', ['-j', 'cgroup', 'show', path]).trim();
  const progs = (out ? JSON.parse(out) : []) as { attach_type: string; name: string }[];
  return progs.map((p) => `${p.attach_type}:${p.name}`).sort();
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

// Binds listeners inside a namespace (and cgroup) and hands them to the parent over IPC.
const BINDER = `
const net = require('node:net');
const specs = JSON.parse(process.argv[1]);
let left = specs.length;
for (const s of specs) {
  const srv = net.createServer();
  srv.on('error', (e) => { console.error(String(e)); process.exit(3); });
  srv.listen({ host: s.host, port: s.port }, () => {
    process.send({ label: s.label }, srv, () => { if (--left === 0) process.send({ ready: true }); });
  });
}
process.on('message', (m) => { if (m === 'done') process.exit(0); });
`;

// Connects, reports what getpeername said and what the server sent, and exits.
const CLIENT = `
const net = require('node:net');
const [host, port, timeout] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const out = { pid: process.pid };
const done = (extra) => { console.log(JSON.stringify({ ...out, ...extra })); process.exit(0); };
setTimeout(() => done({ error: 'timeout' }), timeout);
const s = net.connect({ host, port });
let data = '';
s.on('connect', () => {
  out.peer = { ip: s.remoteAddress, port: s.remotePort };
  out.local = { ip: s.localAddress, port: s.localPort };
});
s.on('data', (d) => { data += d; });
s.on('end', () => done({ data }));
s.on('error', (e) => done({ error: e.code }));
`;

interface ClientResult {
  pid: number;
  peer?: { ip: string; port: number };
  local?: { ip: string; port: number };
  data?: string;
  error?: string;
}

class Topology {
  readonly tag = `weft-test-${randomBytes(3).toString('hex')}`;
  readonly pinRoot = `/sys/fs/bpf/${this.tag}`;
  readonly cgroupRoot = join(cgroup2Mount(), this.tag);
  readonly podCgroup = join(this.cgroupRoot, 'pod');
  /** Where the Datapath puts the agent's program; this process is not in it, so it marks nothing here. */
  readonly agentCgroup = join(this.cgroupRoot, 'agent');
  readonly netns = { node: `${this.tag}-node`, pod: `${this.tag}-pod`, other: `${this.tag}-other` };
  private readonly children = new Set<ChildProcess>();
  private readonly servers = new Set<Server>();
  private cleaned = false;

  nsPath(name: keyof Topology['netns']): string {
    return `/run/netns/${this.netns[name]}`;
  }

  setup(): void {
    mkdirSync(this.podCgroup, { recursive: true });
    mkdirSync(this.agentCgroup);
    for (const ns of Object.values(this.netns)) run('ip', ['netns', 'add', ns]);
    const node = ['-n', this.netns.node];
    run('ip', [...node, 'link', 'set', 'lo', 'up']);
    run('ip', [...node, 'link', 'add', 'br0', 'type', 'bridge']);
    run('ip', [...node, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'br0']);
    run('ip', [...node, 'link', 'set', 'br0', 'up']);
    run('ip', [...node, 'addr', 'add', `${VIP}/32`, 'dev', 'lo']);
    for (const [name, ip, veth] of [
      ['pod', POD_IP, 'vpod'],
      ['other', OTHER_IP, 'voth'],
    ] as const) {
      const ns = ['-n', this.netns[name]];
      run('ip', [...node, 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.netns[name]]);
      run('ip', [...node, 'link', 'set', veth, 'master', 'br0', 'up']);
      run('ip', [...ns, 'link', 'set', 'lo', 'up']);
      run('ip', [...ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
      run('ip', [...ns, 'link', 'set', 'eth0', 'up']);
      run('ip', [...ns, 'route', 'add', 'default', 'via', NODE_IP]);
    }
  }

  /** node ARGS... inside netns `ns`, after moving into `cgroup` (when given). */
  spawnIn(ns: keyof Topology['netns'], cgroup: string | undefined, args: string[], ipc: boolean): ChildProcess {
    const script = 'if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 97; fi; ns=$2; shift 2; exec nsenter --net="$ns" "$@"';
    const child = spawn('sh', ['-c', script, 'sh', cgroup ?? '', this.nsPath(ns), process.execPath, ...args], {
      stdio: ['ignore', 'pipe', 'pipe', ...(ipc ? (['ipc'] as const) : [])],
      env: childEnv(),
    });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Listeners bound in `ns` (and `cgroup`), accepted by this process. */
  async listen(ns: keyof Topology['netns'], cgroup: string | undefined, specs: { label: string; host: string; port: number }[]): Promise<Map<string, Server>> {
    const child = this.spawnIn(ns, cgroup, ['-e', BINDER, JSON.stringify(specs)], true);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const servers = new Map<string, Server>();
    await new Promise<void>((resolve, reject) => {
      child.on('message', (m: { label?: string; ready?: boolean }, handle: unknown) => {
        if (m.label) {
          const srv = handle as Server;
          this.servers.add(srv);
          servers.set(m.label, srv);
        }
        if (m.ready) resolve();
      });
      child.once('exit', (code, signal) => reject(new Error(`binder in ${ns} exited ${code ?? signal}: ${stderr}`)));
    });
    child.send('done');
    return servers;
  }

  async connect(ns: keyof Topology['netns'], cgroup: string | undefined, host: string, port: number, timeoutMs = 3000): Promise<ClientResult> {
    const child = this.spawnIn(ns, cgroup, ['-e', CLIENT, host, String(port), String(timeoutMs)], false);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    const line = out.trim().split('\n').pop();
    if (code !== 0 || !line) throw new Error(`client exited ${code}: ${err}`);
    return JSON.parse(line) as ClientResult;
  }

  /** Synchronous and idempotent: runs from t.teardown and from the process exit hook. */
  cleanup(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const srv of this.servers) srv.close();
    for (const child of this.children) child.kill('SIGKILL');
    for (const ns of Object.values(this.netns)) {
      try {
        run('ip', ['netns', 'del', ns]);
      } catch {
        /* never created */
      }
    }
    // Links die with their pins and with the cgroup; remove both.
    rmSync(this.pinRoot, { recursive: true, force: true });
    for (const dir of [this.podCgroup, this.agentCgroup, this.cgroupRoot]) {
      for (let i = 0; i < 50 && existsSync(dir); i++) {
        try {
          rmdirSync(dir);
        } catch {
          sleepSync(20); // killed children leave the cgroup a moment later
        }
      }
    }
  }
}

t.test('datapath on real cgroups and namespaces', { skip }, async (t) => {
  const topo = new Topology();
  // Cleanup on every path: the test's end, an exception, process exit, or a signal (tap's
  // timeout, ^C). On a signal, clean up and re-raise it so the process still dies of it.
  const onExit = (): void => topo.cleanup();
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const onSignal = (sig: NodeJS.Signals): void => {
    topo.cleanup();
    for (const s of signals) process.removeListener(s, onSignal);
    process.kill(process.pid, sig);
  };
  process.once('exit', onExit);
  for (const s of signals) process.on(s, onSignal);
  t.teardown(() => {
    topo.cleanup();
    process.removeListener('exit', onExit);
    for (const s of signals) process.removeListener(s, onSignal);
  });
  topo.setup();

  let dp: Datapath | undefined = Datapath.open({ pinRoot: topo.pinRoot, nodeIp: NODE_IP, outboundPort: OUTBOUND, agentCgroup: topo.agentCgroup });
  t.teardown(() => {
    try {
      dp?.destroy();
    } catch {
      /* cleanup removes the pins anyway */
    }
  });
  // How this process (the "agent") finds original destinations: the Datapath, or the pinned
  // map alone while no Datapath is open.
  let lookup: (s: Socket) => OrigDst | undefined = (s) => dp!.origDst(s);
  const seen: { first?: OrigDst; second?: OrigDst; error?: string }[] = [];

  const nodeServers = await topo.listen('node', undefined, [
    { label: 'agent', host: NODE_IP, port: OUTBOUND },
    { label: 'vip80', host: VIP, port: 80 },
    { label: 'vip81', host: VIP, port: 81 },
  ]);
  for (const [label, srv] of nodeServers) {
    srv.on('connection', (sock: Socket) => {
      sock.on('error', () => {});
      if (label === 'agent') {
        try {
          const first = lookup(sock);
          seen.push({ first, second: lookup(sock) });
        } catch (err) {
          seen.push({ error: (err as Error).message });
        }
      }
      sock.end(label);
    });
  }

  const { cgroupId } = dp.attach(topo.podCgroup);
  t.equal(cgroupId, cgroupIdOf(topo.podCgroup), 'attach reports the cgroup id');

  await t.test('bad cgroups are refused with errno', async (t) => {
    const missing = join(topo.cgroupRoot, 'no-such-pod');
    const err = caught(() => dp!.attach(missing));
    t.ok(err instanceof BpfError, 'a BpfError');
    t.match(err, { errno: 2, syscallCode: 'ENOENT', code: 'WEFT_ERR_BPF' });
    t.match((err as Error).message, missing, 'naming the path');
    t.ok(caught(() => cgroupIdOf(missing)) instanceof BpfError);
    t.match(
      caught(() => dp!.attach('/tmp')),
      { errno: 22, syscallCode: 'EINVAL' },
      'not a cgroup v2 directory',
    );
    t.same(dp!.attached(), new Map([[cgroupId, ['connect4', 'getpeername4', 'sockops']]]), 'failed attaches leave no pins');
  });

  await t.test('a known destination is redirected to the agent', async (t) => {
    dp!.setDestinations([{ ip: VIP, port: 80 }]);
    seen.length = 0;
    const r = await topo.connect('pod', topo.podCgroup, VIP, 80);
    t.equal(r.data, 'agent', 'the connection landed on the 15001 listener');
    t.same(r.peer, { ip: VIP, port: 80 }, 'getpeername in the pod reports the address it dialed');
    t.equal(seen.length, 1);
    t.same(seen[0]!.first, { ip: VIP, port: 80, cgroupId, pid: r.pid }, 'origDst: original destination, pod cgroup id, client pid');
    t.equal(seen[0]!.second, undefined, 'the entry is consumed by the first lookup');

    // sockops drops the socket-cookie entry when the client socket closes.
    const cookies = BpfMap.fromPin(join(topo.pinRoot, MAP_NAMES.cookieDst));
    t.teardown(() => cookies.close());
    for (let i = 0; i < 50 && cookies.keys().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
    t.equal(cookies.keys().length, 0, 'no cookie entry left once the client is gone');
  });

  await t.test('an unknown destination is left alone', async (t) => {
    const r = await topo.connect('pod', topo.podCgroup, VIP, 81);
    t.equal(r.data, 'vip81');
    t.same(r.peer, { ip: VIP, port: 81 });
    const other = await topo.connect('node', undefined, VIP, 80);
    t.equal(other.data, 'vip80', 'a process outside the pod cgroup is not redirected');
    seen.length = 0;
    t.equal((await topo.connect('node', undefined, NODE_IP, OUTBOUND)).data, 'agent');
    t.same(seen, [{ first: undefined, second: undefined }], 'origDst of a connection that was not redirected: undefined');
  });

  await t.test('destinations sync adds and removes', async (t) => {
    dp!.setDestinations([{ ip: VIP, port: 81 }]);
    t.equal((await topo.connect('pod', topo.podCgroup, VIP, 80)).data, 'vip80', 'removed destination');
    t.equal((await topo.connect('pod', topo.podCgroup, VIP, 81)).data, 'agent', 'added destination');
    dp!.setDestinations([
      { ip: VIP, port: 80 },
      { ip: 'not-an-ip', port: 1 },
    ]);
    t.equal((await topo.connect('pod', topo.podCgroup, VIP, 80)).data, 'agent', 'an invalid entry does not stop the rest');
  });

  await t.test('attach is idempotent', async (t) => {
    dp!.attach(topo.podCgroup);
    dp!.attach(topo.podCgroup);
    t.same(dp!.attached(), new Map([[cgroupId, ['connect4', 'getpeername4', 'sockops']]]));
    t.same(cgroupPrograms(topo.podCgroup), WEFT_PROGRAMS, 'one program per hook');
  });

  await t.test('strict mode admits loopback, the pod itself and probes from the node address', async (t) => {
    const podServers = await topo.listen('pod', topo.podCgroup, [{ label: 'pod', host: '0.0.0.0', port: 9000 }]);
    const otherServers = await topo.listen('other', undefined, [{ label: 'other', host: OTHER_IP, port: 7000 }]);
    for (const [label, srv] of [...podServers, ...otherServers])
      srv.on('connection', (sock: Socket) => {
        sock.on('error', () => {});
        sock.end(label);
      });

    t.equal((await topo.connect('other', undefined, POD_IP, 9000)).data, 'pod', 'before strict: open to all');
    dp!.setPods([{ ip: POD_IP, strict: true }]);
    dp!.attach(topo.podCgroup, { strict: true });
    t.same(dp!.attached().get(cgroupId), ['connect4', 'getpeername4', 'ingress', 'sockops']);
    t.same(cgroupPrograms(topo.podCgroup), [...WEFT_PROGRAMS, 'cgroup_inet_ingress:weft_ingress'].sort());

    t.equal((await topo.connect('other', undefined, POD_IP, 9000, 1500)).error, 'timeout', 'a non-agent cannot connect');
    t.equal((await topo.connect('node', undefined, POD_IP, 9000, 1500)).error, 'timeout', 'the node address alone cannot (a host process that is not the agent)');
    dp!.setProbes([{ ip: POD_IP, port: 9000 }]);
    t.equal((await topo.connect('node', undefined, POD_IP, 9000)).data, 'pod', 'the node address can reach a probe port');
    t.equal((await topo.connect('other', undefined, POD_IP, 9000, 1500)).error, 'timeout', 'a probe port is open to the node address only');
    dp!.setProbes([]);
    t.equal((await topo.connect('node', undefined, POD_IP, 9000, 1500)).error, 'timeout', 'probe ports are a full sync');
    t.equal((await topo.connect('pod', topo.podCgroup, '127.0.0.1', 9000)).data, 'pod', 'loopback can');
    t.equal((await topo.connect('pod', topo.podCgroup, POD_IP, 9000)).data, 'pod', 'the pod itself can');
    t.equal((await topo.connect('pod', topo.podCgroup, OTHER_IP, 7000)).data, 'other', 'replies to connections the pod opened pass');

    dp!.setPods([{ ip: POD_IP, strict: false }]);
    t.equal((await topo.connect('other', undefined, POD_IP, 9000)).data, 'pod', 'a pod entry without the strict flag relaxes at once');
    dp!.setPods([{ ip: POD_IP, strict: true }]);

    dp!.attach(topo.podCgroup, { strict: false });
    t.same(dp!.attached().get(cgroupId), ['connect4', 'getpeername4', 'sockops'], 'strict off removes the ingress link');
    t.equal((await topo.connect('other', undefined, POD_IP, 9000)).data, 'pod', 'open to all again');
  });

  await t.test('pins survive the agent: close, reopen, adopt', async (t) => {
    const linkPin = join(topo.pinRoot, 'links', String(cgroupId), 'connect4');
    const before = BpfLink.fromPin(linkPin);
    const progBefore = before.info().progId;
    before.close();

    dp!.close();
    dp = undefined;
    const table = OrigDstTable.open(topo.pinRoot);
    lookup = (s) => table.lookup(s);
    seen.length = 0;
    const r = await topo.connect('pod', topo.podCgroup, VIP, 80);
    t.equal(r.data, 'agent', 'still redirected while no agent holds an fd');
    t.same(seen[0]?.first, { ip: VIP, port: 80, cgroupId, pid: r.pid }, 'origDst through the pinned map alone');
    table.close();

    dp = Datapath.open({ pinRoot: topo.pinRoot, nodeIp: NODE_IP, outboundPort: OUTBOUND, agentCgroup: topo.agentCgroup });
    lookup = (s) => dp!.origDst(s);
    t.same(dp.attached(), new Map([[cgroupId, ['connect4', 'getpeername4', 'sockops']]]), 'the new agent finds the pins');
    dp.attach(topo.podCgroup);
    const after = BpfLink.fromPin(linkPin);
    const info = after.info();
    after.close();
    t.equal(info.cgroupId, cgroupId, 'the adopted link is on the pod cgroup');
    t.not(info.progId, progBefore, 'the adopted link runs the program the new agent loaded');
    t.same(cgroupPrograms(topo.podCgroup), WEFT_PROGRAMS, 'still one program per hook');

    seen.length = 0;
    const r2 = await topo.connect('pod', topo.podCgroup, VIP, 80);
    t.equal(r2.data, 'agent');
    t.same(r2.peer, { ip: VIP, port: 80 });
    t.same(seen[0]?.first, { ip: VIP, port: 80, cgroupId, pid: r2.pid });
  });

  await t.test('detach releases the pod', async (t) => {
    dp!.detach(cgroupId);
    t.same(dp!.attached(), new Map());
    t.notOk(existsSync(join(topo.pinRoot, 'links', String(cgroupId))), 'pins removed');
    const r = await topo.connect('pod', topo.podCgroup, VIP, 80);
    t.equal(r.data, 'vip80', 'no longer redirected');
    t.same(r.peer, { ip: VIP, port: 80 });
    t.same(cgroupPrograms(topo.podCgroup), [], 'nothing left on the cgroup');
    dp!.detach(cgroupId); // a second detach is a no-op
  });

  await t.test('a removed cgroup leaves defunct links that detach releases', async (t) => {
    const gone = join(topo.cgroupRoot, 'gone');
    mkdirSync(gone);
    const { cgroupId: goneId } = dp!.attach(gone, { strict: true });
    rmdirSync(gone);
    const link = BpfLink.fromPin(join(topo.pinRoot, 'links', String(goneId), 'connect4'));
    // The kernel releases a removed cgroup's programs from a workqueue, a moment later.
    for (let i = 0; i < 100 && link.info().cgroupId !== 0n; i++) await new Promise((r) => setTimeout(r, 20));
    t.equal(link.info().cgroupId, 0n, 'the kernel marks the link defunct (cgroup id 0)');
    link.close();
    t.ok(dp!.attached().has(goneId), 'its pins are still listed, for the agent to release');
    dp!.detach(goneId);
    t.notOk(dp!.attached().has(goneId));
  });

  await t.test('destroy removes everything under the pin root', async (t) => {
    dp!.attach(topo.podCgroup, { strict: true });
    dp!.destroy();
    dp = undefined;
    t.notOk(existsSync(topo.pinRoot));
    t.same(cgroupPrograms(topo.podCgroup), [], 'links detached');
  });
});
