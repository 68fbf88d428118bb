/**
 * The mTLS tunnel's cost, next to plain TCP, on loopback:
 *
 *   plain TCP   the client connects straight to the server (127.0.1.1)
 *   mTLS tunnel the client gets a CONNECT stream from node-a's agent (HboneTunnel, HTTP/2 over
 *               mutual TLS 1.3) to node-b's agent (TunnelServer), which authorizes it and
 *               pipes it to the same server: what a cross-node connection goes through,
 *               minus the eBPF redirect on the source side
 *
 * Both agents run in this process (node-a on 127.0.0.1, node-b on 127.0.0.2), with one
 * embedded CA in a shared state directory, so they trust the same root. Measured:
 *   - throughput: one connection sends `BULK_BYTES` in 64 KiB writes to a sink, which
 *     answers once it has them all (MB/s = 10^6 bytes per second);
 *   - round trips: `RTT_ROUNDS` sequential 64-byte request/response exchanges on one
 *     connection with an echo server (p50/p99 in µs), after a warm-up.
 *
 *   node dist/bench/tunnel.js        (after `npm run build`)
 */
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { Agent } from '../src/agent.js';
import { Endpoint } from '../src/cluster/endpoint.js';
import { parseConfig } from '../src/config/load.js';
import { StaticDiscovery } from '../src/discovery/static.js';
import { silentLogger } from '../src/telemetry/log.js';
import { freePort } from './lib/net.js';

export interface TunnelRow {
  path: 'plain TCP' | 'mTLS tunnel';
  /** Bulk transfer through one connection, 10^6 bytes per second. */
  throughputMBps: number;
  /** Round trip of a 64-byte request and its 64-byte answer, µs. */
  rttP50Us: number;
  rttP99Us: number;
  /** Connection set-up (connect, or CONNECT stream answered on a warm session), µs, median of a few. */
  connectUs: number;
}

export interface TunnelBench {
  rows: TunnelRow[];
  /** Tunnel minus plain TCP, at p50 and p99 (µs). */
  addedLatencyUs: { p50: number; p99: number };
  markdown: string;
}

const NODE_A = '127.0.0.1';
const NODE_B = '127.0.0.2';
const SERVER_IP = '127.0.1.1';
const BULK_BYTES = 512 * 1024 * 1024;
const CHUNK = 64 * 1024;
const RTT_ROUNDS = 5000;
const RTT_WARMUP = 500;
const MESSAGE = 64;
const CONNECTS = 50;

/** Sink: counts bytes, answers "done" once the client half-closes. Echo: answers every byte. */
async function startServers(): Promise<{ sinkPort: number; echoPort: number; close(): Promise<void> }> {
  const sink = net.createServer({ noDelay: true }, (s) => {
    let n = 0;
    s.on('data', (b: Buffer) => {
      n += b.length;
    });
    s.on('end', () => s.end(`done ${n}`));
    s.on('error', () => undefined);
  });
  const echo = net.createServer({ noDelay: true }, (s) => {
    s.on('data', (b: Buffer) => s.write(b));
    s.on('error', () => undefined);
  });
  const listen = (srv: net.Server) =>
    new Promise<number>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(0, SERVER_IP, () => resolve((srv.address() as net.AddressInfo).port));
    });
  const sinkPort = await listen(sink);
  const echoPort = await listen(echo);
  return {
    sinkPort,
    echoPort,
    close: () => Promise.all([sink, echo].map((s) => new Promise<void>((r) => s.close(() => r())))).then(() => undefined),
  };
}

function meshYaml(node: string, address: string, tunnelPort: number, stateDir: string, sinkPort: number, echoPort: number): string {
  return `
node: { name: ${node}, address: ${address} }
nodes: [ { name: node-a, address: ${NODE_A} }, { name: node-b, address: ${NODE_B} } ]
ports: { outbound: 0, inbound: 0, tunnel: ${tunnelPort}, admin: 0, metrics: 0 }
stateDir: ${stateDir}
agent: { logLevel: silent }
namespaces: [ { name: bench, labels: { weft.io/mesh: enabled } } ]
workloads:
  - { name: client-0, namespace: bench, node: node-a, ip: 127.0.2.1, serviceAccount: client, labels: { app: client } }
  - { name: server-0, namespace: bench, node: node-b, ip: ${SERVER_IP}, serviceAccount: server, labels: { app: server } }
services:
  - { name: sink, namespace: bench, vip: 10.96.9.1, ports: [ { port: 9001, targetPort: ${sinkPort}, protocol: tcp } ], selector: { app: server } }
  - { name: echo, namespace: bench, vip: 10.96.9.2, ports: [ { port: 9002, targetPort: ${echoPort}, protocol: tcp } ], selector: { app: server } }
`;
}

function connectPlain(port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: SERVER_IP, port, noDelay: true }, () => resolve(s));
    s.once('error', reject);
  });
}

async function bulk(open: () => Promise<Duplex>): Promise<number> {
  const conn = await open();
  const chunk = Buffer.alloc(CHUNK, 0x61);
  const started = process.hrtime.bigint();
  const answered = new Promise<string>((resolve, reject) => {
    let text = '';
    conn.on('data', (b: Buffer) => {
      text += b.toString();
    });
    conn.once('end', () => resolve(text));
    conn.once('error', reject);
  });
  let sent = 0;
  while (sent < BULK_BYTES) {
    sent += CHUNK;
    if (!conn.write(chunk)) await new Promise((r) => conn.once('drain', r));
  }
  conn.end();
  const text = await answered;
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  if (text !== `done ${BULK_BYTES}`) throw new Error(`the sink answered ${JSON.stringify(text)}, expected done ${BULK_BYTES}`);
  conn.destroy();
  return BULK_BYTES / secs / 1e6;
}

