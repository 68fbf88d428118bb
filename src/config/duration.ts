/**
 * Durations as the YAML spells them (`250ms`, `5s`, `1m30s`, `1.5s`, `1h`) and as
 * MeshConfig holds them (integer milliseconds).
 *
 * Bare numbers are refused, except 0: `timeout: 5` could mean 5 ms or 5 s, and guessing
 * wrong is worse than asking for a unit. `0` (number or string) is unambiguous and means
 * "none" wherever a field documents that 0 disables it.
 */

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const COMPONENT = /(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)/y;

/** A duration that could not be parsed; `message` says what is expected. */
export class DurationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DurationError';
  }
}

/**
 * Parse a duration into integer milliseconds.
 *
 * Accepts one or more `<number><unit>` components with units `ms`, `s`, `m`, `h`
 * (Go's `time.ParseDuration` without the sub-millisecond units), e.g. `250ms`, `1.5s`,
 * `1m30s`, `2h45m`; and `0` / `"0"`. Each unit may appear once, largest first.
 *
 * @throws DurationError for anything else: bare non-zero numbers, negative values,
 *   unknown units, or a result finer than a millisecond (`0.5ms`).
 */
export function parseDuration(value: unknown): number {
  if (typeof value === 'number') {
    if (value === 0) return 0;
    throw new DurationError(`${value} has no unit: write e.g. "${value}ms" or "${value}s" (only 0 may be written bare)`);
  }
  if (typeof value !== 'string') {
    throw new DurationError(`must be a duration like "250ms", "5s" or "1m30s"`);
  }
  const text = value.trim();
  if (text === '0') return 0;
  if (text === '') throw new DurationError(`"" is not a duration: write e.g. "250ms", "5s" or "1m30s"`);
  if (/^\d+(\.\d+)?$/.test(text)) {
    throw new DurationError(`"${text}" has no unit: write e.g. "${text}ms" or "${text}s"`);
  }
  if (text.startsWith('-')) throw new DurationError(`"${text}" is negative`);

  let total = 0;
  let pos = 0;
  let lastUnitMs = Infinity;
  COMPONENT.lastIndex = 0;
  while (pos < text.length) {
    COMPONENT.lastIndex = pos;
    const m = COMPONENT.exec(text);
    if (!m) {
      throw new DurationError(`"${text}" is not a duration: use <number><unit> with units ms, s, m, h (e.g. "250ms", "1m30s")`);
    }
    const unitMs = UNIT_MS[m[2]!]!;
    if (unitMs >= lastUnitMs) {
      throw new DurationError(`"${text}": units must appear once each, largest first (e.g. "1h2m3s")`);
    }
    lastUnitMs = unitMs;
    total += Number(m[1]) * unitMs;
    pos = COMPONENT.lastIndex;
  }
  // Float arithmetic: 1.1s is 1100.0000000000002 ms. Anything that close to whole is whole.
  const rounded = Math.round(total);
  if (Math.abs(total - rounded) > 1e-6) {
    throw new DurationError(`"${text}" is finer than a millisecond`);
  }
  if (!Number.isSafeInteger(rounded)) throw new DurationError(`"${text}" is too large`);
  return rounded;
}

/** True when `parseDuration(value)` would succeed. */
export function isDuration(value: unknown): boolean {
  try {
    parseDuration(value);
    return true;
  } catch {
    return false;
  }
}

/**
 * Format integer milliseconds the way the YAML would spell them: `0s`, `250ms`, `1.5s`,
 * `1m30s`, `1h`, `1h0m0.25s` is written `1h250ms`. `parseDuration(formatDuration(ms)) === ms`
 * for every non-negative integer. Used by config_dump so that dumped config reads like input.
 */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return String(ms);
  ms = Math.round(ms);
  if (ms === 0) return '0s';
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const restMs = ms % 60_000;
  let out = '';
  if (h) out += `${h}h`;
  if (m) out += `${m}m`;
  if (restMs) {
    // Below a second, or a ragged remainder after minutes: milliseconds read better than 0.25s.
    if (restMs < 1000) out += `${restMs}ms`;
    else out += `${restMs / 1000}s`;
  }
  return out;
}
