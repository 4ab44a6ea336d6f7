package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// serveProc is a running `lbdoctor serve` and the address it serves on.
type serveProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer
	done   chan error
}

// startServe starts `lbdoctor serve` on a free port and waits for the line
// that names it.
func startServe(t *testing.T, args ...string) *serveProc {
	t.Helper()
	cmd := exec.Command(testkit.LbdoctorBinary(t), append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serveProc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	line, err := bufio.NewReader(pipe).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		t.Fatalf("lbdoctor serve %v: %v (%q)", args, err, line)
	}
	p.stderr.WriteString(line)
	_, rest, ok := strings.Cut(line, "http://")
	p.addr, _, _ = strings.Cut(rest, "/")
	if !ok || p.addr == "" {
		cmd.Process.Kill()
		t.Fatalf("lbdoctor serve's first line = %q; want the address it serves on", line)
	}
	go func() {
		io.Copy(p.stderr, pipe)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// get returns the body and status of one path.
func (p *serveProc) get(t *testing.T, path string) (string, int) {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return string(b), resp.StatusCode
}

// scrape is one /metrics: its text and its families.
type scrape struct {
	text string
	fams map[string]*dto.MetricFamily
}

func (p *serveProc) scrape(t *testing.T) scrape {
	t.Helper()
	body, code := p.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d\n%s", code, body)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return scrape{body, fams}
}

// value is the sample of name whose labels include want; ok false when none.
func (s scrape) value(name string, want map[string]string) (float64, bool) {
	f := s.fams[name]
	if f == nil {
		return 0, false
	}
	var sum float64
	found := false
next:
	for _, m := range f.Metric {
		for k, v := range want {
			if !hasLabel(m, k, v) {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum, found
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.Label {
		if l.GetName() == k {
			return l.GetValue() == v
		}
	}
	return false
}

// nsLabels are the labels netns=ns and the pairs of kv.
func nsLabels(ns string, kv ...string) map[string]string {
	m := map[string]string{"netns": ns}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// waitFor scrapes until cond holds or the deadline passes.
func (p *serveProc) waitFor(t *testing.T, what string, within time.Duration, cond func(scrape) bool) scrape {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := p.scrape(t)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, /metrics shows no %s:\n%s\nserve's stderr:\n%s", within, what, s.text, p.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop sends sig and returns the exit code and how long serve took to end.
func (p *serveProc) stop(t *testing.T, sig syscall.Signal) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Signal(syscall.SIGQUIT)
		<-p.done
		t.Fatalf("serve did not end within 5 s of %s:\n%s", sig, p.stderr)
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(start)
}

// `lbdoctor serve` on a netns LB (nft DNAT and masquerade standing in for
// IPVS) of two services on one VIP, whose forward chain drops the replies
// of one (--vip ADDR watches both; a reply, not a SYN: a SYN dropped after
// the DNAT has no flow in conntrack yet to name its service by): /metrics shows the drop reason's counter
// rising, that service's drop counter counting, its firewall.filter gauge
// at 2 (fail: the drops are joined to the rule) beside the selection's and
// its drops.vip_flows gauge at 1 (warn: firewall.filter's drops), and
// nothing for the other service; the drop rule removed, the selection's
// drops.vip_flows gauge is back at 0 at the next interval and the
// service's gauges gone. The tracer is loaded once and
// kept across intervals. The output passes `promtool check metrics`,
// /findings is check's JSON document naming the service, /healthz answers
// 200, and SIGTERM ends serve within 200 ms, exit 0.
func TestServe(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := testkit.DNATLab(t, 2) // the backend is in conntrack: drops after the DNAT are the VIP's
	// A second service on the VIP, to another port of the real: healthy.
	other := netip.AddrPortFrom(vip.Addr(), 8086)
	testkit.Serve(t, l.Real, ":8086")
	testkit.NftNAT(t, l.LB, other, netip.AddrPortFrom(l.RealIP, 8086), true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	// send_redirects at the kernel's default: the LB's ICMP redirects to the
	// real, which NAT drops in output now and then (the kernel spaces them
	// out), are no drops of the watched flows (Window.OwnRedirects).
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.all.send_redirects", "1")
	testkit.Sysctl(t, l.LB, "net.ipv4.conf.eth0.send_redirects", "1")
	testkit.Run(t, l.LB, "nft", fmt.Sprintf(`add table inet lbdfault
add chain inet lbdfault filter_fwd { type filter hook forward priority filter; }
add rule inet lbdfault filter_fwd ip saddr %s tcp sport 8085 counter drop
`, l.RealIP))
	traffic := testkit.StartTraffic(t, 200*time.Millisecond, func() lab.ProbeResult {
		lab.Probe(context.Background(), l.Client, other, 300*time.Millisecond)
		return lab.Probe(context.Background(), l.Client, vip, 300*time.Millisecond)
	})
	p := startServe(t, "--netns", l.LB.Name, "--vip", vip.Addr().String(), "--interval", "2s")
	lbl := func(kv ...string) map[string]string { return nsLabels(l.LB.Name, kv...) }
	drop := lbl("reason", "NETFILTER_DROP")
	// The selection's series have empty service labels; a service's, its
	// address, port and protocol as the IPVS series label them.
	svc := func(port string, kv ...string) map[string]string {
		return lbl(append([]string{"local_address", vip.Addr().String(), "local_port", port, "proto", "TCP"}, kv...)...)
	}
	// No IPVS on the host: the nft LB's drops, joined to the forward rule,
	// are judged by firewall.filter; drops.vip_flows warns, pointing at it.
	fw := lbl("id", "drops.vip_flows", "vip", vip.Addr().String(), "proto", "")
	fwDropped, fwOther := svc("8085", "id", "drops.vip_flows"), svc("8086", "id", "drops.vip_flows")
	ff := lbl("id", "firewall.filter", "vip", vip.Addr().String(), "proto", "")
	ffDropped, ffOther := svc("8085", "id", "firewall.filter"), svc("8086", "id", "firewall.filter")
	first := p.waitFor(t, "NETFILTER_DROP drops and firewall.filter at 2", 40*time.Second, func(s scrape) bool {
		d, _ := s.value("lbdoctor_drops_total", drop)
		f, _ := s.value("lbdoctor_finding_status", ff)
		return d > 0 && f == 2
	})
	if v, ok := first.value("lbdoctor_finding_status", ffDropped); v != 2 || !ok {
		t.Errorf("lbdoctor_finding_status{id=\"firewall.filter\",local_port=\"8085\"} = %v (served %v); want 2, the service whose flows are dropped\n%s", v, ok, first.text)
	}
	if v, ok := first.value("lbdoctor_finding_status", fwDropped); v != 1 || !ok {
		t.Errorf("lbdoctor_finding_status{id=\"drops.vip_flows\",local_port=\"8085\"} = %v (served %v); want 1: its drops are firewall.filter's\n%s", v, ok, first.text)
	}
	for _, other := range []map[string]string{fwOther, ffOther} {
		if v, ok := first.value("lbdoctor_finding_status", other); ok {
			t.Errorf("lbdoctor_finding_status{id=%q,local_port=\"8086\"} = %v; want no series: nothing of it is dropped\n%s", other["id"], v, first.text)
		}
	}
	if v, _ := first.value("lbdoctor_service_drops_total", svc("8085", "reason", "NETFILTER_DROP")); v == 0 {
		t.Errorf("lbdoctor_service_drops_total{local_port=\"8085\",reason=\"NETFILTER_DROP\"} = 0; want the dropped service's drops\n%s", first.text)
	}
	if v, _ := first.value("lbdoctor_service_drops_total", svc("8086")); v != 0 {
		t.Errorf("lbdoctor_service_drops_total{local_port=\"8086\"} = %v; want 0: nothing of it is dropped", v)
	}
	progs := testkit.LoadedPrograms(drops.ProgramName(p.cmd.Process.Pid))
	d1, _ := first.value("lbdoctor_drops_total", drop)
	runs1, _ := first.value("lbdoctor_check_runs_total", lbl())
	second := p.waitFor(t, "the drop counter rising at the next interval", 20*time.Second, func(s scrape) bool {
		r, _ := s.value("lbdoctor_check_runs_total", lbl())
		return r > runs1
	})
	if d2, _ := second.value("lbdoctor_drops_total", drop); d2 <= d1 {
		t.Errorf("lbdoctor_drops_total{reason=NETFILTER_DROP} = %v, then %v; want it rising under traffic", d1, d2)
	}
	// The tracer stays attached across intervals: the same program.
	if again := testkit.LoadedPrograms(drops.ProgramName(p.cmd.Process.Pid)); len(progs) != 1 || !slices.Equal(again, progs) {
		t.Errorf("serve's tracer programs = %v, then %v an interval later; want one, kept", progs, again)
	}
	if up, _ := second.value("lbdoctor_tracer_up", lbl()); up != 1 {
		t.Errorf("lbdoctor_tracer_up = %v, want 1", up)
	}
	for _, name := range []string{"lbdoctor_check_duration_seconds", "lbdoctor_last_check_timestamp_seconds", "lbdoctor_tracer_lost_events_total",
		"lbdoctor_ip_in_addr_errors_total", "lbdoctor_ip_reverse_path_filter_total", "lbdoctor_conntrack_drops_total", "lbdoctor_conntrack_insert_failed_total"} {
		if _, ok := second.value(name, lbl()); !ok {
			t.Errorf("/metrics has no %s{netns=%q}", name, l.LB.Name)
		}
	}
	if kernel.IPVS() != nil {
		// No IPVS in this kernel (the host's), and a VIP nft DNATs:
		// kernel.ipvs skips it (an ipvsadm -A would change nothing), no
		// IPVS series, and serve runs on.
		if v, _ := second.value("lbdoctor_finding_status", lbl("id", "kernel.ipvs", "proto", "")); v != 3 {
			t.Errorf("lbdoctor_finding_status{id=\"kernel.ipvs\"} = %v on a kernel without IPVS, a DNAT VIP; want 3 (skip)", v)
		}
		if _, ok := second.value("lbdoctor_ipvs_connections_total", lbl()); ok {
			t.Errorf("lbdoctor_ipvs_connections_total served on a kernel without IPVS")
		}
	}
	promtool := exec.Command("promtool", "check", "metrics")
	promtool.Stdin = strings.NewReader(second.text)
	if out, err := promtool.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	body, code := p.get(t, "/findings")
	var r report.Report
	if err := json.Unmarshal([]byte(body), &r); err != nil || code != 200 || r.Schema != report.Schema || r.Verdict != "fail" {
		t.Errorf("GET /findings = %d, schema %d, verdict %q (%v); want 200 and check's JSON document, verdict fail\n%s", code, r.Schema, r.Verdict, err, body)
	}
	for _, f := range r.Findings {
		if want := []string{"TCP " + vip.String()}; f.ID == "drops.vip_flows" && !slices.Equal(f.Services, want) {
			t.Errorf("GET /findings: drops.vip_flows names services %q, want %q", f.Services, want)
		}
	}
	if body, code := p.get(t, "/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("GET /healthz = %d %q; want 200, ok", code, body)
	}

	// The fault removed: the next whole interval passes.
	testkit.Run(t, l.LB, "nft", "delete table inet lbdfault")
	removed := time.Now()
	runs2, _ := p.scrape(t).value("lbdoctor_check_runs_total", lbl())
	healed := p.waitFor(t, "a second interval after the fault was removed", 20*time.Second, func(s scrape) bool {
		r, _ := s.value("lbdoctor_check_runs_total", lbl())
		return r >= runs2+2
	})
	if v, _ := healed.value("lbdoctor_finding_status", fw); v != 0 {
		body, _ := p.get(t, "/findings")
		t.Errorf("lbdoctor_finding_status{id=\"drops.vip_flows\"} = %v %s after the drop rule was removed; want 0\n%s\n/findings:\n%s", v, time.Since(removed).Round(time.Second), healed.text, body)
	}
	for _, dropped := range []map[string]string{fwDropped, ffDropped} {
		if v, ok := healed.value("lbdoctor_finding_status", dropped); ok {
			t.Errorf("lbdoctor_finding_status{id=%q,local_port=\"8085\"} = %v after the drop rule was removed; want no series: the finding no longer fails", dropped["id"], v)
		}
	}
	traffic.Stop()

	code, took := p.stop(t, syscall.SIGTERM)
	if code != 0 || took > 200*time.Millisecond {
		t.Errorf("serve after SIGTERM = exit %d in %s; want 0 within 200ms\n%s", code, took, p.stderr)
	}
	// The kernel frees a program whose last reference went in deferred
	// work: a moment after the exit.
	progs = testkit.LoadedPrograms(drops.ProgramName(p.cmd.Process.Pid))
	for deadline := time.Now().Add(2 * time.Second); len(progs) != 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		progs = testkit.LoadedPrograms(drops.ProgramName(p.cmd.Process.Pid))
	}
	if len(progs) != 0 {
		t.Errorf("serve left its tracer loaded 2s after SIGTERM: programs %v", progs)
	}
}

// TestServeBadInput: bad flags are one line and exit 2, before anything runs.
func TestServeBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"listen without a port", []string{"--listen", "127.0.0.1"}, `--listen "127.0.0.1": want ADDR:PORT`},
		{"listen on a name", []string{"--listen", "localhost:9469"}, "want an IP address"},
		{"listen port too large", []string{"--listen", "127.0.0.1:70000"}, "want a port 0-65535"},
		{"interval too short", []string{"--interval", "100ms"}, "want a window of at least 1s"},
		{"interval without a unit", []string{"--interval", "5"}, "want a duration with a unit"},
		{"vip of port 0", []string{"--vip", "10.1.0.6:0"}, "port 0 is no service port"},
		{"netns twice", []string{"--netns", "a", "--netns", "a"}, "given twice"},
		{"output json", []string{"-o", "json"}, "prints text only"},
		{"stray argument", []string{"x"}, "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(append([]string{"serve"}, tt.args...)...)
			if code != exitUsage || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 || stdout != "" {
				t.Errorf("lbdoctor serve %v = exit %d, stderr %q; want 2 and one line with %q", tt.args, code, stderr, tt.want)
			}
		})
	}
}

// Without a capability serve names it and exits 3: CAP_NET_ADMIN to read
// IPVS and rules, CAP_BPF (or CAP_SYS_ADMIN) for the drop tracer.
func TestServeWithoutCapabilityExitsThree(t *testing.T) {
	testkit.RequireRoot(t)
	tests := []struct {
		name string
		caps []uint
		want string
	}{
		{"no CAP_NET_ADMIN", []uint{unix.CAP_NET_ADMIN}, "CAP_NET_ADMIN"},
		{"no CAP_BPF nor CAP_SYS_ADMIN", []uint{unix.CAP_BPF, unix.CAP_SYS_ADMIN}, "CAP_BPF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r cliResult
			testkit.WithoutCaps(t, func() { r.code, r.stdout, r.stderr = runCLI("serve", "--listen", "127.0.0.1:0") }, tt.caps...)
			if r.code != exitCannot || !strings.Contains(r.stderr, tt.want) || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("lbdoctor serve (%s) = exit %d, stderr %q; want 3 and one line naming %s", tt.name, r.code, r.stderr, tt.want)
			}
		})
	}
}

