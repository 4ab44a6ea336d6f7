package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// captureJSON is the part of `capture -o json` the tests read.
type captureJSON struct {
	Interrupted  bool   `json:"interrupted"`
	Packets      uint64 `json:"packets"`
	KernelDrops  uint64 `json:"kernel_drops"`
	NotProcessed uint64 `json:"not_processed"`
	Unclaimed    uint64 `json:"unclaimed"`
	Own          uint64 `json:"own"`
	Flows        []struct {
		Client string `json:"client"`
		VIP    string `json:"vip"`
		Real   string `json:"real"`
		Legs   []struct {
			Kind     flowpath.LegKind `json:"kind"`
			Packets  uint64           `json:"packets"`
			Segments []string         `json:"segments"`
		} `json:"legs"`
		Stop flowpath.LegKind `json:"stop"`
	} `json:"flows"`
	File *struct {
		Path    string `json:"path"`
		Packets uint64 `json:"packets"`
	} `json:"file"`
}

// legCounters counts, with nft rules in the LB, each leg's packets where
// the capture sees them: arriving before any NAT (prerouting, raw
// priority), leaving after every NAT (postrouting, after srcnat).
func legCounters(t *testing.T, l *lab.Lab, vip, real netip.AddrPort) {
	t.Helper()
	testkit.Run(t, l.LB, "nft", fmt.Sprintf(`add table ip legs
add chain ip legs in { type filter hook prerouting priority raw; }
add chain ip legs out { type filter hook postrouting priority 400; }
add rule ip legs in ip saddr %[1]s ip daddr %[2]s tcp dport %[3]d counter comment "request"
add rule ip legs in ip saddr %[4]s tcp sport %[5]d counter comment "reply"
add rule ip legs out ip daddr %[4]s tcp dport %[5]d counter comment "to_real"
add rule ip legs out ip saddr %[2]s ip daddr %[1]s tcp sport %[3]d counter comment "to_client"
`, l.ClientIP, vip.Addr(), vip.Port(), real.Addr(), real.Port()))
}

// nftLegs reads the counters legCounters added, by leg.
func nftLegs(t *testing.T, l *lab.Lab) map[flowpath.LegKind]uint64 {
	t.Helper()
	out := testkit.Run(t, l.LB, "nft", "list", "table", "ip", "legs")
	got := map[flowpath.LegKind]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := range f {
			if f[i] == "packets" && i+1 < len(f) {
				n, _ := strconv.ParseUint(f[i+1], 10, 64)
				got[flowpath.LegKind(strings.Trim(f[len(f)-1], `"`))] = n
			}
		}
	}
	return got
}

// startCapture runs `lbdoctor capture` in the background and returns once
// its sockets are open (its start line on stderr); wait ends it (SIGINT
// when interrupt is set, else its --duration) and returns its JSON.
func startCapture(t *testing.T, args ...string) (wait func(interrupt bool) (captureJSON, string, int)) {
	t.Helper()
	wait, _ = startCaptureText(t, append([]string{"-o", "json"}, args...)...)
	return wait
}

// startCaptureText is startCapture for any output: stdout is its text
// once wait returned.
func startCaptureText(t *testing.T, args ...string) (wait func(interrupt bool) (captureJSON, string, int), stdout *strings.Builder) {
	t.Helper()
	jsonOut := slices.Contains(args, "json")
	cmd := exec.Command(testkit.LbdoctorBinary(t), append([]string{"capture"}, args...)...)
	stdout = &strings.Builder{}
	cmd.Stdout = stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var errText strings.Builder
	// The sockets are open when the start line comes.
	{
		timeout := time.After(5 * time.Second)
	started:
		for {
			select {
			case l := <-lines:
				errText.WriteString(l + "\n")
				if strings.HasPrefix(l, "capturing ") {
					break started
				}
			case <-timeout:
				t.Fatalf("capture printed no start line in 5 s:\n%s", errText.String())
			}
		}
	}
	return func(interrupt bool) (captureJSON, string, int) {
		if interrupt {
			cmd.Process.Signal(syscall.SIGINT)
		}
		for l := range lines {
			errText.WriteString(l + "\n")
		}
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		var doc captureJSON
		if !jsonOut {
			return doc, errText.String(), code
		}
		if err := json.Unmarshal([]byte(stdout.String()), &doc); err != nil && code == 0 {
			t.Fatalf("capture -o json: %v\n%s\nstderr: %s", err, stdout.String(), errText.String())
		}
		return doc, errText.String(), code
	}, stdout
}

