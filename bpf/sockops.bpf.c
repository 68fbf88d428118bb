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
 * This is also where a sockmap/sk_msg fast path would register sockets.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "weft.h"

SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	struct weft_orig_dst *orig;
	struct weft_tuple_key key = {};
	__u64 cookie;

	if (skops->family != AF_INET)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
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
		/* args[1] is the new state. */
		if (skops->args[1] == BPF_TCP_CLOSE) {
			cookie = bpf_get_socket_cookie(skops);
			bpf_map_delete_elem(&weft_cookie_dst, &cookie);
		}
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
