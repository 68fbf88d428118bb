/**
 * The agent's listening sockets, bound so that they can be handed to a successor: each is
 * either the socket the previous agent handed over (same kernel socket, same listen queue) or
 * one bound here. Workers (or anything else in this process) that must accept on a listener
 * too take their own fd for it with {@link Listeners.dupFd}.
 */
import type { ListenOptions, Server } from 'node:net';
import { listen } from '../listen.js';
import { dupFd } from './fds.js';
import type { HandedListener, NodeSlot } from './handover.js';

export interface ListenerSpec {
  /** outbound, inbound, tunnel, admin, metrics: the handover matches sockets by it. */
  name: string;
  server: Server;
  host: string;
  port: number;
  backlog?: number;
  /**
   * SO_REUSEPORT on a socket bound here (an inherited one keeps what it had). Note: sockets of
   * one SO_REUSEPORT group have a listen queue each, and one that closes drops its queue; only
   * sockets handed over (or dups of them: {@link Listeners.dupFd}) keep their queue.
   */
  reusePort?: boolean;
}

interface Bound extends ListenerSpec {
  inherited: boolean;
}

export class Listeners {
  private readonly bound = new Map<string, Bound>();

  constructor(private readonly slot?: NodeSlot) {}

  /**
   * Listens on the inherited socket for `spec.name` on this address if there is one, else on a
   * socket of its own. Rejects with `cannot listen on <name> <host>:<port>: <why>`.
   */
  async bind(spec: ListenerSpec): Promise<{ inherited: boolean }> {
    const fd = this.slot?.inherit(spec.name, spec.host, spec.port);
    try {
      if (fd !== undefined) await listen(spec.server, { fd, backlog: spec.backlog } as ListenOptions);
      else await listen(spec.server, { host: spec.host, port: spec.port, backlog: spec.backlog, ...(spec.reusePort ? { reusePort: true } : {}) });
    } catch (err) {
      throw new Error(`cannot listen on ${spec.name} ${spec.host}:${spec.port}: ${(err as Error).message}`);
    }
    this.bound.set(spec.name, { ...spec, inherited: fd !== undefined });
    return { inherited: fd !== undefined };
  }

  /** The listening sockets as a successor receives them (fds of this process). */
  handed(): HandedListener[] {
    const out: HandedListener[] = [];
    for (const b of this.bound.values()) {
      const fd = fdOf(b.server);
      if (fd === undefined) continue;
      out.push({ name: b.name, host: b.host, port: (b.server.address() as { port: number }).port, fd });
    }
    return out;
  }

  /** A new fd for a listener's socket, for another event loop (a worker) to accept on: `server.listen({ fd })`. */
  dupFd(name: string): number {
    const b = this.bound.get(name);
    const fd = b && fdOf(b.server);
    if (fd === undefined) throw new Error(`no listening socket named ${name}`);
    return dupFd(fd);
  }

  /**
   * Stops accepting: this process's fds of the listening sockets are closed now (connections
   * already accepted stay). A successor holding the same sockets keeps their queues.
   */
  stopAccepting(): void {
    for (const b of this.bound.values()) if (b.server.listening) b.server.close();
    this.bound.clear();
  }
}

function fdOf(server: Server): number | undefined {
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}
