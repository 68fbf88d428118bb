/**
 * deploy/: every Kubernetes manifest validates against the Kubernetes schemas
 * (kubernetes-models), sample custom resources validate against the CRDs' OpenAPI schemas,
 * the Helm chart renders (without helm, which no registry here provides: test/lib/helm-render.ts,
 * itself tested in test/unit/helm-render.test.ts) to objects that validate and equal the
 * kustomize base, and the Grafana dashboard asks only for metrics weft exports.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Ajv } from 'ajv';
import t from 'tap';
import { parse } from 'yaml';
import { loadDocs, renderChart as helmRender } from '../lib/helm-render.js';
import { AGENT_NODE_FLAGS } from '../../src/node-flags.js';
import { staticConfigFromEnv } from '../../src/discovery/kubernetes-env.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KDIR = path.join(ROOT, 'deploy/kubernetes');
const CHART = path.join(ROOT, 'deploy/helm/weft');

type Obj = Record<string, any>;

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

const byKind = (objs: Obj[], kind: string, name?: string) => objs.find((o) => o.kind === kind && (name === undefined || o.metadata?.name === name));

const CHART_ONLY_LABELS = ['app.kubernetes.io/instance', 'app.kubernetes.io/version', 'app.kubernetes.io/managed-by', 'helm.sh/chart'];

/** The chart's objects, without the labels only a Helm release has (the kustomize base has the rest). */
function renderChart(overrides: Obj = {}, namespace = 'weft-system'): Obj[] {
  return helmRender(CHART, overrides, namespace).objects;
}