// pcapPackets counts the packets of a capture file as tool reads it.
func pcapPackets(t *testing.T, tool, path string) int {
	t.Helper()
	args := []string{"-r", path}
	if tool == "tcpdump" {
		args = append([]string{"-nn"}, args...)
	}
	out, err := exec.Command(tool, args...).Output()
	if err != nil {
		t.Fatalf("%s -r %s: %v", tool, path, err)
	}
	return strings.Count(string(out), "\n")
}

// The four legs of N requests through a one-arm nft DNAT + masquerade LB
// are counted exactly (nft counters at the same places agree), and the
// pcapng file opens in tcpdump and tshark with as many packets. The breaks
// show where the flow stops: without SNAT the real's replies never come
// back to the LB (stop at real→); with forwarding off on the interface the
// replies arrive on (two-arm), they arrive and never leave (stop at →client).
func TestCaptureLegs(t *testing.T) {
	testkit.RequireRoot(t)
	for _, tool := range []string{"nft", "tcpdump", "tshark"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (.ci/run installs it)", tool, err)
		}
	}
	const n = 5
	tests := []struct {
		name     string
		topo     lab.Topology
		snat     bool
		replyOff bool // net.ipv4.conf.DEV.forwarding=0 where the replies arrive
		answered bool
		wantStop flowpath.LegKind
	}{
		{"one-arm DNAT + masquerade: every leg", lab.OneArm, true, false, true, ""},
		{"one-arm DNAT without SNAT: the reply leg is missing on the LB", lab.OneArm, false, false, false, flowpath.Reply},
		{"two-arm, forwarding off for the replies: the LB→client leg is missing", lab.TwoArm, false, true, false, flowpath.ToClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testkit.Lab(t, tt.topo)
			vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
			testkit.Serve(t, l.Real, ":8080")
			testkit.NftNAT(t, l.LB, vip, real, tt.snat)
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
			if tt.replyOff {
				testkit.Sysctl(t, l.LB, "net.ipv4.conf.eth1.forwarding", "0")
			}
			legCounters(t, l, vip, real)
			file := filepath.Join(t.TempDir(), "vip.pcapng")
			wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String(), "--duration", "4s", "-w", file)
			for i := range n {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				res := lab.Probe(ctx, l.Client, vip, 300*time.Millisecond)
				cancel()
				if res.OK != tt.answered {
					t.Fatalf("probe %d to %s: answered %v (%v), want %v", i, vip, res.OK, res.Err, tt.answered)
				}
			}
			// Quiet: no retransmission may cross the LB between the end of
			// the capture and the reading of the counters.
			realIf := "eth0"
			if tt.topo == lab.TwoArm {
				realIf = "eth1"
			}
			testkit.Run(t, l.Client, "ip", "link", "set", "eth0", "down")
			testkit.Run(t, l.Real, "ip", "link", "set", realIf, "down")
			doc, stderr, code := wait(false)
			if code != 0 {
				t.Fatalf("capture exit %d, want 0\n%s", code, stderr)
			}
			nft := nftLegs(t, l)
			var sum [4]uint64
			for _, f := range doc.Flows {
				for i, leg := range f.Legs {
					sum[i] += leg.Packets
				}
			}
			for i, k := range []flowpath.LegKind{flowpath.Request, flowpath.ToReal, flowpath.Reply, flowpath.ToClient} {
				if sum[i] != nft[k] {
					t.Errorf("capture: %d packets on leg %s over every flow, want %d (the nft counter there)", sum[i], k, nft[k])
				}
			}
			if len(doc.Flows) != n {
				t.Errorf("capture: %d flows, want %d (one per probe)", len(doc.Flows), n)
			}
			for _, f := range doc.Flows {
				if f.Stop != tt.wantStop || f.VIP != vip.String() || f.Real != real.String() {
					t.Errorf("flow %s → %s via %s: stops at %q, want VIP %s via %s stopping at %q", f.Client, f.VIP, f.Real, f.Stop, vip, real, tt.wantStop)
				}
			}
			if doc.KernelDrops != 0 || doc.NotProcessed != 0 || doc.Unclaimed != 0 {
				t.Errorf("capture: kernel drops %d, not processed %d, unclaimed %d; want 0, 0, 0", doc.KernelDrops, doc.NotProcessed, doc.Unclaimed)
			}
			if doc.File == nil || doc.File.Packets != doc.Packets {
				t.Fatalf("capture: file %+v, want %d packets written", doc.File, doc.Packets)
			}
			for _, tool := range []string{"tcpdump", "tshark"} {
				if got := pcapPackets(t, tool, file); uint64(got) != doc.Packets {
					t.Errorf("%s -r %s: %d packets, want %d", tool, file, got, doc.Packets)
				}
			}
			// Wireshark shows each packet's flow and leg: its comment.
			out, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.comment").Output()
			if err != nil {
				t.Fatalf("tshark -r %s -e frame.comment: %v", file, err)
			}
			for i, k := range []flowpath.LegKind{flowpath.Request, flowpath.ToReal, flowpath.Reply, flowpath.ToClient} {
				if got := strings.Count(string(out), "("+string(k)+") of "); uint64(got) != sum[i] {
					t.Errorf("tshark: %d packets commented as leg %s, want %d", got, k, sum[i])
				}
			}
			if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("stat %s: %v, %v; want mode 0600", file, st.Mode(), err)
			}
		})
	}
}

