package window_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/window"
)

// Progress yields a frame every Every while the window runs, and a
// Progress that blocks holds neither the window nor its end.
func TestProgressStreams(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "stream")
	const length, every = 1500 * time.Millisecond, 250 * time.Millisecond
	tests := []struct {
		name       string
		hold       time.Duration // how long each Progress call takes
		minFrames  int
		maxFrames  int
		wantPeriod bool
	}{
		{"a quick reader gets a frame a period", 0, 2, int(length / every), true},
		{"a reader that blocks gets one frame and holds nothing", 10 * time.Second, 1, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var frames []window.Progress
			opt := window.Options{Length: length, Counters: true, Every: every, Progress: func(p window.Progress) {
				mu.Lock()
				frames = append(frames, p)
				mu.Unlock()
				time.Sleep(tt.hold)
			}}
			start := time.Now()
			snap, err := window.Run(context.Background(), ns, probes.Selector{}, opt)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if n := len(frames); n < tt.minFrames || n > tt.maxFrames {
				t.Errorf("Run(%s, every %s) gave %d frames, want %d to %d", length, every, n, tt.minFrames, tt.maxFrames)
			}
			if w := snap.Window; w == nil || w.Elapsed < length || took > length+time.Second {
				t.Errorf("Run(%s) with %s = window %+v after %s, want it to end on time", length, tt.name, w, took)
			}
			for i, f := range frames {
				if !tt.wantPeriod {
					break
				}
				// One frame a period at most (the count above), each
				// further on: a late one is replaced, never doubled.
				if i > 0 && f.Elapsed <= frames[i-1].Elapsed {
					t.Errorf("frame %d: elapsed %s, not after frame %d's %s", i, f.Elapsed, i-1, frames[i-1].Elapsed)
				}
				if f.Deltas.SNMP == nil || f.Deltas.IPVS == nil {
					t.Errorf("frame %d: deltas %+v, want the SNMP and IPVS deltas (empty, not nil)", i, f.Deltas)
				}
			}
		})
	}
}

// Without CAP_BPF (and CAP_SYS_ADMIN, which also allows BPF) the window
// still runs its length; the drops are a skip that names the capability,
// in the window, the snapshot's errors and drops.vip_flows.
func TestWindowWithoutCAPBPF(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "nobpf")
	sel := probes.Selector{VIP: netip.MustParseAddrPort("10.9.0.6:80")}
	const length = 500 * time.Millisecond
	var snap *probes.Snapshot
	var err error
	testkit.WithoutCaps(t, func() {
		snap, err = window.Run(context.Background(), ns, sel, window.Options{Length: length, Drops: true})
	}, unix.CAP_BPF, unix.CAP_SYS_ADMIN)
	if err != nil {
		t.Fatal(err)
	}
	w := snap.Window
	if w == nil || w.Elapsed < length || !strings.Contains(w.Skipped[probes.LayerDrops], "CAP_BPF") {
		t.Fatalf("Run without CAP_BPF = window %+v, want it to run %s with drops skipped naming CAP_BPF", w, length)
	}
	for _, f := range checks.Run(snap, sel) {
		if f.ID == "drops.vip_flows" && (f.Status != checks.Skip || !strings.Contains(f.Reason, "CAP_BPF")) {
			t.Errorf("Run without CAP_BPF: drops.vip_flows = %s %q, want skip naming CAP_BPF", f.Status, f.Reason)
		}
	}
}