function withoutReleaseLabels(o: Obj): Obj {
  const c = structuredClone(o);
  for (const labels of [c.metadata?.labels, c.spec?.template?.metadata?.labels]) {
    for (const l of CHART_ONLY_LABELS) if (labels) delete labels[l];
  }
  if (c.kind === 'CustomResourceDefinition') delete c.metadata.annotations;
  return c;
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
  t.same(base.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
    'ClusterRole/weft-agent',
    'ClusterRole/weft-ca',
    'ClusterRoleBinding/weft-agent',
    'ClusterRoleBinding/weft-ca',
    'CustomResourceDefinition/authorizationpolicies.weft.io',
    'CustomResourceDefinition/faultinjections.weft.io',
    'CustomResourceDefinition/requestauthentications.weft.io',
    'CustomResourceDefinition/trafficpolicies.weft.io',
    'DaemonSet/weft-agent',
    'Deployment/weft-ca',
    'Namespace/weft-system',
    'Role/weft-ca-root',
    'RoleBinding/weft-ca-root',
    'Service/weft-ca',
    'ServiceAccount/weft-agent',
    'ServiceAccount/weft-ca',
  ]);
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
  // The new agent of a node starts beside the old one and takes it over (src/lifecycle/handover.ts).
  t.same(ds.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
  t.same(pod.nodeSelector, { 'kubernetes.io/os': 'linux' });
  t.match(ds.spec.template.metadata.annotations, { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '15020' });
  t.same(ds.spec.selector.matchLabels, { 'app.kubernetes.io/name': 'weft-agent' });
  t.match(ds.spec.template.metadata.labels, ds.spec.selector.matchLabels);

  const agent = pod.containers.find((c: Obj) => c.name === 'agent');
  t.same(agent.args, ['agent', '--kubernetes']);
  t.same(agent.securityContext.capabilities, { drop: ['ALL'], add: ['BPF', 'NET_ADMIN', 'SYS_ADMIN'] });
  t.equal(agent.securityContext.privileged, false, 'the long-running agent is not privileged');
  t.equal(agent.securityContext.allowPrivilegeEscalation, true, 'true where SYS_ADMIN is held');
  t.same(agent.securityContext.seccompProfile, { type: 'RuntimeDefault' });
  t.equal(agent.resources.limits.cpu, undefined, 'no CPU limit on the data plane');
  t.ok(agent.resources.limits.memory, 'a memory limit');
  t.match(agent.readinessProbe.httpGet, { host: '127.0.0.1', port: 15000, path: '/healthz/ready' });
  // With hostNetwork a declared containerPort is a hostPort, and the scheduler would not place
  // the surge pod beside the old one: the two agents share the ports by handover instead.
  t.equal(agent.ports, undefined, 'no ports declared (they would block the surge pod)');
  const env = Object.fromEntries(agent.env.map((e: Obj) => [e.name, e]));
  t.equal(env.WEFT_TERMINATION_GRACE_PERIOD_SECONDS.value, String(pod.terminationGracePeriodSeconds), 'the agent knows its grace period');
  t.same(env.NODE_NAME.valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
  t.same(env.NODE_IP.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } });
  t.ok(agent.resources.requests && agent.resources.limits);

  const mounts = Object.fromEntries(agent.volumeMounts.map((m: Obj) => [m.name, m]));
  const volumes = Object.fromEntries(pod.volumes.map((v: Obj) => [v.name, v]));
  t.match(mounts.bpffs, { mountPath: '/sys/fs/bpf', mountPropagation: 'HostToContainer' });
  t.match(volumes.bpffs.hostPath, { path: '/sys/fs/bpf' });
  t.match(mounts.cgroup, { mountPath: '/sys/fs/cgroup' });
  t.match(volumes.cgroup.hostPath, { path: '/sys/fs/cgroup' });
  // Both agents of a rolling update meet at the control socket in the state directory: on the node.
  t.match(mounts.state, { mountPath: env.WEFT_STATE_DIR.value });
  t.match(volumes.state.hostPath, { path: '/var/lib/weft' });
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
  // The root: made in the cluster and kept in a Secret; the bundle published for the agents.
  t.notOk(
    dep.spec.template.spec.volumes.some((v: Obj) => v.secret),
    'no Secret to create before the install',
  );
  t.ok(ca.args.includes('--root-secret=weft-ca-root-key'));
  t.ok(ca.args.includes('--root-configmap=weft-ca-root'));
  const agentDs = byKind(base, 'DaemonSet', 'weft-agent')!;
  t.equal(agentDs.spec.template.spec.volumes.find((v: Obj) => v.name === 'ca-root').configMap.name, 'weft-ca-root', 'the agents mount the ConfigMap the CA writes');
  const rootRole = byKind(base, 'Role', 'weft-ca-root')!;
  t.same(
    rootRole.rules,
    [
      { apiGroups: [''], resources: ['secrets'], resourceNames: ['weft-ca-root-key'], verbs: ['get'] },
      { apiGroups: [''], resources: ['configmaps'], resourceNames: ['weft-ca-root'], verbs: ['get', 'update'] },
      { apiGroups: [''], resources: ['secrets', 'configmaps'], verbs: ['create'] },
    ],
    'the CA reads only its own Secret and ConfigMap (create cannot be limited by name)',
  );
  const rootBinding = byKind(base, 'RoleBinding', 'weft-ca-root')!;
  t.same(rootBinding.subjects, [{ kind: 'ServiceAccount', name: 'weft-ca', namespace: 'weft-system' }]);

  // With a cacerts Secret: mounted, --cacerts, and no root Secret or its permission.
  const withCacerts = renderChart({ ca: { cacertsSecret: 'cacerts' } });
  const depC = byKind(withCacerts, 'Deployment', 'weft-ca')!;
  const caC = depC.spec.template.spec.containers[0];
  t.ok(caC.args.includes('--cacerts=/etc/weft/cacerts'));
  t.notOk(caC.args.some((a: string) => a.startsWith('--root-secret')));
  t.equal(depC.spec.template.spec.volumes.find((v: Obj) => v.name === 'cacerts').secret.secretName, 'cacerts');
  t.same(
    caC.volumeMounts.find((m: Obj) => m.name === 'cacerts'),
    { name: 'cacerts', mountPath: '/etc/weft/cacerts', readOnly: true },
  );
  t.notOk(
    byKind(withCacerts, 'Role', 'weft-ca-root')!.rules.some((r: Obj) => r.resources.includes('secrets')),
    'no access to Secrets with cacerts',
  );
  for (const obj of withCacerts.filter((o) => o.kind === 'Deployment' || o.kind === 'Role')) await t.resolves(validateObject(obj), `${obj.kind} with cacerts validates`);

  const agentRole = byKind(base, 'ClusterRole', 'weft-agent')!;
  for (const rule of agentRole.rules) t.same(rule.verbs, ['get', 'list', 'watch'], 'the agent only reads');
  const resources = agentRole.rules.flatMap((r: Obj) => r.apiGroups.flatMap((g: string) => r.resources.map((x: string) => `${g}/${x}`)));
  t.same(resources.sort(), [
    '/namespaces',
    '/nodes',
    '/pods',
    '/services',
    'discovery.k8s.io/endpointslices',
    'gateway.networking.k8s.io/grpcroutes',
    'gateway.networking.k8s.io/httproutes',
    'gateway.networking.k8s.io/tcproutes',
    'weft.io/authorizationpolicies',
    'weft.io/faultinjections',
    'weft.io/requestauthentications',
    'weft.io/trafficpolicies',
  ]);
  const caRole = byKind(base, 'ClusterRole', 'weft-ca')!;
  t.match(caRole.rules, [{ apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] }, { resources: ['pods'] }]);
  t.ok(
    caRole.rules.some((r: Obj) => r.resources.includes('pods') && r.verbs.includes('get') && r.verbs.includes('list')),
    'the CA gets and lists pods',
  );
  // The CA is the one writer of route status: it patches only the status subresource of routes.
  t.ok(ca.args.includes('--route-status'), 'the CA writes route status');
  const writes = caRole.rules.filter((r: Obj) => r.verbs.some((v: string) => v !== 'get' && v !== 'list' && v !== 'watch'));
  t.same(
    writes.map((r: Obj) => `${r.apiGroups.join(',')}:${r.resources.join(',')}:${r.verbs.join(',')}`),
    [
      'authentication.k8s.io:tokenreviews:create',
      'gateway.networking.k8s.io:httproutes/status,grpcroutes/status,tcproutes/status:patch',
      'weft.io:trafficpolicies/status,authorizationpolicies/status,requestauthentications/status,faultinjections/status:patch',
      'events.k8s.io:events:create,patch',
    ],
  );
  // ...and of weft's own resources' status: the agents write nothing at all.
  t.same(
    byKind(base, 'ClusterRole', 'weft-agent')!
      .rules.flatMap((r: Obj) => r.verbs)
      .filter((v: string) => v !== 'get' && v !== 'list' && v !== 'watch'),
    [],
    'the agents only read',
  );
  for (const crd of base.filter((o) => o.kind === 'CustomResourceDefinition')) {
    t.same(crd.spec.versions[0].subresources, { status: {} }, `${crd.metadata.name} has the status subresource`);
    t.ok(
      writes.some((r: Obj) => r.apiGroups.includes(crd.spec.group) && r.resources.includes(`${crd.spec.names.plural}/status`)),
      `the CA may patch ${crd.spec.names.plural}/status`,
    );
  }
  t.same(
    ca.env.filter((e: Obj) => e.valueFrom).map((e: Obj) => `${e.name}=${e.valueFrom.fieldRef.fieldPath}`),
    ['POD_NAME=metadata.name', 'POD_NAMESPACE=metadata.namespace'],
    'the writer knows its pod, to tell which replica writes',
  );

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

