/**
 * L7 micro-benchmark on loopback: wrk -> proxy -> backend, 1 KiB responses, keep-alive.
 * The proxy runs alone on one CPU (taskset); wrk and the backend share the other ones.
 *
 *   node dist/bench/l7-micro.js [--proxy weft,node,nginx,direct] [--backend raw|nginx|sandbox]
 *                               [--duration 5] [--connections 50] [--runs 1] [--proxy-cpu 1] [--load-cpu 0]
 *                               [--log FILE] [--cpu-prof DIR]
 *
 * Proxies:
 * - `weft`: the agent (src/agent.ts) in a child process, capture off, every connection routed
 *   to one HTTP service as if connect4 had redirected it (the loopback-agent trick of the tests),
 *   access log on (pino to /dev/null unless --log), metrics on.
 * - `node`: a plain node:http server forwarding through an undici Pool: the reference point
 *   for "what does Node itself cost".
 * - `nginx`: nginx (one worker, upstream keepalive, access_log off) with its own conf in a temp
 *   dir; never touches a system instance.
 * - `direct`: no proxy, wrk straight at the backend: the ceiling of the load side.
 * - `floor`: a byte pipe on net.Socket, one upstream connection per client connection, no
 *   parsing: what any Node proxy pays for its sockets before doing anything.
 *
 * Prints one line per run and a JSON summary at the end. Needs wrk and taskset; nginx for
 * `--proxy nginx` / `--backend nginx`. Only loopback, bounded duration.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { freePort } from './lib/net.js';

const require_ = createRequire(import.meta.url);

const SELF = fileURLToPath(import.meta.url);
const BODY = Buffer.alloc(1024, 'x');
const BACKEND_IP = '127.0.1.1';
/** The head the sandbox backend (node:http) sends with its 1 KiB answers. */
const CANNED_HEAD = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nx-pod: api-0\r\nDate: Tue, 24 Nov 2026 17:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n`;
const VIP = '10.96.0.20';

interface Args {
  proxies: string[];
  backend: 'raw' | 'nginx' | 'sandbox';
  duration: number;
  connections: number;
  runs: number;
  proxyCpu: string;
  loadCpu: string;
  log?: string;
  cpuProf?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { proxies: ['direct', 'nginx', 'node', 'weft'], backend: 'raw', duration: 5, connections: 50, runs: 1, proxyCpu: '1', loadCpu: '0' };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--proxy':
        a.proxies = v!.split(',');
        i++;
        break;
      case '--backend':
        a.backend = v as Args['backend'];
        i++;
        break;
      case '--duration':
        a.duration = Number(v);
        i++;
        break;
      case '--connections':
        a.connections = Number(v);
        i++;
        break;
      case '--runs':
        a.runs = Number(v);
        i++;
        break;
      case '--proxy-cpu':
        a.proxyCpu = v!;
        i++;
        break;
      case '--load-cpu':
        a.loadCpu = v!;
        i++;
        break;
      case '--log':
        a.log = v;
        i++;
        break;
      case '--cpu-prof':
        a.cpuProf = v;
        i++;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  return a;
}

/** Spawn pinned to `cpu`; resolves once `ready` shows up on stdout. */
function spawnPinned(cpu: string, cmd: string, args: string[], ready: RegExp | undefined, stdout: 'pipe' | number = 'pipe'): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn('taskset', ['-c', cpu, cmd, ...args], { stdio: ['ignore', ready ? 'pipe' : stdout, 'inherit'] });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`${cmd} exited early (${code})`)));
    if (!ready) {
      setTimeout(() => resolve(child), 300);
      return;
    }
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d;
      if (ready.test(buf)) {
        child.stdout!.off('data', onData);
        if (stdout === 'pipe') child.stdout!.resume();
        else child.stdout!.resume();
        resolve(child);
      }
    };
    child.stdout!.on('data', onData);
  });
}

function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    child.once('exit', () => resolve());
    child.kill('SIGINT');
    setTimeout(() => child.kill('SIGKILL'), 3000).unref();
  });
}

function nginxConf(dir: string, name: string, body: string): string {
  const conf = join(dir, `${name}.conf`);
  writeFileSync(
    conf,
    `worker_processes 1;
