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

func TestCaptureStory(t *testing.T) {
	legs := func(n ...uint64) []Leg {
		segs := [][]string{{"SYN"}, {"SYN"}, {"SYN-ACK"}, {"SYN-ACK"}}
		var out []Leg
		for i, k := range []LegKind{Request, Schedule, Reply, ToClient} {
			l := Leg{Kind: k, Packets: n[i], Counted: true, Source: SourceCapture}
			if n[i] > 0 {
				l.Segments = segs[i]
			}
			if k == Schedule {
				l.Name = "IPVS→real .40"
			}
			out = append(out, l)
		}
		return out
	}
	tests := []struct {
		name string
		legs []Leg
		want string
	}{
		{"stage 3: the SYN-ACK never leaves", legs(3, 3, 5, 0), "SYN-ACK seen arriving from real .40 (leg 3), never leaving toward the client (leg 4)"},
		{"stage 1: no reply comes back", legs(3, 3, 0, 0), "SYN seen leaving toward real .40 (leg 2), nothing arriving back from real .40 (leg 3)"},
		{"the request is not sent on", legs(3, 0, 0, 0), "SYN seen arriving from the client (leg 1), never leaving toward real .40 (leg 2)"},
		{"nothing seen", legs(0, 0, 0, 0), "no packet of its flows seen: nothing arriving from the client (leg 1)"},
		{"every leg", legs(3, 3, 3, 3), "every leg seen: 3 packets leaving toward the client (leg 4)"},
		{"no capture", []Leg{{Kind: Request, Packets: 3, Counted: true, Source: "IPVS stats"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (Path{Real: "10.1.0.40:8085", Legs: tt.legs}).CaptureStory(); got != tt.want {
				t.Errorf("CaptureStory(%s) = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}
