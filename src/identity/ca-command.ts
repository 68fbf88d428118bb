/**
 * `weft ca`: the certificate authority as a command.
 *
 *   weft ca --listen ADDR:PORT --state-dir DIR [--config FILE] [--trust-domain TD]
 *           [--server-name NAME]... [--allow-any-identity] [--log-level LEVEL]
 *       Serve the CA. Writes DIR/root.pem (give it to agents as `ca.rootCert`). With
 *       --config (the mesh YAML), a node may obtain only the identities of its own workloads
 *       (the file is re-read when it changes). Without it every request is refused, unless
 *       --allow-any-identity says to trust every node with every identity (a lab setting).
 *   weft ca token --state-dir DIR --node NAME
 *       Print a bootstrap token for one node (the agent's `ca.tokenFile`).
 *   weft ca rotate-token-secret --state-dir DIR
 *       Invalidate every token issued so far; restart the CA afterwards.
 */
import { parseArgs } from 'node:util';
import type { Writable } from 'node:stream';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createLogger } from '../telemetry/log.js';
import { ConfigError } from '../errors.js';
import { CertificateAuthority, ROOT_CERT_FILE } from './ca.js';
import {
  authorizerFromIdentities,
  readCaConfigFile,
  startCaServer,
  watchConfigIdentities,
  type Authorizer,
  type CaServer,
} from './ca-server.js';

export const DEFAULT_CA_PORT = 15012;

const USAGE = `usage:
  weft ca --listen ADDR:PORT --state-dir DIR [--config FILE] [--trust-domain TD] [--server-name NAME]... [--allow-any-identity]
  weft ca token --state-dir DIR --node NAME
  weft ca rotate-token-secret --state-dir DIR`;

export interface CaCommandIo {
  stdout?: Writable;
  stderr?: Writable;
  /** Stops a serving CA (besides SIGINT/SIGTERM). */
  signal?: AbortSignal;
  log?: Logger;
  /** Called once the server listens (tests read the bound port from it). */
  onListening?: (server: CaServer) => void;
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
    switch (sub) {
      case 'serve':
        return await serve(rest, io, stderr);
      case 'token': {
        const { values } = parseArgs({ args: rest, options: { 'state-dir': { type: 'string' }, node: { type: 'string' } }, strict: true });
        if (!values['state-dir'] || !values.node) {
          stderr.write(`weft ca token: --state-dir DIR and --node NAME are required\n${USAGE}\n`);
          return 2;
        }
        const ca = await CertificateAuthority.open(values['state-dir']);
        stdout.write(`${ca.issueNodeToken(values.node)}\n`);
        return 0;
      }
      case 'rotate-token-secret': {
        const { values } = parseArgs({ args: rest, options: { 'state-dir': { type: 'string' } }, strict: true });
        if (!values['state-dir']) {
          stderr.write(`weft ca rotate-token-secret: --state-dir DIR is required\n`);
          return 2;
        }
        const ca = await CertificateAuthority.open(values['state-dir']);
        await ca.rotateTokenSecret();
        stdout.write('every earlier node token is now invalid: restart the CA and issue new tokens with `weft ca token`\n');
        return 0;
      }
      case 'help':
        stdout.write(`${USAGE}\n`);
        return 0;
      default:
        stderr.write(`weft ca: unknown subcommand '${sub}'\n${USAGE}\n`);
        return 2;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      stderr.write(`weft ca: ${err.message}\n`);
      return 1;
    }
    const code = (err as { code?: string }).code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
      stderr.write(`weft ca: ${(err as Error).message}\n${USAGE}\n`);
      return 2;
    }
    stderr.write(`weft ca: ${(err as Error).message}\n`);
    return 1;
  }
}

async function serve(args: string[], io: CaCommandIo, stderr: Writable): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      listen: { type: 'string' },
      'state-dir': { type: 'string' },
      config: { type: 'string', short: 'c' },
      'trust-domain': { type: 'string' },
      'server-name': { type: 'string', multiple: true },
      'allow-any-identity': { type: 'boolean', default: false },
      'log-level': { type: 'string' },
    },
    strict: true,
  });
  if (!values['state-dir']) {
    stderr.write(`weft ca: --state-dir DIR is required\n${USAGE}\n`);
    return 2;
  }
  const listen = parseListen(values.listen ?? `0.0.0.0:${DEFAULT_CA_PORT}`);
  const log = io.log ?? createLogger(values['log-level'] ?? process.env.WEFT_LOG_LEVEL ?? 'info');
  const stateDir = values['state-dir'];

  let authorize: Authorizer;
  let trustDomain = values['trust-domain'];
  if (values.config) {
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

  const ca = await CertificateAuthority.open(stateDir, { trustDomain, log });
  const server = await startCaServer({ ca, listen, authorize, log, serverNames: values['server-name'] ?? [] });
  log.info({ url: server.url, root: join(stateDir, ROOT_CERT_FILE), trustDomain: ca.trustDomain }, 'weft ca serving');
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
  await server.close();
  return 0;
}