t.test('the chart renders the kustomize base', async (t) => {
  const rendered = renderChart({ namespace: { create: true } });
  for (const obj of rendered) await t.resolves(validateObject(obj), `${key(obj)} validates`);
  // The dashboard ConfigMap is the chart's only extra: kustomize cannot load a file from
  // outside its directory (deploy/grafana/), so there it is imported by hand.
  const comparable = rendered.filter((o) => key(o) !== 'ConfigMap/weft-system/weft-grafana-dashboard');
  const expected = kustomizeImages(base);
  t.same(comparable.map(key).sort(), expected.map(key).sort(), 'same objects');
  for (const want of expected) {
    const got = comparable.find((o) => key(o) === key(want));
    t.same(withoutReleaseLabels(got ?? {}), want, `${key(want)} equals the kustomize base`);
  }
  for (const o of rendered) {
    t.match(
      o.metadata.labels,
      { 'app.kubernetes.io/part-of': 'weft', 'app.kubernetes.io/instance': 'weft', 'app.kubernetes.io/managed-by': 'Helm', 'helm.sh/chart': 'weft-0.1.0', 'app.kubernetes.io/version': '0.1.0' },
      `${key(o)}: standard labels`,
    );
  }
  for (const crd of rendered.filter((o) => o.kind === 'CustomResourceDefinition')) {
    t.equal(crd.metadata.annotations['helm.sh/resource-policy'], 'keep', `${crd.metadata.name}: a template (helm upgrade updates it), kept on uninstall`);
  }
  t.notOk(readdirSync(CHART).includes('crds'), 'no crds/ directory, which helm upgrade would skip');
  t.notOk(
    renderChart({ crds: { install: false } }).some((o) => o.kind === 'CustomResourceDefinition'),
    'crds.install: false leaves them out',
  );
  t.notOk(
    renderChart().some((o) => o.kind === 'Namespace'),
    'no Namespace unless namespace.create',
  );
  t.same(byKind(rendered, 'Namespace')!.metadata.labels['pod-security.kubernetes.io/enforce'], 'privileged');
  t.same(byKind(base, 'Namespace')!.metadata.labels['pod-security.kubernetes.io/enforce'], 'privileged');
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
  t.same(ds.spec.template.spec.nodeSelector, { 'kubernetes.io/os': 'linux', mesh: 'yes' }, 'merged with the default, as Helm merges maps');
  t.equal(agent.readinessProbe.httpGet.port, 9000);
  t.equal(agent.ports, undefined);
  const env = Object.fromEntries(agent.env.filter((e: Obj) => 'value' in e).map((e: Obj) => [e.name, e.value]));
  t.match(env, { WEFT_PORT_METRICS: '9020', WEFT_TRUST_DOMAIN: 'corp.example', WEFT_CA_URL: 'https://weft-ca.mesh.svc:8443' });
  t.equal(byKind(rendered, 'Service', 'weft-ca')!.spec.ports[0].port, 8443);
  t.same(byKind(rendered, 'ClusterRoleBinding', 'weft-agent')!.subjects[0].namespace, 'mesh');
  t.ok(byKind(rendered, 'Deployment', 'weft-ca')!.spec.template.spec.containers[0].args.includes('--agent-service-account=mesh/weft-agent'), 'the agents of the release namespace');

  const noCa = renderChart({ ca: { enabled: false } });
  for (const obj of noCa) await t.resolves(validateObject(obj), `${key(obj)} validates (ca disabled)`);
  t.notOk(
    noCa.some((o) => o.metadata.name === 'weft-ca'),
    'no CA objects',
  );
  const a2 = byKind(noCa, 'DaemonSet')!.spec.template.spec;
  t.notOk(
    a2.containers[0].env.some((e: Obj) => e.name.startsWith('WEFT_CA_')),
    'agents use the embedded CA',
  );
  t.notOk(
    a2.volumes.some((v: Obj) => v.name.startsWith('ca-')),
    'no CA volumes',
  );
});

