/**
 * The source side of the tunnel (hbone.ts has the protocol): `connect(ep)` for a meshed pod
 * on another node opens a CONNECT stream to that node's agent, over a pooled HTTP/2 session
 * that presents the source workload's certificate and checks that the peer answers with the
 * destination workload's. Plugged into MeshTransport with `setTunnel`.
 *
 * A destination whose service account is unknown (`serviceAccount: ''`: in Kubernetes a remote
 * endpoint learnt from an EndpointSlice) is asked for by pod (hbone.ts): the peer must answer
 * with an identity of the destination's namespace, and the identity it answers with is the
 * destination principal from then on. Such sessions are pooled per destination pod.
 *
 * Pooling: one session per (peer agent, source identity, destination identity): the client
 * certificate is the source's and the server certificate the destination's, so a session
 * serves exactly one such pair, as in ztunnel. A session leaves the pool on GOAWAY, error,
 * close, idle timeout, when its source certificate rotates (new connections get the new
 * certificate; streams in flight finish on the old session), and before its stream ids run
 * out.
 */
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import * as tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Endpoint } from '../cluster/endpoint.js';
import { WeftError } from '../errors.js';
import type { LocalIdentities } from '../identity/local-identities.js';
import type { WorkloadCertificate } from '../identity/cert-manager.js';
import { identityKey, principalOf, spiffeId } from '../identity/spiffe.js';
import { uriSans } from '../identity/verify.js';
import type { Logger } from '../telemetry/log.js';
import type { ConnectOptions, Tunnel } from './transport.js';
import { HBONE_ALPN, MAX_FRAME_SIZE, SESSION_WINDOW, SOURCE_BAGGAGE_HEADER, STREAM_WINDOW, buffersOnly, serverNameFor, serverNameForPod, sourceBaggage } from './hbone.js';
import { canonicalService, workloadName } from '../telemetry/labels.js';

export interface PeerAgent {
  host: string;
  port: number;
}

type RotatedIdentity = Pick<WorkloadCertificate, 'namespace' | 'serviceAccount'>;

/** What the tunnel needs of the local identities: LocalIdentities, or a worker's copy (src/workers/identities.ts). */
export type TunnelIdentities = Pick<LocalIdentities, 'trustDomain' | 'has' | 'context'> & {
  certs: { on(event: 'rotated', f: (cert: RotatedIdentity) => void): unknown; off(event: 'rotated', f: (cert: RotatedIdentity) => void): unknown };
};

export interface HboneTunnelOptions {
  identities: TunnelIdentities;
  /** The agent of `node` (its node address and tunnel port), or undefined when unknown. */
  peerOf: (node: string) => PeerAgent | undefined;
  /** Source address of tunnel connections (the node address); default: the kernel's choice. */
  localAddress?: string;
  log: Logger;
  /** A session without traffic for this long is closed (default 5 min). */
  idleTimeoutMs?: number;
}

interface Pooled {
  key: string;
  session: ClientHttp2Session;
  peer: string;
  source: string;
  destination: string;
  /** The destination's principal, as its certificate names it. */
  dstPrincipal: string;
  created: number;
  streams: number;
}

/** Leave a session this many stream ids before the end of the space (2^31 - 1, odd ids). */
const STREAM_ID_MARGIN = 1 << 20;

/**
 * Node's checkServerIdentity for a tunnel peer: the certificate (already chained to the
 * mesh root by then) must carry exactly one URI SAN, `expected`.
 */
export function checkPeerIdentity(expected: string, cert: tls.PeerCertificate): Error | undefined {
  const uris = uriSans(cert.subjectaltname);
  // `.../sa/` (a namespace prefix): any service account of that namespace (a pod-form SNI).
  if (uris.length === 1 && (expected.endsWith('/sa/') ? uris[0]!.startsWith(expected) && /^[^/]+$/.test(uris[0]!.slice(expected.length)) : uris[0] === expected)) return undefined;
  const err = new Error(`tunnel peer presented ${uris.join(', ') || 'no SPIFFE ID'}, expected ${expected}`) as Error & { code?: string };
  err.code = 'ERR_WEFT_PEER_IDENTITY';
  return err;
}

