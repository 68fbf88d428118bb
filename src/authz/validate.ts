/**
 * Validation of authorization policies: every problem, each as `path: what is wrong`, with
 * paths like `policies[2].rules[0].to[0].paths[1]`. An unknown field is a problem too: an
 * ignored (misspelt) condition would widen a rule, which on an ALLOW policy lets traffic in.
 */

import { parseCidr } from './cidr.js';
import { normalizePath, validatePattern } from './match.js';

const SOURCE_PATTERN_FIELDS = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces', 'requestPrincipals', 'notRequestPrincipals'] as const;
const SOURCE_CIDR_FIELDS = ['ipBlocks', 'notIpBlocks'] as const;
const SOURCE_FIELDS = new Set<string>([...SOURCE_PATTERN_FIELDS, ...SOURCE_CIDR_FIELDS]);

const OPERATION_PATTERN_FIELDS = ['methods', 'notMethods', 'hosts', 'notHosts'] as const;
const OPERATION_PATH_FIELDS = ['paths', 'notPaths'] as const;
const OPERATION_PORT_FIELDS = ['ports', 'notPorts'] as const;
const OPERATION_FIELDS = new Set<string>([...OPERATION_PATTERN_FIELDS, ...OPERATION_PATH_FIELDS, ...OPERATION_PORT_FIELDS]);

const POLICY_FIELDS = new Set(['name', 'namespace', 'selector', 'action', 'rules']);
const RULE_FIELDS = new Set(['from', 'to']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function unknownFields(obj: Record<string, unknown>, known: Set<string>, path: string, out: string[]): void {
  for (const k of Object.keys(obj)) {
    if (!known.has(k) && obj[k] !== undefined) out.push(`${path}: unknown field '${k}'`);
  }
}

/** A list field: absent is fine; otherwise each element is checked by `each`. */
function checkList(obj: Record<string, unknown>, field: string, path: string, out: string[], each: (v: unknown, p: string) => string | undefined): void {
  const list = obj[field];
  if (list === undefined) return;
  const p = `${path}.${field}`;
  if (!Array.isArray(list)) {
    out.push(`${p}: must be a list`);
    return;
  }
  list.forEach((v, i) => {
    const problem = each(v, `${p}[${i}]`);
    if (problem !== undefined) out.push(`${p}[${i}]: ${problem}`);
  });
}

function checkPrincipal(v: unknown): string | undefined {
  const problem = validatePattern(v);
  if (problem !== undefined) return problem;
  if ((v as string).startsWith('spiffe://')) return "a principal is a SPIFFE ID without 'spiffe://'";
  return undefined;
}

function checkCidr(v: unknown): string | undefined {
  if (typeof v !== 'string') return 'must be a string';
  return parseCidr(v) === undefined ? `'${v}' is not an IP address or CIDR block` : undefined;
}

function checkPort(v: unknown): string | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535 ? undefined : `${JSON.stringify(v)} is not a port (1-65535)`;
}

function checkPath(v: unknown): string | undefined {
  const problem = validatePattern(v);
  if (problem !== undefined) return problem;
  const p = v as string;
  if (p === '*' || p.startsWith('*')) return undefined;
  if (!p.startsWith('/')) return "must start with '/' (or '*' for a suffix match)";
  if (p.includes('?') || p.includes('#')) return 'paths are matched without the query; remove it';
  // Requests are matched after normalization: a pattern that normalizes to something else
  // could never match, which on a DENY policy is a silent hole.
  const literal = p.endsWith('*') ? p.slice(0, -1) : p;
  const normalized = normalizePath(literal);
  if (normalized !== literal) {
    return normalized === undefined
      ? 'requests with such a path are refused before matching; this pattern can never match'
      : `requests are matched after path normalization; write '${normalized}${p.endsWith('*') ? '*' : ''}'`;
  }
  return undefined;
}

/**
 * Checks authorization policies. Returns every problem found (empty when valid), each
 * prefixed by its path under `base` (default `policies`).
 */
export function validatePolicies(policies: unknown, base = 'policies'): string[] {
  const out: string[] = [];
  if (policies === undefined) return out;
  if (!Array.isArray(policies)) return [`${base}: must be a list`];
  const seen = new Map<string, number>();
  policies.forEach((policy: unknown, pi) => {
    const path = `${base}[${pi}]`;
    if (!isObject(policy)) {
      out.push(`${path}: must be a mapping`);
      return;
    }
    unknownFields(policy, POLICY_FIELDS, path, out);
    for (const f of ['name', 'namespace'] as const) {
      if (typeof policy[f] !== 'string' || (policy[f] as string).length === 0) out.push(`${path}.${f}: required`);
    }
    if (typeof policy.name === 'string' && typeof policy.namespace === 'string') {
      const id = `${policy.namespace}/${policy.name}`;
      const earlier = seen.get(id);
      if (earlier !== undefined) out.push(`${path}: duplicate policy ${id} (also ${base}[${earlier}])`);
      else seen.set(id, pi);
    }
    if (policy.selector !== undefined) {
      if (!isObject(policy.selector)) out.push(`${path}.selector: must be a mapping of label to value`);
      else {
        for (const [k, v] of Object.entries(policy.selector)) {
          if (typeof v !== 'string') out.push(`${path}.selector.${k}: must be a string`);
        }
      }
    }
    if (policy.action !== 'ALLOW' && policy.action !== 'DENY') {
      out.push(`${path}.action: unknown action ${JSON.stringify(policy.action)} (want ALLOW or DENY)`);
    }
    if (policy.rules === undefined) return;
    if (!Array.isArray(policy.rules)) {
      out.push(`${path}.rules: must be a list`);
      return;
    }
    policy.rules.forEach((rule: unknown, ri) => {
      const rpath = `${path}.rules[${ri}]`;
      if (!isObject(rule)) {
        out.push(`${rpath}: must be a mapping`);
        return;
      }
      unknownFields(rule, RULE_FIELDS, rpath, out);
      for (const side of ['from', 'to'] as const) {
        const list = rule[side];
        if (list === undefined) continue;
        if (!Array.isArray(list)) {
          out.push(`${rpath}.${side}: must be a list`);
          continue;
        }
        list.forEach((entry: unknown, ei) => {
          const epath = `${rpath}.${side}[${ei}]`;
          if (!isObject(entry)) {
            out.push(`${epath}: must be a mapping`);
            return;
          }
          if (side === 'from') {
            unknownFields(entry, SOURCE_FIELDS, epath, out);
            for (const f of SOURCE_PATTERN_FIELDS) {
              checkList(entry, f, epath, out, f === 'principals' || f === 'notPrincipals' ? checkPrincipal : validatePattern);
            }
            for (const f of SOURCE_CIDR_FIELDS) checkList(entry, f, epath, out, checkCidr);
          } else {
            unknownFields(entry, OPERATION_FIELDS, epath, out);
            for (const f of OPERATION_PATTERN_FIELDS) checkList(entry, f, epath, out, validatePattern);
            for (const f of OPERATION_PATH_FIELDS) checkList(entry, f, epath, out, checkPath);
            for (const f of OPERATION_PORT_FIELDS) checkList(entry, f, epath, out, checkPort);
          }
        });
      }
    });
  });
  return out;
}
