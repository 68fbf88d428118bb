/**
 * The L7 forwarder through the agent on loopback: strict parsing (smuggling attempts never
 * reach a backend), framing both ways (Content-Length, chunked, until-close, HEAD, 1xx,
 * 100-continue), pipelining, keep-alive reuse, HTTP/1.0, half-close, upgrades.
 */
import t, { type Test } from 'tap';
import http from 'node:http';
import type net from 'node:net';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';
import { RawClient, recordingServer } from '../lib/raw-http.js';

// Addresses of their own, so that other loopback tests running at the same time do not collide.
const POD = { name: 'api-0', ip: '127.0.41.1', app: 'api' };
const VIP = '10.96.0.20:80';
let clientN = 0;

/** A fresh client address routed to the service (each test dials from its own 127.0.2.x). */
function clientIp(la: LoopbackAgent): string {
  const ip = `127.0.42.${10 + (clientN++ % 200)}`;
  la.route(ip, VIP, 'shop/client-0');
  return ip;
}

async function agentFor(t: Test, policy?: string): Promise<LoopbackAgent> {
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api', policy }]));
  t.teardown(() => la.stop());
  return la;
}

/** A node:http backend on the pod address that counts connections and requests. */
async function httpBackend(t: Test, handler: http.RequestListener): Promise<{ server: http.Server; connections: () => number; requests: () => number }> {
  let connections = 0;
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    handler(req, res);
  });
  server.on('connection', () => connections++);
  server.listen(8080, POD.ip);
  await once(server, 'listening');
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  t.teardown(
    () =>
      new Promise<void>((r) => {
        // Upgraded sockets too, which closeAllConnections() no longer knows.
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { server, connections: () => connections, requests: () => requests };
}

const echo: http.RequestListener = (req, res) => {
  const parts: Buffer[] = [];
  req.on('data', (d: Buffer) => parts.push(d));
  req.on('end', () => {
    const body = Buffer.concat(parts);
    res.writeHead(200, {
      'content-type': 'text/plain',
      'x-method': req.method!,
      'x-path': req.url!,
      'x-te': req.headers['transfer-encoding'] ?? '',
      'x-cl': req.headers['content-length'] ?? '',
      'content-length': body.length,
    });
    res.end(body);
  });
};

t.test('smuggling attempts and malformed heads: 400 bad_request, connection closed, nothing upstream', async (t) => {
  const okResponse = 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok';
  const backend = await recordingServer(POD.ip, 8080, (s, d) => {
    // One answer per request head received (the good requests here have no body).
    const heads = d.toString('latin1').split('\r\n\r\n').length - 1;
    for (let i = 0; i < heads; i++) s.write(okResponse);
  });
  t.teardown(() => backend.close());
  const la = await agentFor(t);
  const attempts: Record<string, string> = {
    'CL + TE': 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
    'TE + CL': 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n',
    'duplicate differing CL': 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
    'CL list': 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello',
    'negative CL': 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
    'bad chunk size': 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n',
    'chunk size overflow': 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n0\r\n\r\n',
    'TE not chunked': 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc',
    'TE chunked, gzip': 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n',
    'obs-fold': 'GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n',
    'space before colon': 'GET / HTTP/1.1\r\nHost : x\r\n\r\n',
    'control char in value': 'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n',
    'bare LF line ends': 'GET / HTTP/1.1\nHost: x\n\n',
    'bare CR in value': 'GET / HTTP/1.1\r\nHost: x\rX-Injected: 1\r\n\r\n',
    'NUL in path': 'GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n',
    'HTTP/2 version': 'GET / HTTP/2.0\r\nHost: x\r\n\r\n',
  };
  for (const [name, bytes] of Object.entries(attempts)) {
    const c = await RawClient.connect(la.outboundPort, clientIp(la));
    c.write(bytes);
    const r = await c.readResponse();
    t.equal(r.status, 400, `${name}: 400`);
    t.equal(r.headers['x-weft-error'], 'bad_request', `${name}: x-weft-error`);
    await c.waitClosed();
    t.ok(c.closed, `${name}: connection closed`);
  }
  t.equal(backend.connections, 0, 'no malformed request opened an upstream connection');
  t.equal(backend.bytes.length, 0, 'no byte reached the backend');

  // With a pooled upstream connection in place, a good request followed by a malformed one
  // in the same read: the first is answered, the second never goes upstream.
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await c.readResponse()).status, 200);
  const before = backend.bytes.length;
  c.write('GET /second HTTP/1.1\r\nHost: x\r\n\r\nPOST /evil HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n');
  t.equal((await c.readResponse()).status, 200, 'the good pipelined request is answered');
  const bad = await c.readResponse();
  t.equal(bad.status, 400);
  await c.waitClosed();
  const seen = backend.bytes.subarray(before).toString('latin1');
  t.match(seen, /^GET \/second HTTP\/1\.1\r\n/);
  t.notMatch(seen, /evil/, 'the request with the bad chunk never reached the backend');

  // Oversized head: 431.
  const big = await RawClient.connect(la.outboundPort, clientIp(la));
  big.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(70 * 1024)}\r\n\r\n`);
  const r431 = await big.readResponse();
  t.equal(r431.status, 431);
  t.equal(r431.headers['x-weft-error'], 'bad_request');
});

t.test('a malformed chunk after the head went upstream: 400 and the upstream request is cut', async (t) => {
  let aborted = 0;
  let completed = 0;
  // Events, not a clock: the first chunk reached the backend; the backend's request ended.
  let gotFirstChunk!: () => void;
  const firstChunk = new Promise<void>((r) => (gotFirstChunk = r));
  let ended!: () => void;
  const backendDone = new Promise<void>((r) => (ended = r));
  await httpBackend(t, (req, res) => {
    req.once('data', () => gotFirstChunk());
    req.on('data', () => undefined);
    req.on('aborted', () => aborted++);
    req.on('error', () => undefined);
    req.on('end', () => {
      completed++;
      res.end('done');
    });
    req.on('close', () => ended());
  });
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
  await firstChunk;
  c.write('xyz\r\n');
  const r = await c.readResponse();
  t.equal(r.status, 400);
  t.equal(r.headers['x-weft-error'], 'bad_request');
  await c.waitClosed();
  await backendDone;
  t.equal(aborted, 1, 'the backend saw its request aborted, not completed');
  t.equal(completed, 0);
});

t.test('chunked bodies both ways, with trailers', async (t) => {
  await httpBackend(t, (req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', async () => {
      const body = Buffer.concat(parts).toString();
      res.writeHead(200, { 'content-type': 'text/plain', 'x-req-te': String(req.headers['transfer-encoding']), 'x-req-trailer': String(req.trailers['x-sum']), trailer: 'x-done' });
      for (const word of body.split(' ')) {
        res.write(word);
        await sleep(5);
      }
      res.addTrailers({ 'x-done': 'yes' });
      res.end();
    });
  });
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nalpha \r\n');
  await sleep(30);
  c.write('5\r\nbeta \r\n');
  await sleep(30);
  c.write('5;ext=1\r\ngamma\r\n0\r\nX-Sum: 16\r\n\r\n');
  const r = await c.readResponse();
  t.equal(r.status, 200);
  t.equal(r.body.toString(), 'alphabetagamma');
  t.equal(r.headers['transfer-encoding'], 'chunked');
  t.equal(r.headers['x-req-te'], 'chunked', 'the request went upstream chunked');
  t.equal(r.headers['x-req-trailer'], '16', 'request trailers are forwarded');
  t.ok((r.chunks ?? []).length >= 3, `streamed as chunks (${r.chunks})`);
  t.same(r.trailers, { 'x-done': 'yes' }, 'response trailers are forwarded');
  // The connection is still usable.
  c.write('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\none two 3');
  const r2 = await c.readResponse();
  t.equal(r2.body.toString(), 'onetwo3');
  c.close();
});

t.test('large bodies stream through with bounded buffering, both ways', async (t) => {
  const SIZE = 96 * 1024 * 1024;
  let backendPaused: (() => void) | undefined;
  let backendWrote = 0;
  let uploadReceived = 0;
  await httpBackend(t, (req, res) => {
    if (req.url === '/upload') {
      // Read nothing for a while, then everything.
      req.pause();
      backendPaused = () => {
        req.on('data', (d: Buffer) => (uploadReceived += d.length));
        req.resume();
      };
      req.on('end', () => res.end(String(uploadReceived)));
      return;
    }
    // Download: write as fast as the socket takes it.
    res.writeHead(200, { 'content-length': SIZE });
    const chunk = Buffer.alloc(64 * 1024, 7);
    const pump = () => {
      while (backendWrote < SIZE) {
        backendWrote += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  });
  const la = await agentFor(t);

  // Upload: while the backend reads nothing, the client can only fill the socket buffers.
  const up = await RawClient.connect(la.outboundPort, clientIp(la));
  up.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${SIZE}\r\n\r\n`);
  let sent = 0;
  const chunk = Buffer.alloc(256 * 1024, 1);
  const writer = (async () => {
    while (sent < SIZE) {
      sent += chunk.length;
      if (!up.sock.write(chunk)) await once(up.sock, 'drain');
    }
  })();
  await sleep(800);
  const sentWhilePaused = sent;
  t.ok(sentWhilePaused < SIZE / 4, `the client could send ${(sentWhilePaused / 2 ** 20).toFixed(1)} MiB of ${SIZE / 2 ** 20} while the backend read nothing`);
  while (!backendPaused) await sleep(10);
  backendPaused();
  await writer;
  const r = await up.readResponse({ timeoutMs: 30_000 });
  t.equal(r.body.toString(), String(SIZE), 'every byte arrived');
  up.close();

  // Download: while the client reads nothing, the backend can only fill the socket buffers.
  const down = await RawClient.connect(la.outboundPort, clientIp(la));
  down.sock.pause();
  down.write('GET /download HTTP/1.1\r\nHost: x\r\n\r\n');
  await sleep(800);
  t.ok(backendWrote < SIZE / 4, `the backend could write ${(backendWrote / 2 ** 20).toFixed(1)} MiB of ${SIZE / 2 ** 20} while the client read nothing`);
  down.sock.resume();
  const d = await down.readResponse({ timeoutMs: 30_000 });
  t.equal(d.body.length, SIZE, 'the whole body arrived');
  t.ok(d.body.every((b) => b === 7));
  down.close();
});

