import { readFileSync } from 'node:fs';
import { HelpRequested, parseCommandArgs, reportUsage, UsageError } from './cli-args.js';
import { Agent } from './agent.js';
import { createLogger } from './telemetry/log.js';
import { FileDiscovery } from './discovery/file.js';
import { loadConfigFile } from './config/load.js';
import { ConfigError } from './errors.js';
import type { Discovery } from './discovery/types.js';

const USAGE = `usage:
  weft agent --config FILE [--pin-root DIR] [--no-capture]   run the node agent from a YAML file (embedded mode)
  weft agent --kubernetes [--node NAME] [--address IP]       run the node agent with discovery from the Kubernetes API
  weft ca --listen ADDR:PORT --state-dir DIR [--config FILE] run the certificate authority
  weft ca token --state-dir DIR --node NAME                  print a bootstrap token for one node
  weft validate FILE                                         check a config file and exit
  weft version
Run 'weft COMMAND --help' for a command's options.`;

const AGENT_USAGE = `usage:
  weft agent --config FILE [--pin-root DIR] [--no-capture] [--log-level LEVEL]
      Run the node agent with the mesh from a YAML file (embedded mode; SIGHUP re-reads it).
  weft agent --kubernetes [--node NAME] [--address IP] [--pin-root DIR] [--no-capture] [--log-level LEVEL]
      Run the node agent with discovery from the Kubernetes API (NODE_NAME / POD_IP by default).
options:
  -c, --config FILE     the mesh configuration (embedded mode)
  --kubernetes          take namespaces, workloads, services and policies from the API
  --node NAME           this node's name (--kubernetes)
  --address IP          this node's address for tunnels (--kubernetes)
  --pin-root DIR        bpffs directory for pinned maps and links
  --no-capture          do not attach the eBPF capture (the proxy listeners only)
  --log-level LEVEL     pino level (default: WEFT_LOG_LEVEL or info)
  -h, --help            this text`;

const VALIDATE_USAGE = `usage:
  weft validate FILE
      Check a mesh configuration file; exit 0 when it is valid, 1 with the problems when not.`;

const VERSION_USAGE = `usage:
  weft version
      Print weft's version.`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function agentCommand(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs('weft agent', AGENT_USAGE, argv, {
    config: { type: 'string', short: 'c' },
    kubernetes: { type: 'boolean', default: false },
    node: { type: 'string' },
    address: { type: 'string' },
    'pin-root': { type: 'string' },
    'no-capture': { type: 'boolean', default: false },
    'log-level': { type: 'string' },
  });
  if (values.kubernetes && values.config) throw new UsageError('weft agent', '--config and --kubernetes are two modes: give one');
  if (!values.kubernetes && (values.node !== undefined || values.address !== undefined)) {
    throw new UsageError('weft agent', `--${values.node !== undefined ? 'node' : 'address'} only applies with --kubernetes`);
  }
  const log = createLogger(values['log-level'] ?? process.env.WEFT_LOG_LEVEL ?? 'info');
  let discovery: Discovery;
  if (values.kubernetes) {
    const { kubernetesDiscoveryFromEnv } = await import('./discovery/kubernetes-env.js');
    discovery = kubernetesDiscoveryFromEnv({ node: values.node, address: values.address, log });
  } else if (values.config) {
    discovery = new FileDiscovery(values.config, { log: log.child({ component: 'discovery' }) });
  } else {
    throw new UsageError('weft agent', '--config FILE or --kubernetes is required');
  }
  const kubernetes = values.kubernetes;
  let agent: Agent;
  try {
    agent = await Agent.start({ discovery, log, capture: !values['no-capture'], pinRoot: values['pin-root'] });
  } catch (err) {
    if (err instanceof ConfigError) {
      log.fatal({ problems: err.problems }, `cannot start: ${err.message}`);
    } else {
      log.fatal({ err }, `cannot start: ${(err as Error).message}`);
    }
    return 1;
  }
  return await new Promise<number>((resolve) => {
    let exitCode = 0;
    let done = false;
    // SIGTERM (Kubernetes, systemd): readiness fails, the agent serves on until a new agent
    // takes over or the drain time is up. SIGINT (a terminal): stop now, letting requests in
    // flight finish.
    process.on('SIGTERM', () => {
      log.info({ signal: 'SIGTERM' }, 'shutting down');
      if (done) resolve(exitCode);
      else void agent.terminate();
    });
    process.on('SIGINT', () => {
      log.info({ signal: 'SIGINT' }, 'shutting down');
      agent.stop().catch((err) => {
        log.error({ err }, 'error while stopping');
        exitCode = 1;
      });
    });
    process.on('SIGHUP', () => {
      if (discovery instanceof FileDiscovery) void discovery.reload();
    });
    void agent.finished.then(() => {
      done = true;
      // Handed over in Kubernetes: the container must not exit by itself (the kubelet would
      // restart it, and the restarted agent would take the node back). It waits for the
      // SIGTERM that deleting its pod sends, and then exits at once.
      if (agent.successor && kubernetes && !agent.terminating) {
        log.info({ successor: agent.successor.pid }, 'handed over and drained: waiting for SIGTERM');
        return;
      }
      resolve(exitCode);
    });
  });
}

async function validateCommand(argv: string[]): Promise<number> {
  const { positionals } = parseCommandArgs('weft validate', VALIDATE_USAGE, argv, {}, 1);
  const file = positionals[0];
  if (!file) throw new UsageError('weft validate', 'a FILE is required');
  try {
    const cfg = await loadConfigFile(file);
    process.stdout.write(`${file}: valid (${cfg.namespaces.length} namespaces, ${cfg.workloads.length} workloads, ${cfg.services.length} services, ${cfg.policies.length} policies)\n`);
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${file}: invalid\n${err.problems.map((p) => `  - ${p}`).join('\n')}\n`);
      return 1;
    }
    process.stderr.write(`${file}: ${(err as Error).message}\n`);
    return 1;
  }
}

/** Runs `weft ARGV...` and resolves with the exit code (0 ok, 1 failure, 2 usage error). */
export async function main(argv: string[]): Promise<number> {
  try {
    return await dispatch(argv);
  } catch (err) {
    return reportUsage(err, process.stdout, process.stderr);
  }
}

async function dispatch(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'agent':
      return agentCommand(rest);
    case 'ca': {
      const { runCaCommand } = await import('./identity/ca-command.js');
      return runCaCommand(rest);
    }
    case 'validate':
      return validateCommand(rest);
    case 'version':
    case '--version':
      parseCommandArgs('weft version', VERSION_USAGE, rest, {});
      process.stdout.write(`weft ${version()}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      if (cmd === undefined) {
        process.stderr.write(`${USAGE}\n`);
        return 2;
      }
      throw new HelpRequested('weft', USAGE);
    default:
      if (cmd.startsWith('-')) throw new UsageError('weft', `unknown option '${cmd}'`);
      throw new UsageError('weft', `unknown command '${cmd}'`);
  }
}
