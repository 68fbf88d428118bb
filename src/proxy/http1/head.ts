/**
 * Message heads on the forwarding path: one pass over the parsed [name, value, ...] array
 * classifies the headers the proxy acts on and builds the header lines it passes on, with the
 * hop-by-hop ones (RFC 9110 §7.6.1, plus those named in `Connection`) removed. Framing headers
 * (Content-Length, Transfer-Encoding) are reported, not copied: the sender of each hop writes
 * its own.
 */
import http from '../../node-http.js';
const { STATUS_CODES } = http;

/** What a head scan reports. */
export interface HeadFields {
  /** Content-Length, or -1 when absent. */
  contentLength: number;
  /** Transfer-Encoding as received (joined when repeated), or undefined. */
  transferEncoding: string | undefined;
  /** The header lines to pass on (`name: value\r\n` each), hop-by-hop and framing removed. */
  lines: string;
  /** `Connection` lists `close`. */
  connClose: boolean;
}

export interface RequestHeadFields extends HeadFields {
  host: string | undefined;
  expect: string | undefined;
  /** The first `x-request-id` (kept and passed on), or undefined when the request has none. */
  requestId: string | undefined;
}

export interface ResponseHeadFields extends HeadFields {
  /** `Keep-Alive: timeout=N`, in ms, or -1. */
  keepAliveHintMs: number;
}

const KEEP = 0;
const DROP = 1;
const CONTENT_LENGTH = 2;
const TRANSFER_ENCODING = 3;
const CONNECTION = 4;
const KEEP_ALIVE = 5;
const HOST = 6;
const EXPECT = 7;
const REQUEST_ID = 8;

function is(name: string, lower: string): boolean {
  return name === lower || name.toLowerCase() === lower;
}

/** Classify a header name; only names whose length matches a special one are lower-cased. */
function classify(name: string): number {
  switch (name.length) {
    case 2:
      return is(name, 'te') ? DROP : KEEP;
    case 4:
      return is(name, 'host') ? HOST : KEEP;
    case 6:
      return is(name, 'expect') ? EXPECT : KEEP;
    case 7:
      return is(name, 'upgrade') || is(name, 'trailer') ? DROP : KEEP;
    case 10:
      if (is(name, 'connection')) return CONNECTION;
      return is(name, 'keep-alive') ? KEEP_ALIVE : KEEP;
    case 12:
      return is(name, 'x-request-id') ? REQUEST_ID : KEEP;
    case 14:
      if (is(name, 'content-length')) return CONTENT_LENGTH;
      return is(name, 'http2-settings') ? DROP : KEEP;
    case 16:
      return is(name, 'proxy-connection') ? DROP : KEEP;
    case 17:
      return is(name, 'transfer-encoding') ? TRANSFER_ENCODING : KEEP;
    default:
      return KEEP;
  }
}

/**
 * Tokens of a Connection header other than close / keep-alive / upgrade: header names the
 * sender wants removed at this hop. Undefined when there are none (the usual case).
 */
function connectionExtras(value: string): Set<string> | undefined {
  // The usual values, without splitting.
  if (value.length === 10 || value.length === 5) {
    const v = value.toLowerCase();
    if (v === 'keep-alive' || v === 'close') return undefined;
  }
  let extra: Set<string> | undefined;
  for (const t of value.split(',')) {
    const n = t.trim().toLowerCase();
    if (n && n !== 'close' && n !== 'keep-alive' && n !== 'upgrade') (extra ??= new Set()).add(n);
  }
  return extra;
}

function hasToken(value: string, token: string): boolean {
  if (value.length === token.length) return is(value, token);
  if (value.length === 10 && is(value, 'keep-alive')) return false;
  for (const t of value.split(',')) if (t.trim().toLowerCase() === token) return true;
  return false;
}

function join(prev: string | undefined, v: string): string {
  return prev === undefined ? v : `${prev}, ${v}`;
}

function filterLines(h: readonly string[], drop: Set<string>): string {
  let lines = '';
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!;
    const c = classify(name);
    if (c !== KEEP && c !== HOST && c !== REQUEST_ID) continue;
    if (drop.has(name.toLowerCase())) continue;
    lines += `${name}: ${h[i + 1]!}\r\n`;
  }
  return lines;
}

