/**
 * The destination side of an inbound connection for a local pod, shared by the tunnel
 * (15008) and the plaintext inbound port (15006): HTTP targets go to an HttpProxy (L7
 * policy, JWT), TCP targets to `proxyTcp` with authorization before any byte reaches the
 * pod. Both entries are CONNECT-style, so the answer to the CONNECT is part of the job: for
 * TCP it is sent only once the pod accepted the connection (as ztunnel does), so a refusal
 * reaches the caller as a status rather than as a connection that opens and then dies.
 */
import type net from 'node:net';
import type { Endpoint } from '../cluster/endpoint.js';
import type { ConnContext } from './context.js';
import type { HttpProxy } from './http.js';
import { proxyTcp, type TcpProxyDeps } from './tcp.js';
import { connectTcp, type Transport } from './transport.js';

export interface InboundDeps {
  http: HttpProxy;
  tcp: TcpProxyDeps;
  /** `mutual_tls` on the tunnel, `none` on the plaintext port: the metrics label. */
  security: 'mutual_tls' | 'none';
}

/** How the entry answers its CONNECT. */
export interface ConnectAnswer {
  /** The pod is there: 200. */
  accept(): void;
  /** Refused before anything was sent: `status` (403 denied, 503 the pod did not answer). */
  refuse(status: number, reason: string): void;
}

/**
 * Serves `down` (the bytes after the CONNECT) for `ctx.target`, a local pod. `down` may be a
 * net.Socket or a stream dressed as one (`streamAsSocket`).
 */
export function serveInbound(down: net.Socket, ctx: ConnContext, deps: InboundDeps, answer: ConnectAnswer): void {
  const protocol = ctx.target.kind === 'service' ? ctx.target.port.protocol : ctx.target.protocol;
  if (protocol !== 'tcp') {
    // L7: every request is authorized on its own, and a denial is an HTTP 403 from the proxy.
    answer.accept();
    deps.http.accept(down, ctx);
    return;
  }
  let answered = false;
  let denied = false;
  const reset = down.resetAndDestroy.bind(down);
  down.resetAndDestroy = () => {
    if (answered) return reset();
    answered = true;
    answer.refuse(denied ? 403 : 503, denied ? 'denied' : 'connect_failure');
    return down;
  };
  const direct: Transport = {
    connect: async (ep: Endpoint, opts) => {
      const up = await connectTcp(ep.info.ip, ep.info.port, opts.timeoutMs);
      if (!answered) {
        answered = true;
        answer.accept();
      }
      return up;
    },
    securityOf: () => deps.security,
  };
  const authorize = deps.tcp.authorize;
  // No kernel splicing here: the bytes come on an HTTP/2 stream, or after a CONNECT head
  // whose trailing bytes this process already read.
  const { splice: _noSplice, ...base } = deps.tcp as TcpProxyDeps & { splice?: unknown };
  const tcp: TcpProxyDeps = {
    ...base,
    transport: direct,
    authorize: authorize
      ? (c, ep) => {
          const verdict = authorize(c, ep);
          if (!verdict.allowed) denied = true;
          return verdict;
        }
      : undefined,
  };
  void proxyTcp(down, ctx, tcp).catch((err: Error) => {
    deps.tcp.log.error({ err }, 'inbound tcp proxy internal error');
    down.destroy();
  });
}

/** A transport for the inbound HttpProxy: straight to the local pod, labelled with the entry's security. */
export function inboundTransport(security: 'mutual_tls' | 'none'): Transport {
  return {
    connect: (ep, opts) => connectTcp(ep.info.ip, ep.info.port, opts.timeoutMs),
    securityOf: () => security,
  };
}
