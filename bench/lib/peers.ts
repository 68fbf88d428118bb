/**
 * The peers weft is compared with, each a reverse proxy on the node (in the node namespace,
 * on the node address) in front of the same backend pod, pinned to the proxy's core:
 *
 * - nginx: `worker_processes 1`, keep-alive to the upstream, access log off;
 * - haproxy: `nbthread 1`, `http-reuse always`, no log;
 * - @fastify/http-proxy: bench/peers/fastify-proxy.ts, its defaults;
 * - the raw Node.js pipe: bench/peers/node-pipe.ts (net.Socket.pipe both ways, no parsing),
 *   Node's floor for moving the same bytes.
 *
 * And the backend they all reach: nginx serving a static 1 KiB file (staticBackendConfig),
 * fast enough that the proxy, not the backend, is what limits.
 *
 * Their configs, pid files and logs live in the bench's temp dir: a running system nginx or
 * haproxy is never touched. nginx and haproxy come from Debian, installed when missing.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../src/sandbox/mesh-sandbox.js';
import type { TopoNode } from '../../src/sandbox/topology.js';
import { spawnPinned, type Running } from './spawn.js';

export type PeerName = 'nginx' | 'haproxy' | 'fastify' | 'pipe';

export interface PeerOptions {
  /** Where configs, pid files and logs go. */
  dir: string;
  listenHost: string;
  listenPort: number;
  upstreamHost: string;
  upstreamPort: number;
  cpu: number;
}

/**
 * The lines of the `http {}` block every bench nginx shares: no access log, temp files in
 * `tmp` (the bench's private dir), long-lived keep-alive.
 */
export function nginxHttpCommon(tmp: string): string {
  return [
    'access_log off;',
    `client_body_temp_path ${tmp}/body;`,
    `proxy_temp_path ${tmp}/proxy;`,
    `fastcgi_temp_path ${tmp}/fastcgi;`,
    `uwsgi_temp_path ${tmp}/uwsgi;`,
    `scgi_temp_path ${tmp}/scgi;`,
    'keepalive_requests 1000000;',
    'keepalive_timeout 75s;',
  ]
    .map((line) => `  ${line}`)
    .join('\n');
}

export function nginxConfig(o: PeerOptions): string {
  const tmp = join(o.dir, 'nginx-tmp');
  return `# weft bench: nginx as a node-local reverse proxy, one worker
worker_processes 1;
pid ${join(o.dir, 'nginx.pid')};
error_log ${join(o.dir, 'nginx-error.log')} warn;
events { worker_connections 4096; }
http {
${nginxHttpCommon(tmp)}
  upstream backend {
    server ${o.upstreamHost}:${o.upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen ${o.listenHost}:${o.listenPort} backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
}

export function haproxyConfig(o: PeerOptions): string {
  return `# weft bench: haproxy as a node-local reverse proxy, one thread
global
  nbthread 1
  maxconn 4096
  pidfile ${join(o.dir, 'haproxy.pid')}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind ${o.listenHost}:${o.listenPort}
  default_backend be
backend be
  server backend0 ${o.upstreamHost}:${o.upstreamPort}
`;
}

/**
 * The backend: nginx, one worker, serving `www/body` (the answer to every path) with
 * keep-alive and no access log. A Node backend on the client's core saturated that core
 * before nginx-the-proxy was busy, so the proxies were compared on the backend's speed.
 */
export function staticBackendConfig(dir: string, listenPort: number): string {
  const tmp = join(dir, 'tmp');
  // The worker reads the body from the bench's private temp dir (mode 0700): it runs as root.
  return `# weft bench: the static backend, one worker
user root;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 4096; }
http {
${nginxHttpCommon(tmp)}
  open_file_cache max=16;
  default_type text/plain;
  server {
    listen ${listenPort} backlog=4096 reuseport;
    root ${join(dir, 'www')};
    location / { try_files /body =404; }
  }
}
`;
}

/** Write the static backend's config and body; returns nginx's argv (run it in the backend pod). */
export function prepareStaticBackend(dir: string, listenPort: number, bodyBytes: number): string[] {
  mkdirSync(join(dir, 'www'), { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  writeFileSync(join(dir, 'www', 'body'), Buffer.alloc(bodyBytes, 'x'));
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, staticBackendConfig(dir, listenPort));
  return ['nginx', '-p', `${dir}/`, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'];
}

/** Start a peer pinned to `o.cpu` in the node namespace. Not yet known to be listening. */
export function startPeer(node: TopoNode, name: PeerName, o: PeerOptions): Running {
  mkdirSync(o.dir, { recursive: true });
  const logFile = join(o.dir, `${name}.log`);
  switch (name) {
    case 'nginx': {
      mkdirSync(join(o.dir, 'nginx-tmp'), { recursive: true });
      const conf = join(o.dir, 'nginx.conf');
      writeFileSync(conf, nginxConfig(o));
      return spawnPinned(node, name, o.cpu, ['nginx', '-p', `${o.dir}/`, '-c', conf, '-e', join(o.dir, 'nginx-error.log'), '-g', 'daemon off;'], logFile);
    }
    case 'haproxy': {
      const conf = join(o.dir, 'haproxy.cfg');
      writeFileSync(conf, haproxyConfig(o));
      return spawnPinned(node, name, o.cpu, ['haproxy', '-db', '-f', conf], logFile);
    }
    case 'fastify': {
      const script = join(repoRoot(), 'dist', 'bench', 'peers', 'fastify-proxy.js');
      return spawnPinned(node, name, o.cpu, [process.execPath, script, '--listen', `${o.listenHost}:${o.listenPort}`, '--upstream', `http://${o.upstreamHost}:${o.upstreamPort}`], logFile);
    }
    case 'pipe': {
      const script = join(repoRoot(), 'dist', 'bench', 'peers', 'node-pipe.js');
      return spawnPinned(node, name, o.cpu, [process.execPath, script, '--listen', `${o.listenHost}:${o.listenPort}`, '--upstream', `${o.upstreamHost}:${o.upstreamPort}`], logFile);
    }
  }
}
