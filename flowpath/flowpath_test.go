package flowpath

import "testing"

func TestPathString(t *testing.T) {
	tests := []struct {
		name string
		p    Path
		want string
	}{
		{"the issue's example", Path{Legs: []Leg{
			{Kind: Request, Name: "client→VIP", Status: OK, Packets: 13, Counted: true},
			{Kind: Schedule, Name: "IPVS→real .40", Status: OK, Packets: 13, Counted: true},
			{Kind: SNAT, Name: "SNAT", Status: OK, Flows: 3},
			{Kind: Reply, Name: "SYN-ACK real→LB", Status: OK, Packets: 13, Counted: true},
			{Kind: DeSNAT, Name: "de-SNAT", Status: Implied, Note: "PREROUTING"},
			{Kind: Route, Name: "route", Status: Stopped, Note: "10.1.0.3 not local, forwarding off"},
		}, Stops: []Stop{{Leg: Route, Reason: "IP_INADDRERRORS", Function: "ip_error", Count: 13}}},
			"client→VIP ✓ 13 · IPVS→real .40 ✓ 13 · SNAT ✓ · SYN-ACK real→LB ✓ 13 · de-SNAT (PREROUTING) · route: 10.1.0.3 not local, forwarding off · ✗ ip_error IP_INADDRERRORS ×13"},
		{"quiet, unknown and not used legs; a joined stop", Path{Legs: []Leg{
			{Kind: Request, Name: "client→VIP", Status: Stopped, Packets: 0, Counted: true},
			{Kind: Schedule, Name: "IPVS→real .40", Status: Quiet, Counted: true},
			{Kind: SNAT, Name: "SNAT", Status: NotUsed},
			{Kind: Reply, Name: "reply real→LB", Status: Unknown},
		}, Stops: []Stop{{Leg: Request, Reason: "NETFILTER_DROP", Function: "nf_hook_slow", Hook: "input", Cause: "policy DROP", Count: 6}}},
			"client→VIP 0 · IPVS→real .40 0 · reply real→LB ? · ✗ nf_hook_slow NETFILTER_DROP ×6 in input: policy DROP"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("Path(%s).String() = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestComplete(t *testing.T) {
	ok := Leg{Status: OK}
	tests := []struct {
		name string
		p    Path
		want bool
	}{
		{"every leg crossed", Path{Legs: []Leg{ok, {Status: NotUsed}, {Status: Implied}}}, true},
		{"a quiet leg", Path{Legs: []Leg{ok, {Status: Quiet}}}, false},
		{"a stop", Path{Legs: []Leg{ok}, Stops: []Stop{{Count: 1}}}, false},
	}
	for _, tt := range tests {
		if got := tt.p.Complete(); got != tt.want {
			t.Errorf("Path(%s).Complete() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
