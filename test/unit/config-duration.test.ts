import t from 'tap';
import { DurationError, formatDuration, isDuration, parseDuration } from '../../src/config/duration.js';

t.test('parses units and compounds', async (t) => {
  const cases: [string | number, number][] = [
    ['250ms', 250],
    ['5s', 5000],
    ['1m', 60_000],
    ['1h', 3_600_000],
    ['1.5s', 1500],
    ['1m30s', 90_000],
    ['2h45m', 9_900_000],
    ['1h1m1s1ms', 3_661_001],
    ['.5s', 500],
    ['1.1s', 1100],
    [' 10s ', 10_000],
    ['0', 0],
    [0, 0],
    ['0s', 0],
    ['0ms', 0],
  ];
  for (const [input, ms] of cases) t.equal(parseDuration(input), ms, JSON.stringify(input));
});

t.test('refuses bare numbers, bad units, bad order and sub-millisecond values', async (t) => {
  t.throws(() => parseDuration(5), { message: /5 has no unit: write e\.g\. "5ms" or "5s"/ });
  t.throws(() => parseDuration('5'), { message: /"5" has no unit/ });
  t.throws(() => parseDuration('5x'), { message: /"5x" is not a duration: use <number><unit> with units ms, s, m, h/ });
  t.throws(() => parseDuration('5 s'), { message: /is not a duration/ });
  t.throws(() => parseDuration('1d'), { message: /is not a duration/ });
  t.throws(() => parseDuration('-1s'), { message: /"-1s" is negative/ });
  t.throws(() => parseDuration('30s1m'), { message: /largest first/ });
  t.throws(() => parseDuration('1s1s'), { message: /largest first/ });
  t.throws(() => parseDuration('0.5ms'), { message: /finer than a millisecond/ });
  t.throws(() => parseDuration(''), { message: /is not a duration/ });
  t.throws(() => parseDuration(true), { message: /must be a duration like/ });
  t.throws(() => parseDuration(null), DurationError);
  t.equal(isDuration('1s'), true);
  t.equal(isDuration('1'), false);
});

t.test('formats back to what parses to the same value', async (t) => {
  t.equal(formatDuration(0), '0s');
  t.equal(formatDuration(250), '250ms');
  t.equal(formatDuration(1000), '1s');
  t.equal(formatDuration(1500), '1.5s');
  t.equal(formatDuration(90_000), '1m30s');
  t.equal(formatDuration(3_600_000), '1h');
  t.equal(formatDuration(3_600_250), '1h250ms');
  t.equal(formatDuration(86_400_000), '24h');
  for (const ms of [1, 999, 1001, 59_999, 60_001, 3_599_999, 3_600_001, 123_456_789]) {
    t.equal(parseDuration(formatDuration(ms)), ms, `round trip ${ms} (${formatDuration(ms)})`);
  }
});
