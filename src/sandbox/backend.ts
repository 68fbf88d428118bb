/**
 * A sample workload for tests, benchmarks and the sandbox: an HTTP server that says which
 * pod answered and can be told to fail, slow down or turn unhealthy, plus an optional TCP
 * echo server.
 *
 * As a script (inside a pod, see `TopoPod.spawnBackend` in ./topology.ts):
 *
 *   node dist/src/sandbox/backend.js --name api-0 --port 8080 [--tcp-echo-port 9000] [--host 0.0.0.0]
 *
 *   ... [--grpc-port 9090]
 *
 * It prints `backend <name> listening on <host>:<port>` once its servers listen.
 *
 * HTTP behaviour (every answer carries `x-pod: <name>`):
 * - any path: 200, JSON `{pod, method, path, headers, remoteAddress}` (path includes the
 *   query string; remoteAddress is the peer IP as the backend sees it);
 * - `/healthz`: 200, or 503 while unhealthy;
 * - per request: `?status=N` answers with status N, `?delay=MS` waits before answering;
 * - `/_ctl/fail?status=503` answers every later request (except `/_ctl/*`) with that status,
 *   `/_ctl/ok` undoes it; `/_ctl/delay?ms=200` delays every later answer (`ms=0` undoes it);
 *   `/_ctl/unhealthy`, `/_ctl/healthy`; `/_ctl/size?bytes=1024` pads every JSON body to that
 *   many bytes (0 undoes it); `/_ctl/state` shows the state and the request count,
 *   `/_ctl/reset` restores the defaults and zeroes the count. `/_ctl/*` answers are never
 *   delayed nor failed.
 *
 * gRPC behaviour (`--grpc-port`: HTTP/2 cleartext; messages are raw bytes, no protobuf), the
 * service `weft.demo.Echo`:
 * - `Get` (unary): answers the JSON `{pod, method, metadata}`; request metadata `x-delay-ms`
 *   waits before answering, `x-grpc-status` fails the call with that status;
 * - `Stream` (server streaming): the request's text is a count N; N messages `{pod, i}`;
 * - `Collect` (client streaming): one answer `{pod, count, bytes}` after the client's last message;
 * - `Chat` (bidi): each message echoed back prefixed with `<pod>:`.
 * While `/_ctl/fail?status=N` (HTTP) or `/_ctl/grpc-fail?code=C` is in force, every call
 * fails: C, or UNAVAILABLE (14) for an HTTP failure; responses carry metadata `x-pod`.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createH2Server, type Http2Server, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execFile } from 'node:child_process';
import { repoRoot } from '../repo-root.js';
import { promisify } from 'node:util';

export interface BackendOptions {
  /** The pod name reported in bodies and in `x-pod`. */
  name: string;
  /** HTTP port; 0 picks a free one. */
  port: number;
  /** Default '0.0.0.0'. */
  host?: string;
  /** Start a TCP echo server on this port too (0 picks a free one). */
  tcpEchoPort?: number;
  /** Start the gRPC server (h2c) on this port too (0 picks a free one). */
  grpcPort?: number;
  /** Where the listen line and errors go. Default: stdout. */
  log?: (line: string) => void;
}

export interface BackendState {
  /** Status forced on every non-control request, or null. */
  failStatus: number | null;
  delayMs: number;
  healthy: boolean;
  /** Pad JSON bodies to this many bytes (0: no padding). */
  sizeBytes: number;
  /** Requests answered, control requests excluded. */
  requests: number;
  /** gRPC status forced on every call, or null. */
  grpcFail: number | null;
  /** gRPC calls answered. */
  calls: number;
}

export interface Backend {
  name: string;
  host: string;
  port: number;
  /** Set when a TCP echo server was asked for. */
  tcpEchoPort?: number;
  /** Set when the gRPC server was asked for. */
  grpcPort?: number;
  /** The live state; tests may read it or change it directly. */
  state: BackendState;
  close(): Promise<void>;
}

function initialState(): BackendState {
  return { failStatus: null, delayMs: 0, healthy: true, sizeBytes: 0, requests: 0, grpcFail: null, calls: 0 };
}

function intParam(value: string | null, min: number, max: number): number | undefined {
  if (value === null || !/^\d+$/.test(value)) return undefined;
  const n = Number(value);
  return n >= min && n <= max ? n : undefined;
}

