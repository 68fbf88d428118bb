/**
 * Node's own llhttp binding (the parser under node:http), used directly: the forwarder
 * parses heads with it and frames bodies itself. It is strict in its default configuration
 * (no lenient flags): conflicting Content-Length / Transfer-Encoding, duplicate
 * Content-Length, bad chunk sizes, obs-fold, bare CR/LF and invalid header characters are
 * all parse errors.
 *
 * Where it comes from: `_http_common.HTTPParser`, the one path to the binding left in
 * Node 26 (`process.binding('http_parser')` is gone). The `_http_*` modules are deprecated in
 * the documentation only (DEP0199): Node 26 emits no warning for them, not even under
 * `--pending-deprecation` (test/unit/http1-llhttp.test.ts loads this module under
 * `--throw-deprecation` to keep that true), so nothing is silenced here. Should a Node
 * release remove the export, loading fails with the message below, and the test pins every
 * part of the contract this file relies on.
 *
 * How the binding calls back (Node 26):
 * - `kOnHeadersComplete(versionMajor, versionMinor, headers, method, url, statusCode,
 *   statusMessage, upgrade, shouldKeepAlive)`: `headers` is a flat [name, value, ...] array of
 *   latin1 strings, `method` llhttp's method number, named by {@link METHODS}. That number is
 *   NOT an index into `_http_common.methods` for every method (QUERY is 46 in llhttp and 34
 *   in that list), so METHODS is built by asking the parser itself. `headers` and `url` are undefined
 *   when they were flushed early through `kOnHeaders` (more than 32 fields). Its return value
 *   steers llhttp: 0 parse the body, 1 no body (a HEAD response), 2 stop after the head as if
 *   upgraded: `execute` then returns the head's length as a plain number and the caller
 *   handles the bytes after it itself (which is how the forwarder copies Content-Length
 *   bodies without a callback and a copy per chunk).
 * - `kOnHeaders(headers, url)`: early flush of header fields, and trailers after a chunked body.
 * - `kOnBody(chunk)`: a copy of body bytes (de-chunked).
 * - `kOnMessageComplete()`.
 * - `execute(buf)` returns the bytes consumed, or an Error with `code` (`HPE_*`) and
 *   `bytesParsed`; `finish()` (EOF) returns undefined or an Error.
 */
import { createRequire } from 'node:module';

export interface ParseError extends Error {
  code: string;
  reason?: string;
  bytesParsed: number;
}

export interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(buf: Buffer): number | ParseError;
  finish(): ParseError | undefined;
  close(): void;
  [callback: number]: unknown;
}

interface NativeParserClass {
  new (): NativeParser;
  REQUEST: number;
  RESPONSE: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kLenientNone?: number;
}

const require = createRequire(import.meta.url);
const common = require('node:_http_common') as { HTTPParser?: NativeParserClass; methods?: string[] };
if (typeof common.HTTPParser !== 'function' || !Array.isArray(common.methods)) {
  throw new Error(`this Node.js (${process.version}) does not expose its HTTP parser as _http_common.HTTPParser`);
}
const HTTPParser = common.HTTPParser;
const methodNames: readonly string[] = common.methods;

export const kOnHeaders = HTTPParser.kOnHeaders;
export const kOnHeadersComplete = HTTPParser.kOnHeadersComplete;
export const kOnBody = HTTPParser.kOnBody;
export const kOnMessageComplete = HTTPParser.kOnMessageComplete;

/** `kOnHeadersComplete` return values. */
export const PARSE_BODY = 0;
export const SKIP_BODY = 1;
export const STOP_AFTER_HEAD = 2;

/** Largest request or response head accepted (as node:http's `maxHeaderSize` in the previous L7 path). */
export const MAX_HEAD_BYTES = 64 * 1024;

const RESOURCE = {};

/**
 * Method names by llhttp's method number: each method Node accepts is parsed once and named
 * by the number the parser reports for it (a few dozen microsecond parses at load).
 */
export const METHODS: readonly string[] = methodTable(methodNames);

function methodTable(names: readonly string[]): string[] {
  const table: string[] = [];
  for (const name of names) {
    const p = new HTTPParser();
    p.initialize(HTTPParser.REQUEST, RESOURCE, MAX_HEAD_BYTES, HTTPParser.kLenientNone ?? 0);
    let number: unknown;
    p[kOnHeadersComplete] = (_major: number, _minor: number, _headers: unknown, method: unknown) => {
      number = method;
      return SKIP_BODY;
    };
    p[kOnMessageComplete] = () => {};
    const ret = p.execute(Buffer.from(`${name} / HTTP/1.1\r\nHost: x\r\n\r\n`, 'latin1'));
    p.close();
    if (typeof ret !== 'number' || typeof number !== 'number' || !Number.isInteger(number) || number < 0 || table[number] !== undefined) {
      throw new Error(`this Node.js (${process.version}) reports method ${name} to its HTTP parser callback as ${String(number)}: the llhttp binding's contract changed`);
    }
    table[number] = name;
  }
  return table;
}

export function requestParser(): NativeParser {
  const p = new HTTPParser();
  p.initialize(HTTPParser.REQUEST, RESOURCE, MAX_HEAD_BYTES, HTTPParser.kLenientNone ?? 0);
  return p;
}

export function responseParser(): NativeParser {
  const p = new HTTPParser();
  p.initialize(HTTPParser.RESPONSE, RESOURCE, MAX_HEAD_BYTES, HTTPParser.kLenientNone ?? 0);
  return p;
}

/** Release the native parser; deferred, since it may be called from inside one of its callbacks. */
export function closeParser(p: NativeParser): void {
  setImmediate(() => p.close());
}
