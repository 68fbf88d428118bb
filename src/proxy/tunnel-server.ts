/**
 * The tunnel listener (15008): HTTP/2 over mutual TLS from other agents (hbone.ts has the
 * protocol). A `tls.Server` (http2's secure server) verifies the caller's certificate
 * against the mesh root during the handshake (requestCert + rejectUnauthorized: a client
 * with no certificate, or one from another CA, never gets a stream) and picks its own
 * certificate by SNI: the destination workload's. Each CONNECT stream is then checked
 * (a local meshed pod, running as the identity of the session) and served as the
 * destination: authorization with the caller's SPIFFE principal, then the pod.
 */
import http2, { type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type * as tls from 'node:tls';
import { isIPv4 } from 'node:net';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../telemetry/log.js';
import type { LocalIdentities } from '../identity/local-identities.js';
import { peerSpiffeId } from '../identity/verify.js';
import { parseSpiffeId, principalOf, spiffeId } from '../identity/spiffe.js';
import type { ConnContext } from './context.js';
import { serveInbound, type InboundDeps } from './inbound.js';
import {
  CONNECT_ERROR,
  HBONE_ALPN,
  MAX_CONCURRENT_STREAMS,
  MAX_FRAME_SIZE,
  SESSION_WINDOW,
  STREAM_WINDOW,
  SOURCE_BAGGAGE_HEADER,
  forwardedFor,
  identityOfServerName,
  parseAuthority,
  parseSourceBaggage,
  podOfServerName,
  streamAsSocket,
} from './hbone.js';
import type { Workload } from '../config/types.js';
import { canonicalService, sourcePodOf, workloadName, type DescribedSource } from '../telemetry/labels.js';
import { listen } from '../listen.js';

export interface TunnelServerDeps {
  state: StateStore;
  /** LocalIdentities, or a worker thread's copy (src/workers/identities.ts). */
  identities: Pick<LocalIdentities, 'trustDomain' | 'rootPem' | 'has' | 'context'>;
  /** Where streams go: an HttpProxy and TCP deps whose authorizers take `ctx.peer`; security `mutual_tls`. */
  inbound: InboundDeps;
  log: Logger;
  /** How long a handshake may wait for the first certificate of the identity asked for (default 5s). */
  certWaitMs?: number;
  /** A TLS handshake must complete within this, ms (default {@link TLS_HANDSHAKE_TIMEOUT_MS}). */
  handshakeTimeoutMs?: number;
}

/**
 * How long a TLS handshake may take on the tunnel port and on the CA. Longer than
 * `certWaitMs` (a handshake may wait for the first certificate of a new identity).
 */
export const TLS_HANDSHAKE_TIMEOUT_MS = 8_000;

/** OpenSSL's verify codes for a client certificate that does not chain to a trusted root. */
const UNTRUSTED_PEER_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
]);

/** The verified caller of one TLS session, worked out once per session. */
interface SessionPeer {
  spiffeId: string;
  principal: string;
  namespace: string;
  serviceAccount: string;
  ip: string;
  port: number;
  /** The local identity the client asked for by SNI (whose certificate it was shown). */
  local: { namespace: string; serviceAccount: string };
}

const STATUS_TEXT: Record<number, string> = {
  400: 'bad_request',
  403: 'denied',
  404: 'not_a_local_mesh_destination',
  405: 'connect_only',
  421: 'misdirected',
  503: 'connect_failure',
};

export class TunnelServer {
  readonly server: http2.Http2SecureServer;
  private readonly sessions = new Set<ServerHttp2Session>();
  private readonly peers = new WeakMap<ServerHttp2Session, SessionPeer | null>();
  private readonly log: Logger;
  private readonly certWaitMs: number;
  private accepted = 0;
  private refused = 0;

