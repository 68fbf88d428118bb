/**
 * A renderer for the part of Helm's template language (Go text/template + Sprig) that
 * weft's chart uses, so that the chart is rendered and checked without a helm binary (none
 * can be installed from the registries this project builds from: no Debian package, no npm
 * package that ships one). test/unit/helm-render.test.ts pins its behaviour against the
 * output Helm gives for the same templates, including charts that use helpers.
 *
 * Supported: `{{ .Values.x }}`, `$`, `.` (rebound by `with`), `{{- -}}` trimming, comments,
 * `if`/`else if`/`else`/`end`, `with`/`else`/`end`, `define`/`include`/`template`, parenthesized
 * pipelines, and the functions in FUNCS. Anything else is an error naming what is missing.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse, parseAllDocuments, stringify } from 'yaml';

export type Obj = Record<string, any>;

export interface HelmContext {
  Values: Obj;
  Release: { Name: string; Namespace: string; Service: string; IsInstall?: boolean; IsUpgrade?: boolean };
  Chart: { Name: string; Version: string; AppVersion: string };
  Files?: { Get: (name: string) => string };
}

type Node =
  | { t: 'text'; s: string }
  | { t: 'out'; expr: string }
  | { t: 'if'; branches: { cond: string | null; body: Node[] }[] }
  | { t: 'with'; expr: string; body: Node[]; otherwise: Node[] }
  | { t: 'include'; name: string; arg: string };

interface Scope {
  root: HelmContext;
  dot: unknown;
  defines: Map<string, Node[]>;
}

// --- parsing -----------------------------------------------------------------------------

interface Tok {
  text?: string;
  action?: string;
}

function tokenize(src: string): Tok[] {
  const re = /\{\{(-?)\s*(.*?)\s*(-?)\}\}/gs;
  const toks: Tok[] = [];
  let pos = 0;
  let trimNext = false;
  for (let m = re.exec(src); m; m = re.exec(src)) {
    let text = src.slice(pos, m.index);
    if (trimNext) text = text.replace(/^\s+/, '');
    if (m[1]) text = text.replace(/\s+$/, '');
    if (text) toks.push({ text });
    pos = m.index + m[0].length;
    trimNext = m[3] === '-';
    const action = m[2]!;
    if (!/^\/\*[\s\S]*\*\/$/.test(action)) toks.push({ action });
  }
  let tail = src.slice(pos);
  if (trimNext) tail = tail.replace(/^\s+/, '');
  if (tail) toks.push({ text: tail });
  return toks;
}

/** Parses tokens into nodes until one of `stops`; `define`s go into `defines`. */
function parseNodes(toks: Tok[], i: { n: number }, defines: Map<string, Node[]>, stops: RegExp | null): { nodes: Node[]; stop?: string } {
  const nodes: Node[] = [];
  while (i.n < toks.length) {
    const tok = toks[i.n++]!;
    if (tok.text !== undefined) {
      nodes.push({ t: 'text', s: tok.text });
      continue;
    }
    const a = tok.action!;
    if (stops?.test(a)) return { nodes, stop: a };
    let m: RegExpMatchArray | null;
    if ((m = a.match(/^if\s+(.+)$/s))) {
      const branches: { cond: string | null; body: Node[] }[] = [];
      let cond: string | null = m[1]!;
      for (;;) {
        const r = parseNodes(toks, i, defines, /^(else(\s+if\s+.+)?|end)$/s);
        branches.push({ cond, body: r.nodes });
        if (r.stop === undefined) throw new Error('if without end');
        if (r.stop === 'end') break;
        const elif = r.stop.match(/^else\s+if\s+(.+)$/s);
        cond = elif ? elif[1]! : null;
      }
      nodes.push({ t: 'if', branches });
    } else if ((m = a.match(/^with\s+(.+)$/s))) {
      const r = parseNodes(toks, i, defines, /^(else|end)$/);
      if (r.stop === undefined) throw new Error('with without end');
      let otherwise: Node[] = [];
      if (r.stop === 'else') {
        const e = parseNodes(toks, i, defines, /^end$/);
        if (e.stop === undefined) throw new Error('with without end');
        otherwise = e.nodes;
      }
      nodes.push({ t: 'with', expr: m[1]!, body: r.nodes, otherwise });
    } else if ((m = a.match(/^define\s+"([^"]+)"$/))) {
      const r = parseNodes(toks, i, defines, /^end$/);
      if (r.stop === undefined) throw new Error(`define "${m[1]}" without end`);
      defines.set(m[1]!, r.nodes);
    } else if ((m = a.match(/^template\s+"([^"]+)"\s*(\S*)$/))) {
      nodes.push({ t: 'include', name: m[1]!, arg: m[2] || '.' });
    } else if (/^(range|block|break|continue|else|end)\b/.test(a) || /^\$\w+\s*:?=/.test(a)) {
      throw new Error(`unsupported template action {{ ${a} }}`);
    } else {
      nodes.push({ t: 'out', expr: a });
    }
  }
  if (stops) return { nodes };
  return { nodes };
}

