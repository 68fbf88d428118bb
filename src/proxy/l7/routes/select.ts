/**
 * The random choices of a rule, each from one draw of `rand` (a [0, 1) source, injectable so
 * tests can pin it): which weighted backend, whether a mirror copy is sent, whether a fault
 * strikes.
 */

/**
 * A backend index by weight (Gateway API: a backend's share is weight / sum of weights), or
 * undefined when every weight is 0 (no backend to send to).
 */
export function pickWeighted(weights: readonly number[], rand: () => number): number | undefined {
  let total = 0;
  for (const w of weights) total += w;
  if (total <= 0) return undefined;
  let x = rand() * total;
  for (let i = 0; i < weights.length; i++) {
    x -= weights[i]!;
    if (x < 0 && weights[i]! > 0) return i;
  }
  // Floating point at the top end: the last backend with weight.
  for (let i = weights.length - 1; i >= 0; i--) if (weights[i]! > 0) return i;
  return undefined;
}

/** True for `percent`% of draws: 0 never, 100 always. */
export function chance(percent: number, rand: () => number): boolean {
  if (percent >= 100) return true;
  if (percent <= 0) return false;
  return rand() * 100 < percent;
}