// Ctrl-C ends a capture at once: what it captured is printed (one line per
// flow), it says it was cut short, exits 0, and the file is complete:
// tcpdump reads every packet of it.
func TestCaptureInterrupted(t *testing.T) {
	testkit.RequireRoot(t)
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
	testkit.Serve(t, l.Real, ":8080")
	testkit.NftNAT(t, l.LB, vip, real, true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	file := filepath.Join(t.TempDir(), "cut.pcapng")
	wait, stdout := startCaptureText(t, "--netns", l.LB.Path, "--vip", vip.String(), "-w", file)
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
		t.Fatalf("probe %s: %v", vip, res.Err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	_, stderr, code := wait(true)
	took := time.Since(start)
	if code != 0 || took > 400*time.Millisecond {
		t.Errorf("capture after SIGINT: exit %d after %s, want 0 within 400 ms (200 ms and the process's own end)\n%s", code, took, stderr)
	}
	want := fmt.Sprintf(" → VIP %s ✓ ", vip)
	if lines := strings.Split(strings.TrimSpace(stdout.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], want) || strings.Contains(lines[0], "stops at") {
		t.Errorf("capture stdout =\n%s\nwant one flow line with %q and every leg", stdout, want)
	}
	if !strings.Contains(stderr, "! cut short by SIGINT") || !strings.Contains(stderr, "kernel ring drops: 0") {
		t.Errorf("capture stderr =\n%s\nwant \"! cut short by SIGINT\" and the kernel's ring drops", stderr)
	}
	var wrote int
	for _, line := range strings.Split(stderr, "\n") {
		if _, err := fmt.Sscanf(line, "wrote %d packets to", &wrote); err == nil {
			break
		}
	}
	if got := pcapPackets(t, "tcpdump", file); wrote == 0 || got != wrote {
		t.Errorf("tcpdump -r %s: %d packets, want %d (what capture says it wrote)", file, got, wrote)
	}
}

// Bad input is one line and exit 2, before anything is opened; so is an
// unwritable -w.
func TestCaptureBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no --vip", nil, "capture needs --vip ADDR:PORT"},
		{"a VIP without a port", []string{"--vip", "10.1.0.6"}, "--vip"},
		{"snaplen 0", []string{"--vip", "10.1.0.6:80", "--snaplen", "0"}, "--snaplen 0: want 1 to 65535 bytes"},
		{"snaplen too big", []string{"--vip", "10.1.0.6:80", "--snaplen", "70000"}, "--snaplen 70000: want 1 to 65535 bytes"},
		{"snaplen not a number", []string{"--vip", "10.1.0.6:80", "--snaplen", "big"}, "--snaplen \"big\": want a whole number"},
		{"duration 0", []string{"--vip", "10.1.0.6:80", "--duration", "0"}, "--duration 0s: want a window > 0"},
		{"duration without a unit", []string{"--vip", "10.1.0.6:80", "--duration", "5"}, "want a duration with a unit"},
		{"count 0", []string{"--vip", "10.1.0.6:80", "--count", "0"}, "--count 0: want a number of packets > 0"},
		{"-w in a missing directory", []string{"--vip", "10.1.0.6:80", "-w", "/nonexistent/x.pcapng"}, "-w /nonexistent/x.pcapng: no such directory /nonexistent"},
		{"-w a directory", []string{"--vip", "10.1.0.6:80", "-w", os.TempDir()}, "not a regular file"},
		{"bad --proto", []string{"--vip", "10.1.0.6:80", "--proto", "icmp"}, "--proto"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(context.Background(), append([]string{"capture"}, tt.args...), &stdout, &stderr)
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if code != exitUsage || len(lines) != 1 || !strings.Contains(lines[0], tt.want) || stdout.Len() > 0 {
				t.Errorf("capture %v = exit %d, stderr %q; want exit 2 and one line with %q", tt.args, code, stderr.String(), tt.want)
			}
		})
	}
}

