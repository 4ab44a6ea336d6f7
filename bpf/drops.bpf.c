// SPDX-License-Identifier: GPL-2.0
/* lbdoctor's drop tracer: every skb the kernel frees as dropped
 * (skb:kfree_skb), filtered in the kernel by namespace, addresses, ports,
 * protocol and reason, then either counted per (netns, reason, location,
 * flow) or sent to user space as an event. Three entry points carry the same
 * logic: tp_btf, raw tracepoint, classic tracepoint (fallbacks, in order). */
#include "lbdoctor.h"

char __license[] SEC("license") = "GPL";

/* The filters of namespace, protocol, addresses and ports (zero: "any"),
 * set by user space before load and changed in place while the tracer runs
 * (a watcher's services changed between windows): two copies, the one in
 * use filters[filter_gen & 1]. User space writes the other, then moves
 * filter_gen on, so that a drop is judged by one whole filter; what a CPU
 * remembers of the filter's verdicts (struct last_flow) is dropped when
 * filter_gen moved. */
struct filter filters[2] = {};
__u32 filter_gen = 0;
volatile const __u64 ignore_reasons[4] = {}; /* bitmap of reasons < 256 */
volatile const __u8 any_ignored = 0;         /* ignore_reasons has a bit set */
volatile const __u8 send_events = 0;         /* 0: aggregate only */
volatile const __u8 want_stack = 0;          /* record kernel stacks of events */
/* Kernels before 5.17 pass no reason to kfree_skb: never read the argument
 * there (the verifier only checks the branch that runs). */
volatile const __u8 has_reason = 1;
/* Under a flood, wake the reader only once this much is waiting: one wakeup
 * per event would cost more than the event. */
volatile const __u64 wakeup_bytes = 256 << 10;
volatile const __u64 wakeup_gap_ns = 10 * 1000 * 1000;
__u64 last_wakeup_ns = 0; /* shared by all CPUs: a lost race costs one wakeup */
/* The hook of a netfilter drop: for reason netfilter_drop, the frame after
 * nf_hook_slow ([hook_fn_start, hook_fn_end), from kallsyms) is its caller,
 * which tells the hook. find_hook is 0 without drop reasons. The range is
 * set once the tracer runs (reading kallsyms takes long; the window must
 * not wait for it): until then hook_fn_end is 0 and no stack is walked. */
volatile const __u8 find_hook = 0;
volatile const __u32 netfilter_drop = 0;
__u64 hook_fn_start = 0;
__u64 hook_fn_end = 0;
/* Offsets of the classic tracepoint's fields, from its format file. */
volatile const __u32 tp_off_skb = 8;
volatile const __u32 tp_off_location = 16;
volatile const __u32 tp_off_reason = 28;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct agg_key);
	__type(value, __u64);
} agg SEC(".maps");

/* The drops of flows the agg map had no room for, by place: a flood of
 * distinct flows fills agg, but has few places. User space may resize both. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct place_key);
	__type(value, __u64);
} agg_place SEC(".maps");

/* Set once agg was found full (it only grows while the tracer runs): a new
 * flow then goes to agg_place without a failed insert into agg first. */
__u8 agg_full = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct last_flow);
} last_flow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Force the generator to emit these types for bpf2go -type. */
const struct event *unused_event __attribute__((unused));
const struct agg_key *unused_agg_key __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));
const struct last_flow *unused_last_flow __attribute__((unused));
const struct place_key *unused_place_key __attribute__((unused));
const struct filter *unused_filter __attribute__((unused));

/* cur_filter is the filter in use. */
static __always_inline const struct filter *cur_filter(void)
{
	return &filters[filter_gen & 1];
}