t.test('pipelined requests are answered in order', async (t) => {
  await httpBackend(t, (req, res) => {
    const delay = req.url === '/slow' ? 60 : 0;
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => setTimeout(() => res.end(`${req.method} ${req.url} ${Buffer.concat(parts).toString()}`), delay));
  });
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write(
    'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n' +
      'POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody' +
      // Trailers, then a head in the same read: the binding delivers that head through kOnHeaders.
      'POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n' +
      'GET /last HTTP/1.1\r\nHost: x\r\n\r\n',
  );
  const bodies = [];
  for (let i = 0; i < 4; i++) bodies.push((await c.readResponse()).body.toString());
  t.same(bodies, ['GET /slow ', 'POST /post body', 'POST /chunked abc', 'GET /last ']);
  c.close();
});

t.test('HEAD, 204 and 304 answers have no body; the connection stays in step', async (t) => {
  await httpBackend(t, (req, res) => {
    if (req.url === '/204') return void res.writeHead(204).end();
    if (req.url === '/304') return void res.writeHead(304, { etag: '"x"' }).end();
    if (req.url === '/chunked') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('abc');
      return void res.end('def');
    }
    res.writeHead(200, { 'content-length': 1024, 'content-type': 'text/plain' });
    res.end(req.method === 'HEAD' ? undefined : 'x'.repeat(1024));
  });
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('HEAD /doc HTTP/1.1\r\nHost: x\r\n\r\n');
  const h = await c.readResponse({ head: true });
  t.equal(h.status, 200);
  t.equal(h.headers['content-length'], '1024', 'HEAD keeps the length of the entity');
  c.write('HEAD /chunked HTTP/1.1\r\nHost: x\r\n\r\n');
  const hc = await c.readResponse({ head: true });
  t.equal(hc.status, 200);
  c.write('GET /204 HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await c.readResponse()).status, 204);
  c.write('GET /304 HTTP/1.1\r\nHost: x\r\n\r\n');
  const n = await c.readResponse();
  t.equal(n.status, 304);
  t.equal(n.headers.etag, '"x"');
  c.write('GET /doc HTTP/1.1\r\nHost: x\r\n\r\n');
  const g = await c.readResponse();
  t.equal(g.body.length, 1024);
  await sleep(50);
  t.equal(c.pending.length, 0, 'no stray bytes after the answers');
  c.close();
});

