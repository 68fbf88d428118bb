// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops on the agent's own cgroup: marks the connections this node's agent opens, so that
 * strict ingress (bpf/ingress.bpf.c) admits them into strict pods and nothing else that
 * merely comes from the node's address.
 *
 * At TCP_CONNECT_CB (in the connect() call, before the SYN leaves, with the source address
 * and port already chosen) a socket of the agent process records its 4-tuple, as the
 * destination will see it, in weft_agt_flows; at close the entry goes (STATE_CB, enabled
 * per socket for those sockets only). The LRU bounds what a lost close would leave.
 *
 * The agent process is told by its tgid in its own pid namespace (weft_agent, written by the
 * agent at start): the agent's cgroup may hold other processes (a test runner, a shell in
 * the agent's container), and none of them may open connections that pass as the agent's.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft.h"

static __always_inline int is_task(__u32 slot)
{
	struct bpf_pidns_info ns = {};
	struct weft_agent_task *a;

	a = bpf_map_lookup_elem(&weft_agent, &slot);
	if (!a || !a->tgid)
		return 0;
	/* Fails (non-zero) when the current task is not in that pid namespace. */
	if (bpf_get_ns_current_pid_tgid(a->pidns_dev, a->pidns_ino, &ns, sizeof(ns)))
		return 0;
	return ns.tgid == a->tgid;
}

/* Either agent of the node: during a handover the old one drains beside the new one. */
static __always_inline int is_agent(void)
{
	return is_task(0) || is_task(1);
}

SEC("sockops")
int weft_agent_sockops(struct bpf_sock_ops *skops)
{
	struct weft_lb_flow_key fk = {};
	__u64 cookie;

	if (skops->family != AF_INET)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (!is_agent())
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		weft_flow_key(skops, &fk);
		bpf_map_update_elem(&weft_agt_flows, &fk, &cookie, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						      BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* Only sockets marked above have STATE_CB on. args[1] is the new state. */
		if (skops->args[1] == BPF_TCP_CLOSE) {
			weft_flow_key(skops, &fk);
			bpf_map_delete_elem(&weft_agt_flows, &fk);
		}
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
