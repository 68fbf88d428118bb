// The agent's trust bundle (ca.rootCert) on a real file system, mounted the way the kubelet
// mounts a ConfigMap: root.pem -> ..data/root.pem, ..data -> ..<timestamp>/, updated by writing
// a new timestamped directory and renaming a new ..data symlink over the old one.
import t from 'tap';
import { mkdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TrustBundle } from '../../src/identity/trust-bundle.js';
import { makeIntermediate, makeRootCa } from '../lib/pki.js';

let gen = 0;
/** Publishes `content` as the kubelet does: a new data directory, then an atomic symlink swap. */
function kubeletUpdate(mount: string, content: string): void {
  const data = `..2026_12_03_${++gen}`;
  mkdirSync(join(mount, data));
  writeFileSync(join(mount, data, 'root.pem'), content);
  symlinkSync(data, join(mount, '..data_tmp'));
  renameSync(join(mount, '..data_tmp'), join(mount, '..data'));
}

/** The next 'changed' event. The watcher and the poll timer do not hold the process open (an agent's servers do), so this does. */
function changed(bundle: TrustBundle): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no change seen within 10 s')), 10_000);
    bundle.once('changed', (pem: string) => {
      clearTimeout(timer);
      resolve(pem);
    });
  });
}

t.test('a mounted ConfigMap is re-read on its symlink swap; bad content is kept out', async (t) => {
  const mount = t.testdir();
  const oldRoot = await makeRootCa('old root');
  const newRoot = await makeRootCa('new root');
  kubeletUpdate(mount, oldRoot.certPem);
  symlinkSync('..data/root.pem', join(mount, 'root.pem'));

  // A long poll interval: what is seen here comes from fs.watch.
  const bundle = new TrustBundle(join(mount, 'root.pem'), { pollMs: 600_000 });
  t.teardown(() => bundle.stop());
  bundle.start();
  t.equal(bundle.roots.length, 1);
  t.equal(bundle.pem, oldRoot.certPem);

  const next = changed(bundle);
  kubeletUpdate(mount, oldRoot.certPem + newRoot.certPem);
  t.equal(await next, oldRoot.certPem + newRoot.certPem, 'the swap is seen without polling: both roots');
  t.equal(bundle.roots.length, 2);
  await bundle.check(); // let the re-read that announced it finish

  // Invalid content: an intermediate (not a root), then garbage. The roots in force stay.
  const inter = await makeIntermediate(newRoot, 'an intermediate');
  let fired = 0;
  const count = () => fired++;
  bundle.on('changed', count);
  kubeletUpdate(mount, newRoot.certPem + inter.certPem);
  t.equal(await bundle.check(), false, 'a bundle with a non-root is refused');
  kubeletUpdate(mount, 'not PEM at all\n');
  t.equal(await bundle.check(), false, 'garbage is refused');
  t.equal(fired, 0, 'no change was announced');
  t.equal(bundle.pem, oldRoot.certPem + newRoot.certPem, 'the last good bundle stays in force');

  const last = changed(bundle);
  kubeletUpdate(mount, newRoot.certPem);
  t.equal(await last, newRoot.certPem, 'the old root removed');
  // The re-read that announced it may still be finishing (check() joins it): let it.
  await bundle.check();
  t.equal(await bundle.check(), false, 'the same content again is no change');
});

t.test('the periodic re-read catches a change fs.watch did not report', async (t) => {
  const dir = t.testdir();
  const a = await makeRootCa('a');
  const b = await makeRootCa('b');
  // A plain file written in place; on file systems that send no event, the poll still sees it.
  writeFileSync(join(dir, 'roots.pem'), a.certPem);
  const bundle = new TrustBundle(join(dir, 'roots.pem'), { pollMs: 200 });
  t.teardown(() => bundle.stop());
  bundle.start();
  const next = changed(bundle);
  writeFileSync(join(dir, 'roots.pem'), a.certPem + b.certPem);
  t.equal(await next, a.certPem + b.certPem);
});

t.test('inline PEM and a bad file at start', async (t) => {
  const a = await makeRootCa('a');
  const inline = new TrustBundle(a.certPem);
  t.equal(inline.source, 'the configured root certificate');
  t.equal(await inline.check(), false, 'inline PEM never changes');
  const dir = t.testdir();
  t.throws(() => new TrustBundle(join(dir, 'missing.pem')), /cannot read the CA root certificate .*missing\.pem/);
  writeFileSync(join(dir, 'leaf.pem'), (await makeIntermediate(a, 'x')).certPem);
  t.throws(() => new TrustBundle(join(dir, 'leaf.pem')), /leaf\.pem: certificate 1 of 1 .*is not a self-signed CA certificate: a trust bundle holds roots only/);
});
