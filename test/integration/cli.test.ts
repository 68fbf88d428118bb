/**
 * The `weft` command as a user runs it (bin/weft.js on the built dist/): every subcommand
 * answers --help with its usage and exit 0, and a flag it does not know with one line on
 * stderr and exit 2, never a stack trace.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const WEFT = fileURLToPath(new URL('../../bin/weft.js', import.meta.url));

function weft(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  // `env -i`: tap wraps spawn to put its --import hooks in NODE_OPTIONS, and those print a
  // deprecation warning of their own on stderr.
  const r = spawnSync('env', ['-i', `PATH=${process.env['PATH'] ?? ''}`, process.execPath, WEFT, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const SUBCOMMANDS: string[][] = [[], ['agent'], ['ca'], ['ca', 'token'], ['ca', 'rotate-token-secret'], ['validate'], ['version']];

t.test('--help and -h: the usage on stdout, exit 0', async (t) => {
  for (const sub of SUBCOMMANDS) {
    for (const flag of ['--help', '-h']) {
      const r = weft(...sub, flag);
      const what = `weft ${[...sub, flag].join(' ')}`;
      t.equal(r.status, 0, `${what} exits 0`);
      t.match(r.stdout, /^usage:\n {2}weft /, `${what} prints a usage`);
      t.equal(r.stderr, '', `${what} prints nothing on stderr`);
    }
  }
  t.match(weft('agent', '--help').stdout, /--kubernetes[\s\S]*--pin-root[\s\S]*--no-capture/, 'the agent usage names its options');
  t.match(weft('ca', 'token', '--help').stdout, /weft ca token --state-dir DIR --node NAME/);
});

t.test('an unknown flag: one line on stderr, exit 2, no stack', async (t) => {
  for (const sub of SUBCOMMANDS) {
    const r = weft(...sub, '--bogus');
    const what = `weft ${[...sub, '--bogus'].join(' ')}`;
    t.equal(r.status, 2, `${what} exits 2`);
    t.equal(r.stdout, '', `${what} prints nothing on stdout`);
    t.equal(r.stderr.split('\n').filter(Boolean).length, 1, `${what} prints one line: ${JSON.stringify(r.stderr)}`);
    t.match(r.stderr, /'--bogus'/, `${what} names the flag`);
    t.notMatch(r.stderr, /TypeError|\n\s+at /, `${what} prints no stack`);
  }
});

t.test('other usage errors are one line and exit 2 as well', async (t) => {
  const cases: [string[], RegExp][] = [
    [['agent'], /--config FILE or --kubernetes is required/],
    [['agent', '--config'], /--config/],
    [['agent', '--config', 'a.yaml', '--kubernetes'], /two modes/],
    [['agent', '--config', 'a.yaml', 'extra'], /unexpected argument 'extra'/i],
    [['validate'], /a FILE is required/],
    [['validate', 'a.yaml', 'b.yaml'], /unexpected argument 'b.yaml'/],
    [['ca', 'token', '--node', 'x'], /--state-dir DIR and --node NAME are required/],
    [['ca', 'frobnicate'], /unknown subcommand 'frobnicate'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ];
  for (const [args, re] of cases) {
    const r = weft(...args);
    t.equal(r.status, 2, `weft ${args.join(' ')} exits 2`);
    t.equal(r.stderr.split('\n').filter(Boolean).length, 1, `one line: ${JSON.stringify(r.stderr)}`);
    t.match(r.stderr, re);
  }
});

t.test('version and validate still do their work', async (t) => {
  const v = weft('version');
  t.equal(v.status, 0);
  t.match(v.stdout, /^weft \d+\.\d+\.\d+\n$/);
  const dir = t.testdir({ 'mesh.yaml': 'node: { name: node-a, address: 127.0.0.1 }\nnamespaces:\n  - name: shop\n', 'bad.yaml': 'workloads:\n  - { name: a }\n' });
  const ok = weft('validate', `${dir}/mesh.yaml`);
  t.equal(ok.status, 0, ok.stderr);
  t.match(ok.stdout, /valid \(1 namespaces/);
  const bad = weft('validate', `${dir}/bad.yaml`);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /invalid/);
});