t.test('Expect: 100-continue, and other 1xx answers', async (t) => {
  const backend = await httpBackend(t, (req, res) => {
    if (req.url === '/hints') {
      res.writeEarlyHints({ link: '</style.css>; rel=preload' });
      setTimeout(() => res.end('after hints'), 20);
      return;
    }
    echo(req, res);
  });
  const la = await agentFor(t, '{ retries: { attempts: 1, retryOn: [5xx] } }');
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  const cont = await c.readResponse();
  t.equal(cont.status, 100, 'the client is told to send its body');
  c.write('hello');
  const r = await c.readResponse();
  t.equal(r.status, 200);
  t.equal(r.body.toString(), 'hello');

  c.write('GET /hints HTTP/1.1\r\nHost: x\r\n\r\n');
  const hints = await c.readResponse();
  t.equal(hints.status, 103, '103 Early Hints is passed on to an HTTP/1.1 client');
  t.match(hints.headers.link, /style\.css/);
  const fin = await c.readResponse();
  t.equal(fin.body.toString(), 'after hints');
  c.close();

  // No upstream for an unknown expectation.
  const before = backend.requests();
  const e = await RawClient.connect(la.outboundPort, clientIp(la));
  e.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: teapot\r\n\r\nx');
  t.equal((await e.readResponse()).status, 417);
  t.equal(backend.requests(), before);
  e.close();
});