/** Scan a request head. Expect is consumed here (the proxy answers 100-continue itself). */
export function scanRequestHead(h: readonly string[], out: RequestHeadFields): void {
  let lines = '';
  let connection: string | undefined;
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!;
    const value = h[i + 1]!;
    switch (classify(name)) {
      case KEEP:
        lines += `${name}: ${value}\r\n`;
        break;
      case HOST:
        if (out.host === undefined) out.host = value;
        lines += `${name}: ${value}\r\n`;
        break;
      case REQUEST_ID:
        if (out.requestId === undefined) out.requestId = value;
        lines += `${name}: ${value}\r\n`;
        break;
      case CONTENT_LENGTH:
        // llhttp refused duplicates and anything but digits.
        out.contentLength = Number(value);
        break;
      case TRANSFER_ENCODING:
        out.transferEncoding = join(out.transferEncoding, value);
        break;
      case CONNECTION:
        connection = join(connection, value);
        break;
      case EXPECT:
        out.expect = join(out.expect, value);
        break;
      default:
        break;
    }
  }
  if (connection !== undefined) {
    out.connClose = hasToken(connection, 'close');
    const extra = connectionExtras(connection);
    if (extra) lines = filterLines(h, extra);
  }
  out.lines = lines;
}

/** Scan a response head. */
export function scanResponseHead(h: readonly string[], out: ResponseHeadFields): void {
  let lines = '';
  let connection: string | undefined;
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!;
    const value = h[i + 1]!;
    switch (classify(name)) {
      case KEEP:
      case HOST:
      case EXPECT:
        lines += `${name}: ${value}\r\n`;
        break;
      case CONTENT_LENGTH:
        out.contentLength = Number(value);
        break;
      case TRANSFER_ENCODING:
        out.transferEncoding = join(out.transferEncoding, value);
        break;
      case CONNECTION:
        connection = join(connection, value);
        break;
      case KEEP_ALIVE:
        out.keepAliveHintMs = keepAliveTimeoutMs(value);
        break;
      default:
        break;
    }
  }
  if (connection !== undefined) {
    out.connClose = hasToken(connection, 'close');
    const extra = connectionExtras(connection);
    if (extra) lines = filterLines(h, extra);
  }
  out.lines = lines;
}

let lastKeepAlive = '';
let lastKeepAliveMs = -1;

/** `Keep-Alive: timeout=N` in ms, or -1; a server sends the same value every time, so the last one is remembered. */
function keepAliveTimeoutMs(value: string): number {
  if (value === lastKeepAlive) return lastKeepAliveMs;
  const m = /timeout\s*=\s*(\d+)/i.exec(value);
  lastKeepAlive = value;
  lastKeepAliveMs = m ? Number(m[1]) * 1000 : -1;
  return lastKeepAliveMs;
}

/** Does a Transfer-Encoding value end with `chunked` (the framing llhttp applies)? */
export function endsChunked(te: string): boolean {
  if (te.length === 7) return is(te, 'chunked');
  const i = te.lastIndexOf(',');
  return (
    te
      .slice(i + 1)
      .trim()
      .toLowerCase() === 'chunked'
  );
}

/** A 101 answer's head, passed on as received (Connection and Upgrade must reach the client). */
export function rawResponseHead(status: number, reason: string, h: readonly string[]): string {
  let head = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (let i = 0; i < h.length; i += 2) head += `${h[i]!}: ${h[i + 1]!}\r\n`;
  return `${head}\r\n`;
}

/** Header lines as an object with lower-case names (repeated ones joined), for the authorizer. */
export function headerObject(h: readonly string[]): Record<string, string> {
  const o: Record<string, string> = {};
  for (let i = 0; i < h.length; i += 2) {
    const k = h[i]!.toLowerCase();
    const prev = o[k];
    o[k] = prev === undefined ? h[i + 1]! : `${prev}, ${h[i + 1]!}`;
  }
  return o;
}

/** Drop the named headers (lower-case) from already built header lines. */
export function withoutHeaders(keepLines: string, drop: Set<string>): string {
  if (drop.size === 0) return keepLines;
  // Filter the lines already kept (not the received head): headers the Connection header named
  // were dropped from them at this hop and must stay dropped. A kept line has no CR or LF of
  // its own (llhttp refuses them in values), so CRLF splits lines exactly.
  let out = '';
  let at = 0;
  while (at < keepLines.length) {
    const end = keepLines.indexOf('\r\n', at);
    const next = end === -1 ? keepLines.length : end + 2;
    const line = keepLines.slice(at, next);
    if (!drop.has(line.slice(0, line.indexOf(':')).toLowerCase())) out += line;
    at = next;
  }
  return out;
}

export function reasonPhrase(status: number): string {
  return STATUS_CODES[status] ?? 'Unknown';
}

/** A complete answer written by the proxy itself (errors, 100-continue aside). */
export function simpleResponse(status: number, headers: string, body: string, opts: { head: boolean; close: boolean; keepAlive10: boolean }): string {
  let s = `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\n${headers}content-length: ${Buffer.byteLength(body)}\r\n`;
  if (opts.close) s += 'connection: close\r\n';
  else if (opts.keepAlive10) s += 'connection: keep-alive\r\n';
  s += '\r\n';
  return opts.head ? s : s + body;
}
