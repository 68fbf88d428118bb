/** Small builders for loopback test configs: pods are backends on 127.0.1.N, clients dial from 127.0.2.N. */
export interface SvcSpec {
  name: string;
  vip: string;
  app: string;
  port?: number;
  targetPort?: number;
  protocol?: 'http' | 'http2' | 'grpc' | 'tcp';
  policy?: string;
}

export function loopbackMesh(pods: { name: string; ip: string; app: string; weight?: number; ready?: boolean }[], services: SvcSpec[], extra = ''): string {
  const wl = pods
    .map(
      (p) =>
        `  - { name: ${p.name}, namespace: shop, node: node-a, ip: ${p.ip}, serviceAccount: ${p.app}, labels: { app: ${p.app} }${p.weight ? `, weight: ${p.weight}` : ''}${p.ready === false ? ', ready: false' : ''} }`,
    )
    .join('\n');
  const svcs = services
    .map(
      (s) => `  - name: ${s.name}
    namespace: shop
    vip: ${s.vip}
    ports: [ { port: ${s.port ?? 80}, targetPort: ${s.targetPort ?? 8080}, protocol: ${s.protocol ?? 'http'} } ]
    selector: { app: ${s.app} }
    trafficPolicy: ${s.policy ?? '{}'}`,
    )
    .join('\n');
  return `
node: { name: node-a, address: 127.0.0.1 }
ports: { outbound: 0, inbound: 0, tunnel: 0, admin: 0, metrics: 0 }
namespaces:
  - { name: shop, labels: { weft.io/mesh: enabled } }
workloads:
${wl}
  - { name: client-0, namespace: shop, node: node-a, ip: 127.0.2.1, serviceAccount: client, labels: { app: client } }
services:
${svcs}
${extra}`;
}
