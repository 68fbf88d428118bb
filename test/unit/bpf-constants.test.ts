// C and TypeScript share flag bits, map definitions and struct layouts: bpf/weft.h on one
// side, src/capture/constants.ts on the other. This test holds them together.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addon, addonPath, BpfObject, codecs, repoRoot } from '../../src/capture/bpf.js';
import { AGENT_PROGRAM, DEFINES, MAP_NAMES, MAPS, PROGRAMS, SPLICE, SPLICE_MAPS, STRUCTS } from '../../src/capture/constants.js';

const header = join(repoRoot, 'bpf', 'weft.h');
const headerText = readFileSync(header, 'utf8');

t.test('every WEFT_* define of weft.h is in constants.ts, and only those', async (t) => {
  const names = [...headerText.matchAll(/^#define\s+(WEFT_\w+)\s/gm)].map((m) => m[1]!).filter((n) => n !== 'WEFT_H');
  t.same(names.sort(), Object.keys(DEFINES).sort());
});

t.test('every map of weft.h is in constants.ts, with a name the kernel accepts', async (t) => {
  const names = [...headerText.matchAll(/^\}\s*(\w+)\s+SEC\("\.maps"\);/gm)].map((m) => m[1]!);
  t.ok(names.length > 0, 'found map definitions in the header');
  t.same(names.sort(), Object.values(MAP_NAMES).sort());
  for (const n of names) t.ok(n.length <= 15 && n.startsWith('weft_'), `${n}: weft_ prefix, at most 15 chars (BPF_OBJ_NAME_LEN)`);
});

t.test('values and struct layouts match what a C compiler makes of weft.h', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-constants-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines: string[] = [];
  for (const name of Object.keys(DEFINES)) lines.push(`  printf("\\"${name}\\": %llu,\\n", (unsigned long long)(${name}));`);
  for (const [struct, layout] of Object.entries(STRUCTS)) {
    lines.push(`  printf("\\"sizeof ${struct}\\": %zu,\\n", sizeof(struct ${struct}));`);
    for (const field of Object.keys(layout.fields)) lines.push(`  printf("\\"${struct}.${field}\\": %zu,\\n", offsetof(struct ${struct}, ${field}));`);
  }
  const src = `#include <stddef.h>\n#include <stdio.h>\n#include "weft.h"\nint main(void) {\n  printf("{\\n");\n${lines.join('\n')}\n  printf("\\"end\\": 0}\\n");\n  return 0;\n}\n`;
  writeFileSync(join(dir, 'check.c'), src);
  execFileSync('cc', ['-Wall', '-Werror', '-I', join(repoRoot, 'bpf'), '-o', join(dir, 'check'), join(dir, 'check.c')], { stdio: 'pipe' });
  const c = JSON.parse(execFileSync(join(dir, 'check'), { encoding: 'utf8' })) as Record<string, number>;

  for (const [name, value] of Object.entries(DEFINES)) t.equal(value, c[name], name);
  for (const [struct, layout] of Object.entries(STRUCTS)) {
    t.equal(layout.size, c[`sizeof ${struct}`], `sizeof(struct ${struct})`);
    for (const [field, off] of Object.entries(layout.fields)) t.equal(off, c[`${struct}.${field}`], `offsetof(${struct}, ${field})`);
  }
  t.equal(codecs.dstKey.size, c['sizeof weft_dst_key']);
  t.equal(codecs.tupleKey.size, c['sizeof weft_tuple_key']);
  t.equal(codecs.config.size, c['sizeof weft_config']);
  t.equal(codecs.origDst.size, c['sizeof weft_orig_dst']);
});

t.test('codecs put addresses and ports in network order', async (t) => {
  t.equal(codecs.dstKey.encode({ ip: '10.96.0.20', port: 80 }).toString('hex'), '0a6000140050' + '0000');
  t.same(codecs.dstKey.decode(Buffer.from('0a60001400500000', 'hex')), { ip: '10.96.0.20', port: 80 });
  t.same(codecs.config.decode(codecs.config.encode({ nodeIp: '10.77.0.1', outboundPort: 15001 })), { nodeIp: '10.77.0.1', outboundPort: 15001 });
  const od = { cgroupId: 1234567890123n, ip: '10.96.0.20', port: 80, pid: 4242, tid: 4243 };
  t.same(codecs.origDst.decode(codecs.origDst.encode(od)), od);
  t.throws(() => codecs.dstKey.encode({ ip: '10.96.0', port: 80 }), TypeError);
  t.throws(() => codecs.dstKey.encode({ ip: '10.96.0.1', port: 70000 }), TypeError);
});

const objDir = join(repoRoot, 'build', 'bpf');
const built = existsSync(addonPath) && [...PROGRAMS, AGENT_PROGRAM, SPLICE].every((p) => existsSync(join(objDir, p.object)));

t.test('the built objects define the maps and programs constants.ts expects', { skip: built ? false : `not built (${addonPath}, ${objDir}): run scripts/build.sh` }, async (t) => {
  for (const p of [...PROGRAMS, AGENT_PROGRAM]) {
    t.ok(p.attachType in addon().attachTypes, `the addon knows attach type ${p.attachType}`);
    // Opening parses the ELF and its BTF only: no privileges, nothing reaches the kernel.
    const obj = BpfObject.open(join(objDir, p.object));
    try {
      t.ok(obj.programNames().includes(p.program), `${p.object} has program ${p.program}`);
      t.same(obj.mapNames().sort(), Object.values(MAP_NAMES).sort(), `${p.object} declares every map`);
      for (const [name, spec] of Object.entries(MAPS)) {
        const info = obj.mapInfo(name);
        t.same({ type: info.type, keySize: info.keySize, valueSize: info.valueSize, maxEntries: info.maxEntries }, spec, `${p.object}: ${name}`);
      }
    } finally {
      obj.close();
    }
  }
});

t.test('the splice object: its program, its private maps and every shared one', { skip: built ? false : `not built (${addonPath}, ${objDir}): run scripts/build.sh` }, async (t) => {
  t.ok(SPLICE.attachType in addon().attachTypes, `the addon knows attach type ${SPLICE.attachType}`);
  t.same(Object.values(SPLICE.maps).sort(), Object.keys(SPLICE_MAPS).sort());
  for (const name of Object.keys(SPLICE_MAPS)) t.ok(name.length <= 15 && name.startsWith('weft_'), `${name}: weft_ prefix, at most 15 chars`);
  const obj = BpfObject.open(join(objDir, SPLICE.object));
  try {
    t.ok(obj.programNames().includes(SPLICE.program), `${SPLICE.object} has program ${SPLICE.program}`);
    t.same(obj.mapNames().sort(), [...Object.values(MAP_NAMES), ...Object.values(SPLICE.maps)].sort(), 'the shared maps and its own');
    for (const [name, spec] of Object.entries({ ...MAPS, ...SPLICE_MAPS })) {
      const info = obj.mapInfo(name);
      t.same({ type: info.type, keySize: info.keySize, valueSize: info.valueSize, maxEntries: info.maxEntries }, spec, name);
    }
    for (const name of Object.values(SPLICE.maps)) t.equal(obj.mapInfo(name).pinPath, null, `${name} is not pinned: its sockets are the loading process's`);
  } finally {
    obj.close();
  }
});
