/**
 * What `weft agent` loads before it serves (issue 16, docs/benchmarks/startup.md): a restarted
 * agent must not spend its first hundreds of milliseconds loading libraries that serving does
 * not need. Importing the CLI and reading a plain config (no `${VAR}`) must load none of
 * these; each is loaded where it is used.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from '../../src/repo-root.js';

const HEAVY: Record<string, RegExp> = {
  'ajv (the schema is compiled at build time)': /node_modules\/ajv\/dist\/(ajv|core)\.js$/,
  'jose (loaded with the first RequestAuthentication)': /node_modules\/jose\//,
  'yaml (loaded for a config with ${VAR})': /node_modules\/yaml\//,
  '@peculiar/x509 (loaded with the identities, after serving)': /node_modules\/@peculiar\//,
  '@kubernetes/client-node (loaded with --kubernetes)': /node_modules\/@kubernetes\//,
};

t.test('the CLI and a plain config load no library that serving does not need', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-imports-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'weft.yaml');
  writeFileSync(config, 'node: { name: node-a, address: 10.77.0.1 }\nnamespaces:\n  - { name: shop }\n');
  // The control: with \${VAR} the yaml library is needed, and the hook sees it loaded (required).
  const withVar = join(dir, 'weft-var.yaml');
  writeFileSync(withVar, 'node: { name: node-a, address: "${WEFT_TEST_ADDRESS}" }\n');
  const dist = (p: string) => pathToFileURL(join(repoRoot(), 'dist', 'src', p)).href;
  const script = `
    import { registerHooks } from 'node:module';
    const urls = [];
    registerHooks({ load(url, ctx, next) { urls.push(url); return next(url, ctx); } });
    await import(${JSON.stringify(dist('cli.js'))});
    const { loadConfigFile } = await import(${JSON.stringify(dist('config/load.js'))});
    const cfg = await loadConfigFile(${JSON.stringify(config)});
    const { schemaValidatorSource } = await import(${JSON.stringify(dist('config/schema.js'))});
    const before = urls.length;
    process.env.WEFT_TEST_ADDRESS = '10.77.0.2';
    const withVar = await loadConfigFile(${JSON.stringify(withVar)});
    console.log(JSON.stringify({ urls: urls.slice(0, before), later: urls.slice(before), node: cfg.node.name, address: withVar.node.address, validator: schemaValidatorSource() }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { urls: string[]; later: string[]; node: string; address: string; validator: string };
  t.equal(out.node, 'node-a', 'the config was read');
  t.equal(out.validator, 'precompiled', 'and checked with the build-time validator');
  t.ok(
    out.urls.some((u) => u.endsWith('/dist/src/agent.js')),
    'the agent module was loaded (the hook sees what is imported)',
  );
  for (const [what, re] of Object.entries(HEAVY))
    t.notOk(
      out.urls.find((u) => re.test(u)),
      `not loaded: ${what}`,
    );
  t.equal(out.address, '10.77.0.2', 'a config with ${VAR} is read too');
  t.ok(
    out.later.some((u) => HEAVY['yaml (loaded for a config with ${VAR})']!.test(u)),
    'and loads the yaml library then: the hook sees what is required',
  );
});
