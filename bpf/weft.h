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
/*
 * With REDIRECT: balance connects to this service port in connect4, over weft_lb_slots
 * (socket LB), instead of sending them to the agent. Set by the agent only for plain-TCP
 * service ports where it has nothing to add; without backends it falls back to REDIRECT.
 */
#define WEFT_DST_F_LB (1U << 1)

/* weft_pods value flags */
#define WEFT_POD_F_STRICT (1U << 0) /* strict mTLS: admit only what the agent opened (ingress) */

#define WEFT_DESTS_MAX 65536
#define WEFT_ORIG_MAX 65536
#define WEFT_PODS_MAX 16384
/* Pod cgroups the agent captured (weft_cgroups): the callers connect4 can attribute. */
#define WEFT_CGROUPS_MAX 16384
/*
 * connect4 looks for the caller's pod cgroup among the calling task's ancestors at levels
 * 1..WEFT_CGROUP_LEVELS_MAX of the cgroup v2 tree (level 0 is the root). A pod cgroup
 * deeper than that cannot be attributed: its connections to the mesh are refused.
 * (kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice is level 3;
 * kind and k3s nest it a few levels further down.)
 */
#define WEFT_CGROUP_LEVELS_MAX 16
/* Connections this node's agent opened, for strict ingress (weft_agt_flows). */
#define WEFT_AGENT_FLOWS_MAX 65536
/* Probe ports of meshed pods (weft_probes): kubelet probes from the node address. */
#define WEFT_PROBES_MAX 65536
/* Ring of refused connects (weft_refused), bytes. */
#define WEFT_REFUSED_BYTES (1U << 16)
/* Sockets the agent may splice at once: two per connection (bpf/splice.bpf.c). */
#define WEFT_SPLICE_MAX 65536

/* Socket LB (connect4 balances plain-TCP service ports itself). */
#define WEFT_LB_SVCS_MAX 16384
#define WEFT_LB_SLOTS_MAX 256 /* backend slots per service port: weights are slot counts */
#define WEFT_LB_BACKENDS_MAX 262144
#define WEFT_LB_FLOWS_MAX 65536
#define WEFT_LB_EVENTS_BYTES (1U << 20) /* ring buffer of connection events, bytes */
#define WEFT_LB_EV_OPEN 1
#define WEFT_LB_EV_CLOSE 2
/* weft_lb_sock flags: the FINs that TCP counts in bytes_received / bytes_acked, not bytes. */
#define WEFT_LB_F_FIN_IN (1U << 0)    /* the peer's FIN was received */
#define WEFT_LB_F_FIN_ACKED (1U << 1) /* our FIN was acknowledged */

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
	__u64 cgroup_id; /* cgroup v2 id of the calling pod (its pod-level cgroup, in weft_cgroups) */
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

/* weft_cgroups value, keyed by the cgroup id (u64) of a captured pod. */
struct weft_cgroup_val {
	__u32 flags; /* none yet */
};

/* weft_probes value, keyed by pod ip:port (struct weft_dst_key). */
struct weft_probe_val {
	__u32 flags; /* none yet */
};

/*
 * weft_agent[0..1]: the agent processes, as bpf_get_ns_current_pid_tgid() sees them: a tgid in
 * its own pid namespace, named by that namespace's device and inode (stat /proc/self/ns/pid).
 * Two slots: while a new agent takes a node over (src/lifecycle/handover.ts) both run, and the
 * old one drains with connections of its own. tgid 0: a free slot.
 */
#define WEFT_AGENTS_MAX 2
struct weft_agent_task {
	__u64 pidns_dev;
	__u64 pidns_ino;
	__u32 tgid;
	__u32 _pad;
};

/* A record of weft_refused: a connect from a meshed pod that connect4 could not attribute. */
struct weft_refusal {
	__u64 cgroup_id; /* the calling task's own cgroup */
	__u32 pid;       /* tgid, root pid namespace */
	__u32 ip;        /* the destination it dialed, network order */
	__u16 port;      /* network order */
	__u16 _pad;
	__u32 _pad2;
};

/* weft_lb_svcs value, keyed by the service port (struct weft_dst_key). */
struct weft_lb_svc {
	__u32 slots; /* slots 0..slots-1 of weft_lb_slots are filled; 0: none (go to the agent) */
	__u32 _pad;
};

/* weft_lb_slots key: one slot of a service port's table. */
struct weft_lb_slot_key {
	__u32 ip;   /* service VIP, network order */
	__u16 port; /* network order */
	__u16 slot; /* host order, < WEFT_LB_SLOTS_MAX */
};