static __always_inline void bump(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* What the entry points read of an skb before the common logic runs: tp_btf
 * reads it with plain loads (BTF-typed pointers), the others through
 * bpf_probe_read_kernel. */
struct skb_meta {
	unsigned char *head;
	struct net_device *dev;
	__u32 netns;
	__u32 len;
	__u16 nh;
	__u16 th;
};

static __always_inline void meta_probe_read(struct sk_buff *skb, struct skb_meta *m)
{
	/* Locals, not m->dev: BPF_CORE_READ(m->dev, …) would make the local-only
	 * struct skb_meta part of the relocated access path. */
	struct net *net = 0;
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	m->dev = dev;
	if (dev)
		net = BPF_CORE_READ(dev, nd_net.net);
	if (!net) {
		struct sock *sk = BPF_CORE_READ(skb, sk);
		if (sk)
			net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	}
	m->netns = net ? BPF_CORE_READ(net, ns.inum) : 0;
	m->head = BPF_CORE_READ(skb, head);
	m->nh = BPF_CORE_READ(skb, network_header);
	m->th = BPF_CORE_READ(skb, transport_header);
	m->len = BPF_CORE_READ(skb, len);
}

static __always_inline void map4(struct addr *a, __be32 v4)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->b[10] = 0xff;
	a->b[11] = 0xff;
	__builtin_memcpy(&a->b[12], &v4, 4);
}

static __always_inline int addr_eq(const volatile struct addr *f, const struct addr *a)
{
	const volatile __u64 *x = (const volatile __u64 *)f->b;
	const __u64 *y = (const __u64 *)a->b;
	return x[0] == y[0] && x[1] == y[1];
}

/* bpf_rdonly_cast (kernel 6.2+) turns a kernel address into a typed pointer
 * the program reads with plain loads: no bpf_probe_read_kernel call per
 * packet. On older kernels the loader zeroes the weak symbol and the verifier
 * drops the direct branch. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#define direct_reads() (!!bpf_rdonly_cast)
#define kcast(ptr, type) ((type *)bpf_rdonly_cast((ptr), bpf_core_type_id_kernel(type)))

/* l4_direct fills the ports and TCP flags from the transport header at th
 * (ports sit at the same place in TCP, UDP and SCTP), read as the kernel's
 * union tcp_word_hdr: both ports in one load. */
static __always_inline void l4_direct(unsigned char *th, struct agg_key *k, __u8 *flags)
{
	union tcp_word_hdr *w = kcast(th, union tcp_word_hdr);
	__u32 ports = bpf_ntohl(w->words[0]);
	k->sport = ports >> 16;
	k->dport = ports & 0xffff;
	if (k->proto == IPPROTO_TCP)
		*flags = bpf_ntohl(w->words[3]) >> 16;
}

/* is_icmp: the packet is an ICMP message of its family (ICMPv6 for IPv6),
 * whose type and code the key keeps. */
static __always_inline int is_icmp(const struct agg_key *k)
{
	return k->family == 4 ? k->proto == IPPROTO_ICMP : k->proto == IPPROTO_ICMPV6;
}

/* What the fast paths (fast(), below) found out, for the slow path: the
 * CPU's last-flow slot and, for option-less IPv4, the packet's two raw
 * header words (~0 otherwise). */
struct fast {
	struct last_flow *l;
	__u64 raw_a, raw_b;
};

