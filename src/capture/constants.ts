/**
 * What TypeScript shares with the eBPF programs: flag bits, map names and sizes, struct
 * layouts, program names. The C side is bpf/weft.h; test/unit/bpf-constants.test.ts compiles
 * this file's expectations against that header and the built objects, so the two cannot drift.
 */

/** weft_dests value flag: rewrite a connect to this destination to the agent. (WEFT_DST_F_REDIRECT) */
export const DST_F_REDIRECT = 1 << 0;
/** weft_pods value flag: refuse inbound connections from non-agents. (WEFT_POD_F_STRICT) */
export const POD_F_STRICT = 1 << 0;

export const DESTS_MAX = 65536;
export const ORIG_MAX = 65536;
export const PODS_MAX = 16384;
export const AGENTS_MAX = 4096;
/** Sockets the agent may splice at once, two per connection. (WEFT_SPLICE_MAX) */
export const SPLICE_MAX = 65536;

/** Every `#define WEFT_*` of bpf/weft.h, by its C name. */
export const DEFINES: Readonly<Record<string, number>> = {
  WEFT_DST_F_REDIRECT: DST_F_REDIRECT,
  WEFT_POD_F_STRICT: POD_F_STRICT,
  WEFT_DESTS_MAX: DESTS_MAX,
  WEFT_ORIG_MAX: ORIG_MAX,
  WEFT_PODS_MAX: PODS_MAX,
  WEFT_AGENTS_MAX: AGENTS_MAX,
  WEFT_SPLICE_MAX: SPLICE_MAX,
};

/** The maps; each is pinned under the pin root by this name. */
export const MAP_NAMES = {
  dests: 'weft_dests',
  config: 'weft_config',
  cookieDst: 'weft_cookie_dst',
  tupleDst: 'weft_tuple_dst',
  pods: 'weft_pods',
  agents: 'weft_agents',
} as const;
export type MapName = (typeof MAP_NAMES)[keyof typeof MAP_NAMES];

/** enum bpf_map_type values used by weft (stable kernel ABI). */
export const MAP_TYPE = { hash: 1, array: 2, lruHash: 9, sockhash: 18 } as const;

/** Struct layouts: total size and byte offset of each member (x86_64 and BPF agree). */
export const STRUCTS = {
  weft_dst_key: { size: 8, fields: { ip: 0, port: 4, _pad: 6 } },
  weft_dst_val: { size: 4, fields: { flags: 0 } },
  weft_config: { size: 8, fields: { node_ip: 0, outbound_port: 4, _pad: 6 } },
  weft_orig_dst: { size: 24, fields: { cgroup_id: 0, ip: 8, port: 12, _pad: 14, pid: 16, tid: 20 } },
  weft_tuple_key: { size: 8, fields: { ip: 0, port: 4, _pad: 6 } },
  weft_pod_val: { size: 4, fields: { flags: 0 } },
  weft_agent_val: { size: 4, fields: { flags: 0 } },
  weft_splice_val: { size: 16, fields: { peer: 0, bytes: 8 } },
} as const;

export interface MapSpec {
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export const MAPS: Readonly<Record<MapName, MapSpec>> = {
  weft_dests: { type: MAP_TYPE.hash, keySize: STRUCTS.weft_dst_key.size, valueSize: STRUCTS.weft_dst_val.size, maxEntries: DESTS_MAX },
  weft_config: { type: MAP_TYPE.array, keySize: 4, valueSize: STRUCTS.weft_config.size, maxEntries: 1 },
  weft_cookie_dst: { type: MAP_TYPE.lruHash, keySize: 8, valueSize: STRUCTS.weft_orig_dst.size, maxEntries: ORIG_MAX },
  weft_tuple_dst: { type: MAP_TYPE.lruHash, keySize: STRUCTS.weft_tuple_key.size, valueSize: STRUCTS.weft_orig_dst.size, maxEntries: ORIG_MAX },
  weft_pods: { type: MAP_TYPE.hash, keySize: 4, valueSize: STRUCTS.weft_pod_val.size, maxEntries: PODS_MAX },
  weft_agents: { type: MAP_TYPE.hash, keySize: 4, valueSize: STRUCTS.weft_agent_val.size, maxEntries: AGENTS_MAX },
};

/** Attach types by the names the addon knows (it maps them to enum bpf_attach_type). */
export type AttachTypeName = 'inet4_connect' | 'sock_ops' | 'inet4_getpeername' | 'inet_ingress' | 'sk_skb_verdict';

export interface ProgramSpec {
  /** Name of the link pin under `<pinRoot>/links/<cgroupId>/`. */
  name: 'sockops' | 'getpeername4' | 'connect4' | 'ingress';
  /** Object file in the build directory (build/bpf). */
  object: string;
  /** The program (its C function) in that object. */
  program: string;
  attachType: AttachTypeName;
  /** Attached only to pods in strict mTLS mode. */
  strictOnly: boolean;
}

/**
 * In attach order: connect4 comes after the programs that complete its work, so a pod is
 * never redirected without its original destination being recorded and reported; detach
 * runs in the reverse order.
 */
export const PROGRAMS: readonly ProgramSpec[] = [
  { name: 'sockops', object: 'sockops.bpf.o', program: 'weft_sockops', attachType: 'sock_ops', strictOnly: false },
  { name: 'getpeername4', object: 'getpeername4.bpf.o', program: 'weft_getpeername4', attachType: 'inet4_getpeername', strictOnly: false },
  { name: 'connect4', object: 'connect4.bpf.o', program: 'weft_connect4', attachType: 'inet4_connect', strictOnly: false },
  { name: 'ingress', object: 'ingress.bpf.o', program: 'weft_ingress', attachType: 'inet_ingress', strictOnly: true },
];

/**
 * The kernel splice of L4 connections (bpf/splice.bpf.c): one program attached to a socket map
 * of its own object, not to cgroups. Its maps are declared in that object only and are not
 * pinned: the sockets in them belong to the agent process that loaded it, and die with it.
 */
export const SPLICE = {
  object: 'splice.bpf.o',
  program: 'weft_splice_verdict',
  attachType: 'sk_skb_verdict',
  /** The program runs on sockets of `in`, redirects to sockets of `out`, pairs them in `peer`. */
  maps: { in: 'weft_spl_in', out: 'weft_spl_out', peer: 'weft_spl_peer' },
} as const;

export const SPLICE_MAPS: Readonly<Record<(typeof SPLICE.maps)[keyof typeof SPLICE.maps], MapSpec>> = {
  weft_spl_in: { type: MAP_TYPE.sockhash, keySize: 8, valueSize: 8, maxEntries: SPLICE_MAX },
  weft_spl_out: { type: MAP_TYPE.sockhash, keySize: 8, valueSize: 8, maxEntries: SPLICE_MAX },
  weft_spl_peer: { type: MAP_TYPE.hash, keySize: 8, valueSize: STRUCTS.weft_splice_val.size, maxEntries: SPLICE_MAX },
};

/** statfs f_type of a bpffs (BPF_FS_MAGIC). */
export const BPF_FS_MAGIC = 0xcafe4a11;
/** statfs f_type of a cgroup v2 filesystem (CGROUP2_SUPER_MAGIC). */
export const CGROUP2_SUPER_MAGIC = 0x63677270;
