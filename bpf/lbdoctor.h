/* SPDX-License-Identifier: GPL-2.0 */
/* The one header of lbdoctor's BPF programs: the kernel structures they read
 * (a minimal CO-RE subset: field offsets are relocated against the running
 * kernel's BTF at load time) and the records they share with user space
 * (generated into Go by bpf2go -type, never mirrored by hand). */
#ifndef LBDOCTOR_H
#define LBDOCTOR_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define PRESERVE __attribute__((preserve_access_index))

struct ns_common {
	unsigned int inum;
} PRESERVE;

struct net {
	struct ns_common ns;
} PRESERVE;

typedef struct {
	struct net *net;
} PRESERVE possible_net_t;

struct net_device {
	char name[16];
	int ifindex;
	possible_net_t nd_net;
} PRESERVE;

struct sock_common {
	possible_net_t skc_net;
} PRESERVE;

struct sock {
	struct sock_common __sk_common;
} PRESERVE;

struct sk_buff {
	struct net_device *dev;
	struct sock *sk;
	unsigned int len;
	__be16 protocol;
	__u16 transport_header;
	__u16 network_header;
	unsigned char *head;
} PRESERVE;

#define MAX_ADDRS 16
#define MAX_PORTS 16
/* Frames read to find nf_hook_slow's caller: the tracer's own frames, the
 * drop function, nft or x_tables, nf_hook_slow (and nf_hook_slow_list). */
#define HOOK_FRAMES 12

/* Counters kept per CPU, read and summed by user space. */
enum counter {
	COUNTER_MATCHED = 0,   /* drops that passed the filters */
	COUNTER_RING_LOST = 1, /* events the ring buffer had no room for */
	COUNTER_AGG_LOST = 2,  /* drops neither aggregate map had room for */
	COUNTER_MAX = 3,
};

/* An address: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). */
struct addr {
	__u8 b[16];
};

/* One dropped packet, sent to user space in event mode. */
struct event {
	__u64 ts_ns;
	__u64 location;
	__u32 netns;
	__u32 ifindex;
	__u32 reason;
	__u32 len;
	__u32 cpu;
	__s32 stack_id; /* kernel stack in the stacks map, or <0 */
	struct addr saddr;
	struct addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family; /* 4, 6, or 0 when the packet is not IP */
	__u8 tcp_flags;
	__u8 icmp_type; /* ICMP or ICMPv6: the message's type and code, else 0 */
	__u8 icmp_code;
	__u8 _pad[5];
	char ifname[16];
};

/* What aggregate mode counts drops by: netns, reason, location, the caller
 * of nf_hook_slow (netfilter drops) and flow. */
struct agg_key {
	__u64 location;
	__u32 netns;
	__u32 reason;
	struct addr saddr;
	struct addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	/* ICMP or ICMPv6: the message's type and code (a redirect the LB sent
	 * is not a packet of the flow it is about), else 0. */
	__u8 icmp_type;
	__u8 icmp_code;
	/* For a NETFILTER_DROP: the return address in the function that ran
	 * the hook (ip_rcv, ip_local_deliver, ip_forward, __ip_local_out,
	 * ip_output, …), the frame after nf_hook_slow on the stack; it tells
	 * the hook. 0 for other reasons, or when the stack did not show it. */
	__u64 caller;
};

/* What drops are counted by when the flow map is full: the place alone, so
 * that counts per (netns, reason, location) stay exact and only the flows
 * are not itemised. */
struct place_key {
	__u64 location;
	__u32 netns;
	__u32 reason;
	__u64 caller; /* as in agg_key */
};

/* The last flow a CPU counted, and how often since it was flushed into the
 * aggregate map: a drop flood is mostly one flow, counted without a hash. */
struct last_flow {
	struct agg_key key;
	__u64 count;
	/* The raw header words of key's packets when they are option-less
	 * IPv4 (protocol and addresses; addresses and ports), ~0 otherwise:
	 * the next packet of the flow is recognised without parsing it. */
	__u64 raw_a;
	__u64 raw_b;
	/* The same words of the last packet the address, port and protocol
	 * filters turned away (rej_a's low byte is 1 when set): the filters'
	 * verdict on the next one of its kind, without parsing it. */
	__u64 rej_a;
	__u64 rej_b;
	/* The caller of nf_hook_slow the stack showed last for a netfilter
	 * drop at hook_loc of a packet to hook_daddr:hook_dport over
	 * hook_proto: the next such drop (a SYN flood from many clients to a
	 * VIP) takes it without walking the stack again. */
	__u64 hook_loc;
	__u64 hook_caller;
	struct addr hook_daddr;
	__u16 hook_dport;
	__u8 hook_proto;
	__u8 _pad;
	/* The filter_gen of the filter the fields above were judged by. */
	__u32 gen;
};

/* What the tracer lets through (see filters in drops.bpf.c); zero: any. */
struct filter {
	__u32 netns;
	__u32 n_addrs;
	__u32 n_ports;
	__u8 proto;
	__u8 _pad[3];
	struct addr addrs[MAX_ADDRS];
	__u16 ports[MAX_PORTS];
};

#endif
