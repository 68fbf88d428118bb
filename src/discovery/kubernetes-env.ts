/**
 * `weft agent --kubernetes`: KubernetesDiscovery configured from flags and the environment
 * the DaemonSet (deploy/kubernetes/agent.yaml) sets. Every variable is optional except the
 * node's name and address, which flags may give instead.
 *
 * | variable            | what                                                        | default            |
 * |---------------------|-------------------------------------------------------------|--------------------|
 * | NODE_NAME           | this node (`spec.nodeName`)                                  | `--node`, required |
 * | NODE_IP             | this node's IPv4 address (`status.hostIP`)                   | `--address`, required |
 * | WEFT_TRUST_DOMAIN   | SPIFFE trust domain                                          | cluster.local      |
 * | WEFT_CA_URL         | remote CA (`weft ca`), https://...; unset: embedded CA       |                    |
 * | WEFT_CA_ROOT_CERT   | the CA's root certificate (PEM file)                         | required with URL  |
 * | WEFT_CA_TOKEN_FILE  | token presented to the CA (a projected SA token, audience weft-ca; re-read on each request) | required with URL |
 * | WEFT_CA_CERT_TTL    | certificate lifetime asked of the CA (`24h`)                 | 24h                |
 * | WEFT_STATE_DIR      | agent state directory                                        | /var/lib/weft      |
 * | WEFT_CGROUP_ROOT    | cgroup v2 mount holding the kubelet's pod cgroups            | from /proc/mounts  |
 * | WEFT_LOG_LEVEL      | log level                                                    | info               |
 * | WEFT_DRAIN_TIMEOUT  | how long the agent serves on after SIGTERM, and drains after a handover (`20s`) | 20s |
 * | WEFT_TERMINATION_GRACE_PERIOD_SECONDS | the pod's terminationGracePeriodSeconds: without WEFT_DRAIN_TIMEOUT, the drain time is this less a second (as ztunnel's) | |
 * | WEFT_PORT_OUTBOUND, WEFT_PORT_INBOUND, WEFT_PORT_TUNNEL, WEFT_PORT_ADMIN, WEFT_PORT_METRICS | the agent's ports | 15001, 15006, 15008, 15000, 15020 |
 */
import type { Logger } from 'pino';
import { normalizeConfig } from '../config/normalize.js';
import type { MeshConfig } from '../config/types.js';
import { ConfigError } from '../errors.js';
import { KubernetesDiscovery } from './kubernetes.js';

const PORT_NAMES = ['outbound', 'inbound', 'tunnel', 'admin', 'metrics'] as const;

export interface KubernetesEnvOptions {
  /** `--node`: overrides NODE_NAME. */
  node?: string;
  /** `--address`: overrides NODE_IP. */
  address?: string;
  log: Logger;
  /** The environment to read (default: process.env). */
  env?: Readonly<Record<string, string | undefined>>;
}

/**
 * The agent-level settings from the environment, validated like the file's.
 * @throws ConfigError naming the variables that are missing or invalid.
 */