/* parse_direct reads the IP and transport headers with plain loads. */
static __always_inline int parse_direct(struct skb_meta *m, struct agg_key *k, __u8 *flags, struct fast *f)
{
	unsigned char *nh = m->head + m->nh;
	if (f->raw_a != ~0ULL) {
		/* Option-less IPv4: fast() already holds protocol, addresses and
		 * ports in two words; only the TCP flags are left to read. */
		k->family = 4;
		k->proto = f->raw_a >> 8;
		map4(&k->saddr, f->raw_a >> 32);
		map4(&k->daddr, (__u32)f->raw_b);
		if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP || k->proto == IPPROTO_SCTP) {
			k->sport = bpf_ntohs((__u16)(f->raw_b >> 32));
			k->dport = bpf_ntohs((__u16)(f->raw_b >> 48));
			if (k->proto == IPPROTO_TCP)
				*flags = ((__u8 *)kcast(nh, struct ipv6hdr))[33];
		} else if (k->proto == IPPROTO_ICMP) {
			/* The word's upper half is the ICMP header's first four bytes. */
			k->icmp_type = f->raw_b >> 32;
			k->icmp_code = f->raw_b >> 40;
		}
		return 0;
	}
	__u8 vihl = *(__u8 *)kcast(nh, struct iphdr); /* version and ihl: one load */
	__u32 l4off;
	if (vihl >> 4 == 4) {
		struct iphdr *ip = kcast(nh, struct iphdr);
		k->family = 4;
		k->proto = ip->protocol;
		map4(&k->saddr, ip->saddr);
		map4(&k->daddr, ip->daddr);
		l4off = (vihl & 0xf) * 4;
	} else if (vihl >> 4 == 6) {
		struct ipv6hdr *ip6 = kcast(nh, struct ipv6hdr);
		k->family = 6;
		k->proto = ip6->nexthdr;
		__u32 *s = (__u32 *)k->saddr.b, *d = (__u32 *)k->daddr.b;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			s[i] = ip6->saddr.in6_u.u6_addr32[i];
			d[i] = ip6->daddr.in6_u.u6_addr32[i];
		}
		l4off = sizeof(struct ipv6hdr);
	} else {
		return -1;
	}
	if (m->th != (__u16)~0U && m->th > m->nh)
		l4off = m->th - m->nh;
	if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP || k->proto == IPPROTO_SCTP) {
		l4_direct(nh + (l4off & 0xffff), k, flags);
	} else if (is_icmp(k)) {
		/* Type and code lead the header: one load of its first word. */
		__u32 w = kcast(nh + (l4off & 0xffff), union tcp_word_hdr)->words[0];
		k->icmp_type = w;
		k->icmp_code = w >> 8;
	}
	return 0;
}

/* parse reads the IP and transport headers the skb points at: directly when
 * the kernel allows, else in one bpf_probe_read_kernel for the common case
 * (no IP options). */
static __always_inline int parse(struct skb_meta *m, struct agg_key *k, __u8 *flags, struct fast *f)
{
	if (!m->head || m->nh == (__u16)~0U)
		return -1;
	if (direct_reads())
		return parse_direct(m, k, flags, f);
	/* An IPv6 header and the first 16 bytes of the transport header. */
	__u8 buf[sizeof(struct ipv6hdr) + 16];
	if (bpf_probe_read_kernel(buf, sizeof(buf), m->head + m->nh))
		return -1;
	__u32 l4off;
	if ((buf[0] >> 4) == 4) {
		struct iphdr *ip = (struct iphdr *)buf;
		k->family = 4;
		k->proto = ip->protocol;
		map4(&k->saddr, ip->saddr);
		map4(&k->daddr, ip->daddr);
		l4off = ip->ihl * 4;
	} else if ((buf[0] >> 4) == 6) {
		struct ipv6hdr *ip6 = (struct ipv6hdr *)buf;
		k->family = 6;
		k->proto = ip6->nexthdr;
		__builtin_memcpy(k->saddr.b, &ip6->saddr, 16);
		__builtin_memcpy(k->daddr.b, &ip6->daddr, 16);
		l4off = sizeof(struct ipv6hdr);
	} else {
		return -1;
	}
	if (m->th != (__u16)~0U && m->th > m->nh)
		l4off = m->th - m->nh;
	int icmp = is_icmp(k);
	if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP && k->proto != IPPROTO_SCTP && !icmp)
		return 0;
	__u8 l4[14];
	if (l4off == sizeof(struct iphdr) && k->family == 4) {
		__builtin_memcpy(l4, buf + sizeof(struct iphdr), sizeof(l4));
	} else if (l4off == sizeof(struct ipv6hdr) && k->family == 6) {
		__builtin_memcpy(l4, buf + sizeof(struct ipv6hdr), sizeof(l4));
	} else if (bpf_probe_read_kernel(l4, sizeof(l4), m->head + m->nh + (l4off & 0xff))) {
		return 0;
	}
	if (icmp) {
		k->icmp_type = l4[0];
		k->icmp_code = l4[1];
		return 0;
	}
	k->sport = ((__u16)l4[0] << 8) | l4[1];
	k->dport = ((__u16)l4[2] << 8) | l4[3];
	if (k->proto == IPPROTO_TCP)
		*flags = l4[13];
	return 0;
}

