/**
 * Istio's `security.istio.io` AuthorizationPolicy shape, accepted in weft's
 * AuthorizationPolicy (the CRD and a file's `policies[]` entry alike) and converted to
 * weft's own, so that a policy pasted from Istio works after changing only its apiVersion:
 *
 *   selector: { matchLabels: {...} }           -> selector: {...}
 *   rules[].from[]: { source: {...} }          -> rules[].from[]: {...}
 *   rules[].to[]:   { operation: {...} }       -> rules[].to[]:   {...}
 *   rules[].when[]: { key, values, notValues } -> folded into every from (source.*,
 *       request.auth.principal) or to (destination.port) entry of its rule; a rule with no
 *       from (to) gets one. Other keys (request.headers[...], JWT claims) are refused by
 *       name: weft has no equivalent, and dropping a condition would widen an ALLOW.
 *   action: AUDIT or CUSTOM                    -> refused by name (weft has ALLOW and DENY).
 *
 * A spec already in weft's shape passes through unchanged (no key of the two shapes clashes).
 */

export interface IstioConversion {
  spec: Record<string, unknown>;
  /** Why the spec cannot be converted (empty: converted, or nothing to convert). */
  problems: string[];
  /** True when something was converted (for a log line). */
  converted: boolean;
}

const SOURCE_KEYS: Record<string, [string, string]> = {
  'source.principal': ['principals', 'notPrincipals'],
  'source.namespace': ['namespaces', 'notNamespaces'],
  'source.ip': ['ipBlocks', 'notIpBlocks'],
  'remote.ip': ['ipBlocks', 'notIpBlocks'],
  'request.auth.principal': ['requestPrincipals', 'notRequestPrincipals'],
};
const OPERATION_KEYS: Record<string, [string, string]> = {
  'destination.port': ['ports', 'notPorts'],
};

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Converts Istio's shape (where present) to weft's; see the module comment. */
export function fromIstioShape(input: Record<string, unknown>): IstioConversion {
  const problems: string[] = [];
  let converted = false;
  const spec: Record<string, unknown> = { ...input };

  const action = spec['action'];
  if (action === 'AUDIT' || action === 'CUSTOM') {
    problems.push(`spec.action: ${action} is an Istio action weft does not have (ALLOW or DENY)`);
  }
  if (spec['provider'] !== undefined) problems.push('spec.provider: CUSTOM authorization providers are not supported');
  if (spec['targetRef'] !== undefined || spec['targetRefs'] !== undefined) problems.push('spec.targetRef(s): select workloads with spec.selector.matchLabels');

  const sel = spec['selector'];
  if (isObj(sel) && isObj(sel['matchLabels'])) {
    const extra = Object.keys(sel).filter((k) => k !== 'matchLabels');
    if (extra.length) problems.push(`spec.selector: matchLabels cannot be mixed with labels (${extra.join(', ')})`);
    spec['selector'] = { ...sel['matchLabels'] };
    converted = true;
  }

  if (Array.isArray(spec['rules'])) {
    spec['rules'] = spec['rules'].map((rule: unknown, i: number) => {
      if (!isObj(rule)) return rule;
      const out: Record<string, unknown> = { ...rule };
      const unwrap = (list: unknown, inner: 'source' | 'operation', at: string): unknown => {
        if (!Array.isArray(list)) return list;
        return list.map((e: unknown, j: number) => {
          if (!isObj(e) || e[inner] === undefined) return e;
          const others = Object.keys(e).filter((k) => k !== inner);
          if (others.length) problems.push(`${at}[${j}]: ${inner} cannot be mixed with ${others.join(', ')}`);
          if (!isObj(e[inner])) {
            problems.push(`${at}[${j}].${inner}: must be an object`);
            return e;
          }
          converted = true;
          return { ...e[inner] };
        });
      };
      out['from'] = unwrap(out['from'], 'source', `spec.rules[${i}].from`);
      out['to'] = unwrap(out['to'], 'operation', `spec.rules[${i}].to`);
      if (out['from'] === undefined) delete out['from'];
      if (out['to'] === undefined) delete out['to'];
      const when = out['when'];
      if (when !== undefined) {
        delete out['when'];
        converted = true;
        if (!Array.isArray(when)) problems.push(`spec.rules[${i}].when: must be a list`);
        else when.forEach((c: unknown, j: number) => foldCondition(out, c, `spec.rules[${i}].when[${j}]`, problems));
      }
      return out;
    });
  }
  return { spec, problems, converted };
}

/** ANDs one `when` condition into every from (or to) entry of the rule. */
function foldCondition(rule: Record<string, unknown>, c: unknown, at: string, problems: string[]): void {
  if (!isObj(c) || typeof c['key'] !== 'string') {
    problems.push(`${at}: must be { key, values | notValues }`);
    return;
  }
  const key = c['key'];
  const target = SOURCE_KEYS[key] ? 'from' : OPERATION_KEYS[key] ? 'to' : undefined;
  if (!target) {
    problems.push(
      `${at}.key: ${key} has no weft equivalent (weft matches source.principal, source.namespace, source.ip, remote.ip, request.auth.principal, destination.port); the policy is refused rather than widened`,
    );
    return;
  }
  const [pos, neg] = (target === 'from' ? SOURCE_KEYS : OPERATION_KEYS)[key]!;
  const list = (v: unknown) => (Array.isArray(v) ? v.map((x) => (target === 'to' && /^\d+$/.test(String(x)) ? Number(x) : x)) : undefined);
  const add: Record<string, unknown> = {};
  if (c['values'] !== undefined) add[pos] = list(c['values']);
  if (c['notValues'] !== undefined) add[neg] = list(c['notValues']);
  if (!Object.keys(add).length) {
    problems.push(`${at}: values or notValues is required`);
    return;
  }
  const entries = Array.isArray(rule[target]) ? (rule[target] as unknown[]) : [{}];
  rule[target] = entries.map((e, k) => {
    if (!isObj(e)) return e;
    const merged: Record<string, unknown> = { ...e };
    for (const [f, v] of Object.entries(add)) {
      if (merged[f] !== undefined) problems.push(`${at}: ${key} is also set as ${target}[${k}].${f}; write one of them`);
      merged[f] = v;
    }
    return merged;
  });
}
