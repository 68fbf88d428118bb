// The agent with worker threads (src/workers/), on loopback: two threads accept from the
// outbound socket, a worker that dies comes back while the control thread keeps its
// connections, /metrics is one agent's, and outlier detection and the breaker count both
// threads' outcomes.
import t, { type Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { startBackend } from '../../src/sandbox/backend.js';
import { startLoopbackAgent, type LoopbackAgent } from '../lib/loopback-agent.js';
import { loopbackMesh } from '../lib/mesh-yaml.js';
import { RawClient } from '../lib/raw-http.js';

const pod = [{ name: 'api-0', ip: '127.0.1.1', app: 'api' }];
const SRC = '127.0.2.1';
const DEST = '10.96.0.20:80';

interface WorkersDump {
  threads: number;
  controlConnections: number;
  serving: Array<{ index: number; state: string; restarts: number; serving?: { connections: number; clusters: Array<{ endpoints: Array<{ ejected: boolean }>; circuitBreaker: { state: string } }> } }>;
}

async function workers(la: LoopbackAgent): Promise<WorkersDump> {
  return ((await la.configDump()) as { workers: WorkersDump }).workers;
}

/** Polls `f` until it holds (bounded by a count of tries, not by a clock the test asserts on; a worker started from TypeScript source compiles its modules first, which takes a while on a busy machine). */
async function until(what: string, f: () => Promise<boolean>, tries = 4000): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await f()) return;
    await sleep(25);
  }
  throw new Error(`never: ${what}`);
}

async function get(c: RawClient): Promise<{ status: number; error?: string }> {
  c.write(`GET / HTTP/1.1\r\nhost: api\r\n\r\n`);
  const r = await c.readResponse();
  return { status: r.status, error: r.headers['x-weft-error'] };
}

/**
 * Opens connections one at a time and tells which thread accepted each (the control thread's
 * count or the worker's goes up), until both threads hold at least `n` (at most 400 tries:
 * whichever thread is free takes the next connection, so both get some).
 */
async function openTagged(la: LoopbackAgent, n: number): Promise<Array<{ c: RawClient; thread: 'control' | 'worker' }>> {
  const out: Array<{ c: RawClient; thread: 'control' | 'worker' }> = [];
  const count = (k: 'control' | 'worker') => out.filter((x) => x.thread === k).length;
  for (let i = 0; i < 400 && (count('control') < n || count('worker') < n); i++) {
    const before = await workers(la);
    const c = await RawClient.connect(la.outboundPort, SRC);
    t.equal((await get(c)).status, 200);
    const after = await workers(la);
    out.push({ c, thread: after.controlConnections > before.controlConnections ? 'control' : 'worker' });
  }
  return out;
}

t.test('two threads serve the outbound port; metrics come out as one agent', async (t) => {
  const backend = await startBackend({ name: 'api-0', port: 8080, host: '127.0.1.1', log: () => {} });
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh(pod, [{ name: 'api', vip: '10.96.0.20', app: 'api' }]), { workers: 2 });
  t.teardown(() => la.stop());
  la.route(SRC, DEST, 'shop/client-0');
  const w = await workers(la);
  t.equal(w.threads, 2, 'the control thread and one worker thread');
  t.equal(w.serving[0]?.state, 'serving');

  const conns = await openTagged(la, 3);
  t.teardown(() => conns.forEach((x) => x.c.close()));
  const held = await workers(la);
  t.ok(held.controlConnections >= 3, `the control thread holds ${held.controlConnections} connections`);
  t.ok((held.serving[0]?.serving?.connections ?? 0) >= 3, `the worker holds ${held.serving[0]?.serving?.connections} connections`);
  t.equal(held.controlConnections + (held.serving[0]?.serving?.connections ?? 0), conns.length);
  for (const x of conns) t.equal((await get(x.c)).status, 200);
  const requests = conns.length * 2;

  const text = await la.metrics();
  t.equal(text.match(/^# HELP weft_requests_total /gm)?.length, 1, 'one weft_requests_total family');
  const total = [...text.matchAll(/^weft_requests_total\{[^}]*destination_service="shop\/api"[^}]*\} (\d+)/gm)].reduce((s, m) => s + Number(m[1]), 0);
  t.equal(total, requests, 'the requests of both threads, summed');
  const count = [...text.matchAll(/^weft_request_duration_seconds_count\{[^}]*destination_service="shop\/api"[^}]*\} (\d+)/gm)].reduce((s, m) => s + Number(m[1]), 0);
  t.equal(count, requests, 'the duration histogram of both threads, merged');
  // The process's own series once, not once per thread (the agent runs in this process).
  const rss = Number(/^process_resident_memory_bytes (\d+)/m.exec(text)?.[1]);
  const mine = process.memoryUsage().rss;
  t.ok(rss > mine * 0.7 && rss < mine * 1.3, `process_resident_memory_bytes ${rss} is this process's RSS (${mine}), not a sum over threads`);
  t.equal(text.match(/^process_start_time_seconds /gm)?.length, 1, 'one process start time');
});

