/**
 * The embedded-mode config file: YAML text -> `${VAR}` substitution -> schema -> semantic
 * checks -> defaults -> MeshConfig. Anything invalid is a ConfigError whose `problems` name
 * where (a line and column for YAML syntax, a path like `services[0].ports[0].port` after
 * that) and what is wrong.
 *
 * The `yaml` library parses (it knows line and column, and the scalar styles substitution
 * needs), except where fast-yaml.ts can give the same value in a tenth of the time: text
 * that js-yaml reads as the `yaml` library would, with `${VAR}` only where env.ts's
 * substituteValues can substitute in js-yaml's value to the same result. That matters for big
 * files (~700 ms against ~70 ms for 10,000 workloads) and for the start-up of an agent on the
 * embedded default (`${CGROUP_ROOT}`: no `yaml` library to load). Text that fast-yaml.ts
 * declines, js-yaml rejects or substituteValues gives up on goes to the `yaml` library, so
 * values and errors are the same either way.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { YAMLError } from 'yaml';
import { ConfigError } from '../errors.js';
import { substituteEnv, substituteValues } from './env.js';
import { yamlLib } from './yaml-lib.js';
import { fastLoad } from './fast-yaml.js';
import { normalizeConfig } from './normalize.js';
import type { MeshConfig } from './types.js';

export interface ParseOptions {
  /** Variables for `${VAR}` substitution (default: process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Directory that relative file paths in the config are resolved against (default: the working directory). */
  baseDir?: string;
}

/** The first line of a yaml library error, without its own position suffix. */
function yamlMessage(message: string): string {
  return (message.split('\n')[0] ?? message).replace(/ at line \d+, column \d+:?$/, '');
}

/** The first few YAML errors: after the first, the parser's errors mostly cascade from it. */
const MAX_YAML_ERRORS = 3;

function yamlProblems(errors: readonly YAMLError[], text: string): string[] {
  const out = errors.slice(0, MAX_YAML_ERRORS).map((e) => {
    const pos = e.linePos?.[0];
    let message = yamlMessage(e.message);
    // `key: { a: ${X} }`: in flow style `{` is syntax, so an unquoted ${X} breaks the line.
    const line = pos ? (text.split('\n')[pos.line - 1] ?? '') : '';
    if (/[{[][^\n]*(?<!["'])\$\{/.test(line)) message += ' (inside { } or [ ], quote a ${VAR} value: "${VAR}")';
    return pos ? `line ${pos.line}, column ${pos.col}: ${message}` : message;
  });
  if (errors.length > MAX_YAML_ERRORS) out.push(`(${errors.length - MAX_YAML_ERRORS} more YAML errors, likely caused by the first)`);
  return out;
}

/**
 * Parse and validate config text.
 * @param source names the text in error messages (usually the file path).
 * @throws ConfigError listing every problem found.
 */
export function parseConfig(text: string, source: string, opts: ParseOptions = {}): MeshConfig {
  return parseConfigText(text, source, opts);
}

/**
 * parseConfig, with a switch for tests that compare the two parsers: `fast: false` always
 * uses the `yaml` library.
 */
export function parseConfigText(text: string, source: string, opts: ParseOptions = {}, parser: { fast?: boolean } = {}): MeshConfig {
  const fast = parser.fast !== false ? fastParse(text, opts.env ?? process.env) : undefined;
  const raw = fast ? fast.value : parseYaml(text, source, opts);
  if (raw === null || raw === undefined) {
    throw new ConfigError(source, ['(top level): the config is empty; it needs at least node: { name, address }']);
  }
  return normalizeConfig(raw, source, { baseDir: opts.baseDir });
}

/**
 * YAML text -> `${VAR}` substitution -> plain value, with js-yaml, when that gives what the
 * `yaml` library would (fast-yaml.ts, env.ts's substituteValues).
 * @returns undefined when the text is the `yaml` library's to parse.
 */
export function fastParse(text: string, env: Readonly<Record<string, string | undefined>>): { value: unknown } | undefined {
  const fast = fastLoad(text);
  if (!fast || !text.includes('${')) return fast;
  return substituteValues(fast.value, env) ? fast : undefined;
}

/** YAML text -> `${VAR}` substitution -> plain value, with the `yaml` library. */
function parseYaml(text: string, source: string, opts: ParseOptions): unknown {
  const { LineCounter, parseDocument } = yamlLib();
  const lines = new LineCounter();
  // merge: YAML `<<: *anchor` keys, handy for sharing a trafficPolicy between services.
  const doc = parseDocument(text, { lineCounter: lines, merge: true, uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length) throw new ConfigError(source, yamlProblems(doc.errors, text));
  const envProblems = substituteEnv(doc, opts.env ?? process.env, lines);
  if (envProblems.length) throw new ConfigError(source, envProblems);
  try {
    // maxAliasCount: refuse alias expansion that grows exponentially (billion laughs).
    return doc.toJS({ maxAliasCount: 1000 });
  } catch (err) {
    // An alias that reaches itself (`<<: *m` inside `m`) makes the library recurse: whether
    // its alias count or V8's stack gives out first depends on how warm the JIT is, so both
    // are reported as the one refusal they are.
    if (err instanceof RangeError) throw new ConfigError(source, [ALIAS_EXHAUSTION]);
    throw new ConfigError(source, [(err as Error).message]);
  }
}

/** The `yaml` library's own words for alias expansion it refuses. */
const ALIAS_EXHAUSTION = 'Excessive alias count indicates a resource exhaustion attack';

/**
 * Read and validate a config file. Relative paths inside it are resolved against its
 * directory (unless `opts.baseDir` says otherwise).
 * @throws ConfigError when the file cannot be read or is invalid.
 */
export async function loadConfigFile(path: string, opts: ParseOptions = {}): Promise<MeshConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, [`cannot read the config file: ${(err as Error).message}`]);
  }
  return parseConfig(text, path, { ...opts, baseDir: opts.baseDir ?? dirname(resolve(path)) });
}
