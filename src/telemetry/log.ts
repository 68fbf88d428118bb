import pino from 'pino';
import { LineBuffer } from './line-buffer.js';

export type Logger = pino.Logger;

/**
 * The agent's root logger: pino JSON on stdout. Components take `log.child({ component })`.
 *
 * Lines are buffered (see LineBuffer): they leave in 64 KiB writes, at the latest every
 * 100 ms, and whatever is buffered is written when the process exits (a SIGKILL loses at
 * most those 100 ms). With one access line per HTTP request, writing each line on its own
 * cost the L7 path about a tenth of its CPU.
 */
export function createLogger(level = process.env.WEFT_LOG_LEVEL ?? 'info'): Logger {
  stdoutLines ??= new LineBuffer(1);
  return pino({ level, base: { pid: process.pid }, timestamp: isoTime }, stdoutLines);
}

/** One buffer for stdout, however many loggers write to it. */
let stdoutLines: LineBuffer | undefined;

let cachedSecond = -1;
let cachedPrefix = '';

/**
 * pino's `stdTimeFunctions.isoTime` (same output), formatting the date once per second
 * rather than once per line.
 */
export function isoTime(): string {
  const now = Date.now();
  const sec = Math.floor(now / 1000);
  if (sec !== cachedSecond) {
    cachedSecond = sec;
    cachedPrefix = new Date(sec * 1000).toISOString().slice(0, 20);
  }
  const ms = now - sec * 1000;
  return `,"time":"${cachedPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
}

/** A logger that drops everything (tests and library defaults). */
export const silentLogger: Logger = pino({ level: 'silent' });

const S = pino.symbols;
/** Not in pino's type declarations (pino 10 has it: the `msgPrefix` option). */
const msgPrefixSym = (pino.symbols as unknown as Record<string, symbol | undefined>)['msgPrefixSym'];

/** The parts of a pino logger's state the hand-built line reads (pino 10). */
interface PinoInternals {
  [S.lsCacheSym]: Record<number, string>;
  [S.timeSym]: () => string;
  [S.chindingsSym]: string;
  [S.streamSym]: { write(s: string): unknown; [k: symbol]: unknown };
  [S.mixinSym]: unknown;
  [S.formattersSym]: { log?: unknown };
  [S.hooksSym]: { logMethod?: unknown; streamWrite?: unknown };
  [S.messageKeySym]: string;
  [S.nestedKeySym]: unknown;
  [S.endSym]: string;
  [S.serializersSym]: Record<string, ((v: unknown) => unknown) | undefined>;
  [S.stringifiersSym]: object;
}

/** Loggers the hand-built line reproduces exactly (no mixin, log formatter, hooks, redaction, nesting, prefix). */
const plainLoggers = new WeakMap<Logger, boolean>();

function isPlain(log: Logger): boolean {
  let plain = plainLoggers.get(log);
  if (plain === undefined) {
    const l = log as unknown as PinoInternals;
    const stream = l[S.streamSym];
    plain =
      l[S.mixinSym] === undefined &&
      l[S.formattersSym]?.log === undefined &&
      l[S.hooksSym]?.logMethod === undefined &&
      l[S.hooksSym]?.streamWrite === undefined &&
      l[S.messageKeySym] === 'msg' &&
      !l[S.nestedKeySym] &&
      (msgPrefixSym === undefined || (l as unknown as Record<symbol, unknown>)[msgPrefixSym] === undefined) &&
      l[S.endSym] === '}\n' &&
      typeof l[S.lsCacheSym]?.[30] === 'string' &&
      typeof l[S.chindingsSym] === 'string' &&
      Object.getOwnPropertySymbols(l[S.stringifiersSym] ?? {}).length === 0 &&
      Object.keys(l[S.stringifiersSym] ?? {}).length === 0 &&
      stream !== undefined &&
      stream[S.needsMetadataGsym] !== true &&
      log.levels.values['info'] === 30;
    plainLoggers.set(log, plain);
  }
  return plain;
}

type LineValue = string | number | boolean | undefined;

/**
 * `log.info(fields, msg)` for a line written very often with the same fields (the access
 * log, one line per HTTP request), built here rather than by pino's generic serializer: the
 * same bytes (level, time, the logger's bound fields, then the fields in the order of
 * `keys` with undefined ones left out, then msg), through the same destination. pino's
 * per-key path (own-property, serializer and stringifier lookups per field) was 4-5% of the
 * L7 path's CPU; a first hand-built version that walked a fields object still paid a
 * megamorphic lookup per key (floor step 5, docs/benchmarks/l7-cost.md). Here the keys'
 * JSON is made once and the values come as an array in the order of `keys`. A logger
 * configured with anything this does not reproduce (mixin, formatters.log, hooks,
 * redaction, a serializer for one of the keys) gets `log.info` itself.
 */
export class LineShape {
  private readonly prefixes: string[];
  private readonly tail: string;
  private readonly checked = new WeakMap<Logger, boolean>();

  constructor(
    readonly keys: readonly string[],
    readonly msg: string,
  ) {
    this.prefixes = keys.map((k) => `,${JSON.stringify(k)}:`);
    this.tail = `,"msg":${JSON.stringify(msg)}}\n`;
  }

  write(log: Logger, values: readonly LineValue[]): void {
    if (!log.isLevelEnabled('info')) return;
    let fast = this.checked.get(log);
    if (fast === undefined) {
      const serializers = (log as unknown as PinoInternals)[S.serializersSym];
      fast = isPlain(log) && this.keys.every((k) => serializers[k] === undefined);
      this.checked.set(log, fast);
    }
    if (!fast) {
      const fields: Record<string, LineValue> = {};
      for (let i = 0; i < this.keys.length; i++) fields[this.keys[i]!] = values[i];
      log.info(fields, this.msg);
      return;
    }
    const l = log as unknown as PinoInternals;
    const prefixes = this.prefixes;
    let s = l[S.lsCacheSym][30]! + l[S.timeSym]() + l[S.chindingsSym];
    for (let i = 0; i < prefixes.length; i++) {
      const v = values[i];
      if (v === undefined) continue;
      if (typeof v === 'string') s += prefixes[i]! + (PLAIN_JSON.test(v) ? `"${v}"` : JSON.stringify(v));
      else if (typeof v === 'number') s += prefixes[i]! + numberJson(v);
      else s += prefixes[i]! + (v ? 'true' : 'false');
    }
    l[S.streamSym].write(s + this.tail);
  }
}

/** Strings JSON writes as they are, between quotes: printable ASCII but `"` and `\`. */
const PLAIN_JSON = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/**
 * `JSON.stringify(v)` for a number. Integers and numbers with at most two decimals (the
 * access log's durations, rounded to 10 µs) are formatted from integers: the shortest
 * decimal that reads back as `q + r/100` is that decimal itself, which is what
 * `String(v)` writes, without its double-to-shortest conversion.
 */
export function numberJson(v: number): string {
  if ((v | 0) === v) return String(v);
  if (v > 0 && v < 1e7) {
    const h = Math.round(v * 100);
    if (h / 100 === v) {
      const q = Math.floor(h / 100);
      const r = h - q * 100;
      return r % 10 === 0 ? `${q}.${r / 10}` : `${q}.${r < 10 ? '0' : ''}${r}`;
    }
  }
  return Number.isFinite(v) ? String(v) : 'null';
}
