import t, { type Test } from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parse } from 'yaml';
import { scaleConfig } from '../../bench/scale.js';
import { defaultConfigPath } from '../../src/config/default-config.js';
import { fastLoad, fastPathApplies } from '../../src/config/fast-yaml.js';
import { fastParse, parseConfig, parseConfigText, type ParseOptions } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { repoRoot } from '../../src/repo-root.js';
import type { TopoNode } from '../../src/sandbox/topology.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';
import { configProblems } from '../lib/config-problems.js';

/** Whether parseConfig takes js-yaml's value for `text` (as load.ts decides). */
const readByJsYaml = (text: string, env: ParseOptions['env'] = {}): boolean => fastParse(text, env) !== undefined;

/** What parsing gives: the MeshConfig, or the ConfigError's problems. */
function outcome(text: string, fast: boolean, opts: ParseOptions = { env: {} }): { config?: unknown; problems?: string[] } {
  try {
    return { config: parseConfigText(text, 'test.yaml', opts, { fast }) };
  } catch (err) {
    if (err instanceof ConfigError) return { problems: err.problems };
    throw err;
  }
}

/**
 * The fast path (js-yaml where it applies) and the slow one (the `yaml` library only) give
 * the same MeshConfig or the same problems. `fast` says whether js-yaml should have read the
 * text, so that a comparison cannot pass because both sides took the slow path.
 */
function same(t: Test, text: string, fast: boolean, what: string, opts?: ParseOptions): { config?: unknown; problems?: string[] } {
  const slow = outcome(text, false, opts);
  t.same(outcome(text, true, opts), slow, `${what}: the same either way`);
  t.equal(readByJsYaml(text, opts?.env), fast, `${what}: ${fast ? 'js-yaml reads it' : 'left to the yaml library'}`);
  return slow;
}

const NODE = 'node: { name: node-a, address: 10.77.0.1 }\n';

const problemsOf = configProblems;

t.test('the embedded default config, rendered and not', async (t) => {
  const template = readFileSync(defaultConfigPath(), 'utf8');
  const env = { WEFT_NODE: 'node-b', WEFT_NODE_ADDRESS: '10.77.1.1', CGROUP_ROOT: '/sys/fs/cgroup/weft', WEFT_STATE_DIR: '/tmp/weft-state' };
  // Its ${...} are quoted paths: js-yaml reads it and substitutes (no yaml library at start-up).
  const slow = same(t, template, true, 'the template', { env });
  t.ok(slow.config, 'the template is valid');
  // The same text with the variables written out: js-yaml reads it, to the same MeshConfig.
  const rendered = template.replace(/\$\{([A-Z_]+)(?::-[^}]*)?\}/g, (_, name: string) => env[name as keyof typeof env]);
  t.notMatch(rendered, /\$\{/);
  const fast = same(t, rendered, true, 'the rendered template', { env });
  t.same(fast, slow, 'rendering first changes nothing');
});

/** The YAML files under src/config, test, deploy and docs, and the ```yaml blocks of their and the README's Markdown. */
function yamlDocuments(): { name: string; text: string }[] {
  const root = repoRoot();
  const out: { name: string; text: string }[] = [];
  const add = (path: string): void => {
    const name = relative(root, path);
    const text = readFileSync(path, 'utf8');
    if (/\.ya?ml$/.test(path)) out.push({ name, text });
    else for (const [i, b] of [...text.matchAll(/^```ya?ml\n([\s\S]*?)^```/gm)].entries()) out.push({ name: `${name} block ${i + 1}`, text: b[1]! });
  };
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      if (statSync(path).isDirectory()) walk(path);
      else if (/\.(ya?ml|md)$/.test(entry)) add(path);
    }
  };
  for (const dir of ['src/config', 'test', 'deploy', 'docs']) walk(join(root, dir));
  add(join(root, 'README.md'));
  return out;
}

t.test('every YAML file and doc example in the repository', async (t) => {
  const docs = yamlDocuments();
  t.ok(docs.length >= 10, `${docs.length} documents`);
  for (const { name, text } of docs) {
    // Most are Kubernetes manifests, no MeshConfig: then the problems must be the same.
    t.same(outcome(text, true), outcome(text, false), name);
  }
  const fast = docs.filter((d) => readByJsYaml(d.text)).map((d) => d.name);
  t.ok(fast.length >= 5, `js-yaml reads ${fast.length} of them: ${fast.join(', ')}`);
  const readme = docs.find((d) => d.name === 'README.md block 1');
  t.ok(readme && outcome(readme.text, false).config, 'the README example is a valid config');
  t.ok(fast.includes('README.md block 1'), 'and js-yaml reads it');
});

