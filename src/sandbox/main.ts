/**
 * `npm start`: a sandbox node on this machine running the embedded default config, real
 * eBPF capture, a burst of traffic, and a readable account of what the mesh did.
 * On a terminal it stays up for exploring until Ctrl-C; otherwise it tears down and exits.
 */
import { demoRoutes } from './demo-routes.js';
import { MeshSandbox } from './mesh-sandbox.js';
import { demoGrpc } from './demo-grpc.js';
import { bad, bold, ctl, dim, endpointState, fmt, ok, spread, step, waitFor } from './ui.js';
import { demoUpgrade } from './demo-upgrade.js';

/**
 * Demos that run after the core one, in order, each in its own file (demo-*.ts): each prints
 * its steps with ui.ts and leaves the sandbox as it found it.
 */
const demos: Array<(sb: MeshSandbox) => Promise<void>> = [demoGrpc, demoRoutes, demoUpgrade];

async function demo(sb: MeshSandbox): Promise<void> {
  const cfg = sb.config;
  const web = sb.pod('web-0');
  const legacy = sb.pod('legacy-client-0');
  const api = cfg.services.find((s) => s.name === 'api')!;
  const echo = cfg.services.find((s) => s.name === 'echo')!;
  const apiUrl = `http://${api.vip}/items`;

  step('1. Capture: eBPF programs on each meshed pod cgroup');
  const dump = await sb.configDump();
  for (const c of dump.capture as any[]) (c.captured ? ok : bad)(`${c.workload}: ${c.captured ? `captured (cgroup id ${c.cgroupId}${c.strict ? ', strict mTLS' : ''})` : c.error}`);
  const show = await sb.node.exec('bpftool', ['cgroup', 'show', web.cgroup]);
  console.log(
    dim(
      show.stdout
        .trim()
        .split('\n')
        .map((l) => `      ${l}`)
        .join('\n'),
    ),
  );
  const legacyShow = await sb.node.exec('bpftool', ['cgroup', 'show', legacy.cgroup]);
  (legacyShow.stdout.trim() === '' ? ok : bad)(`legacy-client-0 (namespace legacy, no weft.io/mesh label): ${legacyShow.stdout.trim() === '' ? 'no programs attached' : 'unexpectedly captured'}`);

  step(`2. Balancing: 30 requests from web-0 to the api VIP ${api.vip}:80 (${api.trafficPolicy.loadBalancer.type})`);
  const r1 = await spread(web, apiUrl, 30);
  ok(`answered by ${fmt(r1.counts)}; statuses ${fmt(r1.statuses)}`);
  const peer = await web.exec(process.execPath, [
    '-e',
    `const s=require('net').connect(80,'${api.vip}',()=>{console.log(s.remoteAddress+':'+s.remotePort);s.destroy()});s.on('error',e=>{console.log('error '+e.code)})`,
  ]);
  (peer.stdout.trim() === `${api.vip}:80` ? ok : bad)(
    `getpeername() inside web-0 shows ${peer.stdout.trim()} (the address it dialed), though the agent on ${cfg.node.address}:${cfg.ports.outbound} answered`,
  );

  step(`3. TCP: the echo service ${echo.vip}:${echo.ports[0]!.port} (${echo.trafficPolicy.loadBalancer.type}), spliced by the agent`);
  const e1 = await web.exec(process.execPath, [
    '-e',
    `const s=require('net').connect(${echo.ports[0]!.port},'${echo.vip}',()=>s.write('ping'));let b='';s.on('data',d=>{b+=d;if(b.includes('ping')){console.log(JSON.stringify(b));s.end()}});s.on('error',e=>console.log('error '+e.code))`,
  ]);
  ok(`echo answered ${e1.stdout.trim()}`);

  const remote = cfg.workloads.filter((w) => w.labels.app === 'api' && w.node !== cfg.node.name);
  for (const [name, peer] of sb.peers) {
    step(`3b. mTLS: ${remote.map((w) => w.name).join(', ')} on ${name} (${peer.node.address}) is reached through the tunnel (HTTP/2 CONNECT over mutual TLS on ${cfg.ports.tunnel})`);
    const link = (await sb.node.exec('ip', ['-o', 'link', 'show'])).stdout
      .split('\n')
      .map((l) => /^\d+: (wl\d+)@/.exec(l)?.[1])
      .find(Boolean);
    const pcap = `${sb.workDir}/link.pcap`;
    const dump = link ? sb.node.spawn('tcpdump', ['-i', link, '-n', '--immediate-mode', '-U', '-s', '0', '-w', pcap], { label: 'tcpdump' }) : undefined;
    if (dump) await dump.waitFor(/listening on/, 10_000).catch(() => undefined);
    const rt = await spread(web, apiUrl, 8);
    if (dump) {
      dump.kill('SIGINT');
      await dump.exited;
    }
    ok(`8 requests from web-0 answered by ${fmt(rt.counts)}`);
    if (dump) {
      const ascii = (await sb.node.exec('tcpdump', ['-r', pcap, '-A', '-n'])).stdout;
      const tls = (await sb.node.exec('tcpdump', ['-r', pcap, '-n', `tcp port ${cfg.ports.tunnel}`])).stdout.split('\n').filter(Boolean).length;
      (!/GET \/items/.test(ascii) && tls > 0 ? ok : bad)(
        `on the link between the nodes: ${tls} packets to/from port ${cfg.ports.tunnel}, ${/GET \/items/.test(ascii) ? 'PLAINTEXT HTTP SEEN' : 'no plaintext HTTP'} (tcpdump)`,
      );
    }
    const lines =
      peer.agent
        ?.output()
        .split('\n')
        .filter((l) => l.includes('tunnel connection accepted') || (l.includes('"access"') && l.includes('hbone'))) ?? [];
    const principal = /"(?:src|source|peer)[a-z_]*":"(spiffe:\/\/[^"]+|cluster\.local\/[^"]+)"/.exec(lines.join('\n'))?.[1];
    (principal ? ok : bad)(`${name}'s agent verified the caller's certificate: ${principal ?? 'no identity logged'}`);
    const mt = (await sb.metrics()).split('\n').find((l) => l.startsWith('weft_requests_total') && l.includes('connection_security_policy="mutual_tls"'));
    if (mt) console.log(dim(`    ${mt}`));
  }

  step('4. Not meshed: legacy-client-0 dials the api VIP');
  const l1 = await legacy.curl(apiUrl, ['--max-time', '2']);
  (l1.status === 0 ? ok : bad)(`not redirected: curl ${l1.status === 0 ? `failed (exit ${l1.code}: no route to a VIP outside the mesh)` : `got HTTP ${l1.status}`}`);

  const hc = api.trafficPolicy.healthCheck;
  step(`5. Health: api-2 starts failing its ${hc?.type ?? 'tcp'} check ${hc?.path ?? ''} (every ${hc ? hc.interval / 1000 : '?'}s, unhealthy after ${hc?.unhealthyThreshold})`);
  const api2 = cfg.workloads.find((w) => w.name === 'api-2')!;
  await ctl(sb, api2.name, '/_ctl/unhealthy');
  if (await waitFor('api-2 to be marked unhealthy', async () => (await endpointState(sb, 'shop/api:80', 'shop/api-2'))?.health === 'unhealthy')) {
    ok('config_dump: api-2 health=unhealthy, out of rotation');
    const r2 = await spread(web, apiUrl, 20);
    (r2.counts['api-2'] ? bad : ok)(`20 requests answered by ${fmt(r2.counts)}`);
  }
  await ctl(sb, api2.name, '/_ctl/healthy');
  if (await waitFor('api-2 to be healthy again', async () => (await endpointState(sb, 'shop/api:80', 'shop/api-2'))?.health === 'healthy')) ok('api-2 healthy again and back in rotation');

  const od = api.trafficPolicy.outlierDetection;
  step(`6. Retries and outlier detection: api-1 answers 503 to everything (ejected after ${od?.consecutive5xx} consecutive 5xx)`);
  const api1 = cfg.workloads.find((w) => w.name === 'api-1')!;
  await ctl(sb, api1.name, '/_ctl/fail?status=503');
  const r3 = await spread(web, apiUrl, 30);
  ok(`30 requests: statuses ${fmt(r3.statuses)}, answered by ${fmt(r3.counts)} (failed tries were retried on other endpoints)`);
  const s1 = await endpointState(sb, 'shop/api:80', 'shop/api-1');
  (s1?.ejected ? ok : bad)(`config_dump: api-1 ejected=${s1?.ejected} until ${s1?.ejectedUntil ?? '-'} (${s1?.ejectionReason ?? 'no reason'})`);
  await ctl(sb, api1.name, '/_ctl/ok');

  const cb = api.trafficPolicy.circuitBreaker;
  step(`7. Circuit breaker and fallback: every api replica fails (breaker opens after ${cb?.consecutiveFailures} failures; fallback ${api.trafficPolicy.fallback?.service})`);
  for (const w of cfg.workloads.filter((x) => x.labels.app === 'api')) await ctl(sb, w.name, '/_ctl/fail?status=503');
  const r4 = await spread(web, apiUrl, 30);
  ok(`30 requests: statuses ${fmt(r4.statuses)}, answered by ${fmt(r4.counts)}${Object.keys(r4.errors).length ? `, agent errors ${fmt(r4.errors)}` : ''}`);
  const cdump = (await sb.configDump()).clusters.find((c: any) => c.key === 'shop/api:80');
  ok(`config_dump: api circuit ${cdump?.circuitBreaker?.state}`);
  for (const w of cfg.workloads.filter((x) => x.labels.app === 'api')) await ctl(sb, w.name, '/_ctl/ok');

  step('8. Strict mTLS: legacy-client-0 dials api-0 directly at its pod IP');
  const api0 = cfg.workloads.find((w) => w.name === 'api-0')!;
  const l2 = await legacy.curl(`http://${api0.ip}:8080/`, ['--max-time', '2']);
  (l2.status === 0 ? ok : bad)(l2.status === 0 ? `refused: plaintext from outside the mesh does not reach a strict pod (curl exit ${l2.code})` : `got HTTP ${l2.status}: not enforced`);

  step('9. Metrics');
  const m = await sb.metrics();
  const pick = (re: RegExp) => m.split('\n').filter((l) => re.test(l) && !l.startsWith('#'));
  for (const l of pick(/^weft_requests_total\{.*destination_service="shop\/api(-degraded)?"/).slice(0, 8)) console.log(dim(`    ${l}`));
  for (const l of pick(/^weft_(captured_workloads|tcp_connections_opened_total|upstream_ejections_total|retries_total|circuit_breaker_open)/).slice(0, 8)) console.log(dim(`    ${l}`));
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error('npm start needs root: it creates network namespaces, cgroups and loads eBPF programs.');
    return 1;
  }
  console.log(bold('weft sandbox: one node, pods in network namespaces, the agent with eBPF capture'));
  let sb: MeshSandbox | undefined;
  let stopping = false;
  const teardown = async () => {
    if (stopping || !sb) return;
    stopping = true;
    console.log('\ntearing down the sandbox (agent, pods, namespaces, cgroups, bpf pins)...');
    await sb.destroy();
    console.log(`done. The agent's log is kept in ${sb.logFile}`);
  };
  process.on('SIGINT', () => void teardown().then(() => process.exit(0)));
  process.on('SIGTERM', () => void teardown().then(() => process.exit(0)));
  try {
    sb = await MeshSandbox.create({ log: (s) => console.log(dim(`  ${s}`)) });
    console.log(dim(`  agent running in netns ${sb.node.netns}: weft agent --config ${sb.configFile}`));
    await demo(sb);
    for (const d of demos) await d(sb);
    const ns = `/run/netns/${sb.node.netns}`;
    step('Where to look');
    console.log(`  metrics     nsenter --net=${ns} curl -s http://${sb.config.node.address}:${sb.config.ports.metrics}/metrics`);
    console.log(`  config dump nsenter --net=${ns} curl -s http://127.0.0.1:${sb.config.ports.admin}/config_dump`);
    console.log(`  readiness   nsenter --net=${ns} curl -s http://127.0.0.1:${sb.config.ports.admin}/healthz/ready`);
    console.log(`  a pod       nsenter --net=/run/netns/${sb.pod('web-0').netns} curl -si http://10.96.0.20/items`);
    console.log(`  config      ${sb.configFile} (watched: edit it, the agent applies the change live)`);
    console.log(`  agent log   ${sb.logFile} (pino JSON; one access line per request and per TCP connection)`);
    if (process.stdin.isTTY && !process.env.CI) {
      console.log(bold('\nThe sandbox stays up for you to explore. Press Ctrl-C to tear it down.'));
      await new Promise(() => {});
    }
    await teardown();
    return 0;
  } catch (err) {
    console.error(`sandbox failed: ${(err as Error).stack ?? err}`);
    if (sb?.agent) console.error(`agent output (last lines):\n${sb.agent.output().slice(-3000)}`);
    await teardown().catch(() => undefined);
    return 1;
  }
}

main().then((code) => process.exit(code));
