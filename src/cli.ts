import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
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
  weft version`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function agentCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      kubernetes: { type: 'boolean', default: false },
      node: { type: 'string' },
      address: { type: 'string' },
      'pin-root': { type: 'string' },
      'no-capture': { type: 'boolean', default: false },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  const log = createLogger(values['log-level'] ?? process.env.WEFT_LOG_LEVEL ?? 'info');
  let discovery: Discovery;
  if (values.kubernetes) {
    const { kubernetesDiscoveryFromEnv } = await import('./discovery/kubernetes-env.js');
    discovery = kubernetesDiscoveryFromEnv({ node: values.node, address: values.address, log });
  } else if (values.config) {
    discovery = new FileDiscovery(values.config, { log: log.child({ component: 'discovery' }) });
  } else {
    process.stderr.write(`weft agent: --config FILE or --kubernetes is required\n${USAGE}\n`);
    return 2;
  }
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
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      agent.stop().then(
        () => resolve(0),
        (err) => {
          log.error({ err }, 'error while stopping');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      if (discovery instanceof FileDiscovery) void discovery.reload();
    });
  });
}

async function validateCommand(argv: string[]): Promise<number> {
  const file = argv[0];
  if (!file) {
    process.stderr.write(`weft validate: a FILE is required\n`);
    return 2;
  }
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

export async function main(argv: string[]): Promise<number> {
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
      process.stdout.write(`weft ${version()}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`weft: unknown command '${cmd}'\n${USAGE}\n`);
      return 2;
  }
}