// A namespace that disappears and comes back under its name: serve counts
// the namespace it could not resolve (lbdoctor_probe_errors_total{probe=
// "netns"}), takes its findings away, /healthz answers 503 naming it, and
// once the name holds a namespace again the intervals run on.
func TestServeNamespaceGoneAndBack(t *testing.T) {
	testkit.RequireRoot(t)
	name := testkit.UniqueName("lbd-srv")
	create := func() {
		if _, err := netns.Create(name); err != nil {
			t.Fatal(err)
		}
	}
	create()
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	p := startServe(t, "--netns", name, "--interval", "1s")
	ns := map[string]string{"netns": name}
	runs := func(s scrape) float64 { v, _ := s.value("lbdoctor_check_runs_total", ns); return v }
	s := p.waitFor(t, "a first interval", 30*time.Second, func(s scrape) bool { return runs(s) >= 1 })
	if _, ok := s.value("lbdoctor_finding_status", ns); !ok {
		t.Fatalf("no lbdoctor_finding_status{netns=%q} after an interval:\n%s", name, s.text)
	}

	testkit.Run(t, netns.Target{}, "ip", "netns", "del", name)
	gone := p.waitFor(t, "the namespace counted as unreadable", 20*time.Second, func(s scrape) bool {
		v, _ := s.value("lbdoctor_probe_errors_total", map[string]string{"netns": name, "probe": "netns"})
		return v >= 1
	})
	if _, ok := gone.value("lbdoctor_finding_status", ns); ok {
		t.Errorf("lbdoctor_finding_status{netns=%q} still served with the namespace gone:\n%s", name, gone.text)
	}
	if body, code := p.get(t, "/healthz"); code != 503 || !strings.Contains(body, "netns "+name+": last interval") || !strings.Contains(body, "no such network namespace") {
		t.Errorf("GET /healthz with the namespace gone = %d %q; want 503 naming it", code, body)
	}

	create()
	before := runs(gone)
	back := p.waitFor(t, "intervals running again", 30*time.Second, func(s scrape) bool { return runs(s) > before })
	if _, ok := back.value("lbdoctor_finding_status", ns); !ok {
		t.Errorf("no lbdoctor_finding_status{netns=%q} once the namespace is back:\n%s", name, back.text)
	}
	if body, code := p.get(t, "/healthz"); code != 200 {
		t.Errorf("GET /healthz with the namespace back = %d %q; want 200", code, body)
	}
	if code, took := p.stop(t, syscall.SIGINT); code != 0 || took > 200*time.Millisecond {
		t.Errorf("serve after SIGINT = exit %d in %s; want 0 within 200ms\n%s", code, took, p.stderr)
	}
}

// A --listen address already taken: serve says so in one line, exit 4,
// before any window runs.
func TestServeListenTaken(t *testing.T) {
	testkit.RequireRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	code, stdout, stderr := runCLI("serve", "--listen", l.Addr().String())
	if code != exitFailed || !strings.Contains(stderr, "address already in use") || strings.Count(stderr, "\n") != 1 || stdout != "" {
		t.Errorf("lbdoctor serve --listen %s (taken) = exit %d, stderr %q; want 4 and one line saying it is in use", l.Addr(), code, stderr)
	}
}
