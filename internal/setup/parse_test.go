package setup_test

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/setup"
)

func oneService(t *testing.T, spec setup.Spec, proto, vip, sched string, reals ...string) {
	t.Helper()
	if len(spec.Services) != 1 {
		t.Fatalf("spec = %+v, want one service", spec)
	}
	s := spec.Services[0]
	var got []string
	for _, r := range s.Reals {
		got = append(got, r.Addr.String()+","+itoa(r.Weight))
	}
	if s.Proto != proto || s.VIP != netip.MustParseAddrPort(vip) || s.Scheduler != sched || strings.Join(got, " ") != strings.Join(reals, " ") {
		t.Errorf("service = %s %s %s %v, want %s %s %s %v", s.Proto, s.VIP, s.Scheduler, got, proto, vip, sched, reals)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestParseYAML(t *testing.T) {
	spec, err := setup.ParseYAML("lb.yaml", []byte(`snat_backend: nft
services:
  - vip: 10.1.0.6:8085
    reals:
      - addr: 10.1.0.50:8085
      - addr: 10.1.0.51:8085
        weight: 3
`))
	if err != nil {
		t.Fatal(err)
	}
	oneService(t, spec, "tcp", "10.1.0.6:8085", "rr", "10.1.0.50:8085,1", "10.1.0.51:8085,3")
	if spec.SNATBackend != "nft" {
		t.Errorf("snat_backend = %q, want nft", spec.SNATBackend)
	}
}

func TestParseIpvsadm(t *testing.T) {
	spec, err := setup.ParseIpvsadm("rules", strings.NewReader("-A -u 10.1.0.6:53 -s wrr\n-a -u 10.1.0.6:53 -r 10.1.0.50:53 -m -w 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	oneService(t, spec, "udp", "10.1.0.6:53", "wrr", "10.1.0.50:53,2")
}

func TestParseKeepalived(t *testing.T) {
	spec, err := setup.ParseKeepalived("keepalived.conf", strings.NewReader(`
global_defs { router_id lb1 }
virtual_server 10.1.0.6 8085 {
    delay_loop 6
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 10.1.0.50 8085 {
        weight 4
        TCP_CHECK { connect_timeout 3 }
    }
}
`))
	if err != nil {
		t.Fatal(err)
	}
	oneService(t, spec, "tcp", "10.1.0.6:8085", "rr", "10.1.0.50:8085,4")
}

// Bad input names the place, file:line, and nothing is built from it.
func TestParseErrorsNameThePlace(t *testing.T) {
	tests := []struct {
		name  string
		parse func() error
		want  string
	}{
		{"yaml syntax", func() error { _, err := setup.ParseYAML("lb.yaml", []byte("services:\n  - vip: [\n")); return err }, "lb.yaml:2: did not find expected node content"},
		{"yaml unknown field", func() error {
			_, err := setup.ParseYAML("lb.yaml", []byte("services:\n  - vip: 10.1.0.6:80\n    realz: []\n"))
			return err
		}, "lb.yaml:3: field realz not found"},
		{"yaml bad vip", func() error {
			_, err := setup.ParseYAML("lb.yaml", []byte("services:\n  - vip: 10.1.0.6\n    reals: [{addr: 10.1.0.50:80}]\n"))
			return err
		}, `lb.yaml:2: vip "10.1.0.6"`},
		{"yaml unknown scheduler", func() error {
			_, err := setup.ParseYAML("lb.yaml", []byte("services:\n  - vip: 10.1.0.6:80\n    scheduler: best\n    reals: [{addr: 10.1.0.50:80}]\n"))
			return err
		}, `unknown scheduler "best"`},
		{"ipvsadm direct routing", func() error {
			_, err := setup.ParseIpvsadm("rules", strings.NewReader("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -g -w 1\n"))
			return err
		}, "rules:2: real 10.1.0.50:80 of tcp 10.1.0.6:80 uses route forwarding"},
		{"ipvsadm real before service", func() error {
			_, err := setup.ParseIpvsadm("rules", strings.NewReader("-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n"))
			return err
		}, "rules:1: real server for tcp 10.1.0.6:80 before its -A line"},
		{"ipvsadm duplicate real", func() error {
			_, err := setup.ParseIpvsadm("rules", strings.NewReader("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n"))
			return err
		}, "real 10.1.0.50:80 is given twice"},
		{"keepalived lowercase nat", func() error {
			_, err := setup.ParseKeepalived("k.conf", strings.NewReader("virtual_server 10.1.0.6 80 {\n lb_kind nat\n real_server 10.1.0.50 80 {\n }\n}\n"))
			return err
		}, `k.conf:1: virtual_server 10.1.0.6:80: lb_kind "nat": lbdoctor sets up NAT only`},
		{"keepalived DR", func() error {
			_, err := setup.ParseKeepalived("k.conf", strings.NewReader("virtual_server 10.1.0.6 80 {\n lb_kind DR\n}\n"))
			return err
		}, `k.conf:1: virtual_server 10.1.0.6:80: lb_kind "DR"`},
		{"keepalived unbalanced", func() error {
			_, err := setup.ParseKeepalived("k.conf", strings.NewReader("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n"))
			return err
		}, "k.conf:2: file ends inside a block"},
	}
	for _, tt := range tests {
		err := tt.parse()
		var pe *setup.ParseError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error = %v, want a one-line ParseError containing %q", tt.name, err, tt.want)
		}
	}
}

func FuzzParseKeepalived(f *testing.F) {
	f.Add("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 { weight 2 }\n}\n")
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := setup.ParseKeepalived("f", strings.NewReader(in))
		if err == nil && spec.Validate() != nil {
			t.Fatalf("accepted an invalid spec: %+v", spec)
		}
	})
}

func FuzzParseIpvsadm(f *testing.F) {
	f.Add("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m -w 1\n")
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := setup.ParseIpvsadm("f", strings.NewReader(in))
		if err == nil && spec.Validate() != nil {
			t.Fatalf("accepted an invalid spec: %+v", spec)
		}
	})
}

