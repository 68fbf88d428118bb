/**
 * The plaintext inbound port (15006, on the node address): the tunnel's CONNECT without TLS,
 * for callers outside the mesh that want the mesh's inbound policy on the way in. A client
 * sends `CONNECT <pod ip>:<port> HTTP/1.1` (what `curl -p -x http://<node>:15006` or any
 * HTTP proxy client does); the agent answers
 *   200  the target is a local meshed pod of a PERMISSIVE namespace: the bytes that follow
 *        are served as that pod's inbound traffic (HTTP: per-request authorization and JWT;
 *        TCP: authorization, then a splice), with no peer identity (plaintext: rules on
 *        principals or namespaces do not match, ipBlocks see the caller's address);
 *   403  the pod's namespace is strict: it takes mTLS only (the tunnel, 15008);
 *   404  not a meshed pod port on this node;   405  a request other than CONNECT.
 *
 * Why CONNECT: weft has no inbound redirect (a permissive pod receives plaintext directly,
 * the strict ingress program simply is not attached), so a connection arriving here does
 * not carry an original destination; CONNECT names it, as HBONE does inside the tunnel.
 */
import type * as http from 'node:http';
import nodeHttp from '../node-http.js';
import type net from 'node:net';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { ConnContext } from './context.js';
import { parseAuthority } from './hbone.js';
import { serveInbound, type InboundDeps } from './inbound.js';
import { listen } from '../listen.js';

export interface PlaintextInboundDeps {
  state: StateStore;
  /** HttpProxy and TCP deps whose authorizers take `ctx.peer`; security `none`. */
  inbound: InboundDeps;
  log: Logger;
}

export class PlaintextInbound {
  readonly server: http.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly deps: PlaintextInboundDeps) {
    this.server = nodeHttp.createServer({ requireHostHeader: false, headersTimeout: 10_000, requestTimeout: 10_000 });
    this.server.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    this.server.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.onConnect(req, socket, head));
    this.server.on('request', (_req, res: http.ServerResponse) => {
      res.writeHead(405, { 'content-type': 'text/plain', allow: 'CONNECT', 'x-weft-error': 'connect_only', connection: 'close' });
      res.end('the inbound port takes CONNECT <pod ip>:<port>\n');
    });
    this.server.on('clientError', (_err, socket: net.Socket) => socket.destroy());
  }

  listen(host: string, port: number): Promise<void> {
    return listen(this.server, { host, port, backlog: 1024 });
  }

  /** Connections open now (CONNECT tunnels included). */
  get connections(): number {
    return this.sockets.size;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy();
    });
  }

  private onConnect(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const { state, log } = this.deps;
    socket.on('error', (err) => log.debug({ err: err.message }, 'inbound plaintext socket error'));
    const srcIp = (socket.remoteAddress ?? '').replace(/^::ffff:/, '');
    const refuse = (status: number, header: string, why: string) => {
      log.warn({ src_ip: srcIp, dst: req.url, status, reason: why }, 'plaintext inbound refused');
      if (socket.writable) socket.end(`HTTP/1.1 ${status} ${nodeHttp.STATUS_CODES[status]}\r\nx-weft-error: ${header}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
      else socket.destroy();
    };
    const dst = parseAuthority(req.url);
    if (!dst) return refuse(400, 'bad_request', 'the CONNECT target is not an IPv4 ip:port');
    const target = state.resolve(dst.ip, dst.port);
    if (!target || target.kind !== 'pod' || target.workload.node !== state.nodeName || !state.isMeshed(target.workload.namespace)) {
      return refuse(404, 'not_a_local_mesh_destination', 'not a meshed pod port on this node');
    }
    if (state.namespace(target.workload.namespace)?.peerAuthentication !== 'permissive') {
      return refuse(403, 'mtls_required', `namespace ${target.workload.namespace} is strict: mTLS only`);
    }
    const ctx: ConnContext = { sourceIp: srcIp, origIp: dst.ip, origPort: dst.port, target, peer: { ip: srcIp }, tunnelled: false };
    log.info(
      { src_ip: srcIp, dst: `${dst.ip}:${dst.port}`, dst_workload: `${target.workload.namespace}/${target.workload.name}`, app_protocol: target.protocol },
      'plaintext inbound connection accepted',
    );
    if (head.length) socket.unshift(head);
    serveInbound(socket, ctx, this.deps.inbound, {
      accept: () => {
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      },
      refuse: (status, reason) => refuse(status, reason, reason),
    });
  }
}
