// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup_skb/ingress, attached only to meshed pods in strict mTLS mode: a pod accepts new TCP
 * connections only when one of these holds:
 *   - this node's agent opened it: weft_agent_sockops, on the agent's own cgroup, recorded its
 *     4-tuple in weft_agt_flows before the SYN left (every connection into a pod of this
 *     node that the mesh carries, from this node's pods or through the tunnel from another
 *     node, is opened by this node's agent; so are its health checks);
 *   - connect4 balanced it itself (socket LB) from a meshed pod of this node straight to this
 *     pod, recorded in weft_lb_flows by sockops before its SYN left. The agent balances a
 *     service port that way only when no authorization policy selects its endpoints, so such
 *     a connection is one the agent would have admitted and forwarded;
 *   - it comes from the node address to one of the pod's probe ports (weft_probes): the
 *     kubelet's readiness, liveness and startup probes;
 *   - it is the pod's own: from loopback or from the pod's own address.
 * Nothing is admitted for its source address alone: a host-network process on this node or
 * on another, or NodePort traffic SNATed to a node address, is dropped unless it is a probe
 * port the pod declared.
 *
 * What is refused: every TCP segment that fails the above and is delivered to a LISTENING
 * socket of the pod. The hook runs in sk_filter() after the socket lookup, so skb->sk tells
 * what the segment is for:
 *   - a SYN is delivered to the listener (also a SYN that hits a TIME_WAIT socket: TCP hands
 *     it over to the listener first);
 *   - the final ACK of a handshake is filtered against the listener too (tcp_v4_rcv runs
 *     tcp_filter on req->rsk_listener), which also covers a SYN-cookie ACK that arrives
 *     without any SYN having passed;
 *   - segments of established connections go to the connection's own socket.
 * So refusing "TCP to a listener" that is not admitted refuses exactly the new inbound
 * connections, while replies to connections the pod opened itself (to anything, meshed or
 * not) keep flowing. Matching "SYN without ACK" instead would miss the SYN-cookie ACK.
 * Connections accepted before strict mode was switched on are not cut.
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

static __always_inline int ingress4(struct __sk_buff *skb)
{
	struct weft_lb_flow_key fk = {};
	struct weft_dst_key probe = {};
	struct weft_pod_val *pod;
	struct weft_config *cfg;
	__u32 addrs[2]; /* saddr, daddr: adjacent in the IPv4 header */
	__u16 ports[2]; /* source, destination: the first 4 bytes of the TCP header */
	__u32 saddr, daddr;
	__u8 vihl;

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

	/* A TCP segment for a listener (checked by the caller): its ports follow the IP header. */
	if (bpf_skb_load_bytes(skb, IP4_IHL_OFF, &vihl, 1))
		return DROP;
	if (bpf_skb_load_bytes(skb, (vihl & 0x0f) * 4, ports, sizeof(ports)))
		return DROP;
	fk.saddr = saddr;
	fk.daddr = daddr;
	fk.sport = ports[0];
	fk.dport = ports[1];
	if (bpf_map_lookup_elem(&weft_agt_flows, &fk))
		return PASS;
	if (bpf_map_lookup_elem(&weft_lb_flows, &fk))
		return PASS;

	cfg = weft_get_config();
	if (cfg && cfg->node_ip && saddr == cfg->node_ip) {
		probe.ip = daddr;
		probe.port = ports[1];
		if (bpf_map_lookup_elem(&weft_probes, &probe))
			return PASS;
	}
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