export function staticConfigFromEnv(opts: Omit<KubernetesEnvOptions, 'log'>): {
  nodeName: string;
  nodeAddress: string;
  static: Partial<MeshConfig>;
  cgroupRoot?: string;
} {
  const env = opts.env ?? process.env;
  const nodeName = opts.node ?? env.NODE_NAME ?? '';
  const nodeAddress = opts.address ?? env.NODE_IP ?? '';
  const problems: string[] = [];
  if (!nodeName) problems.push('NODE_NAME: required (or --node); the DaemonSet sets it from spec.nodeName');
  if (!nodeAddress) problems.push('NODE_IP: required (or --address); the DaemonSet sets it from status.hostIP');
  if (problems.length) throw new ConfigError('environment', problems);

  const raw: Record<string, unknown> = { node: { name: nodeName, address: nodeAddress } };
  if (env.WEFT_TRUST_DOMAIN) raw.mesh = { trustDomain: env.WEFT_TRUST_DOMAIN };
  const ca: Record<string, string> = {};
  if (env.WEFT_CA_URL) ca.url = env.WEFT_CA_URL;
  if (env.WEFT_CA_ROOT_CERT) ca.rootCert = env.WEFT_CA_ROOT_CERT;
  if (env.WEFT_CA_TOKEN_FILE) ca.tokenFile = env.WEFT_CA_TOKEN_FILE;
  if (env.WEFT_CA_CERT_TTL) ca.certTtl = env.WEFT_CA_CERT_TTL;
  raw.ca = ca;
  if (env.WEFT_STATE_DIR) raw.stateDir = env.WEFT_STATE_DIR;
  const agent: Record<string, string> = {};
  if (env.WEFT_LOG_LEVEL) agent.logLevel = env.WEFT_LOG_LEVEL;
  if (env.WEFT_DRAIN_TIMEOUT) agent.drainTimeout = env.WEFT_DRAIN_TIMEOUT;
  else if (env.WEFT_TERMINATION_GRACE_PERIOD_SECONDS) {
    // The kubelet kills the container when the grace period is over: the agent's drain ends a
    // second before, so that it closes what is left itself.
    const grace = env.WEFT_TERMINATION_GRACE_PERIOD_SECONDS.trim();
    if (/^\d+$/.test(grace)) agent.drainTimeout = `${Math.max(0, Number(grace) - 1)}s`;
    else throw new ConfigError('environment', [`WEFT_TERMINATION_GRACE_PERIOD_SECONDS: "${grace}" is not a whole number of seconds (the pod's terminationGracePeriodSeconds)`]);
  }
  raw.agent = agent;
  const ports: Record<string, unknown> = {};
  for (const name of PORT_NAMES) {
    const v = env[`WEFT_PORT_${name.toUpperCase()}`];
    // Numbers stay numbers for the schema to check; anything else is passed as text so that
    // the schema names it ("must be an integer").
    if (v !== undefined && v !== '') ports[name] = /^\d+$/.test(v.trim()) ? Number(v) : v;
  }
  if (Object.keys(ports).length) raw.ports = ports;

  let cfg: MeshConfig;
  try {
    cfg = normalizeConfig(raw, 'environment', { baseDir: '/' });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    // Name the variables, not the config paths they became.
    const names: Record<string, string> = {
      'node.name': 'NODE_NAME',
      'node.address': 'NODE_IP',
      'mesh.trustDomain': 'WEFT_TRUST_DOMAIN',
      'ca.url': 'WEFT_CA_URL',
      'ca.rootCert': 'WEFT_CA_ROOT_CERT',
      'ca.tokenFile': 'WEFT_CA_TOKEN_FILE',
      'ca.certTtl': 'WEFT_CA_CERT_TTL',
      stateDir: 'WEFT_STATE_DIR',
      'agent.logLevel': 'WEFT_LOG_LEVEL',
      'agent.drainTimeout': 'WEFT_DRAIN_TIMEOUT',
      ...Object.fromEntries(PORT_NAMES.map((n) => [`ports.${n}`, `WEFT_PORT_${n.toUpperCase()}`])),
    };
    throw new ConfigError(
      'environment',
      err.problems.map((p) => {
        const path = p.slice(0, p.indexOf(':'));
        return names[path] ? `${names[path]}${p.slice(path.length)}` : p;
      }),
    );
  }
  return {
    nodeName,
    nodeAddress,
    static: { mesh: cfg.mesh, ports: cfg.ports, ca: cfg.ca, stateDir: cfg.stateDir, agent: cfg.agent },
    cgroupRoot: env.WEFT_CGROUP_ROOT || undefined,
  };
}

/**
 * A KubernetesDiscovery for `weft agent --kubernetes`.
 * @throws ConfigError when the node's name or address is missing or a variable is invalid.
 */
export function kubernetesDiscoveryFromEnv(opts: KubernetesEnvOptions): KubernetesDiscovery {
  const s = staticConfigFromEnv(opts);
  return new KubernetesDiscovery({
    nodeName: s.nodeName,
    nodeAddress: s.nodeAddress,
    static: s.static,
    cgroupRoot: s.cgroupRoot,
    log: opts.log,
  });
}