daemon off;
master_process off;
pid ${dir}/${name}.pid;
error_log ${dir}/${name}.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  ${body}
}
`,
  );
  return conf;
}

interface WrkResult {
  rps: number;
  /** CPU time of the proxy process per request, µs (user + system, all threads): steadier than req/s on a shared machine. */
  cpuUsPerReq?: number;
  p50ms: number;
  p99ms: number;
  errors: number;
  non2xx: number;
  requests: number;
}

/** utime + stime of a process, in µs. */
function cpuUs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
  } catch {
    return undefined;
  }
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function toMs(s: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(s.trim());
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 's' ? n * 1000 : n;
}

function runWrk(cpu: string, url: string, connections: number, duration: number): WrkResult {
  const r = spawnSync('taskset', ['-c', cpu, 'wrk', '-t1', `-c${connections}`, `-d${duration}s`, '--latency', url], { encoding: 'utf8' });
  const out = r.stdout;
  if (r.status !== 0) throw new Error(`wrk failed: ${r.stderr}${out}`);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const p50 = toMs(/\s50%\s+(\S+)/.exec(out)?.[1] ?? '');
  const p99 = toMs(/\s99%\s+(\S+)/.exec(out)?.[1] ?? '');
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = sock ? sock.slice(1).reduce((s, x) => s + Number(x), 0) : 0;
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  return { rps, p50ms: p50, p99ms: p99, errors, non2xx, requests };
}

// ---------------------------------------------------------------------------------------
// Child roles

/** A canned-response HTTP/1.1 server: as little work per request as possible. */
function serveRawBackend(port: number): void {
  const res = Buffer.concat([Buffer.from(CANNED_HEAD), BODY]);
  const server = net.createServer({ noDelay: true }, (s) => {
    let tail = '';
    s.on('data', (d: Buffer) => {
      // Count request heads (GETs without bodies); keep a 3-byte tail for split terminators.
      const text = tail + d.toString('latin1');
      let n = 0;
      let i = text.indexOf('\r\n\r\n');
      let last = 0;
      while (i !== -1) {
        n++;
        last = i + 4;
        i = text.indexOf('\r\n\r\n', last);
      }
      tail = text.slice(Math.max(last, text.length - 3));
      if (n === 1) s.write(res);
      else if (n > 1) s.write(Buffer.concat(Array.from({ length: n }, () => res)));
    });
    s.on('error', () => s.destroy());
  });
  server.listen(port, BACKEND_IP, () => console.log('ready'));
}

async function serveSandboxBackend(port: number): Promise<void> {
  const { startBackend } = await import('../src/sandbox/backend.js');
  const b = await startBackend({ name: 'api-0', port, host: BACKEND_IP, log: () => {} });
  b.state.sizeBytes = 1024;
  console.log('ready');
}

/** The reference point: node:http downstream, an undici Pool upstream, nothing else. */
async function serveNodeProxy(port: number, backendPort: number): Promise<void> {
  const { Pool } = await import('undici');
  const pool = new Pool(`http://${BACKEND_IP}:${backendPort}`, { connections: 128, pipelining: 1, keepAliveTimeout: 60_000 });
  const server = http.createServer({ keepAlive: true }, (req, res) => {
    pool.request({ path: req.url!, method: req.method as 'GET', headers: req.headers as Record<string, string>, body: req.method === 'GET' || req.method === 'HEAD' ? null : req }).then(
      (r) => {
        res.writeHead(r.statusCode, r.headers as http.OutgoingHttpHeaders);
        r.body.pipe(res);
      },
      () => {
        res.writeHead(502).end();
      },
    );
  });
  server.listen(port, '127.0.0.1', () => console.log('ready'));
}