/** Runs the agent container's command as its shell would, with `node` a stub that prints its arguments. */
function runAgentCommand(container: Obj, env: Record<string, string>): string[] {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-cmd-'));
  try {
    writeFileSync(path.join(dir, 'node'), '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n');
    chmodSync(path.join(dir, 'node'), 0o755);
    const [sh, ...rest] = container.command as string[];
    const out = execFileSync(sh!, [...rest, ...container.args], { env: { ...env, PATH: `${dir}:/usr/bin:/bin` }, encoding: 'utf8' });
    return out.trimEnd().split('\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

t.test('the agent runs with a V8 heap sized from its memory limit', async (t) => {
  for (const [what, objs] of [
    ['kustomize', base],
    ['chart', renderChart()],
  ] as const) {
    const agent = byKind(objs as Obj[], 'DaemonSet')!.spec.template.spec.containers[0];
    const env = agent.env.find((e: Obj) => e.name === 'WEFT_MEMORY_LIMIT_MIB');
    t.same(env.valueFrom.resourceFieldRef, { containerName: 'agent', resource: 'limits.memory', divisor: '1Mi' }, `${what}: the limit in MiB`);
    const argv = runAgentCommand(agent, { WEFT_MEMORY_LIMIT_MIB: '1024' });
    t.same(argv, [...AGENT_NODE_FLAGS, '--max-old-space-size=768', '/app/bin/weft.js', 'agent', '--kubernetes'], `${what}: node gets 75% of 1Gi and the image's flags`);
  }
  const agent = byKind(renderChart({ agent: { heapPercent: 50 } }), 'DaemonSet')!.spec.template.spec.containers[0];
  t.ok(runAgentCommand(agent, { WEFT_MEMORY_LIMIT_MIB: '2048' }).includes('--max-old-space-size=1024'), 'agent.heapPercent');
});

t.test('chart values for an operator: digest, pull secrets, annotations, affinity, strategy, seccomp', async (t) => {
  const affinity = { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'mesh', operator: 'In', values: ['on'] }] }] } } };
  const digest = `sha256:${'a'.repeat(64)}`;
  const objs = renderChart({
    image: { digest },
    imagePullSecrets: [{ name: 'regcred' }],
    agent: { podAnnotations: { 'example.com/team': 'net' }, affinity, updateStrategy: { type: 'OnDelete' }, seccompProfile: { type: 'Unconfined' } },
    ca: { affinity, podAnnotations: { 'example.com/team': 'sec' } },
  });
  for (const obj of objs) await t.resolves(validateObject(obj), `${key(obj)} validates`);
  const ds = byKind(objs, 'DaemonSet')!;
  const pod = ds.spec.template.spec;
  t.equal(pod.containers[0].image, `ghcr.io/weft-mesh/weft@${digest}`);
  t.equal(pod.initContainers[0].image, `ghcr.io/weft-mesh/weft@${digest}`);
  t.same(pod.imagePullSecrets, [{ name: 'regcred' }]);
  t.same(pod.affinity, affinity);
  t.same(ds.spec.updateStrategy, { type: 'OnDelete' });
  t.same(pod.containers[0].securityContext.seccompProfile, { type: 'Unconfined' });
  t.match(ds.spec.template.metadata.annotations, { 'example.com/team': 'net', 'prometheus.io/scrape': 'true' });
  const ca = byKind(objs, 'Deployment', 'weft-ca')!.spec.template;
  t.equal(ca.spec.containers[0].image, `ghcr.io/weft-mesh/weft@${digest}`);
  t.same(ca.spec.imagePullSecrets, [{ name: 'regcred' }]);
  t.same(ca.spec.affinity, affinity);
  t.same(ca.metadata.annotations, { 'example.com/team': 'sec' });
});

