// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4 on each meshed pod's cgroup: a TCP connect to a destination in weft_dests
 * (flag WEFT_DST_F_REDIRECT) is rewritten to the agent's outbound listener, and the original
 * destination is remembered by socket cookie for sockops (-> the agent) and getpeername4
 * (-> the application). Anything else is left alone.
 *
 * Who is calling: the pod whose captured cgroup (weft_cgroups) contains the calling task's
 * cgroup, at any depth. The program is attached to the pod-level cgroup and runs for every
 * task below it too, and in Kubernetes those tasks live in child cgroups (one per container:
 * `<pod>/cri-containerd-<id>.scope` with the systemd driver, `<pod>/<id>` with cgroupfs; the
 * pause container beside them; and whatever a container makes below its own). A connect to a
 * mesh destination whose caller cannot be attributed that way is refused (EPERM) and reported
 * to the agent through weft_refused: it is never sent on as an anonymous caller.
 *
 * Socket LB: a service port flagged WEFT_DST_F_LB is balanced here instead, over the slots
 * the agent keeps in weft_lb_slots (healthy endpoints, a weight being a number of slots),
 * and the connection goes straight to the endpoint: no agent on its path. The choice is kept
 * in the socket's storage for sockops (events for the agent's metrics and access log, and
 * the flow that strict ingress on the endpoint must admit).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "weft.h"

/*
 * The id of the captured pod cgroup that holds the calling task, or 0. The ancestors are
 * looked up from the root down, by level: a pod's cgroup sits at a fixed level, so however
 * deep a container nests its own cgroups, the walk finds the pod within the bound.
 */
static __always_inline __u64 caller_pod(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	__u64 anc;
	int level;

	/* A task in the pod cgroup itself (no container cgroups). */
	if (bpf_map_lookup_elem(&weft_cgroups, &id))
		return id;
	/*
	 * Verifier: a loop with a constant bound, which the verifier walks iteration by iteration
	 * (bounded loops, Linux 5.3+). The helper answers 0 for a level below the task's own
	 * cgroup: the task is not in any pod cgroup deeper than that.
	 */
	for (level = 1; level <= WEFT_CGROUP_LEVELS_MAX; level++) {
		anc = bpf_get_current_ancestor_cgroup_id(level);
		if (!anc)
			break;
		if (bpf_map_lookup_elem(&weft_cgroups, &anc))
			return anc;
	}
	return 0;
}

/* Reports a refused connect to the agent (best effort: a full ring loses the report, not the refusal). */
static __always_inline void report_refusal(const struct weft_dst_key *key, __u32 tgid)
{
	struct weft_refusal r = {};

	r.cgroup_id = bpf_get_current_cgroup_id();
	r.pid = tgid;
	r.ip = key->ip;
	r.port = key->port;
	bpf_ringbuf_output(&weft_refused, &r, sizeof(r), 0);
}

/* Picks a backend for a balanced service port; false when it has none (then: the agent). */
static __always_inline int balance(struct bpf_sock_addr *ctx, const struct weft_dst_key *key,
				   const struct weft_orig_dst *orig, __u64 cookie)
{
	struct weft_lb_slot_key slot = {};
	struct weft_lb_backend *be;
	struct weft_lb_sock *ls;
	struct weft_lb_svc *svc;
	struct bpf_sock *sk;

	svc = bpf_map_lookup_elem(&weft_lb_svcs, key);
	if (!svc || !svc->slots || svc->slots > WEFT_LB_SLOTS_MAX)
		return 0;
	slot.ip = key->ip;
	slot.port = key->port;
	slot.slot = (__u16)(bpf_get_prandom_u32() % svc->slots);
	be = bpf_map_lookup_elem(&weft_lb_slots, &slot);
	if (!be || !be->ip)
		return 0;

	/* Verifier: ctx->sk may be NULL and must be a full socket for socket storage. */
	sk = ctx->sk;
	if (!sk)
		return 0;
	ls = bpf_sk_storage_get(&weft_lb_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ls)
		return 0;
	/* getpeername4 answers from the cookie map, balanced or not. */
	if (bpf_map_update_elem(&weft_cookie_dst, &cookie, orig, BPF_ANY)) {
		bpf_sk_storage_delete(&weft_lb_socks, sk);
		return 0;
	}
	ls->cgroup_id = orig->cgroup_id;
	ls->start_ns = 0;
	ls->flags = 0;
	ls->orig_ip = key->ip;
	ls->orig_port = key->port;
	ls->backend_ip = be->ip;
	ls->backend_port = be->port;

	ctx->user_ip4 = be->ip;
	ctx->user_port = (__u32)be->port;
	return 1;
}

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx)
{
	struct weft_dst_key key = {};
	struct weft_dst_val *dst;
	struct weft_config *cfg;
	struct weft_orig_dst orig = {};
	__u64 cookie, pid_tgid;

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;

	/*
	 * Verifier: user_ip4 and user_port are read with full 4-byte loads (narrower loads of
	 * user_port are refused by older kernels); the port is in the low 16 bits, network order.
	 */
	key.ip = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;

	dst = bpf_map_lookup_elem(&weft_dests, &key);
	if (!dst || !(dst->flags & WEFT_DST_F_REDIRECT))
		return 1;

	cfg = weft_get_config();
	/* Not configured yet (node_ip 0): redirecting would send the pod to 0.0.0.0. */
	if (!cfg || !cfg->node_ip || !cfg->outbound_port)
		return 1;

	/* A pod dialing the agent's own listener directly is not redirected onto itself. */
	if (key.ip == cfg->node_ip && key.port == cfg->outbound_port)
		return 1;

	pid_tgid = bpf_get_current_pid_tgid();
	orig.cgroup_id = caller_pod();
	if (!orig.cgroup_id) {
		report_refusal(&key, pid_tgid >> 32);
		return 0;
	}
	orig.ip = key.ip;
	orig.port = key.port;
	orig.pid = pid_tgid >> 32;
	orig.tid = (__u32)pid_tgid;

	cookie = bpf_get_socket_cookie(ctx);
	if ((dst->flags & WEFT_DST_F_LB) && balance(ctx, &key, &orig, cookie))
		return 1;
	/*
	 * If the entry cannot be stored the agent could not tell where the connection was going:
	 * leave the connection alone rather than redirect it blind.
	 */
	if (bpf_map_update_elem(&weft_cookie_dst, &cookie, &orig, BPF_ANY))
		return 1;

	/* Verifier: user_ip4/user_port are written with 4-byte stores only. */
	ctx->user_ip4 = cfg->node_ip;
	ctx->user_port = (__u32)cfg->outbound_port;
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