t.test('upstream connections are kept alive and reused', async (t) => {
  const backend = await httpBackend(t, (_req, res) => res.end('ok'));
  const la = await agentFor(t);
  const clients = await Promise.all(Array.from({ length: 8 }, () => RawClient.connect(la.outboundPort, clientIp(la))));
  for (let round = 0; round < 25; round++) {
    await Promise.all(
      clients.map(async (c) => {
        c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
        const r = await c.readResponse();
        if (r.status !== 200) throw new Error(`status ${r.status}`);
      }),
    );
  }
  t.equal(backend.requests(), 200);
  t.ok(backend.connections() <= 8, `200 requests over ${backend.connections()} upstream connections`);
  for (const c of clients) c.close();

  // Connection: close from the client: answered, then closed.
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const r = await c.readResponse();
  t.equal(r.headers.connection, 'close');
  await c.waitClosed();
  t.ok(c.closed);
});

t.test('HTTP/1.0 clients, half-closed clients, answers without a length', async (t) => {
  await httpBackend(t, (req, res) => {
    if (req.url === '/chunked') {
      res.write('part1-');
      return void res.end('part2');
    }
    res.end(`hello ${req.headers.host}`);
  });
  // A backend that answers HTTP/1.0 style: no length, the end of the body is the close.
  const eof = await recordingServer('127.0.41.2', 8080, (s) => s.end('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close'));
  t.teardown(() => eof.close());
  const la = await startLoopbackAgent(
    loopbackMesh(
      [POD, { name: 'eof-0', ip: '127.0.41.2', app: 'eof' }],
      [
        { name: 'api', vip: '10.96.0.20', app: 'api' },
        { name: 'eof', vip: '10.96.0.21', app: 'eof' },
      ],
    ),
  );
  t.teardown(() => la.stop());

  const c10 = await RawClient.connect(la.outboundPort, clientIp(la));
  c10.write('GET /chunked HTTP/1.0\r\n\r\n');
  const r10 = await c10.readResponse();
  t.equal(r10.status, 200);
  t.equal(r10.headers['transfer-encoding'], undefined, 'no chunked framing for an HTTP/1.0 client');
  t.equal(r10.body.toString(), 'part1-part2');
  t.ok(c10.closed, 'the end of the body is the end of the connection');

  const ka = await RawClient.connect(la.outboundPort, clientIp(la));
  ka.write('GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
  const k1 = await ka.readResponse();
  t.equal(k1.headers.connection, 'keep-alive');
  t.equal(k1.body.toString(), 'hello 10.96.0.20:80', 'a Host is supplied for the HTTP/1.1 upstream');
  ka.write('GET /y HTTP/1.0\r\n\r\n');
  t.equal((await ka.readResponse()).status, 200);
  await ka.waitClosed();

  const half = await RawClient.connect(la.outboundPort, clientIp(la));
  half.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  half.sock.end();
  const hr = await half.readResponse();
  t.equal(hr.status, 200, 'a client that half-closed after its request still gets the answer');
  await half.waitClosed();

  const ip = `127.0.42.${10 + (clientN++ % 200)}`;
  la.route(ip, '10.96.0.21:80', 'shop/client-0');
  const e = await RawClient.connect(la.outboundPort, ip);
  e.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const er = await e.readResponse();
  t.equal(er.headers['transfer-encoding'], 'chunked', 'an until-close body reaches an HTTP/1.1 client chunked');
  t.equal(er.body.toString(), 'until close');
  e.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await e.readResponse()).body.toString(), 'until close', 'and the client connection stays usable');
  e.close();
});