t.test('values.schema.json accepts the defaults and refuses what would break the install', async (t) => {
  const schema = JSON.parse(readFileSync(path.join(CHART, 'values.schema.json'), 'utf8')) as Obj;
  const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
  const defaults = parse(readFileSync(path.join(CHART, 'values.yaml'), 'utf8')) as Obj;
  t.ok(validate(defaults), `defaults: ${JSON.stringify(validate.errors)}`);
  const bad: [string, Obj][] = [
    ['a CPU limit on the agent', { agent: { resources: { limits: { cpu: '2', memory: '1Gi' } } } }],
    ['no memory limit (null deletes a default in Helm)', { agent: { resources: { limits: { memory: null } } } }],
    ['a misspelt key', { agent: { nodeSelectr: {} } }],
    ['a bad digest', { image: { digest: 'latest' } }],
    ['a port out of range', { ports: { metrics: 70000 } }],
    ['an unknown log level', { logLevel: 'verbose' }],
  ];
  const merge = (a: Obj, b: Obj): Obj => {
    const out: Obj = { ...a };
    for (const [k, v] of Object.entries(b)) out[k] = v && typeof v === 'object' && !Array.isArray(v) && a[k] && typeof a[k] === 'object' ? merge(a[k], v) : v;
    return out;
  };
  for (const [what, o] of bad) t.notOk(validate(merge(defaults, o)), what);
});

