/**
 * `${VAR}` substitution in the config's string values, so one file can serve several
 * machines (the sandbox fills in `${CGROUP_ROOT}`).
 *
 * - `${NAME}`: the variable's value; an unset variable is an error, never an empty string
 *   (a cgroup path of `/api-0` would be wrong in a way that is hard to see).
 * - `${NAME:-default}`: the default when NAME is unset or empty.
 * - `$${`: a literal `${`.
 * Substitution happens in values (not keys) after YAML parsing, so a value cannot change the
 * document's structure. An unquoted value that becomes a number or a boolean after
 * substitution (`port: ${PORT}`) is typed as YAML would type it; a quoted one stays a string.
 */
import type { Document, LineCounter, Scalar } from 'yaml';
import { yamlLib } from './yaml-lib.js';
import { resolvesAsNumberOrBoolean } from './fast-yaml.js';
import { formatPath, type PathSegment } from './path.js';

const REFERENCE = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{/g;

/**
 * Substitute `${VAR}` in one string.
 * @returns the result, or the problems (without a path) when a variable is unset or a
 *   reference is malformed.
 */
export function substituteString(text: string, env: Readonly<Record<string, string | undefined>>): { value: string; problems: string[]; changed: boolean } {
  const problems: string[] = [];
  let changed = false;
  const value = text.replace(REFERENCE, (match, name: string | undefined, fallback: string | undefined) => {
    changed = true;
    if (match === '$${') return '${';
    if (name === undefined) {
      problems.push(`malformed reference in "${text}": write \${NAME} or \${NAME:-default} (or $\${ for a literal \${)`);
      return match;
    }
    const v = env[name];
    if (v !== undefined && (v !== '' || fallback === undefined)) return v;
    if (fallback !== undefined) return fallback;
    problems.push(`environment variable ${name} is not set (write \${${name}:-default} to give a default)`);
    return match;
  });
  return { value, problems, changed };
}

function pathOf(ancestors: readonly unknown[], node: unknown): PathSegment[] {
  const { isMap, isPair, isScalar, isSeq } = yamlLib();
  const out: PathSegment[] = [];
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i];
    const next = i + 1 < ancestors.length ? ancestors[i + 1] : node;
    if (isPair(a)) out.push(isScalar(a.key) ? String(a.key.value) : '?');
    else if (isSeq(a)) out.push(a.items.indexOf(next as never));
    else if (isMap(a)) continue;
  }
  return out;
}

/** Substitute in every scalar value of `doc`, in place. @returns problems, `path (line N): ...`. */
export function substituteEnv(doc: Document, env: Readonly<Record<string, string | undefined>>, lines?: LineCounter): string[] {
  const { parse, visit } = yamlLib();
  const problems: string[] = [];
  visit(doc, {
    Scalar(key, node: Scalar, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('${')) return;
      const result = substituteString(node.value, env);
      if (result.problems.length) {
        const where = formatPath(pathOf(ancestors, node));
        const line = lines && node.range ? ` (line ${lines.linePos(node.range[0]).line})` : '';
        for (const p of result.problems) problems.push(`${where}${line}: ${p}`);
        return;
      }
      if (!result.changed) return;
      let value: unknown = result.value;
      if (node.type === 'PLAIN') {
        try {
          const typed: unknown = parse(result.value);
          if (typeof typed === 'number' || typeof typed === 'boolean') value = typed;
        } catch {
          // Not a YAML scalar on its own: it stays a string.
        }
      }
      node.value = value;
    },
  });
  return problems;
}

/**
 * What a substituted value may hold for substituteValues to take it: no white space, no `#`,
 * quote, bracket, `$` or other character that could make YAML read it as more than one plain
 * scalar. Paths, addresses, host:port and names pass; anything else takes the `yaml` library.
 */
const SAFE_RESULT = /^[A-Za-z0-9_./:@%+=,-]*$/;

/**
 * `${VAR}` substitution in a plain value (js-yaml's, load.ts's fast path), in every string
 * value and in no key, as substituteEnv does on the `yaml` library's document, where that
 * gives the same: it cannot give a problem's line, and cannot see whether a value was quoted,
 * which substituteEnv needs only for a result YAML would read as a number or a boolean. So it
 * gives up on a problem (an unset variable, a malformed reference) and on a result that is
 * not SAFE_RESULT or that YAML would type (`port: ${PORT}`): the `yaml` library's path then
 * gives the value or the problems as before. The embedded default's `cgroup:
 * "${CGROUP_ROOT}/api-0"` is read here, without loading the `yaml` library (its ~70 modules
 * are ~60 ms of an agent's start-up, docs/benchmarks/startup.md).
 * @returns whether every value was substituted; false leaves `root` partly substituted (parse again).
 */
export function substituteValues(root: unknown, env: Readonly<Record<string, string | undefined>>): boolean {
  const substitute = (v: unknown): { ok: boolean; value: unknown } => {
    if (typeof v === 'string') {
      if (!v.includes('${')) return { ok: true, value: v };
      const r = substituteString(v, env);
      if (r.problems.length || !SAFE_RESULT.test(r.value) || resolvesAsNumberOrBoolean(r.value)) return { ok: false, value: v };
      return { ok: true, value: r.value };
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const r = substitute(v[i]);
        if (!r.ok) return r;
        v[i] = r.value;
      }
    } else if (v !== null && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        const r = substitute(o[k]);
        if (!r.ok) return r;
        o[k] = r.value;
      }
    }
    return { ok: true, value: v };
  };
  return substitute(root).ok;
}
