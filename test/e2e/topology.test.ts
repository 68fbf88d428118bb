// The sandbox topology itself: namespaces, cgroups, routes between nodes, cleanup.
// Root only (netns, cgroup v2); run with `npx tap test/e2e/topology.test.ts`.
import t, { type Test } from 'tap';

type Tap = Test;
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Topology, cgroupOfPid, cgroup2Mount } from '../../src/sandbox/topology.js';
import { backendScriptPath } from '../../src/sandbox/backend.js';

const PREFIX = 'weft-t';

function netnsNames(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}

/** Running, as opposed to gone or a zombie waiting for init to reap it. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

function assertGone(tt: Tap, topo: Topology): void {
  tt.same(
    netnsNames().filter((n) => n.startsWith(topo.id)),
    [],
    'no netns of the topology left',
  );
  tt.notOk(existsSync(topo.cgroupRoot), 'cgroup root removed');
  tt.same(
    readdirSync(cgroup2Mount()).filter((d) => d.startsWith(topo.id)),
    [],
    'no cgroup dirs left',
  );
}

if (process.getuid?.() !== 0) {
  t.comment('skipping: the topology needs root (network namespaces, cgroup v2)');
  t.pass('skipped: not root');
} else {
  t.before(() => Topology.sweep(PREFIX));

  t.test('one node, two pods: HTTP across the bridge, processes in their cgroups', async (t) => {
    const topo = await Topology.create({ prefix: PREFIX });
    t.teardown(() => topo.destroy());
    t.match(topo.id, /^weft-t[0-9a-f]{6}$/);
    t.equal(topo.cgroupRoot, `${cgroup2Mount()}/${topo.id}`);

    const node = await topo.addNode('node-a', { address: '10.77.0.1' });
    t.equal(node.podSubnet, '10.77.0.0/24');
    const a = await node.addPod('client-0', { ip: '10.77.0.10' });
    const b = await node.addPod('api-0', { ip: '10.77.0.11' });
    t.ok(netnsNames().includes(a.netns) && netnsNames().includes(b.netns), 'pod namespaces exist');
    t.ok(existsSync(b.cgroup), 'pod cgroup exists');
    t.equal(b.cgroup, `${topo.cgroupRoot}/node-a/kubepods.slice/kubepods-burstable.slice/api-0`, 'below the QoS slice, as the systemd driver lays it out');
    t.equal(b.cgroupPath, `/${topo.id}/node-a/kubepods.slice/kubepods-burstable.slice/api-0`);
    const children = () =>
      readdirSync(b.cgroup, { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name);
    t.equal(children().length, 1, 'a new pod has one container cgroup: pause');
    t.match(children()[0], /^cri-containerd-[0-9a-f]{64}\.scope$/);
    t.ok(readFileSync(`${b.cgroup}/${children()[0]}/cgroup.procs`, 'utf8').trim(), 'the pause container holds a process');

    const backend = await b.spawnBackend({ port: 8080, tcpEchoPort: 9000 });
    t.equal(cgroupOfPid(backend.pid), b.containerCgroup().slice(cgroup2Mount().length), 'backend runs in its container cgroup');
    t.match(cgroupOfPid(backend.pid), new RegExp(`^${b.cgroupPath}/cri-containerd-[0-9a-f]{64}\\.scope$`), 'below the pod cgroup');
    t.equal(children().length, 2, 'pause and app');
    t.equal(readFileSync(`${b.cgroup}/cgroup.procs`, 'utf8').trim(), '', 'no process in the pod cgroup itself');

    const fsNode = await topo.addNode('node-f', { address: '10.77.5.1', cgroupDriver: 'cgroupfs' });
    const fsPod = await fsNode.addPod('api-9', { ip: '10.77.5.11' });
    t.equal(fsPod.cgroup, `${topo.cgroupRoot}/node-f/kubepods/burstable/api-9`, 'cgroupfs driver layout');
    t.match(fsPod.containerCgroup('main'), new RegExp(`^${fsPod.cgroup}/[0-9a-f]{64}$`), 'cgroupfs container cgroup: the bare id');

    const res = await a.curl('http://10.77.0.11:8080/hello?x=1');
    t.equal(res.code, 0, res.stderr);
    t.equal(res.status, 200);
    t.equal(res.headers['x-pod'], 'api-0');
    const body = JSON.parse(res.body) as { pod: string; path: string; method: string };
    t.equal(body.pod, 'api-0');
    t.equal(body.path, '/hello?x=1');
    t.equal(body.method, 'GET');

    // the pod itself: its exec runs in a container cgroup and sees only eth0 + lo
    const self = await a.exec('sh', ['-c', 'cat /proc/self/cgroup; ip -o -4 addr show']);
    t.equal(self.code, 0, self.stderr);
    t.match(self.stdout, `0::${a.containerCgroup().slice(cgroup2Mount().length)}\n`);
    t.match(self.stdout, /eth0\s+inet 10\.77\.0\.10\/24/);
    t.notMatch(self.stdout, /weftbr0/);

    // pods reach their node address (where the agent listens), the node reaches its pods
    const script = await backendScriptPath();
    const onNode = node.spawn(process.execPath, [script, '--name', 'node-a', '--port', '15020', '--host', node.address]);
    await onNode.waitFor(/listening on/);
    t.equal(cgroupOfPid(onNode.pid), '/', "a node process stays in the caller's cgroup");
    const toNode = await a.curl(`http://${node.address}:15020/`);
    t.equal(toNode.headers['x-pod'], 'node-a', 'pod -> node address');
    const fromNode = await node.exec('curl', ['-sS', '--noproxy', '*', '--max-time', '5', 'http://10.77.0.11:8080/healthz']);
    t.equal(fromNode.code, 0, fromNode.stderr);

    // the TCP echo server greets with the pod name, then echoes
    const echo = await a.exec(
      process.execPath,
      [
        '-e',
        `const s = require('net').connect(9000, '10.77.0.11'); let got = '';
        s.on('data', (d) => { got += d; if (got === 'api-0\\n') s.write('ping'); else if (got.endsWith('ping')) { process.stdout.write(got); s.end(); } });`,
      ],
      { timeoutMs: 10_000 },
    );
    t.equal(echo.stdout, 'api-0\nping', echo.stderr);

    // control endpoints through the network
    t.equal((await a.curl('http://10.77.0.11:8080/_ctl/fail?status=502')).status, 200);
    t.equal((await a.curl('http://10.77.0.11:8080/anything')).status, 502);
    await a.curl('http://10.77.0.11:8080/_ctl/ok');
    t.equal((await a.curl('http://10.77.0.11:8080/anything')).status, 200);

    // a refused connection is reported, not thrown
    const refused = await a.curl('http://10.77.0.11:1/');
    t.equal(refused.status, 0);
    t.equal(refused.code, 7);

    // nothing leads outside: the node namespace has only lo, the bridge and the pod veths
    const links = await node.exec('ip', ['-o', 'link', 'show']);
    const names = links.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(': ')[1]!.split('@')[0]);
    t.same(names.sort(), ['lo', 'vp0', 'vp1', 'weftbr0']);
    const route = await a.exec('ip', ['route', 'get', '1.1.1.1']);
    t.match(route.stdout, /via 10\.77\.0\.1/, 'a pod sends everything to its node');
    const nodeRoute = await node.exec('ip', ['route', 'get', '1.1.1.1']);
    t.not(nodeRoute.code, 0, 'the node has no route out');

    await topo.destroy();
    t.equal(await backend.exited, 0, 'backend stopped by destroy (SIGTERM, graceful exit)');
    t.notOk(running(onNode.pid), 'node process stopped');
    assertGone(t, topo);
    await topo.destroy(); // idempotent
  });

  t.test('two nodes: a pod on A reaches a pod on B through the nodes', async (t) => {
    const topo = await Topology.create({ prefix: PREFIX });
    t.teardown(() => topo.destroy());
    const nodeA = await topo.addNode('node-a', { address: '10.77.0.1' });
    const nodeB = await topo.addNode('node-b', { address: '10.77.1.1' });
    const link = await topo.connectNodes(nodeA, nodeB);
    t.same([link.a.ip, link.b.ip], ['10.78.0.1', '10.78.0.2']);
    const client = await nodeA.addPod('client-0', { ip: '10.77.0.10' });
    const api = await nodeB.addPod('api-0', { ip: '10.77.1.10' });
    await api.spawnBackend({ port: 8080 });

    const res = await client.curl('http://10.77.1.10:8080/');
    t.equal(res.code, 0, res.stderr);
    t.equal(res.headers['x-pod'], 'api-0');
    t.equal((JSON.parse(res.body) as { pod: string }).pod, 'api-0');

    t.equal((JSON.parse(res.body) as { remoteAddress: string }).remoteAddress, client.ip, 'routed, not NATed');

    // a process in node B's namespace (where the agent runs) is reachable from pods on A
    const script = await backendScriptPath();
    const agentLike = nodeB.spawn(process.execPath, [script, '--name', 'node-b', '--port', '15020', '--host', nodeB.address]);
    await agentLike.waitFor(/listening on/);
    t.equal((await client.curl(`http://${nodeB.address}:15020/`)).headers['x-pod'], 'node-b', 'pod on A -> node B address');
    // and reaches them
    await client.spawnBackend({ port: 8080 });
    const fromNodeB = await nodeB.exec('curl', ['-sS', '--noproxy', '*', '--max-time', '5', `http://${client.ip}:8080/`]);
    t.match(fromNodeB.stdout, /"pod":"client-0"/, 'node B -> pod on A');
    t.equal((JSON.parse(fromNodeB.stdout) as { remoteAddress: string }).remoteAddress, '10.78.0.2', "from node B's link address");

    await topo.destroy();
    t.notOk(running(agentLike.pid), 'node process stopped');
    assertGone(t, topo);
  });

  t.test('destroy on a half-built topology removes what was made', async (t) => {
    const topo = await Topology.create({ prefix: PREFIX });
    t.teardown(() => topo.destroy());
    const node = await topo.addNode('node-a', { address: '10.77.0.1' });
    const ok = await node.addPod('ok-0', { ip: '10.77.0.10' });
    const sleeper = ok.spawn('sleep', ['60']);
    await t.rejects(node.addPod('dup-0', { ip: '10.77.0.10' }), /taken/);
    await t.rejects(node.addPod('outside', { ip: '10.99.0.10' }), /not a free address/);
    await t.rejects(topo.addNode('node-b', { address: '10.77.1.300' }), /not an IPv4/);
    await t.rejects(topo.connectNodes(node, node), /itself/);
    // make the veth creation fail after the pod's netns and cgroup exist: take its name
    const clash = await node.exec('ip', ['link', 'add', 'vp1', 'type', 'bridge']);
    t.equal(clash.code, 0, clash.stderr);
    await t.rejects(node.addPod('api-0', { ip: '10.77.0.11' }), /vp1|exists/);
    t.ok(netnsNames().includes(`${topo.id}-node-a-api-0`), 'the pod netns was made');
    t.ok(existsSync(`${node.cgroup}/api-0`), 'the pod cgroup was made');
    // and a node link that fails half way: its route clashes with one already there
    const other = await topo.addNode('node-c', { address: '10.77.2.1' });
    await node.exec('ip', ['route', 'add', '10.77.2.0/24', 'dev', 'lo']);
    await t.rejects(topo.connectNodes(node, other), /File exists|RTNETLINK/);
    await topo.destroy();
    t.equal(await sleeper.exited, null, 'pod process killed (by signal)');
    assertGone(t, topo);
    await t.rejects(topo.addNode('late', { address: '10.77.9.1' }), /destroyed/);
  });

  t.test('sweep removes leftovers of a dead run and spares live topologies', async (t) => {
    const live = await Topology.create({ prefix: PREFIX });
    t.teardown(() => live.destroy());
    await live.addNode('node-a', { address: '10.77.0.1' });
    // a "crashed run": resources with the prefix and no live owner
    const deadId = `${PREFIX}dead00`;
    execFileSync('ip', ['netns', 'add', `${deadId}-node-a`]);
    const deadContainer = `${cgroup2Mount()}/${deadId}/node-a/kubepods.slice/kubepods-burstable.slice/pod-0/cri-containerd-${'ab'.repeat(32)}.scope`;
    execFileSync('mkdir', ['-p', deadContainer]);
    const sleeper = execFileSync('sh', ['-c', `sh -c 'echo $$ > ${deadContainer}/cgroup.procs; exec sleep 60' >/dev/null 2>&1 & echo $!`], { encoding: 'utf8' });
    // not a Topology name, though it starts with the prefix: someone else's
    const foreign = `${PREFIX}est-foreign-${process.pid}`;
    execFileSync('ip', ['netns', 'add', foreign]);
    t.teardown(() => void execFileSync('sh', ['-c', `ip netns del ${foreign} 2>/dev/null || true`]));
    await Topology.sweep(PREFIX);
    t.ok(netnsNames().includes(foreign), 'foreign names are left alone');
    t.notOk(
      netnsNames().some((n) => n.startsWith(deadId)),
      'dead netns swept',
    );
    t.notOk(existsSync(`${cgroup2Mount()}/${deadId}`), 'dead cgroup swept');
    t.notOk(running(Number(sleeper.trim())), 'process of the dead run killed');
    t.ok(netnsNames().includes(`${live.id}-node-a`), 'live topology spared');
    t.ok(existsSync(live.cgroupRoot));
    await live.destroy();
    assertGone(t, live);
  });

  t.test('a test process that dies leaves nothing behind (exit hooks)', async (t) => {
    const topologyModule = new URL('../../src/sandbox/topology.ts', import.meta.url).pathname;
    const script = (how: string): string => `
      ${how === 'tap-sigterm' ? "await import('tap');" : ''}
      const { Topology } = await import(${JSON.stringify(topologyModule)});
      const topo = await Topology.create({ prefix: 'weft-t' });
      const node = await topo.addNode('node-a', { address: '10.77.0.1' });
      const pod = await node.addPod('p-0', { ip: '10.77.0.10' });
      const a = pod.spawn('sleep', ['60']);
      const b = node.spawn('sleep', ['60']);
      console.log('PIDS ' + a.pid + ' ' + b.pid);
      console.log('ID ' + topo.id);
      ${how === 'throw' ? "process.stdin.once('data', () => { throw new Error('boom'); });" : ''}
      setInterval(() => {}, 1000);
    `;
    const cases = [
      { how: 'SIGTERM', signal: 'SIGTERM' as const, expect: 'SIGTERM' },
      { how: 'SIGINT', signal: 'SIGINT' as const, expect: 'SIGINT' },
      // tap's signal-exit only re-raises when it is the last listener: we must not keep the process alive
      { how: 'tap-sigterm', signal: 'SIGTERM' as const, expect: 'SIGTERM' },
      { how: 'throw', signal: undefined, expect: 1 },
    ];
    const { spawn } = await import('node:child_process');
    const pids: number[] = [];
    for (const c of cases) {
      const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', script(c.how)], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '';
      child.stderr.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise<string | number | null>((r) => child.on('exit', (code, s) => r(s ?? code)));
      const id = await new Promise<string>((resolve, reject) => {
        child.stdout.on('data', (b: Buffer) => {
          out += b.toString();
          const m = /ID (\S+)/.exec(out);
          if (m) resolve(m[1]!);
        });
        void exited.then(() => reject(new Error(`child exited early: ${out}`)));
      });
      t.ok(
        netnsNames().some((n) => n.startsWith(id)),
        `${c.how}: topology built`,
      );
      pids.push(...(/PIDS (\d+) (\d+)/.exec(out) ?? []).slice(1).map(Number));
      // The 'throw' child throws when told, after the check above: on a timer of its own it
      // could tear the topology down before this process got to look at it.
      if (c.signal) child.kill(c.signal);
      else child.stdin.write('go\n');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      t.equal(await exited, c.expect, `${c.how}: the process still ends as it would have`);
      clearTimeout(timer);
      t.same(
        netnsNames().filter((n) => n.startsWith(id)),
        [],
        `${c.how}: netns removed`,
      );
      t.notOk(existsSync(`${cgroup2Mount()}/${id}`), `${c.how}: cgroups removed`);
      t.notOk(existsSync(`/run/weft-sandbox/${id}.owner`), `${c.how}: owner file removed`);
    }
    t.equal(pids.length, 2 * cases.length);
    t.same(pids.filter(running), [], 'no spawned process survives');
  });
}