// An interface that goes away mid-capture ends its socket alone: the
// capture goes on on the others and says which stopped and why; when
// every one went, it ends early, prints what it captured and says so.
func TestCaptureInterfaceGone(t *testing.T) {
	testkit.RequireRoot(t)
	tests := []struct {
		name     string
		gone     string
		wantLine string
	}{
		{"the reals' side of a two-arm LB", "eth1", "! eth1 stopped before the capture: interface eth1 went away"},
		{"the only interface", "eth0", "capture: every socket ended"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testkit.Lab(t, lab.TwoArm)
			vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
			testkit.Serve(t, l.Real, ":8080")
			testkit.NftNAT(t, l.LB, vip, real, false)
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
			if tt.gone == "eth0" {
				// Only eth0 is captured when the reals are not known.
				testkit.Run(t, l.LB, "nft", "flush", "table", "ip", "lbdtest")
			}
			wait, stdout := startCaptureText(t, "--netns", l.LB.Path, "--vip", vip.String(), "--duration", "3s")
			lab.Probe(context.Background(), l.Client, vip, 500*time.Millisecond)
			testkit.Run(t, l.LB, "ip", "link", "del", tt.gone)
			start := time.Now()
			_, stderr, code := wait(false)
			if code != 0 || !strings.Contains(stderr, tt.wantLine) || !strings.Contains(stderr, "packets captured") {
				t.Errorf("capture with %s deleted = exit %d, stderr\n%s\nwant exit 0, %q and the closing lines", tt.gone, code, stderr, tt.wantLine)
			}
			if tt.gone == "eth0" && time.Since(start) > 2*time.Second {
				t.Errorf("capture with every interface gone ran on for %s, want it to end at once", time.Since(start))
			}
			if tt.gone == "eth1" && !strings.Contains(stdout.String(), "→ VIP "+vip.String()+" ✓") {
				t.Errorf("capture stdout =\n%s\nwant the probe's flow", stdout)
			}
		})
	}
}

// Without CAP_NET_RAW capture names the capability and exits 3, before it
// opens anything.
func TestCaptureWithoutCapabilityExitsThree(t *testing.T) {
	testkit.RequireRoot(t)
	r := runCLIWithout(t, unix.CAP_NET_RAW, "capture", "--vip", "10.1.0.6:8085", "--duration", "1s")
	if r.code != exitCannot || !strings.Contains(r.stderr, "CAP_NET_RAW") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("lbdoctor capture without CAP_NET_RAW = exit %d, stderr %q; want exit 3 and one line naming CAP_NET_RAW", r.code, r.stderr)
	}
}

// The LB's own traffic to a real (a health checker's connect) is no flow's
// leg: counted as claimed by no flow, and as the LB's own.
func TestCaptureLBOwnTraffic(t *testing.T) {
	testkit.RequireRoot(t)
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
	testkit.Serve(t, l.Real, ":8080")
	testkit.NftNAT(t, l.LB, vip, real, true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String(), "--duration", "2s")
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
		t.Fatalf("probe %s from the client: %v", vip, res.Err)
	}
	if res := lab.Probe(context.Background(), l.LB, real, 2*time.Second); !res.OK {
		t.Fatalf("probe %s from the LB: %v", real, res.Err)
	}
	doc, stderr, code := wait(false)
	if code != 0 || len(doc.Flows) != 1 || doc.Unclaimed == 0 || doc.Own != doc.Unclaimed {
		t.Errorf("capture = exit %d, %d flows, %d unclaimed, %d own; want 0, 1 (the client's), the LB's connect to %s unclaimed and all of it its own\n%s",
			code, len(doc.Flows), doc.Unclaimed, doc.Own, real, stderr)
	}
}