  constructor(private readonly deps: TunnelServerDeps) {
    this.log = deps.log;
    this.certWaitMs = deps.certWaitMs ?? 5_000;
    this.server = http2.createSecureServer({
      // The server's certificate comes from SNICallback; `ca` (the mesh root, and nothing
      // else: no public CAs) is what client certificates must chain to.
      SNICallback: (name, cb) => this.selectContext(name, cb),
      ca: deps.identities.rootPem,
      requestCert: true,
      // Checked in onSession instead (and again per stream): Node's own rejection destroys the
      // socket after the handshake without a word to either side, so an agent left on a leaf
      // under a root just removed from the bundle would only see resets. A session is refused
      // synchronously when it is created, before any frame is read.
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      // A client that opens a connection and never finishes the handshake is dropped (Node's
      // default waits 120 s, holding a socket and a slot under the connection cap).
      handshakeTimeout: deps.handshakeTimeoutMs ?? TLS_HANDSHAKE_TIMEOUT_MS,
      ALPNProtocols: [HBONE_ALPN],
      allowHTTP1: false,
      maxSessionMemory: 64,
      settings: { initialWindowSize: STREAM_WINDOW, maxFrameSize: MAX_FRAME_SIZE, maxConcurrentStreams: MAX_CONCURRENT_STREAMS, enablePush: false },
    });
    this.server.on('secureConnection', (socket: tls.TLSSocket) => socket.setNoDelay(true));
    this.server.on('session', (s) => this.onSession(s));
    this.server.on('stream', (stream, headers) => this.onStream(stream as ServerHttp2Stream, headers));
    this.server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
      this.refused++;
      this.log.warn({ peer_ip: stripV4Mapped(socket.remoteAddress), err: err.message, code: err.code }, 'tunnel handshake refused');
    });
  }

  listen(host: string, port: number): Promise<void> {
    return listen(this.server, { host, port, backlog: 4096 });
  }

  get port(): number {
    return (this.server.address() as { port: number }).port;
  }

  describe(): unknown {
    return { sessions: this.sessions.size, streamsAccepted: this.accepted, handshakesRefused: this.refused };
  }

  /** Sessions open now. */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Drain hook (the agent is being replaced; the listening socket is closed already): GOAWAY on
   * every session, so the peers open new sessions (to the new agent) for new streams while the
   * streams in flight finish.
   */
  drain(): void {
    for (const s of this.sessions) if (!s.closed && !s.destroyed) s.close();
  }

  /** Stop accepting; with `destroy`, cut every session now (else they drain). */
  close(opts: { destroy?: boolean } = {}): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sessions) {
        if (opts.destroy) s.destroy();
        else s.close();
      }
    });
  }

  /** The certificate of the local identity the SNI names; an unknown name fails the handshake. */
  private selectContext(name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void): void {
    const id = this.localIdentityOf(name);
    if (!id || !this.deps.identities.has(id.namespace, id.serviceAccount)) {
      cb(new Error(`no local workload runs as ${JSON.stringify(name)}`));
      return;
    }
    this.deps.identities.context(id.namespace, id.serviceAccount, this.certWaitMs).then(
      (ctx) => (ctx ? cb(null, ctx) : cb(new Error(`no certificate yet for ${id.namespace}/${id.serviceAccount}`))),
      (err: Error) => cb(err),
    );
  }

  /**
   * The local identity an SNI asks for: named (`<sa>.<ns>.weft`), or that of the local meshed
   * pod it names (`<ip>.<ns>.weft-pod`, when the client knows the pod but not its service account).
   */
  private localIdentityOf(name: string | undefined | null | false): { namespace: string; serviceAccount: string } | undefined {
    const pod = podOfServerName(name);
    if (!pod) return identityOfServerName(name);
    const { state } = this.deps;
    const w = state.workloadByIp(pod.ip);
    if (!w || w.namespace !== pod.namespace || w.node !== state.nodeName || !state.isMeshed(w.namespace)) return undefined;
    return { namespace: w.namespace, serviceAccount: w.serviceAccount };
  }

  private onSession(session: ServerHttp2Session): void {
    const socket = session.socket as tls.TLSSocket;
    if (!socket.authorized) {
      this.refused++;
      const code = String(socket.authorizationError ?? 'UNKNOWN');
      const hasCert = Boolean(socket.getPeerCertificate()?.raw);
      const reason = !hasCert
        ? 'the peer presented no certificate'
        : UNTRUSTED_PEER_CODES.has(code)
          ? "the peer's certificate does not lead to a root in the trust bundle (ca.rootCert)"
          : `the peer's certificate did not verify (${code})`;
      this.log.warn({ peer_ip: stripV4Mapped(socket.remoteAddress), code, reason }, 'tunnel handshake refused');
      // The GOAWAY's debug data tells the peer why; then the connection goes.
      session.goaway(http2.constants.NGHTTP2_REFUSED_STREAM, 0, Buffer.from(`weft: ${reason} [${code}]`));
      setImmediate(() => session.destroy());
      return;
    }
    this.sessions.add(session);
    session.once('close', () => this.sessions.delete(session));
    session.on('error', (err) => this.log.debug({ err: err.message }, 'tunnel session error'));
    try {
      session.setLocalWindowSize(SESSION_WINDOW);
    } catch {
      // the session may already be closing
    }
  }

  private peerOf(session: ServerHttp2Session): SessionPeer | undefined {
    const known = this.peers.get(session);
    if (known !== undefined) return known ?? undefined;
    const socket = session.socket as tls.TLSSocket;
    let peer: SessionPeer | null = null;
    const id = peerSpiffeId(socket);
    const local = this.localIdentityOf(socket.servername);
    if (id && local) {
      const parts = parseSpiffeId(id);
      if (parts.trustDomain === this.deps.identities.trustDomain) {
        peer = {
          spiffeId: id,
          principal: principalOf(id),
          namespace: parts.namespace,
          serviceAccount: parts.serviceAccount,
          ip: stripV4Mapped(socket.remoteAddress),
          port: socket.remotePort ?? 0,
          local,
        };
        const cert = socket.getPeerCertificate();
        this.log.info(
          {
            src_principal: peer.principal,
            dst_principal: principalOf(spiffeId(parts.trustDomain, local.namespace, local.serviceAccount)),
            peer_ip: peer.ip,
            cert_serial: cert?.serialNumber,
            cert_expiry: cert?.valid_to,
          },
          'tunnel session accepted',
        );
      } else {
        this.log.warn({ peer_ip: stripV4Mapped(socket.remoteAddress), spiffe_id: id }, 'tunnel client from another trust domain refused');
      }
    }
    this.peers.set(session, peer);
    return peer ?? undefined;
  }

  private onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', (err) => this.log.debug({ err: err.message }, 'tunnel stream error'));
    const session = stream.session as ServerHttp2Session | undefined;
    if (!session || session.destroyed) {
      stream.destroy();
      return;
    }
    const peer = this.peerOf(session);
    const refuse = (status: number, why: string, extra: Record<string, unknown> = {}) => {
      this.log.warn({ src_principal: peer?.principal, peer_ip: peer?.ip, dst: headers[':authority'], status, reason: why, ...extra }, 'tunnel connection refused');
      if (!stream.headersSent && !stream.destroyed) stream.respond({ ':status': status, 'x-weft-error': STATUS_TEXT[status] ?? 'refused' }, { endStream: true });
      else stream.close(CONNECT_ERROR);
    };
    if (!peer) {
      // The handshake verified the chain; a certificate without one valid SPIFFE ID of our
      // trust domain still has no identity to authorize.
      session.destroy();
      return;
    }
    if (headers[':method'] !== 'CONNECT') return refuse(405, 'only CONNECT is served on the tunnel port');
    const dst = parseAuthority(headers[':authority']);
    if (!dst) return refuse(400, 'the :authority is not an IPv4 ip:port');
    const { state } = this.deps;
    const target = state.resolve(dst.ip, dst.port);
    if (!target || target.kind !== 'pod' || target.workload.node !== state.nodeName || !state.isMeshed(target.workload.namespace)) {
      return refuse(404, 'not a meshed pod port on this node');
    }
    const w = target.workload;
    if (w.namespace !== peer.local.namespace || w.serviceAccount !== peer.local.serviceAccount) {
      return refuse(421, `the pod runs as ${w.namespace}/${w.serviceAccount}, the session is for ${peer.local.namespace}/${peer.local.serviceAccount}`);
    }
    // The source pod's address is a hint, believed only for a pod of the verified identity.
    const hinted = forwardedFor(headers.forwarded);
    const claimed = hinted ? state.workloadByIp(hinted) : undefined;
    const source = claimed && claimed.namespace === peer.namespace && claimed.serviceAccount === peer.serviceAccount ? claimed : undefined;
    const described = this.describedSource(headers, peer, source);
    const srcIp = source?.ip ?? peer.ip;
    const ctx: ConnContext = {
      source,
      described,
      sourceIp: srcIp,
      origIp: dst.ip,
      origPort: dst.port,
      target,
      peer: { principal: peer.principal, namespace: peer.namespace, ip: srcIp },
      tunnelled: true,
    };
    const dstPrincipal = principalOf(spiffeId(this.deps.identities.trustDomain, w.namespace, w.serviceAccount));
    const fields = {
      protocol: 'hbone',
      direction: 'inbound',
      src_principal: peer.principal,
      dst_principal: dstPrincipal,
      src_workload: sourcePodOf(source, described),
      src_ip: srcIp,
      peer_ip: peer.ip,
      dst: `${dst.ip}:${dst.port}`,
      dst_workload: `${w.namespace}/${w.name}`,
      app_protocol: target.protocol,
    };
    this.accepted++;
    this.log.info(fields, 'tunnel connection accepted');
    const started = Date.now();
    stream.once('close', () => {
      this.log.info({ ...fields, duration_ms: Date.now() - started, rst_code: stream.rstCode || undefined, security: 'mutual_tls' }, 'access');
    });
    const down = streamAsSocket(stream, { ip: srcIp, port: peer.port }, () => stream.close(CONNECT_ERROR));
    serveInbound(down, ctx, this.deps.inbound, {
      accept: () => {
        if (!stream.headersSent && !stream.destroyed) stream.respond({ ':status': 200 });
      },
      refuse: (status, reason) => refuse(status, reason),
    });
  }

  /**
   * The caller as its agent described it (`baggage`, hbone.ts), for metric labels and
   * access-log fields only, when this agent does not know the calling pod itself (`known`).
   * Taken only when it is of the verified peer's namespace (and a pod it names that this agent
   * knows runs as the verified identity), and while the number of described workloads stays
   * under its cap. Anything else is dropped with a debug line: a peer's
   * description is a courtesy, never worth a warning per connection. Where this agent knows the
   * pod, the description must agree with it; what this agent knows is what counts.
   */
  private describedSource(headers: IncomingHttpHeaders, peer: SessionPeer, known: Workload | undefined): DescribedSource | undefined {
    const raw = headers[SOURCE_BAGGAGE_HEADER];
    if (raw === undefined) return undefined;
    const d = parseSourceBaggage(raw);
    let why: string | undefined;
    let named: Workload | undefined;
    if (typeof d === 'string') why = d;
    else if (d.namespace !== peer.namespace) why = `the baggage names namespace ${d.namespace}, the verified peer is of ${peer.namespace}`;
    else if (known) {
      if (d.workload === workloadName(known) && d.canonicalService === canonicalService(known) && (d.pod === undefined || d.pod === known.name)) return undefined;
      why = `the baggage (${d.workload}, ${d.canonicalService}, pod ${d.pod ?? '-'}) disagrees with the source pod known here (${known.namespace}/${known.name}): what is known here counts`;
    } else if (d.pod !== undefined && (named = this.deps.state.workload(d.namespace, d.pod)) !== undefined && named.serviceAccount !== '' && named.serviceAccount !== peer.serviceAccount) {
      why = `the baggage names pod ${d.namespace}/${d.pod}, which runs as ${named.serviceAccount}, not as the verified peer`;
    } else if (!this.deps.inbound.tcp.metrics.described.admit(d)) why = `more than ${this.deps.inbound.tcp.metrics.described.max} described source workloads: labelled unknown`;
    if (why === undefined) return d as DescribedSource;
    if (this.log.isLevelEnabled('debug')) this.log.debug({ src_principal: peer.principal, peer_ip: peer.ip, reason: why }, 'source baggage ignored');
    return undefined;
  }
}

function stripV4Mapped(ip: string | undefined): string {
  if (!ip) return '';
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}
