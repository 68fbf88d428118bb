import type { Endpoint } from '../cluster/endpoint.js';

/** The `tried` set when it is worth consulting, else undefined (keeps the hot path to one check). */
export function triedSet(tried: ReadonlySet<Endpoint> | undefined): ReadonlySet<Endpoint> | undefined {
  return tried !== undefined && tried.size > 0 ? tried : undefined;
}

/**
 * The index of the first of `eps[0..n)`, from `start` on and wrapping, that is not in
 * `tried`; `start` itself when every one has been tried (a retry then reuses an endpoint
 * rather than failing).
 */
export function firstUntried(eps: readonly Endpoint[], n: number, start: number, tried: ReadonlySet<Endpoint>): number {
  let i = start;
  for (let k = 0; k < n; k++) {
    if (!tried.has(eps[i]!)) return i;
    i = i + 1 === n ? 0 : i + 1;
  }
  return start;
}