function send(res: ServerResponse, name: string, status: number, body: object, sizeBytes = 0): void {
  let text = JSON.stringify(body);
  if (sizeBytes > Buffer.byteLength(text)) {
    const base = JSON.stringify({ ...body, pad: '' });
    const padLen = sizeBytes - Buffer.byteLength(base);
    if (padLen > 0) text = JSON.stringify({ ...body, pad: 'x'.repeat(padLen) });
  }
  const buf = Buffer.from(text);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': buf.length,
    'x-pod': name,
  });
  res.end(res.req.method === 'HEAD' ? undefined : buf);
}

function handleControl(url: URL, state: BackendState): object | undefined {
  const p = url.searchParams;
  switch (url.pathname) {
    case '/_ctl/fail': {
      const status = p.has('status') ? intParam(p.get('status'), 100, 599) : 503;
      if (status === undefined) return undefined;
      state.failStatus = status;
      break;
    }
    case '/_ctl/ok':
      state.failStatus = null;
      state.grpcFail = null;
      break;
    case '/_ctl/grpc-fail': {
      const code = p.has('code') ? intParam(p.get('code'), 1, 16) : 14;
      if (code === undefined) return undefined;
      state.grpcFail = code;
      break;
    }
    case '/_ctl/delay': {
      const ms = intParam(p.get('ms'), 0, 600_000);
      if (ms === undefined) return undefined;
      state.delayMs = ms;
      break;
    }
    case '/_ctl/unhealthy':
      state.healthy = false;
      break;
    case '/_ctl/healthy':
      state.healthy = true;
      break;
    case '/_ctl/size': {
      const bytes = intParam(p.get('bytes'), 0, 64 * 1024 * 1024);
      if (bytes === undefined) return undefined;
      state.sizeBytes = bytes;
      break;
    }
    case '/_ctl/reset':
      Object.assign(state, initialState());
      break;
    case '/_ctl/state':
      break;
    default:
      return undefined;
  }
  return { ok: true, state: { ...state } };
}

/** Start the backend in this process (integration tests use it on loopback). */
export async function startBackend(opts: BackendOptions): Promise<Backend> {
  const { name } = opts;
  const host = opts.host ?? '0.0.0.0';
  const log = opts.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const state = initialState();
  const timers = new Set<NodeJS.Timeout>();

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://backend');
    const answer = (): void => {
      if (url.pathname.startsWith('/_ctl/')) {
        const result = handleControl(url, state);
        if (result) send(res, name, 200, { pod: name, ...result });
        else send(res, name, 400, { pod: name, error: `bad control request ${url.pathname}${url.search}` });
        return;
      }
      state.requests++;
      const echo = {
        pod: name,
        method: req.method,
        path: req.url,
        headers: req.headers,
        remoteAddress: req.socket.remoteAddress,
      };
      const perRequest = intParam(url.searchParams.get('status'), 100, 599);
      let status = 200;
      if (url.pathname === '/healthz' && !state.healthy) status = 503;
      if (state.failStatus !== null) status = state.failStatus;
      if (perRequest !== undefined) status = perRequest;
      const delay = intParam(url.searchParams.get('delay'), 0, 600_000) ?? state.delayMs;
      if (delay > 0) {
        const t = setTimeout(() => {
          timers.delete(t);
          if (!res.destroyed) send(res, name, status, echo, state.sizeBytes);
        }, delay);
        timers.add(t);
      } else {
        send(res, name, status, echo, state.sizeBytes);
      }
    };
    // Answer once the request body is read, so keep-alive connections stay in sync.
    req.on('error', () => {});
    req.on('end', answer);
    req.resume();
  };

  const http = createHttpServer({ keepAlive: true }, onRequest);
  // Proxies pool upstream connections; a short idle timeout here would race their reuse
  // and show up as resets in tests.
  http.keepAliveTimeout = 60_000;
  http.headersTimeout = 65_000;
  http.requestTimeout = 0;

  let tcp: TcpServer | undefined;
  const sockets = new Set<Socket>();
  const listen = (server: TcpServer | typeof http, port: number): Promise<number> =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        const addr = server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });

  let tcpEchoPort: number | undefined;
  let grpcPort: number | undefined;
  let grpc: Http2Server | undefined;
  try {
    if (opts.grpcPort !== undefined) {
      grpc = createH2Server({ settings: { maxConcurrentStreams: 1000 } }, undefined);
      grpc.on('stream', (stream, headers) => grpcCall(stream as ServerHttp2Stream, headers, name, state, timers));
      const sessions = new Set<import('node:http2').ServerHttp2Session>();
      sessionsOf.set(grpc, sessions);
      grpc.on('session', (s) => {
        sessions.add(s);
        s.on('close', () => sessions.delete(s));
      });
      grpc.on('sessionError', () => {});
      grpcPort = await listen(grpc as unknown as TcpServer, opts.grpcPort);
      log(`backend ${name} grpc listening on ${host}:${grpcPort}`);
    }
    if (opts.tcpEchoPort !== undefined) {
      tcp = createTcpServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => {});
        socket.write(`${name}\n`);
        socket.pipe(socket);
      });
      tcpEchoPort = await listen(tcp, opts.tcpEchoPort);
      log(`backend ${name} tcp-echo listening on ${host}:${tcpEchoPort}`);
    }
    const port = await listen(http, opts.port);
    log(`backend ${name} listening on ${host}:${port}`);

    let closing: Promise<void> | undefined;
    const close = (): Promise<void> =>
      (closing ??= (async () => {
        for (const t of timers) clearTimeout(t);
        timers.clear();
        const done = [new Promise<void>((r) => http.close(() => r()))];
        http.closeAllConnections();
        if (grpc) {
          const server = grpc;
          done.push(new Promise<void>((r) => server.close(() => r())));
          for (const s of grpcSessions(server)) s.destroy();
        }
        if (tcp) {
          const server = tcp;
          done.push(new Promise<void>((r) => server.close(() => r())));
          for (const s of sockets) s.destroy();
        }
        await Promise.all(done);
      })());

    return { name, host, port, tcpEchoPort, grpcPort, state, close };
  } catch (err) {
    tcp?.close();
    grpc?.close();
    http.close();
    throw err;
  }
}

