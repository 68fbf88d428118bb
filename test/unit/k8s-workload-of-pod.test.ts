/** The workload a Kubernetes pod belongs to, for metric labels (DESIGN.md "Metric labels"). */
import t from 'tap';
import type { V1Pod } from '@kubernetes/client-node';
import { trimPod, workloadOfPod } from '../../src/discovery/k8s/translate.js';

function pod(name: string, owner?: { kind: string; name: string }, labels: Record<string, string> = {}): V1Pod {
  return {
    metadata: { name, namespace: 'shop', labels, ...(owner ? { ownerReferences: [{ apiVersion: 'apps/v1', kind: owner.kind, name: owner.name, uid: 'u', controller: true }] } : {}) },
  };
}

t.test('owners', async (t) => {
  t.equal(workloadOfPod(pod('api-7d4f9c-x2z', { kind: 'ReplicaSet', name: 'api-7d4f9c' }, { 'pod-template-hash': '7d4f9c' })), 'api', 'a Deployment through its ReplicaSet');
  t.equal(workloadOfPod(pod('web-2-abc', { kind: 'ReplicaSet', name: 'web-2-5f6d8' }, { 'pod-template-hash': '5f6d8' })), 'web-2', 'a Deployment whose name has dashes');
  t.equal(workloadOfPod(pod('rs-abc', { kind: 'ReplicaSet', name: 'handmade' })), 'handmade', 'a ReplicaSet without a template hash is the workload');
  t.equal(workloadOfPod(pod('db-0', { kind: 'StatefulSet', name: 'db' })), 'db');
  t.equal(workloadOfPod(pod('logs-x7k2p', { kind: 'DaemonSet', name: 'logs' })), 'logs');
  t.equal(workloadOfPod(pod('migrate-q8w', { kind: 'Job', name: 'migrate' })), 'migrate');
  t.equal(workloadOfPod(pod('nightly-29123456-abcd', { kind: 'Job', name: 'nightly-29123456' })), 'nightly', "a CronJob's Job names the CronJob");
  t.equal(workloadOfPod(pod('debug')), 'debug', 'a bare pod is its own workload');
});

t.test('trimPod keeps the controller reference', async (t) => {
  const p = pod('api-1', { kind: 'ReplicaSet', name: 'api-7d4f9c' }, { 'pod-template-hash': '7d4f9c' });
  p.metadata!.ownerReferences!.push({ apiVersion: 'v1', kind: 'Other', name: 'x', uid: 'v' });
  const trimmed = trimPod(p);
  t.same(trimmed.metadata?.ownerReferences, [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'api-7d4f9c', uid: 'u', controller: true }]);
  t.equal(workloadOfPod(trimmed), 'api');
});
