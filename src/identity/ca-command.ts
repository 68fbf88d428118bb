/**
 * `weft ca`: the certificate authority as a command.
 *
 *   weft ca --listen ADDR:PORT --state-dir DIR [--cacerts DIR] [--config FILE] [--trust-domain TD]
 *           [--server-name NAME]... [--allow-any-identity] [--log-level LEVEL]
 *       Serve the CA. Writes DIR/root.pem (give it to agents as `ca.rootCert`); with
 *       --cacerts, signs with the intermediate of that directory (Istio's layout: ca-cert.pem,
 *       ca-key.pem, root-cert.pem, cert-chain.pem) and agents trust its root-cert.pem. With
 *       --config (the mesh YAML), a node may obtain only the identities of its own workloads
 *       (the file is re-read when it changes). Without it every request is refused, unless
 *       --allow-any-identity says to trust every node with every identity (a lab setting).
 *   weft ca --kubernetes --listen ADDR:PORT --state-dir DIR [--agent-service-account NS/NAME]...
 *           [--token-audience AUD] [--kubeconfig FILE] [--trust-domain TD] [--server-name NAME]...
 *       Serve the CA in a cluster (ca-kubernetes.ts): agents present their projected
 *       ServiceAccount token, checked with a TokenReview (audience --token-audience, default
 *       weft-ca; user one of --agent-service-account, default weft-system/weft-agent), and get
 *       only the identities of pods that the API lists on their node. `weft1.` node tokens are
 *       refused in this mode. API credentials: in-cluster, or --kubeconfig / KUBECONFIG.
 *       --root-secret NAME: without --cacerts, keep a self-signed root in that Secret of the
 *       CA's namespace (POD_NAMESPACE), created on first start and shared by every replica.
 *       --root-configmap NAME: publish the trust bundle there (key root.pem) for the agents.
 *   weft ca token --state-dir DIR --node NAME
 *       Print a bootstrap token for one node (the agent's `ca.tokenFile`).
 *   weft ca rotate-token-secret --state-dir DIR
 *       Invalidate every token issued so far; restart the CA afterwards.
 */
import { parseCommandArgs, reportUsage, UsageError, wantsHelp, HelpRequested } from '../cli-args.js';
import type { Writable } from 'node:stream';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { KubeConfig } from '@kubernetes/client-node';
import { createLogger } from '../telemetry/log.js';
import { ConfigError } from '../errors.js';
import { CertificateAuthority, ROOT_CERT_FILE, type RootStore } from './ca.js';
import { KubernetesRootStore, publishTrustBundle } from './ca-root-store.js';
import { authorizerFromIdentities, readCaConfigFile, startCaServer, watchConfigIdentities, type Authenticator, type Authorizer, type CaServer } from './ca-server.js';
import { RouteStatusWriter } from '../discovery/k8s/route-status.js';
import { agentUsername, DEFAULT_AGENT_SERVICE_ACCOUNT, DEFAULT_TOKEN_AUDIENCE, defaultKubeConfig, KubernetesCaAuth } from './ca-kubernetes.js';

export const DEFAULT_CA_PORT = 15012;

const USAGE = `usage:
  weft ca --listen ADDR:PORT --state-dir DIR [--cacerts DIR] [--config FILE] [--trust-domain TD] [--server-name NAME]... [--allow-any-identity]
  weft ca --kubernetes --listen ADDR:PORT --state-dir DIR [--cacerts DIR | --root-secret NAME] [--root-configmap NAME]
          [--agent-service-account NS/NAME]... [--token-audience AUD] [--kubeconfig FILE] [--trust-domain TD] [--server-name NAME]... [--route-status]
       --route-status makes this replica (the first running one) the cluster's one status
       writer: route status, and weft custom resources' Accepted condition and refusal Events.
  weft ca token --state-dir DIR --node NAME
  weft ca rotate-token-secret --state-dir DIR
Run 'weft ca token --help' or 'weft ca rotate-token-secret --help' for those.`;

const TOKEN_USAGE = `usage:
  weft ca token --state-dir DIR --node NAME
      Print a bootstrap token for one node (the agent's ca.tokenFile).`;

const ROTATE_USAGE = `usage:
  weft ca rotate-token-secret --state-dir DIR
      Invalidate every node token issued so far; restart the CA afterwards.`;

