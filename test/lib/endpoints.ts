import { Endpoint } from '../../src/cluster/endpoint.js';

/** n ready, meshed, remote endpoints 10.0.x.y:8080 named w-0..w-(n-1), for balancer unit tests. */
export function endpoints(n: number, weight: (i: number) => number = () => 1): Endpoint[] {
  return Array.from(
    { length: n },
    (_, i) =>
      new Endpoint({
        ip: `10.0.${i >> 8}.${i & 255}`,
        port: 8080,
        weight: weight(i),
        workload: `w-${i}`,
        namespace: 'ns',
        node: 'node-a',
        serviceAccount: 'sa',
        ready: true,
        local: false,
        meshed: true,
      }),
  );
}
