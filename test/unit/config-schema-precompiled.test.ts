/**
 * The build compiles the config schema into JavaScript (src/config/schema-build.ts) so that
 * the agent does not compile it at start-up. The precompiled validator must find exactly
 * the problems the schema compiled at run time finds, worded the same.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from '../../src/repo-root.js';
import * as compiled from '../../src/config/schema.js';

const built = join(repoRoot(), 'dist', 'src', 'config', 'schema.js');

const base = () => ({
  node: { name: 'node-a', address: '10.77.0.1' },
  namespaces: [{ name: 'shop' }],
  services: [{ name: 'api', namespace: 'shop', vip: '10.96.0.20', ports: [{ port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'api' } }],
});

const CASES: [string, unknown][] = [
  ['valid', base()],
  ['not a mapping', []],
  ['a misspelt key', { ...base(), agent: { wrkers: 2 } }],
  ['a bad address (format)', { ...base(), node: { name: 'node-a', address: '10.77.0' } }],
  ['a bad name (pattern)', { ...base(), node: { name: 'Node_A', address: '10.77.0.1' } }],
  ['a bad duration (keyword)', { ...base(), agent: { drainTimeout: '5 minutes' } }],
  ['a bad route method (keyword)', { ...base(), routes: [{ name: 'r', namespace: 'shop', parentRefs: [{ name: 'api' }], rules: [{ matches: [{ method: 'get' }] }] }] }],
  ['out of range, wrong type, enum', { ...base(), ports: { outbound: 70000, admin: 'x' }, agent: { logLevel: 'loud' } }],
  ['empty list, repeated items', { ...base(), services: [{ name: 'api', namespace: 'shop', vip: '10.96.0.20', ports: [], trafficPolicy: { retries: { retryOn: ['5xx', '5xx'] } } }] }],
  ['nothing set where one is needed', { ...base(), services: [{ name: 'api', namespace: 'shop', vip: '10.96.0.20', ports: [{ port: 80 }], trafficPolicy: { loadBalancer: { hashOn: {} } } }] }],
  ['required keys missing', { node: {}, workloads: [{}] }],
];

t.test('the precompiled validator finds what the compiled schema finds', async (t) => {
  if (!existsSync(join(repoRoot(), 'dist', 'src', 'config', 'schema-validator.cjs'))) {
    t.fail('dist/src/config/schema-validator.cjs is missing: run `npm run build` (scripts/build.sh writes it)');
    return;
  }
  const pre = (await import(pathToFileURL(built).href)) as typeof compiled;
  for (const [name, raw] of CASES) t.same(pre.schemaProblems(raw), compiled.schemaProblems(raw), name);
  t.equal(pre.schemaValidatorSource(), 'precompiled', 'the built module used the build-time validator');
  // These sources have no schema-validator.cjs beside them: the schema was compiled here.
  t.equal(compiled.schemaValidatorSource(), 'compiled', 'the comparison was against a run-time compile');
  t.ok(compiled.schemaProblems(CASES[2]![1]).length > 0 && compiled.schemaProblems(base()).length === 0, 'the cases tell valid from invalid');
});
