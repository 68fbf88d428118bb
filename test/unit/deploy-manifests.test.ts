/**
 * deploy/: every Kubernetes manifest validates against the Kubernetes schemas
 * (kubernetes-models), sample custom resources validate against the CRDs' OpenAPI schemas,
 * the Helm chart renders (without helm: a renderer for the template subset the chart uses,
 * below) to objects that validate and equal the kustomize base, and the Grafana dashboard
 * asks only for metrics weft exports.
 *
 * The chart keeps to this subset on purpose: `{{ .Values.x }}`, `{{ .Release.Namespace }}`,
 * `{{ .Chart.AppVersion }}`, `| quote`, `| default X`, `toYaml X | nindent N`,
 * `{{- if X }}`/`{{- else }}`/`{{- end }}`. A template that needs more fails here loudly.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import t from 'tap';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { staticConfigFromEnv } from '../../src/discovery/kubernetes-env.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KDIR = path.join(ROOT, 'deploy/kubernetes');
const CHART = path.join(ROOT, 'deploy/helm/weft');

type Obj = Record<string, any>;

function loadDocs(text: string, file: string): Obj[] {
  return parseAllDocuments(text).flatMap((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
    const v = d.toJS();
    return v === null || v === undefined ? [] : [v as Obj];
  });
}

const kustomization = parse(readFileSync(path.join(KDIR, 'kustomization.yaml'), 'utf8')) as Obj;
const manifestFiles = readdirSync(KDIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
const base: Obj[] = manifestFiles.flatMap((f) => loadDocs(readFileSync(path.join(KDIR, f), 'utf8'), f));

/** kustomize's `images:` transform, which is all the kustomization does besides listing files. */
function kustomizeImages(objs: Obj[]): Obj[] {
  const out = structuredClone(objs);
  const rewrite = (c: Obj) => {
    for (const img of kustomization.images ?? []) {
      if (c.image === img.name || c.image?.startsWith(`${img.name}:`)) c.image = `${img.newName}:${img.newTag}`;
    }
  };
  for (const o of out) {
    const spec = o.spec?.template?.spec;
    for (const c of [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]) rewrite(c);
  }
  return out;
}

async function validateObject(obj: Obj): Promise<void> {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion];
  const mod = (await import(`kubernetes-models/${group ? `${group}/` : ''}${version}`)) as Record<string, any>;
  const Model = mod[obj.kind];
  if (!Model) throw new Error(`no kubernetes-models class for ${obj.apiVersion} ${obj.kind}`);
  new Model(obj).validate();
}

const byKind = (objs: Obj[], kind: string, name?: string) =>
  objs.find((o) => o.kind === kind && (name === undefined || o.metadata?.name === name));

// --- the Helm template subset ----------------------------------------------------------

interface HelmContext {
  Values: Obj;
  Release: { Name: string; Namespace: string; Service: string };
  Chart: { Name: string; Version: string; AppVersion: string };
}

function lookup(ctx: HelmContext, ref: string): unknown {
  if (!ref.startsWith('.')) throw new Error(`unsupported reference ${ref}`);
  let cur: unknown = ctx;
  for (const key of ref.slice(1).split('.')) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Obj)[key];
  }
  return cur;
}

function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v as object).length > 0;
  return true;
}

function evalArg(ctx: HelmContext, tok: string): unknown {
  if (tok.startsWith('"')) return JSON.parse(tok);
  if (/^-?\d+$/.test(tok)) return Number(tok);
  if (tok === 'true' || tok === 'false') return tok === 'true';
  return lookup(ctx, tok);
}

function evalPipeline(ctx: HelmContext, expr: string): unknown {
  const stages = expr.split('|').map((s) => s.trim().match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? []);
  let value: unknown;
  stages.forEach((words, i) => {
    const [head, ...rest] = words;
    const args = rest.map((w) => evalArg(ctx, w));
    if (i > 0) args.push(value);
    switch (head) {
      case 'quote':
        value = JSON.stringify(String(args[0] ?? ''));
        break;
      case 'default':
        value = truthy(args[1]) ? args[1] : args[0];
        break;
      case 'toYaml':
        value = stringify(args[0]).replace(/\n$/, '');
        break;
      case 'nindent':
      case 'indent': {
        const pad = ' '.repeat(args[0] as number);
        const text = String(args[1]).split('\n').map((l) => pad + l).join('\n');
        value = head === 'nindent' ? `\n${text}` : text;
        break;
      }
      default:
        if (rest.length || i > 0) throw new Error(`unsupported template function ${head} in {{ ${expr} }}`);
        value = evalArg(ctx, head!);
    }
  });
  return value;
}

