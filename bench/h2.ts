/**
 * HTTP/2 and gRPC rows of `npm run bench` (issue 14): h2load through weft (an `http2` and a
 * `grpc` service, reached through the capture path as the HTTP/1.1 L7 rows are) against
 * direct, nginx (HTTP/2 both sides: `listen ... http2` and `grpc_pass`, the only HTTP/2
 * upstream nginx has) and haproxy (`proto h2` both sides), with the proxy's CPU per request.
 *
 * The layout is bench/throughput.ts's: a node namespace, a meshed client pod and a backend pod
 * in an unmeshed namespace; the proxy under test alone on core 1, h2load and the backend on
 * core 0. The backend is nginx (one worker) over h2c with prior knowledge on one port:
 * - `GET /` answers a static 1 KiB body (the h2 rows);
 * - `POST /bench.Echo/Get` answers a static gRPC message (a length-prefixed 64-byte message,
 *   `content-type: application/grpc`, trailer `grpc-status: 0`) whatever the request: nginx's
 *   static module, made to answer a POST. A gRPC server in Node would be slower than the
 *   proxies it is meant to measure (the peers are C); this one costs a few µs per call, and
 *   every row reports the backend's own CPU per request so that can be checked.
 *
 * The load: h2load, one thread pinned to the client core, `connections` connections with up
 * to `streams` concurrent streams each; the gRPC rows POST one gRPC-framed 64-byte message
 * with `content-type: application/grpc` and `te: trailers`, which is a unary call on the wire.
 * h2load is C and multiplexes: a grpc-js load generator would spend more CPU per call than
 * the proxies do, on the core it shares with the backend, and limit every row at its speed.
 *
 * Rounds alternate the order (direct, weft, nginx, haproxy; then reversed) and each row
 * reports its median round. Every proxy (the agent too) is started afresh for its round and
 * serves both kinds; direct runs beside an agent that is not on its path (as in throughput.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Topology, type ManagedProcess, type TopoPod } from '../src/sandbox/topology.js';
import { grpcFrame } from '../src/sandbox/backend.js';
import { startAgent, type RunningAgent } from './lib/agent.js';
import { cgroupCpuSeconds, coreTimes, coreUse, cpusAllowed, treeCpuSeconds, treeRssMb, waitQuiet } from './lib/proc.js';
import { nodeGet, spawnPinned, type Running } from './lib/spawn.js';
import { nginxHttpCommon } from './lib/peers.js';

const CLIENT_CPU = 0;
const PROXY_CPU = 1;
const NODE_IP = '10.77.0.1';
const CLIENT_IP = '10.77.0.10';
const BACKEND_IP = '10.77.0.20';
const BACKEND_PORT = 8080;
const H2_VIP = '10.96.0.82';
const GRPC_VIP = '10.96.0.83';
const NGINX_PORT = 18090;
const HAPROXY_PORT = 18091;
const BODY_BYTES = 1024;
const GRPC_MSG_BYTES = 64;
const GRPC_PATH = '/bench.Echo/Get';
/** A core busier than this before a run means other work is on the machine. */
const QUIET_BUSY = 0.15;

export type H2Proxy = 'direct' | 'weft' | 'nginx' | 'haproxy';
export type H2Kind = 'h2' | 'grpc';
export const H2_PROXIES: readonly H2Proxy[] = ['direct', 'weft', 'nginx', 'haproxy'];
const PROXY_NAMES: Record<H2Proxy, string> = { direct: 'direct', weft: 'weft', nginx: 'nginx', haproxy: 'haproxy' };
const KIND_NAMES: Record<H2Kind, string> = { h2: 'HTTP/2 GET 1 KiB', grpc: 'gRPC unary' };

/** What h2load printed, the parts the report keeps. */
export interface H2loadResult {
  reqPerSec: number;
  requests: number;
  succeeded: number;
  failed: number;
  errored: number;
  status2xx: number;
  /** 4xx and 5xx answers. */
  statusErrors: number;
  /** Mean and max of "time for request", ms. */
  meanMs: number;
  maxMs: number;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000 };

