package tui

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
)

// timedModel records when each ? reaches Update and counts the screens.
type timedModel struct {
	Model
	mu    *sync.Mutex
	sent  *time.Time
	lat   *[]time.Duration
	views *int
	work  *[]time.Duration // how long each Update and View took
}

func (t timedModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	if k, ok := msg.(tea.KeyMsg); ok && k.String() == "?" {
		t.mu.Lock()
		*t.lat = append(*t.lat, time.Since(*t.sent))
		t.mu.Unlock()
	}
	start := time.Now()
	m, c := t.Model.Update(msg)
	t.Model = m.(Model)
	t.mu.Lock()
	*t.work = append(*t.work, time.Since(start))
	t.mu.Unlock()
	return t, c
}

func (t timedModel) View() string {
	start := time.Now()
	v := t.Model.View()
	t.mu.Lock()
	*t.views++
	*t.work = append(*t.work, time.Since(start))
	t.mu.Unlock()
	return v
}

// BenchmarkFloodEventLoop is the TUI's event loop under a drop flood, in
// process: the real feeder (a window.Watcher, its tracer in aggregate mode
// kept across windows) on a
// namespace flooded with LBDOCTOR_BENCH_RATE (50,000) drops a second of
// 256 flows (UDP to a VIP nft DNATs to a port nothing listens on) for
// LBDOCTOR_BENCH_SECONDS (20), a ? key every 500 ms: how long a key waits
// before Update takes it (the loop is never held by the windows or the
// drops), how many screens were drawn a second (View calls: frames,
// windows and the keys), and the longest Update or View (what a key may
// wait for behind a window's snapshot). The whole process's view, a terminal's, is
// BenchmarkTUIFlood in cmd/lbdoctor.
//
//	sudo go test -run '^$' -bench FloodEventLoop -benchtime 1x ./internal/tui/
func BenchmarkFloodEventLoop(b *testing.B) {
	testkit.RequireRoot(b)
	rate, seconds := testkit.EnvInt("LBDOCTOR_BENCH_RATE", 50000), testkit.EnvInt("LBDOCTOR_BENCH_SECONDS", 20)
	p := testkit.NewDropPair(b)
	vip := netip.AddrPortFrom(p.AddrB, testkit.DNATPorts)
	for i := 0; i < b.N; i++ {
		stop := make(chan struct{})
		flooded := make(chan int, 1)
		go p.A.Do(func() error {
			var cs []*net.UDPConn
			for range 256 {
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.AddrA.AsSlice()})
				if err != nil {
					return err
				}
				defer c.Close()
				cs = append(cs, c)
			}
			start, sent := time.Now(), 0
			defer func() { flooded <- sent }()
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				for due := int(time.Since(start).Seconds() * float64(rate)); sent < due; sent++ {
					cs[sent%len(cs)].WriteToUDPAddrPort([]byte("x"), vip)
				}
				time.Sleep(time.Millisecond)
			}
		})
		time.Sleep(time.Second) // the flows are in conntrack: the window learns the backend
		ctl := make(chan Control, 1)
		opt := Options{Target: Target{Netns: p.B, Sel: probes.Selector{VIP: vip}}, Length: DefaultLength, Every: DefaultEvery, Control: ctl}
		var mu sync.Mutex
		var sent time.Time
		var lat, work []time.Duration
		views := 0
		inR, inW := io.Pipe()
		prog := tea.NewProgram(timedModel{New(opt), &mu, &sent, &lat, &views, &work}, tea.WithInput(inR), tea.WithOutput(io.Discard), tea.WithoutSignalHandler())
		ctx, cancel := context.WithCancel(context.Background())
		fed := make(chan struct{})
		go func() { defer close(fed); Feed(ctx, opt, ctl, prog.Send) }()
		start := time.Now()
		go func() {
			for time.Since(start) < time.Duration(seconds)*time.Second {
				time.Sleep(500 * time.Millisecond)
				mu.Lock()
				sent = time.Now()
				mu.Unlock()
				inW.Write([]byte("?"))
			}
			prog.Quit()
		}()
		if _, err := prog.Run(); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		cancel()
		<-fed
		close(stop)
		n := <-flooded
		slices.Sort(lat)
		b.ReportMetric(float64(n)/elapsed.Seconds(), "sent/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "key-to-update-p50-µs")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "key-to-update-max-µs")
		b.ReportMetric(float64(views)/elapsed.Seconds(), "views/s")
		slices.Sort(work)
		b.ReportMetric(float64(work[len(work)-1].Microseconds()), "update-or-view-max-µs")
		b.Logf("%d keys: median %s, worst %s; %d screens in %s", len(lat), lat[len(lat)/2], lat[len(lat)-1], views, elapsed.Round(time.Millisecond))
	}
}
