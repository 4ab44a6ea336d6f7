package main

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

func TestSetupBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no vip", []string{"setup", "--real", "10.1.0.50:8085"}, "--vip is required"},
		{"unparsable vip", []string{"setup", "--vip", "10.1.0.6", "--real", "10.1.0.50:8085"}, `--vip "10.1.0.6": want ADDR:PORT`},
		{"unknown scheduler", []string{"setup", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80", "--scheduler", "fastest"}, `unknown scheduler "fastest"`},
		{"duplicate real", []string{"setup", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80", "--real", "10.1.0.50:80,3"}, "real 10.1.0.50:80 is given twice"},
		{"no real", []string{"setup", "--vip", "10.1.0.6:80"}, "no real server"},
		{"bad weight", []string{"setup", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80,heavy"}, `weight "heavy" is not a number`},
		{"bad snat", []string{"setup", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80", "--snat", "sometimes"}, `--snat "sometimes"`},
		{"bad backend", []string{"setup", "--vip", "10.1.0.6:80", "--real", "10.1.0.50:80", "--snat-backend", "pf"}, `--snat-backend "pf"`},
		{"teardown bad vip", []string{"teardown", "--vip", "nope"}, `--vip "nope"`},
	}
	for _, tt := range tests {
		code, out, stderr := runCLI(tt.args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.want) || out != "" {
			t.Errorf("%s: lbdoctor %v = exit %d, stderr %q, stdout %q; want exit 2 and one line with %q", tt.name, tt.args, code, stderr, out, tt.want)
		}
	}
}

// On a kernel without IPVS setup says so, exits 3 and changes nothing.
func TestSetupWithoutIPVS(t *testing.T) {
	if !errors.Is(kernel.IPVS(), kernel.ErrNotSupported) {
		t.Skip("this kernel has IPVS: the guest tests cover setup")
	}
	ns := testkit.Netns(t, "setup")
	before := testkit.HostState(t, ns)
	code, _, stderr := runCLI("setup", "--netns", ns.Name, "--vip", "10.1.0.6:8085", "--real", "10.1.0.50:8085")
	if code != exitCannot || !strings.Contains(stderr, "needs IPVS") || !strings.Contains(stderr, "CONFIG_IP_VS") {
		t.Errorf("setup without IPVS = exit %d, %q; want exit 3 naming CONFIG_IP_VS", code, stderr)
	}
	if after := testkit.HostState(t, ns); after != before {
		t.Errorf("setup without IPVS changed the namespace:\n%s\n---\n%s", before, after)
	}
}

func TestSetupFileErrorsNameThePlace(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"setup", "-f", write("bad.yaml", "services:\n  - vip: 10.1.0.6\n    reals: [{addr: 10.1.0.50:80}]\n")}, "bad.yaml:2: vip"},
		{[]string{"setup", "--from-ipvsadm", write("rules", "-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -i\n")}, "rules:2: real 10.1.0.50:80 of tcp 10.1.0.6:80 uses tunnel forwarding"},
		{[]string{"setup", "--from-keepalived", write("k.conf", "virtual_server 10.1.0.6 80 {\n lb_kind nat\n}\n")}, `k.conf:2: virtual_server 10.1.0.6:80: lb_kind "nat"`},
		{[]string{"setup", "-f", dir + "/missing.yaml"}, "no such file"},
		{[]string{"setup", "-f", write("ok.yaml", "services: []\n"), "--vip", "10.1.0.6:80"}, "give one of"},
	}
	for _, tt := range tests {
		code, _, stderr := runCLI(tt.args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.want) {
			t.Errorf("lbdoctor %v = exit %d, %q; want exit 2 and one line with %q", tt.args, code, stderr, tt.want)
		}
	}
}

// A VIP (or real) a flag refuses, a file refuses too, naming FILE:LINE: one
// address rule (setup.AddrFault) for --vip and every input format.
func TestFileAddressesFollowFlagRules(t *testing.T) {
	dir := t.TempDir()
	n := 0
	write := func(body string) string {
		n++
		p := dir + "/in" + strconv.Itoa(n)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct{ addr, port, why string }{
		{"224.0.0.1", "80", "224.0.0.1 is a multicast address, not a VIP"},
		{"0.0.0.0", "80", "0.0.0.0 is the unspecified address, not a VIP"},
		{"255.255.255.255", "80", "255.255.255.255 is the broadcast address, not a VIP"},
	} {
		vip := tt.addr + ":" + tt.port
		for _, args := range [][]string{
			{"setup", "--vip", vip, "--real", "10.1.0.50:80"},
			{"check", "--vip", vip},
			{"setup", "-f", write("services:\n  - vip: " + vip + "\n    reals: [{addr: 10.1.0.50:80}]\n")},
			{"setup", "--from-ipvsadm", write("-A -t " + vip + " -s rr\n-a -t " + vip + " -r 10.1.0.50:80 -m\n")},
			{"setup", "--from-keepalived", write("\nvirtual_server " + tt.addr + " " + tt.port + " {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n}\n")},
		} {
			code, out, stderr := runCLI(args...)
			if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.why) || out != "" {
				t.Errorf("lbdoctor %q = exit %d, stderr %q; want exit 2, one line with %q", args, code, stderr, tt.why)
			}
			if args[1] != "--vip" && !regexp.MustCompile(`/in\d+:[12]: `).MatchString(stderr) {
				t.Errorf("lbdoctor %q: stderr %q names no FILE:LINE", args, stderr)
			}
		}
	}
	code, _, stderr := runCLI("setup", "-f", write("services:\n  - vip: 10.1.0.6:80\n    reals: [{addr: 10.1.0.50:80}, {addr: 239.1.1.1:80}]\n"))
	if want := "real 239.1.1.1:80: 239.1.1.1 is a multicast address, not a real server"; code != exitUsage || !strings.Contains(stderr, want) {
		t.Errorf("setup -f with a multicast real = exit %d, %q; want exit 2 with %q", code, stderr, want)
	}
}

// Names are read in any case on the command line as in files.
func TestSetupFlagNamesInAnyCase(t *testing.T) {
	spec, err := setupSpec(context.Background(), nil, "10.1.0.6:53", "UDP", "WRR", "Always", "NFT", []string{"10.1.0.50:53"}, "", "", "")
	if err != nil {
		t.Fatalf("setupSpec(--proto UDP --scheduler WRR --snat Always --snat-backend NFT) = %v, want it read", err)
	}
	s := spec.Services[0]
	if got := strings.Join([]string{s.Proto, s.Scheduler, s.SNAT, spec.SNATBackend}, " "); got != "udp wrr always nft" {
		t.Errorf("setupSpec(UDP, WRR, Always, NFT) = %s, want udp wrr always nft", got)
	}
}