/* addr_eq_w compares a filter's address with one given as its two words. */
static __always_inline int addr_eq_w(const volatile struct addr *f, __u64 w0, __u64 w1)
{
	const volatile __u64 *x = (const volatile __u64 *)f->b;
	return x[0] == w0 && x[1] == w1;
}

/* wanted is the address, port and protocol filter, of the packet's source
 * (s0, s1) and destination (d0, d1) addresses, as the words of struct addr,
 * and pp: protocol << 32 | source port << 16 | destination port. A global
 * function: the verifier checks it once, not again for every state its
 * caller reaches it in (each way of parsing a packet: on 6.1, 23,636
 * instructions processed for the tp_btf program inlined, 5,028 so).
 * Scalars only: a global function's pointer arguments need 5.12. */
__noinline int wanted(__u64 s0, __u64 s1, __u64 d0, __u64 d1, __u64 pp)
{
	const struct filter *flt = cur_filter();
	__u8 proto = pp >> 32;
	__u16 sport = pp >> 16, dport = pp;
	if (flt->proto && proto != flt->proto)
		return 0;
	__u32 n_addrs = flt->n_addrs, n_ports = flt->n_ports;
	if (n_addrs) {
		int hit = 0;
		for (int i = 0; i < MAX_ADDRS; i++) {
			if (i >= n_addrs)
				break;
			if (addr_eq_w(&flt->addrs[i], s0, s1) || addr_eq_w(&flt->addrs[i], d0, d1)) {
				hit = 1;
				break;
			}
		}
		if (!hit)
			return 0;
	}
	if (n_ports) {
		int hit = 0;
		for (int i = 0; i < MAX_PORTS; i++) {
			if (i >= n_ports)
				break;
			if (flt->ports[i] == sport || flt->ports[i] == dport) {
				hit = 1;
				break;
			}
		}
		if (!hit)
			return 0;
	}
	return 1;
}

static __always_inline int add_to(void *map, void *k, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, k);
	if (v) {
		*v += n;
		return 0;
	}
	long err = bpf_map_update_elem(map, k, &n, BPF_NOEXIST);
	if (err == 0)
		return 0;
	/* Another program on this CPU may have inserted it meanwhile. */
	v = bpf_map_lookup_elem(map, k);
	if (v) {
		*v += n;
		return 0;
	}
	return err;
}

/* add_place counts n drops of a flow agg has no room for by its place
 * alone; what does not fit there either is lost, and counted as such. */
static __noinline void add_place(struct agg_key *k, __u64 n)
{
	struct place_key p = {.location = k->location, .netns = k->netns, .reason = k->reason, .caller = k->caller};
	if (add_to(&agg_place, &p, n) == 0)
		return;
	__u32 idx = COUNTER_AGG_LOST;
	__u64 *lost = bpf_map_lookup_elem(&counters, &idx);
	if (lost)
		*lost += n;
}

static __always_inline void add_agg(struct agg_key *k, __u64 n)
{
	if (!agg_full) {
		long err = add_to(&agg, k, n);
		if (err == 0)
			return;
		if (err == -7) /* -E2BIG: agg is full */
			agg_full = 1;
	} else {
		__u64 *v = bpf_map_lookup_elem(&agg, k);
		if (v) {
			*v += n;
			return;
		}
	}
	add_place(k, n);
}