export function parseH2load(out: string): H2loadResult {
  const fin = /finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(out);
  const req = /requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
  if (!fin || !req) throw new Error(`no result in h2load output: ${out.slice(-800)}`);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
  const t = /time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)/.exec(out);
  const ms = (v?: string, u?: string): number => (v && u ? Number(v) * (UNIT_MS[u] ?? Number.NaN) : Number.NaN);
  return {
    reqPerSec: Number(fin[1]),
    requests: Number(req[2]),
    succeeded: Number(req[3]),
    failed: Number(req[4]),
    errored: Number(req[5]),
    status2xx: Number(codes?.[1] ?? 0),
    statusErrors: Number(codes?.[3] ?? 0) + Number(codes?.[4] ?? 0),
    maxMs: ms(t?.[3], t?.[4]),
    meanMs: ms(t?.[5], t?.[6]),
  };
}

/** One measured run of one row. */
export interface H2Round {
  round: number;
  error?: string;
  h2load?: H2loadResult;
  /** The proxy's utime + stime over the run / requests, µs. */
  proxyCpuUsPerReq?: number;
  /** The backend pod's CPU over the run / requests, µs. */
  backendCpuUsPerReq?: number;
  /** The proxy's CPU over the run's wall time: cores it used. */
  coresUsed?: number;
  rssMb?: number;
  clientBusy?: number;
  proxyBusy?: number;
  /** Other work on the machine during the run, cores. */
  foreignCores?: number;
}

export interface H2Row extends H2Round {
  proxy: H2Proxy;
  kind: H2Kind;
  name: string;
  url: string;
  proxyCpus?: string;
  rounds: H2Round[];
  medianRound?: number;
}

export interface H2Report {
  rows: H2Row[];
  notes: string[];
  durationS: number;
  rounds: number;
  connections: number;
  streams: number;
  setupError?: string;
}

export interface H2Options {
  durationS: number;
  warmupS: number;
  rounds: number;
  /** h2load -c */
  connections: number;
  /** h2load -m: concurrent streams per connection. */
  streams: number;
  only?: readonly H2Proxy[];
  workDir: string;
  agentLogLevel?: string;
  quietTimeoutMs: number;
  log: (msg: string) => void;
}

function agentConfig(client: TopoPod, backend: TopoPod, stateDir: string): string {
  return stringify({
    node: { name: 'node-a', address: NODE_IP },
    mesh: { trustDomain: 'cluster.local' },
    ports: { outbound: 15001, inbound: 15006, tunnel: 15008, admin: 15000, metrics: 15020 },
    ca: {},
    stateDir,
    namespaces: [
      { name: 'bench', labels: { 'weft.io/mesh': 'enabled' } },
      { name: 'plain', labels: {} },
    ],
    workloads: [
      { name: client.name, namespace: 'bench', node: 'node-a', ip: client.ip, serviceAccount: 'client', labels: { app: 'client' }, cgroup: client.cgroup },
      { name: backend.name, namespace: 'plain', node: 'node-a', ip: backend.ip, serviceAccount: 'backend', labels: { app: 'backend' }, cgroup: backend.cgroup },
    ],
    services: [
      { name: 'backend-h2', namespace: 'plain', vip: H2_VIP, ports: [{ name: 'http2', port: 80, targetPort: BACKEND_PORT, protocol: 'http2' }], selector: { app: 'backend' } },
      { name: 'backend-grpc', namespace: 'plain', vip: GRPC_VIP, ports: [{ name: 'grpc', port: 80, targetPort: BACKEND_PORT, protocol: 'grpc' }], selector: { app: 'backend' } },
    ],
  });
}

