import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Endpoint } from '../cluster/endpoint.js';
import { WeftError } from '../errors.js';
import { principalOf, spiffeId } from '../identity/spiffe.js';
import type { ConnContext } from './context.js';

export interface ConnectOptions {
  timeoutMs: number;
  /**
   * The source workload, for the tunnel's client certificate (cross-node). `name`, `ip`,
   * `workload` and `labels`, when given (a Workload has them), only label the tunnel's logs
   * and the peer's metrics and access log (the CONNECT's `forwarded` and `baggage`).
   */
  source?: { namespace: string; serviceAccount: string; name?: string; ip?: string; workload?: string; labels?: Record<string, string> };
}

/**
 * How the agent reaches an endpoint: a plain TCP connection for a pod on this node (the
 * traffic never leaves the node) or outside the mesh; a tunnel to the peer agent otherwise
 * (installed by the identity layer through `setTunnel`).
 */
export interface Transport {
  connect(ep: Endpoint, opts: ConnectOptions): Promise<Duplex>;
  /** `mutual_tls` when the connection to `ep` is tunnelled, else `none`. */
  securityOf(ep: Endpoint): 'mutual_tls' | 'none';
  /** The identity the tunnel presents for the caller of `ctx` to `ep` (a principal, no spiffe://), when tunnelled. */
  callerPrincipal?(ctx: ConnContext, ep: Endpoint): string | undefined;
}

export function connectTcp(ip: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: ip, port, noDelay: true });
    let timer: NodeJS.Timeout | undefined;
    if (timeoutMs > 0) {
      timer = setTimeout(() => {
        sock.destroy();
        reject(new WeftError('WEFT_ERR_CONNECT_FAILURE', `connect to ${ip}:${port} timed out after ${timeoutMs}ms`));
      }, timeoutMs);
    }
    sock.once('connect', () => {
      if (timer) clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      reject(new WeftError('WEFT_ERR_CONNECT_FAILURE', `connect to ${ip}:${port} failed: ${err.code ?? err.message}`, { cause: err }));
    });
  });
}

/** A tunnel implementation plugs in here (HBONE to the peer agent: proxy/hbone-tunnel.ts). */
export interface Tunnel {
  connect(ep: Endpoint, opts: ConnectOptions): Promise<Duplex>;
  /** The trust domain of the identities it presents. */
  readonly trustDomain?: string;
}

export class MeshTransport implements Transport {
  private tunnel?: Tunnel;

  setTunnel(t: Tunnel | undefined): void {
    this.tunnel = t;
  }

  private tunnelled(ep: Endpoint): boolean {
    return this.tunnel !== undefined && !ep.info.local && ep.info.meshed;
  }

  securityOf(ep: Endpoint): 'mutual_tls' | 'none' {
    return this.tunnelled(ep) ? 'mutual_tls' : 'none';
  }

  callerPrincipal(ctx: ConnContext, ep: Endpoint): string | undefined {
    const td = this.tunnel?.trustDomain;
    const src = ctx.source;
    if (td === undefined || src === undefined || !this.tunnelled(ep)) return undefined;
    return principalOf(spiffeId(td, src.namespace, src.serviceAccount));
  }

  connect(ep: Endpoint, opts: ConnectOptions): Promise<Duplex> {
    if (this.tunnelled(ep)) return this.tunnel!.connect(ep, opts);
    return connectTcp(ep.info.ip, ep.info.port, opts.timeoutMs);
  }
}
