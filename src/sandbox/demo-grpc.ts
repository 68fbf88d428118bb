/**
 * gRPC in the sandbox: a client in web-0 makes its calls on ONE HTTP/2 connection to the
 * api-grpc VIP, and the agent balances, retries, times and authorizes every call on its own.
 */
import { dirname, join } from 'node:path';
import { backendScriptPath } from './backend.js';
import type { CallLine } from './grpc-client.js';
import type { MeshSandbox } from './mesh-sandbox.js';
import { bad, ctl, fmt, ok, step } from './ui.js';

async function calls(sb: MeshSandbox, target: string, n: number, extra: string[] = []): Promise<CallLine[]> {
  const script = join(dirname(await backendScriptPath()), 'grpc-client.js');
  const r = await sb.pod('web-0').exec(process.execPath, [script, '--target', target, '--calls', String(n), ...extra], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`grpc-client failed: ${r.stderr.trim()}`);
  return r.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as CallLine);
}

function tally(lines: CallLine[]): { pods: Record<string, number>; codes: Record<string, number> } {
  const pods: Record<string, number> = {};
  const codes: Record<string, number> = {};
  for (const l of lines) {
    if (l.code === 0 && l.pod) pods[l.pod] = (pods[l.pod] ?? 0) + 1;
    codes[l.code] = (codes[l.code] ?? 0) + 1;
  }
  return { pods, codes };
}

export async function demoGrpc(sb: MeshSandbox): Promise<void> {
  const svc = sb.config.services.find((s) => s.name === 'api-grpc');
  if (!svc) return;
  const target = `${svc.vip}:${svc.ports[0]!.port}`;

  step(`gRPC: 30 calls from web-0 on one HTTP/2 connection to ${target}`);
  const t1 = tally(await calls(sb, target, 30));
  (Object.keys(t1.pods).length > 1 ? ok : bad)(`one channel, calls answered by ${fmt(t1.pods)} (grpc-status ${fmt(t1.codes)})`);

  step('gRPC: api-0 fails every call with UNAVAILABLE; retryOn: [unavailable] sends them elsewhere');
  const api0 = sb.backends.has('api-0') ? 'api-0' : undefined;
  if (api0) {
    await ctl(sb, api0, '/_ctl/grpc-fail?code=14');
    try {
      const t2 = tally(await calls(sb, target, 20));
      (!t2.pods[api0] && (t2.codes['0'] ?? 0) === 20 ? ok : bad)(`20 calls, all OK, answered by ${fmt(t2.pods)}`);
    } finally {
      await ctl(sb, api0, '/_ctl/ok');
    }
  }

  step('gRPC: a 100ms deadline (grpc-timeout) on a call the backend answers in 1s');
  const [late] = await calls(sb, target, 1, ['--timeout', '100m', '--metadata', 'x-delay-ms=1000']);
  (late?.code === 4 ? ok : bad)(`grpc-status ${late?.code} (DEADLINE_EXCEEDED), x-weft-error: ${late?.weftError}`);

  step('gRPC: the method /weft.demo.Echo/Forbidden is denied by the policy no-forbidden-grpc');
  const [denied] = await calls(sb, target, 1, ['--method', 'Forbidden']);
  (denied?.code === 7 ? ok : bad)(`grpc-status ${denied?.code} (PERMISSION_DENIED), x-weft-error: ${denied?.weftError}; other methods on the channel still pass`);
}
