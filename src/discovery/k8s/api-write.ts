/**
 * The few writes the cluster's status writer makes (status merge patches, Events), as plain
 * HTTP requests with the kubeconfig's credentials: the generated client picks the patch
 * content type poorly, and these need it explicit.
 */
import type { KubeConfig } from '@kubernetes/client-node';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest, type RequestOptions } from 'node:https';

export interface ApiAnswer {
  status: number;
  body: unknown;
}

/** `method path` with a JSON body (`application/merge-patch+json` for PATCH); resolves with the status and parsed body. */
export async function apiWrite(kubeConfig: KubeConfig, method: 'POST' | 'PATCH', path: string, body: unknown, timeoutMs = 10_000): Promise<ApiAnswer> {
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw new Error('no current cluster in the kubeconfig');
  const url = new URL(`${cluster.server.replace(/\/$/, '')}${path}`);
  const text = JSON.stringify(body);
  const contentType = method === 'PATCH' ? 'application/merge-patch+json' : 'application/json';
  const opts: RequestOptions = { method, headers: { 'content-type': contentType, accept: 'application/json', 'content-length': Buffer.byteLength(text) } };
  await kubeConfig.applyToHTTPSOptions(opts);
  return await new Promise<ApiAnswer>((resolve, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(text);
  });
}
