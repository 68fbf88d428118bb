/**
 * The CA's HTTPS API, for agents:
 *
 *   POST /v1/sign   Authorization: Bearer <token>
 *                   { csr: PEM, namespace, serviceAccount, ttlSeconds?, workload? }
 *                   -> 200 { certChain: [leaf, intermediates..., root], expiresAt, spiffeId }
 *                   401 bad or missing token; 403 the node runs no such workload (or the
 *                   caller is not an agent); 400 malformed request; 413 body over 64 KiB;
 *                   503 the CA cannot decide now (the Kubernetes API is unreachable)
 *   GET  /v1/root   -> the trust bundle: the root certificate(s), PEM
 *   GET  /healthz   -> ok
 *
 * Errors are JSON `{ error: { code, message } }`. The server's own certificate is issued by
 * the root at start (DNS `weft-ca`, plus the listen address) and renewed while it runs.
 * Which node the caller is, is the `authenticate` callback's answer (default: the node of a
 * `weft1.` bootstrap token; in Kubernetes, a TokenReview of the agent's projected
 * ServiceAccount token: ca-kubernetes.ts). Which identities a node may obtain is the
 * `authorize` callback's decision: from a mesh YAML file (`identitiesByNodeFromConfig`) or,
 * in Kubernetes, from the API; never from anything the agent says. Either callback may throw
 * a `CaHttpError` to choose the answer (e.g. 503 while the API server is down).
 */
