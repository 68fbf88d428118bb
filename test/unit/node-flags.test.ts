// The agent's Node.js flags are written in three places that cannot import a constant: the
// bin script's shebang and the container image's entrypoint. They must say the same.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENT_NODE_FLAGS } from '../../src/node-flags.js';
import { repoRoot } from '../../src/repo-root.js';

t.test('bin/weft.js runs node with the agent flags', async (t) => {
  const first = readFileSync(join(repoRoot(), 'bin', 'weft.js'), 'utf8').split('\n')[0];
  t.equal(first, `#!/usr/bin/env -S node ${AGENT_NODE_FLAGS.join(' ')}`);
});

t.test('the container image runs node with the agent flags', async (t) => {
  const line = readFileSync(join(repoRoot(), 'deploy', 'Dockerfile'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith('ENTRYPOINT'));
  t.ok(line, 'the Dockerfile has an ENTRYPOINT');
  t.same(JSON.parse(line!.slice('ENTRYPOINT'.length)), ['node', ...AGENT_NODE_FLAGS, '/app/bin/weft.js']);
});

t.test('the flags are ones this node accepts', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, [...AGENT_NODE_FLAGS, '-e', 'process.exit(0)'], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
});
