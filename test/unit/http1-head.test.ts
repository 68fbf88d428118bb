import t from 'tap';
import {
  endsChunked,
  headerObject,
  rawResponseHead,
  scanRequestHead,
  scanResponseHead,
  simpleResponse,
  withoutHeaders,
  type RequestHeadFields,
  type ResponseHeadFields,
} from '../../src/proxy/http1/head.js';

function req(h: string[]): RequestHeadFields {
  const out: RequestHeadFields = { contentLength: -1, transferEncoding: undefined, lines: '', connClose: false, host: undefined, expect: undefined, requestId: undefined };
  scanRequestHead(h, out);
  return out;
}

function res(h: string[]): ResponseHeadFields {
  const out: ResponseHeadFields = { contentLength: -1, transferEncoding: undefined, lines: '', connClose: false, keepAliveHintMs: -1 };
  scanResponseHead(h, out);
  return out;
}

t.test('request heads: hop-by-hop and framing headers are not passed on', async (t) => {
  const r = req([
    'Host',
    'api.shop',
    'Connection',
    'keep-alive, X-Private',
    'Keep-Alive',
    'timeout=5',
    'Proxy-Connection',
    'keep-alive',
    'TE',
    'trailers',
    'Trailer',
    'x-sum',
    'Upgrade',
    'h2c',
    'HTTP2-Settings',
    'AAMAAABkAARAAAAAAAIAAAAA',
    'X-Private',
    'secret',
    'Content-Length',
    '12',
    'Expect',
    '100-continue',
    'Accept',
    '*/*',
    'x-private-not',
    'kept',
  ]);
  t.equal(r.lines, 'Host: api.shop\r\nAccept: */*\r\nx-private-not: kept\r\n');
  t.equal(r.contentLength, 12);
  t.equal(r.host, 'api.shop');
  t.equal(r.expect, '100-continue');
  t.equal(r.connClose, false);
  t.equal(r.transferEncoding, undefined);
});

t.test('request heads: Connection close, Transfer-Encoding, case-insensitive names', async (t) => {
  const r = req(['HOST', 'x', 'CONNECTION', 'Close', 'transfer-ENCODING', 'chunked', 'x-a', '1']);
  t.equal(r.connClose, true);
  t.equal(r.transferEncoding, 'chunked');
  t.equal(r.lines, 'HOST: x\r\nx-a: 1\r\n');
  t.equal(req(['Connection', 'keep-alive']).connClose, false);
  t.equal(req(['Connection', 'foo, close']).connClose, true);
  t.equal(req([]).host, undefined, 'an HTTP/1.0 request may come without Host');
});

t.test('response heads: framing, keep-alive hint, Connection-listed headers', async (t) => {
  const r = res(['Content-Type', 'text/plain', 'Content-Length', '1024', 'Connection', 'keep-alive', 'Keep-Alive', 'timeout=5, max=100', 'Date', 'x']);
  t.equal(r.contentLength, 1024);
  t.equal(r.keepAliveHintMs, 5000);
  t.equal(r.lines, 'Content-Type: text/plain\r\nDate: x\r\n');
  const c = res(['Transfer-Encoding', 'gzip', 'Transfer-Encoding', 'chunked', 'Connection', 'close, x-hop', 'x-hop', '1', 'set-cookie', 'a=1', 'set-cookie', 'b=2']);
  t.equal(c.transferEncoding, 'gzip, chunked');
  t.equal(c.connClose, true);
  t.equal(c.lines, 'set-cookie: a=1\r\nset-cookie: b=2\r\n', 'repeated headers stay separate lines; named hop headers go');
});

t.test('endsChunked', async (t) => {
  t.ok(endsChunked('chunked'));
  t.ok(endsChunked('Chunked'));
  t.ok(endsChunked('gzip, chunked'));
  t.ok(endsChunked('gzip,chunked '));
  t.notOk(endsChunked('gzip'));
  t.notOk(endsChunked('chunked, gzip'));
});

t.test('helpers', async (t) => {
  t.equal(rawResponseHead(101, 'Switching Protocols', ['Upgrade', 'websocket', 'Connection', 'Upgrade']), 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
  t.same(headerObject(['Host', 'a', 'X-Y', '1', 'x-y', '2']), { host: 'a', 'x-y': '1, 2' });
  t.equal(withoutHeaders('Host: a\r\nAuthorization: Bearer x\r\nAccept: */*\r\n', new Set(['authorization'])), 'Host: a\r\nAccept: */*\r\n');
  // A header the Connection header named was dropped at this hop: removing another header
  // (a JWT the policy must not forward) does not bring it back.
  const hop = ['Host', 'a', 'Connection', 'x-hop', 'X-Hop', 'secret', 'Authorization', 'Bearer x', 'Accept', '*/*'];
  const f = req(hop);
  t.equal(f.lines, 'Host: a\r\nAuthorization: Bearer x\r\nAccept: */*\r\n', 'x-hop dropped by the scan');
  t.equal(withoutHeaders(f.lines, new Set(['authorization'])), 'Host: a\r\nAccept: */*\r\n', 'and stays dropped');
  const s = simpleResponse(503, 'x-weft-error: overflow\r\n', 'overflow: full\n', { head: false, close: true, keepAlive10: false });
  t.equal(s, 'HTTP/1.1 503 Service Unavailable\r\nx-weft-error: overflow\r\ncontent-length: 15\r\nconnection: close\r\n\r\noverflow: full\n');
  const h = simpleResponse(403, '', 'denied\n', { head: true, close: false, keepAlive10: true });
  t.equal(h, 'HTTP/1.1 403 Forbidden\r\ncontent-length: 7\r\nconnection: keep-alive\r\n\r\n', 'HEAD: the length, no body');
});
