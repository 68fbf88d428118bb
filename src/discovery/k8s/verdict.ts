/**
 * What the mesh makes of the cluster's objects: translate (translate.ts) and validate
 * (normalizeConfig), dropping the objects that fail until the rest is valid. The agent builds
 * its config with this (kubernetes.ts), and the cluster's one status writer (cr-status.ts)
 * reports each custom resource's verdict from the very same call, so that what `kubectl
 * describe` says and what the agents enforce cannot disagree.
 */
import type { MeshConfig } from '../../config/types.js';
import { ConfigError } from '../../errors.js';
import { blame, objectKey, translate, type ClusterState, type Origin, type RawMeshState, type TranslateContext } from './translate.js';

/** Rebuild attempts per snapshot, each excluding the objects the previous one blamed. */
export const MAX_ATTEMPTS = 8;

export interface Rejection {
  origin: Origin;
  problems: string[];
}

export interface Verdict {
  /** The valid config; undefined when the snapshot cannot be made valid (see snapshotProblems). */
  cfg: MeshConfig | undefined;
  /** Objects refused, by objectKey: left out, or (AuthorizationPolicy) failing closed. */
  rejections: Map<string, Rejection>;
  /** Non-fatal oddities (translate's warnings) of the last attempt. */
  warnings: string[];
  /** Why the snapshot as a whole was refused (cfg undefined). */
  snapshotProblems: string[];
}

/** What fails closed tells its users, after its problems (the agent's log and the object's status alike). */
export const FAIL_CLOSED_NOTE = 'until it is fixed, the policy allows nothing to the workloads it selects (fail closed)';

/** The problems the mesh reports for a refused object: an AuthorizationPolicy fails closed and says so. */
export function refusalProblems(r: Rejection): string[] {
  return r.origin.kind === 'AuthorizationPolicy' ? [...r.problems, FAIL_CLOSED_NOTE] : r.problems;
}

/**
 * Translate and validate `state`, dropping objects that fail until the rest is valid.
 * `normalize` is the caller's validation of a raw config (normalizeConfig with its static part).
 */
export function meshVerdict(state: ClusterState, base: Omit<TranslateContext, 'exclude' | 'failClosed'>, normalize: (raw: RawMeshState) => MeshConfig): Verdict {
  const exclude = new Set<string>();
  const failClosed = new Set<string>();
  const rejections = new Map<string, Rejection>();
  const ctx: TranslateContext = { ...base, exclude, failClosed };
  let warnings: string[] = [];

  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const t = translate(state, ctx);
    warnings = t.warnings;
    for (const r of t.rejected) rejections.set(objectKey(r.origin), r);
    try {
      return { cfg: normalize(t.raw), rejections, warnings, snapshotProblems: [] };
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      let { blamed, unattributed } = blame(err.problems, t.origins);
      if (unattributed.length) {
        blamed = isolate(state, base, exclude, failClosed, normalize);
        if (!blamed.length) return { cfg: undefined, rejections, warnings, snapshotProblems: err.problems };
      }
      for (const b of blamed) {
        const key = objectKey(b.origin);
        // An AuthorizationPolicy first fails closed; only if even that is refused is it dropped.
        if (b.origin.kind === 'AuthorizationPolicy' && !failClosed.has(key)) failClosed.add(key);
        else exclude.add(key);
        if (!rejections.has(key)) rejections.set(key, b);
      }
    }
  }
  return { cfg: undefined, rejections, warnings, snapshotProblems: [`still invalid after excluding ${exclude.size} objects: ${[...exclude].join(', ')}`] };
}

/**
 * When problems cannot be attributed by path: validate each weft custom resource on its own
 * against the built-in objects, and return the ones that fail.
 */
function isolate(
  state: ClusterState,
  base: Omit<TranslateContext, 'exclude' | 'failClosed'>,
  exclude: ReadonlySet<string>,
  failClosed: ReadonlySet<string>,
  normalize: (raw: RawMeshState) => MeshConfig,
): Rejection[] {
  const crs: Origin[] = [];
  for (const [kind, list] of [
    ['TrafficPolicy', state.trafficPolicies],
    ['AuthorizationPolicy', state.authorizationPolicies],
    ['RequestAuthentication', state.requestAuthentications],
  ] as const) {
    for (const o of list) {
      const origin = { kind, namespace: o.metadata?.namespace, name: o.metadata?.name ?? '', uid: o.metadata?.uid, resourceVersion: o.metadata?.resourceVersion };
      if (!exclude.has(objectKey(origin))) crs.push(origin);
    }
  }
  const allCrKeys = crs.map(objectKey);
  const attempt = (only: string | undefined) => {
    const ex = new Set([...exclude, ...allCrKeys.filter((k) => k !== only)]);
    const t = translate(state, { ...base, exclude: ex, failClosed });
    try {
      normalize(t.raw);
      return undefined;
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
  };
  // Without any custom resource it must validate, or the fault is not theirs.
  if (attempt(undefined)) return [];
  const out: Rejection[] = [];
  for (const origin of crs) {
    const problems = attempt(objectKey(origin));
    if (problems) out.push({ origin, problems });
  }
  return out;
}
