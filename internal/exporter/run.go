package exporter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/window"
)

// Windower runs the windows of one namespace one after the other
// (window.Watcher): what it keeps between them — the drop tracer, attached
// once — it releases on Close.
type Windower interface {
	Next(ctx context.Context, length time.Duration) (*probes.Snapshot, error)
	Close() error
}

// Config is what `lbdoctor serve` runs.
type Config struct {
	// Netns are the --netns values, as given ("" is lbdoctor's own); each
	// is resolved again before every window, so a namespace deleted and
	// made again under its name is followed.
	Netns    []string
	Sel      probes.Selector
	Interval time.Duration // each window's length: checks run every Interval
	// Open returns the windower of a resolved namespace; nil is a
	// window.Watcher with check's window options (drops, reals probed).
	Open func(netns.Target) Windower
	// Resolve resolves a --netns value; nil is netns.Resolve.
	Resolve func(spec string) (netns.Target, error)
	// Ran, when not nil, is called after each interval (tests, logs).
	Ran func(ns string, r Result)
}

// Run runs the windows of every namespace until ctx ends, feeding e. It
// returns once every window has stopped (a window cut short by ctx ends
// within the window package's interrupt budget) and its tracer detached.
func Run(ctx context.Context, cfg Config, e *Exporter) {
	if cfg.Open == nil {
		cfg.Open = func(t netns.Target) Windower {
			return window.NewWatcher(t, cfg.Sel, window.Options{Drops: true, Probe: true})
		}
	}
	if cfg.Resolve == nil {
		cfg.Resolve = netns.Resolve
	}
	var wg sync.WaitGroup
	for _, spec := range cfg.Netns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx, cfg, spec, e)
		}()
	}
	wg.Wait()
}

// loop is one namespace's windows, back to back.
func loop(ctx context.Context, cfg Config, spec string, e *Exporter) {
	var cur netns.Target
	var w Windower
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	for ctx.Err() == nil {
		start := time.Now()
		t, err := cfg.Resolve(spec)
		if err == nil && w != nil && t.Inode != cur.Inode {
			// The name now holds another namespace: what was kept for
			// the old one (its tracer's filter) is of no use.
			w.Close()
			w = nil
		}
		var r Result
		switch {
		case err != nil:
			r = Result{Err: fmt.Errorf("resolve %s: %w", spec, err), ErrProbe: ProbeNetns}
		default:
			if w == nil {
				cur, w = t, cfg.Open(t)
			}
			r = interval(ctx, w, t, cfg)
		}
		if ctx.Err() != nil {
			return // a window cut short by the end is not an interval
		}
		r.Time = time.Now()
		r.Duration = r.Time.Sub(start)
		e.Observe(spec, r)
		if cfg.Ran != nil {
			cfg.Ran(spec, r)
		}
		if r.Err != nil && w != nil {
			w.Close() // opened again on the next interval
			w = nil
		}
		// A window that ended early (nothing to watch: no service, no
		// --vip) or did not run (the namespace is gone) waits out its
		// interval: serve never spins.
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(start.Add(cfg.Interval))):
		}
	}
}

// interval runs one window and the checks on it.
func interval(ctx context.Context, w Windower, t netns.Target, cfg Config) Result {
	snap, err := w.Next(ctx, cfg.Interval)
	if err != nil {
		return Result{Err: err, ErrProbe: ProbeWindow}
	}
	fs := checks.Run(snap, cfg.Sel)
	rt := report.Target{Netns: t, Kernel: snap.Kernel}
	if cfg.Sel.VIP.IsValid() {
		rt.VIP, rt.Proto = cfg.Sel.VIPString(), cfg.Sel.Proto
	}
	return Result{Snapshot: snap, Findings: fs, Report: report.New(rt, fs, snap.Errors)}
}

// Handler serves /metrics, /healthz and /findings. stale is how old the
// last interval may be for /healthz to answer 200.
func Handler(e *Exporter, stale time.Duration) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(e, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		code, body := healthz(e.Health(), time.Now(), stale)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	})
	mux.HandleFunc("/findings", func(w http.ResponseWriter, r *http.Request) {
		labels, reports := e.Reports()
		want, asked := r.URL.Query()["netns"]
		var doc any = reports
		switch {
		case asked:
			doc = nil
			for i, l := range labels {
				if len(want) > 0 && l == want[0] {
					doc = reports[i]
				}
			}
			if doc == nil {
				http.Error(w, "no report for that netns (yet): watched "+strings.Join(quoted(e), ", "), http.StatusNotFound)
				return
			}
		case len(e.ns) == 1 && len(reports) == 1:
			doc = reports[0]
		case len(reports) == 0:
			http.Error(w, "no interval has run yet", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		report.JSONDocument(w, doc)
	})
	return mux
}

func quoted(e *Exporter) []string {
	var out []string
	for _, s := range e.ns {
		out = append(out, fmt.Sprintf("%q", s.label))
	}
	return out
}

// healthz is /healthz's answer: 200 when every namespace's last interval
// ran (its window and checks, whatever they found) and ended within stale;
// 503 otherwise. One line per namespace says which.
func healthz(hs []Health, now time.Time, stale time.Duration) (int, string) {
	code := 200
	var b strings.Builder
	for _, h := range hs {
		name := "netns " + h.Netns
		if h.Netns == "" {
			name = "own netns"
		}
		switch {
		case h.Last.IsZero():
			code = 503
			fmt.Fprintf(&b, "%s: no interval has ended yet\n", name)
		case h.Err != nil:
			code = 503
			fmt.Fprintf(&b, "%s: last interval (%s) did not run: %v\n", name, h.Last.UTC().Format(time.RFC3339), h.Err)
		case now.Sub(h.Last) > stale:
			code = 503
			fmt.Fprintf(&b, "%s: last interval ended %s ago, over %s\n", name, now.Sub(h.Last).Round(time.Second), stale)
		default:
			fmt.Fprintf(&b, "%s: ok, last interval ended %s (%d failing)\n", name, h.Last.UTC().Format(time.RFC3339), h.Fail)
		}
	}
	return code, b.String()
}

// Serve serves h on l until ctx ends, then shuts the server down within
// grace (scrapes under way are cut after it).
func Serve(ctx context.Context, l net.Listener, h http.Handler, grace time.Duration) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