async function roundTrips(open: () => Promise<Duplex>): Promise<{ p50: number; p99: number }> {
  const conn = await open();
  const msg = Buffer.alloc(MESSAGE, 0x62);
  const samples: number[] = [];
  let pending: (() => void) | undefined;
  let got = 0;
  conn.on('data', (b: Buffer) => {
    got += b.length;
    if (got >= MESSAGE && pending) {
      got -= MESSAGE;
      const p = pending;
      pending = undefined;
      p();
    }
  });
  for (let i = 0; i < RTT_WARMUP + RTT_ROUNDS; i++) {
    const t0 = process.hrtime.bigint();
    await new Promise<void>((resolve) => {
      pending = resolve;
      conn.write(msg);
    });
    if (i >= RTT_WARMUP) samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  conn.destroy();
  samples.sort((a, b) => a - b);
  return { p50: samples[Math.floor(samples.length * 0.5)]!, p99: samples[Math.floor(samples.length * 0.99)]! };
}

async function connectTime(open: () => Promise<Duplex>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < CONNECTS; i++) {
    const t0 = process.hrtime.bigint();
    const c = await open();
    times.push(Number(process.hrtime.bigint() - t0) / 1000);
    c.destroy();
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

/** Runs the tunnel benchmark (about 10-30 s); the agents and servers it starts are stopped before it returns. */
export async function benchTunnel(): Promise<TunnelBench> {
  const servers = await startServers();
  const stateDir = mkdtempSync(join(tmpdir(), 'weft-bench-tunnel-'));
  const agents: Agent[] = [];
  try {
    const tunnelPort = await freePort(NODE_B);
    const start = async (node: string, address: string) => {
      const cfg = parseConfig(meshYaml(node, address, tunnelPort, stateDir, servers.sinkPort, servers.echoPort), `bench-${node}`);
      const agent = await Agent.start({ discovery: new StaticDiscovery(cfg), log: silentLogger, capture: false, origDst: () => undefined });
      agents.push(agent);
      return agent;
    };
    // node-b first: it creates the CA root that node-a then loads from the shared state dir.
    await start('node-b', NODE_B);
    const a = await start('node-a', NODE_A);
    const server = a.state.workload('bench', 'server-0')!;
    const client = a.state.workload('bench', 'client-0')!;
    const through = (port: number) => {
      const ep = new Endpoint(a.state.endpointInfo(server, port));
      return () => a.transport.connect(ep, { timeoutMs: 10_000, source: client });
    };
    if (a.transport.securityOf(new Endpoint(a.state.endpointInfo(server, servers.echoPort))) !== 'mutual_tls') {
      throw new Error('the endpoint on node-b is not reached through the tunnel');
    }

    const rows: TunnelRow[] = [];
    for (const [path, sinkOpen, echoOpen] of [
      ['plain TCP', () => connectPlain(servers.sinkPort), () => connectPlain(servers.echoPort)],
      ['mTLS tunnel', through(servers.sinkPort), through(servers.echoPort)],
    ] as const) {
      // The first tunnel connection waits for certificates and the TLS handshake: not measured.
      (await echoOpen()).destroy();
      const connectUs = await connectTime(echoOpen);
      const rtt = await roundTrips(echoOpen);
      const throughputMBps = await bulk(sinkOpen);
      rows.push({ path, throughputMBps, rttP50Us: rtt.p50, rttP99Us: rtt.p99, connectUs });
    }
    const [plain, tunnel] = rows as [TunnelRow, TunnelRow];
    const addedLatencyUs = { p50: tunnel.rttP50Us - plain.rttP50Us, p99: tunnel.rttP99Us - plain.rttP99Us };
    return { rows, addedLatencyUs, markdown: formatTunnelTable(rows, addedLatencyUs) };
  } finally {
    for (const agent of agents.reverse()) await agent.stop({ drainMs: 0 }).catch(() => undefined);
    await servers.close();
    rmSync(stateDir, { recursive: true, force: true });
  }
}

/** The rows as a markdown table, with the tunnel's added round-trip latency. */
export function formatTunnelTable(rows: readonly TunnelRow[], added: { p50: number; p99: number }): string {
  const lines = [
    `| path (loopback, one connection) | throughput (MB/s) | round trip p50 (µs) | p99 (µs) | connect (µs, median) |`,
    '|---|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.path} | ${r.throughputMBps.toFixed(0)} | ${r.rttP50Us.toFixed(0)} | ${r.rttP99Us.toFixed(0)} | ${r.connectUs.toFixed(0)} |`),
    '',
    `The tunnel adds ${added.p50.toFixed(0)} µs at p50 and ${added.p99.toFixed(0)} µs at p99 to a ${MESSAGE}-byte round trip ` +
      `(${BULK_BYTES / 2 ** 20} MiB bulk transfer; ${RTT_ROUNDS} round trips; the tunnel's connect is a CONNECT stream on a warm session).`,
  ];
  return lines.join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = await benchTunnel();
  console.log(result.markdown);
}
