/**
 * A raw HTTP/1.1 client for forwarder tests: bytes out exactly as written, and a small
 * independent response reader (status line, headers, Content-Length / chunked / until-close
 * bodies, 1xx), so that framing mistakes of the proxy show up instead of being papered over
 * by a lenient client.
 */
import net from 'node:net';

export interface RawResponse {
  status: number;
  version: string;
  /** Lower-case names; repeated ones joined with ', '. */
  headers: Record<string, string>;
  body: Buffer;
  /** The head as received. */
  head: string;
  /** Chunk sizes as framed on the wire (chunked responses). */
  chunks?: number[];
  trailers?: Record<string, string>;
}

export class RawClient {
  readonly sock: net.Socket;
  /** Received bytes not consumed yet: `head` plus the chunks after it (concatenated lazily, so big bodies stay linear). */
  private head: Buffer = Buffer.alloc(0);
  private tail: Buffer[] = [];
  private tailLen = 0;
  private ended = false;
  private waiters: (() => void)[] = [];

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      this.tail.push(d);
      this.tailLen += d.length;
      this.wake();
    });
    sock.on('end', () => {
      this.ended = true;
      this.wake();
    });
    sock.on('close', () => {
      this.ended = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }

  static connect(port: number, localAddress: string, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port, localAddress });
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private get buf(): Buffer {
    if (this.tail.length > 0) {
      this.head = Buffer.concat([this.head, ...this.tail]);
      this.tail = [];
      this.tailLen = 0;
    }
    return this.head;
  }

  private set buf(b: Buffer) {
    this.head = b;
  }

  private get length(): number {
    return this.head.length + this.tailLen;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async more(timeoutMs: number): Promise<void> {
    if (this.ended) throw new Error(`connection closed; unread: ${JSON.stringify(this.buf.toString('latin1').slice(0, 200))}`);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no data within ${timeoutMs}ms; have ${JSON.stringify(this.buf.toString('latin1').slice(0, 200))}`)), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  write(data: string | Buffer): void {
    this.sock.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Bytes received and not consumed by a read yet. */
  get pending(): Buffer {
    return this.buf;
  }

  get closed(): boolean {
    return this.ended;
  }

  /** Resolves when the server closed the connection (or rejects after the timeout). */
  async waitClosed(timeoutMs = 3000): Promise<void> {
    const start = Date.now();
    while (!this.ended) {
      await this.more(Math.max(1, timeoutMs - (Date.now() - start))).catch((e: Error) => {
        if (!this.ended) throw e;
      });
    }
  }

  /** Read bytes until `n` are buffered. */
  async readBytes(n: number, timeoutMs = 3000): Promise<Buffer> {
    while (this.length < n) await this.more(timeoutMs);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /**
   * Read one response (a 1xx is returned as its own response). `head: true` for the answer
   * to a HEAD request (no body whatever the head says).
   */
  async readResponse(opts: { head?: boolean; timeoutMs?: number } = {}): Promise<RawResponse> {
    const timeoutMs = opts.timeoutMs ?? 3000;
    let end: number;
    while ((end = this.buf.indexOf('\r\n\r\n')) < 0) await this.more(timeoutMs);
    const head = this.buf.subarray(0, end).toString('latin1');
    this.buf = this.buf.subarray(end + 4);
    const [statusLine, ...lines] = head.split('\r\n');
    const m = /^(HTTP\/1\.[01]) (\d{3})(?: .*)?$/.exec(statusLine!);
    if (!m) throw new Error(`bad status line: ${JSON.stringify(statusLine)}`);
    const headers: Record<string, string> = {};
    for (const l of lines) {
      const i = l.indexOf(':');
      const k = l.slice(0, i).trim().toLowerCase();
      const v = l.slice(i + 1).trim();
      headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
    }
    const status = Number(m[2]);
    const res: RawResponse = { status, version: m[1]!, headers, body: Buffer.alloc(0), head };
    if (status < 200 || status === 204 || status === 304 || opts.head) return res;
    const te = headers['transfer-encoding'];
    if (te !== undefined && /chunked\s*$/i.test(te)) {
      const parts: Buffer[] = [];
      res.chunks = [];
      for (;;) {
        let nl: number;
        while ((nl = this.buf.indexOf('\r\n')) < 0) await this.more(timeoutMs);
        const size = parseInt(this.buf.subarray(0, nl).toString('latin1'), 16);
        if (!Number.isFinite(size)) throw new Error(`bad chunk size line ${JSON.stringify(this.buf.subarray(0, nl).toString('latin1'))}`);
        this.buf = this.buf.subarray(nl + 2);
        if (size === 0) {
          // Trailers, then an empty line.
          const trailers: Record<string, string> = {};
          for (;;) {
            while ((nl = this.buf.indexOf('\r\n')) < 0) await this.more(timeoutMs);
            const line = this.buf.subarray(0, nl).toString('latin1');
            this.buf = this.buf.subarray(nl + 2);
            if (line === '') break;
            const i = line.indexOf(':');
            trailers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
          }
          if (Object.keys(trailers).length) res.trailers = trailers;
          break;
        }
        res.chunks.push(size);
        while (this.buf.length < size + 2) await this.more(timeoutMs);
        parts.push(this.buf.subarray(0, size));
        if (this.buf[size] !== 13 || this.buf[size + 1] !== 10) throw new Error('chunk not followed by CRLF');
        this.buf = this.buf.subarray(size + 2);
      }
      res.body = Buffer.concat(parts);
      return res;
    }
    if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      res.body = Buffer.from(await this.readBytes(n, timeoutMs));
      return res;
    }
    // Until the connection closes.
    while (!this.ended) await this.more(timeoutMs).catch(() => undefined);
    res.body = this.buf;
    this.buf = Buffer.alloc(0);
    return res;
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A TCP server that records every byte and connection it gets, answering with `reply` per request head. */
export interface RecordingServer {
  port: number;
  connections: number;
  bytes: Buffer;
  close(): Promise<void>;
}

export function recordingServer(host: string, port: number, reply: (sock: net.Socket, data: Buffer) => void = () => undefined): Promise<RecordingServer> {
  return new Promise((resolve, reject) => {
    const socks = new Set<net.Socket>();
    const rec: RecordingServer = {
      port,
      connections: 0,
      bytes: Buffer.alloc(0),
      close: () =>
        new Promise<void>((r) => {
          for (const s of socks) s.destroy();
          server.close(() => r());
        }),
    };
    const server = net.createServer((s) => {
      rec.connections++;
      socks.add(s);
      s.on('close', () => socks.delete(s));
      s.on('error', () => undefined);
      s.on('data', (d: Buffer) => {
        rec.bytes = Buffer.concat([rec.bytes, d]);
        reply(s, d);
      });
    });
    server.once('error', reject);
    server.listen(port, host, () => resolve(rec));
  });
}
