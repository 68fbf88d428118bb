/**
 * Routes on the bookinfo shape (namespace bookinfo in default.yaml): productpage calls the
 * `reviews` service, whose HTTPRoute sends user jason to v2, injects a 503 for user tester,
 * and splits everyone else 80/20 over v1 and v3 with a copy of each request mirrored to
 * reviews-shadow. Every call goes through real eBPF capture and the agent.
 */
import type { MeshSandbox } from './mesh-sandbox.js';
import { bad, dim, fmt, ok, spread, step, waitFor } from './ui.js';

/** Requests a pod's backend answered (its /_ctl/state), read from the node like the kubelet would. */
async function served(sb: MeshSandbox, workload: string): Promise<number> {
  const pod = sb.pod(workload);
  // Over the pod's own loopback, as ui.ts's ctl(): strict ingress drops the node address but for probes.
  const r = await pod.exec('curl', ['-s', '--max-time', '3', 'http://127.0.0.1:8080/_ctl/state']);
  try {
    return (JSON.parse(r.stdout) as { state: { requests: number } }).state.requests;
  } catch {
    return -1;
  }
}

export async function demoRoutes(sb: MeshSandbox): Promise<void> {
  const cfg = sb.config;
  const reviews = cfg.services.find((s) => s.namespace === 'bookinfo' && s.name === 'reviews');
  const route = cfg.routes?.find((r) => r.namespace === 'bookinfo' && r.name === 'reviews');
  if (!reviews || !route) {
    bad('no bookinfo reviews service or route in the config: skipping the routes demo');
    return;
  }
  const productpage = sb.pod('productpage-0');
  const url = `http://${reviews.vip}:${reviews.ports[0]!.port}/reviews/0`;

  step(`9b. Routes: HTTPRoute bookinfo/reviews on ${reviews.vip}:${reviews.ports[0]!.port} (${route.rules.length} rules, Gateway API precedence)`);
  const jason = await productpage.curl(url, ['-H', 'end-user: jason']);
  (jason.headers['x-pod'] === 'reviews-v2-0' ? ok : bad)(`end-user: jason -> answered by ${jason.headers['x-pod'] ?? `HTTP ${jason.status}`} (rule "jason": reviews-v2)`);

  const before = await served(sb, 'reviews-shadow-0');
  const n = 100;
  const split = await spread(productpage, url, n);
  const v3 = split.counts['reviews-v3-0'] ?? 0;
  // Binomial(100, 0.2): 20 +- 4; anything from 5 to 40 is a working split.
  (v3 >= 5 && v3 <= 40 && (split.counts['reviews-v1-0'] ?? 0) + v3 === n ? ok : bad)(`canary, ${n} requests from productpage-0: ${fmt(split.counts)} (weights 80/20)`);

  const tester = await productpage.curl(url, ['-H', 'end-user: tester']);
  (tester.status === 503 && tester.headers['x-weft-error'] === undefined ? ok : bad)(
    `end-user: tester -> HTTP ${tester.status}, injected by the agent (fault abort 503, 100%): the caller's error handling can be tested without breaking reviews`,
  );

  if (await waitFor('the mirror copies', async () => (await served(sb, 'reviews-shadow-0')) >= before + n)) {
    ok(`reviews-shadow-0 received ${(await served(sb, 'reviews-shadow-0')) - before} mirrored copies of the ${n} canary requests; their answers were dropped`);
  }
  const nomatch = await productpage.curl(`http://${reviews.vip}:${reviews.ports[0]!.port}/other`);
  (nomatch.status === 404 && nomatch.headers['x-weft-error'] === 'no_route' ? ok : bad)(
    `GET /other (no rule matches) -> HTTP ${nomatch.status} x-weft-error: ${nomatch.headers['x-weft-error'] ?? '-'}`,
  );

  const access = sb.agentLines().filter((l) => l.msg === 'access' && l.route === 'bookinfo/reviews');
  const rules = new Map<string, number>();
  for (const l of access) rules.set(l.rule, (rules.get(l.rule) ?? 0) + 1);
  (access.length > 0 ? ok : bad)(`access log lines name the route and rule: ${[...rules].map(([k, v]) => `${k}=${v}`).join(' ') || '(none)'}`);
  const dump = await sb.configDump();
  const port = dump.routes?.ports?.find((p: any) => p.port === 'bookinfo/reviews:9080');
  const canary = port?.routes?.[0]?.rules?.find((r: any) => r.rule === 'canary');
  if (canary) console.log(dim(`    config_dump: canary backends ${canary.backends.map((b: any) => `${b.service} weight ${b.weight}: ${b.state}`).join(', ')}`));
}
