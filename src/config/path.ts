/**
 * Human-readable paths into the config, as problems are reported to users:
 * `services[0].trafficPolicy.loadBalancer.type`, `namespaces[1].labels["weft.io/mesh"]`.
 */

export type PathSegment = string | number;

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$-]*$/;

/** Join segments into a dotted path; numbers become `[i]`, odd keys become `["key"]`. */
export function formatPath(segments: readonly PathSegment[]): string {
  let out = '';
  for (const seg of segments) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (IDENT.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out || '(top level)';
}

/** Split an ajv `instancePath` (a JSON pointer) into segments; array indices become numbers. */
export function pointerSegments(pointer: string): PathSegment[] {
  if (!pointer) return [];
  return pointer
    .slice(1)
    .split('/')
    .map((raw) => raw.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((seg) => (/^(0|[1-9]\d*)$/.test(seg) ? Number(seg) : seg));
}

/** `path: message`, the shape of every entry of ConfigError.problems. */
export function problem(segments: readonly PathSegment[], message: string): string {
  return `${formatPath(segments)}: ${message}`;
}
