import t from 'tap';
import pino from 'pino';
import { isoTime, LineShape, numberJson } from '../../src/telemetry/log.js';

/** A pino logger writing into an array, with a fixed time so that two lines can be compared byte for byte. */
function capture(opts: pino.LoggerOptions = {}) {
  const lines: string[] = [];
  const log = pino({ level: 'info', base: { pid: 42 }, timestamp: () => ',"time":"2026-12-03T17:00:00.000Z"', ...opts }, { write: (s: string) => lines.push(s) });
  return { log, lines };
}

const fields = {
  protocol: 'http/1.1',
  method: 'GET',
  path: '/a?q="x"&b=\\é€😀\u0001\n',
  host: undefined,
  status: 200,
  grpc_status: undefined,
  attempts: 1,
  duration_ms: 0.37,
  nan: Number.NaN,
  // numbers the line formats itself (integers, up to two decimals) and ones it leaves to String()
  tenths: 12.5,
  hundredths: 0.05,
  whole: 7,
  negative: -2.25,
  huge: 1e21,
  third: 1 / 3,
  ok: true,
  no: false,
  error: undefined,
  reason: 'line\r\nbreak',
};

/** `shape.write` with the values of `f` by key, as the access log calls it. */
function writeLine(shape: LineShape, log: pino.Logger, f: Record<string, string | number | boolean | undefined>): void {
  shape.write(
    log,
    shape.keys.map((k) => f[k]),
  );
}

const shape = new LineShape(Object.keys(fields), 'access');

t.test('numbers are written as JSON.stringify writes them', async (t) => {
  // Durations as the access log rounds them (to 10 µs), over eight orders of magnitude.
  const wrong: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    const v = Math.round(Math.random() * 10 ** (i % 8) * 100_000) / 100;
    if (numberJson(v) !== JSON.stringify(v)) wrong.push(`${JSON.stringify(v)} -> ${numberJson(v)}`);
  }
  t.same(wrong, []);
  for (const v of [0, -0, 1, -1, 0.5, 0.1, 0.30000000000000004, 2 ** 31, -(2 ** 31), 9_999_999.99, 1e21]) t.equal(numberJson(v), JSON.stringify(v));
  t.equal(numberJson(Number.NaN), 'null');
  t.equal(numberJson(Number.POSITIVE_INFINITY), 'null');
});

t.test('the hand-built line is the line pino writes, byte for byte', async (t) => {
  const a = capture();
  const b = capture();
  const ca = a.log.child({ src_ip: '127.0.0.1', dst: '10.96.0.20:80', endpoint: undefined, security: 'none' });
  const cb = b.log.child({ src_ip: '127.0.0.1', dst: '10.96.0.20:80', endpoint: undefined, security: 'none' });
  ca.info(fields, 'access');
  writeLine(shape, cb, fields);
  writeLine(shape, cb, {});
  ca.info({}, 'access');
  t.equal(b.lines.length, 2);
  t.same(b.lines, a.lines);
  t.same(JSON.parse(b.lines[0]!), {
    level: 30,
    time: '2026-12-03T17:00:00.000Z',
    pid: 42,
    src_ip: '127.0.0.1',
    dst: '10.96.0.20:80',
    security: 'none',
    ...JSON.parse(JSON.stringify(fields)),
    nan: null,
    msg: 'access',
  });
  t.match(b.lines[0], /,"msg":"access"\}\n$/);
});

t.test("with the agent's time function too", async (t) => {
  const lines: string[] = [];
  const log = pino({ level: 'info', base: { pid: 1 }, timestamp: isoTime }, { write: (s: string) => lines.push(s) });
  writeLine(shape, log, { status: 503 });
  t.match(JSON.parse(lines[0]!), { level: 30, pid: 1, status: 503, msg: 'access' });
  t.ok(Date.now() - Date.parse(JSON.parse(lines[0]!).time) < 60_000, 'a current ISO time');
});

t.test('a logger configured beyond what the line reproduces gets pino itself', async (t) => {
  const a = capture({ mixin: () => ({ extra: 'mixed' }) });
  writeLine(shape, a.log.child({ x: 1 }), { status: 200 });
  t.match(JSON.parse(a.lines[0]!), { extra: 'mixed', x: 1, status: 200, msg: 'access' });
  const r = capture({ redact: ['path'] });
  writeLine(shape, r.log, { path: '/secret', status: 200 });
  t.equal(JSON.parse(r.lines[0]!).path, '[Redacted]');
  const f = capture({ formatters: { log: (o) => ({ ...o, formatted: true }) } });
  writeLine(shape, f.log, { status: 200 });
  t.equal(JSON.parse(f.lines[0]!).formatted, true);
  const s = capture({ serializers: { path: (p: string) => p.toUpperCase() } });
  writeLine(shape, s.log, { path: '/up', status: 200 });
  t.equal(JSON.parse(s.lines[0]!).path, '/UP', "a serializer for one of the line's keys is applied");
});

t.test('nothing is written below the level', async (t) => {
  const w = capture({ level: 'warn' });
  writeLine(shape, w.log, { status: 200 });
  t.same(w.lines, []);
});
