/**
 * A minimal gRPC client for the sandbox's pods (node:http2, raw-byte messages, no protobuf):
 * several unary calls to the backend's `weft.demo.Echo` on ONE HTTP/2 connection (what a gRPC
 * channel is), printing one JSON line per call: `{code, pod, weftError, message}`.
 *
 *   node dist/src/sandbox/grpc-client.js --target 10.96.0.50:9090 --calls 30 [--method Get] [--timeout 200m] [--metadata k=v]
 */
import http2 from 'node:http2';
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { grpcFrame } from './backend.js';

export interface CallLine {
  code: number;
  pod?: string;
  weftError?: string;
  message?: string;
}

export async function grpcCalls(target: string, calls: number, method = 'Get', timeout?: string, metadata: Record<string, string> = {}): Promise<CallLine[]> {
  const session = http2.connect(`http://${target}`);
  session.on('error', () => {});
  const out: CallLine[] = [];
  try {
    for (let i = 0; i < calls; i++) {
      out.push(
        await new Promise<CallLine>((resolve) => {
          const headers: http2.OutgoingHttpHeaders = { ':method': 'POST', ':path': `/weft.demo.Echo/${method}`, 'content-type': 'application/grpc', te: 'trailers', ...metadata };
          if (timeout) headers['grpc-timeout'] = timeout;
          const req = session.request(headers);
          let head: http2.IncomingHttpHeaders = {};
          const body: Buffer[] = [];
          req.on('response', (h) => (head = h));
          req.on('data', (d: Buffer) => body.push(d));
          req.on('trailers', (tr) => (head = { ...head, ...tr }));
          req.on('error', (err) => resolve({ code: 14, message: err.message }));
          req.on('close', () => {
            const buf = Buffer.concat(body);
            let pod: string | undefined;
            if (buf.length > 5) pod = (JSON.parse(buf.subarray(5).toString()) as { pod?: string }).pod;
            const g = head['grpc-status'];
            resolve({
              code: g === undefined ? 2 : Number(g),
              pod: pod ?? (head['x-pod'] as string | undefined),
              weftError: head['x-weft-error'] as string | undefined,
              message: head['grpc-message'] ? decodeURIComponent(String(head['grpc-message'])) : undefined,
            });
          });
          req.end(grpcFrame(''));
        }),
      );
    }
  } finally {
    session.close();
  }
  return out;
}

async function main(): Promise<void> {
  const a = process.argv.slice(2);
  const get = (f: string) => {
    const i = a.indexOf(f);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const md: Record<string, string> = {};
  for (let i = 0; i < a.length; i++)
    if (a[i] === '--metadata') {
      const [k, v] = (a[i + 1] ?? '').split('=');
      if (k && v !== undefined) md[k] = v;
    }
  const target = get('--target');
  if (!target) {
    process.stderr.write('usage: grpc-client --target HOST:PORT [--calls N] [--method Get] [--timeout 200m] [--metadata k=v]\n');
    process.exit(2);
  }
  for (const line of await grpcCalls(target, Number(get('--calls') ?? 1), get('--method') ?? 'Get', get('--timeout'), md)) process.stdout.write(`${JSON.stringify(line)}\n`);
}

const entry = process.argv[1];
let isMain = false;
try {
  isMain = entry !== undefined && import.meta.url === pathToFileURL(realpathSync(entry)).href;
} catch {
  isMain = false;
}
if (isMain) {
  main().catch((err: unknown) => {
    process.stderr.write(`grpc-client: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