// --- evaluation --------------------------------------------------------------------------

export function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v as object).length > 0;
  return true;
}

function lookupPath(base: unknown, keys: string[]): unknown {
  let cur = base;
  for (const k of keys) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Obj)[k];
  }
  return cur;
}

function toYaml(v: unknown): string {
  if (v === undefined || v === null) return 'null';
  return stringify(v, { lineWidth: 0 }).replace(/\n$/, '');
}

function goString(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') throw new Error(`a map or list printed without toYaml: ${JSON.stringify(v)}`);
  return String(v);
}

function printf(fmt: string, ...args: unknown[]): string {
  let k = 0;
  return fmt.replace(/%([sdvq%])/g, (_m, c: string) => {
    if (c === '%') return '%';
    const a = args[k++];
    if (c === 'q') return JSON.stringify(goString(a));
    return goString(a);
  });
}

const FUNCS: Record<string, (...args: any[]) => unknown> = {
  quote: (...a) => a.map((x) => JSON.stringify(goString(x))).join(' '),
  squote: (x) => `'${goString(x)}'`,
  default: (d, v) => (truthy(v) ? v : d),
  required: (msg, v) => {
    if (v === undefined || v === null || v === '') throw new Error(`required: ${msg}`);
    return v;
  },
  toYaml,
  toJson: (v) => JSON.stringify(v ?? null),
  nindent: (n, s) => `\n${FUNCS.indent!(n, s)}`,
  indent: (n: number, s) =>
    goString(s)
      .split('\n')
      .map((l) => ' '.repeat(n) + l)
      .join('\n'),
  printf: (fmt, ...a) => printf(goString(fmt), ...a),
  trunc: (n: number, s) => goString(s).slice(0, n),
  trimSuffix: (suf, s) => (goString(s).endsWith(suf) ? goString(s).slice(0, -String(suf).length) : goString(s)),
  replace: (from, to, s) => goString(s).split(goString(from)).join(goString(to)),
  lower: (s) => goString(s).toLowerCase(),
  not: (v) => !truthy(v),
  and: (...a) => a.reduce((acc, x) => (truthy(acc) ? x : acc)),
  or: (...a) => a.find((x) => truthy(x)) ?? a.at(-1),
  eq: (a, b) => a === b,
  ne: (a, b) => a !== b,
  empty: (v) => !truthy(v),
  hasKey: (m, k) => m !== null && typeof m === 'object' && k in m,
  toString: (v: unknown) => goString(v),
  int: (v) => Math.trunc(Number(v)),
  dict: (...a) => Object.fromEntries(Array.from({ length: a.length / 2 }, (_, i) => [goString(a[2 * i]), a[2 * i + 1]])),
};

/** Splits an expression into words, keeping strings and parenthesized groups whole. */
function words(expr: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < expr.length) {
    const c = expr[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '"') {
      let j = i + 1;
      while (j < expr.length && expr[j] !== '"') j += expr[j] === '\\' ? 2 : 1;
      out.push(expr.slice(i, j + 1));
      i = j + 1;
    } else if (c === '(') {
      let depth = 0;
      let j = i;
      for (; j < expr.length; j++) {
        if (expr[j] === '"') {
          j++;
          while (j < expr.length && expr[j] !== '"') j += expr[j] === '\\' ? 2 : 1;
        } else if (expr[j] === '(') depth++;
        else if (expr[j] === ')' && --depth === 0) break;
      }
      if (depth !== 0) throw new Error(`unbalanced parentheses in ${expr}`);
      out.push(expr.slice(i, j + 1));
      i = j + 1;
    } else if (c === '|') {
      out.push('|');
      i++;
    } else {
      let j = i;
      while (j < expr.length && !/[\s|()]/.test(expr[j]!)) j++;
      out.push(expr.slice(i, j));
      i = j;
    }
  }
  return out;
}

function evalArg(scope: Scope, w: string): unknown {
  if (w.startsWith('"')) return JSON.parse(w);
  if (w.startsWith('(')) return evalPipeline(scope, w.slice(1, -1));
  if (/^-?\d+(\.\d+)?$/.test(w)) return Number(w);
  if (w === 'true' || w === 'false') return w === 'true';
  if (w === 'nil') return null;
  if (w === '.') return scope.dot;
  if (w === '$') return scope.root;
  if (w.startsWith('$.')) return lookupPath(scope.root, w.slice(2).split('.'));
  if (w.startsWith('.')) return lookupPath(scope.dot, w.slice(1).split('.'));
  throw new Error(`unsupported argument ${w}`);
}

