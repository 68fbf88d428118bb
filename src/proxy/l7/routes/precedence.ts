/**
 * Precedence between the matches of every route attached to one service port, as the
 * Gateway API specifies it (apis/v1/httproute_types.go, HTTPRouteRule.Matches): across all
 * rules of all routes, the match with
 *   1. an Exact path, then
 *   2. the PathPrefix with the most characters, then
 *   3. a method, then
 *   4. the most header matches, then
 *   5. the most query parameter matches
 * wins; on a tie the earlier route (Gateway API: the oldest by creation timestamp, then by
 * namespace/name; the file's order in embedded mode, which Kubernetes discovery sorts by
 * those), then the earlier rule, then the earlier match. A RegularExpression path (whose
 * rank the Gateway API leaves to implementations) ranks below every PathPrefix, as in Istio.
 *
 * GRPCRoute (grpcroute_types.go): the most characters in a matching service, then in a
 * matching method, then the most header matches; ties as above.
 */
import type { RouteKind, RouteMatch } from '../../../config/types.js';

const RANK_EXACT = 3;
const RANK_PREFIX = 2;
const RANK_REGEX = 1;

/** The sort key of one match; larger wins, compared element by element. */
export function precedenceKey(m: RouteMatch, kind: RouteKind): number[] {
  if (kind === 'GRPCRoute') {
    const exact = m.grpc?.type !== 'RegularExpression';
    return [exact ? (m.grpc?.service?.length ?? 0) : 0, exact ? (m.grpc?.method?.length ?? 0) : 0, m.headers.length];
  }
  const path = m.path ?? { type: 'PathPrefix', value: '/' };
  const rank = path.type === 'Exact' ? RANK_EXACT : path.type === 'PathPrefix' ? RANK_PREFIX : RANK_REGEX;
  return [rank, path.type === 'PathPrefix' ? path.value.length : 0, m.method !== undefined ? 1 : 0, m.headers.length, m.queryParams.length];
}

/** Positional tie-breakers: route order, rule order, match order (smaller wins). */
export interface Ordered {
  key: number[];
  routeIndex: number;
  ruleIndex: number;
  matchIndex: number;
}

export function comparePrecedence(a: Ordered, b: Ordered): number {
  for (let i = 0; i < a.key.length; i++) {
    const d = (b.key[i] ?? 0) - (a.key[i] ?? 0);
    if (d !== 0) return d;
  }
  return a.routeIndex - b.routeIndex || a.ruleIndex - b.ruleIndex || a.matchIndex - b.matchIndex;
}