t.test('the generated configs: bench scale and loopback test meshes', async (t) => {
  // scaleConfig uses only these fields of the node.
  const node = { name: 'node-s', address: '10.79.0.1', cgroup: '/sys/fs/cgroup/x' } as TopoNode;
  const scale = scaleConfig({ node, stateDir: '/tmp/s', remoteEndpoints: 2000, remoteNet: 80, localWorkloads: 300 });
  const out = same(t, scale, true, 'scale config');
  t.equal((out.config as { workloads: unknown[] }).workloads.length, 2300);
  const mesh = loopbackMesh(
    [
      { name: 'api-0', ip: '127.0.1.1', app: 'api', weight: 2 },
      { name: 'api-1', ip: '127.0.1.2', app: 'api', ready: false },
    ],
    [{ name: 'api', vip: '10.96.0.20', app: 'api', policy: '{ loadBalancer: { type: least-request }, timeout: 2s }' }],
  );
  same(t, mesh, true, 'loopback mesh');
});

t.test('styles: flow and block, quoting, booleans, numbers, multi-line strings', async (t) => {
  const block = `${NODE}namespaces:
  - name: shop
    labels:
      weft.io/mesh: enabled
      tier: "1"
      zone: '2'
      release: 2024-01-01
      legacy: yes
      canary: no
      mode: on
    peerAuthentication: permissive
workloads:
  - name: api-0
    namespace: shop
    ip: 10.77.0.11
    serviceAccount: api
    ready: false
    weight: 0x10
    labels: { app: api, "version": "1.0", build: "007" }
services:
  - name: api
    namespace: shop
    vip: 10.96.0.20
    ports:
      - { port: 80, targetPort: 8080, protocol: http }
      - port: 9000
        targetPort: 0o11610
        protocol: tcp
    selector:
      app: api
    trafficPolicy:
      timeout: 1m30s
      retries: { attempts: 3, retryOn: [connect-failure, 5xx] }
      healthCheck:
        type: http
        path: >-
          /health
          z
        interval: 5s
        timeout: 2s
policies:
  - name: readers
    namespace: shop
    selector: { app: api }
    action: ALLOW
    rules:
      - to:
          - paths: ["/items/*", '/api/*', /x/*]
            methods: [GET]
`;
  const out = same(t, block, true, 'block and flow styles');
  t.ok(out.config, JSON.stringify(out.problems));
  const config = out.config as { namespaces: { labels: Record<string, string> }[]; workloads: { weight: number; labels: Record<string, string> }[] };
  t.same(config.namespaces[0]!.labels, { 'weft.io/mesh': 'enabled', tier: '1', zone: '2', release: '2024-01-01', legacy: 'yes', canary: 'no', mode: 'on' });
  t.equal(config.workloads[0]!.weight, 16);
  t.same(config.workloads[0]!.labels, { app: 'api', version: '1.0', build: '007' });

  // Multi-line strings in every style, checked on the raw values (no config field takes them).
  const strings = `${NODE}x:
  literal: |
    line one
      indented

    after a blank
  keep: |+
    kept

  folded: >
    folded
    together

    paragraph
  plain: a plain
    string going on
  double: "a \\"double\\"
    string\\tescaped \\u00e9"
  single: 'it''s
    single'
  crlf: "x"\r
`;
  t.ok(fastLoad(strings), 'js-yaml reads them');
  t.same(fastLoad(strings)!.value, parse(strings), 'as the yaml library does');
});

