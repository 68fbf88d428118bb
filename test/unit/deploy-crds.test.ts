/**
 * The weft CRDs (deploy/kubernetes/crds.yaml, and its copy deploy/helm/weft/crds/crds.yaml)
 * are generated from the file loader's schema (src/config/schema.ts), so that a TrafficPolicy
 * admits exactly the keys and ranges a file's `trafficPolicy:` does. This test regenerates
 * them and fails on any difference; to update the files after a schema change:
 *
 *   WEFT_UPDATE_CRDS=1 npx tap test/unit/deploy-crds.test.ts
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { parseAllDocuments, stringify } from 'yaml';
import { CONFIG_SCHEMA } from '../../src/config/schema.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KUSTOMIZE_CRDS = path.join(ROOT, 'deploy/kubernetes/crds.yaml');
const HELM_CRDS = path.join(ROOT, 'deploy/helm/weft/templates/crds.yaml');

type Schema = Record<string, any>;

/** Kubernetes validates `pattern` with Go's RE2 (no lookaround): such patterns are left to weft. */
const RE2_UNSUPPORTED = /\(\?[=!<]/;
const DURATION = {
  type: 'string',
  pattern: '^(0|([0-9]+(\\.[0-9]+)?|\\.[0-9]+)(h|m|s|ms)(([0-9]+(\\.[0-9]+)?|\\.[0-9]+)(h|m|s|ms))*)$',
  description: 'A duration: 250ms, 1.5s, 1m30s, 2h; "0" where 0 disables.',
};

/** An ajv (JSON Schema) node of CONFIG_SCHEMA -> a structural OpenAPI v3 schema node. */
export function toOpenApi(s: Schema): Schema {
  if (s.weftDuration) return { ...DURATION };
  const out: Schema = {};
  if (typeof s.message === 'string') out.description = s.message.replace(/^must be /, 'Must be ');
  for (const key of ['type', 'enum', 'minimum', 'maximum', 'minLength', 'minItems', 'minProperties', 'format'] as const) {
    if (s[key] !== undefined) out[key] = s[key];
  }
  if (typeof s.exclusiveMinimum === 'number') {
    out.minimum = s.exclusiveMinimum;
    out.exclusiveMinimum = true;
  }
  if (typeof s.pattern === 'string' && !RE2_UNSUPPORTED.test(s.pattern)) out.pattern = s.pattern;
  // CRDs refuse uniqueItems (quadratic); a set-typed list has the same meaning for scalars.
  if (s.uniqueItems) out['x-kubernetes-list-type'] = 'set';
  if (s.properties) {
    out.properties = Object.fromEntries(Object.entries(s.properties as Record<string, Schema>).map(([k, v]) => [k, toOpenApi(v)]));
  }
  if (Array.isArray(s.required) && s.required.length) out.required = [...s.required];
  if (s.items) out.items = toOpenApi(s.items);
  if (s.additionalProperties && typeof s.additionalProperties === 'object') out.additionalProperties = toOpenApi(s.additionalProperties);
  return out;
}

function without(s: Schema, keys: string[]): Schema {
  const props = { ...s.properties };
  for (const k of keys) delete props[k];
  return { ...s, properties: props, required: (s.required ?? []).filter((r: string) => !keys.includes(r)) };
}

/** `status.conditions` as metav1.Condition (what `kubectl describe` and `kubectl wait --for=condition=Accepted` read). */
const STATUS_SCHEMA: Schema = {
  description: "What the mesh made of this object, written by the cluster's one status writer (weft ca --route-status), never by the agents.",
  type: 'object',
  properties: {
    conditions: {
      type: 'array',
      maxItems: 8,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
      items: {
        type: 'object',
        required: ['type', 'status', 'reason', 'message', 'lastTransitionTime'],
        properties: {
          type: { type: 'string', maxLength: 316 },
          status: { type: 'string', enum: ['True', 'False', 'Unknown'] },
          reason: { type: 'string', maxLength: 1024 },
          message: { type: 'string', maxLength: 32768 },
          observedGeneration: { type: 'integer', format: 'int64', minimum: 0 },
          lastTransitionTime: { type: 'string', format: 'date-time' },
        },
      },
    },
  },
};

function crd(kind: string, plural: string, shortName: string, description: string, spec: Schema, columns: { name: string; type: string; jsonPath: string; description?: string }[]): Schema {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.weft.io`, labels: { 'app.kubernetes.io/part-of': 'weft' } },
    spec: {
      group: 'weft.io',
      scope: 'Namespaced',
      names: { kind, listKind: `${kind}List`, plural, singular: kind.toLowerCase(), shortNames: [shortName], categories: ['weft'] },
      versions: [
        {
          name: 'v1alpha1',
          served: true,
          storage: true,
          additionalPrinterColumns: [
            ...columns,
            { name: 'Accepted', type: 'string', jsonPath: '.status.conditions[?(@.type=="Accepted")].status', description: 'Whether the mesh accepted it (weft ca --route-status writes it)' },
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          // The cluster's one status writer (src/discovery/k8s/cr-status.ts) reports the mesh's verdict here.
          subresources: { status: {} },
          schema: {
            openAPIV3Schema: {
              description,
              type: 'object',
              required: ['spec'],
              properties: {
                apiVersion: { type: 'string' },
                kind: { type: 'string' },
                metadata: { type: 'object' },
                spec,
                status: STATUS_SCHEMA,
              },
            },
          },
        },
      ],
    },
  };
}

/**
 * The AuthorizationPolicy spec also admits Istio's shape (src/authz/istio-shape.ts converts
 * it): `selector.matchLabels`, `from[].source`, `to[].operation`, `when[]`. A structural
 * schema cannot say "a label map or { matchLabels }", so the selector is left to weft's own
 * validation (preserve-unknown-fields) and CEL rules check what the API server can:
 * every selector value is a string, and matchLabels is not mixed with labels.
 */
function withIstioShape(ap: Schema): Schema {
  const out = structuredClone(ap);
  const rules = out.properties.rules.items;
  const from = rules.properties.from.items;
  const to = rules.properties.to.items;
  rules.properties.from.items = { ...from, properties: { ...from.properties, source: { ...structuredClone(from), description: "Istio's shape: the source, one level down." } } };
  rules.properties.to.items = { ...to, properties: { ...to.properties, operation: { ...structuredClone(to), description: "Istio's shape: the operation, one level down." } } };
  rules.properties.when = {
    description: "Istio's conditions, ANDed with the rule: keys source.principal, source.namespace, source.ip, remote.ip, request.auth.principal, destination.port (others are refused).",
    type: 'array',
    items: {
      type: 'object',
      required: ['key'],
      properties: { key: { type: 'string', minLength: 1 }, values: { type: 'array', items: { type: 'string' } }, notValues: { type: 'array', items: { type: 'string' } } },
      'x-kubernetes-validations': [{ rule: 'has(self.values) || has(self.notValues)', message: 'a condition needs values or notValues' }],
    },
  };
  out.properties.selector = {
    description: 'The workloads it applies to, by labels: a label map, or { matchLabels: {...} } as in Istio.',
    type: 'object',
    'x-kubernetes-preserve-unknown-fields': true,
    'x-kubernetes-validations': [
      {
        rule: 'has(self.matchLabels) ? (self.size() == 1 && self.matchLabels.all(k, type(self.matchLabels[k]) == string)) : self.all(k, type(self[k]) == string)',
        message: 'selector: a map of label values, or { matchLabels: {...} } alone',
      },
    ],
  };
  return out;
}

/** The weft CRDs, from CONFIG_SCHEMA. */
export function generateCrds(): Schema[] {
  const top = CONFIG_SCHEMA.properties as Record<string, Schema>;
  const trafficPolicy = toOpenApi(top.services!.items.properties.trafficPolicy);
  const tpSpec: Schema = {
    type: 'object',
    required: ['targetRef'],
    properties: {
      targetRef: {
        description: 'The Service, in this namespace, that the policy applies to.',
        type: 'object',
        required: ['name'],
        properties: {
          group: { type: 'string', enum: [''] },
          kind: { type: 'string', enum: ['Service'] },
          name: { type: 'string', minLength: 1 },
        },
      },
      ...trafficPolicy.properties,
    },
  };
  const apSpec = withIstioShape(toOpenApi(without(top.policies!.items, ['name', 'namespace'])));
  const raSpec = toOpenApi(without(top.requestAuthentications!.items, ['name', 'namespace']));
  const fiSpec = toOpenApi(top.routes!.items.properties.rules.items.properties.fault);
  return [
    crd(
      'TrafficPolicy',
      'trafficpolicies',
      'wtp',
      'Load balancing, health checking, outlier detection, retries, timeouts, connection limits, circuit breaking and fallback for one Service: the trafficPolicy of the weft config file.',
      tpSpec,
      [
        { name: 'Service', type: 'string', jsonPath: '.spec.targetRef.name' },
        { name: 'Balancer', type: 'string', jsonPath: '.spec.loadBalancer.type' },
      ],
    ),
    crd(
      'AuthorizationPolicy',
      'authorizationpolicies',
      'wap',
      'Access control for the workloads it selects (Istio semantics): DENY policies first; then, if any ALLOW policy selects a workload, one of its rules must match.',
      apSpec,
      [{ name: 'Action', type: 'string', jsonPath: '.spec.action' }],
    ),
    crd(
      'RequestAuthentication',
      'requestauthentications',
      'wra',
      'JWT validation for the workloads it selects: a request with an invalid token is answered 401; one without a token passes on (require one with an AuthorizationPolicy on requestPrincipals).',
      raSpec,
      [],
    ),
    crd(
      'FaultInjection',
      'faultinjections',
      'wfi',
      "Fault injection for the Gateway API route rules that name it in an ExtensionRef filter (group weft.io, kind FaultInjection): a fixed delay and/or an abort with an HTTP status, each for a percentage of the rule's requests. The `fault:` of a route rule in the weft config file.",
      fiSpec,
      [
        { name: 'Delay', type: 'string', jsonPath: '.spec.delay.fixedDelay' },
        { name: 'Abort', type: 'integer', jsonPath: '.spec.abort.httpStatus' },
      ],
    ),
  ];
}

export function renderCrds(): string {
  const header = ['# Generated from src/config/schema.ts by test/unit/deploy-crds.test.ts: do not edit.', '# Regenerate: WEFT_UPDATE_CRDS=1 npx tap test/unit/deploy-crds.test.ts'].join('\n');
  return `${header}\n${generateCrds()
    .map((c) => stringify(c, { lineWidth: 0 }))
    .join('---\n')}`;
}

/**
 * The chart's copy is a template (not crds/, which `helm upgrade` never touches): gated by
 * crds.install, with the release's labels, and kept on uninstall so that removing weft does
 * not delete every policy with the CRD.
 */
export function renderHelmCrds(): string {
  const docs = generateCrds().map((c) => {
    c.metadata.annotations = { 'helm.sh/resource-policy': 'keep' };
    const text = stringify(c, { lineWidth: 0 });
    if (text.includes('{{')) throw new Error(`${c.metadata.name}: a description contains "{{", which Helm would read as a template`);
    return text.replace(/^ {4}app\.kubernetes\.io\/part-of: weft\n/m, '    {{- include "weft.labels" $ | nindent 4 }}\n');
  });
  const header = ['# Generated from src/config/schema.ts by test/unit/deploy-crds.test.ts: do not edit.', '# Regenerate: WEFT_UPDATE_CRDS=1 npx tap test/unit/deploy-crds.test.ts'].join('\n');
  return `${header}\n{{- if .Values.crds.install }}\n${docs.map((d) => `---\n${d}`).join('')}{{- end }}\n`;
}

t.test('the committed CRDs are the ones generated from the config schema', async (t) => {
  if (process.env.WEFT_UPDATE_CRDS) {
    writeFileSync(KUSTOMIZE_CRDS, renderCrds());
    writeFileSync(HELM_CRDS, renderHelmCrds());
  }
  t.same(
    parseAllDocuments(readFileSync(KUSTOMIZE_CRDS, 'utf8')).map((d) => d.toJS()),
    generateCrds(),
    `${path.relative(ROOT, KUSTOMIZE_CRDS)} is up to date (WEFT_UPDATE_CRDS=1 npx tap test/unit/deploy-crds.test.ts)`,
  );
  t.equal(readFileSync(HELM_CRDS, 'utf8'), renderHelmCrds(), `${path.relative(ROOT, HELM_CRDS)} is up to date (WEFT_UPDATE_CRDS=1 npx tap test/unit/deploy-crds.test.ts)`);
});

t.test('generated schemas are structural', async (t) => {
  // https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
  const problems: string[] = [];
  const walk = (s: Schema, at: string) => {
    if (!s.type && !s['x-kubernetes-int-or-string'] && !s['x-kubernetes-preserve-unknown-fields']) problems.push(`${at}: no type`);
    if (s.properties && s.additionalProperties) problems.push(`${at}: properties and additionalProperties`);
    if (s.uniqueItems) problems.push(`${at}: uniqueItems`);
    if (s.pattern && RE2_UNSUPPORTED.test(s.pattern)) problems.push(`${at}: pattern not RE2`);
    for (const bad of ['oneOf', 'anyOf', 'allOf', 'not', '$ref', 'definitions', 'default']) {
      if (s[bad] !== undefined) problems.push(`${at}: ${bad}`);
    }
    if (s.type === 'array' && !s.items) problems.push(`${at}: array without items`);
    for (const [k, v] of Object.entries((s.properties ?? {}) as Record<string, Schema>)) walk(v, `${at}.${k}`);
    if (s.items) walk(s.items, `${at}[]`);
    if (s.additionalProperties && typeof s.additionalProperties === 'object') walk(s.additionalProperties, `${at}{}`);
  };
  for (const c of generateCrds()) walk(c.spec.versions[0].schema.openAPIV3Schema, c.spec.names.kind);
  t.same(problems, []);
});
