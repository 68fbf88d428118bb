/**
 * Binding a listener as an awaitable step, so that a taken port fails the agent's start-up
 * instead of surfacing later as an unhandled 'error' event.
 */
import type { ListenOptions, Server } from 'node:net';

/** Resolves once `server` listens; rejects with the bind error (EADDRINUSE, EACCES...). */
export function listen(server: Server, opts: ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
