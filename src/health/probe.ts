import type * as http from 'node:http';
import nodeHttp from '../node-http.js';
import net from 'node:net';
import type { HealthCheckPolicy } from '../config/types.js';

/** Where a check goes: the endpoint's pod ip and target port. */
export interface ProbeTarget {
  ip: string;
  port: number;
}

export interface ProbeResult {
  ok: boolean;
  /** Why the check failed (`status 503`, `timeout after 500ms`, the socket error); '' when ok. */
  error: string;
}

/**
 * One health check. Resolves (never rejects) within about `policy.timeout`; an abort
 * resolves at once with `{ ok: false, error: 'aborted' }` and releases the socket.
 */
export type Probe = (target: ProbeTarget, policy: HealthCheckPolicy, signal: AbortSignal) => Promise<ProbeResult>;

export const HEALTH_USER_AGENT = 'weft-health';

function describe(err: unknown): string {
  if (err instanceof Error) return err.message || (err as NodeJS.ErrnoException).code || err.name;
  return String(err);
}

/** `ip:port`, with brackets around an IPv6 address (the Host header form). */
export function hostPort(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Shared plumbing of both probes: one settle, one timer, one abort listener, and the
 * socket (or request) destroyed however the check ends.
 */
function settleOnce(timeoutMs: number, signal: AbortSignal, destroy: () => void, resolve: (r: ProbeResult) => void): (ok: boolean, error: string) => void {
  let settled = false;
  const finish = (ok: boolean, error: string): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
    destroy();
    resolve({ ok, error });
  };
  const onAbort = (): void => finish(false, 'aborted');
  const timer = setTimeout(() => finish(false, `timeout after ${timeoutMs}ms`), timeoutMs);
  signal.addEventListener('abort', onAbort, { once: true });
  if (signal.aborted) finish(false, 'aborted');
  return finish;
}

let sourceAddress: string | undefined;

/**
 * Probes leave from this address (the node address): strict pods on other nodes admit
 * connections from agents' node addresses only, and the kernel would otherwise pick whatever
 * address the route says (an inter-node link address, say). Undefined: the kernel chooses.
 */
export function setProbeSourceAddress(addr: string | undefined): void {
  sourceAddress = addr;
}

/** TCP check: success when the connection is established within the timeout; then closed. */
export function tcpProbe(target: ProbeTarget, policy: HealthCheckPolicy, signal: AbortSignal): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: target.ip, port: target.port, localAddress: sourceAddress });
    const finish = settleOnce(policy.timeout, signal, () => sock.destroy(), resolve);
    sock.once('connect', () => finish(true, ''));
    // `on`, not `once`: a late error after destroy must not become an uncaught exception.
    sock.on('error', (err) => finish(false, describe(err)));
  });
}

/**
 * HTTP check: `GET policy.path` straight to the pod (no pooled agent, so every check proves
 * a fresh connection works), success on any 2xx. The verdict is taken on the status line;
 * the body is not awaited, the connection is closed right away.
 */
export function httpProbe(target: ProbeTarget, policy: HealthCheckPolicy, signal: AbortSignal): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const req = nodeHttp.request({
      host: target.ip,
      port: target.port,
      localAddress: sourceAddress,
      method: 'GET',
      path: policy.path?.startsWith('/') ? policy.path : `/${policy.path ?? ''}`,
      agent: false,
      headers: {
        host: hostPort(target.ip, target.port),
        'user-agent': HEALTH_USER_AGENT,
        accept: '*/*',
        connection: 'close',
      },
    });
    const finish = settleOnce(policy.timeout, signal, () => req.destroy(), resolve);
    req.on('response', (res) => {
      res.on('error', () => {});
      res.resume();
      const status = res.statusCode ?? 0;
      const ok = status >= 200 && status < 300;
      finish(ok, ok ? '' : `status ${status}`);
    });
    req.on('error', (err) => finish(false, describe(err)));
    req.end();
  });
}

/** The probe for a policy type. */
export function probeFor(policy: HealthCheckPolicy): Probe {
  return policy.type === 'http' ? httpProbe : tcpProbe;
}
