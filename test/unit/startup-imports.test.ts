/**
 * What `weft agent` loads before it serves (issue 16, docs/benchmarks/startup.md): a restarted
 * agent must not spend its first hundreds of milliseconds loading libraries that serving does
 * not need. The agent runs from its bundle (dist/bundle/, scripts/bundle.js): importing the
 * bundle's CLI and reading a config (plain, or with `${VAR}` in quoted paths as the embedded
 * default has) must load none of these, neither as
 * files of node_modules nor inside a chunk of the bundle (esbuild's metafile says which
 * sources each chunk holds); each is loaded where it is used.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { repoRoot } from '../../src/repo-root.js';

const HEAVY: Record<string, RegExp> = {
  'ajv (the schema is compiled at build time)': /(^|\/)node_modules\/ajv\/dist\/(ajv|core)\.js$/,
  'jose (loaded with the first RequestAuthentication)': /(^|\/)node_modules\/jose\//,
  'yaml (loaded for a config with ${VAR} that js-yaml cannot substitute)': /(^|\/)node_modules\/yaml\//,
  '@peculiar/x509 (loaded with the identities, after serving)': /(^|\/)node_modules\/@peculiar\//,
  '@kubernetes/client-node (loaded with --kubernetes)': /(^|\/)node_modules\/@kubernetes\//,
};

interface Meta {
  outputs: Record<string, { inputs: Record<string, unknown> }>;
}

t.test('the bundled CLI and a config load no library that serving does not need', async (t) => {
  const root = repoRoot();
  const meta = JSON.parse(readFileSync(join(root, 'dist', 'bundle.meta.json'), 'utf8')) as Meta;
  /** The sources a loaded file stands for, relative to the repository: a chunk's inputs, or the file itself. */
  const sources = (urls: string[]): string[] =>
    urls.flatMap((u) => {
      if (!u.startsWith('file:')) return [];
      const rel = relative(root, fileURLToPath(u));
      return meta.outputs[rel] ? Object.keys(meta.outputs[rel].inputs) : [rel];
    });
  const dir = mkdtempSync(join(tmpdir(), 'weft-imports-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'weft.yaml');
  writeFileSync(config, 'node: { name: node-a, address: 10.77.0.1 }\nnamespaces:\n  - { name: shop }\n');
  // As the embedded default: \${VAR} in a quoted value (substituted in js-yaml's value).
  const quotedVar = join(dir, 'weft-quoted-var.yaml');
  writeFileSync(quotedVar, 'node: { name: node-a, address: "${WEFT_TEST_ADDRESS}" }\nnamespaces:\n  - { name: shop }\n');
  // The control: an unquoted \${VAR} that becomes a number needs the yaml library (the scalar's
  // style decides the type), and the hook sees it loaded (required).
  const withVar = join(dir, 'weft-var.yaml');
  writeFileSync(withVar, 'node: { name: node-a, address: 10.77.0.1 }\nports:\n  admin: ${WEFT_TEST_PORT}\n');
  const cli = pathToFileURL(join(root, 'dist', 'bundle', 'cli.js')).href;
  const script = `
    import { registerHooks } from 'node:module';
    const urls = [];
    registerHooks({ load(url, ctx, next) { urls.push(url); return next(url, ctx); } });
    const { main } = await import(${JSON.stringify(cli)});
    const plain = await main(['validate', ${JSON.stringify(config)}]);
    process.env.WEFT_TEST_ADDRESS = '10.77.0.2';
    const quotedVar = await main(['validate', ${JSON.stringify(quotedVar)}]);
    const before = urls.length;
    process.env.WEFT_TEST_PORT = '15999';
    const withVar = await main(['validate', ${JSON.stringify(withVar)}]);
    console.log(JSON.stringify({ urls: urls.slice(0, before), later: urls.slice(before), plain, quotedVar, withVar }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  const out = JSON.parse(lines.pop()!) as { urls: string[]; later: string[]; plain: number; quotedVar: number; withVar: number };
  t.equal(out.plain, 0, 'the plain config was read and is valid');
  t.equal(out.quotedVar, 0, 'so was the one with a quoted ${VAR}');
  t.match(lines[0], /valid \(1 namespaces/, 'weft validate said so');
  t.match(lines[1], /valid \(1 namespaces/, 'for both');
  const loaded = sources(out.urls);
  t.ok(loaded.includes('dist/src/agent.js'), 'the agent module was loaded (the hook sees what is imported)');
  t.ok(loaded.includes('dist/bundle/schema-validator.cjs'), 'the config was checked with the build-time validator (no ajv compile)');
  const files = out.urls.filter((u) => u.startsWith('file:')).map((u) => relative(root, fileURLToPath(u)));
  t.same(
    files.filter((f) => f.startsWith('dist/') && !f.startsWith('dist/bundle/')),
    [],
    'nothing of dist/ was loaded but the bundle (no second copy of a module from dist/src)',
  );
  for (const [what, re] of Object.entries(HEAVY))
    t.notOk(
      loaded.find((f) => re.test(f)),
      `not loaded: ${what}`,
    );
  t.equal(out.withVar, 0, 'a config with an unquoted ${VAR} is read too');
  t.ok(
    sources(out.later).some((f) => HEAVY['yaml (loaded for a config with ${VAR} that js-yaml cannot substitute)']!.test(f)),
    'and loads the yaml library then: the hook sees what is required',
  );
});