// teardown --vip picks only that service's objects, and keeps the sysctls
// while another lbdoctor service remains.
func TestTeardownStepsForOneVIP(t *testing.T) {
	ns := netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb"}
	st := &apply.State{}
	for _, port := range []string{"80", "443"} {
		st.Add(
			apply.Object{Kind: "ipvs-service", VIP: "10.1.0.6:" + port, Proto: "tcp", Key: "rr"},
			apply.Object{Kind: "ipvs-real", VIP: "10.1.0.6:" + port, Proto: "tcp", Real: "10.1.0.50:" + port, Key: "1"},
			apply.Object{Kind: "iptables-rule", Backend: "iptables-nft", Table: "nat", Chain: "POSTROUTING", VIP: "10.1.0.6:" + port,
				Rule: []string{"-m", "ipvs", "--vaddr", "10.1.0.6/32", "--vport", port, "--vproto", "tcp", "-j", "MASQUERADE"}},
		)
	}
	st.Add(apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward", Previous: "0"})
	_, objs := setup.TeardownSteps(ns, st, netip.MustParseAddrPort("10.1.0.6:443"))
	var got []string
	for _, o := range objs {
		got = append(got, o.Kind+" "+o.VIP+o.Real+strings.Join(o.Rule, " "))
	}
	if len(objs) != 3 || strings.Contains(strings.Join(got, "|"), ":80") || strings.Contains(strings.Join(got, "|"), "--vport 80") {
		t.Errorf("TeardownSteps(--vip :443) = %q, want the 3 objects of :443 only", got)
	}
	if _, all := setup.TeardownSteps(ns, st, netip.AddrPort{}); len(all) != 7 {
		t.Errorf("TeardownSteps(all) = %d objects, want 7", len(all))
	}
}