function format(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') throw new Error(`a map or list printed without toYaml: ${JSON.stringify(v)}`);
  return String(v);
}

/** Render one template file with the subset above. */
export function renderTemplate(src: string, ctx: HelmContext): string {
  const re = /\{\{(-?)\s*(.*?)\s*(-?)\}\}/gs;
  let out = '';
  let pos = 0;
  let trimNext = false;
  // Each frame: whether this branch emits, and whether any earlier branch of the if did.
  const stack: { emit: boolean; taken: boolean; parentEmit: boolean }[] = [];
  const emitting = () => stack.every((f) => f.emit);
  for (let m = re.exec(src); m; m = re.exec(src)) {
    let text = src.slice(pos, m.index);
    if (trimNext) text = text.replace(/^\s+/, '');
    if (m[1]) text = text.replace(/\s+$/, '');
    if (emitting()) out += text;
    pos = m.index + m[0].length;
    trimNext = m[3] === '-';
    const action = m[2]!;
    if (action.startsWith('/*')) continue;
    let mm: RegExpMatchArray | null;
    if ((mm = action.match(/^if\s+(.*)$/))) {
      const parentEmit = emitting();
      const cond = parentEmit && truthy(evalPipeline(ctx, mm[1]!));
      stack.push({ emit: cond, taken: cond, parentEmit });
    } else if (action === 'else') {
      const f = stack.at(-1);
      if (!f) throw new Error('else without if');
      f.emit = !f.taken && f.parentEmit;
      f.taken = true;
    } else if (action === 'end') {
      if (!stack.pop()) throw new Error('end without if');
    } else if (/^(range|with|define|template|include|tpl|\$)/.test(action)) {
      throw new Error(`unsupported template action {{ ${action} }}`);
    } else if (emitting()) {
      out += format(evalPipeline(ctx, action));
    }
  }
  if (stack.length) throw new Error('unclosed if');
  let tail = src.slice(pos);
  if (trimNext) tail = tail.replace(/^\s+/, '');
  return out + tail;
}

function deepMerge(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object' ? deepMerge(out[k], v) : v;
  }
  return out;
}

/** Render the chart (templates/ and crds/) to objects. */
export function renderChart(overrides: Obj = {}, namespace = 'weft-system'): Obj[] {
  const chart = parse(readFileSync(path.join(CHART, 'Chart.yaml'), 'utf8')) as Obj;
  const values = deepMerge(parse(readFileSync(path.join(CHART, 'values.yaml'), 'utf8')) as Obj, overrides);
  const ctx: HelmContext = {
    Values: values,
    Release: { Name: 'weft', Namespace: namespace, Service: 'Helm' },
    Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion },
  };
  const tdir = path.join(CHART, 'templates');
  const objs: Obj[] = [];
  for (const f of readdirSync(tdir).filter((f) => f.endsWith('.yaml')).sort()) {
    objs.push(...loadDocs(renderTemplate(readFileSync(path.join(tdir, f), 'utf8'), ctx), `templates/${f}`));
  }
  return objs;
}

