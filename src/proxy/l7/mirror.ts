/**
 * RequestMirror: a copy of a request sent to another service, fire-and-forget. The copy goes
 * out after the original was routed, on its own connection through the same transport (so a
 * remote endpoint is reached through the tunnel, with the caller's identity); its answer is
 * read and dropped, and nothing about it can delay, fail or change the original. At most
 * `maxInFlight` copies are out at once (more are dropped and counted), and each is cut after
 * `timeoutMs`: a slow mirror costs bounded memory and sockets, never client latency.
 *
 * Requests with a body are not mirrored (their bytes stream to the real upstream and are not
 * kept; they are counted as `skipped`). Copies speak HTTP/1.1 (a mirror of an http2/grpc port
 * is skipped as well).
 */
import type { Duplex } from 'node:stream';
import type { Cluster } from '../../cluster/cluster.js';
import type { Logger } from '../../telemetry/log.js';
import type { ConnContext } from '../context.js';
import type { Transport } from '../transport.js';

export interface MirrorStats {
  sent: number;
  answered: number;
  failed: number;
  /** Not sent: too many in flight. */
  dropped: number;
  /** Not sent: a request body, or a non-HTTP/1 backend. */
  skipped: number;
  inFlight: number;
}

export interface MirrorRequest {
  method: string;
  target: string;
  /** [name, value, ...], as they would go upstream (after the rule's header edits). */
  headers: readonly string[];
  /** The request has a body (not mirrored). */
  hasBody: boolean;
}

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length', 'expect']);

export class Mirror {
  readonly stats: MirrorStats = { sent: 0, answered: 0, failed: 0, dropped: 0, skipped: 0, inFlight: 0 };
  private readonly socks = new Set<Duplex>();

  constructor(
    private readonly transport: Transport,
    private readonly log: Logger,
    private readonly maxInFlight = 64,
    private readonly timeoutMs = 5000,
  ) {}

  /** Send a copy of `req` to one endpoint of `cluster`. Returns at once; never throws. */
  send(cluster: Cluster, ctx: ConnContext, req: MirrorRequest): void {
    const s = this.stats;
    if (req.hasBody || cluster.protocol !== 'http') {
      s.skipped++;
      return;
    }
    if (s.inFlight >= this.maxInFlight) {
      s.dropped++;
      return;
    }
    const ep = cluster.pick({});
    if (ep === undefined) {
      s.failed++;
      return;
    }
    s.inFlight++;
    s.sent++;
    let head = `${req.method} ${req.target} HTTP/1.1\r\n`;
    const h = req.headers;
    for (let i = 0; i < h.length; i += 2) if (!HOP.has(h[i]!.toLowerCase())) head += `${h[i]!}: ${h[i + 1]!}\r\n`;
    head += 'connection: close\r\n\r\n';
    const src = ctx.source;
    let settled = false;
    let sock: Duplex | undefined;
    const timer = setTimeout(() => finish(false), this.timeoutMs);
    const finish = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.inFlight--;
      if (ok) s.answered++;
      else s.failed++;
      if (sock !== undefined) {
        this.socks.delete(sock);
        sock.destroy();
      }
    };
    this.transport.connect(ep, { timeoutMs: cluster.policy.connectionPool.connectTimeout, source: src }).then(
      (up) => {
        if (settled) {
          up.destroy();
          return;
        }
        sock = up;
        this.socks.add(up);
        let got = false;
        up.on('data', () => {
          // The answer is dropped: reading it only tells that one came.
          got = true;
        });
        up.on('error', () => finish(false));
        up.on('close', () => finish(got));
        up.write(head, 'latin1');
      },
      (err: Error) => {
        this.log.debug({ endpoint: ep.id, err: err.message }, 'mirror connect failed');
        finish(false);
      },
    );
  }

  /** Cut every copy in flight (agent shutdown). */
  close(): void {
    for (const s of this.socks) s.destroy();
    this.socks.clear();
  }
}
