/**
 * Hostile HTTP/2 clients against the agent's h2c listener, with raw frames: each attack costs
 * the attacker its own session (GOAWAY with the right code), never another client's, and the
 * agent's memory stays bounded.
 */
import t from 'tap';
import net from 'node:net';
import http2 from 'node:http2';
import { startBackend } from '../../src/sandbox/backend.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const { NGHTTP2_PROTOCOL_ERROR, NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_REFUSED_STREAM, NGHTTP2_CANCEL } = http2.constants;

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK literal without indexing, new name (RFC 7541 6.2.2); lengths < 127 only unless long. */
function hpackInt(value: number, prefixBits: number, first: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Buffer.from(out);
}
function literal(name: string, value: string, indexing = false): Buffer {
  return Buffer.concat([Buffer.from([indexing ? 0x40 : 0x00]), hpackInt(name.length, 7, 0), Buffer.from(name), hpackInt(value.length, 7, 0), Buffer.from(value)]);
}
/** A GET for `path`: :method GET (2), :scheme http (6), :path literal, :authority literal. */
function getBlock(path: string, extra: Buffer[] = []): Buffer {
  return Buffer.concat([
    Buffer.from([0x82, 0x86]),
    Buffer.concat([Buffer.from([0x04]), hpackInt(path.length, 7, 0), Buffer.from(path)]),
    Buffer.concat([Buffer.from([0x01]), hpackInt(3, 7, 0), Buffer.from('api')]),
    ...extra,
  ]);
}
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const HEADERS = 1;
const RST_STREAM = 3;
const SETTINGS = 4;
const GOAWAY = 7;
const CONTINUATION = 9;

interface RawSession {
  sock: net.Socket;
  /** Resolves with the GOAWAY error code, or -1 when the connection closed without one. */
  goaway: Promise<number>;
  rsts: Map<number, number>;
  /** Resolves with the first RST_STREAM's code or the GOAWAY's, whichever comes first. */
  refused: Promise<string>;
}

function raw(la: LoopbackAgent): Promise<RawSession> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port: la.outboundPort, localAddress: '127.0.0.1' });
    const rsts = new Map<number, number>();
    let buf = Buffer.alloc(0);
    let done: (code: number) => void;
    const goaway = new Promise<number>((r) => (done = r));
    let refusedDone: (what: string) => void;
    const refused = new Promise<string>((r) => (refusedDone = r));
    let ready: () => void;
    const settings = new Promise<void>((r) => (ready = r));
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        const type = buf[3]!;
        const stream = buf.readUInt32BE(5) & 0x7fffffff;
        const p = buf.subarray(9, 9 + len);
        if (type === SETTINGS) ready();
        if (type === GOAWAY) {
          done(p.readUInt32BE(4));
          refusedDone(`GOAWAY ${p.readUInt32BE(4)}`);
        }
        if (type === RST_STREAM) {
          rsts.set(stream, p.readUInt32BE(0));
          refusedDone(`RST_STREAM ${p.readUInt32BE(0)}`);
        }
        buf = buf.subarray(9 + len);
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      done(-1);
      refusedDone('closed');
    });
    sock.once('connect', () => {
      sock.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0)]));
      // Attack once the agent's SETTINGS arrived, as a client that reads them would.
      void settings.then(() => resolve({ sock, goaway, rsts, refused }));
    });
    sock.once('error', reject);
  });
}

/** A well-behaved client on its own session: one GET through the agent. */
async function wellBehaved(session: http2.ClientHttp2Session, path = '/ok'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': path });
    req.on('response', (h) => resolve(Number(h[':status'])));
    req.on('error', reject);
    req.resume();
    req.end();
  });
}