t.test('a worker that dies is started again; the control thread keeps its connections', async (t) => {
  const backend = await startBackend({ name: 'api-0', port: 8080, host: '127.0.1.1', log: () => {} });
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh(pod, [{ name: 'api', vip: '10.96.0.20', app: 'api' }]), { workers: 2 });
  t.teardown(() => la.stop());
  la.route(SRC, DEST, 'shop/client-0');
  const conns = await openTagged(la, 3);
  t.teardown(() => conns.forEach((x) => x.c.close()));
  const mine = conns.filter((x) => x.thread === 'control');
  const theirs = conns.filter((x) => x.thread === 'worker');
  t.ok(mine.length > 0 && theirs.length > 0, `control ${mine.length}, worker ${theirs.length}`);

  const w = la.agent.workerThreads[0]!;
  await w.worker!.terminate();
  // The dead worker's connections are gone with it; the control thread's all still answer.
  for (const x of theirs) await x.c.waitClosed();
  for (const x of mine) t.equal((await get(x.c)).status, 200, 'a control-thread connection still answers');
  await until('the worker is serving again', async () => (await workers(la)).serving[0]?.state === 'serving');
  const after = await workers(la);
  t.equal(after.serving[0]?.restarts, 1);
  // And it takes its share of new connections again.
  const fresh = await openTagged(la, 1);
  t.teardown(() => fresh.forEach((x) => x.c.close()));
  t.ok(
    fresh.some((x) => x.thread === 'worker'),
    'the restarted worker accepts new connections',
  );
  for (const x of mine) t.equal((await get(x.c)).status, 200);
  t.match(await la.metrics(), /weft_agent_errors_total\{kind="worker"\} 1/, 'the death is counted');
});

/** Six 500s in a row, three on each thread: neither thread saw six, the control thread, counting both, decides. */
async function failThreeEach(t: Test, policy: string): Promise<{ la: LoopbackAgent; worker: RawClient }> {
  const backend = await startBackend({ name: 'api-0', port: 8080, host: '127.0.1.1', log: () => {} });
  t.teardown(() => backend.close());
  const la = await startLoopbackAgent(loopbackMesh(pod, [{ name: 'api', vip: '10.96.0.20', app: 'api', policy }]), { workers: 2 });
  t.teardown(() => la.stop());
  la.route(SRC, DEST, 'shop/client-0');
  const conns = await openTagged(la, 1);
  t.teardown(() => conns.forEach((x) => x.c.close()));
  const control = conns.find((x) => x.thread === 'control');
  const worker = conns.find((x) => x.thread === 'worker');
  if (!control || !worker) throw new Error('400 connections all went to one thread');
  backend.state.failStatus = 500;
  for (let i = 0; i < 3; i++) t.equal((await get(control.c)).status, 500);
  for (let i = 0; i < 3; i++) t.equal((await get(worker.c)).status, 500);
  return { la, worker: worker.c };
}

interface ClusterDump {
  key: string;
  endpoints: Array<{ ejected: boolean }>;
  circuitBreaker: { state: string };
}