function callFunc(scope: Scope, name: string, args: unknown[], raw: string[]): unknown {
  if (name === 'include') {
    const body = scope.defines.get(String(args[0]));
    if (!body) throw new Error(`include: no template "${args[0]}" defined`);
    return renderNodes(body, { ...scope, dot: args[1] });
  }
  const f = FUNCS[name];
  if (!f) throw new Error(`unsupported template function ${name} (${raw.join(' ')})`);
  return f(...args);
}

export function evalPipeline(scope: Scope, expr: string): unknown {
  const ws = words(expr);
  const stages: string[][] = [[]];
  for (const w of ws) {
    if (w === '|') stages.push([]);
    else stages.at(-1)!.push(w);
  }
  let value: unknown;
  stages.forEach((stage, idx) => {
    const [head, ...rest] = stage;
    if (head === undefined) throw new Error(`empty pipeline stage in {{ ${expr} }}`);
    const isFunc = /^[a-zA-Z]\w*$/.test(head) && !['true', 'false', 'nil'].includes(head);
    if (!isFunc) {
      const v = evalArg(scope, head);
      if (typeof v === 'function') {
        // A method such as .Files.Get
        const args = rest.map((w) => evalArg(scope, w));
        if (idx > 0) args.push(value);
        value = (v as (...a: unknown[]) => unknown)(...args);
        return;
      }
      if (rest.length || idx > 0) throw new Error(`cannot call ${head} in {{ ${expr} }}`);
      value = v;
      return;
    }
    const args = rest.map((w) => evalArg(scope, w));
    if (idx > 0) args.push(value);
    value = callFunc(scope, head, args, stage);
  });
  return value;
}

function renderNodes(nodes: Node[], scope: Scope): string {
  let out = '';
  for (const n of nodes) {
    switch (n.t) {
      case 'text':
        out += n.s;
        break;
      case 'out':
        out += goString(evalPipeline(scope, n.expr));
        break;
      case 'include':
        out += callFunc(scope, 'include', [n.name, evalArg(scope, n.arg)], [n.name]);
        break;
      case 'if':
        for (const b of n.branches) {
          if (b.cond === null || truthy(evalPipeline(scope, b.cond))) {
            out += renderNodes(b.body, scope);
            break;
          }
        }
        break;
      case 'with': {
        const v = evalPipeline(scope, n.expr);
        out += truthy(v) ? renderNodes(n.body, { ...scope, dot: v }) : renderNodes(n.otherwise, scope);
        break;
      }
    }
  }
  return out;
}

/** Renders one template source; `helpers` are other sources whose `define`s it may include. */
export function renderTemplate(src: string, ctx: HelmContext, helpers: string[] = []): string {
  const defines = new Map<string, Node[]>();
  for (const h of helpers) parseNodes(tokenize(h), { n: 0 }, defines, null);
  const { nodes } = parseNodes(tokenize(src), { n: 0 }, defines, null);
  return renderNodes(nodes, { root: ctx, dot: ctx, defines });
}

export function deepMerge(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object' && !Array.isArray(out[k]) ? deepMerge(out[k], v) : v;
  }
  return out;
}

export function loadDocs(text: string, file: string): Obj[] {
  return parseAllDocuments(text).flatMap((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
    const v = d.toJS();
    return v === null || v === undefined ? [] : [v as Obj];
  });
}

/** Renders a chart directory (templates/*.yaml, with templates/_*.tpl as helpers) to objects; NOTES.txt rendered apart. */
export function renderChart(chartDir: string, overrides: Obj = {}, namespace = 'weft-system', release = 'weft'): { objects: Obj[]; notes: string } {
  const chart = parse(readFileSync(path.join(chartDir, 'Chart.yaml'), 'utf8')) as Obj;
  const values = deepMerge(parse(readFileSync(path.join(chartDir, 'values.yaml'), 'utf8')) as Obj, overrides);
  const ctx: HelmContext = {
    Values: values,
    Release: { Name: release, Namespace: namespace, Service: 'Helm', IsInstall: true, IsUpgrade: false },
    Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion },
    Files: { Get: (name: string) => readFileSync(path.join(chartDir, name), 'utf8') },
  };
  const tdir = path.join(chartDir, 'templates');
  const files = readdirSync(tdir).sort();
  const helpers = files.filter((f) => f.startsWith('_')).map((f) => readFileSync(path.join(tdir, f), 'utf8'));
  const objects: Obj[] = [];
  for (const f of files.filter((f) => f.endsWith('.yaml') && !f.startsWith('_'))) {
    objects.push(...loadDocs(renderTemplate(readFileSync(path.join(tdir, f), 'utf8'), ctx, helpers), `templates/${f}`));
  }
  const notesFile = path.join(tdir, 'NOTES.txt');
  const notes = files.includes('NOTES.txt') ? renderTemplate(readFileSync(notesFile, 'utf8'), ctx, helpers) : '';
  return { objects, notes };
}
