import t from 'tap';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { LineBuffer } from '../../src/telemetry/line-buffer.js';

const dir = mkdtempSync(join(tmpdir(), 'weft-linebuf-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The file's lines once it holds `n` whole ones (or what it holds after 10 s). */
async function linesOnceComplete(file: string, n: number): Promise<string[]> {
  const read = () => readFileSync(file, 'utf8');
  for (let i = 0; i < 500; i++) {
    const text = read();
    if (text.endsWith('\n') && text.split('\n').length - 1 >= n) break;
    await sleep(20);
  }
  return read().trimEnd().split('\n');
}

t.test('lines arrive whole and in order, across many buffers, within the flush interval', async (t) => {
  const file = join(dir, 'order.log');
  const fd = openSync(file, 'w');
  t.teardown(() => closeSync(fd));
  const lb = new LineBuffer(fd);
  const n = 5000;
  for (let i = 0; i < n; i++) lb.write(`{"i":${i},"pad":"${'x'.repeat(i % 97)}","u":"é€😀"}\n`);
  // The full buffers are written one after another, the rest by the periodic flush, all with
  // asynchronous writes (the thread pool): wait for the last line, not for a time.
  const lines = await linesOnceComplete(file, n);
  t.equal(lines.length, n, 'every line written (periodic flush)');
  t.ok(
    lines.every((l, i) => JSON.parse(l).i === i && JSON.parse(l).u === 'é€😀'),
    'in order, multi-byte characters intact',
  );
});

t.test('a line larger than a buffer', async (t) => {
  const file = join(dir, 'big.log');
  const fd = openSync(file, 'w');
  t.teardown(() => closeSync(fd));
  const lb = new LineBuffer(fd);
  lb.write('first\n');
  lb.write(`${'y'.repeat(200_000)}\n`);
  lb.write('last\n');
  lb.flush();
  const lines = await linesOnceComplete(file, 3);
  t.same([lines[0], lines[1]!.length, lines[2]], ['first', 200_000, 'last']);
});

t.test('what is buffered is written when the process exits', async (t) => {
  const file = join(dir, 'exit.log');
  const mod = fileURLToPath(new URL('../../src/telemetry/line-buffer.ts', import.meta.url));
  const script = `import { openSync } from 'node:fs'; import { LineBuffer } from ${JSON.stringify(mod)};
const lb = new LineBuffer(openSync(${JSON.stringify(file)}, 'w'));
for (let i = 0; i < 1000; i++) lb.write('line ' + i + '\\n');
process.exit(3);`;
  const r = spawnSync(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(r.status, 3, r.stderr);
  const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
  t.equal(lines.length, 1000);
  t.equal(lines[999], 'line 999');
});
