package probes

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/probes/rules"
)

// dnatTo is the destination of a DNAT rule: nft's `dnat to ADDR[:PORT]`
// (`dnat ip to …` in an inet table) and iptables' `--to-destination
// ADDR[:PORT]` ([ADDR]:PORT for IPv6).
var dnatTo = regexp.MustCompile(`(?:dnat(?: ip6?)? to|--to-destination) (\[[0-9a-fA-F:.]+\](?::\d+)?|[0-9.]+(?::\d+)?|[0-9a-fA-F:]+)`)

// RuleBackends are the destinations of the DNAT rules that name the
// selected VIP's address: the backends of a VIP that IPVS does not serve,
// known from the rules before any flow shows them in conntrack. A rule
// without a port keeps the VIP's. Ranges and maps are not followed.
func RuleBackends(rs []rules.Rule, sel Selector) []netip.AddrPort {
	var out []netip.AddrPort
	vip := sel.VIP.Addr().String()
	for _, r := range rs {
		if r.Target != "DNAT" || !slices.Contains(strings.FieldsFunc(r.Spec, func(c rune) bool { return c == ' ' || c == '/' }), vip) {
			continue
		}
		m := dnatTo.FindStringSubmatch(r.Spec)
		if m == nil {
			continue
		}
		b, err := netip.ParseAddrPort(m[1])
		if err != nil {
			a, aerr := netip.ParseAddr(strings.Trim(m[1], "[]"))
			if aerr != nil {
				continue
			}
			b = netip.AddrPortFrom(a, sel.VIP.Port())
		}
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}
