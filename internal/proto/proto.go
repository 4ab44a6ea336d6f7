// Package proto names IP protocols the way ipvsadm, conntrack and nft write
// them, so every layer of lbdoctor prints and parses them alike.
package proto

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// names are /etc/protocols' keywords for what a load balancer sees: its
// services' protocols, ICMP, VRRP (keepalived), tunnels and IPsec.
var names = map[uint8]string{
	unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp",
	unix.IPPROTO_ICMPV6: "icmpv6", unix.IPPROTO_SCTP: "sctp",
	unix.IPPROTO_HOPOPTS: "hopopt", unix.IPPROTO_IGMP: "igmp", unix.IPPROTO_IPIP: "ipip",
	unix.IPPROTO_IPV6: "ipv6", unix.IPPROTO_GRE: "gre", unix.IPPROTO_ESP: "esp",
	unix.IPPROTO_AH: "ah", 89: "ospf", 112: "vrrp",
}

// Name is the lower-case name of protocol number p ("proto-N" when unnamed).
func Name(p uint8) string {
	if n, ok := names[p]; ok {
		return n
	}
	return fmt.Sprintf("proto-%d", p)
}

// Number is the protocol number of a name Name returns (0 when unknown).
func Number(name string) uint8 {
	for n, s := range names {
		if s == name {
			return n
		}
	}
	return 0
}

// Parse reads a protocol given by name or number, 1-255, also as Name
// writes an unnamed one ("proto-N"). 0 means "any protocol" to the callers,
// so it is refused like an unknown name.
func Parse(s string) (uint8, bool) {
	if n := Number(s); n != 0 {
		return n, true
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "proto-"), 10, 8)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint8(n), true
}

// HasPorts says whether protocol p carries ports where TCP and UDP do.
func HasPorts(p uint8) bool {
	return p == unix.IPPROTO_TCP || p == unix.IPPROTO_UDP || p == unix.IPPROTO_SCTP
}

// IpvsadmFlag is ipvsadm's service flag for a protocol: -t or -u.
func IpvsadmFlag(name string) string {
	if name == "udp" {
		return "-u"
	}
	return "-t"
}
