import t from 'tap';
import { kubernetesDiscoveryFromEnv, staticConfigFromEnv } from '../../src/discovery/kubernetes-env.js';
import { KubernetesDiscovery } from '../../src/discovery/kubernetes.js';
import type { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/telemetry/log.js';

t.test('the DaemonSet environment', async (t) => {
  const s = staticConfigFromEnv({
    env: {
      NODE_NAME: 'node-a',
      NODE_IP: '10.0.0.7',
      WEFT_TRUST_DOMAIN: 'corp.example',
      WEFT_CA_URL: 'https://weft-ca.weft-system.svc:15012',
      WEFT_CA_ROOT_CERT: '/etc/weft/ca/root.pem',
      WEFT_CA_TOKEN_FILE: '/var/run/secrets/weft-ca/token',
      WEFT_CA_CERT_TTL: '12h',
      WEFT_STATE_DIR: '/var/lib/weft',
      WEFT_LOG_LEVEL: 'debug',
      WEFT_DRAIN_TIMEOUT: '10s',
      WEFT_CGROUP_ROOT: '/sys/fs/cgroup/unified',
      WEFT_PORT_METRICS: '9020',
    },
  });
  t.same(s, {
    nodeName: 'node-a',
    nodeAddress: '10.0.0.7',
    cgroupRoot: '/sys/fs/cgroup/unified',
    static: {
      mesh: { trustDomain: 'corp.example' },
      ports: { outbound: 15001, inbound: 15006, tunnel: 15008, admin: 15000, metrics: 9020 },
      ca: { url: 'https://weft-ca.weft-system.svc:15012', rootCert: '/etc/weft/ca/root.pem', tokenFile: '/var/run/secrets/weft-ca/token', certTtl: 43_200_000 },
      stateDir: '/var/lib/weft',
      agent: { drainTimeout: 10_000, logLevel: 'debug', jwksAllowLocalUris: false, maxDownstreamConnections: { outbound: 16_384, inbound: 4_096, tunnel: 16_384 } },
    },
  });
});

t.test("the drain time follows the pod's grace period, less a second, unless WEFT_DRAIN_TIMEOUT says otherwise", async (t) => {
  const base = { NODE_NAME: 'n', NODE_IP: '10.0.0.1' };
  t.equal(staticConfigFromEnv({ env: { ...base, WEFT_TERMINATION_GRACE_PERIOD_SECONDS: '30' } }).static.agent?.drainTimeout, 29_000);
  t.equal(staticConfigFromEnv({ env: { ...base, WEFT_TERMINATION_GRACE_PERIOD_SECONDS: '0' } }).static.agent?.drainTimeout, 0);
  t.equal(staticConfigFromEnv({ env: { ...base, WEFT_TERMINATION_GRACE_PERIOD_SECONDS: '30', WEFT_DRAIN_TIMEOUT: '5s' } }).static.agent?.drainTimeout, 5_000);
  t.throws(() => staticConfigFromEnv({ env: { ...base, WEFT_TERMINATION_GRACE_PERIOD_SECONDS: '30s' } }), {
    name: 'ConfigError',
    problems: [/^WEFT_TERMINATION_GRACE_PERIOD_SECONDS: "30s" is not a whole number of seconds/],
  });
});

t.test('flags win over the environment; defaults', async (t) => {
  const s = staticConfigFromEnv({ node: 'n1', address: '10.0.0.1', env: { NODE_NAME: 'ignored', NODE_IP: '10.9.9.9' } });
  t.equal(s.nodeName, 'n1');
  t.equal(s.nodeAddress, '10.0.0.1');
  t.same(s.static.ca, {}, 'embedded CA');
  t.equal(s.cgroupRoot, undefined);
});

t.test('problems name the variables', async (t) => {
  t.throws(() => staticConfigFromEnv({ env: {} }), { name: 'ConfigError', problems: [/^NODE_NAME: required/, /^NODE_IP: required/] });
  let err: ConfigError | undefined;
  try {
    staticConfigFromEnv({ env: { NODE_NAME: 'n', NODE_IP: 'not-an-ip', WEFT_CA_URL: 'https://ca:1', WEFT_PORT_ADMIN: 'x', WEFT_LOG_LEVEL: 'loud' } });
  } catch (e) {
    err = e as ConfigError;
  }
  t.ok(err);
  const text = err!.problems.join('\n');
  t.match(text, /^NODE_IP: /m);
  t.match(text, /^WEFT_PORT_ADMIN: /m);
  t.match(text, /^WEFT_LOG_LEVEL: /m);
});

t.test('kubernetesDiscoveryFromEnv builds a discovery (nothing is contacted before start)', async (t) => {
  const d = kubernetesDiscoveryFromEnv({ log: silentLogger, env: { NODE_NAME: 'n', NODE_IP: '10.0.0.1' } });
  t.type(d, KubernetesDiscovery);
  t.equal(d.nodeName, 'n');
  t.equal(d.nodeAddress, '10.0.0.1');
  await d.stop();
});
