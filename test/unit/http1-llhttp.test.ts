/**
 * The llhttp binding as the forwarder uses it: strict by default, and the "stop after the
 * head" return value that lets Content-Length bodies bypass the parser. These pin the
 * behaviour of Node's internal binding, so that a Node upgrade that changes it fails here.
 */
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import {
  kOnBody,
  kOnHeaders,
  kOnHeadersComplete,
  kOnMessageComplete,
  METHODS,
  PARSE_BODY,
  requestParser,
  responseParser,
  SKIP_BODY,
  STOP_AFTER_HEAD,
  type NativeParser,
  type ParseError,
} from '../../src/proxy/http1/llhttp.js';

interface Events {
  heads: { method?: string; url?: string; status?: number; headers: string[]; upgrade: boolean; keepAlive: boolean; minor: number }[];
  bodies: string[];
  completes: number;
  flushed: string[][];
}

function wire(p: NativeParser, ret: (i: number) => number = () => PARSE_BODY): Events {
  const e: Events = { heads: [], bodies: [], completes: 0, flushed: [] };
  p[kOnHeaders] = (h: string[]) => e.flushed.push(h);
  p[kOnHeadersComplete] = (_maj: number, minor: number, headers: string[] | undefined, method: number, url: string, status: number, _r: string, upgrade: boolean, keepAlive: boolean) => {
    e.heads.push({ method: METHODS[method], url, status, headers: headers ?? [], upgrade, keepAlive, minor });
    return ret(e.heads.length - 1);
  };
  p[kOnBody] = (b: Buffer) => e.bodies.push(b.toString('latin1'));
  p[kOnMessageComplete] = () => e.completes++;
  return e;
}

function parseRequest(bytes: string): { e: Events; ret: number | ParseError } {
  const p = requestParser();
  const e = wire(p);
  const ret = p.execute(Buffer.from(bytes, 'latin1'));
  p.close();
  return { e, ret };
}