import * as https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { X509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import { parseDocument } from 'yaml';
import type { Logger } from 'pino';
import type { MeshConfig, Workload } from '../config/types.js';
import { DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN } from '../config/defaults.js';
import { substituteEnv } from '../config/env.js';
import { ConfigError, WeftError } from '../errors.js';
import type { CertificateAuthority } from './ca.js';
import { identityKey, principalOf, spiffeId as makeSpiffeId } from './spiffe.js';

/** How long a client may take to finish its TLS handshake with the CA, ms. */
export const CA_HANDSHAKE_TIMEOUT_MS = 5_000;

/** What an agent asks for. */
export interface SignRequest {
  namespace: string;
  serviceAccount: string;
  /** The pod name, when the agent names it. */
  workload?: string;
}

/** True when `node` runs a workload with the requested identity (and name, if given). */
export type Authorizer = (node: string, request: SignRequest) => boolean | Promise<boolean>;

/**
 * The caller's node, from its bearer token. A thrown `CaHttpError` is answered as is; any
 * other error is a 401 with its message.
 */
export type Authenticator = (token: string) => string | Promise<string>;

export interface CaServerOptions {
  ca: CertificateAuthority;
  listen: { host: string; port: number };
  authorize: Authorizer;
  /** Default: `ca.verifyNodeToken` (the `weft1.` bootstrap tokens of `weft ca token`). */
  authenticate?: Authenticator;
  log?: Logger;
  /** Extra DNS names or IPs for the server certificate (e.g. a Service name). */
  serverNames?: string[];
}

export interface CaServer {
  server: https.Server;
  /** `https://host:port` as bound (port 0 resolved). */
  url: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024;
const MAX_TTL_SECONDS = 10 * 365 * 24 * 3600;

/** An answer of the CA's API: status, a short machine-readable code, and a message for people. */
export class CaHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body) + '\n';
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'application/x-pem-file' : 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

function sendError(res: ServerResponse, err: CaHttpError): void {
  const headers: Record<string, string> = {};
  if (err.status === 401) headers['www-authenticate'] = 'Bearer realm="weft-ca"';
  if (err.status === 413) headers.connection = 'close';
  if (err.status === 503) headers['retry-after'] = '5';
  send(res, err.status, { error: { code: err.code, message: err.message } }, headers);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY_BYTES) {
      reject(new CaHttpError(413, 'too_large', `request body over ${MAX_BODY_BYTES} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new CaHttpError(413, 'too_large', `request body over ${MAX_BODY_BYTES} bytes`));
        // Drain the rest without keeping it, so the 413 can still be sent.
        req.removeAllListeners('data');
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** Validates the JSON body of /v1/sign; every problem is a 400 with the field named. */
function parseSignBody(text: string): SignRequest & { csr: string; ttlSeconds?: number } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new CaHttpError(400, 'bad_request', 'the body is not JSON: expected { "csr": PEM, "namespace": ..., "serviceAccount": ... }');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new CaHttpError(400, 'bad_request', 'the body must be a JSON object');
  }
  const b = body as Record<string, unknown>;
  const problems: string[] = [];
  if (typeof b.csr !== 'string' || !b.csr.includes('-----BEGIN CERTIFICATE REQUEST-----')) problems.push('csr: expected a PEM certificate request');
  if (typeof b.namespace !== 'string' || b.namespace === '') problems.push('namespace: expected a non-empty string');
  if (typeof b.serviceAccount !== 'string' || b.serviceAccount === '') problems.push('serviceAccount: expected a non-empty string');
  if (b.ttlSeconds !== undefined && !(Number.isInteger(b.ttlSeconds) && (b.ttlSeconds as number) > 0 && (b.ttlSeconds as number) <= MAX_TTL_SECONDS)) {
    problems.push('ttlSeconds: expected a positive integer');
  }
  if (b.workload !== undefined && typeof b.workload !== 'string') problems.push('workload: expected a string');
  if (problems.length) throw new CaHttpError(400, 'bad_request', problems.join('; '));
  return {
    csr: b.csr as string,
    namespace: b.namespace as string,
    serviceAccount: b.serviceAccount as string,
    ...(b.ttlSeconds !== undefined ? { ttlSeconds: b.ttlSeconds as number } : {}),
    ...(b.workload !== undefined ? { workload: b.workload as string } : {}),
  };
}

/** DNS names and IPs for the server certificate: the listen address, or every local address for a wildcard. */
function serverHosts(host: string, extra: string[]): string[] {
  const hosts = ['localhost', ...extra];
  if (host === '' || host === '0.0.0.0' || host === '::') {
    for (const addrs of Object.values(networkInterfaces())) {
      for (const a of addrs ?? []) hosts.push(a.address.replace(/%.*$/, ''));
    }
  } else {
    hosts.push(host);
  }
  return hosts;
}

/**
 * Starts the CA's HTTPS server; resolves once it is listening (a bad address or a port in
 * use rejects here rather than at the first request).
 */
export async function startCaServer(opts: CaServerOptions): Promise<CaServer> {
  const { ca, authorize } = opts;
  const authenticate: Authenticator = opts.authenticate ?? ((token) => ca.verifyNodeToken(token));
  const log = opts.log?.child({ component: 'ca-server' });
  const extra = opts.serverNames ?? [];
  let serving = await ca.issueServingCertificate(serverHosts(opts.listen.host, extra));

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/v1/root' || path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new CaHttpError(405, 'method_not_allowed', `${path} takes GET`);
      if (path === '/healthz') send(res, 200, { status: 'ok' });
      else send(res, 200, ca.rootPem);
      return;
    }
    if (path !== '/v1/sign') throw new CaHttpError(404, 'not_found', `no such endpoint ${path}: use POST /v1/sign or GET /v1/root`);
    if (req.method !== 'POST') throw new CaHttpError(405, 'method_not_allowed', '/v1/sign takes POST');

    // Authenticate before reading the body: an unknown caller costs no parsing.
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) {
      log?.warn({ remote: req.socket.remoteAddress }, 'refused a signing request: no bearer token');
      throw new CaHttpError(
        401,
        'unauthenticated',
        opts.authenticate ? "missing token: send Authorization: Bearer <the agent's token>" : 'missing node token: send Authorization: Bearer <token from `weft ca token`>',
      );
    }
    let node: string;
    try {
      node = await authenticate(m[1]!);
    } catch (err) {
      const e = err instanceof CaHttpError ? err : new CaHttpError(401, 'unauthenticated', (err as Error).message);
      const line = { remote: req.socket.remoteAddress, status: e.status, code: e.code, reason: e.message };
      if (e.status >= 500) log?.error(line, 'cannot authenticate a signing request');
      else log?.warn(line, 'refused a signing request: authentication failed');
      throw e;
    }

    const body = parseSignBody(await readBody(req));
    let id: string;
    try {
      id = makeSpiffeId(ca.trustDomain, body.namespace, body.serviceAccount);
    } catch (err) {
      throw new CaHttpError(400, 'bad_request', (err as Error).message);
    }
    const request: SignRequest = { namespace: body.namespace, serviceAccount: body.serviceAccount, ...(body.workload ? { workload: body.workload } : {}) };
    let allowed: boolean;
    try {
      allowed = await authorize(node, request);
    } catch (err) {
      if (!(err instanceof CaHttpError)) throw err;
      const line = { node, identity: principalOf(id), status: err.status, code: err.code, reason: err.message };
      if (err.status >= 500) log?.error(line, 'cannot authorize a signing request');
      else log?.warn(line, 'refused a certificate');
      throw err;
    }
    if (!allowed) {
      log?.warn({ node, identity: principalOf(id), workload: body.workload }, 'refused a certificate: the node runs no such workload');
      const what = body.workload ? `workload ${body.namespace}/${body.workload} running as ${body.serviceAccount}` : `workload running as ${body.namespace}/${body.serviceAccount}`;
      throw new CaHttpError(403, 'denied', `node ${node} has no ${what}`);
    }
    let leaf: string;
    try {
      leaf = await ca.sign(body.csr, { spiffeId: id, ...(body.ttlSeconds !== undefined ? { ttlMs: body.ttlSeconds * 1000 } : {}) });
    } catch (err) {
      if (err instanceof WeftError && (err.code === 'WEFT_ERR_BAD_REQUEST' || err.code === 'WEFT_ERR_IDENTITY')) {
        throw new CaHttpError(400, 'bad_request', err.message);
      }
      throw err;
    }
    const expiresAt = new Date(new X509Certificate(leaf).validTo).toISOString();
    log?.info({ node, identity: principalOf(id), expiresAt }, 'signed a workload certificate');
    send(res, 200, { certChain: ca.certChainOf(leaf), expiresAt, spiffeId: id });
  };

  // A client that connects and stalls is dropped: within a few seconds during the TLS
  // handshake (Node's default is 120 s), and within 10 s for the request head.
  const tlsOpts = { key: serving.keyPem, cert: serving.certPem, minVersion: 'TLSv1.2' as const, handshakeTimeout: CA_HANDSHAKE_TIMEOUT_MS, headersTimeout: 10_000, requestTimeout: 30_000 };
  const server = https.createServer(tlsOpts, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!(err instanceof CaHttpError)) {
        log?.error({ err }, 'CA request failed');
        err = new CaHttpError(500, 'internal', 'internal error');
      }
      if (res.headersSent) res.destroy();
      else sendError(res, err as CaHttpError);
    });
  });
  server.on('tlsClientError', (err) => log?.debug({ err: err.message }, 'TLS handshake with a client failed'));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });

  // Renew the serving certificate at two thirds of its life; new connections get the new one.
  let renewTimer: NodeJS.Timeout | undefined;
  const scheduleRenewal = (): void => {
    const delay = Math.max(60_000, ((serving.notAfter.getTime() - Date.now()) * 2) / 3);
    renewTimer = setTimeout(
      () => {
        ca.issueServingCertificate(serverHosts(opts.listen.host, extra)).then(
          (next) => {
            serving = next;
            server.setSecureContext({ key: next.keyPem, cert: next.certPem, minVersion: 'TLSv1.2' });
            scheduleRenewal();
          },
          (err: unknown) => {
            log?.error({ err }, 'cannot renew the CA server certificate');
            scheduleRenewal();
          },
        );
      },
      Math.min(delay, 2 ** 31 - 1),
    );
    renewTimer.unref();
  };
  scheduleRenewal();

  const addr = server.address() as { address: string; port: number };
  const host = addr.address;
  const url = `https://${isIP(host) === 6 ? `[${host}]` : host}:${addr.port}`;
  log?.info({ url, trustDomain: ca.trustDomain }, 'CA listening');
  return {
    server,
    url,
    host,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        if (renewTimer) clearTimeout(renewTimer);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Per node: identity key (`namespace/serviceAccount`) -> names of the workloads running as it. */
export type NodeIdentities = Map<string, Map<string, Set<string>>>;

/** What `identitiesByNodeFromConfig` reads: a MeshConfig will do. */
export interface IdentitySource {
  workloads: ReadonlyArray<Pick<Workload, 'name' | 'namespace' | 'node' | 'serviceAccount'>>;
}

/** Which identities run on which node, from the workloads of a mesh config. */
export function identitiesByNodeFromConfig(cfg: IdentitySource | MeshConfig): NodeIdentities {
  const byNode: NodeIdentities = new Map();
  for (const w of cfg.workloads) {
    let ids = byNode.get(w.node);
    if (!ids) byNode.set(w.node, (ids = new Map()));
    const key = identityKey(w.namespace, w.serviceAccount);
    let names = ids.get(key);
    if (!names) ids.set(key, (names = new Set()));
    names.add(w.name);
  }
  return byNode;
}

/** An Authorizer over a registry of node identities (a function, so the registry can be replaced). */
export function authorizerFromIdentities(identities: NodeIdentities | (() => NodeIdentities | Promise<NodeIdentities>)): Authorizer {
  return async (node, req) => {
    const map = typeof identities === 'function' ? await identities() : identities;
    const names = map.get(node)?.get(identityKey(req.namespace, req.serviceAccount));
    if (!names) return false;
    return req.workload === undefined || names.has(req.workload);
  };
}

/** The parts of a mesh YAML file the CA needs. */
export interface CaConfigFile extends IdentitySource {
  trustDomain: string;
}

/**
 * Reads the workloads (name, namespace, node, serviceAccount) and `mesh.trustDomain` of a
 * mesh YAML file, with `${VAR}` substitution like the agent. Lenient about every other key,
 * so a file written for the CA alone (no `node:`) works too. Throws ConfigError.
 */
export async function readCaConfigFile(file: string): Promise<CaConfigFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text);
  if (doc.errors.length)
    throw new ConfigError(
      file,
      doc.errors.map((e) => e.message),
    );
  const envProblems = substituteEnv(doc, process.env);
  if (envProblems.length) throw new ConfigError(file, envProblems);
  const raw = (doc.toJS() ?? {}) as Record<string, unknown>;
  const problems: string[] = [];
  const mesh = raw.mesh as Record<string, unknown> | undefined;
  const trustDomain = typeof mesh?.trustDomain === 'string' ? mesh.trustDomain : DEFAULT_TRUST_DOMAIN;
  const workloads: Array<Pick<Workload, 'name' | 'namespace' | 'node' | 'serviceAccount'>> = [];
  const list = raw.workloads ?? [];
  if (!Array.isArray(list)) {
    problems.push('workloads: expected a list');
  } else {
    list.forEach((w: unknown, i: number) => {
      const o = (w ?? {}) as Record<string, unknown>;
      for (const k of ['name', 'namespace', 'node'] as const) {
        if (typeof o[k] !== 'string' || o[k] === '') problems.push(`workloads[${i}].${k}: expected a non-empty string`);
      }
      if (o.serviceAccount !== undefined && typeof o.serviceAccount !== 'string') problems.push(`workloads[${i}].serviceAccount: expected a string`);
      workloads.push({
        name: o.name as string,
        namespace: o.namespace as string,
        node: o.node as string,
        serviceAccount: (o.serviceAccount as string | undefined) || DEFAULT_SERVICE_ACCOUNT,
      });
    });
  }
  if (problems.length) throw new ConfigError(file, problems);
  return { trustDomain, workloads };
}

/**
 * The node identities of a mesh YAML file, re-read when the file changes (checked at each
 * call); an invalid new version is logged and the last good one stays in force.
 */
export function watchConfigIdentities(file: string, initial: CaConfigFile, log?: Logger): () => Promise<NodeIdentities> {
  let current = identitiesByNodeFromConfig(initial);
  let mtime = 0;
  let checking: Promise<void> | undefined;
  const check = async (): Promise<void> => {
    let m: number;
    try {
      m = (await stat(file)).mtimeMs;
    } catch (err) {
      log?.error({ err, file }, 'cannot stat the config file; keeping the last good workload list');
      return;
    }
    if (m === mtime) return;
    try {
      const cfg = await readCaConfigFile(file);
      current = identitiesByNodeFromConfig(cfg);
      if (mtime !== 0) log?.info({ file, workloads: cfg.workloads.length }, 'reloaded the workload list');
    } catch (err) {
      log?.error({ err: (err as Error).message, file }, 'invalid config file; keeping the last good workload list');
    }
    mtime = m;
  };
  return async () => {
    checking ??= check().finally(() => (checking = undefined));
    await checking;
    return current;
  };
}
