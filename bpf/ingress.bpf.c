// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup_skb/ingress, attached only to meshed pods in strict mTLS mode: a pod accepts TCP
 * connections only from weft agents (this node's address, where the local agent and the
 * kubelet's probes come from, or an address in weft_agents), from loopback and from itself.
 *
 * What is refused: every TCP segment from another source that is delivered to a LISTENING
 * socket of the pod. The hook runs in sk_filter() after the socket lookup, so skb->sk tells
 * what the segment is for:
 *   - a SYN is delivered to the listener (also a SYN that hits a TIME_WAIT socket: TCP hands
 *     it over to the listener first);
 *   - the final ACK of a handshake is filtered against the listener too (tcp_v4_rcv runs
 *     tcp_filter on req->rsk_listener), which also covers a SYN-cookie ACK that arrives
 *     without any SYN having passed;
 *   - segments of established connections go to the connection's own socket.
 * So refusing "TCP to a listener from a non-agent" refuses exactly the new inbound
 * connections, while replies to connections the pod opened itself (to anything, meshed or
 * not) keep flowing. Matching "SYN without ACK" instead would miss the SYN-cookie ACK, and
 * matching the destination port would need the pod's list of listening ports.
 * Connections accepted before strict mode was switched on are not cut.
 *
 * Also admitted: a connection that connect4 balanced itself (socket LB) from a meshed pod of
 * this node straight to this pod, recorded in weft_lb_flows by sockops before its SYN left.
 * The agent balances a service port that way only when no authorization policy selects its
 * endpoints, so such a connection is one the agent would have admitted and forwarded.
 *
 * Non-TCP traffic is allowed. IPv6: weft agents speak IPv4, so an IPv6 connection to a
 * listener is admitted only from ::1 or from the pod's own address.
 *
 * A pod address missing from weft_pods is enforced: this program is attached to strict pods
 * only, so strict mode must not wait for the map to be synced (fail closed). An entry
 * without WEFT_POD_F_STRICT lets the agent relax a pod at once, before it unlinks.
 *
 * Return 1 to pass the packet, 0 to drop it.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "weft.h"

#define PASS 1
#define DROP 0

/* Offsets of the addresses in the fixed IP headers (skb data starts at the network header). */
#define IP4_SADDR_OFF 12
#define IP4_IHL_OFF 0
#define IP6_SADDR_OFF 8
#define IP6_DADDR_OFF 24

static __always_inline int is_tcp_listener(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	/* Verifier: skb->sk may be NULL, and state/protocol are readable on full sockets only. */
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	return sk->protocol == IPPROTO_TCP && sk->state == BPF_TCP_LISTEN;
}

/* True when this segment belongs to a connection that connect4 balanced to this pod. */
static __always_inline int balanced_flow(struct __sk_buff *skb, __u32 saddr, __u32 daddr)
{
	struct weft_lb_flow_key fk = {};
	__u16 ports[2]; /* source, destination: the first 4 bytes of the TCP header */
	__u8 vihl;

	if (bpf_skb_load_bytes(skb, IP4_IHL_OFF, &vihl, 1))
		return 0;
	if (bpf_skb_load_bytes(skb, (vihl & 0x0f) * 4, ports, sizeof(ports)))
		return 0;
	fk.saddr = saddr;
	fk.daddr = daddr;
	fk.sport = ports[0];
	fk.dport = ports[1];
	return bpf_map_lookup_elem(&weft_lb_flows, &fk) != 0;
}

static __always_inline int ingress4(struct __sk_buff *skb)
{
	struct weft_pod_val *pod;
	struct weft_config *cfg;
	__u32 addrs[2]; /* saddr, daddr: adjacent in the IPv4 header */
	__u32 saddr, daddr;

	/*
	 * bpf_skb_load_bytes rather than direct packet access: the bytes may sit in a non-linear
	 * part of the skb, and the helper needs no bounds checks against data_end.
	 */
	if (bpf_skb_load_bytes(skb, IP4_SADDR_OFF, addrs, sizeof(addrs)))
		return PASS; /* not even an IPv4 header: not a TCP segment for a socket */
	saddr = addrs[0];
	daddr = addrs[1];

	if ((bpf_ntohl(saddr) >> 24) == 127 || saddr == daddr)
		return PASS;

	pod = bpf_map_lookup_elem(&weft_pods, &daddr);
	if (pod && !(pod->flags & WEFT_POD_F_STRICT))
		return PASS;

	cfg = weft_get_config();
	if (cfg && cfg->node_ip && saddr == cfg->node_ip)
		return PASS;
	if (bpf_map_lookup_elem(&weft_agents, &saddr))
		return PASS;
	if (balanced_flow(skb, saddr, daddr))
		return PASS;

	return DROP;
}

static __always_inline int ingress6(struct __sk_buff *skb)
{
	__u32 addrs[8]; /* saddr[4], daddr[4] */

	if (bpf_skb_load_bytes(skb, IP6_SADDR_OFF, addrs, sizeof(addrs)))
		return PASS;
	/* ::1 */
	if (!addrs[0] && !addrs[1] && !addrs[2] && addrs[3] == bpf_htonl(1))
		return PASS;
	if (addrs[0] == addrs[4] && addrs[1] == addrs[5] && addrs[2] == addrs[6] &&
	    addrs[3] == addrs[7])
		return PASS;
	return DROP;
}

SEC("cgroup_skb/ingress")
int weft_ingress(struct __sk_buff *skb)
{
	/* Only new inbound connections are filtered: see the top of this file. */
	if (!is_tcp_listener(skb))
		return PASS;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		return ingress4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ingress6(skb);
	return PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
