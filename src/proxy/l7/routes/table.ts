/**
 * The routes of one service port, compiled: every (route, rule, match) in precedence order,
 * and what a matched rule does to one request (its plan). Pure: no sockets, no clocks; the
 * random draws come from `rand`. The state store builds one PortRoutes per service port that
 * has routes attached; the proxy's route stage asks it for a plan per request.
 */
import type { HeaderModifier, Route, RouteBackendRef, RouteFilter, RouteKind, RouteRule } from '../../../config/types.js';
import { compileMatch, MATCH_ALL, splitTarget, type CompiledMatch, type RouteRequest } from './match.js';
import { comparePrecedence, precedenceKey } from './precedence.js';
import { joinTarget, redirectLocation, replacePath } from './filters.js';
import { chance, pickWeighted } from './select.js';

export interface CompiledRule {
  readonly route: Route;
  readonly rule: RouteRule;
  readonly ruleIndex: number;
  /** `namespace/name` of the route, as access logs and the config dump name it. */
  readonly routeName: string;
  /** The rule's name, else its index. */
  readonly ruleName: string;
  readonly weights: number[];
  readonly requestHeaders: HeaderModifier | undefined;
  readonly responseHeaders: HeaderModifier | undefined;
  readonly rewrite: Extract<RouteFilter, { type: 'URLRewrite' }>['urlRewrite'] | undefined;
  readonly redirect: Extract<RouteFilter, { type: 'RequestRedirect' }>['requestRedirect'] | undefined;
  readonly mirrors: Extract<RouteFilter, { type: 'RequestMirror' }>['requestMirror'][];
}

interface Entry {
  rule: CompiledRule;
  match: CompiledMatch;
}

function compileRule(route: Route, rule: RouteRule, ruleIndex: number): CompiledRule {
  let requestHeaders: HeaderModifier | undefined;
  let responseHeaders: HeaderModifier | undefined;
  let rewrite: CompiledRule['rewrite'];
  let redirect: CompiledRule['redirect'];
  const mirrors: CompiledRule['mirrors'] = [];
  for (const f of rule.filters) {
    switch (f.type) {
      case 'RequestHeaderModifier':
        requestHeaders = f.requestHeaderModifier;
        break;
      case 'ResponseHeaderModifier':
        responseHeaders = f.responseHeaderModifier;
        break;
      case 'URLRewrite':
        rewrite = f.urlRewrite;
        break;
      case 'RequestRedirect':
        redirect = f.requestRedirect;
        break;
      case 'RequestMirror':
        mirrors.push(f.requestMirror);
        break;
    }
  }
  return {
    route,
    rule,
    ruleIndex,
    routeName: `${route.namespace}/${route.name}`,
    ruleName: rule.name ?? String(ruleIndex),
    weights: rule.backendRefs.map((b) => b.weight),
    requestHeaders,
    responseHeaders,
    rewrite,
    redirect,
    mirrors,
  };
}

/** What the route stage does with one request. */
export type RoutePlan =
  | {
      kind: 'redirect';
      rule: CompiledRule;
      status: number;
      location: string;
    }
  | {
      kind: 'forward';
      rule: CompiledRule;
      /** The chosen backendRef; `parent` for a rule without backendRefs (the service itself); undefined when every weight is 0. */
      backend: RouteBackendRef | 'parent' | undefined;
      /** The request target to send when a rewrite changed it; undefined: as received. */
      target: string | undefined;
      /** Header edits for the request, in order (the rule's RequestHeaderModifier, then a Host rewrite). */
      requestHeaders: HeaderModifier[];
      /** Mirrors that drew their percent for this request. */
      mirrors: { name: string; port?: number }[];
      /** Fault: ms to hold the request before anything else (0: none). */
      delay: number;
      /** Fault: answer this status instead of forwarding (after the delay). */
      abort: number | undefined;
    };

export interface PlanInput {
  method: string;
  /** The request target as received (origin form). */
  target: string;
  header: RouteRequest['header'];
  /** Host header value, or the address dialed. */
  host: string;
}

/** Every route attached to one service port, compiled. */
export class PortRoutes {
  readonly kind: RouteKind;
  readonly routes: readonly Route[];
  readonly rules: readonly CompiledRule[];
  private readonly entries: Entry[];

  constructor(routes: readonly Route[]) {
    this.routes = routes;
    this.kind = routes[0]?.kind ?? 'HTTPRoute';
    const ordered: (Entry & { key: number[]; routeIndex: number; ruleIndex: number; matchIndex: number })[] = [];
    const rules: CompiledRule[] = [];
    routes.forEach((route, routeIndex) => {
      route.rules.forEach((rule, ruleIndex) => {
        const compiled = compileRule(route, rule, ruleIndex);
        rules.push(compiled);
        const matches = rule.matches.length ? rule.matches : [MATCH_ALL];
        matches.forEach((m, matchIndex) => {
          ordered.push({ rule: compiled, match: compileMatch(m, route.kind), key: precedenceKey(m, route.kind), routeIndex, ruleIndex, matchIndex });
        });
      });
    });
    ordered.sort(comparePrecedence);
    this.entries = ordered.map(({ rule, match }) => ({ rule, match }));
    this.rules = rules;
  }