// With the drop tracer, a window opens only once the tracer is attached
// (prepared beside the first read), counts the drops of its whole length
// and ends within 100 ms of it: SYNs to an nft DNAT VIP die in ip_error
// (forwarding off) and are counted, and nothing waits for the tracer after.
func TestWindowWithTracerEndsOnTime(t *testing.T) {
	testkit.Tracefs(t)
	l, vip := testkit.DNATLab(t, 1)
	sel := probes.Selector{VIP: vip}
	const length, slack = time.Second, 100 * time.Millisecond
	tests := []struct {
		name    string
		traffic bool
	}{
		{"a quiet window", false}, // first: the other's SYNs are retried
		{"SYNs dropped in the window", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opened time.Time
			var traffic *testkit.Traffic
			opt := window.Options{Length: length, Drops: true, Opened: func(time.Duration) {
				opened = time.Now()
				if tt.traffic {
					traffic = testkit.StartTraffic(t, 50*time.Millisecond, func() lab.ProbeResult {
						return lab.Probe(context.Background(), l.Client, vip, 200*time.Millisecond)
					})
				}
			}}
			snap, err := window.Run(context.Background(), l.LB, sel, opt)
			took := time.Since(opened)
			if traffic != nil {
				traffic.Stop()
			}
			if err != nil {
				t.Fatal(err)
			}
			w := snap.Window
			if w == nil || opened.IsZero() || w.Tracer != "attached" || snap.Drops == nil {
				t.Fatalf("Run(%s, drops) = window %+v, drops %+v, errors %v; want the tracer attached when the window opened", length, w, snap.Drops, snap.Errors)
			}
			t.Logf("first read %s, waited %s for the tracer, window %s, last read %s", w.FirstRead, w.TracerWait, length, w.LastRead)
			// The last read is the namespace's (tens of ms; more on a
			// loaded machine): the window waits for nothing else.
			limit := length + slack + max(0, w.LastRead-70*time.Millisecond)
			if took > limit || took < length {
				t.Errorf("Run(%s, drops) ended %s after the window opened (last read %s), want %s to %s", length, took, w.LastRead, length, limit)
			}
			if n := snap.Drops.Counters.Matched; tt.traffic && n == 0 {
				t.Errorf("Run(%s, drops) with %s counted no drop, want the SYNs' %+v", length, tt.name, snap.Drops)
			}
			if d := snap.Drops.Window; d < length || d > took+slack {
				t.Errorf("Run(%s, drops): the tracer counted for %s, want the window's %s (at most the %s it took)", length, d, length, took)
			}
		})
	}
}

// A drop tracer that cannot be loaded, or is not attached in time, leaves
// the window to run its length: the drops are a skip with the reason, in
// the window, the snapshot's errors and drops.vip_flows.
func TestWindowTracerNotAttached(t *testing.T) {
	l, vip := testkit.DNATLab(t, 1)
	sel := probes.Selector{VIP: vip}
	const length, budget = 500 * time.Millisecond, 300 * time.Millisecond
	tests := []struct {
		name     string
		prepare  func() (*drops.Prepared, error)
		wantSkip string
	}{
		{"fails to load", func() (*drops.Prepared, error) { return drops.Prepare("no_such_attach") }, `unknown attach point "no_such_attach"`},
		{"not attached in time", func() (*drops.Prepared, error) {
			time.Sleep(3 * time.Second)
			return drops.Prepare("")
		}, "the drop tracer was not ready 300ms after the first read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer window.SetTracerPreparation(tt.prepare, budget)()
			var opened time.Time
			start := time.Now()
			snap, err := window.Run(context.Background(), l.LB, sel, window.Options{Length: length, Drops: true, Opened: func(time.Duration) { opened = time.Now() }})
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			w := snap.Window
			if w == nil || w.Tracer != "failed" || !strings.Contains(w.Skipped[probes.LayerDrops], tt.wantSkip) || !strings.Contains(snap.Errors[probes.ProbeDrops], tt.wantSkip) {
				t.Fatalf("Run with a tracer that %s = window %+v, errors %v; want tracer failed, drops skipped with %q", tt.name, w, snap.Errors, tt.wantSkip)
			}
			if opened.IsZero() || w.Elapsed < length || took > w.FirstRead+budget+length+time.Second {
				t.Errorf("Run with a tracer that %s took %s (window %+v), want the window's %s after at most %s of waiting", tt.name, took, w, length, budget)
			}
			for _, f := range checks.Run(snap, sel) {
				if f.ID == "drops.vip_flows" && (f.Status != checks.Skip || !strings.Contains(f.Reason, tt.wantSkip)) {
					t.Errorf("Run with a tracer that %s: drops.vip_flows = %s %q, want skip with %q", tt.name, f.Status, f.Reason, tt.wantSkip)
				}
			}
		})
	}
}
