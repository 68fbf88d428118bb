import pino from 'pino';

export type Logger = pino.Logger;

/** The agent's root logger: pino JSON on stdout. Components take `log.child({ component })`. */
export function createLogger(level = process.env.WEFT_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}

/** A logger that drops everything (tests and library defaults). */
export const silentLogger: Logger = pino({ level: 'silent' });
