/**
 * Istio's security.istio.io AuthorizationPolicy, pasted: accepted by weft's CRD schema and by
 * a file's policies[], converted to weft's shape; what has no weft equivalent is refused by name.
 */
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import t from 'tap';
import { parse, parseAllDocuments } from 'yaml';
import { normalizeConfig } from '../../src/config/normalize.js';
import { ConfigError } from '../../src/errors.js';

// As in Istio's documentation, only the apiVersion changed.
const ISTIO = parse(`
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: httpbin, namespace: shop }
spec:
  selector:
    matchLabels: { app: api }
  action: ALLOW
  rules:
  - from:
    - source: { principals: ["cluster.local/ns/shop/sa/client"] }
    - source: { namespaces: ["ops"] }
    to:
    - operation: { methods: ["GET"], paths: ["/items/*"] }
    when:
    - key: source.ip
      values: ["10.0.0.0/8"]
    - key: destination.port
      notValues: ["9090"]
`) as { spec: Record<string, unknown> };

const WEFT = {
  selector: { app: 'api' },
  action: 'ALLOW',
  rules: [
    {
      from: [
        { principals: ['cluster.local/ns/shop/sa/client'], ipBlocks: ['10.0.0.0/8'] },
        { namespaces: ['ops'], ipBlocks: ['10.0.0.0/8'] },
      ],
      to: [{ methods: ['GET'], paths: ['/items/*'], notPorts: [9090] }],
    },
  ],
};

const mesh = (policy: Record<string, unknown>) => ({
  node: { name: 'node-a', address: '10.77.0.1' },
  namespaces: [{ name: 'shop', labels: { 'weft.io/mesh': 'enabled' } }],
  workloads: [{ name: 'api-0', namespace: 'shop', ip: '10.77.0.11', labels: { app: 'api' } }],
  policies: [{ name: 'httpbin', namespace: 'shop', ...policy }],
});

t.test("a file's policy in Istio's shape is weft's policy", async (t) => {
  const fromIstio = normalizeConfig(mesh(ISTIO.spec), 'test', { baseDir: '/' }).policies;
  const fromWeft = normalizeConfig(mesh(WEFT), 'test', { baseDir: '/' }).policies;
  t.same(fromIstio, fromWeft);
  t.same(fromIstio[0]!.selector, { app: 'api' });
});

t.test('what has no weft equivalent is refused by name, never dropped', async (t) => {
  const refused = (spec: Record<string, unknown>): string[] => {
    try {
      normalizeConfig(mesh(spec), 'test', { baseDir: '/' });
      return [];
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return err.problems;
    }
  };
  t.match(refused({ ...WEFT, action: 'AUDIT' }), [/policies\[0\]\.action: AUDIT is an Istio action/]);
  t.match(refused({ action: 'CUSTOM', provider: { name: 'ext' } }), [/CUSTOM/, /provider/]);
  t.match(refused({ selector: { matchLabels: { app: 'api' } }, rules: [{ when: [{ key: 'request.headers[x-user]', values: ['a'] }] }] }), [
    /policies\[0\]\.rules\[0\]\.when\[0\]\.key: request\.headers\[x-user\] has no weft equivalent.*refused rather than widened/,
  ]);
  t.match(refused({ rules: [{ from: [{ source: { principals: ['a'] }, namespaces: ['b'] }] }] }), [/source cannot be mixed with namespaces/]);
  t.match(refused({ rules: [{ from: [{ source: { namespaces: ['x'] } }], when: [{ key: 'source.namespace', values: ['y'] }] }] }), [/also set as from\[0\]\.namespaces/]);
  t.same(refused(WEFT), [], "weft's own shape passes");
});

t.test("the CRD's schema admits the Istio shape (nothing pruned) and still refuses nonsense", async (t) => {
  const crds = parseAllDocuments(readFileSync(new URL('../../deploy/kubernetes/crds.yaml', import.meta.url), 'utf8')).map((d) => d.toJS());
  const crd = crds.find((c) => c.spec.names.kind === 'AuthorizationPolicy');
  const schema = structuredClone(crd.spec.versions[0].schema.openAPIV3Schema.properties.spec);
  // What the API server prunes is an error here: close every object that lists properties.
  const close = (s: Record<string, any>) => {
    if (s.properties && s.additionalProperties === undefined && !s['x-kubernetes-preserve-unknown-fields']) s.additionalProperties = false;
    for (const v of Object.values(s.properties ?? {})) close(v as Record<string, any>);
    if (s.items) close(s.items);
  };
  close(schema);
  const ajv = new Ajv({ allErrors: true, strict: false });
  ajv.addVocabulary(['x-kubernetes-preserve-unknown-fields', 'x-kubernetes-validations', 'x-kubernetes-list-type', 'x-kubernetes-int-or-string']);
  const validate = ajv.compile(schema);
  t.ok(validate(ISTIO.spec), JSON.stringify(validate.errors));
  t.ok(validate(WEFT), JSON.stringify(validate.errors));
  t.notOk(validate({ rules: [{ when: [{ values: ['x'] }] }] }), 'a condition without a key');
  t.notOk(validate({ rules: [{ from: [{ source: { principalz: ['x'] } }] }] }), 'a misspelt source field');
  const sel = schema.properties.selector['x-kubernetes-validations'][0];
  t.match(sel.rule, /matchLabels/, 'a CEL rule checks the selector the schema cannot');
});
