/**
 * SPIFFE IDs for Kubernetes-style workload identities:
 * `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`. A *principal* (the form used
 * in authorization policies, as in Istio) is the same ID without the `spiffe://` prefix.
 */
import { WeftError } from '../errors.js';

export const SPIFFE_SCHEME = 'spiffe://';

export interface SpiffeIdParts {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

// SPIFFE ID spec: trust domain chars are lowercase letters, digits, '.', '-', '_'.
const TRUST_DOMAIN_RE = /^[a-z0-9._-]+$/;
// Path segment chars: letters, digits, '.', '-', '_'; '.' and '..' are not allowed.
const SEGMENT_RE = /^[A-Za-z0-9._-]+$/;
const MAX_ID_LENGTH = 2048;

function invalid(what: string): never {
  throw new WeftError('WEFT_ERR_IDENTITY', what);
}

/** Throws unless `td` is a valid SPIFFE trust domain name. */
export function assertTrustDomain(td: string): void {
  if (typeof td !== 'string' || td.length === 0 || td.length > 255 || !TRUST_DOMAIN_RE.test(td)) {
    invalid(`invalid trust domain ${JSON.stringify(td)}: use lowercase letters, digits, '.', '-' and '_'`);
  }
}

function assertSegment(kind: string, value: string): void {
  if (typeof value !== 'string' || !SEGMENT_RE.test(value) || value === '.' || value === '..') {
    invalid(`invalid ${kind} ${JSON.stringify(value)} for a SPIFFE ID: use letters, digits, '.', '-' and '_'`);
  }
}

/** `spiffe://td/ns/NS/sa/SA`; throws a WeftError (WEFT_ERR_IDENTITY) on an invalid part. */
export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  assertTrustDomain(trustDomain);
  assertSegment('namespace', namespace);
  assertSegment('service account', serviceAccount);
  return `${SPIFFE_SCHEME}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

/**
 * Splits a workload SPIFFE ID (`spiffe://td/ns/NS/sa/SA`) into its parts; throws a
 * WeftError (WEFT_ERR_IDENTITY) for anything else.
 */
export function parseSpiffeId(id: string): SpiffeIdParts {
  if (typeof id !== 'string' || id.length > MAX_ID_LENGTH || !id.startsWith(SPIFFE_SCHEME)) {
    invalid(`not a SPIFFE ID: ${JSON.stringify(id)}`);
  }
  const rest = id.slice(SPIFFE_SCHEME.length);
  const parts = rest.split('/');
  if (parts.length !== 5 || parts[1] !== 'ns' || parts[3] !== 'sa') {
    invalid(`not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>): ${JSON.stringify(id)}`);
  }
  const [trustDomain, , namespace, , serviceAccount] = parts as [string, string, string, string, string];
  // Rebuilding validates each part with the same rules as spiffeId().
  spiffeId(trustDomain, namespace, serviceAccount);
  return { trustDomain, namespace, serviceAccount };
}

/** True when `id` is a valid workload SPIFFE ID. */
export function isSpiffeId(id: string): boolean {
  try {
    parseSpiffeId(id);
    return true;
  } catch {
    return false;
  }
}

/** The principal of a SPIFFE ID: the ID without `spiffe://` (`cluster.local/ns/shop/sa/api`). */
export function principalOf(id: string): string {
  return id.startsWith(SPIFFE_SCHEME) ? id.slice(SPIFFE_SCHEME.length) : id;
}

/** The SPIFFE ID of a principal, or of an ID that already has the scheme. */
export function idOfPrincipal(principal: string): string {
  return principal.startsWith(SPIFFE_SCHEME) ? principal : `${SPIFFE_SCHEME}${principal}`;
}

/** The map key for one identity on a node: `namespace/serviceAccount`. */
export function identityKey(namespace: string, serviceAccount: string): string {
  return `${namespace}/${serviceAccount}`;
}