/**
 * The floor for any proxy built on net.Socket: one upstream connection per client
 * connection, every read forwarded as is, no parsing at all (correct only for wrk's GETs
 * and Content-Length answers). What is left between this and weft is the forwarder.
 */
function serveFloor(port: number, backendPort: number): void {
  const server = net.createServer({ noDelay: true }, (down) => {
    const up = net.connect({ host: BACKEND_IP, port: backendPort, noDelay: true });
    const spin = Number(process.env.FLOOR_SPIN_US ?? 0);
    down.on('data', (d: Buffer) => {
      if (spin > 0) {
        const until = performance.now() + spin / 1000;
        while (performance.now() < until);
      }
      up.write(d);
    });
    up.on('data', (d: Buffer) => down.write(d));
    const close = () => {
      down.destroy();
      up.destroy();
    };
    down.on('error', close);
    up.on('error', close);
    down.on('close', close);
    up.on('close', close);
  });
  server.listen(port, '127.0.0.1', () => console.log('ready'));
  // Exit normally on the bench's SIGINT, so that --cpu-prof writes its profile.
  process.on('SIGINT', () => process.exit(0));
}

async function serveWeft(port: number, backendPort: number): Promise<void> {
  const { Agent } = await import('../src/agent.js');
  const { StaticDiscovery } = await import('../src/discovery/static.js');
  const { parseConfig } = await import('../src/config/load.js');
  const { createLogger } = await import('../src/telemetry/log.js');
  const yaml = `
node: { name: node-a, address: 127.0.0.1 }
ports: { outbound: ${port}, inbound: 0, tunnel: 0, admin: 0, metrics: 0 }
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
  - { name: api-0, namespace: shop, node: node-a, ip: ${BACKEND_IP}, serviceAccount: api, labels: { app: api } }
  - { name: client-0, namespace: shop, node: node-a, ip: 127.0.0.1, serviceAccount: client, labels: { app: client } }
services:
  - name: api
    namespace: shop
    vip: ${VIP}
    ports: [ { port: 80, targetPort: ${backendPort}, protocol: http } ]
    selector: { app: api }
    trafficPolicy: { retries: { attempts: 2, perTryTimeout: 2s, retryOn: [connect-failure, reset, 5xx] } }
`;
  const discovery = new StaticDiscovery(parseConfig(yaml, 'bench'));
  // The access log goes where the agent's stdout goes (/dev/null unless --log): its cost is counted.
  const log = await benchLogger(createLogger);
  let agent: Awaited<ReturnType<typeof Agent.start>> | undefined;
  agent = await Agent.start({
    discovery,
    log,
    capture: false,
    origDst: () => ({ ip: VIP, port: 80 }),
    sourceLookup: () => agent?.state.workload('shop', 'client-0'),
  });
  process.stderr.write('ready\n');
  process.on('SIGINT', () => {
    void agent!.stop({ drainMs: 0 }).then(() => process.exit(0));
  });
}

/** WEFT_BENCH_LOG=agent (the agent's own logger, default) | unbuffered | sync: compare log destinations. */
async function benchLogger(createLogger: (level?: string) => import('../src/telemetry/log.js').Logger) {
  const level = process.env.WEFT_LOG_LEVEL ?? 'info';
  const mode = process.env.WEFT_BENCH_LOG ?? 'agent';
  if (mode === 'agent') return createLogger(level);
  const { default: pino } = await import('pino');
  const { isoTime } = await import('../src/telemetry/log.js');
  const dest =
    mode === 'sync'
      ? pino.destination({ dest: 1, sync: true, minLength: 4096 })
      : mode === 'big'
        ? pino.destination({ dest: 1, sync: false, minLength: 32768, maxWrite: 65536, periodicFlush: 100 })
        : pino.destination({ dest: 1, sync: false });
  return pino({ level, base: { pid: process.pid }, timestamp: isoTime }, dest);
}

