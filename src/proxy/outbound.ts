import net from 'node:net';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ConnContext, OrigDstLookup, SourceLookup } from './context.js';
import type { HttpProxy } from './http.js';
import { proxyTcp, type TcpProxyDeps } from './tcp.js';
import { listen } from '../listen.js';

export interface OutboundDeps {
  state: StateStore;
  origDst: OrigDstLookup;
  source: SourceLookup;
  http: HttpProxy;
  tcp: TcpProxyDeps;
  metrics: Metrics;
  log: Logger;
}

/**
 * The outbound listener (15001): connections that connect4 redirected from local meshed pods.
 * It recovers the original destination, resolves it to a service (or a pod) and hands the
 * connection to the L4 or the L7 path by the port's protocol.
 */
export class OutboundListener {
  readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly deps: OutboundDeps) {
    this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (s) => this.onConnection(s));
  }

  listen(host: string, port: number): Promise<void> {
    return listen(this.server, { host, port, backlog: 4096 });
  }

  get address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo;
  }

  private onConnection(socket: net.Socket): void {
    const { state, log } = this.deps;
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) => log.debug({ err: err.message }, 'downstream socket error'));
    const sourceIp = socket.remoteAddress ?? '';
    let od;
    try {
      od = this.deps.origDst(socket);
    } catch (err) {
      log.error({ err: (err as Error).message, src_ip: sourceIp }, 'original destination lookup failed');
    }
    if (!od) {
      log.warn({ src_ip: sourceIp, src_port: socket.remotePort }, 'connection without an original destination (not redirected by the mesh): closed');
      socket.destroy();
      return;
    }
    const target = state.resolve(od.ip, od.port);
    if (!target) {
      // The destination left the mesh between connect() and accept(): nothing to route to.
      log.warn({ src_ip: sourceIp, dst: `${od.ip}:${od.port}` }, 'original destination is not a mesh destination: reset');
      socket.resetAndDestroy();
      return;
    }
    const source = this.deps.source(od, sourceIp);
    if (!source && od.cgroupId !== undefined) {
      // connect4 attributed the caller to a captured pod that the agent no longer (or not yet)
      // knows: never carry it on as an anonymous caller.
      log.warn({ src_ip: sourceIp, dst: `${od.ip}:${od.port}`, cgroupId: String(od.cgroupId) }, 'caller not attributable to a workload: reset');
      socket.resetAndDestroy();
      return;
    }
    const ctx: ConnContext = { source, sourceIp, origIp: od.ip, origPort: od.port, target };
    const protocol = target.kind === 'service' ? target.port.protocol : target.protocol;
    if (protocol !== 'tcp') {
      this.deps.http.accept(socket, ctx);
      socket.resume();
    } else {
      void proxyTcp(socket, ctx, this.deps.tcp).catch((err) => {
        log.error({ err }, 'tcp proxy internal error');
        socket.destroy();
      });
    }
  }

  /** Stop accepting; open connections are left to finish (drain). */
  stopAccepting(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Close every remaining downstream connection. */
  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  get connections(): number {
    return this.sockets.size;
  }
}
