/**
 * What `npm pack` would ship: the built command and what it loads at run time (the same set
 * deploy/Dockerfile copies into the image), not the tests or the TypeScript sources.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const root = fileURLToPath(new URL('../..', import.meta.url));

t.test('package.json is private and its files are the runtime', async (t) => {
  const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8')) as { private?: boolean };
  t.equal(pkg.private, true, 'never published by accident (weft ships as an image)');
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const files = (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
  for (const need of ['bin/weft.js', 'dist/src/cli.js', 'dist/src/agent.js', 'build/Release/weft_bpf.node', 'build/bpf/splice.bpf.o', 'package.json']) {
    t.ok(files.includes(need), `ships ${need}`);
  }
  t.same(
    files.filter((f) => /^(test|bench|dist\/bench|native|bpf|scripts|deploy)\//.test(f)),
    [],
    'no tests, bench, sources of the addon or deploy files',
  );
  t.same(
    files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')),
    [],
    'no TypeScript sources',
  );
});
