/**
 * Syntax checks shared by the schema and the semantic checks: addresses, names, and the
 * Istio string-match patterns of authorization policies.
 */

const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = new RegExp(`^${OCTET}(\\.${OCTET}){3}$`);

/** Dotted-quad IPv4, no leading zeros (`010.0.0.1` is ambiguous: octal to some tools). */
export function isIPv4(value: string): boolean {
  return IPV4.test(value);
}

/** An IPv4 address or an IPv4 CIDR block (`10.0.0.0/8`); a bare address means /32. */
export function isIPv4Block(value: string): boolean {
  const slash = value.indexOf('/');
  if (slash < 0) return isIPv4(value);
  const prefix = value.slice(slash + 1);
  return isIPv4(value.slice(0, slash)) && /^(3[0-2]|[12]?\d)$/.test(prefix);
}

/** RFC 1123 label: namespaces, services (like Kubernetes). */
export const DNS_LABEL = '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$';
/** RFC 1123 subdomain: nodes, workloads (pods), policies, trust domains. */
export const DNS_SUBDOMAIN = '^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';
/** An HTTP header name (RFC 9110 token). */
export const HEADER_NAME = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/** An HTTP method as authorization policies match it: an upper-case token. */
export const HTTP_METHOD = '^[A-Z][A-Z0-9_-]*$';

/**
 * Istio string match: exact (`/items`), prefix (`/items/*`), suffix (`*.example.com`) or
 * presence (`*`). A `*` anywhere else is not a wildcard in Istio, and a user who wrote one
 * almost certainly meant a glob that will never match: refuse it.
 *
 * @returns undefined when valid, else what is wrong.
 */
export function matchPatternProblem(pattern: string): string | undefined {
  if (pattern === '') return 'must not be empty';
  const stars = pattern.split('*').length - 1;
  if (stars === 0) return undefined;
  if (pattern === '*') return undefined;
  if (stars === 1 && (pattern.startsWith('*') || pattern.endsWith('*'))) return undefined;
  return `"${pattern}": a * is allowed only alone, at the start (suffix match) or at the end (prefix match)`;
}
