package drops

import (
	"strings"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/proto"
)

// legs places each stage a flow's packet can be dropped at (see
// conntrackPlaces and ipvsPlaces) on the path model's legs: the leg the
// packet was on when it died.
var legs = map[string]flowpath.LegKind{
	"as the client sent it, before NAT":                     flowpath.Request,
	"as the client sent it, before IPVS":                    flowpath.Request,
	"after DNAT to the real server":                         flowpath.Schedule,
	"after IPVS DNAT to the real server":                    flowpath.Schedule,
	"after DNAT and SNAT":                                   flowpath.SNAT,
	"as the real server sent it, before de-NAT":             flowpath.Reply,
	"straight from the real server, never de-NATed by IPVS": flowpath.Reply,
	"after SNAT reverse, before the VIP is restored":        flowpath.Route,
	"after full de-NAT, back to the client":                 flowpath.ToClient,
	"after IPVS de-NAT, back to the client":                 flowpath.ToClient,
}

// Leg is the leg of the service's path the flow's packet was on when it
// was dropped ("" for a stage the path model does not know).
func (f Flow) Leg() flowpath.LegKind { return legs[f.Stage] }

// Function is the function the drop happened in: the symbol of its
// location without the offset ("ip_error" of "ip_error+0x4a").
func (c Counted) Function() string {
	name, _, _ := strings.Cut(c.Symbol, "+")
	return name
}

// Service is the service of the drop's flow as ipvs.Service.Key names it
// ("TCP 10.1.0.6:8085": the protocol and the VIP the client asked for), ""
// when no flow is known. A firewall-mark service's flow is named by its VIP
// and port too: the mark is not in the packet's tuple.
func (c Counted) Service() string {
	if c.Flow == nil {
		return ""
	}
	return strings.ToUpper(proto.Name(c.Proto)) + " " + c.Flow.VIP.String()
}
