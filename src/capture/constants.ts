/**
 * What TypeScript shares with the eBPF programs: flag bits, map names and sizes, struct
 * layouts, program names. The C side is bpf/weft.h; test/unit/bpf-constants.test.ts compiles
 * this file's expectations against that header and the built objects, so the two cannot drift.
 */

/** weft_dests value flag: rewrite a connect to this destination to the agent. (WEFT_DST_F_REDIRECT) */
export const DST_F_REDIRECT = 1 << 0;
/** weft_dests value flag, with REDIRECT: balance in connect4 over weft_lb_slots (socket LB). (WEFT_DST_F_LB) */
export const DST_F_LB = 1 << 1;
/** weft_pods value flag: strict ingress admits only what the agent opened, socket LB, probes, the pod's own. (WEFT_POD_F_STRICT) */
export const POD_F_STRICT = 1 << 0;

export const DESTS_MAX = 65536;
export const ORIG_MAX = 65536;
export const PODS_MAX = 16384;
/** Captured pod cgroups connect4 attributes callers to. (WEFT_CGROUPS_MAX) */
export const CGROUPS_MAX = 16384;
/** Levels of the cgroup v2 tree connect4 searches for the caller's pod cgroup. (WEFT_CGROUP_LEVELS_MAX) */
export const CGROUP_LEVELS_MAX = 16;
export const AGENT_FLOWS_MAX = 65536;
/** weft_agent slots: the two agents of a handover (src/lifecycle/handover.ts). */
export const AGENTS_MAX = 2;
export const PROBES_MAX = 65536;
/** Bytes of the ring buffer of refused connects. */
export const REFUSED_BYTES = 1 << 16;
/** Sockets the agent may splice at once, two per connection. (WEFT_SPLICE_MAX) */
export const SPLICE_MAX = 65536;

/** Socket LB sizes (WEFT_LB_*): service ports, slots per service port, slots in all, flows. */
export const LB_SVCS_MAX = 16384;
export const LB_SLOTS_MAX = 256;
export const LB_BACKENDS_MAX = 262144;
export const LB_FLOWS_MAX = 65536;
/** Bytes of the ring buffer of balanced-connection events. */
export const LB_EVENTS_BYTES = 1 << 20;
/** weft_lb_event types. */
export const LB_EV_OPEN = 1;
export const LB_EV_CLOSE = 2;
/** weft_lb_sock flags (kernel-internal: which FINs TCP's byte counters include). */
export const LB_F_FIN_IN = 1 << 0;
export const LB_F_FIN_ACKED = 1 << 1;

/** Every `#define WEFT_*` of bpf/weft.h, by its C name. */
export const DEFINES: Readonly<Record<string, number>> = {
  WEFT_DST_F_REDIRECT: DST_F_REDIRECT,
  WEFT_DST_F_LB: DST_F_LB,
  WEFT_POD_F_STRICT: POD_F_STRICT,
  WEFT_DESTS_MAX: DESTS_MAX,
  WEFT_ORIG_MAX: ORIG_MAX,
  WEFT_PODS_MAX: PODS_MAX,
  WEFT_CGROUPS_MAX: CGROUPS_MAX,
  WEFT_CGROUP_LEVELS_MAX: CGROUP_LEVELS_MAX,
  WEFT_AGENTS_MAX: AGENTS_MAX,
  WEFT_AGENT_FLOWS_MAX: AGENT_FLOWS_MAX,
  WEFT_PROBES_MAX: PROBES_MAX,
  WEFT_REFUSED_BYTES: REFUSED_BYTES,
  WEFT_SPLICE_MAX: SPLICE_MAX,
  WEFT_LB_SVCS_MAX: LB_SVCS_MAX,
  WEFT_LB_SLOTS_MAX: LB_SLOTS_MAX,
  WEFT_LB_BACKENDS_MAX: LB_BACKENDS_MAX,
  WEFT_LB_FLOWS_MAX: LB_FLOWS_MAX,
  WEFT_LB_EVENTS_BYTES: LB_EVENTS_BYTES,
  WEFT_LB_EV_OPEN: LB_EV_OPEN,
  WEFT_LB_EV_CLOSE: LB_EV_CLOSE,
  WEFT_LB_F_FIN_IN: LB_F_FIN_IN,
  WEFT_LB_F_FIN_ACKED: LB_F_FIN_ACKED,
};

/** The maps; each is pinned under the pin root by this name. */
export const MAP_NAMES = {
  dests: 'weft_dests',
  config: 'weft_config',
  cookieDst: 'weft_cookie_dst',
  tupleDst: 'weft_tuple_dst',
  pods: 'weft_pods',
  cgroups: 'weft_cgroups',
  refused: 'weft_refused',
  agent: 'weft_agent',
  agentFlows: 'weft_agt_flows',
  probes: 'weft_probes',
  lbSvcs: 'weft_lb_svcs',
  lbSlots: 'weft_lb_slots',
  lbSocks: 'weft_lb_socks',
  lbFlows: 'weft_lb_flows',
  lbEvents: 'weft_lb_events',
  lbLost: 'weft_lb_lost',
} as const;
export type MapName = (typeof MAP_NAMES)[keyof typeof MAP_NAMES];

/** enum bpf_map_type values used by weft (stable kernel ABI). */
export const MAP_TYPE = { hash: 1, array: 2, lruHash: 9, sockhash: 18, skStorage: 24, ringbuf: 27 } as const;

