import type { RetryPolicy } from '../config/types.js';

/** Largest request body kept in memory so the request can be replayed on a retry. */
export const MAX_REPLAY_BODY_BYTES = 64 * 1024;

export interface RetryBudgetOptions {
  /** Retries allowed as a percentage of original requests in the window. */
  percent: number;
  /** Retries always allowed per window, however little traffic there is. */
  minPerSecond: number;
  now?: () => number;
  /** Sliding window length, ms (default 1000: the budget is per second). */
  windowMs?: number;
  /** Resolution of the window (default 10 buckets of 100ms). */
  buckets?: number;
}

/**
 * A retry budget (Linkerd / Envoy `retry_budget`), as a sliding window over the last second:
 * a retry is allowed while
 *
 *     retries in the window < max(minPerSecond, percent/100 * requests in the window)
 *
 * Only original requests (`recordRequest`) earn budget; retries do not, so a retry storm
 * cannot feed itself: when every request fails, retries settle at `percent`% of the offered
 * load (plus the floor) instead of multiplying it by `attempts`. The floor keeps retries
 * useful for low-traffic services, where a percentage of almost nothing is nothing.
 *
 * The window is a ring of buckets (default 10 x 100ms) with running sums: O(1) per call
 * (amortized; a long idle gap clears at most `buckets` slots) and no allocation.
 */
export class RetryBudget {
  readonly percent: number;
  readonly minPerSecond: number;
  private readonly now: () => number;
  private readonly bucketMs: number;
  private readonly n: number;
  private readonly reqs: Float64Array;
  private readonly rets: Float64Array;
  private reqSum = 0;
  private retSum = 0;
  /** Absolute index (time / bucketMs) of the newest bucket. */
  private head: number;

  constructor(opts: RetryBudgetOptions) {
    this.percent = opts.percent;
    this.minPerSecond = opts.minPerSecond;
    this.now = opts.now ?? Date.now;
    this.n = Math.max(1, Math.floor(opts.buckets ?? 10));
    this.bucketMs = Math.max(1, (opts.windowMs ?? 1000) / this.n);
    this.reqs = new Float64Array(this.n);
    this.rets = new Float64Array(this.n);
    this.head = Math.floor(this.now() / this.bucketMs);
  }

  /** Count one original request (not a retry). */
  recordRequest(): void {
    const slot = this.advance();
    this.reqs[slot]++;
    this.reqSum++;
  }

  /** Would a retry be allowed now? (Does not spend anything.) */
  canRetry(): boolean {
    this.advance();
    return this.retSum < Math.max(this.minPerSecond, (this.percent / 100) * this.reqSum);
  }

  /** Spend one retry if the budget allows it; false means do not retry. */
  tryRetry(): boolean {
    const slot = this.advance();
    if (this.retSum >= Math.max(this.minPerSecond, (this.percent / 100) * this.reqSum)) return false;
    this.rets[slot]++;
    this.retSum++;
    return true;
  }

  /** Original requests in the current window. */
  get requests(): number {
    this.advance();
    return this.reqSum;
  }

  /** Retries spent in the current window. */
  get retries(): number {
    this.advance();
    return this.retSum;
  }

  /** Move the window to now, clearing buckets that fell out of it; returns the current slot. */
  private advance(): number {
    const b = Math.floor(this.now() / this.bucketMs);
    // A clock that steps back keeps counting into the newest bucket.
    if (b > this.head) {
      const steps = Math.min(b - this.head, this.n);
      for (let i = 1; i <= steps; i++) {
        const slot = (this.head + i) % this.n;
        this.reqSum -= this.reqs[slot];
        this.retSum -= this.rets[slot];
        this.reqs[slot] = 0;
        this.rets[slot] = 0;
      }
      this.head = b;
    }
    return this.head % this.n;
  }
}

/**
 * Delay before retry number `attempt` (1 for the first retry): "full jitter" exponential
 * backoff, uniform in [0, min(max, base * 2^(attempt-1))). Integer ms.
 */
