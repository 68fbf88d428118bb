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