/** Sessions of the gRPC server, tracked for close(). */
const sessionsOf = new WeakMap<Http2Server, Set<import('node:http2').ServerHttp2Session>>();
function grpcSessions(server: Http2Server): Set<import('node:http2').ServerHttp2Session> {
  return sessionsOf.get(server) ?? new Set();
}

/** gRPC length-prefixed message framing (uncompressed). */
export function grpcFrame(msg: Buffer | string): Buffer {
  const b = typeof msg === 'string' ? Buffer.from(msg) : msg;
  const out = Buffer.alloc(5 + b.length);
  out.writeUInt32BE(b.length, 1);
  b.copy(out, 5);
  return out;
}

/** Splits gRPC messages out of a byte stream; returns the messages and the unconsumed rest. */
function grpcUnframe(buf: Buffer): { msgs: Buffer[]; rest: Buffer } {
  const msgs: Buffer[] = [];
  let off = 0;
  while (buf.length - off >= 5) {
    const len = buf.readUInt32BE(off + 1);
    if (buf.length - off - 5 < len) break;
    msgs.push(buf.subarray(off + 5, off + 5 + len));
    off += 5 + len;
  }
  return { msgs, rest: buf.subarray(off) };
}

function grpcCall(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, name: string, state: BackendState, timers: Set<NodeJS.Timeout>): void {
  stream.on('error', () => {});
  const path = String(headers[':path'] ?? '');
  const method = path.slice(path.lastIndexOf('/') + 1);
  const fail = (code: number, message: string): void => {
    if (!stream.destroyed && !stream.headersSent)
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': code, 'grpc-message': encodeURIComponent(message), 'x-pod': name }, { endStream: true });
  };
  if (!path.startsWith('/weft.demo.Echo/')) {
    fail(12, `unknown service method ${path}`);
    return;
  }
  state.calls++;
  const forced = headers['x-grpc-status'] !== undefined ? Number(headers['x-grpc-status']) : (state.grpcFail ?? (state.failStatus !== null ? 14 : null));
  let rest: Buffer = Buffer.alloc(0);
  const received: Buffer[] = [];
  let started = false;
  const start = (): void => {
    if (started || stream.destroyed) return;
    started = true;
    stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'x-pod': name }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': 0 }));
  };
  const answer = (): void => {
    if (forced !== null && forced !== 0) {
      fail(forced, `${name} fails with ${forced}`);
      return;
    }
    if (stream.destroyed) return;
    start();
    switch (method) {
      case 'Get':
        stream.end(grpcFrame(JSON.stringify({ pod: name, method: path, metadata: { authority: headers[':authority'], 'x-user': headers['x-user'] } })));
        break;
      case 'Stream': {
        const n = Math.min(10_000, Number(received[0]?.toString() ?? '0') || 0);
        for (let i = 0; i < n; i++) stream.write(grpcFrame(JSON.stringify({ pod: name, i })));
        stream.end();
        break;
      }
      case 'Collect':
        stream.end(grpcFrame(JSON.stringify({ pod: name, count: received.length, bytes: received.reduce((a, b) => a + b.length, 0) })));
        break;
      default:
        stream.end();
    }
  };
  stream.on('data', (chunk: Buffer) => {
    const { msgs, rest: r } = grpcUnframe(rest.length ? Buffer.concat([rest, chunk]) : chunk);
    rest = Buffer.from(r);
    if (method === 'Chat') {
      if (forced !== null && forced !== 0) return;
      start();
      for (const m of msgs) stream.write(grpcFrame(Buffer.concat([Buffer.from(`${name}:`), m])));
      return;
    }
    received.push(...msgs);
  });
  stream.on('end', () => {
    if (method === 'Chat') {
      if (forced !== null && forced !== 0) fail(forced, `${name} fails with ${forced}`);
      else {
        start();
        stream.end();
      }
      return;
    }
    const delay = Number(headers['x-delay-ms'] ?? state.delayMs) || 0;
    if (delay > 0) {
      const t = setTimeout(() => {
        timers.delete(t);
        answer();
      }, delay);
      timers.add(t);
    } else answer();
  });
}