async function controlCluster(la: LoopbackAgent): Promise<ClusterDump | undefined> {
  return ((await la.configDump()) as { clusters: ClusterDump[] }).clusters.find((x) => x.key === 'shop/api:80');
}

t.test('a worker gives memory back once serving and once after a run of config changes, and serves on', async (t) => {
  const backend = await startBackend({ name: 'api-0', port: 8080, host: '127.0.1.1', log: () => {} });
  t.teardown(() => backend.close());
  const services = [{ name: 'api', vip: '10.96.0.20', app: 'api' }];
  const la = await startLoopbackAgent(loopbackMesh(pod, services), { workers: 2 });
  t.teardown(() => la.stop());
  la.route(SRC, DEST, 'shop/client-0');
  type Mem = { releases: number; last?: { reason: string; heapMb: [number, number]; youngMb: [number, number] }; heapMb: number };
  const mem = async (): Promise<Mem | undefined> => ((await workers(la)).serving[0]?.serving as { memory?: Mem } | undefined)?.memory;
  await until('the worker released once serving', async () => (await mem())?.releases === 1);
  const first = (await mem())!;
  t.equal(first.last?.reason, 'start');
  t.ok(first.last!.heapMb[1] <= first.last!.heapMb[0], `heap ${first.last!.heapMb.join(' -> ')} MB`);
  t.ok(first.last!.youngMb[1] <= first.last!.youngMb[0], `young generation ${first.last!.youngMb.join(' -> ')} MB`);

  // Four config changes in one run: one release, after the last (which is back to the one
  // pod that has a backend: api-1 is only added and removed).
  const pods = [...pod, { name: 'api-1', ip: '127.0.1.2', app: 'api' }];
  la.update(loopbackMesh(pods, services));
  la.update(loopbackMesh(pod, services));
  la.update(loopbackMesh(pods, services));
  la.update(loopbackMesh(pod, services));
  await until('the worker released after the changes', async () => (await mem())?.releases === 2);
  t.equal((await mem())?.last?.reason, 'config');
  // Past the debounce again: no release for changes already counted.
  await sleep(1_500);
  t.equal((await mem())?.releases, 2, 'one release for the run of four changes');

  // The worker still serves with what it kept.
  const conns = await openTagged(la, 1);
  t.teardown(() => conns.forEach((x) => x.c.close()));
  for (const x of conns.filter((c) => c.thread === 'worker')) t.equal((await get(x.c)).status, 200);
});

t.test('outlier detection counts the outcomes of both threads', async (t) => {
  const { la, worker } = await failThreeEach(t, '{ outlierDetection: { consecutive5xx: 6, interval: 1h, baseEjectionTime: 1h, maxEjectionPercent: 100 } }');
  await until('the control thread ejects the endpoint', async () => (await controlCluster(la))?.endpoints[0]?.ejected === true);
  await until('the worker follows', async () => (await workers(la)).serving[0]?.serving?.clusters[0]?.endpoints[0]?.ejected === true);
  t.same(await get(worker), { status: 503, error: 'no_healthy_upstream' }, 'the worker sends nothing to the endpoint the control thread ejected');
  t.match(await la.metrics(), /weft_upstream_ejections_total\{destination_service="shop\/api",reason="consecutive-5xx"\} 1\n/, 'one ejection, counted once');
});

t.test('the circuit breaker counts the verdicts of both threads', async (t) => {
  const { la, worker } = await failThreeEach(t, '{ circuitBreaker: { consecutiveFailures: 6, openDuration: 1h, halfOpenRequests: 1 } }');
  await until('the control thread opens the breaker', async () => (await controlCluster(la))?.circuitBreaker.state === 'open');
  await until('the worker follows', async () => (await workers(la)).serving[0]?.serving?.clusters[0]?.circuitBreaker.state === 'open');
  t.same(await get(worker), { status: 503, error: 'circuit_open' }, 'the worker refuses while the breaker the control thread opened is open');
  t.match(await la.metrics(), /weft_circuit_breaker_open\{destination_service="shop\/api"\} 1\n/, 'one breaker gauge, not one per thread');
});
