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
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// captureJSON is the part of `capture -o json` the tests read.
type captureJSON struct {
	Interrupted  bool   `json:"interrupted"`
	Packets      uint64 `json:"packets"`
	KernelDrops  uint64 `json:"kernel_drops"`
	NotProcessed uint64 `json:"not_processed"`
	Unclaimed    uint64 `json:"unclaimed"`
	Own          uint64 `json:"own"`
	Interfaces   []struct {
		Unread uint64 `json:"unread"`
	} `json:"interfaces"`
	Flows []struct {
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
	Errors map[string]string `json:"errors"`
	Unread map[string]string `json:"unread"`
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
// back to the LB (stop at real→); with ip_forward=0 the DNATed request is
// never forwarded (stop at →real); with forwarding off on the interface the
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
		noFwd    bool // net.ipv4.ip_forward=0
		answered bool
		wantStop flowpath.LegKind
	}{
		{"one-arm DNAT + masquerade: every leg", lab.OneArm, true, false, false, true, ""},
		{"one-arm DNAT without SNAT: the reply leg is missing on the LB", lab.OneArm, false, false, false, false, flowpath.Reply},
		{"one-arm, ip_forward=0: the LB→real leg is missing", lab.OneArm, true, false, true, false, flowpath.ToReal},
		{"two-arm, forwarding off for the replies: the LB→client leg is missing", lab.TwoArm, false, true, false, false, flowpath.ToClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testkit.Lab(t, tt.topo)
			vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
			testkit.Serve(t, l.Real, ":8080")
			testkit.NftNAT(t, l.LB, vip, real, tt.snat)
			forward := "1"
			if tt.noFwd {
				forward = "0"
			}
			testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", forward)
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
			wantReal := real.String()
			if tt.noFwd {
				wantReal = "" // the request died before conntrack confirmed it: no table names its real
			}
			for _, f := range doc.Flows {
				if f.Stop != tt.wantStop || f.VIP != vip.String() || f.Real != wantReal {
					t.Errorf("flow %s → %s via %s: stops at %q, want VIP %s via %q stopping at %q", f.Client, f.VIP, f.Real, f.Stop, vip, wantReal, tt.wantStop)
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

// capture -w writes its file in time order, as tcpdump does, across the
// interfaces' rings: each ring hands its packets over by the block, its
// reader apart from the others', so in the order they came a two-arm LB's
// SYN sent on to the real (eth1) could precede the client's SYN (eth0) it
// forwards, and tshark lists a file in its order.
func TestCaptureFileInTimeOrder(t *testing.T) {
	testkit.RequireRoot(t)
	l := testkit.Lab(t, lab.TwoArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
	testkit.Serve(t, l.Real, ":8080")
	testkit.NftNAT(t, l.LB, vip, real, false) // two-arm: the real answers through the LB
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	file := filepath.Join(t.TempDir(), "vip.pcapng")
	wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String(), "--duration", "3s", "-w", file)
	const n = 40
	for i := range n {
		if res := lab.Probe(context.Background(), l.Client, vip, time.Second); !res.OK {
			t.Fatalf("probe %d of %s: %v", i, vip, res.Err)
		}
	}
	doc, stderr, code := wait(false)
	if code != 0 || doc.File == nil || doc.File.Packets < 4*n {
		t.Fatalf("capture -w = exit %d, file %+v; want 0 and at least %d packets\n%s", code, doc.File, 4*n, stderr)
	}
	out, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.interface_name").Output()
	if err != nil {
		t.Fatalf("tshark -r %s: %v", file, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	ifaces := map[string]bool{}
	var prev float64
	for i, line := range lines {
		ts, iface, _ := strings.Cut(line, "\t")
		ifaces[iface] = true
		sec, err := strconv.ParseFloat(ts, 64)
		if err != nil {
			t.Fatalf("tshark line %q: %v", line, err)
		}
		if sec < prev {
			t.Errorf("tshark -r %s: packet %d (%s) is older than the one before it (%.9f): the file is not in time order", file, i+1, line, prev)
			break
		}
		prev = sec
	}
	if len(lines) != int(doc.File.Packets) || !ifaces["eth0"] || !ifaces["eth1"] {
		t.Errorf("tshark -r %s: %d packets on %v, want %d on eth0 and eth1", file, len(lines), ifaces, doc.File.Packets)
	}
}

// Ctrl-C ends a capture at once: what it captured is printed (one line per
// flow), it says it was cut short, exits 0, and the file is complete:
// tcpdump reads every packet of it.
func TestCaptureInterrupted(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := dnatMasqueradeLab(t)
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
	// lbdoctor does not follow a link to write (CreateFile opens with
	// O_NOFOLLOW): a link is refused with the rest of the bad input, before
	// anything is opened or said.
	dir := t.TempDir()
	link, dangling := filepath.Join(dir, "link.pcapng"), filepath.Join(dir, "dangling.pcapng")
	if err := os.WriteFile(filepath.Join(dir, "target"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("missing", dangling); err != nil {
		t.Fatal(err)
	}
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
		{"-w a symbolic link to a file", []string{"--vip", "10.1.0.6:80", "-w", link}, "-w " + link + ": a symbolic link"},
		{"-w - (stdout carries the flows)", []string{"--vip", "10.1.0.6:80", "-w", "-", "--duration", "1s"}, "-w -: stdout carries the flows or the document"},
		{"-w a dangling symbolic link", []string{"--vip", "10.1.0.6:80", "-w", dangling}, "-w " + dangling + ": a symbolic link"},
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
	l, vip := dnatMasqueradeLab(t)
	real := netip.AddrPortFrom(l.RealIP, 8080)
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

// A -w file whose file system fills up mid-capture ends the file, not the
// capture: the flows are still printed, and the write error is said once
// in the closing lines and once as the exit's line (exit 4), each one line
// (a writer's later writes fail with the same error: it is not repeated).
func TestCaptureFileSystemFull(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := dnatMasqueradeLab(t)
	// A 64 KiB tmpfs with 8 KiB left: the file's header fits, the
	// packets of 100 connections (past the writer's 256 KiB buffer: a
	// write fails mid-capture, and the flush at the end again) do not.
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, 56<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "full.pcapng")
	wait, stdout := startCaptureText(t, "--netns", l.LB.Path, "--vip", vip.String(), "-w", file)
	const conns = 100
	for i := range conns {
		if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
			t.Fatalf("probe %d of %s: %v", i, vip, res.Err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	_, stderr, code := wait(true)
	if n := strings.Count(stdout.String(), " → VIP "); code != exitFailed || n != conns {
		t.Errorf("capture -w on a full file system = exit %d, %d flows; want exit 4 and the %d flows\nstdout:\n%s\nstderr:\n%s", code, n, conns, stdout, stderr)
	}
	var said []string
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if strings.Contains(line, "no space left on device") {
			said = append(said, line)
		}
	}
	if len(said) != 2 || !strings.HasPrefix(said[0], "! "+file+": ") || !strings.HasPrefix(said[1], "lbdoctor: -w "+file+": ") {
		t.Errorf("capture stderr says the write error on %d lines:\n%s\nwant one closing line \"! %s: …\" and one exit line \"lbdoctor: -w %s: …\"", len(said), strings.Join(said, "\n"), file, file)
	}
}

// Ctrl-C while capture or drops still reads the rules (a VIP IPVS does
// not serve: its DNAT rules name the backends) ends it at once, exit 130
// and one line, however long the save tools take — iptables-save on a node
// with a large rule set takes seconds. The slow tool here is a real
// iptables-save behind a wrapper that first sleeps.
func TestInterruptedReadingRules(t *testing.T) {
	testkit.RequireRoot(t)
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	for _, verb := range []string{"capture", "drops"} {
		t.Run(verb, func(t *testing.T) {
			interruptReadingRules(t, l, vip, verb)
		})
	}
}

func interruptReadingRules(t *testing.T, l *lab.Lab, vip netip.AddrPort, verb string) {
	// Every save tool's name is slow: lbdoctor asks the names in turn
	// until it has one of each backend, whichever comes first.
	bin, pids := t.TempDir(), t.TempDir()
	wrapped := 0
	for _, name := range []string{"iptables-legacy-save", "iptables-nft-save", "iptables-save"} {
		real, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		wrapper := fmt.Sprintf("#!/bin/sh\necho $$ > %s/$$\nsleep 5\nexec %s \"$@\"\n", pids, real)
		if err := os.WriteFile(filepath.Join(bin, name), []byte(wrapper), 0o755); err != nil {
			t.Fatal(err)
		}
		wrapped++
	}
	if wrapped == 0 {
		t.Fatal("no iptables save tool on PATH")
	}
	t.Cleanup(func() {
		// The wrappers lbdoctor left behind (it does not wait for a
		// read it abandoned), by the pids they wrote.
		ents, _ := os.ReadDir(pids)
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	cmd := exec.Command(testkit.LbdoctorBinary(t), verb, "--netns", l.LB.Path, "--vip", vip.String(), "--duration", "10s")
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the wrapper runs: lbdoctor is reading the rules.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if ents, _ := os.ReadDir(pids); len(ents) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s ran no iptables-save in 5 s; stderr:\n%s", verb, stderr.String())
		}
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	took, code := time.Since(start), cmd.ProcessState.ExitCode()
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if code != exitInterrupted || took > time.Second || stdout.Len() > 0 || !strings.Contains(lines[len(lines)-1], "interrupted by SIGINT before anything was measured") {
		t.Errorf("%s interrupted while reading rules = exit %d after %s, stdout %q, stderr:\n%s\nwant exit 130 within 1 s (200 ms, on a loaded machine) and \"interrupted by SIGINT before anything was measured\"", verb, code, took.Round(time.Millisecond), stdout.String(), stderr.String())
	}
}

// A capture that ends (--count here) while a flow is mid-exchange does not
// say plainly that the flow stops: its line says the capture may have cut
// it, with how long before the end its last packet came.
func TestCaptureCountCutsAFlow(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := dnatMasqueradeLab(t)
	// The SYN in, the SYN to the real, its SYN-ACK back: the SYN-ACK to
	// the client is the 4th packet, past --count.
	wait, stdout := startCaptureText(t, "--netns", l.LB.Path, "--vip", vip.String(), "--count", "3", "--duration", "10s")
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
		t.Fatalf("probe %s: %v", vip, res.Err)
	}
	_, stderr, code := wait(false)
	line := strings.TrimSpace(stdout.String())
	if code != 0 || !strings.Contains(line, "stops at →client") || !strings.Contains(line, "before the capture ended: it may be cut, not stopped") {
		t.Errorf("capture --count 3 = exit %d, stdout %q; want exit 0 and the flow's stop at →client said to be perhaps only the capture's end\nstderr:\n%s", code, line, stderr)
	}
}

// A --snaplen too short for the headers (40 bytes: Ethernet, IPv4 and 6
// bytes of TCP) cuts the file's packets, not the join: every leg of the
// flow is still counted, and the file keeps 40 bytes of each packet.
func TestCaptureShortSnaplen(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := dnatMasqueradeLab(t)
	file := filepath.Join(t.TempDir(), "short.pcapng")
	wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String(), "--snaplen", "40", "-w", file)
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
		t.Fatalf("probe %s: %v", vip, res.Err)
	}
	time.Sleep(200 * time.Millisecond)
	doc, stderr, code := wait(true)
	if code != 0 || len(doc.Flows) != 1 || doc.Flows[0].Stop != "" || doc.Unclaimed != 0 {
		t.Errorf("capture --snaplen 40 = exit %d, %d flows, %d unclaimed, stop %q; want exit 0, 1 flow with every leg, none unclaimed\nstderr:\n%s", code, len(doc.Flows), doc.Unclaimed, func() flowpath.LegKind {
			if len(doc.Flows) > 0 {
				return doc.Flows[0].Stop
			}
			return ""
		}(), stderr)
	}
	out, err := exec.Command("tcpdump", "-nn", "-r", file).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v", file, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, line := range lines {
		if !strings.Contains(line, "[|tcp]") {
			t.Errorf("tcpdump -r %s: %q, want every packet cut at 40 bytes ([|tcp])", file, line)
			break
		}
	}
	if doc.File == nil || uint64(len(lines)) != doc.File.Packets || doc.File.Packets == 0 {
		t.Errorf("tcpdump -r %s: %d packets, want %+v (what capture wrote)", file, len(lines), doc.File)
	}
}

// The closing lines go to stderr in every output (README): with -o json
// too, a person watching sees what was captured and lost, and the file.
func TestCaptureJSONClosingLines(t *testing.T) {
	testkit.RequireRoot(t)
	l := testkit.Lab(t, lab.OneArm)
	vip := netip.AddrPortFrom(l.VIP, 8085)
	file := filepath.Join(t.TempDir(), "json.pcapng")
	wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String(), "--duration", "200ms", "-w", file)
	doc, stderr, code := wait(false)
	for _, want := range []string{"0 packets captured in ", "kernel ring drops: 0 (eth0 0)", "wrote 0 packets to " + file} {
		if code != 0 || doc.File == nil || !strings.Contains(stderr, want) {
			t.Errorf("capture -o json = exit %d, stderr:\n%s\nwant exit 0, a document with its file and %q on stderr", code, stderr, want)
		}
	}
}

// A namespace deleted under `capture --netns` ends the capture with a line
// saying so (as drops does), not a capture that goes on, silent, on
// sockets that alone keep the namespace alive.
func TestCaptureNetnsDeleted(t *testing.T) {
	ns := vethNetns(t, "gone")
	wait, _ := startCaptureText(t, "--netns", ns.Name, "--vip", "10.77.0.1:80", "--duration", "20s")
	time.Sleep(200 * time.Millisecond)
	deleted := time.Now()
	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := wait(false)
	took := time.Since(deleted)
	want := fmt.Sprintf("! cut short (netns %s was deleted) after", ns.Name)
	if code != 0 || took > time.Second || !strings.Contains(stderr, want) || !strings.Contains(stderr, "0 packets captured") {
		t.Errorf("capture --netns %s, deleted = exit %d after %s:\n%s\nwant exit 0 within 1 s, the closing lines and %q", ns.Name, code, took.Round(time.Millisecond), stderr, want)
	}
}

// dnatMasqueradeLab is a one-arm LB of nft DNAT and masquerade whose VIP
// (port 8085) answers its client from the real (port 8080).
func dnatMasqueradeLab(t *testing.T) (*lab.Lab, netip.AddrPort) {
	t.Helper()
	l := testkit.Lab(t, lab.OneArm)
	vip, real := netip.AddrPortFrom(l.VIP, 8085), netip.AddrPortFrom(l.RealIP, 8080)
	testkit.Serve(t, l.Real, ":8080")
	testkit.NftNAT(t, l.LB, vip, real, true)
	testkit.Sysctl(t, l.LB, "net.ipv4.ip_forward", "1")
	return l, vip
}

// What a capture cut short left in the kernel's rings (counted by the
// kernel, never read) is loss, and the closing lines say it, as JSON's
// interfaces[].unread does: here under a flood, ended by Ctrl-C.
func TestCaptureSaysUnread(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := dnatMasqueradeLab(t)
	wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String())
	ctx, stop := context.WithCancel(context.Background())
	flooded := make(chan error, 1)
	go func() { flooded <- testkit.FloodUDP(ctx, l.Client, vip, 0, nil) }()
	time.Sleep(500 * time.Millisecond)
	doc, stderr, code := wait(true)
	stop()
	if err := <-flooded; err != nil {
		t.Fatalf("flood %s: %v", vip, err)
	}
	var unread uint64
	for _, s := range doc.Interfaces {
		unread += s.Unread
	}
	want := fmt.Sprintf("left unread in the rings at the end: %d", unread)
	if code != 0 || doc.Packets == 0 || !strings.Contains(stderr, want) {
		t.Errorf("capture under a flood, interrupted = exit %d, %d packets, stderr:\n%s\nwant exit 0 and %q (JSON's interfaces[].unread)", code, doc.Packets, stderr, want)
	}
}

// On an LB whose conntrack holds more entries than a window reads (a real
// table: 10,100 plain flows more than the VIP's), capture opens promptly
// without dumping it whole, as the drop tracer would (the same rule), says
// so in its closing lines and in JSON's unread, and still joins the VIP's
// flows on every leg: conntrack's flows to the VIP are dumped, filtered in
// the kernel, and the new ones are its events.
func TestCaptureBigConntrack(t *testing.T) {
	testkit.RequireRoot(t)
	l, vip := dnatMasqueradeLab(t)
	// Closed UDP ports of the VIP's address: one flow each in the LB.
	testkit.SendUDPFlows(t, l.Client, l.ClientIP, l.VIP, testkit.Ports(10000, probes.MaxFlowsRead+100), 0)
	stats, err := conntrack.ReadStats(l.LB)
	if err != nil || stats.Entries <= probes.MaxFlowsRead {
		t.Fatalf("conntrack in %s: %d entries (%v), want over %d", l.LB, stats.Entries, err, probes.MaxFlowsRead)
	}
	wait := startCapture(t, "--netns", l.LB.Path, "--vip", vip.String())
	if res := lab.Probe(context.Background(), l.Client, vip, 2*time.Second); !res.OK {
		t.Fatalf("probe %s: %v", vip, res.Err)
	}
	time.Sleep(200 * time.Millisecond)
	doc, stderr, code := wait(true)
	said := fmt.Sprintf("conntrack not dumped whole: %d entries, over %d", stats.Entries, probes.MaxFlowsRead)
	dumped := fmt.Sprintf("only the flows to tcp %s, udp %s are dumped (filtered in the kernel)", vip, vip)
	if code != 0 || !strings.Contains(stderr, "! "+said) || !strings.Contains(stderr, dumped) ||
		!strings.HasPrefix(doc.Unread["conntrack"], said) || len(doc.Errors) != 0 {
		t.Errorf("capture on %d conntrack entries = exit %d, unread %q, errors %q, stderr:\n%s\nwant exit 0, \"! %s\" … %q said, no error", stats.Entries, code, doc.Unread, doc.Errors, stderr, said, dumped)
	}
	if len(doc.Flows) != 1 || doc.Flows[0].Stop != "" || doc.Flows[0].VIP != vip.String() {
		t.Errorf("capture on %d conntrack entries: flows %+v, want the probe's flow to %s on every leg", stats.Entries, doc.Flows, vip)
	}
}

// check --capture says in its output when the capture could not be made
// (here: the VIP is no IPVS service, no flow to capture), as it says any
// layer it could not read: the window's skip alone reached no output.
func TestCheckCaptureNotMadeIsSaid(t *testing.T) {
	ns := vethNetns(t, "nocap")
	var stdout, stderr strings.Builder
	code := run(context.Background(), []string{"check", "--netns", ns.Name, "--vip", "10.77.0.1:80", "--capture", "--watch", "200ms", "--no-probe"}, &stdout, &stderr)
	if want := "! probe capture could not read: no IPVS service selected: no flow to capture (10.77.0.1:80 is no IPVS service: `lbdoctor capture --vip 10.77.0.1:80` captures a VIP that nft or iptables DNATs)"; !strings.Contains(stdout.String(), want) {
		t.Errorf("check --capture on a VIP IPVS does not serve = exit %d, stdout:\n%s\nwant %q", code, stdout.String(), want)
	}
}

// vethNetns is a namespace whose one veth pair is up, 10.77.0.1/24 on vea.
func vethNetns(t *testing.T, role string) netns.Target {
	t.Helper()
	ns := testkit.Netns(t, role)
	testkit.Run(t, ns, "ip", "link", "add", "name", "vea", "type", "veth", "peer", "name", "veb")
	testkit.Run(t, ns, "ip", "addr", "add", "10.77.0.1/24", "dev", "vea")
	testkit.Run(t, ns, "ip", "link", "set", "vea", "up")
	testkit.Run(t, ns, "ip", "link", "set", "veb", "up")
	return ns
}

// A VIP no rule or flow explains is captured with the namespace's own
// addresses (SNAT); the VIP, one of them, is named once.
func TestCaptureNoBackendAddressesOnce(t *testing.T) {
	ns := vethNetns(t, "own")
	wait, _ := startCaptureText(t, "--netns", ns.Name, "--vip", "10.77.0.1:80", "--duration", "100ms")
	_, stderr, code := wait(false)
	if want := "addresses 10.77.0.1, ports any;"; code != 0 || !strings.Contains(stderr, want) {
		t.Errorf("capture --vip 10.77.0.1:80 = exit %d, stderr:\n%s\nwant exit 0 and %q", code, stderr, want)
	}
}

// `capture -o json | head -c 100`: a reader that stops reading the
// document (SIGPIPE ends lbdoctor, as it does tcpdump) does not take the
// closing lines with it: what was captured and lost is on stderr before
// the document is written. Here the reader is gone before the first byte.
func TestCaptureJSONReaderGone(t *testing.T) {
	ns := vethNetns(t, "pipe")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	cmd := exec.Command(testkit.LbdoctorBinary(t), "capture", "--netns", ns.Name, "--vip", "10.77.0.1:80", "--duration", "100ms", "-o", "json")
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = w, &stderr
	err = cmd.Run()
	w.Close()
	if !strings.Contains(stderr.String(), "kernel ring drops: 0 (vea 0)") {
		t.Errorf("capture -o json to a pipe nobody reads = %v, stderr:\n%s\nwant the closing lines (kernel ring drops) on stderr", err, stderr.String())
	}
}
