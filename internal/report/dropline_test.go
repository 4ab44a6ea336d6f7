package report

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// A dropped ICMP message says which one it is (the kernel side reads its
// type and code): an LB's own redirect is told from an unreachable at a
// glance, in the drops verb's lines and JSON, events and summary alike.
func TestDropLineICMP(t *testing.T) {
	icmp := func(family, proto, typ, code uint8, src, dst string) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Netns: 7, Family: family, Proto: proto, ICMPType: typ, ICMPCode: code,
			Src: netip.AddrPortFrom(netip.MustParseAddr(src), 0), Dst: netip.AddrPortFrom(netip.MustParseAddr(dst), 0)}, Count: 2},
			ReasonName: "NETFILTER_DROP", Symbol: "nf_hook_slow+0x9b"}
	}
	tests := []struct {
		name, want string
		c          drops.Counted
	}{
		{"an IPv4 redirect", "icmp 10.1.0.5 → 10.1.0.50 (redirect, type 5 code 1)", icmp(4, 1, 5, 1, "10.1.0.5", "10.1.0.50")},
		{"an IPv6 redirect", "icmpv6 fd00:1::5 → fd00:1::50 (redirect message, type 137 code 0)", icmp(6, 58, 137, 0, "fd00:1::5", "fd00:1::50")},
		{"an echo reply: type 0", "icmp 10.1.0.5 → 10.1.0.3 (echo reply, type 0 code 0)", icmp(4, 1, 0, 0, "10.1.0.5", "10.1.0.3")},
		{"a type IANA has not named", "icmp 10.1.0.5 → 10.1.0.3 (type 99 code 2)", icmp(4, 1, 99, 2, "10.1.0.5", "10.1.0.3")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for kind, d := range map[string]Drop{"summary": DropOf(tt.c, "lb"), "event": DropEventOf(tt.c, "lb")} {
				if got := DropLine(d); !strings.Contains(got, ": "+tt.want) {
					t.Errorf("DropLine(%s of %s) = %q, want it to end %q", kind, tt.name, got, tt.want)
				}
				var js bytes.Buffer
				if err := DropsJSONLine(&js, d); err != nil || !strings.Contains(js.String(), `"icmp":"`+tt.want[strings.Index(tt.want, "(")+1:len(tt.want)-1]+`"`) {
					t.Errorf("DropsJSONLine(%s of %s) = %s, %v; want its icmp", kind, tt.name, js.String(), err)
				}
			}
		})
	}
	if d := DropOf(drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Family: 4, Proto: 6, ICMPType: 5}}}, ""); d.ICMP != "" {
		t.Errorf("DropOf(TCP).ICMP = %q, want none", d.ICMP)
	}
}