static __always_inline int keys_eq(const struct agg_key *a, const struct agg_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
#pragma unroll
	for (int i = 0; i < sizeof(*a) / 8; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* The bytes of an option-less IPv4 header's second word that identify a
 * flow: protocol and source address, not TTL and checksum. */
#define RAW_A_MASK 0xffffffff0000ff00ULL

/* fast is the cheap first look at a drop that passed the namespace and
 * reason filters, before the entry points read anything more of the skb:
 * for option-less IPv4, two raw header words decide. A packet like the last
 * one the filters turned away on this CPU is turned away, and in aggregate
 * mode a packet of the flow counted last is counted, both without parsing
 * it into a key. Returns 1 when the drop is dealt with. */
static __always_inline int fast(struct skb_meta *m, __u64 location, __u32 reason, struct fast *f)
{
	__u32 zero = 0;
	f->raw_a = ~0ULL;
	f->raw_b = ~0ULL;
	f->l = bpf_map_lookup_elem(&last_flow, &zero);
	struct last_flow *l = f->l;
	if (!l || !direct_reads() || !m->head || m->nh == (__u16)~0U)
		return 0;
	/* Read as the 40 bytes of an IPv6 header: an untrusted pointer may be
	 * read anywhere inside the type it is cast to, and those bytes cover an
	 * option-less IPv4 header and its ports. */
	__u64 *w = (__u64 *)kcast(m->head + m->nh, struct ipv6hdr);
	if (*(__u8 *)w != 0x45)
		return 0;
	f->raw_a = w[1] & RAW_A_MASK;
	f->raw_b = w[2];
	/* What this CPU remembers was judged by a filter since changed. */
	if (l->gen != filter_gen)
		return 0;
	/* netns and reason sit side by side in the key: one compare. */
	if (!send_events && l->count && l->raw_a == f->raw_a && l->raw_b == f->raw_b &&
	    l->key.location == location && *(__u64 *)&l->key.netns == (m->netns | (__u64)reason << 32)) {
		l->count++;
		return 1;
	}
	return l->rej_a == (f->raw_a | 1) && l->rej_b == f->raw_b;
}

/* hook_caller walks the first frames of the kernel stack to the one after
 * nf_hook_slow. Only netfilter drops pay for it, and under a flood only the
 * first drop of a flow on a CPU: the fast path counts the rest under the
 * key (and caller) of the flow counted last; and a drop at the same place of
 * a packet to the same destination takes the caller found last (a SYN flood
 * from many clients to one VIP walks the stack once per CPU). */
static __noinline __u64 hook_caller(void *ctx)
{
	__u64 ips[HOOK_FRAMES];
	long n = bpf_get_stack(ctx, ips, sizeof(ips), 0);
	if (n <= 0)
		return 0;
	n /= sizeof(__u64);
#pragma unroll
	for (int i = 0; i + 1 < HOOK_FRAMES; i++) {
		if (i + 1 >= n)
			break;
		if (ips[i] >= hook_fn_start && ips[i] < hook_fn_end)
			return ips[i + 1];
	}
	return 0;
}

static __always_inline int handle(void *ctx, struct skb_meta *m, __u64 location, __u32 reason, struct fast *f)
{
	struct last_flow *l = f->l;
	__u64 raw_a = f->raw_a, raw_b = f->raw_b;
	const struct filter *flt = cur_filter();
	struct agg_key k = {};
	__u8 flags = 0;
	__u32 gen = filter_gen;
	if (l && l->gen != gen) {
		/* The filter changed: the flow counted last was counted under the
		 * old one (flushed as it is), the packet turned away last is
		 * judged again. */
		if (l->count && !send_events)
			add_agg(&l->key, l->count);
		l->count = 0;
		l->rej_a = 0;
		l->rej_b = 0;
		l->gen = gen;
	}
	k.location = location;
	k.netns = m->netns;
	k.reason = reason;
	if (parse(m, &k, &flags, f) < 0) {
		/* Not IP: only unfiltered tracing wants it. */
		if (flt->n_addrs || flt->n_ports || flt->proto)
			return 0;
		k.family = 0;
	} else if (!wanted(((__u64 *)k.saddr.b)[0], ((__u64 *)k.saddr.b)[1], ((__u64 *)k.daddr.b)[0], ((__u64 *)k.daddr.b)[1],
			   (__u64)k.proto << 32 | (__u32)k.sport << 16 | k.dport)) {
		if (l && raw_a != ~0ULL) {
			l->rej_a = raw_a | 1;
			l->rej_b = raw_b;
		}
		return 0;
	}

	/* Aggregate mode: what matched is what the aggregates hold (plus what
	 * did not fit), so the fast path keeps no separate total. */
	if (!send_events) {
		if (find_hook && reason == netfilter_drop && hook_fn_end) {
			if (l && l->hook_loc == k.location && l->hook_proto == k.proto && l->hook_dport == k.dport &&
			    addr_eq((const volatile struct addr *)&l->hook_daddr, &k.daddr)) {
				k.caller = l->hook_caller;
			} else {
				k.caller = hook_caller(ctx);
				if (l) {
					l->hook_loc = k.location;
					l->hook_caller = k.caller;
					l->hook_daddr = k.daddr;
					l->hook_dport = k.dport;
					l->hook_proto = k.proto;
				}
			}
		}
		if (!l) {
			add_agg(&k, 1);
			return 0;
		}
		if (l->count && keys_eq(&l->key, &k)) {
			l->count++;
			return 0;
		}
		if (l->count)
			add_agg(&l->key, l->count);
		l->key = k;
		l->count = 1;
		l->raw_a = raw_a;
		l->raw_b = raw_b;
		return 0;
	}

	bump(COUNTER_MATCHED);
	/* The first record after the reader caught up wakes it at once, so a
	 * lone drop shows without delay, but at most every wakeup_gap_ns: a
	 * reader that keeps up with a flood must not be woken per event. */
	__u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 now = bpf_ktime_get_ns();
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		bump(COUNTER_RING_LOST);
		return 0;
	}
	e->ts_ns = now;
	e->location = location;
	e->netns = m->netns;
	e->reason = reason;
	e->len = m->len;
	e->cpu = bpf_get_smp_processor_id();
	e->stack_id = want_stack ? bpf_get_stackid(ctx, &stacks, 0) : -1;
	e->saddr = k.saddr;
	e->daddr = k.daddr;
	e->sport = k.sport;
	e->dport = k.dport;
	e->proto = k.proto;
	e->family = k.family;
	e->tcp_flags = flags;
	e->icmp_type = k.icmp_type;
	e->icmp_code = k.icmp_code;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	e->ifindex = 0;
	__builtin_memset(e->ifname, 0, sizeof(e->ifname));
	struct net_device *dev = m->dev;
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
	}
	__u64 wake = BPF_RB_NO_WAKEUP;
	if (waiting >= wakeup_bytes || (waiting == 0 && now - last_wakeup_ns > wakeup_gap_ns)) {
		wake = BPF_RB_FORCE_WAKEUP;
		last_wakeup_ns = now;
	}
	bpf_ringbuf_submit(e, wake);
	return 0;
}