  /** The winning rule and match for a request, or undefined (404 no_route). */
  match(req: RouteRequest): Entry | undefined {
    const entries = this.entries;
    for (let i = 0; i < entries.length; i++) if (entries[i]!.match.test(req)) return entries[i];
    return undefined;
  }

  /** The TCPRoute's rule (a TCPRoute has one). */
  get tcpRule(): CompiledRule | undefined {
    return this.kind === 'TCPRoute' ? this.rules[0] : undefined;
  }

  /**
   * Route one request: undefined when no rule matches; else what to do, with every filter of
   * the matched rule applied (header modifiers, rewrite, redirect), the weighted backend
   * drawn, mirrors and faults rolled.
   */
  plan(input: PlanInput, rand: () => number = Math.random): RoutePlan | undefined {
    const { path, query } = splitTarget(input.target);
    const req: RouteRequest = { method: input.method, path, query, header: input.header };
    const hit = this.match(req);
    if (hit === undefined) return undefined;
    const { rule, match } = hit;
    if (rule.redirect !== undefined) {
      const location = redirectLocation({ scheme: 'http', host: input.host, path, query }, rule.redirect, match.prefix);
      return { kind: 'redirect', rule, status: rule.redirect.statusCode, location };
    }
    const fault = rule.rule.fault;
    const delay = fault?.delay !== undefined && chance(fault.delay.percent, rand) ? fault.delay.fixedDelay : 0;
    const abort = fault?.abort !== undefined && chance(fault.abort.percent, rand) ? fault.abort.httpStatus : undefined;
    const requestHeaders: HeaderModifier[] = [];
    if (rule.requestHeaders !== undefined) requestHeaders.push(rule.requestHeaders);
    let target: string | undefined;
    if (rule.rewrite !== undefined) {
      if (rule.rewrite.path !== undefined) target = joinTarget(replacePath(path, rule.rewrite.path, match.prefix), query);
      if (rule.rewrite.hostname !== undefined) requestHeaders.push({ set: [{ name: 'host', value: rule.rewrite.hostname }], add: [], remove: [] });
    }
    const refs = rule.rule.backendRefs;
    let backend: RouteBackendRef | 'parent' | undefined = 'parent';
    if (refs.length) {
      const i = refs.length === 1 ? (refs[0]!.weight > 0 ? 0 : undefined) : pickWeighted(rule.weights, rand);
      backend = i === undefined ? undefined : refs[i];
    }
    const mirrors: { name: string; port?: number }[] = [];
    for (const m of rule.mirrors) if (chance(m.percent, rand)) mirrors.push(m.backendRef);
    return { kind: 'forward', rule, backend, target, requestHeaders, mirrors, delay, abort };
  }

  /** A TCPRoute's backend for one connection (weighted), `parent`, or undefined when all weights are 0. */
  pickTcp(rand: () => number = Math.random): RouteBackendRef | 'parent' | undefined {
    const rule = this.tcpRule;
    if (rule === undefined || rule.rule.backendRefs.length === 0) return 'parent';
    const i = pickWeighted(rule.weights, rand);
    return i === undefined ? undefined : rule.rule.backendRefs[i];
  }
}

/** The routes of `cfg.routes` attached to each service port, keyed `ns/name:port`, in config order. */
export function attachRoutes(routes: readonly Route[], services: readonly { namespace: string; name: string; ports: readonly { port: number; protocol: string }[] }[]): Map<string, PortRoutes> {
  const byService = new Map(services.map((s) => [`${s.namespace}/${s.name}`, s]));
  const lists = new Map<string, Route[]>();
  for (const route of routes) {
    const wanted = route.kind === 'TCPRoute' ? 'tcp' : 'http';
    for (const ref of route.parentRefs) {
      const svc = byService.get(`${route.namespace}/${ref.name}`);
      if (!svc) continue;
      for (const sp of svc.ports) {
        if (ref.port !== undefined ? sp.port !== ref.port : sp.protocol !== wanted) continue;
        const key = `${route.namespace}/${ref.name}:${sp.port}`;
        const list = lists.get(key);
        if (!list) lists.set(key, [route]);
        else if (!list.includes(route)) list.push(route);
      }
    }
  }
  const out = new Map<string, PortRoutes>();
  for (const [key, list] of lists) {
    // One kind per port (the loader refuses a mix; Kubernetes discovery keeps the first kind).
    const kind = list[0]!.kind;
    out.set(key, new PortRoutes(list.filter((r) => r.kind === kind)));
  }
  return out;
}
