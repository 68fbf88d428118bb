// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_skb verdict on the agent's own sockets: the L4 fast path. Once the agent has accepted a
 * redirected connection, authorized it and connected the upstream over plain TCP, it puts
 * both sockets in the maps below and pairs them in weft_spl_peer. From then on every
 * skb received on one socket is handed, without a copy to user space, to the egress of its
 * peer, and the agent only watches for FIN and RST (src/capture/splice.ts).
 *
 * Attached as BPF_SK_SKB_VERDICT (no stream parser): the kernel runs it from the socket's
 * data_ready on each skb as it is read off the receive queue, and queues redirected skbs on the
 * peer's psock; a kernel worker writes them into the peer's send queue (skb_send_sock), with
 * the peer's send buffer as back-pressure: until then the skb stays charged to the receiving
 * socket, whose window closes.
 *
 * Both maps are private to the agent process that loads this object (not pinned): the sockets
 * they hold belong to that process and close with it, and a kernel socket leaves every sockmap
 * when it closes (sock_map_close). Nothing of a dead agent can linger in them.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft.h"

/*
 * Two socket maps, both keyed by socket cookie, values inserted by fd from user space:
 *   weft_spl_in   the sockets whose incoming bytes this program redirects (it is attached to
 *                 this map: a socket runs it from the moment it enters);
 *   weft_spl_out  the redirect targets (no program).
 * With a single map, a socket would run the verdict before its peer was in the map as a
 * target, and the bytes of that moment would be dropped. The agent fills weft_spl_out and
 * weft_spl_peer first, then weft_spl_in.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WEFT_SPLICE_MAX);
	__type(key, __u64);
	__type(value, __u64);
} weft_spl_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WEFT_SPLICE_MAX);
	__type(key, __u64);
	__type(value, __u64);
} weft_spl_out SEC(".maps");

/* Socket cookie -> its peer and its byte counter. Written by user space, counted here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_SPLICE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct weft_splice_val);
} weft_spl_peer SEC(".maps");

/*
 * SEC("sk_skb") rather than "sk_skb/verdict": libbpf 1.1 does not know the latter. The kernel
 * does not check an sk_skb program's expected attach type, so the addon attaches it to the
 * sockhash as BPF_SK_SKB_VERDICT all the same.
 */
SEC("sk_skb")
int weft_splice_verdict(struct __sk_buff *skb)
{
	struct weft_splice_val *v;
	__u64 cookie;

	/*
	 * A FIN often comes as an skb of its own, without payload. Its news is already in the
	 * socket (RCV_SHUTDOWN, which user space polls for); the skb itself must go, and only
	 * SK_DROP is safe for an empty one. Redirected, the kernel's worker would send 0 bytes
	 * to the peer, take that for a hard error and set EPIPE on the peer (sk_psock_backlog).
	 * Passed, it is queued on this socket, through the same worker whenever skbs redirected
	 * to this socket are still waiting there, with the same 0-byte EPIPE, on this socket.
	 */
	if (!skb->len)
		return SK_DROP;
	cookie = bpf_get_socket_cookie(skb);
	v = bpf_map_lookup_elem(&weft_spl_peer, &cookie);
	/*
	 * No pairing (being taken apart): SK_PASS keeps the bytes on this socket, readable by
	 * recv(); SK_DROP would lose bytes TCP has already acknowledged.
	 */
	if (!v)
		return SK_PASS;
	__sync_fetch_and_add(&v->bytes, skb->len);
	/* flags 0: to the peer's egress (BPF_F_INGRESS would be its receive queue). */
	return bpf_sk_redirect_hash(skb, &weft_spl_out, &v->peer, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