/** nginx over h2c: a static 1 KiB body, and a static gRPC answer to POSTs on GRPC_PATH. `listen`: a port, or addr:port. */
export function h2BackendConfig(dir: string, listen: string | number): string {
  const tmp = join(dir, 'tmp');
  return `# weft bench: the HTTP/2 backend, one worker, h2c with prior knowledge
user root;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 4096; }
http {
${nginxHttpCommon(tmp)}
  http2_max_concurrent_streams 1024;
  open_file_cache max=16;
  default_type text/plain;
  server {
    listen ${listen} http2 backlog=4096 reuseport;
    root ${join(dir, 'www')};
    location / { try_files /body =404; }
    # The static module refuses a POST with 405: error_page turns it into a GET of the answer.
    location = ${GRPC_PATH} { error_page 405 =200 /grpc-answer; try_files /grpc =404; }
    location = /grpc-answer {
      internal;
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      try_files /grpc =404;
    }
  }
}
`;
}

/**
 * Write the HTTP/2 backend's config, its two answers and the gRPC request body h2load sends;
 * returns nginx's argv (run it in the backend pod) and the request body's path.
 */
export function prepareH2Backend(dir: string, listen: string | number): { argv: string[]; grpcRequest: string } {
  mkdirSync(join(dir, 'www'), { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  writeFileSync(join(dir, 'www', 'body'), Buffer.alloc(BODY_BYTES, 'x'));
  writeFileSync(join(dir, 'www', 'grpc'), grpcFrame(Buffer.alloc(GRPC_MSG_BYTES, 'y')));
  const grpcRequest = join(dir, 'grpc-request');
  writeFileSync(grpcRequest, grpcFrame(Buffer.alloc(GRPC_MSG_BYTES, 'z')));
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, h2BackendConfig(dir, listen));
  return { argv: ['nginx', '-p', `${dir}/`, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'], grpcRequest };
}

export function nginxH2Config(dir: string): string {
  const tmp = join(dir, 'nginx-tmp');
  return `# weft bench: nginx, HTTP/2 to the client (h2c) and to the backend (grpc_pass), one worker
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'nginx-error.log')} warn;
events { worker_connections 4096; }
http {
${nginxHttpCommon(tmp)}
  http2_max_concurrent_streams 1024;
  upstream backend {
    server ${BACKEND_IP}:${BACKEND_PORT};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen ${NODE_IP}:${NGINX_PORT} http2 backlog=4096;
    location / { grpc_pass grpc://backend; }
  }
}
`;
}

export function haproxyH2Config(dir: string): string {
  return `# weft bench: haproxy, HTTP/2 both sides, one thread
global
  nbthread 1
  maxconn 4096
  pidfile ${join(dir, 'haproxy.pid')}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind ${NODE_IP}:${HAPROXY_PORT} proto h2
  default_backend be
backend be
  server backend0 ${BACKEND_IP}:${BACKEND_PORT} proto h2
`;
}

function urlOf(p: H2Proxy, k: H2Kind): string {
  const path = k === 'grpc' ? GRPC_PATH : '/';
  switch (p) {
    case 'direct':
      return `http://${BACKEND_IP}:${BACKEND_PORT}${path}`;
    case 'weft':
      return `http://${k === 'grpc' ? GRPC_VIP : H2_VIP}${path}`;
    case 'nginx':
      return `http://${NODE_IP}:${NGINX_PORT}${path}`;
    case 'haproxy':
      return `http://${NODE_IP}:${HAPROXY_PORT}${path}`;
  }
}

/**
 * What is wrong with one answer, as a client sees it: for `h2`, curl's `-D - -w size=...`
 * output (HTTP/2, 200, the body's size); for `grpc`, nghttp -nv's frame log (:status 200, the
 * `application/grpc` content type, the message, then `grpc-status: 0` in the trailers; curl
 * does not print trailers). Empty: a good answer.
 */
export function answerProblems(kind: H2Kind, out: string): string[] {
  const problems: string[] = [];
  if (kind === 'h2') {
    const size = Number(/size=(\d+)/.exec(out)?.[1] ?? 0);
    if (!/^HTTP\/2 200/m.test(out)) problems.push('not an HTTP/2 200');
    if (size !== BODY_BYTES) problems.push(`${size} body bytes, not ${BODY_BYTES}`);
    return problems;
  }
  const data = out.indexOf(`recv DATA frame <length=${GRPC_MSG_BYTES + 5},`);
  if (!/recv \(stream_id=\d+\) :status: 200/.test(out)) problems.push('no :status 200');
  if (!/recv \(stream_id=\d+\) content-type: application\/grpc/.test(out)) problems.push('no application/grpc content type');
  if (data < 0) problems.push(`no ${GRPC_MSG_BYTES + 5}-byte message`);
  else if (!/recv \(stream_id=\d+\) grpc-status: 0/.test(out.slice(data))) problems.push('no grpc-status: 0 trailer after the message');
  return problems;
}

/** The client command that fetches one answer of `kind` (see answerProblems). */
export function answerCommand(kind: H2Kind, url: string, grpcBody: string): string[] {
  return kind === 'h2'
    ? ['curl', '-sS', '--http2-prior-knowledge', '--max-time', '5', '-o', '/dev/null', '-D', '-', '-w', 'size=%{size_download}\n', url]
    : ['nghttp', '-nv', '-t', '5', '-d', grpcBody, '-H', 'content-type: application/grpc', '-H', 'te: trailers', url];
}

async function checkAnswer(client: TopoPod, url: string, kind: H2Kind, grpcBody: string): Promise<void> {
  const [cmd, ...args] = answerCommand(kind, url, grpcBody);
  const r = await client.exec(cmd!, args, { timeoutMs: 10_000 });
  const out = `${r.stdout} ${r.stderr}`;
  const problems = answerProblems(kind, out);
  if (problems.length) throw new Error(`${url}: ${problems.join(', ')}: ${out.replace(/\s+/g, ' ').slice(0, 400)}`);
}

export function h2loadArgs(url: string, kind: H2Kind, o: { connections: number; streams: number; durationS: number }, grpcBody: string): string[] {
  const args = ['-c', String(o.connections), '-m', String(o.streams), '-t', '1', '-D', String(o.durationS)];
  if (kind === 'grpc') args.push('-d', grpcBody, '-H', 'content-type: application/grpc', '-H', 'te: trailers');
  return [...args, url];
}

async function runH2load(client: TopoPod, url: string, kind: H2Kind, o: { connections: number; streams: number; durationS: number }, grpcBody: string): Promise<H2loadResult> {
  const r = await client.exec('taskset', ['-c', String(CLIENT_CPU), 'h2load', ...h2loadArgs(url, kind, o, grpcBody)], { timeoutMs: (o.durationS + 30) * 1000 });
  if (r.timedOut) throw new Error(`h2load against ${url} ran past its time limit`);
  if (r.code !== 0) throw new Error(`h2load against ${url} exited ${r.code}: ${(r.stderr || r.stdout).slice(-800)}`);
  return parseH2load(r.stdout);
}

/** The median round by req/s (of an even count, the lower middle); failed rounds do not count. */
export function medianH2Round(rounds: readonly H2Round[]): H2Round | undefined {
  const ok = rounds.filter((r) => r.h2load && r.error === undefined).sort((a, b) => a.h2load!.reqPerSec - b.h2load!.reqPerSec);
  return ok.length ? ok[(ok.length - 1) >> 1] : undefined;
}

export async function runH2(o: H2Options): Promise<H2Report> {
  const only = o.only ?? H2_PROXIES;
  const report: H2Report = { rows: [], notes: [], durationS: o.durationS, rounds: o.rounds, connections: o.connections, streams: o.streams };
  const topo = await Topology.create({ prefix: 'weft-bench' });
  topo.trackPath(o.workDir);
  const rounds = new Map<string, H2Round[]>();
  const proxyCpus = new Map<H2Proxy, string>();
  const key = (p: H2Proxy, k: H2Kind) => `${p}/${k}`;
  try {
    const node = await topo.addNode('node-a', { address: NODE_IP });
    const client = await node.addPod('client-0', { ip: CLIENT_IP });
    const backendPod = await node.addPod('backend-0', { ip: BACKEND_IP });
    for (const ns of [node.netns, client.netns, backendPod.netns]) {
      await topo.sysctl(ns, ['net.ipv4.ip_local_port_range=1024 65535', `net.ipv4.ip_local_reserved_ports=${BACKEND_PORT},15000-15020,${NGINX_PORT}-${HAPROXY_PORT}`]);
    }
    const { argv: backendArgv, grpcRequest: grpcBody } = prepareH2Backend(join(o.workDir, 'backend'), BACKEND_PORT);
    const backend: ManagedProcess = backendPod.spawn('taskset', ['-c', String(CLIENT_CPU), ...backendArgv], { label: 'h2-backend' });
    for (let i = 0; ; i++) {
      try {
        await checkAnswer(client, urlOf('direct', 'h2'), 'h2', grpcBody);
        break;
      } catch (err) {
        if (i > 50 || backend.child.exitCode !== null) throw new Error(`the HTTP/2 backend (nginx) did not come up: ${(err as Error).message} ${backend.output().slice(-400)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    report.notes.push(
      `backend: nginx, one worker, h2c with prior knowledge, in the backend pod on core ${CLIENT_CPU} with h2load: a static ${BODY_BYTES}-byte body for GET, and for POST ${GRPC_PATH} a static gRPC answer (a ${GRPC_MSG_BYTES}-byte message, content-type application/grpc, trailer grpc-status 0). ` +
        `This machine has ${cpus().length} cores: the proxy gets core ${PROXY_CPU} to itself`,
    );
    report.notes.push(
      `load: h2load -t1 -c${o.connections} -m${o.streams} -D${o.durationS} in the client pod, pinned to core ${CLIENT_CPU}; the gRPC rows POST a ${GRPC_MSG_BYTES}-byte gRPC-framed message with content-type application/grpc and te: trailers (a unary call on the wire). h2load is C and multiplexes ${o.connections * o.streams} streams: a @grpc/grpc-js load generator costs more CPU per call than the proxies under test, on the core the backend shares, and would limit every row`,
    );
    report.notes.push(
      `peers: nginx (one worker) with listen ... http2 and grpc_pass (nginx 1.22's only HTTP/2 upstream; keepalive 64), used for both kinds; haproxy (one thread) with bind ... proto h2 and server ... proto h2, http-reuse always. weft: services of protocol http2 and grpc, reached through the VIP (eBPF capture), the agent pinned to core ${PROXY_CPU}, log level ${o.agentLogLevel ?? 'default (info: one access-log line per request, to a file)'}`,
    );

    const stateDir = join(o.workDir, 'agent-state');
    const configFile = join(o.workDir, 'weft-h2.yaml');
    writeFileSync(configFile, agentConfig(client, backendPod, stateDir));
    let agentRuns = 0;
    const launchAgent = async (): Promise<RunningAgent> => {
      const a = await startAgent(node, {
        configFile,
        pinRoot: join(topo.bpfRoot, 'h2'),
        stateDir,
        logFile: join(o.workDir, `agent-h2-${++agentRuns}.log`),
        cpu: PROXY_CPU,
        logLevel: o.agentLogLevel,
      });
      const dump = JSON.parse((await nodeGet(node, 'http://127.0.0.1:15000/config_dump')).body) as { capture: Array<{ workload: string; captured: boolean }> };
      if (!dump.capture.find((c) => c.workload === 'bench/client-0')?.captured) {
        await a.stop();
        throw new Error('client-0 is not captured');
      }
      return a;
    };

    const startProxy = async (p: H2Proxy): Promise<Running | undefined> => {
      const dir = join(o.workDir, p);
      mkdirSync(dir, { recursive: true });
      if (p === 'weft') return launchAgent();
      if (p === 'nginx') {
        mkdirSync(join(dir, 'nginx-tmp'), { recursive: true });
        writeFileSync(join(dir, 'nginx.conf'), nginxH2Config(dir));
        return spawnPinned(node, 'nginx', PROXY_CPU, ['nginx', '-p', `${dir}/`, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'nginx-error.log'), '-g', 'daemon off;'], join(dir, 'nginx.log'));
      }
      if (p === 'haproxy') {
        writeFileSync(join(dir, 'haproxy.cfg'), haproxyH2Config(dir));
        return spawnPinned(node, 'haproxy', PROXY_CPU, ['haproxy', '-db', '-f', join(dir, 'haproxy.cfg')], join(dir, 'haproxy.log'));
      }
      return undefined;
    };

    /** One measured run; `bystanderPid`: a process of ours that runs but is not under test (the agent during direct). */
    const measure = async (p: H2Proxy, k: H2Kind, round: number, pid: number | undefined, bystanderPid: number | undefined): Promise<H2Round> => {
      const res: H2Round = { round };
      const url = urlOf(p, k);
      try {
        await waitQuiet(QUIET_BUSY, o.quietTimeoutMs);
        if (o.warmupS > 0) await runH2load(client, url, k, { ...o, durationS: o.warmupS }, grpcBody);
        const cpu0 = pid ? treeCpuSeconds(pid) : 0;
        const bystander0 = bystanderPid ? treeCpuSeconds(bystanderPid) : 0;
        const backend0 = cgroupCpuSeconds(backendPod.cgroup);
        const pods0 = backend0 + cgroupCpuSeconds(client.cgroup);
        const self0 = process.cpuUsage();
        const cores0 = coreTimes();
        const t0 = performance.now();
        const h = await runH2load(client, url, k, o, grpcBody);
        const seconds = (performance.now() - t0) / 1000;
        const use = coreUse(cores0, coreTimes(), seconds);
        const proxyCpuS = pid ? treeCpuSeconds(pid) - cpu0 : 0;
        const backendCpuS = cgroupCpuSeconds(backendPod.cgroup) - backend0;
        const podsCpuS = cgroupCpuSeconds(backendPod.cgroup) + cgroupCpuSeconds(client.cgroup) - pods0;
        const self = process.cpuUsage(self0);
        const bystander = bystanderPid ? treeCpuSeconds(bystanderPid) - bystander0 : 0;
        res.h2load = h;
        if (h.requests > 0) {
          if (pid) {
            res.proxyCpuUsPerReq = (proxyCpuS / h.requests) * 1e6;
            res.coresUsed = proxyCpuS / seconds;
            res.rssMb = treeRssMb(pid);
          }
          res.backendCpuUsPerReq = (backendCpuS / h.requests) * 1e6;
        }
        res.clientBusy = use.busy[CLIENT_CPU];
        res.proxyBusy = use.busy[PROXY_CPU];
        res.foreignCores = Math.max(0, use.taskSeconds - proxyCpuS - podsCpuS - bystander - (self.user + self.system) / 1e6) / seconds;
        // Answers that went wrong are counted in the row (failed, 4xx/5xx), not hidden: the run still measured the proxy.
        o.log(
          `  ${PROXY_NAMES[p]} ${KIND_NAMES[k]} (round ${round}/${o.rounds}): ${h.reqPerSec.toFixed(0)} req/s, mean ${h.meanMs.toFixed(2)} ms` +
            (res.proxyCpuUsPerReq !== undefined ? `, proxy ${res.proxyCpuUsPerReq.toFixed(1)} CPU µs/req on ${res.coresUsed!.toFixed(2)} cores` : '') +
            `, backend ${res.backendCpuUsPerReq?.toFixed(1)} µs/req; cores busy: client ${((res.clientBusy ?? 0) * 100).toFixed(0)}%, proxy ${((res.proxyBusy ?? 0) * 100).toFixed(0)}%; other work ${res.foreignCores.toFixed(2)} cores` +
            (h.failed + h.errored + h.statusErrors > 0 ? `; ${h.failed} failed, ${h.errored} errored, ${h.statusErrors} 4xx/5xx` : ''),
        );
      } catch (err) {
        res.error = (err as Error).message;
        o.log(`  ${PROXY_NAMES[p]} ${KIND_NAMES[k]} (round ${round}/${o.rounds}): FAILED: ${res.error}`);
      }
      return res;
    };

    const failed = new Map<H2Proxy, string>();
    for (let round = 1; round <= o.rounds; round++) {
      const order = round % 2 === 1 ? [...only] : [...only].reverse();
      for (const p of order) {
        if (failed.has(p)) continue;
        let proxy: Running | undefined;
        try {
          // direct runs with the agent up, as in the HTTP/1.1 rows: the client's cgroup carries the eBPF programs.
          proxy = await startProxy(p === 'direct' ? 'weft' : p);
          for (const k of ['h2', 'grpc'] as const) {
            for (let i = 0; ; i++) {
              try {
                await checkAnswer(client, urlOf(p, k), k, grpcBody);
                break;
              } catch (err) {
                if (i > 25) throw err;
                await new Promise((r) => setTimeout(r, 200));
              }
            }
          }
          const pid = p === 'direct' ? undefined : proxy?.pid;
          if (pid && !proxyCpus.has(p)) proxyCpus.set(p, cpusAllowed(pid));
          for (const k of ['h2', 'grpc'] as const) {
            const list = rounds.get(key(p, k)) ?? [];
            list.push(await measure(p, k, round, pid, p === 'direct' ? proxy?.pid : undefined));
            rounds.set(key(p, k), list);
          }
        } catch (err) {
          o.log(`  ${PROXY_NAMES[p]}: FAILED: ${(err as Error).message}`);
          if (!rounds.has(key(p, 'h2'))) failed.set(p, (err as Error).message);
        } finally {
          await proxy?.stop();
        }
      }
    }

    for (const k of ['h2', 'grpc'] as const) {
      for (const p of only) {
        const base = { proxy: p, kind: k, name: `${PROXY_NAMES[p]}`, url: urlOf(p, k) };
        const list = rounds.get(key(p, k)) ?? [];
        const m = medianH2Round(list);
        const row: H2Row = m
          ? { ...m, ...base, rounds: list, medianRound: m.round }
          : { ...base, rounds: list, round: 0, error: failed.get(p) ?? list.find((r) => r.error)?.error ?? 'no round was measured' };
        if (proxyCpus.has(p)) row.proxyCpus = proxyCpus.get(p);
        report.rows.push(row);
      }
    }
    report.notes.push(
      'nginx\'s gRPC row: about 0.1% of its calls end in 502 (error log: "upstream sent frame for unknown stream"): the backend answers from a static file before it has read the request body and then sends a frame on the stream it closed, which nginx\'s grpc module refuses and haproxy and weft accept. The row is kept with those answers counted: its CPU per request is what the proxy spent',
    );
    report.notes.push(
      'direct is measured while the agent runs (the eBPF programs on the client cgroup; the backend pod is not redirected). Each proxy is started afresh for its round, weft included (h2 then gRPC on the same agent)',
    );
  } catch (err) {
    report.setupError = (err as Error).stack ?? String(err);
    o.log(`h2: setup failed: ${(err as Error).message}`);
  } finally {
    await topo.destroy().catch((err: unknown) => o.log(`h2: topology cleanup: ${(err as Error).message}`));
  }
  return report;
}

const f = (v: number | undefined, d = 1): string => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d));

/** The H2 rows as a markdown table, each kind with its ratios to nginx. */
export function h2Table(r: H2Report): string {
  const lines = [
    '| load | proxy | req/s | mean ms | failed | 4xx/5xx | proxy CPU µs / req | cores used | req/s vs nginx | CPU vs nginx | vs direct | backend CPU µs / req | proxy RSS MB | rounds req/s |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const k of ['h2', 'grpc'] as const) {
    const rows = r.rows.filter((x) => x.kind === k);
    const nginx = rows.find((x) => x.proxy === 'nginx');
    const direct = rows.find((x) => x.proxy === 'direct');
    for (const x of rows) {
      const rps = x.h2load?.reqPerSec;
      const perRound = x.rounds.map((y) => (y.h2load ? y.h2load.reqPerSec.toFixed(0) : 'failed')).join(' / ');
      if (rps === undefined) {
        lines.push(`| ${KIND_NAMES[k]} | ${x.name} | failed: ${(x.error ?? '').replace(/[|\s]+/g, ' ').slice(0, 160)} | | | | | | | | | | | ${perRound} |`);
        continue;
      }
      const nr = nginx?.h2load?.reqPerSec;
      const dr = direct?.h2load?.reqPerSec;
      lines.push(
        `| ${KIND_NAMES[k]} | ${x.name} | ${rps.toFixed(0)} | ${f(x.h2load?.meanMs, 2)} | ${(x.h2load?.failed ?? 0) + (x.h2load?.errored ?? 0)} | ${x.h2load?.statusErrors ?? 0} | ${f(x.proxyCpuUsPerReq)} | ${f(x.coresUsed, 2)} | ${nr ? f(rps / nr, 2) : '–'} | ${x.proxyCpuUsPerReq !== undefined && nginx?.proxyCpuUsPerReq ? f(x.proxyCpuUsPerReq / nginx.proxyCpuUsPerReq, 2) : '–'} | ${dr ? f(rps / dr, 2) : '–'} | ${f(x.backendCpuUsPerReq)} | ${f(x.rssMb)} | ${perRound} |`,
      );
    }
  }
  return lines.join('\n');
}

/** The whole H2 section as markdown (bench/run.ts prints it and writes it with --only=h2). */
export function h2Markdown(r: H2Report): string {
  const out = [
    '## HTTP/2 and gRPC through the capture path',
    '',
    `h2load inside the client pod, pinned with the backend to core ${CLIENT_CPU}; the proxy under test alone on core ${PROXY_CPU}. ${r.rounds} alternating round(s) of ${r.durationS} s per row, the median round reported (its req/s, latency and CPU). CPU per request is the proxy process tree's utime + stime over the measured run divided by its requests; "backend CPU" is the backend pod's cgroup CPU per request, to show the backend is not what limits. Failed counts h2load's failed and errored requests of the median round (h2load -D ends a run with up to connections x streams requests in flight, which it counts as failed), and 4xx/5xx its error answers.`,
    '',
  ];
  if (r.setupError) out.push(`Setup failed: ${r.setupError.split('\n')[0]}`, '');
  out.push(h2Table(r), '');
  for (const n of r.notes) out.push(`- ${n}`);
  const disturbed = r.rows.filter((x) => (x.foreignCores ?? 0) > 0.1).map((x) => `${x.name} ${KIND_NAMES[x.kind]} (${f(x.foreignCores, 2)} cores)`);
  if (disturbed.length) out.push(`- other work on the machine during the median runs: ${disturbed.join(', ')}: those figures are low`);
  const busy = r.rows.filter((x) => x.clientBusy !== undefined).map((x) => `${x.name} ${KIND_NAMES[x.kind]} ${Math.round((x.clientBusy ?? 0) * 100)}% / ${Math.round((x.proxyBusy ?? 0) * 100)}%`);
  if (busy.length)
    out.push(
      `- core use during the median runs (client core / proxy core): ${busy.join('; ')}. Where the client core is the saturated one, the row is bounded by h2load and the backend, not by the proxy`,
    );
  return `${out.join('\n')}\n`;
}
