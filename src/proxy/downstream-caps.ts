/**
 * Per-listener caps on open downstream connections (outbound 15001, inbound 15006, tunnel
 * 15008), so that one flooding client cannot take every file descriptor and the memory of
 * the agent that all pods of the node depend on. The kernel-level accept goes on; a
 * connection over the cap is closed at once by Node (`server.maxConnections`), counted in
 * `weft_downstream_connections_rejected_total{listener}`, and logged at most once a second
 * per listener. `weft_downstream_connections{listener}` is the open count.
 */
import type net from 'node:net';
import type { Logger } from '../telemetry/log.js';
import type { Metrics } from '../telemetry/metrics.js';

export type ListenerName = 'outbound' | 'inbound' | 'tunnel';

export class DownstreamCaps {
  private readonly servers = new Map<ListenerName, net.Server>();
  private readonly lastLog = new Map<ListenerName, number>();

  constructor(
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /** Cap `server` at `max` open connections and count them. */
  attach(name: ListenerName, server: net.Server, max: number): void {
    this.servers.set(name, server);
    server.maxConnections = max;
    const labels = { listener: name };
    this.metrics.downstreamConnections.set(labels, 0);
    this.metrics.downstreamRejected.inc(labels, 0);
    server.on('connection', (s: net.Socket) => {
      this.metrics.downstreamConnections.inc(labels);
      s.once('close', () => this.metrics.downstreamConnections.dec(labels));
    });
    server.on('drop', (d?: { remoteAddress?: string }) => {
      this.metrics.downstreamRejected.inc(labels);
      const now = Date.now();
      if (now - (this.lastLog.get(name) ?? 0) < 1000) return;
      this.lastLog.set(name, now);
      this.log.warn({ listener: name, max: server.maxConnections, src_ip: d?.remoteAddress }, 'downstream connection refused: the listener is at agent.maxDownstreamConnections');
    });
  }

  /** New caps from a config change; connections already open stay. */
  apply(limits: Record<ListenerName, number>): void {
    for (const [name, server] of this.servers) server.maxConnections = limits[name];
  }
}
