/**
 * The retry stage: whether a failed try is tried again, and when. The rules, in one place:
 * - `retryOn` covers the outcome (resilience/retry.ts `isRetriable`, incl. gRPC statuses);
 * - the request can be sent again (`canReplay`: no body, or the whole body is held, at most
 *   MAX_REPLAY_BODY_BYTES; never CONNECT);
 * - attempts remain, the cluster's retry budget allows it, and the backoff ends before the
 *   request's deadline.
 */
import type { Cluster } from '../../cluster/cluster.js';
import type { RetryPolicy } from '../../config/types.js';
import { backoffDelay, canReplay, isRetriable, MAX_REPLAY_BODY_BYTES, type RetryOutcome } from '../../resilience/retry.js';

export { canReplay, MAX_REPLAY_BODY_BYTES };

/** The retry state of one request (fields of its call). */
export interface RetryState {
  readonly retries: RetryPolicy | undefined;
  /** The try under way, 0 for the first. */
  readonly attemptNo: number;
  readonly maxAttempts: number;
  /** Whole-request deadline (performance.now() ms), Infinity for none. */
  readonly deadline: number;
  readonly cluster: Cluster | undefined;
}

/** Tries allowed in all for a request with this policy that can (or cannot) be replayed. */
export function maxAttemptsFor(rp: RetryPolicy | undefined, replayable: boolean): number {
  return 1 + (rp !== undefined && replayable ? rp.attempts : 0);
}

/** Does the policy cover this outcome, with a try left and time before the deadline? (Spends nothing.) */
export function retryWanted(s: RetryState, outcome: RetryOutcome, now: number): boolean {
  const rp = s.retries;
  return rp !== undefined && s.attemptNo < s.maxAttempts - 1 && isRetriable(rp, outcome) && now < s.deadline;
}

/**
 * An answer that would be retried (a retriable status): drop it only when the retry will
 * really happen, so the budget is charged here; otherwise the client gets the answer.
 */
export function retryAnswer(s: RetryState, status: number, grpcStatus: number | undefined, now: number): boolean {
  const rp = s.retries;
  if (rp === undefined || s.attemptNo >= s.maxAttempts - 1) return false;
  if (grpcStatus === undefined && status < 300) return false;
  if (!isRetriable(rp, { kind: 'status', status, grpcStatus })) return false;
  if (now + rp.backoff.base >= s.deadline) return false;
  return s.cluster!.retryBudget?.tryRetry() ?? false;
}

/**
 * Before retry number `attemptNo` (already counted): the delay to wait (ms), or -1 to give up
 * (no tries left, no budget, or the backoff would pass the deadline). `paid`: the budget was
 * charged for this retry already (retryAnswer).
 */
export function retryDelay(s: RetryState, paid: boolean, now: number): number {
  const rp = s.retries!;
  if (s.attemptNo >= s.maxAttempts) return -1;
  if (!paid && !s.cluster!.retryBudget?.tryRetry()) return -1;
  const delay = backoffDelay(s.attemptNo, rp.backoff.base, rp.backoff.max);
  return now + delay >= s.deadline ? -1 : delay;
}
