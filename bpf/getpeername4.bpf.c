// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getpeername4 on each meshed pod's cgroup: a redirected socket reports the address
 * the application dialed (the original destination), not the agent's listener.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft.h"

SEC("cgroup/getpeername4")
int weft_getpeername4(struct bpf_sock_addr *ctx)
{
	struct weft_orig_dst *orig;
	__u64 cookie;

	cookie = bpf_get_socket_cookie(ctx);
	orig = bpf_map_lookup_elem(&weft_cookie_dst, &cookie);
	if (!orig)
		return 1;

	/* Verifier: 4-byte stores only into user_ip4/user_port. */
	ctx->user_ip4 = orig->ip;
	ctx->user_port = (__u32)orig->port;
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