export interface CaCommandIo {
  stdout?: Writable;
  stderr?: Writable;
  /** Stops a serving CA (besides SIGINT/SIGTERM). */
  signal?: AbortSignal;
  log?: Logger;
  /** Called once the server listens (tests read the bound port from it). */
  onListening?: (server: CaServer) => void;
  /** With --kubernetes: the API client configuration (default: --kubeconfig, in-cluster, or KUBECONFIG). */
  kubeConfig?: KubeConfig;
  /** With --kubernetes: cache and timeout settings (tests shorten them). */
  kubernetes?: { podCacheMs?: number; missRefreshMs?: number; tokenCacheMs?: number; requestTimeoutMs?: number };
}

/** `ADDR:PORT`, `[v6]:PORT`, or `:PORT` (all addresses). */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`--listen ${value}: expected ADDR:PORT (e.g. 0.0.0.0:${DEFAULT_CA_PORT})`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/**
 * Runs `weft ca ...` (argv after `ca`); resolves with the exit code. Serving resolves when
 * the server stops (SIGINT, SIGTERM, or `io.signal`).
 */
export async function runCaCommand(argv: string[], io: CaCommandIo = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const args = argv[0] === 'ca' ? argv.slice(1) : argv;
  const sub = args[0] && !args[0].startsWith('-') ? args[0] : 'serve';
  const rest = sub === 'serve' && args[0] !== 'serve' ? args : args.slice(1);
  try {
    if (sub === 'serve' && wantsHelp(rest)) throw new HelpRequested('weft ca', USAGE);
    switch (sub) {
      case 'serve':
        return await serve(rest, io);
      case 'token': {
        const { values } = parseCommandArgs('weft ca token', TOKEN_USAGE, rest, { 'state-dir': { type: 'string' }, node: { type: 'string' } });
        if (!values['state-dir'] || !values.node) throw new UsageError('weft ca token', '--state-dir DIR and --node NAME are required');
        const ca = await CertificateAuthority.open(values['state-dir']);
        stdout.write(`${ca.issueNodeToken(values.node)}\n`);
        return 0;
      }
      case 'rotate-token-secret': {
        const { values } = parseCommandArgs('weft ca rotate-token-secret', ROTATE_USAGE, rest, { 'state-dir': { type: 'string' } });
        if (!values['state-dir']) throw new UsageError('weft ca rotate-token-secret', '--state-dir DIR is required');
        const ca = await CertificateAuthority.open(values['state-dir']);
        await ca.rotateTokenSecret();
        stdout.write('every earlier node token is now invalid: restart the CA and issue new tokens with `weft ca token`\n');
        return 0;
      }
      case 'help':
        stdout.write(`${USAGE}\n`);
        return 0;
      default:
        throw new UsageError('weft ca', `unknown subcommand '${sub}'`);
    }
  } catch (err) {
    if (err instanceof HelpRequested || err instanceof UsageError) return reportUsage(err, stdout, stderr);
    if (err instanceof ConfigError) {
      stderr.write(`weft ca: ${err.message}\n`);
      return 1;
    }
    stderr.write(`weft ca: ${(err as Error).message}\n`);
    return 1;
  }
}

