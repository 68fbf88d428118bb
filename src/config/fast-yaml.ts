/**
 * A fast parse of config YAML with js-yaml, for load.ts. The `yaml` library stays the
 * reference: its parser costs ~700 ms on a 1.3 MB config (10,000 workloads), js-yaml's a
 * tenth of that, but only the `yaml` library gives error positions and the scalar styles
 * that `${VAR}` substitution needs. So load.ts asks this module first only for text without
 * `${`, and this module answers only where js-yaml gives exactly what the `yaml` library
 * would; for any other text, and anything js-yaml rejects, it answers "ask the `yaml`
 * library", which then gives the value or the error with its line and column. (The two
 * were compared on thousands of generated and mutated documents to find where they differ.)
 *
 * Where the two libraries differ, and what this module does about it:
 * - Scalars: js-yaml's core schema reads `0b11` and `-0x1f` as numbers and `-.5` as a
 *   string, the `yaml` library the other way round. So the schema here resolves plain
 *   scalars with the `yaml` library's YAML 1.2 core rules (its regular expressions, copied),
 *   plus `<<` merge keys. Like the `yaml` library it has no timestamps, binary, sets or
 *   omaps: `version: 2024-01-01` stays a string, and so do `yes` and `no`.
 * - Aliases: the `yaml` library refuses a document once an anchor's alias uses, times the
 *   aliases nested in it, pass 1000 (`maxAliasCount`, against billion-laughs expansion),
 *   and it counts again each time a merge (`<<: *a`) re-reads the anchored map; it also
 *   refuses a map merged into itself (`<<: *a` inside `a`), which js-yaml quietly skips.
 *   js-yaml has no such limit: it gives shared objects, which the schema check and
 *   normalize would walk once per use. None of this can be checked from js-yaml's value, so
 *   text with an anchor or an alias is left to the `yaml` library. Without aliases the value
 *   is a tree no bigger than the text: there is nothing to expand.
 * - Keys, directives, white space and more: see SLOW_ONLY and the checks after it.
 */
import { FAILSAFE_SCHEMA, load, Type } from 'js-yaml';