t.test('hostile HTTP/2 clients lose their own session only', async (t) => {
  const pods = [{ name: 'api-0', ip: '127.0.1.1', app: 'api' }];
  const backend = await startBackend({ name: 'api-0', port: 8080, host: '127.0.1.1', log: () => {} });
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh(pods, [{ name: 'api', vip: '10.96.0.20', app: 'api', protocol: 'http' }]));
  t.teardown(() => la.stop());
  la.route('127.0.0.1', '10.96.0.20:80', 'shop/client-0');
  // A bystander: its session is open through every attack and must keep working.
  const bystander = http2.connect(`http://127.0.0.1:${la.outboundPort}`, { localAddress: '127.0.0.1' } as never);
  t.teardown(() => bystander.close());
  t.equal(await wellBehaved(bystander), 200, 'the bystander is served');
  const rss0 = process.memoryUsage().rss;

  await t.test('a malformed frame sequence (DATA on stream 0): GOAWAY PROTOCOL_ERROR', async (t) => {
    const s = await raw(la);
    s.sock.write(frame(0, 0, 0, Buffer.from('nope')));
    t.equal(await s.goaway, NGHTTP2_PROTOCOL_ERROR, 'GOAWAY PROTOCOL_ERROR');
    s.sock.destroy();
    t.equal(await wellBehaved(bystander), 200, 'the bystander is still served');
  });

  await t.test('rapid reset (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM', async (t) => {
    const s = await raw(la);
    const out: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const id = 1 + 2 * i;
      out.push(frame(HEADERS, END_HEADERS | END_STREAM, id, getBlock('/?delay=200')), frame(RST_STREAM, 0, id, Buffer.from([0, 0, 0, NGHTTP2_CANCEL])));
    }
    s.sock.write(Buffer.concat(out));
    const code = await s.goaway;
    t.equal(code, NGHTTP2_ENHANCE_YOUR_CALM, `GOAWAY ENHANCE_YOUR_CALM (got ${code}, RST ${s.rsts.size})`);
    s.sock.destroy();
    t.equal(await wellBehaved(bystander), 200, 'the bystander is still served');
  });

  await t.test('too many concurrent streams: refused, then the session ends', async (t) => {
    const s = await raw(la);
    const out: Buffer[] = [];
    for (let i = 0; i < 600; i++) out.push(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, getBlock('/?delay=1000')));
    s.sock.write(Buffer.concat(out));
    const code = await s.goaway;
    t.ok(
      [...s.rsts.values()].some((c) => c === NGHTTP2_REFUSED_STREAM),
      'streams past the limit were refused (RST_STREAM REFUSED_STREAM)',
    );
    // node ends a session that keeps opening refused streams (maxSessionRejectedStreams) with GOAWAY INTERNAL_ERROR.
    t.ok(code > 0, `then GOAWAY (code ${code})`);
    s.sock.destroy();
    t.equal(await wellBehaved(bystander), 200, 'the bystander is still served');
  });

  await t.test('an oversized header list: refused before anything is forwarded', async (t) => {
    const s = await raw(la);
    const block = getBlock('/big', [literal('x-big', 'a'.repeat(100), false), ...Array.from({ length: 2000 }, (_, i) => literal(`x-h${i}`, 'v'.repeat(60)))]);
    // HEADERS then CONTINUATION frames of 16KB.
    const parts: Buffer[] = [];
    for (let off = 0; off < block.length; off += 16384) parts.push(block.subarray(off, off + 16384));
    const frames = parts.map((p, i) => frame(i === 0 ? HEADERS : CONTINUATION, (i === parts.length - 1 ? END_HEADERS : 0) | (i === 0 ? END_STREAM : 0), 1, p));
    const before = backend.state.requests;
    s.sock.write(Buffer.concat(frames));
    const what = await s.refused;
    t.match(what, /^(RST_STREAM|GOAWAY) [1-9]/, `refused with an error code: ${what}`);
    t.equal(backend.state.requests, before, 'nothing was forwarded for it');
    s.sock.destroy();
    t.equal(await wellBehaved(bystander), 200, 'the bystander is still served');
  });

  await t.test('an HPACK bomb (one table entry referenced thousands of times): refused before anything is forwarded', async (t) => {
    const s = await raw(la);
    const big = literal('x-bomb', 'b'.repeat(4000), true); // enters the dynamic table at index 62
    const refs = Buffer.alloc(20_000, 0x80 | 62); // indexed header field 62, 20000 times: ~80MB decoded
    const block = getBlock('/bomb', [big, refs]);
    const parts: Buffer[] = [];
    for (let off = 0; off < block.length; off += 16384) parts.push(block.subarray(off, off + 16384));
    const before = backend.state.requests;
    s.sock.write(Buffer.concat(parts.map((p, i) => frame(i === 0 ? HEADERS : CONTINUATION, (i === parts.length - 1 ? END_HEADERS : 0) | (i === 0 ? END_STREAM : 0), 1, p))));
    const what = await s.refused;
    t.match(what, /^(RST_STREAM|GOAWAY) [1-9]/, `refused with an error code: ${what}`);
    t.equal(backend.state.requests, before, 'nothing was forwarded for it');
    s.sock.destroy();
    t.equal(await wellBehaved(bystander), 200, 'the bystander is still served');
  });

  const grown = (process.memoryUsage().rss - rss0) / 1024 / 1024;
  t.ok(grown < 200, `the agent's process grew ${grown.toFixed(1)} MB over all the attacks (bounded)`);
});
