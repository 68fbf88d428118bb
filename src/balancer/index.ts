import type { LoadBalancerPolicy, LoadBalancerType } from '../config/types.js';
import type { Balancer } from './types.js';
import type { BalancerOptions } from './options.js';
import { RandomBalancer } from './random.js';
import { RoundRobinBalancer } from './round-robin.js';
import { WeightedRoundRobinBalancer } from './weighted-round-robin.js';
import { LeastRequestBalancer } from './least-request.js';
import { PeakEwmaBalancer } from './peak-ewma.js';
import { RingHashBalancer } from './ring-hash.js';
import { MaglevBalancer } from './maglev.js';

export type { Balancer, PickContext } from './types.js';
export type { BalancerOptions } from './options.js';
export { seededRandom } from './options.js';
export { hashKey, murmur3 } from './hash.js';
export { RandomBalancer } from './random.js';
export { RoundRobinBalancer } from './round-robin.js';
export { WeightedRoundRobinBalancer } from './weighted-round-robin.js';
export { LeastRequestBalancer } from './least-request.js';
export { PeakEwmaBalancer, DEFAULT_DECAY_MS, DEFAULT_RTT_MS, type PeakEwmaOptions } from './peak-ewma.js';
export { RingHashBalancer, DEFAULT_MIN_RING_SIZE, type RingHashOptions } from './ring-hash.js';
export { MaglevBalancer, DEFAULT_TABLE_SIZE, type MaglevOptions } from './maglev.js';
export type { WeightedRoundRobinOptions } from './weighted-round-robin.js';

/** Every `trafficPolicy.loadBalancer.type`, in DESIGN.md's order. */
export const BALANCER_TYPES: readonly LoadBalancerType[] = ['random', 'round-robin', 'weighted-round-robin', 'least-request', 'peak-ewma', 'ring-hash', 'maglev'];

/** The types that read `PickContext.hash` (and so want `hashOn`). */
export const HASH_BALANCER_TYPES: readonly LoadBalancerType[] = ['ring-hash', 'maglev'];

/**
 * A new, empty balancer for `policy` (call `setEndpoints` before picking).
 * `options.random` / `options.now` replace Math.random / Date.now (tests inject seeded ones).
 */
export function createBalancer(policy: LoadBalancerPolicy, options: BalancerOptions = {}): Balancer {
  switch (policy.type) {
    case 'random':
      return new RandomBalancer(options);
    case 'round-robin':
      return new RoundRobinBalancer(options);
    case 'weighted-round-robin':
      return new WeightedRoundRobinBalancer(options);
    case 'least-request':
      return new LeastRequestBalancer(options);
    case 'peak-ewma':
      return new PeakEwmaBalancer(options);
    case 'ring-hash':
      return new RingHashBalancer({ ...options, minRingSize: policy.minRingSize });
    case 'maglev':
      return new MaglevBalancer({ ...options, tableSize: policy.tableSize });
    default: {
      const unknown: never = policy.type;
      throw new TypeError(`unknown load balancer type: ${String(unknown)}`);
    }
  }
}