// The `yaml` library's YAML 1.2 core schema (yaml/dist/schema/core and common/null.js), in
// its order of resolution: the same regular expressions, the same conversions.
const NULL = /^(?:~|[Nn]ull|NULL)?$/;
const BOOL = /^(?:[Tt]rue|TRUE|[Ff]alse|FALSE)$/;
const INT_OCT = /^0o[0-7]+$/;
const INT_DEC = /^[-+]?[0-9]+$/;
const INT_HEX = /^0x[0-9a-fA-F]+$/;
const FLOAT_NAN = /^(?:[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$/;
const FLOAT_EXP = /^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$/;
const FLOAT = /^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$/;

const nullType = new Type('tag:yaml.org,2002:null', {
  kind: 'scalar',
  resolve: (data: unknown) => data === null || (typeof data === 'string' && NULL.test(data)),
  construct: () => null,
});

const boolType = new Type('tag:yaml.org,2002:bool', {
  kind: 'scalar',
  resolve: (data: unknown) => typeof data === 'string' && BOOL.test(data),
  construct: (data: string) => data[0] === 't' || data[0] === 'T',
});

const intType = new Type('tag:yaml.org,2002:int', {
  kind: 'scalar',
  resolve: (data: unknown) => typeof data === 'string' && (INT_OCT.test(data) || INT_DEC.test(data) || INT_HEX.test(data)),
  construct: (data: string) => (INT_OCT.test(data) ? parseInt(data.substring(2), 8) : INT_HEX.test(data) ? parseInt(data.substring(2), 16) : parseInt(data, 10)),
});

const floatType = new Type('tag:yaml.org,2002:float', {
  kind: 'scalar',
  resolve: (data: unknown) => typeof data === 'string' && (FLOAT_NAN.test(data) || FLOAT_EXP.test(data) || FLOAT.test(data)),
  construct: (data: string) => {
    if (!FLOAT_NAN.test(data)) return parseFloat(data);
    if (data.slice(-3).toLowerCase() === 'nan') return NaN;
    return data[0] === '-' ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY;
  },
});

/**
 * Whether the `yaml` library's core schema reads `text`, a plain scalar of characters that
 * are never YAML syntax on their own (env.ts's SAFE_RESULT), as a number or a boolean.
 */
export function resolvesAsNumberOrBoolean(text: string): boolean {
  return BOOL.test(text) || INT_OCT.test(text) || INT_DEC.test(text) || INT_HEX.test(text) || FLOAT_NAN.test(text) || FLOAT_EXP.test(text) || FLOAT.test(text);
}

// js-yaml merges the mappings under a key whose type has this tag (its loader checks the tag).
const mergeType = new Type('tag:yaml.org,2002:merge', { kind: 'scalar', resolve: (data: unknown) => data === '<<' });

// Implicit, so that a plain `<<` is a merge key (`schema.extend([type])` would make these
// explicit-only: `!!merge <<`). Strings, sequences and mappings come from FAILSAFE_SCHEMA.
const SCHEMA = FAILSAFE_SCHEMA.extend({ implicit: [nullType, boolType, intType, floatType, mergeType] });

/**
 * Text that js-yaml reads differently from the `yaml` library, or accepts where the `yaml`
 * library fails. Each pattern also matches some text that is fine (in a string, a comment,
 * a block scalar): that text merely takes the slow path.
 */
const SLOW_ONLY: readonly RegExp[] = [
  // An anchor, an alias or a tag (see the module comment on aliases; the libraries also
  // resolve and refuse tags such as `!!str 1`, `!!null : x`, `!<!> 1` differently).
  /(?:^|[\s[{,:])(?:!|[&*][^\s,[\]{}])/m,
  // A directive: `%YAML 1.1` switches the `yaml` library to YAML 1.1 (`yes` is true).
  /^%/m,
  // `---` or `...` at the start of a line and followed by more: a document marker for
  // js-yaml, text for the `yaml` library (`---#c`).
  /^(?:---|\.\.\.)\S/m,
  // A null or empty key (`null: x`, `~: x`, `: x`), which is "" for the `yaml` library and
  // "null" for js-yaml; or an explicit key (`? x`), which can be anything.
  /(?:^|[\s[{,])(?:\?(?:[ \t]|$)|(?:~|null|Null|NULL)[ \t]*:|:)/m,
  // The same in a flow mapping without `:` (`{a: 1, ~}`, `{null}`), and an empty entry.
  /\{\s*(?:(?:~|null|Null|NULL)\s*[,}]|,)|,\s*(?:(?:~|null|Null|NULL)\s*)?[,}]/,
  // A collection as a key (`[a, b]: x`: "[ a, b ]" against "a,b"), also in a flow mapping
  // without `:` (`{[a, b]}`; this also sends flow lists of collections, `[{a: 1}, {b: 2}]`,
  // to the slow path).
  /[\]}][ \t]*:|\{\s*[[{]|,\s*[[{]/,
  // A comment right after a quoted string or a flow indicator (`"a"#c`, `[#c`): an error for
  // the `yaml` library only.
  /["'[\]{},]#/,
  // A tab: the libraries differ on where white space may be a tab (in an empty line of a
  // quoted string, say); YAML never needs one, and indentation cannot be one.
  /\t/,
  // A carriage return that does not end a line (\r\n does), a byte order mark: js-yaml takes
  // the first for a line break and drops the second, the `yaml` library does neither.
  /\r(?!\n)|\uFEFF/,
  // A block scalar with an explicit indentation (`|2`, `>1-`): blank lines are kept differently.
  /[|>][-+]?[1-9]/,
  // A block scalar whose leading empty lines hold spaces: the `yaml` library fails when they
  // are more indented than the text, js-yaml does not.
  /[|>][-+]?[ \t]*(?:#[^\r\n]*)?\r?\n(?:[ \t]*\r?\n)*[ \t]+\r?\n/,
  // An escaped line break then an empty line in a double-quoted string: folded differently.
  /\\\r?\n[ \t]*\r?\n/,
];

/** A line of 1024 characters or more: the `yaml` library refuses an implicit key that long. */
function hasLongLine(text: string): boolean {
  for (let start = 0; ; ) {
    const end = text.indexOf('\n', start);
    if ((end === -1 ? text.length : end) - start >= 1024) return true;
    if (end === -1) return false;
    start = end + 1;
  }
}

/**
 * A line of only list entry dashes (`-`, `- -`) and white space, perhaps with a comment
 * after. (Also `--`, a string: that merely takes the slow path.) One character class, so
 * that no line makes the regular expression backtrack much.
 */
const DASH_AT_LINE_END = /^([ \t-]*-)[ \t]*(?:#[^\r\n]*)?\r?$/gm;

/**
 * Whether a block list has an empty entry: a `-` with nothing after it on its line, and the
 * next line that has anything but a comment not indented past the `-`. The last such entry
 * of a nested list (`- - #c`, then `- x` one level up) gets js-yaml to put the next entries
 * of the outer list in the inner one.
 */
function hasEmptyListEntry(text: string): boolean {
  for (const m of text.matchAll(DASH_AT_LINE_END)) {
    const dashColumn = m[1]!.length - 1;
    let at = m.index + m[0].length;
    for (;;) {
      if (at >= text.length) return true; // the entry is the last thing in the text
      const end = text.indexOf('\n', at + 1);
      const line = text.slice(at + 1, end === -1 ? text.length : end);
      const content = line.trimStart();
      if (content !== '' && content !== '\r' && !content.startsWith('#')) {
        if (line.length - content.length <= dashColumn) return true;
        break;
      }
      if (end === -1) return true;
      at = end;
    }
  }
  return false;
}

/**
 * js-yaml only warns about a continuation line that is not indented enough (`a: [1,\n2]`,
 * a quoted string going on at column 1), where the `yaml` library fails; so a warning is an
 * error here.
 */
function rejectWarning(warning: Error): never {
  throw warning;
}

/** Whether js-yaml is to try `text` at all: not if it has anything js-yaml may read differently. */
export function fastPathApplies(text: string): boolean {
  return !SLOW_ONLY.some((re) => re.test(text)) && !hasLongLine(text) && !hasEmptyListEntry(text);
}

/**
 * Parse `text` with js-yaml when that gives what the `yaml` library would.
 * @returns `{ value }`, or undefined when the text is for the `yaml` library to parse:
 *   it may read differently there, or js-yaml rejected it (a syntax error, a duplicate key:
 *   the `yaml` library says where).
 */
export function fastLoad(text: string): { value: unknown } | undefined {
  if (!fastPathApplies(text)) return undefined;
  let value: unknown;
  try {
    value = load(text, { schema: SCHEMA, onWarning: rejectWarning });
  } catch {
    return undefined;
  }
  // A config is a mapping. Anything else is an error, and the `yaml` library's message for
  // it is the one to give (js-yaml reads some invalid top-level scalars as strings).
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  return { value };
}