t.test('NOTES.txt, the PodMonitor and the dashboard ConfigMap', async (t) => {
  const { notes } = helmRender(CHART, {}, 'mesh');
  t.match(notes, /kubectl label namespace mesh pod-security\.kubernetes\.io\/enforce=privileged/);
  t.match(notes, /rollout status daemonset\/weft-agent/);
  t.notMatch(helmRender(CHART, { namespace: { create: true } }).notes, /pod-security/, 'no label advice when the chart makes the namespace');

  t.notOk(
    renderChart().some((o) => o.kind === 'PodMonitor'),
    'no PodMonitor by default',
  );
  const objs = renderChart({ metrics: { podMonitor: { enabled: true, labels: { release: 'prometheus' } } } });
  const pm = byKind(objs, 'PodMonitor')!;
  t.equal(pm.apiVersion, 'monitoring.coreos.com/v1');
  const ds = byKind(objs, 'DaemonSet')!;
  t.same(pm.spec.selector.matchLabels, ds.spec.selector.matchLabels, 'selects the agents');
  const env = Object.fromEntries(ds.spec.template.spec.containers[0].env.filter((e: Obj) => 'value' in e).map((e: Obj) => [e.name, e.value]));
  t.equal(String(pm.spec.podMetricsEndpoints[0].portNumber), env.WEFT_PORT_METRICS, "on the agent's metrics port");
  t.equal(pm.metadata.labels.release, 'prometheus');

  const cm = byKind(objs, 'ConfigMap', 'weft-grafana-dashboard')!;
  t.equal(cm.metadata.labels.grafana_dashboard, '1', 'the Grafana sidecar label');
  t.same(JSON.parse(cm.data['weft-node.json']), JSON.parse(readFileSync(path.join(ROOT, 'deploy/grafana/weft-node.json'), 'utf8')), 'the dashboard of deploy/grafana');
  t.equal(readFileSync(path.join(CHART, 'dashboards/weft-node.json'), 'utf8'), readFileSync(path.join(ROOT, 'deploy/grafana/weft-node.json'), 'utf8'), "the chart's copy is identical");
  t.notOk(renderChart({ metrics: { grafanaDashboard: { enabled: false } } }).some((o) => o.kind === 'ConfigMap'));
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
  'weft_tcp_connections_open',
];
/** prom-client's collectDefaultMetrics on the agent's registry (src/telemetry/metrics.ts). */
const PROCESS_METRICS = [
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_eventloop_lag_p50_seconds',
  'process_resident_memory_bytes',
  'nodejs_heap_size_used_bytes',
  'nodejs_heap_size_total_bytes',
  'nodejs_gc_duration_seconds',
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
  for (const e of exprs) for (const m of e.matchAll(/\b(weft|nodejs|process)_[a-z0-9_]+/g)) used.add(m[0].replace(/_(bucket|sum|count)$/, ''));
  for (const m of used) t.ok(DESIGN_METRICS.includes(m) || PROCESS_METRICS.includes(m), `${m} is a metric the agent exports`);
  for (const m of [...DESIGN_METRICS, ...PROCESS_METRICS]) t.ok(used.has(m), `${m} has a panel`);
  // Open connections come from the gauge, never from opened - closed counters (wrong across restarts).
  t.notOk(
    exprs.some((e) => /connections_opened_total[^)]*\)\s*-/.test(e)),
    'no difference of raw counters',
  );
  // Every metric the dashboard names is one the agent really exports.
  const { Metrics } = await import('../../src/telemetry/metrics.js');
  // (weft_cert_expiry_seconds is registered on the same registry by the certificate manager.)
  const exported = [...(await new Metrics().registry.getMetricsAsJSON()).map((m) => m.name), 'weft_cert_expiry_seconds'];
  for (const m of used) t.ok(exported.includes(m), `${m} is in the agent's registry`);
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