/** The `baggage` of each source workload (a Workload object lives until the next config change). */
const baggageCache = new WeakMap<object, string | undefined>();

/**
 * The CONNECT's description of the calling workload (hbone.ts), for the peer's metrics and
 * access log: for a source known by name (a Workload), else none.
 */
function baggageOf(src: NonNullable<ConnectOptions['source']>): string | undefined {
  if (src.name === undefined) return undefined;
  if (baggageCache.has(src)) return baggageCache.get(src);
  const named = { name: src.name, workload: src.workload, labels: src.labels ?? {} };
  const v = sourceBaggage({ namespace: src.namespace, workload: workloadName(named), canonicalService: canonicalService(named), pod: src.name });
  baggageCache.set(src, v);
  return v;
}

function connectFailure(message: string, cause?: unknown): WeftError {
  return new WeftError('WEFT_ERR_CONNECT_FAILURE', message, cause === undefined ? undefined : { cause });
}

export class HboneTunnel implements Tunnel {
  private readonly pool = new Map<string, Pooled>();
  private readonly opening = new Map<string, Promise<Pooled>>();
  private readonly all = new Set<Pooled>();
  private readonly log: Logger;
  private readonly idleTimeoutMs: number;
  private closed = false;
  private readonly onRotated = (cert: RotatedIdentity) => this.retire(identityKey(cert.namespace, cert.serviceAccount), 'source certificate rotated');

  constructor(private readonly opts: HboneTunnelOptions) {
    this.log = opts.log;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 300_000;
    opts.identities.certs.on('rotated', this.onRotated);
  }

  get trustDomain(): string {
    return this.opts.identities.trustDomain;
  }

  async connect(ep: Endpoint, opts: ConnectOptions): Promise<Duplex> {
    if (this.closed) throw connectFailure('the tunnel is closed');
    const deadline = Date.now() + (opts.timeoutMs > 0 ? opts.timeoutMs : 10_000);
    const src = opts.source;
    if (!src) throw connectFailure(`no source identity for a tunnelled connection to ${ep.id} (the caller's workload is unknown)`);
    const peer = this.opts.peerOf(ep.info.node);
    if (!peer) throw connectFailure(`no address known for node ${ep.info.node} (list it under nodes:), to reach ${ep.id}`);
    const td = this.opts.identities.trustDomain;
    const source = identityKey(src.namespace, src.serviceAccount);
    // Unknown service account: the pod is asked for, and the session serves that pod only.
    const destination = ep.info.serviceAccount ? identityKey(ep.info.namespace, ep.info.serviceAccount) : `pod:${ep.info.namespace}/${ep.info.ip}`;
    const key = `${peer.host}:${peer.port}|${source}|${destination}`;
    let forwarded: string | undefined;
    if (typeof src.ip === 'string' && /^[0-9.]+$/.test(src.ip)) forwarded = `for=${src.ip}`;
    const baggage = baggageOf(src);

    // Two tries: a pooled session may turn out to be going away as the stream is opened.
    for (let attempt = 0; ; attempt++) {
      const pooled = await this.session(key, peer, src, ep, source, destination, deadline);
      let stream: ClientHttp2Stream;
      try {
        const headers: Record<string, string> = { ':method': 'CONNECT', ':authority': `${ep.info.ip}:${ep.info.port}` };
        if (forwarded) headers.forwarded = forwarded;
        if (baggage) headers[SOURCE_BAGGAGE_HEADER] = baggage;
        stream = pooled.session.request(headers, { endStream: false });
      } catch (err) {
        this.drop(pooled, `cannot open a stream: ${(err as Error).message}`);
        if (attempt === 0) continue;
        throw connectFailure(`tunnel to ${peer.host}:${peer.port} for ${ep.id}: ${(err as Error).message}`, err);
      }
      // Errors after the hand-over reach the consumer as 'close'; one must never go unheard.
      stream.on('error', () => undefined);
      pooled.streams++;
      const started = Date.now();
      stream.once('close', () => {
        pooled.streams--;
        this.log.info(
          {
            protocol: 'hbone',
            direction: 'outbound',
            src_principal: principalOf(spiffeId(td, src.namespace, src.serviceAccount)),
            dst_principal: pooled.dstPrincipal,
            src_workload: src.name ? `${src.namespace}/${src.name}` : undefined,
            peer: `${peer.host}:${peer.port}`,
            dst: ep.id,
            dst_workload: `${ep.info.namespace}/${ep.info.workload}`,
            duration_ms: Date.now() - started,
            rst_code: stream.rstCode || undefined,
            security: 'mutual_tls',
          },
          'access',
        );
      });
      const next = pooled.session.state.nextStreamID;
      if (next !== undefined && next > 2 ** 31 - 1 - STREAM_ID_MARGIN) {
        this.retire(undefined, 'stream ids nearly used up', pooled);
      }
      await this.answered(stream, ep, peer, deadline);
      return buffersOnly(stream);
    }
  }