const execFileAsync = promisify(execFile);

/**
 * Path of the compiled backend script, for `node <path> --name ...` inside a pod.
 *
 * Pods run the compiled file (`dist/src/sandbox/backend.js`) with plain `node`: no loader,
 * no transpile at start-up, the same file the lead's build produces. When it is missing or
 * older than `src/sandbox/backend.ts` (tests run from TS sources), this builds it once with
 * `tsc -p tsconfig.json`; tsc still emits when other files have type errors, so only a
 * missing output is an error.
 */
export async function backendScriptPath(): Promise<string> {
  const root = repoRoot();
  const script = join(root, 'dist', 'src', 'sandbox', 'backend.js');
  const source = join(root, 'src', 'sandbox', 'backend.ts');
  const fresh = (): boolean => existsSync(script) && (!existsSync(source) || statSync(script).mtimeMs >= statSync(source).mtimeMs);
  if (fresh()) return script;
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  let buildError = '';
  try {
    await execFileAsync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')], {
      cwd: root,
      maxBuffer: 16 * 1024 * 1024,
      timeout: 300_000,
    });
  } catch (err) {
    const e = err as { stdout?: string; message: string };
    buildError = e.stdout?.trim() || e.message;
  }
  if (!fresh()) throw new Error(`could not build ${script} with tsc: ${buildError.slice(0, 4000)}`);
  return script;
}

function parseArgs(argv: string[]): BackendOptions {
  const opts: Partial<BackendOptions> = {};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const port = (): number => {
      const n = intParam(value, 0, 65535);
      if (n === undefined) throw new Error(`${flag}: not a port: ${value}`);
      return n;
    };
    switch (flag) {
      case '--name':
        opts.name = value;
        break;
      case '--port':
        opts.port = port();
        break;
      case '--tcp-echo-port':
        opts.tcpEchoPort = port();
        break;
      case '--grpc-port':
        opts.grpcPort = port();
        break;
      case '--host':
        opts.host = value;
        break;
      default:
        throw new Error(`unknown flag ${flag}`);
    }
    i++;
  }
  if (!opts.name) throw new Error('--name is required');
  if (opts.port === undefined) throw new Error('--port is required');
  return opts as BackendOptions;
}

async function main(): Promise<void> {
  let opts: BackendOptions;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\nusage: backend --name NAME --port PORT [--tcp-echo-port PORT] [--grpc-port PORT] [--host ADDR]\n`);
    process.exit(2);
  }
  const backend = await startBackend(opts);
  const stop = (): void => {
    void backend.close().then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2_000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isMain()) {
  main().catch((err: unknown) => {
    process.stderr.write(`backend: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
