import type { Backend } from '../../src/sandbox/backend.js';

/**
 * Promise.all for backends being started, all or none: when one cannot start (its address
 * taken, say by another run on the same machine), the ones that did are closed before the
 * error is thrown. With Promise.all they stayed listening with no teardown registered yet,
 * which kept the test process alive until tap's timeout (4 minutes) and held the addresses.
 */
export async function allStarted(starting: Promise<Backend>[]): Promise<Backend[]> {
  const settled = await Promise.allSettled(starting);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed === undefined) return settled.map((s) => (s as PromiseFulfilledResult<Backend>).value);
  await Promise.all(settled.map((s) => (s.status === 'fulfilled' ? s.value.close() : undefined)));
  throw failed.reason;
}