async function serve(args: string[], io: CaCommandIo): Promise<number> {
  const { values } = parseCommandArgs('weft ca', USAGE, args, {
    listen: { type: 'string' },
    'state-dir': { type: 'string' },
    config: { type: 'string', short: 'c' },
    'trust-domain': { type: 'string' },
    'server-name': { type: 'string', multiple: true },
    'allow-any-identity': { type: 'boolean', default: false },
    kubernetes: { type: 'boolean', default: false },
    'agent-service-account': { type: 'string', multiple: true },
    'token-audience': { type: 'string' },
    kubeconfig: { type: 'string' },
    'route-status': { type: 'boolean', default: false },
    cacerts: { type: 'string' },
    'root-secret': { type: 'string' },
    'root-configmap': { type: 'string' },
    'log-level': { type: 'string' },
  });
  if (!values['state-dir']) throw new UsageError('weft ca', '--state-dir DIR is required');
  const listen = parseListen(values.listen ?? `0.0.0.0:${DEFAULT_CA_PORT}`);
  const log = io.log ?? createLogger(values['log-level'] ?? process.env.WEFT_LOG_LEVEL ?? 'info');
  const stateDir = values['state-dir'];
  const k8sOnly = (['agent-service-account', 'token-audience', 'kubeconfig', 'root-secret', 'root-configmap'] as const).filter((k) => values[k] !== undefined);
  if (values.cacerts && values['root-secret'])
    throw new UsageError('weft ca', '--cacerts and --root-secret are alternatives: the CA signs with the given intermediate, or with a root it keeps in the Secret');
  if (values['route-status'] && !values.kubernetes) throw new UsageError('weft ca', '--route-status only applies with --kubernetes');
  if (values.kubernetes && (values.config || values['allow-any-identity'])) {
    throw new UsageError('weft ca', `--kubernetes takes the workloads from the API: drop ${values.config ? '--config' : '--allow-any-identity'}`);
  }
  if (!values.kubernetes && k8sOnly.length) {
    throw new UsageError('weft ca', `${k8sOnly.map((k) => `--${k}`).join(', ')} only apply with --kubernetes`);
  }

  let authorize: Authorizer;
  let authenticate: Authenticator | undefined;
  let routeStatus: RouteStatusWriter | undefined;
  let rootStore: RootStore | undefined;
  let publish: (() => Promise<unknown>) | undefined;
  let trustDomain = values['trust-domain'];
  if (values.kubernetes) {
    const agents = (values['agent-service-account'] ?? [DEFAULT_AGENT_SERVICE_ACCOUNT]).map(agentUsername);
    let kubeConfig = io.kubeConfig;
    if (!kubeConfig && values.kubeconfig) {
      kubeConfig = new KubeConfig();
      kubeConfig.loadFromFile(values.kubeconfig);
    }
    kubeConfig ??= defaultKubeConfig();
    const k8s = new KubernetesCaAuth({
      kubeConfig,
      audience: values['token-audience'] ?? DEFAULT_TOKEN_AUDIENCE,
      agentUsernames: agents,
      ...io.kubernetes,
      log,
    });
    authenticate = k8s.authenticator;
    authorize = k8s.authorizer;
    const namespace = process.env.POD_NAMESPACE || 'weft-system';
    if (values['root-secret']) rootStore = new KubernetesRootStore({ kubeConfig, namespace, name: values['root-secret'], log });
    const configMap = values['root-configmap'];
    if (configMap) {
      const kc = kubeConfig;
      publish = () => publishTrustBundle({ kubeConfig: kc, namespace, name: configMap, pem: ca.rootPem, log });
    }
    if (values['route-status']) {
      // The cluster's one status writer: Gateway API routes (src/discovery/k8s/route-status.ts)
      // and weft's custom resources, with refusal Events (src/discovery/k8s/cr-status.ts).
      routeStatus = new RouteStatusWriter({
        kubeConfig,
        log: log.child({ component: 'route-status' }),
        podName: process.env.POD_NAME,
        podNamespace: process.env.POD_NAMESPACE,
        ...(values['trust-domain'] ? { trustDomain: values['trust-domain'] } : {}),
      });
    }
    log.info(
      { apiServer: kubeConfig.getCurrentCluster()?.server, audience: k8s.audience, agents },
      'kubernetes mode: agents authenticate with projected ServiceAccount tokens (TokenReview); node bootstrap tokens are refused',
    );
  } else if (values.config) {
    const cfg = await readCaConfigFile(values.config);
    trustDomain ??= cfg.trustDomain;
    authorize = authorizerFromIdentities(watchConfigIdentities(values.config, cfg, log.child({ component: 'ca-config' })));
  } else if (values['allow-any-identity']) {
    log.warn('--allow-any-identity: any node holding a token can obtain any identity');
    authorize = () => true;
  } else {
    log.warn('no --config: the CA knows no workloads and refuses every certificate (pass --config FILE)');
    authorize = () => false;
  }

  const ca: CertificateAuthority = await CertificateAuthority.open(stateDir, { trustDomain, log, ...(values.cacerts ? { cacerts: values.cacerts } : {}), ...(rootStore ? { rootStore } : {}) });
  // Before serving: an agent that mounts the ConfigMap must find the roots the leaves lead to.
  await publish?.();
  routeStatus?.start();
  const server = await startCaServer({ ca, listen, authorize, ...(authenticate ? { authenticate } : {}), log, serverNames: values['server-name'] ?? [] });
  log.info({ url: server.url, root: values.cacerts || rootStore ? ca.source : join(stateDir, ROOT_CERT_FILE), trustDomain: ca.trustDomain }, 'weft ca serving');
  io.onListening?.(server);

  let onSignal: () => void = () => undefined;
  await new Promise<void>((resolve) => {
    onSignal = resolve;
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    if (io.signal?.aborted) resolve();
    io.signal?.addEventListener('abort', onSignal, { once: true });
  });
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  log.info('weft ca stopping');
  await routeStatus?.stop();
  await server.close();
  return 0;
}
