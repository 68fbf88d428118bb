import type * as http from 'node:http';
import nodeHttp from '../node-http.js';
import type { Registry } from 'prom-client';
import { listen } from '../listen.js';
import type { Logger } from '../telemetry/log.js';

export interface AdminDeps {
  registry: Registry;
  /** The agent's metrics when they are more than `registry` (worker threads' merged in); default: `registry`'s. */
  metrics?: () => Promise<{ text: string; contentType: string }>;
  ready: () => { ready: boolean; reasons: string[] };
  /** The state dump (with worker threads: what each serves, asked of them). */
  configDump: () => unknown;
  log: Logger;
}

async function serveMetrics(deps: AdminDeps, res: http.ServerResponse): Promise<void> {
  const { text, contentType } = deps.metrics ? await deps.metrics() : { text: await deps.registry.metrics(), contentType: deps.registry.contentType };
  res.writeHead(200, { 'content-type': contentType });
  res.end(text);
}

/**
 * Admin (15000, 127.0.0.1 only): readiness, the state dump, metrics. Metrics (15020, node
 * address): Prometheus text only. Both bind before the agent reports ready.
 */
export class AdminServer {
  readonly admin: http.Server;
  readonly metrics: http.Server;

  constructor(private readonly deps: AdminDeps) {
    this.admin = nodeHttp.createServer((req, res) => {
      this.handleAdmin(req, res).catch((err) => {
        deps.log.error({ err }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
    });
    this.metrics = nodeHttp.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method === 'GET' && path === '/metrics') {
        serveMetrics(deps, res).catch(() => res.destroy());
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: the metrics port serves GET /metrics\n');
    });
  }

  async listen(adminHost: string, adminPort: number, metricsHost: string, metricsPort: number): Promise<void> {
    await listen(this.admin, { host: adminHost, port: adminPort });
    await listen(this.metrics, { host: metricsHost, port: metricsPort });
  }

  private async handleAdmin(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' });
      res.end();
      return;
    }
    switch (path) {
      case '/healthz/ready': {
        const r = this.deps.ready();
        res.writeHead(r.ready ? 200 : 503, { 'content-type': 'text/plain' });
        res.end(r.ready ? 'ready\n' : `not ready: ${r.reasons.join('; ')}\n`);
        return;
      }
      case '/config_dump': {
        const dump = await this.deps.configDump();
        const body = JSON.stringify(dump, (_k, v) => (typeof v === 'bigint' ? String(v) : v), 2);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
        return;
      }
      case '/metrics':
        await serveMetrics(this.deps, res);
        return;
      default:
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found: try /healthz/ready, /config_dump, /metrics\n');
    }
  }

  async close(): Promise<void> {
    await Promise.all(
      [this.admin, this.metrics].map(
        (s) =>
          new Promise<void>((r) => {
            s.closeAllConnections?.();
            s.close(() => r());
          }),
      ),
    );
  }
}