/** Struct layouts: total size and byte offset of each member (x86_64 and BPF agree). */
export const STRUCTS = {
  weft_dst_key: { size: 8, fields: { ip: 0, port: 4, _pad: 6 } },
  weft_dst_val: { size: 4, fields: { flags: 0 } },
  weft_config: { size: 8, fields: { node_ip: 0, outbound_port: 4, _pad: 6 } },
  weft_orig_dst: { size: 24, fields: { cgroup_id: 0, ip: 8, port: 12, _pad: 14, pid: 16, tid: 20 } },
  weft_tuple_key: { size: 8, fields: { ip: 0, port: 4, _pad: 6 } },
  weft_pod_val: { size: 4, fields: { flags: 0 } },
  weft_cgroup_val: { size: 4, fields: { flags: 0 } },
  weft_probe_val: { size: 4, fields: { flags: 0 } },
  weft_agent_task: { size: 24, fields: { pidns_dev: 0, pidns_ino: 8, tgid: 16, _pad: 20 } },
  weft_refusal: { size: 24, fields: { cgroup_id: 0, pid: 8, ip: 12, port: 16, _pad: 18, _pad2: 20 } },
  weft_splice_val: { size: 16, fields: { peer: 0, bytes: 8 } },
  weft_lb_svc: { size: 8, fields: { slots: 0, _pad: 4 } },
  weft_lb_slot_key: { size: 8, fields: { ip: 0, port: 4, slot: 6 } },
  weft_lb_backend: { size: 8, fields: { ip: 0, port: 4, _pad: 6 } },
  weft_lb_sock: { size: 32, fields: { cgroup_id: 0, start_ns: 8, orig_ip: 16, orig_port: 20, flags: 22, backend_ip: 24, backend_port: 28, _pad2: 30 } },
  weft_lb_flow_key: { size: 12, fields: { saddr: 0, daddr: 4, sport: 8, dport: 10 } },
  weft_lb_event: {
    size: 72,
    fields: {
      type: 0,
      _pad0: 4,
      cookie: 8,
      cgroup_id: 16,
      duration_ns: 24,
      bytes_sent: 32,
      bytes_received: 40,
      orig_ip: 48,
      orig_port: 52,
      client_port: 54,
      backend_ip: 56,
      backend_port: 60,
      _pad: 62,
      client_ip: 64,
      _pad2: 68,
    },
  },
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
  weft_cgroups: { type: MAP_TYPE.hash, keySize: 8, valueSize: STRUCTS.weft_cgroup_val.size, maxEntries: CGROUPS_MAX },
  weft_refused: { type: MAP_TYPE.ringbuf, keySize: 0, valueSize: 0, maxEntries: REFUSED_BYTES },
  weft_agent: { type: MAP_TYPE.array, keySize: 4, valueSize: STRUCTS.weft_agent_task.size, maxEntries: AGENTS_MAX },
  weft_agt_flows: { type: MAP_TYPE.lruHash, keySize: STRUCTS.weft_lb_flow_key.size, valueSize: 8, maxEntries: AGENT_FLOWS_MAX },
  weft_probes: { type: MAP_TYPE.hash, keySize: STRUCTS.weft_dst_key.size, valueSize: STRUCTS.weft_probe_val.size, maxEntries: PROBES_MAX },
  weft_lb_svcs: { type: MAP_TYPE.hash, keySize: STRUCTS.weft_dst_key.size, valueSize: STRUCTS.weft_lb_svc.size, maxEntries: LB_SVCS_MAX },
  weft_lb_slots: { type: MAP_TYPE.hash, keySize: STRUCTS.weft_lb_slot_key.size, valueSize: STRUCTS.weft_lb_backend.size, maxEntries: LB_BACKENDS_MAX },
  weft_lb_socks: { type: MAP_TYPE.skStorage, keySize: 4, valueSize: STRUCTS.weft_lb_sock.size, maxEntries: 0 },
  weft_lb_flows: { type: MAP_TYPE.lruHash, keySize: STRUCTS.weft_lb_flow_key.size, valueSize: 8, maxEntries: LB_FLOWS_MAX },
  weft_lb_events: { type: MAP_TYPE.ringbuf, keySize: 0, valueSize: 0, maxEntries: LB_EVENTS_BYTES },
  weft_lb_lost: { type: MAP_TYPE.array, keySize: 4, valueSize: 8, maxEntries: 1 },
};

/** Attach types by the names the addon knows (it maps them to enum bpf_attach_type). */
export type AttachTypeName = 'inet4_connect' | 'sock_ops' | 'inet4_getpeername' | 'inet_ingress' | 'sk_skb_verdict';

export interface ProgramSpec {
  /** Name of the link pin under `<pinRoot>/links/<cgroupId>/`. */
  name: 'sockops' | 'getpeername4' | 'connect4' | 'ingress' | 'agent_sockops';
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
 * The program on the agent's own cgroup (bpf/agent.bpf.c): it marks the connections the agent
 * process opens, for strict ingress. Pinned as `<pinRoot>/links/agent/agent_sockops`.
 */
export const AGENT_PROGRAM: ProgramSpec = { name: 'agent_sockops', object: 'agent.bpf.o', program: 'weft_agent_sockops', attachType: 'sock_ops', strictOnly: false };

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
