package window_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/window"
)

// One watcher, three windows, one tracer: an nft DNAT VIP whose SYNs die
// in ip_error (forwarding off). Each window counts exactly the SYNs sent
// since the last one ended (those sent between two windows count in the
// next), none of an earlier window's; the VIP moved to another backend
// between windows 2 and 3 is traced in window 3 from its first read (the
// filter set in place then: the new backend's address); the program is loaded
// once (one id, one load) and gone after Close.
func TestWatcherKeepsTheTracer(t *testing.T) {
	testkit.Tracefs(t)
	l, vip := testkit.DNATLab(t, 1)
	sel := probes.Selector{VIP: vip}
	const length = 400 * time.Millisecond
	// The forwarded connections' last packets (a FIN retransmitted for
	// minutes) must not die in the windows: they are let through first.
	settle := func(t *testing.T) {
		testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
		time.Sleep(500 * time.Millisecond)
		testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "0")
	}
	settle(t)
	syns := func(t *testing.T, n int) {
		t.Helper()
		for range n {
			// One SYN each: its retransmission would come after 1 s.
			if res := lab.Probe(context.Background(), l.Client, vip, 150*time.Millisecond); res.OK {
				t.Fatalf("a connection to %s went through: the LB forwards", vip)
			}
		}
	}
	prog := drops.ProgramName(os.Getpid())
	during := 0        // SYNs each window sends once open
	var cur *testing.T // the running subtest
	w := window.NewWatcher(l.LB, sel, window.Options{Drops: true, Opened: func(time.Duration) { syns(cur, during) }})
	closed := false
	defer func() {
		if !closed {
			w.Close()
		}
	}()
	newReal := netip.MustParseAddr("10.1.0.51")
	tests := []struct {
		name       string
		before     func(t *testing.T) // between the last window and this one
		during     int                // SYNs sent while the window is open
		wantTracer string
		want       uint64 // drops counted by the window
		wantDst    netip.Addr
	}{
		{"first window: loads the tracer, counts the drops of its own", func(*testing.T) {}, 2, "attached", 2, l.RealIP},
		{"second window: only the SYNs sent since, between the windows too", func(t *testing.T) { syns(t, 3) }, 1, "kept", 4, l.RealIP},
		{"third window: a backend added between windows is traced", func(t *testing.T) {
			testkit.Run(t, l.Real, "ip", "addr", "add", newReal.String()+"/24", "dev", "eth0")
			testkit.Run(t, l.LB, "nft", fmt.Sprintf("flush chain ip lbdtest pre; add rule ip lbdtest pre ip daddr %s tcp dport %d counter dnat to %s:%d", vip.Addr(), vip.Port(), newReal, vip.Port()))
			// One connection forwarded to it: conntrack shows the backend.
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
			for try := 0; !lab.Probe(context.Background(), l.Client, vip, time.Second).OK; try++ {
				if try == 2 {
					t.Fatalf("no connection to %s through the LB to %s", vip, newReal)
				}
			}
			settle(t)
			// Sent before the window's first read gave the filter the
			// new backend: not seen (the filter knows only the old one).
			syns(t, 2)
		}, 1, "kept", 1, newReal},
	}
	var ids []ebpf.ProgramID
	for i, tt := range tests {
		ok := t.Run(tt.name, func(t *testing.T) {
			cur = t
			tt.before(t)
			during = tt.during
			snap, err := w.Next(context.Background(), length)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Window == nil || snap.Drops == nil {
				t.Fatalf("window %d = %+v, drops %+v, errors %v; want a window with drops", i+1, snap.Window, snap.Drops, snap.Errors)
			}
			if got := snap.Window.Tracer; got != tt.wantTracer {
				t.Errorf("window %d: tracer %q, want %q (skipped: %v)", i+1, got, tt.wantTracer, snap.Window.Skipped)
			}
			var toWant uint64
			for _, d := range snap.Drops.Drops {
				if d.Dst.Addr() == tt.wantDst {
					toWant += d.Count
				}
			}
			if got := snap.Drops.Counters.Matched; got != tt.want || toWant != tt.want {
				t.Errorf("window %d counted %d drops, %d of them to %s; want %d, all to it (drops %+v)", i+1, got, toWant, tt.wantDst, tt.want, snap.Drops.Drops)
			}
			ids = append(ids, testkit.LoadedPrograms(prog)...)
		})
		if !ok && i == 0 {
			t.FailNow()
		}
	}
	if n := w.Loads(); n != 1 || len(ids) != len(tests) || len(slices.Compact(ids)) != 1 {
		t.Errorf("over %d windows: %d loads, program ids %v; want one load, one program", len(tests), n, ids)
	}
	t.Run("a tracer that failed is loaded again by the next window, which says so", func(t *testing.T) {
		cur, during = t, 1
		window.FailTracer(w, "a map read failed")
		snap, err := w.Next(context.Background(), length)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Window.Tracer != "attached" || w.Loads() != 2 || !strings.Contains(snap.Window.Skipped["drops.reload"], "a map read failed") {
			t.Errorf("window after a failure: tracer %q, %d loads, skipped %v; want attached, 2 loads, the reload said with why", snap.Window.Tracer, w.Loads(), snap.Window.Skipped)
		}
		if snap.Drops == nil || snap.Drops.Counters.Matched != 1 {
			t.Errorf("window after a failure counted %+v, want its 1 SYN", snap.Drops)
		}
	})
	if err := w.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	closed = true
	// The kernel frees a released program after an RCU grace period.
	for deadline := time.Now().Add(3 * time.Second); len(testkit.LoadedPrograms(prog)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("3s after Close: program %s still loaded, want none", prog)
			break
		}
	}
	if _, err := w.Next(context.Background(), length); err != window.ErrClosed {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
}
