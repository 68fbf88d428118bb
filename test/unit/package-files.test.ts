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
  const need = ['bin/weft.js', 'dist/bundle/cli.js', 'dist/bundle/worker.js', 'dist/bundle/schema-validator.cjs', 'build/Release/weft_bpf.node', 'build/bpf/splice.bpf.o', 'package.json'];
  for (const f of need) t.ok(files.includes(f), `ships ${f}`);
  // Every file of the bundle the entry imports, directly or through another chunk.
  const chunks = files.filter((f) => /^dist\/bundle\/chunk-[^/]+\.js$/.test(f));
  t.ok(chunks.length > 0, 'ships the chunks of the bundle');
  t.same(
    files.filter((f) => /^(test|bench|dist\/bench|dist\/src|native|bpf|scripts|deploy)\//.test(f)),
    [],
    'no tests, bench, unbundled dist/src (bin/weft.js runs the bundle), sources of the addon or deploy files',
  );
  t.same(
    files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')),
    [],
    'no TypeScript sources',
  );
});