/**
 * `inproc`: the L7 path without sockets: in-memory Duplex pairs on both sides, a fake
 * transport answering each request head with the 1 KiB response. CPU time per request of
 * the JavaScript path alone (parsing, routing, authz, metrics, access log): steady enough
 * to compare code changes on a busy machine, where req/s through real sockets is not.
 *
 *   node dist/bench/l7-micro.js inproc [requests=200000] [connections=50] [log=agent|null|none]
 */
async function inproc(total: number, conns: number, logMode: string): Promise<void> {
  const { Duplex } = await import('node:stream');
  const { parseConfig } = await import('../src/config/load.js');
  const { StateStore } = await import('../src/state/store.js');
  const { ClusterManager } = await import('../src/cluster/manager.js');
  const { Metrics } = await import('../src/telemetry/metrics.js');
  const { Enforcer } = await import('../src/authz/enforcer.js');
  const { HttpProxy } = await import('../src/proxy/http.js');
  const { createLogger, silentLogger } = await import('../src/telemetry/log.js');
  const { default: pino } = await import('pino');
  const cfg = parseConfig(
    `
node: { name: node-a, address: 127.0.0.1 }
namespaces: [ { name: shop, labels: { weft.io/mesh: enabled } } ]
workloads:
  - { name: api-0, namespace: shop, node: node-a, ip: ${BACKEND_IP}, serviceAccount: api, labels: { app: api } }
  - { name: client-0, namespace: shop, node: node-a, ip: 127.0.0.1, serviceAccount: client, labels: { app: client } }
services:
  - { name: api, namespace: shop, vip: ${VIP}, ports: [ { port: 80, targetPort: 8080, protocol: http } ], selector: { app: api }, trafficPolicy: { retries: { attempts: 2, perTryTimeout: 2s, retryOn: [connect-failure, reset, 5xx] } } }
`,
    'inproc',
  );
  const state = new StateStore(cfg);
  const metrics = new Metrics();
  const { isoTime } = await import('../src/telemetry/log.js');
  const opts = { level: 'info', base: { pid: process.pid }, timestamp: isoTime };
  const log =
    logMode === 'none'
      ? silentLogger
      : logMode === 'null'
        ? pino(opts, { write() {} })
        : logMode === 'big'
          ? pino(opts, pino.destination({ dest: 1, sync: false, minLength: 32768, maxWrite: 65536, periodicFlush: 100 }))
          : logMode === 'sync'
            ? pino(opts, pino.destination({ dest: 1, sync: true, minLength: 32768, maxWrite: 65536 }))
            : logMode === 'buf'
              ? pino(opts, pino.destination({ dest: 1, sync: false, minLength: 4096, contentMode: 'buffer', periodicFlush: 100 } as never))
              : logMode === 'batch'
                ? pino(opts, batchDest())
                : logMode === 'unbuffered'
                  ? pino(opts, pino.destination({ dest: 1, sync: false }))
                  : createLogger('info');
  const clusters = new ClusterManager(state, metrics, log);
  clusters.sync();
  const enforcer = new Enforcer(state, metrics, log);
  const response = Buffer.concat([Buffer.from(CANNED_HEAD), BODY]);
  class Upstream extends Duplex {
    override _read(): void {}
    override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
      if (chunk.includes('\r\n\r\n')) setImmediate(() => this.push(response));
      cb();
    }
  }
  const proxy = new HttpProxy({
    clusters,
    metrics,
    log,
    transport: { connect: async () => new Upstream(), securityOf: () => 'none' },
    authorize: (ctx, ep, req) => enforcer.http(enforcer.peerOfLocal(ctx.source, ctx.sourceIp), ep, req),
  });
  const target = state.resolve(VIP.split(':')[0] ?? VIP, 80)!;
  const source = state.workload('shop', 'client-0');
  const request = Buffer.from('GET / HTTP/1.1\r\nHost: 10.96.0.20\r\nUser-Agent: wrk\r\n\r\n');
  // What reaches the client: the hop-by-hop Connection and Keep-Alive lines are not passed on.
  const expect = response.length - 'Connection: keep-alive\r\n'.length - 'Keep-Alive: timeout=5\r\n'.length;
  let done = 0;
  let started = 0;
  let finish: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  class Client extends Duplex {
    got = 0;
    override _read(): void {}
    override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
      this.onBytes(chunk.length);
      cb();
    }
    override _writev(chunks: { chunk: Buffer }[], cb: () => void): void {
      for (const c of chunks) this.onBytes(c.chunk.length);
      cb();
    }
    private onBytes(n: number): void {
      this.got += n;
      if (this.got < expect) return;
      this.got -= expect;
      done++;
      if (done === total) finish();
      else if (started < total) this.send();
    }
    send(): void {
      started++;
      setImmediate(() => this.push(request));
    }
  }
  const clients = Array.from({ length: conns }, () => new Client());
  for (const c of clients) proxy.accept(c, { source, sourceIp: '127.0.0.1', origIp: VIP, origPort: 80, target });
  const warm = Math.min(20_000, total / 4);
  const run = async (n: number) => {
    done = 0;
    started = 0;
    total = n;
    const p = new Promise<void>((r) => (finish = r));
    for (const c of clients) c.send();
    await p;
  };
  // Several rounds, the cheapest one reported: on a shared machine, interference only ever adds.
  const measured = total;
  await run(warm);
  const rounds: number[] = [];
  for (let i = 0; i < 7; i++) {
    const c0 = process.cpuUsage();
    await run(Math.ceil(measured / 7));
    const cpu = process.cpuUsage(c0);
    rounds.push((cpu.user + cpu.system) / Math.ceil(measured / 7));
  }
  rounds.sort((a, b) => a - b);
  console.log(`inproc ${measured} requests, ${conns} connections, log=${logMode}: ${rounds[0]!.toFixed(2)} us CPU per request (min of 7 rounds; median ${rounds[3]!.toFixed(2)})`);
  void finished;
  await proxy.close();
  clusters.stop();
  enforcer.close();
}