t.test('a malformed upstream answer is a 503 upstream_reset', async (t) => {
  const bad = await recordingServer(POD.ip, 8080, (s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd'));
  t.teardown(() => bad.close());
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const r = await c.readResponse();
  t.equal(r.status, 503);
  t.equal(r.headers['x-weft-error'], 'upstream_reset');
  c.close();
});

t.test('WebSocket-style upgrade: spliced after the 101', async (t) => {
  const { server } = await httpBackend(t, (_req, res) => res.end('plain'));
  server.on('upgrade', (req, sock: net.Socket, head: Buffer) => {
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade}\r\nConnection: Upgrade\r\n\r\n`);
    if (head.length) sock.write(Buffer.concat([Buffer.from('echo:'), head]));
    sock.on('data', (d: Buffer) => sock.write(Buffer.concat([Buffer.from('echo:'), d])));
  });
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nfirst');
  const r = await c.readResponse();
  t.equal(r.status, 101);
  t.equal((await c.readBytes(10)).toString(), 'echo:first', 'bytes sent with the upgrade request go through');
  c.write('second');
  t.equal((await c.readBytes(11)).toString(), 'echo:second');
  c.close();
  const m = await la.metrics();
  t.match(m, /weft_requests_total\{[^}]*response_code="101"[^}]*\} 1/, 'the upgrade is counted');
});

t.test('a client that stops sending in the middle of a body gets 400', async (t) => {
  await httpBackend(t, echo);
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc');
  c.sock.end();
  const r = await c.readResponse();
  t.equal(r.status, 400);
  t.equal(r.headers['x-weft-error'], 'bad_request');
  await c.waitClosed();
});

t.test('draining: in-flight answers say connection: close, idle connections are closed', async (t) => {
  await httpBackend(t, (req, res) => setTimeout(() => res.end('ok'), req.url === '/slow' ? 300 : 0));
  const la = await startLoopbackAgent(loopbackMesh([POD], [{ name: 'api', vip: '10.96.0.20', app: 'api' }]));
  t.teardown(() => la.stop().catch(() => undefined));
  const idle = await RawClient.connect(la.outboundPort, clientIp(la));
  idle.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await idle.readResponse()).status, 200);
  const busy = await RawClient.connect(la.outboundPort, clientIp(la));
  busy.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n');
  await sleep(50);
  const stopped = la.agent.stop({ drainMs: 3000 });
  const r = await busy.readResponse();
  t.equal(r.status, 200, 'the request in flight completes');
  t.equal(r.headers.connection, 'close', 'and tells the client not to reuse the connection');
  await busy.waitClosed();
  await idle.waitClosed();
  t.ok(idle.closed, 'the idle keep-alive connection is closed');
  await stopped;
});

t.test('connection limits: maxConnections with a pending queue, then overflow', async (t) => {
  const backend = await httpBackend(t, (_req, res) => setTimeout(() => res.end('ok'), 200));
  const la = await agentFor(t, '{ connectionPool: { maxConnections: 1, maxPendingRequests: 1, maxRequests: 100 } }');
  const clients = await Promise.all([0, 1, 2].map(() => RawClient.connect(la.outboundPort, clientIp(la))));
  const answers = clients.map(async (c, i) => {
    await sleep(i * 30);
    c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const r = await c.readResponse();
    return { status: r.status, error: r.headers['x-weft-error'] };
  });
  const got = await Promise.all(answers);
  t.same(
    got,
    [
      { status: 200, error: undefined },
      { status: 200, error: undefined },
      { status: 503, error: 'overflow' },
    ],
    'one on the connection, one waiting for it, one refused',
  );
  t.equal(backend.connections(), 1, 'the waiting request reused the one connection');
  for (const c of clients) c.close();
});

t.test('a kept-alive upstream connection closed under a request: idempotent requests go again, others fail', async (t) => {
  // Each connection answers its first request, then drops the next one without an answer
  // (as a server does that closes an idle connection just as a request arrives).
  const backend = await recordingServer(POD.ip, 8080, (s, d) => {
    const st = s as net.Socket & { served?: number };
    const heads = d.toString('latin1').split('\r\n\r\n').length - 1;
    for (let i = 0; i < heads; i++) {
      if ((st.served ?? 0) >= 1) {
        s.destroy();
        return;
      }
      st.served = (st.served ?? 0) + 1;
      s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
    }
  });
  t.teardown(() => backend.close());
  const la = await agentFor(t);
  const c = await RawClient.connect(la.outboundPort, clientIp(la));
  c.write('GET /1 HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await c.readResponse()).status, 200);
  c.write('GET /2 HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await c.readResponse()).status, 200, 'the GET went again on a fresh connection');
  c.write('POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx');
  const p = await c.readResponse();
  t.equal(p.status, 503, 'a POST is not sent twice behind the client’s back');
  t.equal(p.headers['x-weft-error'], 'upstream_reset');
  c.close();
});
