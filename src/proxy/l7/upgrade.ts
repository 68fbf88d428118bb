/**
 * Which protocol upgrades a request may ask for. An upgrade turns an authorized HTTP
 * connection into an opaque byte stream that no later request on it is checked against, so
 * only the upgrade types a service allows are forwarded (`websocket` unless the service's
 * `trafficPolicy.upgrades` says otherwise; `h2c` only when listed), and the connection is
 * spliced only once the upstream answered `101` (see http1/exchange.ts).
 */
import type { Target } from '../../state/store.js';

/** The upgrade types allowed when a service does not list its own. */
export const DEFAULT_UPGRADES: readonly string[] = Object.freeze(['websocket']);

/** The upgrade types (lower-case protocol names) the connection's destination allows. */
export function allowedUpgrades(target: Target): readonly string[] {
  if (target.kind === 'service') return target.service.trafficPolicy.upgrades ?? DEFAULT_UPGRADES;
  return target.upgrades ?? DEFAULT_UPGRADES;
}

/**
 * The `Upgrade` value to forward for a request head that asks to upgrade: the offered
 * protocols (`name` or `name/version`) whose name is allowed, in the client's order; or
 * undefined when none is (the request is then served as plain HTTP, its Upgrade header
 * dropped).
 */
export function allowedUpgradeOffer(headers: readonly string[], allowed: readonly string[]): string | undefined {
  let kept: string[] | undefined;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (name.length !== 7 || name.toLowerCase() !== 'upgrade') continue;
    for (const raw of headers[i + 1]!.split(',')) {
      const offer = raw.trim();
      if (offer === '') continue;
      const slash = offer.indexOf('/');
      const proto = (slash === -1 ? offer : offer.slice(0, slash)).toLowerCase();
      if (allowed.includes(proto)) (kept ??= []).push(offer);
    }
  }
  return kept?.join(', ');
}