  /** Open sessions, for config_dump. */
  describe(): unknown {
    return [...this.all].map((p) => ({
      peer: p.peer,
      source: p.source,
      destination: p.destination,
      destinationPrincipal: p.dstPrincipal,
      pooled: this.pool.get(p.key) === p,
      streams: p.streams,
      ageSeconds: Math.round((Date.now() - p.created) / 1000),
    }));
  }

  /** Cut every session (agent stop). */
  close(): void {
    this.closed = true;
    this.opts.identities.certs.off('rotated', this.onRotated);
    for (const p of this.all) p.session.destroy();
    this.all.clear();
    this.pool.clear();
  }

  private answered(stream: ClientHttp2Stream, ep: Endpoint, peer: PeerAgent, deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const fail = (why: string, cause?: unknown) => {
        cleanup();
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(connectFailure(`tunnel to ${peer.host}:${peer.port} for ${ep.id}: ${why}`, cause));
      };
      const onResponse = (headers: IncomingHttpHeaders) => {
        const status = Number(headers[':status']);
        if (status === 200) {
          cleanup();
          resolve();
          return;
        }
        const why = headers['x-weft-error'];
        fail(`the peer agent answered ${status}${why ? ` (${String(why)})` : ''}`);
      };
      const onError = (err: Error) => fail(err.message, err);
      const onClose = () => fail(`stream closed before an answer (code ${stream.rstCode})`);
      const timer = setTimeout(() => fail(`no answer within ${Math.max(0, deadline - Date.now() + 1)}ms`), Math.max(1, deadline - Date.now()));
      const cleanup = () => {
        clearTimeout(timer);
        stream.off('response', onResponse);
        stream.off('error', onError);
        stream.off('close', onClose);
      };
      stream.once('response', onResponse);
      stream.once('error', onError);
      stream.once('close', onClose);
    });
  }

  private async session(key: string, peer: PeerAgent, src: { namespace: string; serviceAccount: string }, ep: Endpoint, source: string, destination: string, deadline: number): Promise<Pooled> {
    const pooled = this.pool.get(key);
    if (pooled && !pooled.session.closed && !pooled.session.destroyed) return pooled;
    if (pooled) this.drop(pooled, 'closed');
    let opening = this.opening.get(key);
    if (!opening) {
      opening = this.open(key, peer, src, ep, source, destination, deadline).finally(() => this.opening.delete(key));
      this.opening.set(key, opening);
    }
    return opening;
  }

  private async open(key: string, peer: PeerAgent, src: { namespace: string; serviceAccount: string }, ep: Endpoint, source: string, destination: string, deadline: number): Promise<Pooled> {
    const ids = this.opts.identities;
    const secureContext = await ids.context(src.namespace, src.serviceAccount, deadline - Date.now());
    if (!secureContext) {
      throw connectFailure(
        ids.has(src.namespace, src.serviceAccount)
          ? `no certificate for ${source} yet (the CA has not answered); cannot tunnel to ${ep.id}`
          : `${source} does not run on this node: no certificate to tunnel to ${ep.id} with`,
      );
    }
    const known = ep.info.serviceAccount !== '';
    const expected = known ? spiffeId(ids.trustDomain, ep.info.namespace, ep.info.serviceAccount) : `spiffe://${ids.trustDomain}/ns/${ep.info.namespace}/sa/`;
    const servername = known ? serverNameFor(ep.info.namespace, ep.info.serviceAccount) : serverNameForPod(ep.info.namespace, ep.info.ip);
    return new Promise<Pooled>((resolve, reject) => {
      let settled = false;
      const session = http2.connect(`https://${peer.host}:${peer.port}`, {
        createConnection: () => {
          const socket = tls.connect({
            host: peer.host,
            port: peer.port,
            ...(this.opts.localAddress ? { localAddress: this.opts.localAddress } : {}),
            servername,
            secureContext,
            minVersion: 'TLSv1.3',
            ALPNProtocols: [HBONE_ALPN],
            rejectUnauthorized: true,
            checkServerIdentity: (_host, cert) => checkPeerIdentity(expected, cert),
          });
          // Frames are small and already batched by nghttp2: Nagle would only add delay.
          socket.setNoDelay(true);
          return socket;
        },
        maxSessionMemory: 64,
        settings: { initialWindowSize: STREAM_WINDOW, maxFrameSize: MAX_FRAME_SIZE, enablePush: false },
      });
      const entry: Pooled = { key, session, peer: `${peer.host}:${peer.port}`, source, destination, dstPrincipal: known ? principalOf(expected) : '', created: Date.now(), streams: 0 };
      const timer = setTimeout(() => fail(new Error(`handshake not done within ${Math.max(0, deadline - Date.now())}ms`)), Math.max(1, deadline - Date.now()));
      const fail = (err: Error) => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        session.destroy();
        reject(connectFailure(`tunnel to ${peer.host}:${peer.port} (${destination}) failed: ${err.message}`, err));
      };
      session.once('connect', () => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        if (!known) {
          // Checked by checkPeerIdentity: one SPIFFE ID of the destination's namespace.
          const uris = uriSans((session.socket as tls.TLSSocket).getPeerCertificate().subjectaltname);
          entry.dstPrincipal = uris[0] ? principalOf(uris[0]) : '';
        }
        try {
          session.setLocalWindowSize(SESSION_WINDOW);
        } catch {
          // closing already: the first stream will find out
        }
        this.all.add(entry);
        if (this.closed) session.destroy();
        else this.pool.set(key, entry);
        this.log.debug({ peer: entry.peer, source, destination }, 'tunnel session opened');
        resolve(entry);
      });
      session.on('error', (err) => {
        if (!settled) fail(err);
        else this.log.debug({ peer: entry.peer, err: err.message }, 'tunnel session error');
      });
      session.once('close', () => {
        if (!settled) fail(new Error('connection closed during the handshake'));
        this.all.delete(entry);
        if (this.pool.get(key) === entry) this.pool.delete(key);
      });
      session.once('goaway', (_code: number, _last: number, data?: Buffer) => {
        // A peer that refuses our certificate (e.g. its trust bundle no longer holds our root) says why here.
        if (data?.length) this.log.warn({ peer: entry.peer, source, destination, reason: data.toString('utf8').slice(0, 300) }, 'the peer agent refused the tunnel session');
        this.drop(entry, 'GOAWAY from the peer');
      });
      session.setTimeout(this.idleTimeoutMs, () => this.retire(undefined, 'idle', entry));
    });
  }

  /** Takes a session out of the pool; it still carries its open streams. */
  private drop(entry: Pooled, why: string): void {
    if (this.pool.get(entry.key) === entry) {
      this.pool.delete(entry.key);
      this.log.debug({ peer: entry.peer, source: entry.source, destination: entry.destination, why }, 'tunnel session left the pool');
    }
  }

  /** Drop and close gracefully (streams in flight finish): every session of `source`, or one. */
  private retire(source: string | undefined, why: string, one?: Pooled): void {
    const targets = one ? [one] : [...this.all].filter((p) => p.source === source);
    for (const p of targets) {
      this.drop(p, why);
      if (!p.session.closed && !p.session.destroyed) p.session.close();
    }
  }
}
