package drops

import "strings"

// Netfilter hooks, as nft names them.
const (
	HookIngress     = "ingress"
	HookPrerouting  = "prerouting"
	HookInput       = "input"
	HookForward     = "forward"
	HookOutput      = "output"
	HookPostrouting = "postrouting"
)

// hookCallers maps the functions that run a netfilter hook (through the
// inline nf_hook / NF_HOOK, so nf_hook_slow's caller on the stack) to the
// hook, for IPv4 and IPv6, on the kernels lbdoctor runs on (6.1 to 6.18).
// IPVS sends its NAT'd packets through LOCAL_OUT from its xmit functions.
var hookCallers = map[string]string{
	"ip_rcv":                   HookPrerouting,
	"ip_sublist_rcv":           HookPrerouting,
	"nf_hook_slow_list":        HookPrerouting, // only NF_HOOK_LIST calls it: ip(v6)_sublist_rcv
	"ipv6_rcv":                 HookPrerouting,
	"ipv6_list_rcv":            HookPrerouting,
	"ip6_sublist_rcv":          HookPrerouting,
	"ip_local_deliver":         HookInput,
	"ip6_input":                HookInput,
	"ip_forward":               HookForward,
	"ip6_forward":              HookForward,
	"__ip_local_out":           HookOutput,
	"ip_local_out":             HookOutput,
	"__ip6_local_out":          HookOutput,
	"ip6_local_out":            HookOutput,
	"ip_vs_nat_xmit":           HookOutput,
	"ip_vs_nat_xmit_v6":        HookOutput,
	"ip_vs_send_or_cont":       HookOutput,
	"ip_vs_nat_send_or_cont":   HookOutput,
	"ip_output":                HookPostrouting,
	"ip_mc_output":             HookPostrouting,
	"ip6_output":               HookPostrouting,
	"ip6_finish_output":        HookPostrouting,
	"__netif_receive_skb_core": HookIngress,
	"nf_hook_ingress":          HookIngress,
}

// HookOf names the netfilter hook that nf_hook_slow's caller runs, from the
// caller's symbol ("ip_local_deliver+0x119", with or without an offset, a
// compiler suffix such as ".cold" or ".isra.0", or a [module]); "" when the
// function is not one lbdoctor knows.
func HookOf(caller string) string {
	name, _, _ := strings.Cut(caller, " ") // [module]
	name, _, _ = strings.Cut(name, "+")
	name, _, _ = strings.Cut(name, ".")
	return hookCallers[name]
}
