import http from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import t from 'tap';
import { Endpoint } from '../../src/cluster/endpoint.js';
import type { HealthCheckPolicy } from '../../src/config/types.js';
import { ActiveHealthChecker } from '../../src/health/active-checker.js';
import { HealthCheckScheduler, sharedHealthCheckScheduler, type SchedulerTimers } from '../../src/health/scheduler.js';

const PY_NO_ACCEPT = `import socket, sys
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(0)
print(s.getsockname()[1], flush=True)
sys.stdin.read()
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, ms = 3000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(5);
  }
  return true;
}

function ep(port: number): Endpoint {
  return new Endpoint({
    ip: '127.0.0.1',
    port,
    weight: 1,
    workload: `w-${port}`,
    namespace: 'ns',
    node: 'n',
    serviceAccount: 'sa',
    ready: true,
    local: true,
    meshed: true,
  });
}

const tcpPolicy: HealthCheckPolicy = { type: 'tcp', path: '', interval: 100, timeout: 100, unhealthyThreshold: 2, healthyThreshold: 2, jitter: 0 };
const httpPolicy: HealthCheckPolicy = { ...tcpPolicy, type: 'http', path: '/healthz' };

function listen(server: net.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function close(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    if (server instanceof http.Server) server.closeAllConnections();
    server.close(() => resolve());
  });
}

function logCapture() {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _enc, cb) {
        lines.push(JSON.parse(String(chunk)));
        cb();
      },
    }),
  );
  return { lines, log };
}

t.test('TCP check: unhealthy when the listener goes away, healthy again when it is back', async (t) => {
  let accepted = 0;
  const mk = () =>
    net.createServer((s) => {
      accepted++;
      s.on('error', () => {});
      s.end();
    });
  let server = mk();
  const port = await listen(server);
  t.teardown(() => close(server));
  const scheduler = new HealthCheckScheduler();
  const changes: string[] = [];
  const { lines, log } = logCapture();
  const e = ep(port);
  const checker = new ActiveHealthChecker({ policy: tcpPolicy, service: 'shop/api:80', log, onChange: (x) => changes.push(x.health), scheduler });
  t.teardown(() => checker.stop());
  checker.setEndpoints([e]);
  t.ok(await waitFor(() => e.health === 'healthy'), 'first success: healthy');
  t.ok(accepted >= 1);

  await close(server);
  const closedAt = Date.now();
  t.ok(await waitFor(() => e.health === 'unhealthy'), 'unhealthy after the listener closed');
  const took = Date.now() - closedAt;
  t.ok(took >= 100 && took < 1500, `after ~unhealthyThreshold x interval (${took}ms)`);
  t.equal(e.checkFailures, 2);
  t.match(e.lastCheckError, /ECONNREFUSED/);
  t.match(
    lines.find((l) => l.msg === 'endpoint failed health checks'),
    {
      level: 40,
      endpoint: e.id,
      service: 'shop/api:80',
      from: 'healthy',
      to: 'unhealthy',
      reason: /2 consecutive failed checks: .*ECONNREFUSED/,
    },
  );

  server = mk();
  await listen(server, port);
  const reopenedAt = Date.now();
  t.ok(await waitFor(() => e.health === 'healthy'), 'healthy again on the same port');
  const back = Date.now() - reopenedAt;
  t.ok(back >= 100 && back < 1500, `after healthyThreshold successes (${back}ms)`);
  t.equal(e.lastCheckError, '');
  t.same(changes, ['healthy', 'unhealthy', 'healthy'], 'onChange on transitions only');
  t.equal(lines.filter((l) => /health checks$/.test(String(l.msg))).length, 3, 'one log line per transition');
});

t.test('TCP check: a connect that does not complete within the timeout is a failure', async (t) => {
  // The kernel completes handshakes before accept(), and Node always accepts, so use a
  // listener that never accepts (python3, backlog 0) and fill its one-slot queue: further
  // SYNs to it are dropped and a connect hangs until our timeout.
  let py: ChildProcess;
  try {
    py = spawn('python3', ['-c', PY_NO_ACCEPT], { stdio: ['pipe', 'pipe', 'ignore'] });
  } catch {
    t.plan(0, 'python3 not available');
    return;
  }
  const port = await new Promise<number>((resolve) => {
    py.once('error', () => resolve(0));
    py.once('exit', () => resolve(0));
    py.stdout!.once('data', (d) => resolve(Number(String(d).trim())));
  });
  if (!port) {
    t.plan(0, 'python3 not available');
    return;
  }
  const filler = net.connect(port, '127.0.0.1');
  filler.on('error', () => {});
  t.teardown(() => {
    filler.destroy();
    py.kill();
  });
  await new Promise((r) => filler.once('connect', r));
  const scheduler = new HealthCheckScheduler();
  const e = ep(port);
  const checker = new ActiveHealthChecker({ policy: { ...tcpPolicy, timeout: 50 }, service: 's', onChange: () => {}, scheduler });
  t.teardown(() => checker.stop());
  checker.setEndpoints([e]);
  t.ok(await waitFor(() => e.health === 'unhealthy'));
  t.equal(e.lastCheckError, 'timeout after 50ms');
});

t.test('HTTP check: 2xx healthy, 503 unhealthy, timeout unhealthy', async (t) => {
  let status = 200;
  let hang = false;
  const seen: Array<{ path?: string; host?: string; ua?: string; method?: string }> = [];
  const server = http.createServer((req, res) => {
    seen.push({ path: req.url, host: req.headers.host, ua: req.headers['user-agent'], method: req.method });
    if (hang) return; // never answers
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end('ok\n');
  });
  const port = await listen(server);
  t.teardown(() => close(server));
  const scheduler = new HealthCheckScheduler();
  const changes: string[] = [];
  const e = ep(port);
  const checker = new ActiveHealthChecker({ policy: httpPolicy, service: 'shop/web:80', onChange: (x) => changes.push(x.health), scheduler });
  t.teardown(() => checker.stop());
  checker.setEndpoints([e]);

  t.ok(await waitFor(() => e.health === 'healthy'), '200: healthy');
  t.match(seen[0], { path: '/healthz', host: `127.0.0.1:${port}`, ua: 'weft-health', method: 'GET' });

  status = 503;
  t.ok(await waitFor(() => e.health === 'unhealthy'), '503: unhealthy');
  t.equal(e.lastCheckError, 'status 503');

  status = 204;
  t.ok(await waitFor(() => e.health === 'healthy'), '204: healthy again');

  hang = true;
  const hungAt = Date.now();
  t.ok(await waitFor(() => e.health === 'unhealthy'), 'no answer: unhealthy');
  t.match(e.lastCheckError, /timeout after 100ms/);
  const took = Date.now() - hungAt;
  t.ok(took >= 200 && took < 2000, `two timeouts plus an interval (${took}ms)`);
  t.same(changes, ['healthy', 'unhealthy', 'healthy', 'unhealthy']);
});

t.test('checks of 50 endpoints are spread over the first interval', async (t) => {
  const servers: net.Server[] = [];
  let accepted = 0;
  t.teardown(async () => {
    await Promise.all(servers.map(close));
  });
  const eps: Endpoint[] = [];
  for (let i = 0; i < 50; i++) {
    const server = net.createServer((s) => {
      accepted++;
      s.on('error', () => {});
      s.end();
    });
    servers.push(server);
    eps.push(ep(await listen(server)));
  }
  // The stagger is read where it is decided, from the delay each first check is scheduled
  // with (real timers, real TCP probes), not from when the checks were seen to start: a test
  // process paused for a few ms (a loaded machine, a GC) runs all the timers due meanwhile in
  // one batch, and start times then bunch up however well they were spread.
  const delays: number[] = [];
  const timers: SchedulerTimers = {
    setTimeout(fn, ms) {
      delays.push(ms);
      const h = setTimeout(fn, ms);
      h.unref();
      return h;
    },
    clearTimeout(h) {
      clearTimeout(h as NodeJS.Timeout);
    },
  };
  const scheduler = new HealthCheckScheduler({ timers });
  const checker = new ActiveHealthChecker({ policy: { ...tcpPolicy, interval: 1000, jitter: 0.1 }, service: 's', onChange: () => {}, scheduler });
  t.teardown(() => checker.stop());
  checker.setEndpoints(eps);
  // setEndpoints subscribes the 50 targets at once: the first 50 timers are their first checks.
  const first = delays.slice(0, 50).sort((a, b) => a - b);
  t.equal(first.length, 50, 'a first check scheduled for every endpoint');
  const perMs = new Map<number, number>();
  for (const x of first) perMs.set(Math.floor(x), (perMs.get(Math.floor(x)) ?? 0) + 1);
  const crowd = Math.max(...perMs.values());
  // Uniform over 1000ms: two in one ms happens (birthday); more would mean no stagger.
  t.ok(crowd <= 6, `at most a few first checks in the same ms (${crowd}; all 50 at once without stagger)`);
  t.ok(perMs.size >= 25, `${perMs.size} distinct ms`);
  t.ok(first.at(-1)! - first[0]! > 500, `spread over the interval (${(first.at(-1)! - first[0]!).toFixed(0)}ms)`);
  t.ok(
    first.every((x) => x >= 0 && x < 1000),
    'all within the first interval',
  );
  t.ok(await waitFor(() => eps.every((e) => e.health === 'healthy'), 5000), 'and every endpoint is checked (and healthy)');
  t.ok(accepted >= 50);
});

t.test('two checkers sharing an endpoint produce one probe stream', async (t) => {
  let connections = 0;
  const peers = new Set<number>();
  const server = net.createServer((s) => {
    connections++;
    peers.add(s.remotePort!);
    s.on('error', () => {});
    s.end();
  });
  const port = await listen(server);
  t.teardown(() => close(server));
  const scheduler = new HealthCheckScheduler();
  const a = ep(port);
  const b = ep(port); // the same pod selected by another service: a different Endpoint object
  const ca = new ActiveHealthChecker({ policy: tcpPolicy, service: 'shop/api:80', onChange: () => {}, scheduler });
  const cb = new ActiveHealthChecker({ policy: { ...tcpPolicy }, service: 'shop/api-admin:9090', onChange: () => {}, scheduler });
  t.teardown(() => {
    ca.stop();
    cb.stop();
  });
  ca.setEndpoints([a]);
  cb.setEndpoints([b]);
  t.equal(scheduler.size, 1);
  // Counted against the checks made, not against a clock: one connection per check (the one
  // in flight may have been accepted already), where two streams would make two.
  t.ok(await waitFor(() => a.checkSuccesses >= 5, 10_000), 'five checks in a row succeeded');
  const checks = a.checkSuccesses;
  t.ok(connections === checks || connections === checks + 1, `one probe per check for both services, not two (${connections} connections for ${checks} checks)`);
  t.equal(a.health, 'healthy');
  t.equal(b.health, 'healthy');
  t.equal(a.checkSuccesses, b.checkSuccesses);

  ca.stop();
  t.equal(a.health, 'unknown', 'a stopped checker leaves its endpoints unknown (served)');
  t.equal(scheduler.size, 1, 'the other service still checks the pod');
  const mid = connections;
  t.ok(await waitFor(() => connections > mid), 'the other service goes on checking');
  cb.setEndpoints([]);
  t.equal(scheduler.size, 0);
  t.equal(b.health, 'unknown');
  // A probe cut short by the unsubscribe may still be in the server's accept queue: a
  // connection of our own, accepted after it (the queue is in order), says none is left.
  const sentinel = net.connect(port, '127.0.0.1');
  sentinel.on('error', () => {});
  await once(sentinel, 'connect');
  t.ok(await waitFor(() => peers.has(sentinel.localPort!)), 'the sentinel connection was accepted');
  sentinel.destroy();
  const end = connections;
  await sleep(300);
  t.equal(connections, end, 'no probes once nobody subscribes');
});

t.test('the default shared scheduler dedupes across checkers', async (t) => {
  const server = net.createServer((s) => s.end());
  const port = await listen(server);
  t.teardown(() => close(server));
  const before = sharedHealthCheckScheduler().size;
  const c1 = new ActiveHealthChecker({ policy: tcpPolicy, service: 'a', onChange: () => {} });
  const c2 = new ActiveHealthChecker({ policy: tcpPolicy, service: 'b', onChange: () => {} });
  c1.setEndpoints([ep(port)]);
  c2.setEndpoints([ep(port)]);
  t.equal(sharedHealthCheckScheduler().size, before + 1);
  c1.stop();
  c2.stop();
  t.equal(sharedHealthCheckScheduler().size, before);
});

t.test('a new subscriber to an already-checked endpoint gets its verdict at once', async (t) => {
  const scheduler = new HealthCheckScheduler();
  const port = await (async () => {
    const s = net.createServer();
    const p = await listen(s);
    await close(s);
    return p; // nothing listens here now
  })();
  const a = ep(port);
  const ca = new ActiveHealthChecker({ policy: tcpPolicy, service: 'a', onChange: () => {}, scheduler });
  t.teardown(() => ca.stop());
  ca.setEndpoints([a]);
  t.ok(await waitFor(() => a.health === 'unhealthy'));
  const b = ep(port);
  const changed: Endpoint[] = [];
  const cb = new ActiveHealthChecker({ policy: tcpPolicy, service: 'b', onChange: (x) => changed.push(x), scheduler });
  t.teardown(() => cb.stop());
  cb.setEndpoints([b]);
  t.equal(b.health, 'unhealthy');
  t.same(changed, [b]);
});

t.test('setEndpoints keeps the state of kept endpoints and stops removed ones', async (t) => {
  const counts = new Map<number, number>();
  const peers = new Set<number>();
  const servers: net.Server[] = [];
  t.teardown(async () => {
    await Promise.all(servers.map(close));
  });
  const eps: Endpoint[] = [];
  for (let i = 0; i < 2; i++) {
    const server = net.createServer((s) => {
      const p = (s.address() as net.AddressInfo).port;
      counts.set(p, (counts.get(p) ?? 0) + 1);
      peers.add(s.remotePort!);
      s.end();
    });
    servers.push(server);
    eps.push(ep(await listen(server)));
  }
  const [keep, drop] = eps as [Endpoint, Endpoint];
  const scheduler = new HealthCheckScheduler();
  const checker = new ActiveHealthChecker({ policy: tcpPolicy, service: 's', onChange: () => {}, scheduler });
  t.teardown(() => checker.stop());
  checker.setEndpoints([keep, drop]);
  t.ok(await waitFor(() => keep.checkSuccesses >= 2 && drop.health === 'healthy'));
  const successes = keep.checkSuccesses;
  checker.setEndpoints([keep]);
  t.equal(keep.health, 'healthy');
  t.ok(keep.checkSuccesses >= successes, 'streak kept');
  t.equal(drop.health, 'unknown');
  // A probe of the removed endpoint cut short may still be queued for accept: a connection of
  // our own, accepted after it (the queue is in order), says none is left.
  const sentinel = net.connect(drop.info.port, '127.0.0.1');
  sentinel.on('error', () => {});
  await once(sentinel, 'connect');
  t.ok(await waitFor(() => peers.has(sentinel.localPort!)), 'the sentinel connection was accepted');
  sentinel.destroy();
  const dropped = counts.get(drop.info.port)!;
  const kept = counts.get(keep.info.port)!;
  await sleep(300);
  t.equal(counts.get(drop.info.port), dropped, 'the removed endpoint is no longer checked');
  t.ok(await waitFor(() => counts.get(keep.info.port)! > kept), 'the kept one is');
});
