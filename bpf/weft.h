/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * weft.h: what the kernel programs and user space share.
 *
 * The structs and WEFT_* constants are read by both sides: user space (the addon and
 * src/capture/constants.ts, checked by test/unit/bpf-constants.test.ts) and the programs
 * in this folder. The map definitions below them are compiled only for the BPF target.
 *
 * Every map is pinned by name (LIBBPF_PIN_BY_NAME): each object that includes this header
 * declares all of them, and libbpf, given the same pin_root_path, reuses the pinned map
 * instead of creating a new one. So the four objects share one set of maps, and a new agent
 * (restart or upgrade) finds the maps of the previous one with their content.
 * libbpf refuses to reuse a pinned map whose type, key, value or size differ: change a layout
 * and the pinned map must be removed (Datapath.destroy) before the new objects load.
 *
 * Addresses and ports are kept in network byte order everywhere, as the kernel hands them to
 * the programs. Structs carry explicit padding members: a hash key is compared byte for
 * byte, so no byte of it may be left to the compiler.
 */
#ifndef WEFT_H
#define WEFT_H

#include <linux/types.h>

/* weft_dests value flags */
#define WEFT_DST_F_REDIRECT (1U << 0) /* rewrite connects to this destination to the agent */

/* weft_pods value flags */
#define WEFT_POD_F_STRICT (1U << 0) /* strict mTLS: refuse inbound connections from non-agents */

#define WEFT_DESTS_MAX 65536
#define WEFT_ORIG_MAX 65536
#define WEFT_PODS_MAX 16384
#define WEFT_AGENTS_MAX 4096
/* Sockets the agent may splice at once: two per connection (bpf/splice.bpf.c). */
#define WEFT_SPLICE_MAX 65536

/* weft_dests key: a destination the mesh knows (service VIP:port or pod IP:port). */
struct weft_dst_key {
	__u32 ip;   /* network order */
	__u16 port; /* network order */
	__u16 _pad; /* always 0 */
};

struct weft_dst_val {
	__u32 flags; /* WEFT_DST_F_* */
};

/* weft_config[0]: where redirected connections go. node_ip == 0 means "not configured yet". */
struct weft_config {
	__u32 node_ip;       /* network order */
	__u16 outbound_port; /* network order */
	__u16 _pad;
};

/* The original destination of a redirected connection and who opened it. */
struct weft_orig_dst {
	__u64 cgroup_id; /* cgroup v2 id of the connecting task (the pod) */
	__u32 ip;        /* original destination, network order */
	__u16 port;      /* network order */
	__u16 _pad;
	__u32 pid; /* tgid of the connecting task, in the root pid namespace */
	__u32 tid;
};

/* weft_tuple_dst key: the client end of the redirected connection as the agent sees it. */
struct weft_tuple_key {
	__u32 ip;   /* network order */
	__u16 port; /* network order */
	__u16 _pad; /* always 0 */
};

struct weft_pod_val {
	__u32 flags; /* WEFT_POD_F_* */
};

struct weft_agent_val {
	__u32 flags; /* none yet */
};

/*
 * weft_spl_peer value, keyed by the socket cookie of one of the agent's two sockets of a
 * spliced L4 connection (bpf/splice.bpf.c).
 */
struct weft_splice_val {
	__u64 peer;  /* socket cookie of the other socket: where this one's bytes go */
	__u64 bytes; /* payload bytes received on this socket and redirected to the peer */
};

#if defined(__bpf__) || defined(__BPF__)
#include <bpf/bpf_helpers.h>

/* Known destinations: the agent syncs it from services and meshed pods. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_DESTS_MAX);
	__type(key, struct weft_dst_key);
	__type(value, struct weft_dst_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weft_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_config SEC(".maps");

/* connect4 -> sockops and getpeername4, keyed by socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_ORIG_MAX);
	__type(key, __u64);
	__type(value, struct weft_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_cookie_dst SEC(".maps");

/* sockops -> the agent (read and deleted through the addon when it accepts). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_ORIG_MAX);
	__type(key, struct weft_tuple_key);
	__type(value, struct weft_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_tuple_dst SEC(".maps");

/* Meshed pods on this node, for the strict ingress program. Key: pod ipv4, network order. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_PODS_MAX);
	__type(key, __u32);
	__type(value, struct weft_pod_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_pods SEC(".maps");

/* Addresses of weft agents (other nodes) allowed to open connections to strict pods. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_AGENTS_MAX);
	__type(key, __u32);
	__type(value, struct weft_agent_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_agents SEC(".maps");

/* Values that no system header reachable from the BPF target defines. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

static __always_inline struct weft_config *weft_get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&weft_config, &zero);
}

#endif /* __bpf__ */
#endif /* WEFT_H */
