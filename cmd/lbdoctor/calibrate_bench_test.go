package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/window"
)

// Size of the calibration LB: nft DNAT VIPs and conntrack flows
// (LBDOCTOR_BENCH_CONNS overrides the flows).
const (
	calibrationVIPs  = 1000
	calibrationFlows = 100000
)

// BenchmarkCheckCalibration runs the same `lbdoctor check` on the same
// tables on this machine and in the TCG guest, so that the guest's scale
// numbers (BenchmarkGuestCheckScale, which needs IPVS: only the guest has
// it) can be read as a machine with hardware virtualisation would see
// them: the ratio of the two runs is what TCG costs this very command.
// The LB is an nft DNAT load balancer of 1,000 VIPs (on lo, a counter on
// each rule, a backend behind each) with 100,000
// conntrack flows (1,000 of them to the first VIP, answered by its first
// backend: the VIP's drops are traced through it); beside check, what an operator types for the same
// facts (`nft -a list ruleset`, `conntrack -L -d VIP`).
//
//	go test -run '^$' -bench CheckCalibration -benchtime 1x ./cmd/lbdoctor/      # here (needs busybox)
//	make guest-test RUN='^$' BENCH=CheckCalibration GUEST_PKGS=./cmd/lbdoctor/ LBDOCTOR_GUEST_MEMORY=1G
func BenchmarkCheckCalibration(b *testing.B) {
	testkit.RequireRoot(b)
	if _, err := exec.LookPath("busybox"); err != nil {
		b.Fatal("measuring a command's peak RSS needs busybox (its time applet): apt install busybox")
	}
	flows := calibrationFlows
	if v, err := strconv.Atoi(os.Getenv("LBDOCTOR_BENCH_CONNS")); err == nil && v > 0 {
		flows = v
	}
	lb := testkit.Netns(b, "cal")
	peer := testkit.Netns(b, "calp")
	testkit.Veth(b, testkit.VethEnd{NS: peer, Name: "p0", Addrs: []string{"10.1.0.2/24"}}, testkit.VethEnd{NS: lb, Name: "l0", Addrs: []string{"10.1.0.1/24"}})
	var vips []netip.AddrPort
	var rules bytes.Buffer
	rules.WriteString("table ip lb {\n chain pre {\n  type nat hook prerouting priority dstnat;\n")
	for i := range calibrationVIPs {
		vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}), 80)
		vips = append(vips, vip)
		// One backend a VIP: the guest has no nft_numgen module.
		fmt.Fprintf(&rules, "  ip daddr %s tcp dport 80 counter dnat to 10.244.%d.%d:8080\n", vip.Addr(), i/250, i%250+1)
	}
	rules.WriteString(" }\n chain post {\n  type nat hook postrouting priority srcnat;\n  ip daddr 10.244.0.0/16 counter masquerade\n }\n}\n")
	// Over netlink: the guest's ip is busybox's, without -batch.
	err := lb.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, v := range vips {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: v.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return fmt.Errorf("add %s: %w", v.Addr(), err)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	testkit.RunStdin(b, lb, rules.String(), "nft", "-f", "-")
	testkit.RaiseHostSysctl(b, "net.netfilter.nf_conntrack_max", flows+100_000)
	start := time.Now()
	if err := testkit.FillConntrack(lb, flows, vips[0], 1000, netip.MustParseAddrPort("10.244.0.1:8080")); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d nft DNAT VIPs; %d conntrack flows inserted in %s", len(vips), flows, time.Since(start).Round(time.Millisecond))
	bin := testkit.LbdoctorBinary(b)
	vip := vips[0].String()
	runs := []struct {
		name   string
		window time.Duration
		argv   []string
	}{
		{"check-static", 0, []string{bin, "check", "--netns", lb.Name, "--vip", vip, "--watch", "0", "-o", "json"}},
		{"check-window", window.DefaultLength, []string{bin, "check", "--netns", lb.Name, "--vip", vip, "-o", "json"}},
		{"nft-list-ruleset", 0, []string{"nft", "-a", "list", "ruleset"}},
		{"conntrack-L-d", 0, []string{"conntrack", "-L", "-d", vips[0].Addr().String()}},
	}
	for _, r := range runs {
		b.Run(r.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ns := lb
				if r.argv[0] == bin {
					ns = netns.Target{} // --netns: lbdoctor enters it itself
				}
				m := measureCmd(b, ns, r.argv...)
				if r.argv[0] == bin {
					var rep report.Report
					if err := json.Unmarshal(m.out, &rep); err != nil || m.code > 1 {
						b.Fatalf("%v = exit %d, %d bytes (%v), want exit 0 or 1 and a JSON report\n%s", r.argv[1:], m.code, len(m.out), err, m.err)
					}
					b.Logf("%s: verdict %s, summary %+v, errors %v", r.name, rep.Verdict, rep.Summary, rep.Errors)
				} else if m.code != 0 {
					b.Fatalf("%v = exit %d\n%s", r.argv, m.code, m.err)
				}
				m.report(b, r.window)
				m.logProfile(b, r.name)
			}
		})
	}
}