t.test('scalars resolve as the yaml library resolves them (YAML 1.2 core)', async (t) => {
  const forms = [
    '1',
    '-1',
    '+1',
    '012',
    '0o17',
    '0O17',
    '0x1F',
    '0X1F',
    '-0x1F',
    '0b11',
    '1_000',
    '1.5',
    '1.',
    '.5',
    '-.5',
    '+.5',
    '1e3',
    '1E+3',
    '-1.5e-3',
    '.inf',
    '-.inf',
    '+.Inf',
    '.NaN',
    '.nan',
    'nan',
    'true',
    'True',
    'TRUE',
    'tRue',
    'false',
    'yes',
    'no',
    'on',
    'off',
    'y',
    'n',
    'null',
    'Null',
    'NULL',
    'nUll',
    '~',
    '2024-01-01',
    '2001-12-14t21:59:43.10-05:00',
    '12:30:00',
    '190:20:30',
    '123456789012345678901',
    '"1"',
    "'true'",
    '<<',
  ];
  // As list entries and as map values (an empty value too; an empty list entry is the slow path's).
  const text = `v:\n${forms.map((f) => `  - ${f}\n`).join('')}m:\n${[...forms, ''].map((f, i) => `  k${i}: ${f}\n`).join('')}`;
  t.ok(fastLoad(text), 'js-yaml reads them');
  t.same(fastLoad(text)!.value, parse(text));
  const v = (fastLoad(text)!.value as { v: unknown[] }).v;
  const as = (form: string): unknown => v[forms.indexOf(form)];
  t.equal(as('0o17'), 15);
  t.equal(as('0O17'), '0O17', 'the prefix is lower case only');
  t.equal(as('-0x1F'), '-0x1F', 'hex has no sign');
  t.equal(as('0b11'), '0b11', 'no binary');
  t.equal(as('1_000'), '1_000', 'no digit separators');
  t.equal(as('-.5'), -0.5);
  t.equal(as('2024-01-01'), '2024-01-01', 'no timestamps');
  t.equal(as('yes'), 'yes', 'YAML 1.2: yes is a string');
  t.equal(as('True'), true);
  t.equal(as('nUll'), 'nUll');
  t.equal(as('<<'), '<<', 'a merge key only as a key');
});

t.test('`<<` merges, as the yaml library does', async (t) => {
  // Without an alias (an inline map) js-yaml reads it ...
  const inline = `${NODE}mesh:\n  <<: { trustDomain: a.local }\nagent:\n  logLevel: debug\n  <<:\n    - { logLevel: info, drainTimeout: 5s }\n    - { drainTimeout: 9s }\n`;
  const out = same(t, inline, true, 'inline merge');
  t.match(out.config, { mesh: { trustDomain: 'a.local' }, agent: { logLevel: 'debug', drainTimeout: 5000 } });

  // ... with anchors and aliases the yaml library does (see fast-yaml.ts on aliases).
  const anchored = `${NODE}namespaces:
  - { name: shop, labels: &meshed { weft.io/mesh: enabled } }
  - { name: shop2, labels: *meshed }
workloads:
  - &api { name: api-0, namespace: shop, ip: 10.77.0.11, serviceAccount: api, labels: { app: api } }
  - { <<: *api, name: api-1, ip: 10.77.0.12 }
services:
  - name: api
    namespace: shop
    vip: 10.96.0.20
    ports: [ { port: 80, targetPort: 8080, protocol: http } ]
    selector: { app: api }
    trafficPolicy: &policy
      timeout: 2s
      retries: { attempts: 2 }
  - name: api2
    namespace: shop2
    vip: 10.96.0.21
    ports: [ { port: 80, targetPort: 8080, protocol: http } ]
    selector: { app: api }
    trafficPolicy:
      <<: *policy
      timeout: 3s
`;
  const merged = same(t, anchored, false, 'anchors, aliases and merges');
  t.ok(merged.config, JSON.stringify(merged.problems));
  const config = merged.config as {
    namespaces: { labels: object }[];
    workloads: { name: string; ip: string; serviceAccount: string }[];
    services: { trafficPolicy: { timeout: number; retries: { attempts: number } } }[];
  };
  t.same(config.namespaces[1]!.labels, { 'weft.io/mesh': 'enabled' });
  t.match(config.workloads[1], { name: 'api-1', ip: '10.77.0.12', serviceAccount: 'api' });
  t.match(config.services[1]!.trafficPolicy, { timeout: 3000, retries: { attempts: 2 } });
  // `"<<"` quoted is a plain key for both (and so an unknown key).
  same(t, `${NODE}mesh:\n  "<<": { trustDomain: a.local }\n`, true, 'a quoted <<');
});