struct weft_lb_backend {
	__u32 ip;   /* endpoint, network order */
	__u16 port; /* network order */
	__u16 _pad;
};

/* Per socket (weft_lb_socks, socket storage): a connection connect4 balanced. */
struct weft_lb_sock {
	__u64 cgroup_id; /* the connecting pod */
	__u64 start_ns;  /* bpf_ktime_get_ns() when established; 0 until then */
	__u32 orig_ip;   /* the service VIP:port it dialed, network order */
	__u16 orig_port;
	__u16 flags; /* WEFT_LB_F_* */
	__u32 backend_ip; /* the endpoint connect4 chose, network order */
	__u16 backend_port;
	__u16 _pad2;
};

/*
 * weft_lb_flows and weft_agt_flows key: a connection as the destination pod sees it, so
 * that strict ingress admits it (a balanced one comes from the client pod; an agent-opened
 * one from the agent's socket). Network order.
 */
struct weft_lb_flow_key {
	__u32 saddr; /* client pod */
	__u32 daddr; /* endpoint */
	__u16 sport;
	__u16 dport;
};

/* A record of weft_lb_events: a balanced connection was established (OPEN) or closed. */
struct weft_lb_event {
	__u32 type; /* WEFT_LB_EV_* */
	__u32 _pad0;
	__u64 cookie;
	__u64 cgroup_id;
	__u64 duration_ns; /* CLOSE: since established */
	__u64 bytes_sent;  /* CLOSE: client -> endpoint, acknowledged */
	__u64 bytes_received;
	__u32 orig_ip; /* network order, like every address and port below */
	__u16 orig_port;
	__u16 client_port;
	__u32 backend_ip;
	__u16 backend_port;
	__u16 _pad;
	__u32 client_ip;
	__u32 _pad2;
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
#include <bpf/bpf_endian.h>

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

/* The pod-level cgroups the agent captured, by cgroup id: who a caller can be (connect4). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_CGROUPS_MAX);
	__type(key, __u64);
	__type(value, struct weft_cgroup_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_cgroups SEC(".maps");

/* connect4 -> the agent: connects refused because the caller could not be attributed. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEFT_REFUSED_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_refused SEC(".maps");

/* The agent process (weft_agent_sockops tells its connects from those of others). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEFT_AGENTS_MAX);
	__type(key, __u32);
	__type(value, struct weft_agent_task);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_agent SEC(".maps");

/* weft_agent_sockops -> strict ingress: connections the agent opened, until they close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_AGENT_FLOWS_MAX);
	__type(key, struct weft_lb_flow_key);
	__type(value, __u64); /* socket cookie of the agent's socket */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_agt_flows SEC(".maps");

/* Probe ports of strict pods: strict ingress admits the node address to these only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_PROBES_MAX);
	__type(key, struct weft_dst_key);
	__type(value, struct weft_probe_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_probes SEC(".maps");

/* Socket LB: the service ports connect4 balances, and their backend slots. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_LB_SVCS_MAX);
	__type(key, struct weft_dst_key);
	__type(value, struct weft_lb_svc);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_lb_svcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_LB_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct weft_lb_slot_key);
	__type(value, struct weft_lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_lb_slots SEC(".maps");

/* connect4 -> sockops: what connect4 chose for a balanced socket. Freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct weft_lb_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_lb_socks SEC(".maps");

/* sockops -> strict ingress on the endpoint pod. Entries go at close; the LRU bounds the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_LB_FLOWS_MAX);
	__type(key, struct weft_lb_flow_key);
	__type(value, __u64); /* socket cookie of the client */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_lb_flows SEC(".maps");

/* sockops -> the agent: balanced connections opened and closed, for metrics and access logs. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEFT_LB_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_lb_events SEC(".maps");

/* weft_lb_lost[0]: events the ring buffer had no room for (the agent was not reading). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_lb_lost SEC(".maps");

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

/* The flow key of a sockops socket, as its peer sees the connection (saddr: this end). */
static __always_inline void weft_flow_key(struct bpf_sock_ops *skops, struct weft_lb_flow_key *fk)
{
	fk->saddr = skops->local_ip4;
	fk->daddr = skops->remote_ip4;
	/*
	 * local_port is in host byte order; remote_port is in network order, and on little-endian
	 * machines the kernel hands it in the upper 16 bits (sock_ops_convert_ctx_access shifts it).
	 */
	fk->sport = bpf_htons((__u16)skops->local_port);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	fk->dport = (__u16)(skops->remote_port >> 16);
#else
	fk->dport = (__u16)skops->remote_port;
#endif
}

#endif /* __bpf__ */
#endif /* WEFT_H */