/* early rejects what the filters can judge before the packet is read. */
static __always_inline int early_reject(__u32 netns, __u32 reason)
{
	/* Bound the index itself, in one register: clang would otherwise test
	 * reason in one register and index with another, which the verifier
	 * cannot follow. */
	__u32 word = reason >> 6;
	asm volatile("" : "+r"(word));
	if (any_ignored && word < 4 && (ignore_reasons[word] & (1ULL << (reason & 63))))
		return 1;
	__u32 want = cur_filter()->netns;
	return want && netns != want;
}

/* tp_btf_netns is the namespace a drop happened in: its device's, else
 * (no device on some output paths) its socket's. */
static __always_inline __u32 tp_btf_netns(struct sk_buff *skb, struct net_device *dev)
{
	struct net *net = dev ? dev->nd_net.net : 0;
	if (!net) {
		struct sock *sk = skb->sk;
		if (sk)
			net = sk->__sk_common.skc_net.net;
	}
	return net ? net->ns.inum : 0;
}

/* tp_btf_fast is the whole program for most drops of a flood, kept apart
 * from the rest so that the compiler gives it every register: a drop in
 * another namespace is turned away, and a packet like the last one this CPU
 * counted (or turned away) is dealt with, with five checked loads in all.
 * Returns 0 when the drop needs the full look (tp_btf_slow). */