t.test('YAML errors: the same problems, with line and column, whichever path', async (t) => {
  const cases: [string, string, string[]][] = [
    ['duplicate key', `${NODE}mesh:\n  trustDomain: a\n  trustDomain: b\n`, ['line 4, column 3: Map keys must be unique']],
    ['duplicate key in a flow map', `node: { name: a, address: 10.77.0.1, name: b }\n`, ['line 1, column 38: Map keys must be unique']],
    [
      'bad indentation',
      `node:\n  name: a\n    address: 10.77.0.1\n`,
      ['line 2, column 9: Nested mappings are not allowed in compact mappings', 'line 2, column 9: Implicit keys need to be on a single line'],
    ],
    ['a tab as indentation', `${NODE}mesh:\n\ttrustDomain: a\n`, ['line 3, column 1: Tabs are not allowed as indentation']],
    ['an unclosed flow map', `${NODE}mesh: { trustDomain: a\nnamespaces: []\n`, ['line 3, column 1: Flow map in block collection must be sufficiently indented and end with a }']],
    [
      'a flow list continued at column 1',
      `${NODE}namespaces: [\n{ name: shop }]\n`,
      [
        'line 3, column 1: Flow sequence in block collection must be sufficiently indented and end with a ]',
        'line 3, column 1: Implicit map keys need to be followed by map values',
        'line 3, column 15: Unexpected flow-seq-end token in YAML stream: "]"',
      ],
    ],
    ['two documents', `${NODE}---\n${NODE}`, ['line 2, column 1: Source contains multiple documents; please use YAML.parseAllDocuments()']],
  ];
  for (const [what, text, problems] of cases) {
    const slow = outcome(text, false);
    t.same(slow.problems, problems, `${what}: the yaml library's problems`);
    t.same(problemsOf(text), problems, `${what}: parseConfig gives them`);
    t.equal(fastLoad(text), undefined, `${what}: not read by js-yaml`);
  }
  // These reach js-yaml, which rejects them: the yaml library then says where.
  t.ok(fastPathApplies(cases[0]![1]), "a duplicate key is js-yaml's to find");
  t.ok(fastPathApplies(cases[4]![1]), 'so is an unclosed flow map');
  t.ok(fastPathApplies(cases[5]![1]), 'and an under-indented flow list (js-yaml only warns: a refusal here)');

  t.same(problemsOf(''), ['(top level): the config is empty; it needs at least node: { name, address }']);
  t.same(problemsOf('# only a comment\n'), ['(top level): the config is empty; it needs at least node: { name, address }']);
  t.same(problemsOf('- a\n'), ['(top level): must be a mapping (got a list)']);
  same(t, 'just a string\n', false, 'a top-level string');
});

t.test('a billion-laughs document: refused at once, as before', async (t) => {
  // 10 levels of 9 aliases each: 9^10 (3.5 billion) strings if expanded.
  const lines = ['x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]'];
  for (let i = 1; i <= 10; i++)
    lines.push(
      `x${i}: &a${i} [${Array(9)
        .fill(`*a${i - 1}`)
        .join(', ')}]`,
    );
  const bomb = `${NODE}${lines.join('\n')}\n`;
  t.same(problemsOf(bomb), ['Excessive alias count indicates a resource exhaustion attack']);
  t.same(outcome(bomb, false).problems, ['Excessive alias count indicates a resource exhaustion attack'], "the yaml library's own message");
  t.equal(fastLoad(bomb), undefined, 'js-yaml never sees it');
  // The yaml library's limit, which js-yaml has no equivalent for, also refuses a plain
  // anchor used more than 1000 times: that stays so.
  const many = `${NODE}ns: &ns shop\nx: [${Array(1001).fill('*ns').join(', ')}]\n`;
  t.same(problemsOf(many), ['Excessive alias count indicates a resource exhaustion attack']);
  // And a map merged into itself, which the yaml library refuses and js-yaml skips.
  const selfMerge = `${NODE}mesh: &m\n  trustDomain: a\n  <<: *m\n`;
  same(t, selfMerge, false, 'a merge of the map into itself');
  t.same(problemsOf(selfMerge), ['Excessive alias count indicates a resource exhaustion attack']);
});