function batchDest(): { write(s: string): void } {
  const fs = require_('node:fs') as typeof import('node:fs');
  let lines: string[] = [];
  let writing = false;
  const flush = () => {
    if (writing || lines.length === 0) return;
    const buf = Buffer.from(lines.join(''));
    lines = [];
    writing = true;
    fs.write(1, buf, () => {
      writing = false;
      flush();
    });
  };
  return {
    write(s: string) {
      lines.push(s);
      if (lines.length === 1) setImmediate(flush);
    },
  };
}

// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const [role, ...rest] = process.argv.slice(2);
  if (role === 'inproc') return inproc(Number(rest[0] ?? 200_000), Number(rest[1] ?? 50), rest[2] ?? 'agent');
  if (role === 'serve-raw') return serveRawBackend(Number(rest[0]));
  if (role === 'serve-sandbox') return serveSandboxBackend(Number(rest[0]));
  if (role === 'serve-node') return serveNodeProxy(Number(rest[0]), Number(rest[1]));
  if (role === 'serve-floor') return serveFloor(Number(rest[0]), Number(rest[1]));
  if (role === 'serve-weft') return serveWeft(Number(rest[0]), Number(rest[1]));

  const args = parseArgs(process.argv.slice(2));
  const dir = mkdtempSync(join(tmpdir(), 'weft-l7-micro-'));
  const children: ChildProcess[] = [];
  const results: Record<string, WrkResult[]> = {};
  try {
    const backendPort = await freePort(BACKEND_IP);
    let backend: ChildProcess;
    if (args.backend === 'nginx') {
      const conf = nginxConf(dir, 'backend', `server { listen ${BACKEND_IP}:${backendPort}; location / { add_header x-pod api-0; return 200 '${BODY.toString()}'; } }`);
      backend = await spawnPinned(args.loadCpu, 'nginx', ['-c', conf, '-p', dir], undefined);
    } else {
      backend = await spawnPinned(args.loadCpu, process.execPath, [SELF, args.backend === 'raw' ? 'serve-raw' : 'serve-sandbox', String(backendPort)], /ready/);
    }
    children.push(backend);

    for (const proxy of args.proxies) {
      const port = await freePort();
      let child: ChildProcess | undefined;
      let url = `http://127.0.0.1:${port}/`;
      if (proxy === 'direct') url = `http://${BACKEND_IP}:${backendPort}/`;
      else if (proxy === 'nginx') {
        const conf = nginxConf(
          dir,
          'proxy',
          `upstream be { server ${BACKEND_IP}:${backendPort}; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:${port}; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }`,
        );
        child = await spawnPinned(args.proxyCpu, 'nginx', ['-c', conf, '-p', dir], undefined);
      } else if (proxy === 'node' || proxy === 'floor') {
        // --cpu-prof profiles the Node proxies too: their profile is what the agent's is compared with.
        const nodeArgs = args.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${args.cpuProf}`, `--cpu-prof-name=${proxy}-${Date.now()}.cpuprofile`] : [];
        child = await spawnPinned(args.proxyCpu, process.execPath, [...nodeArgs, SELF, `serve-${proxy}`, String(port), String(backendPort)], /ready/);
      } else if (proxy === 'weft') {
        const out = args.log ? openSync(args.log, 'w') : openSync('/dev/null', 'w');
        const nodeArgs = args.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${args.cpuProf}`] : [];
        child = await new Promise<ChildProcess>((resolve, reject) => {
          const c = spawn('taskset', ['-c', args.proxyCpu, process.execPath, ...nodeArgs, SELF, 'serve-weft', String(port), String(backendPort)], { stdio: ['ignore', out, 'pipe'] });
          c.once('error', reject);
          c.once('exit', (code) => reject(new Error(`weft exited early (${code})`)));
          let buf = '';
          const onData = (d: Buffer) => {
            buf += d;
            if (buf.includes('ready\n')) {
              // From here on the agent's stderr is ours.
              c.stderr!.off('data', onData);
              c.stderr!.pipe(process.stderr);
              resolve(c);
            }
          };
          c.stderr!.on('data', onData);
        });
      } else throw new Error(`unknown proxy ${proxy}`);
      if (child) children.push(child);
      // Warm up (JIT, connection pools), then measure.
      runWrk(args.loadCpu, url, args.connections, 2);
      const rows: WrkResult[] = [];
      for (let i = 0; i < args.runs; i++) {
        const c0 = cpuUs(child?.pid);
        const r = runWrk(args.loadCpu, url, args.connections, args.duration);
        const c1 = cpuUs(child?.pid);
        if (c0 !== undefined && c1 !== undefined && r.requests > 0) r.cpuUsPerReq = (c1 - c0) / r.requests;
        rows.push(r);
        const cpu = r.cpuUsPerReq === undefined ? '' : `  cpu ${r.cpuUsPerReq.toFixed(1)}us/req (=${(1e6 / r.cpuUsPerReq).toFixed(0)} req/s per core)`;
        console.log(`${proxy.padEnd(7)} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.p50ms.toFixed(2)}ms  p99 ${r.p99ms.toFixed(2)}ms  errors ${r.errors}  non-2xx ${r.non2xx}${cpu}`);
      }
      results[proxy] = rows;
      await stop(child);
      if (child) children.splice(children.indexOf(child), 1);
    }
    console.log(JSON.stringify({ backend: args.backend, connections: args.connections, duration: args.duration, results }));
  } finally {
    await Promise.all(children.map((c) => stop(c)));
    rmSync(dir, { recursive: true, force: true });
  }
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
