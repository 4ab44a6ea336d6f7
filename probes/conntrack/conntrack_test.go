package conntrack_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// Real traffic through an nft DNAT (+SNAT) load balancer in a netns leaves
// the conntrack entries an operator must learn to read.
func TestFlowsOfANATLoadBalancer(t *testing.T) {
	tests := []struct {
		name        string
		snat, fwd   bool
		dropReplies bool // a forward-chain rule drops the real server's SYN-ACKs
		wantOK      bool
		wantState   string
		wantHave    []string
		wantLack    []string
		wantReplyTo string // reply tuple's destination: client (no SNAT) or LB (SNAT)
	}{
		{"working full NAT", true, true, false, true, "", []string{"SEEN_REPLY", "ASSURED", "SRC_NAT", "DST_NAT"}, nil, "lb"},
		{"reply never returns (no SNAT)", false, true, false, false, "SYN_SENT", []string{"DST_NAT"}, []string{"SEEN_REPLY", "SRC_NAT"}, "client"},
		{"reply dropped in forward", true, true, true, false, "SYN_RECV", []string{"SEEN_REPLY", "SRC_NAT", "DST_NAT"}, []string{"ASSURED"}, "lb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := testkit.Lab(t, lab.OneArm)
			vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
			testkit.Serve(t, l.Real, ":8085")
			testkit.NftNAT(t, l.LB, vip, real, tt.snat)
			fwd := "0"
			if tt.fwd {
				fwd = "1"
			}
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", fwd)
			if tt.dropReplies {
				testkit.Run(t, l.LB, "nft", "add table ip flt; add chain ip flt ffilter { type filter hook forward priority 0; }; "+
					"add rule ip flt ffilter ip saddr "+l.RealIP.String()+" tcp flags & (syn|ack) == syn|ack counter drop")
			}
			res := lab.Probe(context.Background(), l.Client, vip, time.Second)
			if res.OK != tt.wantOK {
				t.Fatalf("client → VIP ok = %v (%v), want %v", res.OK, res.Err, tt.wantOK)
			}
			toVIP := conntrack.Filter{Field: conntrack.OrigDst, Addr: l.VIP, Port: 8085, Proto: unix.IPPROTO_TCP}
			flows, err := conntrack.Flows(l.LB, toVIP)
			if err != nil {
				t.Fatal(err)
			}
			if len(flows) != 1 {
				t.Fatalf("Flows(orig dst %s) = %d flows %v, want 1", vip, len(flows), flows)
			}
			f := flows[0]
			t.Log(f)
			// Scan reads the same flow's head in place, filtered or not,
			// and decodes the whole of it on demand. A working flow still
			// closes while it is read (FIN_WAIT → TIME_WAIT), so Scan may see
			// the state of the read before it or of the one after it.
			line := func(f conntrack.Flow) string {
				return fmt.Sprintf("%d %s %s %s seen_reply=%v assured=%v", f.ID, f.Orig, f.Reply, f.State, f.HasStatus("SEEN_REPLY"), f.HasStatus("ASSURED"))
			}
			for _, flt := range []conntrack.Filter{toVIP, {}} {
				var got []string
				_, err := conntrack.Scan(l.LB, flt, func(h conntrack.Head, decode func() (conntrack.Flow, error)) error {
					if h.Orig.Dst != vip {
						return nil
					}
					d, err := decode()
					got = append(got, fmt.Sprintf("%d %s %s %s seen_reply=%v assured=%v", d.ID, h.Orig, h.Reply, h.State(), h.Has(conntrack.StatusSeenReply), h.Has(conntrack.StatusAssured)))
					return err
				})
				want := []string{line(f)}
				if after, _ := conntrack.Flows(l.LB, toVIP); len(after) == 1 && line(after[0]) != want[0] {
					want = append(want, line(after[0]))
				}
				if err != nil || len(got) != 1 || !slices.Contains(want, got[0]) {
					t.Errorf("Scan(%+v) = %q, %v; want one of %q", flt, got, err, want)
				}
			}
			if f.Orig.Src.Addr() != l.ClientIP || f.Orig.Dst != vip || f.Reply.Src != real {
				t.Errorf("flow tuples = %s / %s, want %s → %s, reply from %s", f.Orig, f.Reply, l.ClientIP, vip, real)
			}
			replyTo := map[string]netip.Addr{"lb": l.LBIP, "client": l.ClientIP}[tt.wantReplyTo]
			if f.Reply.Dst.Addr() != replyTo {
				t.Errorf("reply goes to %s, want %s (%s)", f.Reply.Dst.Addr(), replyTo, tt.wantReplyTo)
			}
			if tt.wantState != "" && f.State != tt.wantState {
				t.Errorf("state = %s, want %s", f.State, tt.wantState)
			}
			if tt.wantOK && f.State != "TIME_WAIT" && f.State != "ESTABLISHED" && f.State != "FIN_WAIT" && f.State != "CLOSE_WAIT" && f.State != "LAST_ACK" && f.State != "CLOSE" {
				t.Errorf("working flow in state %s", f.State)
			}
			for _, s := range tt.wantHave {
				if !f.HasStatus(s) {
					t.Errorf("status %v lacks %s", f.Status, s)
				}
			}
			for _, s := range tt.wantLack {
				if f.HasStatus(s) {
					t.Errorf("status %v has %s", f.Status, s)
				}
			}
			// The same flow is found from the real server's side, and a
			// filter for another VIP finds nothing.
			if fs, _ := conntrack.Flows(l.LB, conntrack.Filter{Field: conntrack.ReplySrc, Addr: l.RealIP}); len(fs) != 1 || fs[0].ID != f.ID {
				t.Errorf("Flows(reply src %s) = %v, want the same flow", l.RealIP, fs)
			}
			if fs, _ := conntrack.Flows(l.LB, conntrack.Filter{Field: conntrack.OrigDst, Addr: netip.MustParseAddr("10.1.0.7")}); len(fs) != 0 {
				t.Errorf("Flows(orig dst 10.1.0.7) = %v, want none", fs)
			}
		})
	}
}

func TestStatsAndEvents(t *testing.T) {
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8085)
	testkit.Serve(t, l.Real, ":8085")
	testkit.NftNAT(t, l.LB, vip, real, true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")

	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan conntrack.Event, 64)
	done := make(chan error, 1)
	go func() { done <- conntrack.Watch(ctx, l.LB, []netip.Addr{l.VIP}, events) }()
	// The listener joins its groups asynchronously: connect until an event
	// shows up, for at most 5 s.
	var first conntrack.Event
	deadline := time.After(5 * time.Second)
wait:
	for {
		if res := lab.Probe(context.Background(), l.Client, vip, time.Second); !res.OK {
			t.Fatalf("probe: %v", res.Err)
		}
		select {
		case first = <-events:
			break wait
		case <-time.After(300 * time.Millisecond):
		case <-deadline:
			t.Fatal("no conntrack event for the VIP within 5 s")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if first.Type == "unknown" || first.Flow.Orig.Dst != vip {
		t.Errorf("first event = %s %s, want a new, update or destroy event for %s", first.Type, first.Flow, vip)
	}
	st, err := conntrack.ReadStats(l.LB)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries < 1 || st.MaxEntries == 0 || len(st.PerCPU) == 0 {
		t.Errorf("ReadStats() = %+v, want ≥1 entry, a max and per-CPU rows", st)
	}
}
