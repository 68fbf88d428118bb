// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops on each meshed pod's cgroup. When a connection that connect4 redirected is
 * established, its original destination is copied from the socket-cookie map to the
 * client-tuple map: the agent only knows the accepted socket's peer (client ip:port), not
 * the client's cookie. The copy is made at ACTIVE_ESTABLISHED, before the client's final ACK
 * leaves, so the entry exists before the agent can accept the connection.
 *
 * The cookie entry is dropped when the socket closes (STATE_CB, enabled per socket for
 * redirected sockets only), so short-lived connections do not push long-lived ones out of
 * the LRU that getpeername4 reads. The tuple entry is NOT dropped at close: the client may
 * close before the agent has accepted and read it; the agent deletes it after reading, and
 * the LRU bounds what the agent never reads.
 *
 * Sockets that connect4 balanced itself (socket LB: weft_lb_socks storage) never reach the
 * agent, so they skip the tuple map. Instead: before the SYN leaves (TCP_CONNECT_CB) their
 * flow is recorded for strict ingress on the endpoint pod; once established and when closed,
 * an event goes to the agent through weft_lb_events, for its metrics and access log.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "weft.h"

static __always_inline void lb_event(struct bpf_sock_ops *skops, struct weft_lb_sock *ls, __u32 type, __u64 cookie)
{
	struct weft_lb_event ev = {};
	__u32 zero = 0;
	__u64 *lost;

	ev.type = type;
	ev.cookie = cookie;
	ev.cgroup_id = ls->cgroup_id;
	ev.orig_ip = ls->orig_ip;
	ev.orig_port = ls->orig_port;
	ev.backend_ip = ls->backend_ip;
	ev.backend_port = ls->backend_port;
	ev.client_ip = skops->local_ip4;
	ev.client_port = bpf_htons((__u16)skops->local_port);
	if (type == WEFT_LB_EV_CLOSE) {
		__u64 acked = skops->bytes_acked, received = skops->bytes_received;
		/*
		 * The client's socket: what it sent (and was acknowledged) and what it received. TCP
		 * counts sequence space: the SYN (always, for an established socket) and each FIN.
		 */
		acked -= 1 + ((ls->flags & WEFT_LB_F_FIN_ACKED) ? 1 : 0);
		received -= (ls->flags & WEFT_LB_F_FIN_IN) ? 1 : 0;
		ev.duration_ns = bpf_ktime_get_ns() - ls->start_ns;
		ev.bytes_sent = (__s64)acked < 0 ? 0 : acked;
		ev.bytes_received = (__s64)received < 0 ? 0 : received;
	}
	if (bpf_ringbuf_output(&weft_lb_events, &ev, sizeof(ev), 0)) {
		lost = bpf_map_lookup_elem(&weft_lb_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
}

/*
 * Which FINs the byte counters hold, from the state changes: CLOSE_WAIT and CLOSING come with
 * the peer's FIN, FIN_WAIT2 with the ACK of ours; a close from FIN_WAIT2 (to TIME_WAIT) comes
 * with the peer's FIN, one from CLOSING or LAST_ACK with the ACK of ours. (A reset in those
 * last states is counted as that normal end: one byte off, at most, each way.)
 */
static __always_inline void note_fins(struct weft_lb_sock *ls, __u32 from, __u32 to)
{
	if (to == BPF_TCP_CLOSE_WAIT || to == BPF_TCP_CLOSING)
		ls->flags |= WEFT_LB_F_FIN_IN;
	if (to == BPF_TCP_FIN_WAIT2)
		ls->flags |= WEFT_LB_F_FIN_ACKED;
	if (to == BPF_TCP_CLOSE && from == BPF_TCP_FIN_WAIT2)
		ls->flags |= WEFT_LB_F_FIN_IN;
	if (to == BPF_TCP_CLOSE && (from == BPF_TCP_CLOSING || from == BPF_TCP_LAST_ACK))
		ls->flags |= WEFT_LB_F_FIN_ACKED;
}

/* A balanced socket (socket LB): connect4 left its choice in the socket's storage. */
static __always_inline struct weft_lb_sock *lb_sock(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	/* Verifier: skops->sk may be NULL (request and timewait sockets). */
	if (!sk)
		return 0;
	return bpf_sk_storage_get(&weft_lb_socks, sk, 0, 0);
}

SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	struct weft_lb_flow_key fk = {};
	struct weft_orig_dst *orig;
	struct weft_tuple_key key = {};
	struct weft_lb_sock *ls;
	__u64 cookie;

	if (skops->family != AF_INET)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		ls = lb_sock(skops);
		if (!ls)
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		weft_flow_key(skops, &fk);
		bpf_map_update_elem(&weft_lb_flows, &fk, &cookie, BPF_ANY);
		/* At close the flow goes, established or not (a refused connect closes too). */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						      BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		ls = lb_sock(skops);
		if (ls) {
			ls->start_ns = bpf_ktime_get_ns();
			lb_event(skops, ls, WEFT_LB_EV_OPEN, cookie);
			return 1;
		}
		orig = bpf_map_lookup_elem(&weft_cookie_dst, &cookie);
		if (!orig)
			return 1;
		key.ip = skops->local_ip4;
		/* local_port is in host byte order, unlike remote_port: convert for the key. */
		key.port = bpf_htons((__u16)skops->local_port);
		bpf_map_update_elem(&weft_tuple_dst, &key, orig, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						      BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[0] is the old state, args[1] the new one. */
		ls = lb_sock(skops);
		if (ls)
			note_fins(ls, skops->args[0], skops->args[1]);
		if (skops->args[1] == BPF_TCP_CLOSE) {
			cookie = bpf_get_socket_cookie(skops);
			bpf_map_delete_elem(&weft_cookie_dst, &cookie);
			if (ls) {
				weft_flow_key(skops, &fk);
				bpf_map_delete_elem(&weft_lb_flows, &fk);
				/* Only connections that were opened report a close. */
				if (ls->start_ns)
					lb_event(skops, ls, WEFT_LB_EV_CLOSE, cookie);
			}
		}
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