const key = (o: Obj) => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`;

// --- tests -----------------------------------------------------------------------------

t.test('kustomization lists every manifest', async (t) => {
  t.same([...kustomization.resources].sort(), [...manifestFiles].sort());
});

t.test('every manifest validates against the Kubernetes schemas', async (t) => {
  t.ok(base.length >= 12, `${base.length} objects`);
  for (const obj of base) {
    await t.resolves(validateObject(obj), `${obj.kind} ${obj.metadata?.name}`);
    if (obj.kind !== 'Namespace' && !obj.kind.startsWith('Cluster') && obj.kind !== 'CustomResourceDefinition') {
      t.equal(obj.metadata.namespace, 'weft-system', `${key(obj)} in weft-system`);
    }
  }
  t.same(
    base.map((o) => `${o.kind}/${o.metadata.name}`).sort(),
    [
      'ClusterRole/weft-agent',
      'ClusterRole/weft-ca',
      'ClusterRoleBinding/weft-agent',
      'ClusterRoleBinding/weft-ca',
      'CustomResourceDefinition/authorizationpolicies.weft.io',
      'CustomResourceDefinition/requestauthentications.weft.io',
      'CustomResourceDefinition/trafficpolicies.weft.io',
      'DaemonSet/weft-agent',
      'Deployment/weft-ca',
      'Namespace/weft-system',
      'Service/weft-ca',
      'ServiceAccount/weft-agent',
      'ServiceAccount/weft-ca',
    ],
  );
});

t.test('the agent DaemonSet', async (t) => {
  const ds = byKind(base, 'DaemonSet')!;
  const pod = ds.spec.template.spec;
  t.equal(pod.hostNetwork, true);
  t.equal(pod.dnsPolicy, 'ClusterFirstWithHostNet');
  t.equal(pod.priorityClassName, 'system-node-critical');
  t.equal(pod.terminationGracePeriodSeconds, 30);
  t.same(pod.tolerations, [{ operator: 'Exists' }]);
  t.equal(pod.serviceAccountName, 'weft-agent');
  t.same(ds.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
  t.match(ds.spec.template.metadata.annotations, { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '15020' });
  t.same(ds.spec.selector.matchLabels, { 'app.kubernetes.io/name': 'weft-agent' });
  t.match(ds.spec.template.metadata.labels, ds.spec.selector.matchLabels);

  const agent = pod.containers.find((c: Obj) => c.name === 'agent');
  t.same(agent.args, ['agent', '--kubernetes']);
  t.same(agent.securityContext.capabilities, { drop: ['ALL'], add: ['BPF', 'NET_ADMIN', 'SYS_ADMIN'] });
  t.equal(agent.securityContext.privileged, false, 'the long-running agent is not privileged');
  t.match(agent.readinessProbe.httpGet, { host: '127.0.0.1', port: 15000, path: '/healthz/ready' });
  t.same(
    agent.ports.map((p: Obj) => [p.name, p.containerPort, p.hostPort]),
    [['outbound', 15001, 15001], ['inbound', 15006, 15006], ['tunnel', 15008, 15008], ['metrics', 15020, 15020]],
  );
  const env = Object.fromEntries(agent.env.map((e: Obj) => [e.name, e]));
  t.same(env.NODE_NAME.valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
  t.same(env.NODE_IP.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } });
  t.ok(agent.resources.requests && agent.resources.limits);

  const mounts = Object.fromEntries(agent.volumeMounts.map((m: Obj) => [m.name, m]));
  const volumes = Object.fromEntries(pod.volumes.map((v: Obj) => [v.name, v]));
  t.match(mounts.bpffs, { mountPath: '/sys/fs/bpf', mountPropagation: 'HostToContainer' });
  t.match(volumes.bpffs.hostPath, { path: '/sys/fs/bpf' });
  t.match(mounts.cgroup, { mountPath: '/sys/fs/cgroup' });
  t.match(volumes.cgroup.hostPath, { path: '/sys/fs/cgroup' });
  for (const m of agent.volumeMounts) t.ok(volumes[m.name], `volume ${m.name} exists`);
  // The projected token for the CA, audience weft-ca, where WEFT_CA_TOKEN_FILE points.
  const tokenSource = volumes['ca-token'].projected.sources[0].serviceAccountToken;
  t.equal(tokenSource.audience, 'weft-ca');
  t.equal(path.join(mounts['ca-token'].mountPath, tokenSource.path), env.WEFT_CA_TOKEN_FILE.value);
  t.equal(path.dirname(env.WEFT_CA_ROOT_CERT.value), mounts['ca-root'].mountPath);

  // Bidirectional propagation needs a privileged container: only the one-shot init container.
  const init = pod.initContainers.find((c: Obj) => c.name === 'mount-bpffs');
  t.equal(init.securityContext.privileged, true);
  t.equal(init.volumeMounts[0].mountPropagation, 'Bidirectional');
  for (const c of pod.containers) {
    for (const m of c.volumeMounts) t.not(m.mountPropagation, 'Bidirectional', `${c.name}: no Bidirectional`);
  }

  // The environment the agent is given is one weft accepts.
  const literal = Object.fromEntries(agent.env.filter((e: Obj) => 'value' in e).map((e: Obj) => [e.name, e.value]));
  const s = staticConfigFromEnv({ env: { ...literal, NODE_NAME: 'node-a', NODE_IP: '10.0.0.1' } });
  t.match(s, {
    nodeName: 'node-a',
    cgroupRoot: '/sys/fs/cgroup',
    static: {
      mesh: { trustDomain: 'cluster.local' },
      ports: { outbound: 15001, inbound: 15006, tunnel: 15008, admin: 15000, metrics: 15020 },
      ca: { url: 'https://weft-ca.weft-system.svc:15012', rootCert: '/etc/weft/ca/root.pem', tokenFile: '/var/run/secrets/weft-ca/token' },
    },
  });
});

t.test('the CA and RBAC', async (t) => {
  const dep = byKind(base, 'Deployment', 'weft-ca')!;
  const svc = byKind(base, 'Service', 'weft-ca')!;
  const ca = dep.spec.template.spec.containers[0];
  t.same(svc.spec.selector, dep.spec.selector.matchLabels);
  t.equal(svc.spec.ports[0].port, 15012);
  t.ok(ca.args.includes('--listen=0.0.0.0:15012'));
  t.ok(ca.args.includes('--server-name=weft-ca.weft-system.svc'));
  t.equal(dep.spec.template.spec.serviceAccountName, 'weft-ca');
  const secretVol = dep.spec.template.spec.volumes.find((v: Obj) => v.secret);
  t.equal(secretVol.secret.secretName, 'weft-ca-state');

  const agentRole = byKind(base, 'ClusterRole', 'weft-agent')!;
  for (const rule of agentRole.rules) t.same(rule.verbs, ['get', 'list', 'watch'], 'the agent only reads');
  const resources = agentRole.rules.flatMap((r: Obj) => r.apiGroups.flatMap((g: string) => r.resources.map((x: string) => `${g}/${x}`)));
  t.same(resources.sort(), [
    '/namespaces',
    '/nodes',
    '/pods',
    '/services',
    'discovery.k8s.io/endpointslices',
    'weft.io/authorizationpolicies',
    'weft.io/requestauthentications',
    'weft.io/trafficpolicies',
  ]);
  const caRole = byKind(base, 'ClusterRole', 'weft-ca')!;
  t.match(caRole.rules, [{ apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] }, { resources: ['pods'] }]);
  t.ok(caRole.rules.some((r: Obj) => r.resources.includes('pods') && r.verbs.includes('get') && r.verbs.includes('list')), 'the CA gets and lists pods');

  // weft ca --kubernetes admits exactly the agents' ServiceAccount, with the audience their token is projected for.
  t.ok(ca.args.includes('--kubernetes'));
  const ds = byKind(base, 'DaemonSet', 'weft-agent')!;
  t.ok(ca.args.includes(`--agent-service-account=${ds.metadata.namespace}/${ds.spec.template.spec.serviceAccountName}`), 'the agent account');
  const caToken = ds.spec.template.spec.volumes.find((v: Obj) => v.name === 'ca-token').projected.sources[0].serviceAccountToken;
  t.ok(ca.args.includes(`--token-audience=${caToken.audience}`), 'the agent token audience');
  for (const b of base.filter((o) => o.kind === 'ClusterRoleBinding')) {
    t.ok(byKind(base, 'ClusterRole', b.roleRef.name), `${b.metadata.name} binds an existing role`);
    t.ok(byKind(base, 'ServiceAccount', b.subjects[0].name), `${b.metadata.name} binds an existing account`);
  }
});

// --- sample custom resources against the CRD schemas -------------------------------------

/** An ajv validator for a CRD's schema; objects get additionalProperties: false, so that a field the API server would prune is an error here. */
function crdValidator(kind: string) {
  const crd = base.find((o) => o.kind === 'CustomResourceDefinition' && o.spec.names.kind === kind)!;
  const schema = structuredClone(crd.spec.versions[0].schema.openAPIV3Schema);
  const close = (s: Obj) => {
    if (s.properties && s.additionalProperties === undefined && s !== schema.properties.metadata) s.additionalProperties = false;
    if (s.exclusiveMinimum === true) {
      s.exclusiveMinimum = s.minimum;
      delete s.minimum;
    }
    for (const v of Object.values((s.properties ?? {}) as Record<string, Obj>)) close(v);
    if (s.items) close(s.items);
    if (s.additionalProperties && typeof s.additionalProperties === 'object') close(s.additionalProperties);
  };
  close(schema);
  const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
  ajv.addVocabulary(['x-kubernetes-list-type', 'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-int-or-string']);
  return ajv.compile(schema);
}

const SAMPLES: Obj[] = [
  {
    apiVersion: 'weft.io/v1alpha1',
    kind: 'TrafficPolicy',
    metadata: { name: 'api', namespace: 'shop' },
    spec: {
      targetRef: { kind: 'Service', name: 'api' },
      loadBalancer: { type: 'ring-hash', hashOn: { header: 'x-user' }, minRingSize: 2048 },
      healthCheck: { type: 'http', path: '/healthz', interval: '1s', timeout: '500ms', unhealthyThreshold: 2, healthyThreshold: 2 },
      outlierDetection: { consecutive5xx: 5, consecutiveGatewayErrors: 5, interval: '1s', baseEjectionTime: '30s', maxEjectionPercent: 50 },
      retries: { attempts: 2, perTryTimeout: '1s', retryOn: ['connect-failure', 'reset', '5xx', 'gateway-error'], budget: { percent: 20, minPerSecond: 10 } },
      timeout: '10s',
      connectionPool: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024 },
      circuitBreaker: { consecutiveFailures: 7, openDuration: '5s', halfOpenRequests: 1 },
      fallback: { service: 'api-degraded' },
    },
  },
  {
    apiVersion: 'weft.io/v1alpha1',
    kind: 'AuthorizationPolicy',
    metadata: { name: 'api-readers', namespace: 'shop' },
    spec: {
      selector: { app: 'api' },
      action: 'ALLOW',
      rules: [
        {
          from: [{ principals: ['cluster.local/ns/shop/sa/client'] }, { namespaces: ['shop'] }, { requestPrincipals: ['https://issuer.example/alice'] }],
          to: [{ ports: [8080], methods: ['GET'], paths: ['/items', '/items/*'] }],
        },
      ],
    },
  },
  {
    apiVersion: 'weft.io/v1alpha1',
    kind: 'RequestAuthentication',
    metadata: { name: 'api-jwt', namespace: 'shop' },
    spec: { selector: { app: 'api' }, jwtRules: [{ issuer: 'https://issuer.example', audiences: ['api'], jwksUri: 'https://issuer.example/jwks.json' }] },
  },
];

t.test('sample custom resources validate against the CRDs', async (t) => {
  for (const cr of SAMPLES) {
    const validate = crdValidator(cr.kind);
    t.ok(validate(cr), `${cr.kind} ${cr.metadata.name}: ${JSON.stringify(validate.errors)}`);
  }
});

t.test('the CRDs refuse what weft would refuse', async (t) => {
  const tp = crdValidator('TrafficPolicy');
  const bad: [string, Obj][] = [
    ['no targetRef', { loadBalancer: { type: 'random' } }],
    ['unknown balancer', { targetRef: { name: 'api' }, loadBalancer: { type: 'fastest' } }],
    ['attempts out of range', { targetRef: { name: 'api' }, retries: { attempts: 50 } }],
    ['duration without unit', { targetRef: { name: 'api' }, timeout: '10' }],
    ['misspelt key (pruned by the API server)', { targetRef: { name: 'api' }, retry: { attempts: 1 } }],
    ['targetRef to a Deployment', { targetRef: { kind: 'Deployment', name: 'api' } }],
  ];
  for (const [what, spec] of bad) {
    t.notOk(tp({ apiVersion: 'weft.io/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'x' }, spec }), what);
  }
  const ap = crdValidator('AuthorizationPolicy');
  t.notOk(ap({ apiVersion: 'weft.io/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'x' }, spec: { action: 'AUDIT' } }), 'unknown action');
  t.notOk(ap({ apiVersion: 'weft.io/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'x' }, spec: { rules: [{ to: [{ methods: ['get'] }] }] } }), 'lower-case method');
  const ra = crdValidator('RequestAuthentication');
  t.notOk(ra({ apiVersion: 'weft.io/v1alpha1', kind: 'RequestAuthentication', metadata: { name: 'x' }, spec: { selector: {} } }), 'jwtRules required');
});

// --- the Helm chart --------------------------------------------------------------------

t.test('the renderer handles the subset and refuses the rest', async (t) => {
  const ctx: HelmContext = { Values: { a: { b: 'x', n: 3, m: {}, l: [1] }, on: true, off: false }, Release: { Name: 'r', Namespace: 'ns', Service: 'Helm' }, Chart: { Name: 'c', Version: '1', AppVersion: '9' } };
  t.equal(renderTemplate('v: {{ .Values.a.b }} {{ .Release.Namespace }}', ctx), 'v: x ns');
  t.equal(renderTemplate('v: {{ .Values.a.n | quote }}', ctx), 'v: "3"');
  t.equal(renderTemplate('v: {{ .Values.nope | default .Chart.AppVersion }}', ctx), 'v: 9');
  t.equal(renderTemplate('a:\n{{- if .Values.on }}\n  b: 1\n{{- else }}\n  b: 2\n{{- end }}\n', ctx), 'a:\n  b: 1\n');
  t.equal(renderTemplate('a:\n{{- if .Values.a.m }}\n  b: 1\n{{- else }}\n  b: 2\n{{- end }}\n', ctx), 'a:\n  b: 2\n', 'empty map is false');
  t.equal(renderTemplate('l:\n  {{- toYaml .Values.a.l | nindent 2 }}', ctx), 'l:\n  - 1');
  t.throws(() => renderTemplate('{{ include "x" . }}', ctx), /unsupported/);
  t.throws(() => renderTemplate('{{ range .Values.a.l }}{{ end }}', ctx), /unsupported/);
});

t.test('the chart renders the kustomize base', async (t) => {
  const rendered = renderChart();
  for (const obj of rendered) await t.resolves(validateObject(obj), `${key(obj)} validates`);
  const expected = kustomizeImages(base).filter((o) => o.kind !== 'Namespace' && o.kind !== 'CustomResourceDefinition');
  t.same(rendered.map(key).sort(), expected.map(key).sort(), 'same objects');
  for (const want of expected) {
    const got = rendered.find((o) => key(o) === key(want));
    t.same(got, want, `${key(want)} equals the kustomize base`);
  }
  const crds = loadDocs(readFileSync(path.join(CHART, 'crds/crds.yaml'), 'utf8'), 'crds.yaml');
  t.same(crds, base.filter((o) => o.kind === 'CustomResourceDefinition'), 'chart CRDs = base CRDs');
});

t.test('chart values take effect', async (t) => {
  const rendered = renderChart(
    {
      image: { repository: 'registry.example/weft', tag: 'dev' },
      ports: { metrics: 9020, admin: 9000 },
      trustDomain: 'corp.example',
      agent: { nodeSelector: { mesh: 'yes' } },
      ca: { port: 8443 },
    },
    'mesh',
  );
  for (const obj of rendered) await t.resolves(validateObject(obj), `${key(obj)} validates`);
  const ds = byKind(rendered, 'DaemonSet')!;
  const agent = ds.spec.template.spec.containers[0];
  t.equal(agent.image, 'registry.example/weft:dev');
  t.equal(ds.metadata.namespace, 'mesh');
  t.equal(ds.spec.template.metadata.annotations['prometheus.io/port'], '9020');
  t.same(ds.spec.template.spec.nodeSelector, { mesh: 'yes' });
  t.equal(agent.readinessProbe.httpGet.port, 9000);
  t.ok(agent.ports.some((p: Obj) => p.name === 'metrics' && p.containerPort === 9020 && p.hostPort === 9020));
  const env = Object.fromEntries(agent.env.filter((e: Obj) => 'value' in e).map((e: Obj) => [e.name, e.value]));
  t.match(env, { WEFT_PORT_METRICS: '9020', WEFT_TRUST_DOMAIN: 'corp.example', WEFT_CA_URL: 'https://weft-ca.mesh.svc:8443' });
  t.equal(byKind(rendered, 'Service', 'weft-ca')!.spec.ports[0].port, 8443);
  t.same(byKind(rendered, 'ClusterRoleBinding', 'weft-agent')!.subjects[0].namespace, 'mesh');
  t.ok(byKind(rendered, 'Deployment', 'weft-ca')!.spec.template.spec.containers[0].args.includes('--agent-service-account=mesh/weft-agent'), 'the agents of the release namespace');

  const noCa = renderChart({ ca: { enabled: false } });
  for (const obj of noCa) await t.resolves(validateObject(obj), `${key(obj)} validates (ca disabled)`);
  t.notOk(noCa.some((o) => o.metadata.name === 'weft-ca'), 'no CA objects');
  const a2 = byKind(noCa, 'DaemonSet')!.spec.template.spec;
  t.notOk(a2.containers[0].env.some((e: Obj) => e.name.startsWith('WEFT_CA_')), 'agents use the embedded CA');
  t.notOk(a2.volumes.some((v: Obj) => v.name.startsWith('ca-')), 'no CA volumes');
});

// --- the dashboard ---------------------------------------------------------------------

const DESIGN_METRICS = [
  'weft_requests_total',
  'weft_request_duration_seconds',
  'weft_tcp_connections_opened_total',
  'weft_tcp_connections_closed_total',
  'weft_tcp_sent_bytes_total',
  'weft_tcp_received_bytes_total',
  'weft_captured_workloads',
  'weft_upstream_ejections_total',
  'weft_circuit_breaker_open',
  'weft_retries_total',
  'weft_cert_expiry_seconds',
  'weft_authz_denied_total',
  'weft_upstream_healthy_endpoints',
];

t.test('the Grafana dashboard uses only metrics weft exports', async (t) => {
  const dash = JSON.parse(readFileSync(path.join(ROOT, 'deploy/grafana/weft-node.json'), 'utf8')) as Obj;
  t.ok(dash.title && Array.isArray(dash.panels) && dash.panels.length > 0);
  const exprs: string[] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if ((k === 'expr' || k === 'query') && typeof x === 'string') exprs.push(x);
        else walk(x);
      }
    }
  };
  walk(dash);
  t.ok(exprs.length >= 10, `${exprs.length} queries`);
  const used = new Set<string>();
  for (const e of exprs) for (const m of e.matchAll(/\bweft_[a-z0-9_]+/g)) used.add(m[0].replace(/_(bucket|sum|count)$/, ''));
  for (const m of used) t.ok(DESIGN_METRICS.includes(m), `${m} is a weft metric`);
  for (const m of DESIGN_METRICS) t.ok(used.has(m), `${m} has a panel`);
  const ids = dash.panels.map((p: Obj) => p.id);
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique');
});

// --- the image -------------------------------------------------------------------------

t.test('the Dockerfile', async (t) => {
  const text = readFileSync(path.join(ROOT, 'deploy/Dockerfile'), 'utf8');
  const from = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
  t.same(from, ['node:26-bookworm', 'node:26-bookworm-slim'], 'multi-stage: bookworm builder, slim runtime');
  t.match(text, /apt-get install[^\n]*clang[^\n]*libbpf-dev[^\n]*libelf-dev/);
  t.match(text, /apt-get install[^\n]*libbpf1[^\n]*libelf1/);
  t.match(text, /^ENTRYPOINT \["node", "--max-semi-space-size=4", "\/app\/bin\/weft\.js"\]$/m);
  t.match(text, /^CMD \["agent", "--kubernetes"\]$/m);
  // Every path the builder copies from the context exists, and the ignore file lets it through.
  const ignore = readFileSync(path.join(ROOT, 'deploy/Dockerfile.dockerignore'), 'utf8');
  const allowed = [...ignore.matchAll(/^!(\S+)$/gm)].map((m) => m[1]!.replace(/\/\*\*$/, ''));
  for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
    for (const src of m[1]!.split(/\s+/)) {
      t.ok(readdirSync(ROOT).includes(src), `${src} exists at the repository root`);
      t.ok(allowed.includes(src), `${src} is in the build context`);
    }
  }
  // The agent finds build/ next to package.json and binding.gyp (src/capture/bpf.ts).
  t.match(text, /COPY --from=builder \/app\/package\.json \/app\/binding\.gyp \.\//);
});