t.test('what js-yaml would read differently is left to the yaml library', async (t) => {
  const cases: [string, string][] = [
    ['%YAML 1.1 makes yes a boolean', `%YAML 1.1\n---\n${NODE}x: yes\n`],
    ['a null key ("" against "null")', `${NODE}namespaces:\n  - name: shop\n    labels: { null: x }\n`],
    ['an empty key', `${NODE}namespaces:\n  - name: shop\n    labels:\n      : x\n`],
    ['a flow list as a key', `${NODE}namespaces:\n  - name: shop\n    labels: { [a, b]: x }\n`],
    ['a flow map entry that is a list', `${NODE}namespaces:\n  - name: shop\n    labels: { [a, b] }\n`],
    ['an explicit key', `${NODE}namespaces:\n  - name: shop\n    labels:\n      ? app\n      : x\n`],
    ['a tag', `${NODE}namespaces:\n  - name: shop\n    labels: { app: !!str 1 }\n`],
    ['a byte order mark', `\uFEFF  ${NODE}`],
    ['a block scalar with an indentation indicator', `${NODE}x: |2\n    a\n\n`],
    ['an empty entry in a nested list', `${NODE}x:\n  -\n    - # nothing\n  - b\n`],
    ['a comment glued to a flow map', `${NODE}x: { a: 1 }#c\n`],
    ['an implicit key over 1024 characters', `${NODE}${'k'.repeat(1100)}: v\n`],
  ];
  for (const [what, text] of cases) {
    t.notOk(fastPathApplies(text), what);
    t.same(outcome(text, true), outcome(text, false), `${what}: the same outcome`);
  }
  t.match(outcome(`%YAML 1.1\n---\n${NODE}`, true).config, { node: { name: 'node-a' } }, 'a YAML 1.1 document still loads');
  // Where it matters: under YAML 1.1 `yes` is true, no label value; js-yaml would say "yes".
  const yes = `%YAML 1.1\n---\n${NODE}namespaces:\n  - name: shop\n    labels: { legacy: yes }\n`;
  t.match(problemsOf(yes), [/^namespaces\[0\]\.labels\.legacy: /]);
  t.same(problemsOf(yes.replace('%YAML 1.1\n---\n', '')), [], 'YAML 1.2 (no directive): a string');
});

t.test('${VAR}: js-yaml and substitution where that gives what the yaml library gives', async (t) => {
  const text = 'node:\n  name: ${NODE_NAME}\n  address: 10.77.0.1\nports:\n  admin: ${ADMIN:-15000}\n';
  t.ok(fastLoad(text) !== undefined, 'js-yaml reads the text');
  const config = parseConfig(text, 'test.yaml', { env: { NODE_NAME: 'node-z', ADMIN: '16000' } });
  t.equal(config.node.name, 'node-z', 'substituted');
  t.equal(config.ports.admin, 16000, 'an unquoted value typed after substitution');
  t.notOk(readByJsYaml(text, { NODE_NAME: 'node-z', ADMIN: '16000' }), 'by the yaml library: a number result needs the scalar style');
  t.ok(readByJsYaml(text.replace('${ADMIN:-15000}', '16000'), { NODE_NAME: 'node-z' }), 'a name: by js-yaml');
  t.same(problemsOf('node:\n  name: ${UNSET_X}\n  address: 10.77.0.1\n'), ['node.name (line 2): environment variable UNSET_X is not set (write ${UNSET_X:-default} to give a default)']);

  // Every form of reference and value, each way: the same MeshConfig or the same problems.
  const forms = [
    'name: ${V}',
    'name: "${V}"',
    "name: '${V}'",
    'name: x${V}y',
    'name: "${V}-${W}"',
    'name: ${V:-dflt}',
    'name: ${V:-}',
    'name: "$${V}"',
    'name: "${V"',
    'name: |\n    ${V}',
    'name: >-\n    ${V}\n    ${W}',
    'name: ${V} # ${UNSET_IN_COMMENT}',
    'name: "${V}"\n  ${W}: key',
  ];
  const names = [undefined, '', 'node-q', '10.1.2.3', '/sys/fs/cgroup/x'];
  const typed = ['123', '-1', '0x1f', '1e3', '.inf', 'true', 'False', 'null', '~'];
  const syntax = ['a b', '1 #c', 'a: b', '[1]', '"q"', '$x', '${V}', 'x\ny'];
  const values: (string | undefined)[] = [...names, ...typed, ...syntax];
  let fast = 0;
  for (const form of forms)
    for (const v of values) {
      const doc = `node:\n  ${form}\n  address: "\${ADDR:-10.77.0.1}"\nnamespaces: [{ name: shop, labels: { l: "\${W:-w}" } }]\n`;
      const env = { ...(v === undefined ? {} : { V: v }), W: 'w1' };
      const slow = outcome(doc, false, { env });
      t.same(outcome(doc, true, { env }), slow, `${JSON.stringify(form)} with V=${JSON.stringify(v)}`);
      if (readByJsYaml(doc, env)) fast++;
    }
  t.ok(fast > 20, `js-yaml read ${fast} of the ${forms.length * values.length} (the comparisons are not all the yaml library's against itself)`);
});
