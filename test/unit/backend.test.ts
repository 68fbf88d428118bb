// The sample backend on loopback: answers, control endpoints, TCP echo, the CLI.
import t from 'tap';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { startBackend, type Backend } from '../../src/sandbox/backend.js';

async function start(opts: { tcpEchoPort?: number } = {}): Promise<{ backend: Backend; base: string; agent: Agent }> {
  const backend = await startBackend({ name: 'api-0', port: 0, host: '127.0.0.1', log: () => {}, ...opts });
  const agent = new Agent({ keepAliveTimeout: 10_000 });
  t.teardown(async () => {
    await agent.close();
    await backend.close();
  });
  return { backend, base: `http://127.0.0.1:${backend.port}`, agent };
}

async function get(agent: Agent, url: string, method: 'GET' | 'HEAD' | 'POST' = 'GET', body?: string) {
  const res = await request(url, { dispatcher: agent, method, body });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

t.test('every path answers 200 with the pod name, method, path and headers', async (t) => {
  const { base, agent } = await start();
  const res = await get(agent, `${base}/items/7?x=1`);
  t.equal(res.status, 200);
  t.equal(res.headers['x-pod'], 'api-0');
  t.equal(res.headers['content-type'], 'application/json');
  const body = JSON.parse(res.text) as { pod: string; method: string; path: string; headers: Record<string, string>; remoteAddress: string };
  t.equal(body.pod, 'api-0');
  t.equal(body.method, 'GET');
  t.equal(body.path, '/items/7?x=1');
  t.equal(body.headers.host, `127.0.0.1:${base.split(':')[2]}`);
  t.equal(body.remoteAddress, '127.0.0.1');

  const post = await get(agent, `${base}/submit`, 'POST', 'x'.repeat(100_000));
  t.equal(post.status, 200);
  t.equal((JSON.parse(post.text) as { method: string }).method, 'POST');

  const head = await get(agent, `${base}/`, 'HEAD');
  t.equal(head.status, 200);
  t.equal(head.text, '');
});

t.test('keep-alive: one connection carries several requests', async (t) => {
  const { backend } = await start();
  const answers = await new Promise<string>((resolve, reject) => {
    const s = connect(backend.port, '127.0.0.1');
    let data = '';
    s.on('error', reject);
    s.write('GET /one HTTP/1.1\r\nhost: x\r\n\r\n');
    s.on('data', (d) => {
      data += d;
      const n = data.split('HTTP/1.1 200').length - 1;
      if (n === 1 && !data.includes('/two')) s.write('GET /two HTTP/1.1\r\nhost: x\r\n\r\n');
      if (n === 2 && data.includes('"/two"')) {
        s.end();
        resolve(data);
      }
    });
    s.on('close', () => reject(new Error(`closed early: ${data}`)));
  });
  t.match(answers, /connection: keep-alive/i);
  t.match(answers, /"path":"\/one"[\s\S]*"path":"\/two"/);
});

t.test('/healthz follows /_ctl/unhealthy and /_ctl/healthy', async (t) => {
  const { base, agent, backend } = await start();
  t.equal((await get(agent, `${base}/healthz`)).status, 200);
  t.equal((await get(agent, `${base}/_ctl/unhealthy`)).status, 200);
  t.equal((await get(agent, `${base}/healthz`)).status, 503);
  t.equal((await get(agent, `${base}/other`)).status, 200, 'only the health check fails');
  t.equal(backend.state.healthy, false);
  await get(agent, `${base}/_ctl/healthy`);
  t.equal((await get(agent, `${base}/healthz`)).status, 200);
});

t.test('/_ctl/fail answers every later request with the status, except /_ctl', async (t) => {
  const { base, agent } = await start();
  t.equal((await get(agent, `${base}/_ctl/fail?status=502`)).status, 200);
  const failed = await get(agent, `${base}/a`);
  t.equal(failed.status, 502);
  t.equal(failed.headers['x-pod'], 'api-0', 'failures still say who answered');
  t.equal((await get(agent, `${base}/healthz`)).status, 502);
  const state = await get(agent, `${base}/_ctl/state`);
  t.equal(state.status, 200);
  t.match(JSON.parse(state.text), { ok: true, state: { failStatus: 502 } });
  await get(agent, `${base}/_ctl/ok`);
  t.equal((await get(agent, `${base}/a`)).status, 200);
  await get(agent, `${base}/_ctl/fail`);
  t.equal((await get(agent, `${base}/a`)).status, 503, 'default 503');
  t.equal((await get(agent, `${base}/_ctl/fail?status=abc`)).status, 400);
  t.equal((await get(agent, `${base}/_ctl/nope`)).status, 400);
});

t.test('?status and ?delay per request', async (t) => {
  const { base, agent } = await start();
  t.equal((await get(agent, `${base}/x?status=418`)).status, 418);
  const t0 = Date.now();
  t.equal((await get(agent, `${base}/x?delay=120`)).status, 200);
  t.ok(Date.now() - t0 >= 110, 'delayed');
});

t.test('/_ctl/delay delays every answer but control ones', async (t) => {
  const { base, agent } = await start();
  await get(agent, `${base}/_ctl/delay?ms=150`);
  let t0 = Date.now();
  await get(agent, `${base}/x`);
  t.ok(Date.now() - t0 >= 140, 'answer delayed');
  t0 = Date.now();
  await get(agent, `${base}/_ctl/state`);
  t.ok(Date.now() - t0 < 140, 'control not delayed');
  t0 = Date.now();
  await get(agent, `${base}/x?delay=0`);
  t.ok(Date.now() - t0 < 140, 'per-request delay overrides');
  await get(agent, `${base}/_ctl/delay?ms=0`);
  t0 = Date.now();
  await get(agent, `${base}/x`);
  t.ok(Date.now() - t0 < 140, 'back to normal');
});

t.test('/_ctl/size pads bodies to N bytes; /_ctl/reset restores defaults', async (t) => {
  const { base, agent, backend } = await start();
  await get(agent, `${base}/_ctl/size?bytes=1024`);
  const res = await get(agent, `${base}/bench`);
  t.equal(Buffer.byteLength(res.text), 1024);
  t.equal(res.headers['content-length'], '1024');
  t.equal((JSON.parse(res.text) as { pod: string }).pod, 'api-0');
  await get(agent, `${base}/_ctl/size?bytes=65536`);
  t.equal(Buffer.byteLength((await get(agent, `${base}/bench`)).text), 65536);
  await get(agent, `${base}/_ctl/size?bytes=10`);
  t.ok(Buffer.byteLength((await get(agent, `${base}/bench`)).text) > 10, 'smaller than the body: no padding');
  t.equal(backend.state.requests, 3);
  await get(agent, `${base}/_ctl/fail`);
  await get(agent, `${base}/_ctl/reset`);
  t.same(backend.state, { failStatus: null, delayMs: 0, healthy: true, sizeBytes: 0, requests: 0, grpcFail: null, calls: 0 });
  t.equal((await get(agent, `${base}/x`)).status, 200);
});

t.test('TCP echo greets with the name, then echoes', async (t) => {
  const { backend } = await start({ tcpEchoPort: 0 });
  t.ok(backend.tcpEchoPort);
  const got = await new Promise<string>((resolve, reject) => {
    const s = connect(backend.tcpEchoPort!, '127.0.0.1');
    let data = '';
    s.on('error', reject);
    s.on('data', (d) => {
      data += d;
      if (data === 'api-0\n') s.write('hello');
      else if (data.endsWith('hello')) {
        s.end();
        resolve(data);
      }
    });
  });
  t.equal(got, 'api-0\nhello');
});

t.test('close() stops both servers, even with open connections', async (t) => {
  const backend = await startBackend({ name: 'c', port: 0, host: '127.0.0.1', tcpEchoPort: 0, log: () => {} });
  const agent = new Agent();
  await get(agent, `http://127.0.0.1:${backend.port}/`);
  const echo = connect(backend.tcpEchoPort!, '127.0.0.1');
  echo.on('error', () => {});
  await new Promise((r) => echo.once('data', r));
  await backend.close();
  await backend.close();
  await t.rejects(get(agent, `http://127.0.0.1:${backend.port}/`));
  await agent.close();
});

t.test('as a script: prints the listen line, serves, exits 0 on SIGTERM', async (t) => {
  const script = fileURLToPath(new URL('../../src/sandbox/backend.ts', import.meta.url));
  const child = spawn(process.execPath, [...process.execArgv, script, '--name', 'cli-0', '--port', '0', '--host', '127.0.0.1', '--tcp-echo-port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  child.stderr.on('data', (d) => (out += d));
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const m = /backend cli-0 listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`exited: ${out}`)));
  });
  t.match(out, /backend cli-0 tcp-echo listening on 127\.0\.0\.1:\d+\n/);
  const res = await request(`http://127.0.0.1:${port}/`);
  t.equal(res.headers['x-pod'], 'cli-0');
  await res.body.text();
  const exited = new Promise((r) => child.on('exit', (code) => r(code)));
  child.kill('SIGTERM');
  t.equal(await exited, 0);

  const bad = spawn(process.execPath, [...process.execArgv, script, '--port', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  bad.stderr.on('data', (d) => (err += d));
  t.equal(await new Promise((r) => bad.on('exit', r)), 2);
  t.match(err, /--name is required/);
});
