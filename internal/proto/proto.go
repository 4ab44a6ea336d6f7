// Package proto names IP protocols the way ipvsadm, conntrack and nft write
// them, so every layer of lbdoctor prints and parses them alike.
package proto

import (
	"fmt"

	"golang.org/x/sys/unix"
)

var names = map[uint8]string{
	unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp",
	unix.IPPROTO_ICMPV6: "icmpv6", unix.IPPROTO_SCTP: "sctp",
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

// IpvsadmFlag is ipvsadm's service flag for a protocol: -t or -u.
func IpvsadmFlag(name string) string {
	if name == "udp" {
		return "-u"
	}
	return "-t"
}
