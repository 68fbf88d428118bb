/**
 * An agent in this process on loopback, without eBPF: the original destination of each
 * connection comes from its source address (each simulated pod dials from its own
 * 127.0.0.x), which is how the tests stand in for connect4 here. The e2e tests use the
 * real kernel path.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent as UndiciAgent, request } from 'undici';
import { Agent } from '../../src/agent.js';
import { StaticDiscovery } from '../../src/discovery/static.js';
import { parseConfig } from '../../src/config/load.js';
import type { MeshConfig } from '../../src/config/types.js';
import { silentLogger, createLogger, type Logger } from '../../src/telemetry/log.js';

export interface LoopbackPod {
  /** The 127.0.0.x address this pod dials from. */
  ip: string;
  /** Which workload (namespace/name) it is, for source identity. */
  workload?: string;
}

export interface LoopbackAgent {
  agent: Agent;
  discovery: StaticDiscovery;
  config: MeshConfig;
  outboundPort: number;
  adminPort: number;
  metricsPort: number;
  /** Route connections from `srcIp` as if they had dialed `dest` (ip:port). */
  route(srcIp: string, dest: string, workload?: string): void;
  /** An undici dispatcher that dials the agent from `srcIp`. */
  client(srcIp: string): UndiciAgent;
  /** GET through the agent from `srcIp` to the original destination `dest`. */
  get(srcIp: string, dest: string, path?: string, headers?: Record<string, string>): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>;
  update(yaml: string): void;
  metrics(): Promise<string>;
  configDump(): Promise<any>;
  stop(): Promise<void>;
}

export async function startLoopbackAgent(yaml: string, opts: { workers?: number; log?: Logger } = {}): Promise<LoopbackAgent> {
  const config = parseConfig(yaml, 'test');
  // The embedded CA keeps its key in stateDir: a test without one must not use /var/lib/weft.
  let tmpState: string | undefined;
  if (!/^stateDir:/m.test(yaml)) config.stateDir = tmpState = mkdtempSync(join(tmpdir(), 'weft-loopback-'));
  const discovery = new StaticDiscovery(config);
  const routes = new Map<string, { ip: string; port: number; workload?: string }>();
  const log = opts.log ?? (process.env.WEFT_TEST_LOG ? createLogger('debug') : silentLogger);
  const agent = await Agent.start({
    discovery,
    log,
    capture: false,
    workers: opts.workers,
    origDst: (s: Socket) => {
      const r = routes.get(s.remoteAddress ?? '');
      return r ? { ip: r.ip, port: r.port } : undefined;
    },
    sourceLookup: (_od, srcIp) => {
      const w = routes.get(srcIp)?.workload;
      if (!w) return undefined;
      const [ns, name] = w.split('/');
      return agent.state.workload(ns!, name!);
    },
  });
  const addrs = agent.addresses;
  const clients = new Map<string, UndiciAgent>();
  const client = (srcIp: string) => {
    let c = clients.get(srcIp);
    if (!c) {
      // undici's own connector ignores localAddress: dial ourselves.
      const connect = (opts: { hostname: string; port: string }, cb: (err: Error | null, socket: Socket | null) => void) => {
        const s = netConnect({ host: opts.hostname, port: Number(opts.port), localAddress: srcIp });
        s.once('connect', () => cb(null, s));
        s.once('error', (e) => cb(e, null));
      };
      c = new UndiciAgent({ connect: connect as never, keepAliveTimeout: 1000 });
      clients.set(srcIp, c);
    }
    return c;
  };
  const la: LoopbackAgent = {
    agent,
    discovery,
    config,
    outboundPort: addrs.outbound,
    adminPort: addrs.admin,
    metricsPort: addrs.metrics,
    route(srcIp, dest, workload) {
      const i = dest.lastIndexOf(':');
      routes.set(srcIp, { ip: dest.slice(0, i), port: Number(dest.slice(i + 1)), workload });
      // Worker threads cannot call this thread's origDst: they get the table.
      agent.setWorkerRoutes([...routes]);
    },
    client,
    async get(srcIp, dest, path = '/', headers = {}) {
      la.route(srcIp, dest, routes.get(srcIp)?.workload);
      const res = await request(`http://127.0.0.1:${addrs.outbound}${path}`, { dispatcher: client(srcIp), headers: { host: dest, ...headers } });
      const body = await res.body.text();
      return { status: res.statusCode, headers: res.headers, body };
    },
    update(text) {
      const next = parseConfig(text, 'test');
      if (tmpState && !/^stateDir:/m.test(text)) next.stateDir = tmpState;
      discovery.set(next);
    },
    async metrics() {
      const res = await request(`http://127.0.0.1:${addrs.metrics}/metrics`);
      return res.body.text();
    },
    async configDump() {
      const res = await request(`http://127.0.0.1:${addrs.admin}/config_dump`);
      return res.body.json();
    },
    async stop() {
      await Promise.all([...clients.values()].map((c) => c.close()));
      await agent.stop({ drainMs: 0 });
      if (tmpState) rmSync(tmpState, { recursive: true, force: true });
    },
  };
  return la;
}

/**
 * One TCP exchange through the agent's outbound port, as the pod at `from.ip` (named
 * `from.workload`) connecting to `dest` (a VIP:port, routed as connect4 would): send
 * `payload`, read until it is echoed back, and resolve with what came back.
 */
export function echoThrough(a: LoopbackAgent, from: { ip: string; workload: string }, dest: string, payload: string): Promise<string> {
  a.route(from.ip, dest, from.workload);
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port: a.outboundPort, localAddress: from.ip });
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`echo timed out, got ${JSON.stringify(got)}`));
    }, 5000);
    s.on('connect', () => s.write(payload));
    s.on('data', (d) => {
      got += d.toString();
      if (got.includes(payload)) s.end();
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