export function backoffDelay(attempt: number, base: number, max: number, random: () => number = Math.random): number {
  if (!(base > 0)) return 0;
  const exp = Math.min(Math.max(0, attempt - 1), 30);
  const ceiling = Math.min(max > 0 ? max : Infinity, base * 2 ** exp);
  return Math.floor(random() * ceiling);
}

export type RetryOutcomeKind = 'connect-failure' | 'reset' | 'timeout' | 'status';

/** How one try ended: no connection, the connection died, the per-try timeout fired, or a response status. */
export interface RetryOutcome {
  kind: RetryOutcomeKind;
  status?: number;
  /** A gRPC answer's `grpc-status` (of a trailers-only answer: the only kind decided before anything reached the client). */
  grpcStatus?: number;
}

/** `retryOn` names of gRPC statuses (Envoy's `retry_on` gRPC conditions). */
const GRPC_RETRY_ON: Readonly<Record<number, string>> = { 1: 'cancelled', 4: 'deadline-exceeded', 8: 'resource-exhausted', 13: 'internal', 14: 'unavailable' };

/**
 * Does `retryOn` cover this outcome? Envoy's semantics:
 *
 * | outcome         | connect-failure | reset | 5xx | gateway-error | retriable-status-codes |
 * |-----------------|-----------------|-------|-----|---------------|------------------------|
 * | connect failure | yes             | yes   | yes | yes           | -                      |
 * | reset           | -               | yes   | yes | yes           | -                      |
 * | per-try timeout | -               | yes   | yes | yes           | -                      |
 * | 500, 501, 505.. | -               | -     | yes | -             | if listed              |
 * | 502, 503, 504   | -               | -     | yes | yes           | if listed              |
 * | other status    | -               | -     | -   | -             | if listed              |
 *
 * `reset` covers any try that got no response (Envoy: "disconnect/reset/read timeout"),
 * and a connect failure is one of those. 5xx and gateway-error count a try without a
 * response as the 503/504 the proxy would answer for it. A gRPC status other than OK is
 * retried when `retryOn` names it: `unavailable` (14), `resource-exhausted` (8), `cancelled`
 * (1), `deadline-exceeded` (4), `internal` (13).
 */
export function isRetriable(policy: Pick<RetryPolicy, 'retryOn' | 'retriableStatusCodes'>, outcome: RetryOutcome): boolean {
  const on = policy.retryOn;
  if (outcome.kind !== 'status') {
    if (on.includes('reset') || on.includes('5xx') || on.includes('gateway-error')) return true;
    return outcome.kind === 'connect-failure' && on.includes('connect-failure');
  }
  const g = outcome.grpcStatus;
  // A gRPC failure is retried only by its own name: its HTTP status is 200.
  if (g !== undefined && g !== 0) {
    const name = GRPC_RETRY_ON[g];
    return name !== undefined && (on as readonly string[]).includes(name);
  }
  const s = outcome.status ?? 0;
  if (on.includes('5xx') && s >= 500 && s <= 599) return true;
  if (on.includes('gateway-error') && (s === 502 || s === 503 || s === 504)) return true;
  return on.includes('retriable-status-codes') && (policy.retriableStatusCodes ?? []).includes(s);
}

/**
 * Can this request be sent again? Yes when it has no body, or its whole body was buffered
 * and is at most {@link MAX_REPLAY_BODY_BYTES}. A body still streaming from the client
 * (`hasUnbufferedBody`) cannot be replayed, nor can CONNECT (a tunnel, not a request).
 * Idempotency is not judged here: as in Envoy, configuring retries on a route is the
 * operator's statement that its requests may be retried.
 */
export function canReplay(method: string, bodyBytes: number, hasUnbufferedBody: boolean): boolean {
  if (method.toUpperCase() === 'CONNECT') return false;
  if (hasUnbufferedBody) return false;
  return bodyBytes <= MAX_REPLAY_BODY_BYTES;
}