t.test('strict request parsing: smuggling vectors are errors', async (t) => {
  const bad: Record<string, [string, string]> = {
    'CL + TE': ['POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
    'duplicate CL': ['POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
    'same CL twice': ['POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
    'CL with sign': ['POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
    'bad chunk size': ['POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 'HPE_INVALID_CHUNK_SIZE'],
    'obs-fold': ['GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
    'space before colon': ['GET / HTTP/1.1\r\nHost : x\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
    'control char': ['GET / HTTP/1.1\r\nX: a\x01\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
    'bare LF': ['GET / HTTP/1.1\nHost: x\n\n', 'HPE_INVALID_VERSION'],
    'TE not ending in chunked': ['POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  };
  for (const [name, [bytes, code]] of Object.entries(bad)) {
    const { ret } = parseRequest(bytes);
    t.type(ret, Error, `${name} is an error`);
    t.equal((ret as ParseError).code, code, name);
  }
});

t.test('a good request: head fields, pipelining, chunked body with trailers', async (t) => {
  const { e, ret } = parseRequest('POST /a?b=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\nGET /next HTTP/1.0\r\n\r\n');
  t.type(ret, 'number');
  t.equal(e.heads.length, 2);
  t.same(e.heads[0], { method: 'POST', url: '/a?b=1', status: e.heads[0]!.status, headers: ['Host', 'x', 'Transfer-Encoding', 'chunked'], upgrade: false, keepAlive: true, minor: 1 });
  t.same(e.bodies, ['abc']);
  // Trailers come through kOnHeaders; after a flush, the binding also delivers the next
  // head's fields and URL through kOnHeaders, and kOnHeadersComplete gets undefined for both.
  t.same(e.flushed, [['X-Sum', '3'], []], 'trailers, then the (empty) fields of the next head');
  t.equal(e.heads[1]!.url, undefined);
  t.equal(e.heads[1]!.keepAlive, false, 'HTTP/1.0 without keep-alive');
  t.equal(e.completes, 2);
});

t.test('STOP_AFTER_HEAD: execute returns the head length, and parsing resumes after the body', async (t) => {
  const p = requestParser();
  const e = wire(p, () => STOP_AFTER_HEAD);
  const msg = 'POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /y HTTP/1.1\r\n\r\n';
  const buf = Buffer.from(msg);
  const n = p.execute(buf);
  t.equal(n, msg.indexOf('abc'), 'stopped right after the head');
  t.equal(e.bodies.length, 0, 'no body callback');
  const m = p.execute(buf.subarray((n as number) + 3));
  t.equal(m, buf.length - (n as number) - 3, 'the next request parses');
  t.equal(e.heads[1]!.url, '/y');
  p.close();
});

t.test('responses: 1xx, HEAD (SKIP_BODY), 204 with a length, until-close bodies', async (t) => {
  const p = responseParser();
  const e = wire(p, (i) => (i === 1 ? SKIP_BODY : PARSE_BODY));
  const ret = p.execute(Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.0 200 OK\r\n\r\nabc'));
  t.type(ret, 'number');
  t.same(
    e.heads.map((h) => h.status),
    [100, 200, 204, 200],
  );
  t.same(e.bodies, ['abc']);
  t.equal(e.completes, 3, 'the until-close body is not complete yet');
  t.equal(p.finish(), undefined);
  t.equal(e.completes, 4, 'finish() (EOF) completes it');
  p.close();

  const q = responseParser();
  const f = wire(q);
  const r = q.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n'));
  t.equal((r as ParseError).code, 'HPE_UNEXPECTED_CONTENT_LENGTH', 'a response with two lengths is refused too');
  t.equal(f.heads.length, 0);
  q.close();
});

t.test('more than 32 header fields arrive through kOnHeaders first', async (t) => {
  let h = 'GET /many HTTP/1.1\r\n';
  for (let i = 0; i < 40; i++) h += `X-H${i}: ${i}\r\n`;
  const p = requestParser();
  const e = wire(p);
  const b = Buffer.from(`${h}\r\n`);
  t.type(p.execute(b.subarray(0, 10)), 'number');
  t.type(p.execute(b.subarray(10)), 'number');
  const all = [...e.flushed.flat(), ...e.heads[0]!.headers];
  t.equal(all.length, 80, 'every field arrives once');
  t.equal(e.heads[0]!.url, undefined, 'the URL came with the early flush');
  p.close();
});

t.test('every method Node accepts is named by the number the parser reports (QUERY is 46, not an index into _http_common.methods)', async (t) => {
  for (const name of http.METHODS) {
    const p = requestParser();
    const e: number[] = [];
    p[kOnHeadersComplete] = (_maj: number, _min: number, _h: unknown, method: number) => {
      e.push(method);
      return PARSE_BODY;
    };
    p[kOnMessageComplete] = () => {};
    t.type(p.execute(Buffer.from(`${name} /x HTTP/1.1\r\nHost: x\r\n\r\n`)), 'number', name);
    t.equal(METHODS[e[0]!], name, `${name} comes back as ${name}`);
    p.close();
  }
});

t.test('the callback contract on this Node: kOnHeadersComplete arguments, constants and methods', async (t) => {
  const ks = [kOnHeaders, kOnHeadersComplete, kOnBody, kOnMessageComplete];
  t.ok(
    ks.every((k) => Number.isInteger(k)),
    'callback slots are integers',
  );
  t.equal(new Set(ks).size, 4, 'and distinct');
  const calls: unknown[][] = [];
  const capture = (p: NativeParser): void => {
    p[kOnHeadersComplete] = (...args: unknown[]) => {
      calls.push(args);
      return PARSE_BODY;
    };
    p[kOnMessageComplete] = () => {};
  };
  const req = requestParser();
  capture(req);
  req.execute(Buffer.from('PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n'));
  req.close();
  const res = responseParser();
  capture(res);
  res.execute(Buffer.from('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'));
  res.close();
  t.equal(calls.length, 2);
  const [q, r] = calls as [unknown[], unknown[]];
  t.equal(q.length, 9, 'nine arguments for a request head');
  t.same(q.slice(0, 3), [1, 1, ['Host', 'h', 'Content-Length', '0']], 'versionMajor, versionMinor, flat headers');
  t.equal(METHODS[q[3] as number], 'PUT', 'method number');
  t.equal(q[4], '/p', 'url');
  t.same(q.slice(7), [false, true], 'upgrade, shouldKeepAlive');
  t.equal(r.length, 9, 'nine arguments for a response head');
  t.same([r[0], r[1], r[5], r[6]], [1, 1, 404, 'Not Found'], 'versions, status code and message');
  t.equal(r[4], undefined, 'no url in a response');
});

t.test('loading the binding warns of nothing on this Node, even with pending deprecations shown', async (t) => {
  const src = fileURLToPath(new URL('../../src/proxy/http1/llhttp.ts', import.meta.url));
  // `env -i`: tap wraps spawn to put its own --import hooks in NODE_OPTIONS, and those call
  // process.binding, which would be the warning seen here.
  const code = `const m = await import(${JSON.stringify(src)}); console.log(m.METHODS.filter(Boolean).length)`;
  const r = spawnSync('env', ['-i', process.execPath, '--pending-deprecation', '--throw-deprecation', '--input-type=module', '-e', code], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stderr, '', 'no warning on stderr');
  t.equal(Number(r.stdout.trim()), http.METHODS.length, 'every method named');
});
