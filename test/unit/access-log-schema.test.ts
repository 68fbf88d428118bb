/**
 * The access log's schema has one source, src/telemetry/access-log.ts: the committed JSON
 * Schema (docs/access-log.schema.json) is generated from it, and docs/access-log.md documents
 * every field and every response flag it names. test/integration/access-log.test.ts checks
 * real lines against the JSON Schema.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { HTTP_ERRORS, type WeftErrorCode } from '../../src/errors.js';
import { repoRoot } from '../../src/repo-root.js';
import { ACCESS_LOG_FIELDS, accessLogJsonSchema, EXTRA_FLAGS, RESPONSE_FLAGS, responseFlags, upstreamCluster } from '../../src/telemetry/access-log.js';

const SCHEMA = join(repoRoot(), 'docs/access-log.schema.json');
const DOC = join(repoRoot(), 'docs/access-log.md');

t.test('docs/access-log.schema.json is generated from src/telemetry/access-log.ts', async (t) => {
  const text = `${JSON.stringify(accessLogJsonSchema(), null, 2)}\n`;
  if (process.env.WEFT_UPDATE_ACCESS_LOG) writeFileSync(SCHEMA, text);
  t.equal(readFileSync(SCHEMA, 'utf8'), text, 'up to date (WEFT_UPDATE_ACCESS_LOG=1 npx tap test/unit/access-log-schema.test.ts)');
});

t.test('docs/access-log.md documents every field and flag', async (t) => {
  const doc = readFileSync(DOC, 'utf8');
  for (const f of ACCESS_LOG_FIELDS) t.match(doc, new RegExp(`^\\| \`${f.name}\` \\| ${f.type} \\|`, 'm'), `field ${f.name} (${f.type}) has its row`);
  for (const [code, flag] of Object.entries(RESPONSE_FLAGS)) {
    const kind = HTTP_ERRORS[code as WeftErrorCode]!.header;
    t.match(doc, new RegExp(`^\\| \`${kind}\` \\| \`${flag}\` \\|`, 'm'), `${kind} -> ${flag} documented`);
  }
  for (const flag of Object.values(EXTRA_FLAGS)) t.match(doc, new RegExp(`^\\| .* \\| \`${flag}\` \\|`, 'm'), `${flag} documented`);
  t.match(doc, /access-log\.schema\.json/, 'links the JSON Schema');
});

t.test('every weft error kind an HTTP answer carries has an Envoy flag', async (t) => {
  for (const code of Object.keys(HTTP_ERRORS) as WeftErrorCode[]) t.ok(RESPONSE_FLAGS[code], `${code} has a flag`);
  t.equal(responseFlags(undefined), '-');
  t.equal(responseFlags('WEFT_ERR_CONNECT_FAILURE', ['URX']), 'UF,URX');
  t.equal(responseFlags(undefined, ['DC']), 'DC');
});

t.test('upstream_cluster in Istio form', async (t) => {
  t.equal(upstreamCluster('bookinfo/reviews:9080', false), 'outbound|9080||reviews.bookinfo.svc');
  t.equal(upstreamCluster('pod:10.77.0.11:8080', false), 'outbound|8080||10.77.0.11');
  t.equal(upstreamCluster('pod:10.77.0.11:8080', true), 'inbound|8080||');
});
