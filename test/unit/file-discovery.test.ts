import t, { type Test } from 'tap';
import { once } from 'node:events';
import { mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { FileDiscovery } from '../../src/discovery/file.js';
import type { MeshConfig } from '../../src/config/types.js';
import { ConfigError } from '../../src/errors.js';

const config = (address: string, extra = '') => `node: { name: node-a, address: ${address} }\n${extra}`;

/** A temp dir with mesh.yaml, a FileDiscovery on it (started), and captured log lines. */
async function setup(t: Test, opts: { pollMs?: number } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'weft-fd-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, config('10.0.0.1'));
  const lines: any[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  const d = new FileDiscovery(file, { log, debounceMs: 20, pollMs: opts.pollMs ?? 0, env: {} });
  t.teardown(() => d.stop());
  const first = await d.start();
  const events: [string, MeshConfig | ConfigError][] = [];
  d.on('update', (c: MeshConfig) => events.push(['update', c]));
  d.on('rejected', (e: ConfigError) => events.push(['rejected', e]));
  return { dir, file, d, first, lines, events };
}

/** The next `event`. Its timer also keeps the process alive: the watcher alone does not. */
function next(d: FileDiscovery, event: 'update' | 'rejected', ms = 3000): Promise<any> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    once(d, event).then(([v]) => v),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${event} within ${ms}ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('start loads the file; a valid change emits update', async (t) => {
  const { file, d, first, events } = await setup(t);
  t.equal(first.node.address, '10.0.0.1');
  t.equal(d.config, first);
  const updated = next(d, 'update');
  await writeFile(file, config('10.0.0.2'));
  const c: MeshConfig = await updated;
  t.equal(c.node.address, '10.0.0.2');
  t.equal(d.config, c);
  await sleep(150);
  t.equal(events.length, 1, 'one event for one change');
});

t.test('an invalid change is rejected and the last good config stays', async (t) => {
  const { file, d, first, lines } = await setup(t);
  const rejected = next(d, 'rejected');
  await writeFile(file, config('10.0.0.300', 'bogus: 1\n'));
  const err = await rejected;
  t.type(err, ConfigError);
  t.same(err.problems.sort(), [
    'bogus: unknown key; expected one of: node, nodes, mesh, ports, ca, stateDir, namespaces, workloads, services, requestAuthentications, policies, routes, agent',
    'node.address: must be an IPv4 address like 10.77.0.1 (got "10.0.0.300")',
  ]);
  t.equal(d.config, first, 'the last good config is still in force');
  const line = lines.find((l) => l.msg === 'config rejected, keeping last good config');
  t.ok(line, 'logged');
  t.equal(line.level, 50, 'at error level');
  t.same(line.problems, err.problems);

  // YAML syntax errors too.
  const again = next(d, 'rejected');
  await writeFile(file, 'node: [\n');
  t.match((await again).problems[0], /^line \d+, column \d+: /);

  // Then a fix is applied.
  const updated = next(d, 'update');
  await writeFile(file, config('10.0.0.3'));
  t.equal((await updated).node.address, '10.0.0.3');
});

t.test('atomic replacement by rename is detected, repeatedly', async (t) => {
  const { dir, file, d } = await setup(t);
  for (const addr of ['10.0.0.7', '10.0.0.8']) {
    const updated = next(d, 'update');
    const tmp = join(dir, `.mesh.yaml.${addr}.tmp`);
    await writeFile(tmp, config(addr));
    await rename(tmp, file);
    t.equal((await updated).node.address, addr);
  }
});

t.test('identical content emits nothing', async (t) => {
  const { dir, file, d, events } = await setup(t);
  await writeFile(file, config('10.0.0.1'));
  const tmp = join(dir, 'x.tmp');
  await writeFile(tmp, config('10.0.0.1'));
  await rename(tmp, file);
  await d.reload();
  await sleep(200);
  t.same(events, []);

  // A rejected change, then back to the content in force: still nothing new to apply.
  const rejected = next(d, 'rejected');
  await writeFile(file, 'nonsense: true\n');
  await rejected;
  await writeFile(file, config('10.0.0.1'));
  await sleep(200);
  t.same(
    events.map((e) => e[0]),
    ['rejected'],
  );
});

t.test('reload() re-reads now (SIGHUP)', async (t) => {
  const { file, d, events } = await setup(t);
  await writeFile(file, config('10.0.0.9'));
  await d.reload();
  t.same(
    events.map((e) => e[0]),
    ['update'],
    'applied before reload() resolved',
  );
  await sleep(150);
  t.equal(events.length, 1, 'the watch event that follows finds nothing new');
});

t.test('a missing file keeps the last good config; its return is picked up', async (t) => {
  const { file, d, first, events, lines } = await setup(t);
  await unlink(file);
  // The watch event, the debounce and the read that finds nothing: wait for the line they end in.
  const missing = () => lines.some((l) => l.msg === 'config file missing, keeping last good config');
  for (let i = 0; i < 250 && !missing(); i++) await sleep(20);
  t.ok(missing(), 'logged');
  t.same(events, []);
  t.equal(d.config, first);
  const updated = next(d, 'update');
  await writeFile(file, config('10.0.0.4'));
  t.equal((await updated).node.address, '10.0.0.4');
});

t.test('the stat poll catches changes without watch events', async (t) => {
  const { file, d } = await setup(t, { pollMs: 50 });
  // Silence the watch: only the poll can see the change now.
  (d as any).watcher?.close();
  (d as any).watcher = { close() {} };
  const updated = next(d, 'update');
  await writeFile(file, config('10.0.0.5'));
  t.equal((await updated).node.address, '10.0.0.5');
});

t.test('stop() ends watching', async (t) => {
  const { file, d, events } = await setup(t, { pollMs: 20 });
  await d.stop();
  await writeFile(file, config('10.0.0.6'));
  await sleep(150);
  t.same(events, []);
});

t.test('start rejects when there is no good config to start from', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-fd-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, 'node: { name: node-a }\n');
  const d = new FileDiscovery(file, { env: {} });
  await t.rejects(d.start(), { name: 'ConfigError', problems: ['node.address: is required'] });
  await t.rejects(new FileDiscovery(join(dir, 'nope.yaml')).start(), { name: 'ConfigError', problems: [/cannot read the config file: ENOENT/] });
});