static __always_inline int tp_btf_fast(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	struct skb_meta m = {};
	m.dev = skb->dev;
	if (!m.dev || !direct_reads())
		return 0;
	m.netns = tp_btf_netns(skb, m.dev);
	__u32 want = cur_filter()->netns;
	if (want && m.netns != want)
		return 1;
	if (any_ignored)
		return 0;
	m.head = skb->head;
	m.nh = skb->network_header;
	struct fast f;
	return fast(&m, ctx[1], has_reason ? (__u32)ctx[2] : 0, &f);
}

/* tp_btf_slow is everything else: a call of its own, so that its register
 * pressure does not spill into the fast path. */
static __noinline int tp_btf_slow(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	__u32 reason = has_reason ? (__u32)ctx[2] : 0;
	struct skb_meta m = {};
	m.dev = skb->dev;
	m.netns = tp_btf_netns(skb, m.dev);
	if (early_reject(m.netns, reason))
		return 0;
	m.head = skb->head;
	m.nh = skb->network_header;
	struct fast f;
	if (fast(&m, ctx[1], reason, &f))
		return 0;
	m.th = skb->transport_header;
	if (send_events) /* aggregate mode has no use for the length */
		m.len = skb->len;
	return handle(ctx, &m, ctx[1], reason, &f);
}

SEC("tp_btf/kfree_skb")
int drop_tp_btf(__u64 *ctx)
{
	/* With events and no address, port or protocol filter the fast paths
	 * can settle nothing (every packet is sent), so they are skipped. */
	const struct filter *flt = cur_filter();
	int may_settle = !send_events || flt->n_addrs || flt->n_ports || flt->proto;
	if (may_settle && tp_btf_fast(ctx))
		return 0;
	return tp_btf_slow(ctx);
}

SEC("raw_tp/kfree_skb")
int drop_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	struct skb_meta m = {};
	__u32 reason = has_reason ? (__u32)ctx->args[2] : 0;
	meta_probe_read((struct sk_buff *)ctx->args[0], &m);
	if (early_reject(m.netns, reason))
		return 0;
	struct fast f;
	if (fast(&m, ctx->args[1], reason, &f))
		return 0;
	return handle(ctx, &m, ctx->args[1], reason, &f);
}

SEC("tracepoint/skb/kfree_skb")
int drop_tracepoint(void *ctx)
{
	__u64 skb = 0, location = 0;
	__u32 reason = 0;
	bpf_probe_read_kernel(&skb, sizeof(skb), ctx + tp_off_skb);
	bpf_probe_read_kernel(&location, sizeof(location), ctx + tp_off_location);
	if (has_reason && tp_off_reason)
		bpf_probe_read_kernel(&reason, sizeof(reason), ctx + tp_off_reason);
	struct skb_meta m = {};
	meta_probe_read((struct sk_buff *)skb, &m);
	if (early_reject(m.netns, reason))
		return 0;
	struct fast f;
	if (fast(&m, location, reason, &f))
		return 0;
	return handle(ctx, &m, location, reason, &f);
}
