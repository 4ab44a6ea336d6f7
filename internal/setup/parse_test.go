package setup_test

import (
	"errors"
	"net/netip"
	"regexp"
	"slices"
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

// Names are read in any case in a YAML file, as on the command line.
func TestParseYAMLNamesInAnyCase(t *testing.T) {
	spec, err := setup.ParseYAML("lb.yaml", []byte("snat_backend: NFT\nservices:\n  - vip: 10.1.0.6:53\n    proto: UDP\n    scheduler: WRR\n    snat: Always\n    reals: [{addr: 10.1.0.50:53}]\n"))
	if err != nil {
		t.Fatalf("ParseYAML(proto: UDP, scheduler: WRR, …) = %v, want it read", err)
	}
	oneService(t, spec, "udp", "10.1.0.6:53", "wrr", "10.1.0.50:53,1")
	if spec.SNATBackend != "nft" || spec.Services[0].SNAT != "always" {
		t.Errorf("snat_backend, snat = %q, %q; want nft, always", spec.SNATBackend, spec.Services[0].SNAT)
	}
}

// A keepalived.conf as written in the field: every documented block and
// keyword lbdoctor does not build is skipped, and both NAT services are
// built, with their weights.
func TestParseKeepalivedFullFile(t *testing.T) {
	spec, err := setup.ParseKeepalived("keepalived.conf", strings.NewReader(keepalivedFull))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range spec.Services {
		for _, r := range s.Reals {
			got = append(got, s.Proto+" "+s.VIP.String()+" "+s.Scheduler+" "+r.Addr.String()+","+itoa(r.Weight))
		}
	}
	want := "tcp 10.1.0.6:80 wrr 10.1.0.50:80,5|tcp 10.1.0.6:80 wrr 10.1.0.51:80,1|udp 10.1.0.7:53 rr 10.1.0.50:53,2"
	if strings.Join(got, "|") != want {
		t.Errorf("ParseKeepalived(full file) = %s, want %s", strings.Join(got, "|"), want)
	}
}

const keepalivedFull = `! Configuration File for keepalived
global_defs {
   notification_email { admin@example.com }
   router_id LVS_1
}
vrrp_script chk { script "/bin/true"; interval 2 }
vrrp_sync_group G1 { group { VI_1 } }
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 100
    authentication { auth_type PASS
        auth_pass 1111 }
    virtual_ipaddress {
        10.1.0.6/24
    }
}
static_routes { 10.9.0.0/16 via 10.1.0.1 }
virtual_server_group VG { 10.1.0.8 80 }
virtual_server 10.1.0.6 80
{
    delay_loop 6
    lvs_sched wrr
    lvs_method NAT
    protocol TCP
    ha_suspend
    alpha
    omega
    quorum 1
    hysteresis 0
    quorum_up "/bin/true"
    virtualhost www.example.com
    sorry_server 10.1.0.99 80
    retry 3
    delay_before_retry 2
    real_server 10.1.0.50 80 {
        weight 5
        inhibit_on_failure
        notify_up /bin/true
        notify_down /bin/true
        HTTP_GET {
            url { path /health
                status_code 200 }
            connect_timeout 3
        }
    }
    real_server 10.1.0.51 80 {
        TCP_CHECK { connect_timeout 3 }
        MISC_CHECK { misc_path "/bin/check weight 9" }
    }
}
virtual_server 10.1.0.7 53 {
    lb_algo rr
    lb_kind NAT
    protocol UDP
    real_server 10.1.0.50 53 { weight 2
        DNS_CHECK { type A
            name example.com }
    }
}
`

// Bad input is one line naming the place, FILE:LINE, in the file's terms:
// no Go internals, long values cut, unsupported constructs named.
func TestParseErrorsNameThePlace(t *testing.T) {
	yml := func(in string) func() error {
		return func() error { _, err := setup.ParseYAML("lb.yaml", []byte(in)); return err }
	}
	ipvsadm := func(in string) func() error {
		return func() error { _, err := setup.ParseIpvsadm("rules", strings.NewReader(in)); return err }
	}
	keepalived := func(in string) func() error {
		return func() error { _, err := setup.ParseKeepalived("k.conf", strings.NewReader(in)); return err }
	}
	const svc = "services:\n  - vip: 10.1.0.6:80\n"
	const kaNAT = "virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n}\n"
	big := strings.Repeat("x", 5<<20)
	long := strings.Repeat("x", 100<<10) // under the line cap of ipvsadm and keepalived
	tests := []struct {
		name  string
		parse func() error
		want  string
	}{
		{"yaml syntax", yml("services:\n  - vip: [\n"), "lb.yaml:2: YAML: did not find expected node content"},
		{"yaml unknown key", yml(svc + "    relas: []\n"), `lb.yaml:3: unknown key "relas" in a service (known: vip, proto, scheduler, snat, reals)`},
		{"yaml unknown top key", yml("servics: []\n"), `lb.yaml:1: unknown key "servics" in the file (known: snat_backend, services)`},
		{"yaml unknown real key", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n        wieght: 2\n"), `lb.yaml:5: unknown key "wieght" in a real (known: addr, weight)`},
		{"yaml many unknown keys", yml(svc + "    a: 1\n    b: 2\n    c: 3\n"), `lb.yaml:3: unknown key "a" in a service, and 2 more (known: vip, proto, scheduler, snat, reals)`},
		{"yaml weight not a number", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n        weight: heavy\n"), `lb.yaml:5: weight: want a whole number 0-65535, got "heavy"`},
		{"yaml weight out of range", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n        weight: 70000\n"), `lb.yaml:5: weight: want a whole number 0-65535, got "70000"`},
		{"yaml negative weight", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n        weight: -1\n"), `lb.yaml:5: weight: want a whole number 0-65535, got "-1"`},
		{"yaml weight a list", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n        weight: [1]\n"), `lb.yaml:5: weight: want a value, got a list`},
		{"yaml empty", yml(""), "lb.yaml: has no services: want services: with a vip and its reals (see README)"},
		{"yaml only comments", yml("# nothing\n"), "lb.yaml: has no services: want services: with a vip and its reals (see README)"},
		{"yaml empty services", yml("snat_backend: nft\nservices: []\n"), "lb.yaml:2: has no services: want services: with a vip and its reals (see README)"},
		{"yaml not a mapping", yml("- vip: 10.1.0.6:80\n"), "lb.yaml:1: the file: want a mapping (key: value), got a list"},
		{"yaml bad indent on line 5", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n     weight: 2\n"), "lb.yaml:5: this line's indentation does not fit the lines above (YAML: did not find expected key)"},
		{"yaml dedent on line 4", yml(svc + "    scheduler: rr\n   reals: []\n"), "lb.yaml:4: this line's indentation does not fit the lines above (YAML: did not find expected '-' indicator)"},
		{"yaml tab", yml("services:\n\t- vip: 10.1.0.6:80\n"), "lb.yaml:2: a tab indents this line: YAML indents with spaces only"},
		{"yaml bad vip", yml(svc[:len(svc)-4] + "\n    reals: [{addr: 10.1.0.50:80}]\n"), `lb.yaml:2: vip "10.1.0.6": want IPv4 ADDR:PORT, e.g. 10.1.0.6:8085`},
		{"yaml hostname vip", yml("services:\n  - vip: lb.example.com:80\n"), `lb.yaml:2: vip "lb.example.com:80": hostnames are not supported (lbdoctor resolves no names): give an IPv4 address`},
		{"yaml service name port", yml(svc + "    reals:\n      - addr: 10.1.0.50:http\n"), `lb.yaml:4: addr "10.1.0.50:http": service names are not supported: give the port number`},
		{"yaml ipv6 vip", yml("services:\n  - vip: '[::1]:80'\n    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:2: service tcp [::1]:80: the VIP must be IPv4 ADDR:PORT with a port"},
		{"yaml unknown scheduler", yml(svc + "    scheduler: rrr\n    reals: [{addr: 10.1.0.50:80}]\n"), `lb.yaml:3: scheduler: want one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, got "rrr"`},
		{"yaml bad proto", yml(svc + "    proto: sctp\n"), `lb.yaml:3: proto: want one of tcp, udp, got "sctp"`},
		{"yaml bad snat_backend", yml("snat_backend: pf\n"), `lb.yaml:1: snat_backend: want one of auto, iptables, nft, got "pf"`},
		{"yaml no reals", yml(svc + "    scheduler: wrr\n"), "lb.yaml:2: service tcp 10.1.0.6:80: no real server"},
		{"yaml empty reals", yml(svc + "    reals: []\n"), "lb.yaml:3: service tcp 10.1.0.6:80: no real server"},
		{"yaml no vip", yml("services:\n  - reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:2: a service without vip: give vip: ADDR:PORT"},
		{"yaml duplicate service", yml(svc + "    reals: [{addr: 10.1.0.50:80}]\n  - vip: 10.1.0.6:80\n    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:4: service tcp 10.1.0.6:80 is given twice"},
		{"yaml duplicate real", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\n      - addr: 10.1.0.50:80\n"), "lb.yaml:5: service tcp 10.1.0.6:80: real 10.1.0.50:80 is given twice"},
		{"yaml duplicate key", yml(svc + "    vip: 10.1.0.7:80\n"), "lb.yaml:3: vip is given twice in a service (first on line 2)"},
		{"yaml alias", yml("x: &a 10.1.0.6:80\n"), `lb.yaml:1: unknown key "x" in the file (known: snat_backend, services)`},
		{"yaml alias value", yml("services:\n  - vip: &v 10.1.0.6:80\n    reals: [{addr: *v}]\n"), "lb.yaml:3: addr: aliases (*name) are not supported: write the value out"},
		{"yaml two documents", yml("services: []\n---\nservices: []\n"), "lb.yaml:2: a second YAML document (---): lbdoctor reads one; put all services under one services:"},
		{"yaml control character", yml(svc + "    reals:\n      - addr: 10.1.0.50:80\x01\n"), "lb.yaml:4: binary content (control character 0x01): want a text file"},
		{"yaml invalid UTF-8", yml(svc + "    scheduler: \xff\n"), "lb.yaml:3: binary content (byte 0xff is not UTF-8): want a text file"},
		{"yaml NUL byte", yml(svc + "\x00    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:3: binary content (a NUL byte): want a text file"},
		{"yaml too deep", yml("services:\n  - vip: 10.1.0.6:80\n    reals: " + strings.Repeat("[", 20000) + "\n"), "lb.yaml:3: nested deeper than lbdoctor reads (10000 levels): a services file is 4 levels deep (see README)"},
		{"yaml key over 1024 characters", yml(long[:1100] + ": 1\n"), "lb.yaml:1: a key of 1100 characters: YAML keys are at most 1024"},
		{"yaml key over 1024 characters in a service", yml(svc + "    " + long[:1100] + ": 1\n"), "lb.yaml:3: a key of 1100 characters: YAML keys are at most 1024"},
		{"yaml second colon", yml("services: a: b\n"), "lb.yaml:1: a second ': ' on this line: quote a value that holds ': '"},
		{"yaml multicast vip", yml("services:\n  - vip: 224.0.0.1:80\n    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:2: service tcp 224.0.0.1:80: 224.0.0.1 is a multicast address, not a VIP"},
		{"yaml broadcast vip", yml("services:\n  - vip: 255.255.255.255:80\n    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:2: service tcp 255.255.255.255:80: 255.255.255.255 is the broadcast address, not a VIP"},
		{"yaml unspecified vip", yml("services:\n  - vip: 0.0.0.0:80\n    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:2: service tcp 0.0.0.0:80: 0.0.0.0 is the unspecified address, not a VIP"},
		{"yaml vip port 0", yml("services:\n  - vip: 10.1.0.6:0\n    reals: [{addr: 10.1.0.50:80}]\n"), "lb.yaml:2: service tcp 10.1.0.6:0: the VIP must be IPv4 ADDR:PORT with a port"},
		{"yaml multicast real", yml(svc + "    reals:\n      - addr: 239.1.1.1:80\n"), "lb.yaml:4: service tcp 10.1.0.6:80: real 239.1.1.1:80: 239.1.1.1 is a multicast address, not a real server"},
		{"yaml 5 MB value", yml("services:\n  - vip: " + big + "\n"), `lb.yaml:2: vip "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…": want IPv4 ADDR:PORT, e.g. 10.1.0.6:8085`},
		{"yaml long key", yml(long[:1000] + ": 1\n"), `lb.yaml:1: unknown key "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…" in the file (known: snat_backend, services)`},

		{"ipvsadm direct routing", ipvsadm("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -g -w 1\n"), "rules:2: real 10.1.0.50:80 of tcp 10.1.0.6:80 uses route forwarding: lbdoctor sets up NAT (-m) only"},
		{"ipvsadm real before service", ipvsadm("-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n"), "rules:1: real server for tcp 10.1.0.6:80 before its -A line"},
		{"ipvsadm duplicate real", ipvsadm("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n"), "rules:3: service tcp 10.1.0.6:80: real 10.1.0.50:80 is given twice"},
		{"ipvsadm unknown scheduler", ipvsadm("-A -t 10.1.0.6:80 -s rrr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n"), `rules:1: service tcp 10.1.0.6:80: unknown scheduler "rrr" (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh)`},
		{"ipvsadm weight 70000", ipvsadm("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m -w 70000\n"), `rules:2: weight: want a whole number 0-65535, got "70000"`},
		{"ipvsadm weight heavy", ipvsadm("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m -w heavy\n"), `rules:2: weight: want a whole number 0-65535, got "heavy"`},
		{"ipvsadm no real", ipvsadm("-A -t 10.1.0.6:80 -s rr\n-A -t 10.1.0.6:81 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m\n"), "rules:2: service tcp 10.1.0.6:81: no real server"},
		{"ipvsadm empty", ipvsadm(""), "rules: has no services: want the -A and -a lines of `ipvsadm -Sn` output"},
		{"ipvsadm -Ln", ipvsadm("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nTCP  10.1.0.6:80 rr\n  -> 10.1.0.50:80                 Masq    1      0          0\n"), "rules:1: this is `ipvsadm -L` (list) output: give `ipvsadm -Sn` (save, numeric) output"},
		{"ipvsadm -Ln without header", ipvsadm("TCP  10.1.0.6:80 rr\n  -> 10.1.0.50:80                 Masq    1      0          0\n"), "rules:1: this is `ipvsadm -L` (list) output: give `ipvsadm -Sn` (save, numeric) output"},
		{"ipvsadm -S service name", ipvsadm("-A -t 10.1.0.6:http -s rr\n"), "rules:1: service \"10.1.0.6:http\": service names are not supported: give the port number; this looks like `ipvsadm -S` output: give `ipvsadm -Sn` (numeric) output"},
		{"ipvsadm -S hostname", ipvsadm("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r web1.example.com:80 -m\n"), "rules:2: real server \"web1.example.com:80\": hostnames are not supported (lbdoctor resolves no names): give an IPv4 address; this looks like `ipvsadm -S` output: give `ipvsadm -Sn` (numeric) output"},
		{"ipvsadm long option", ipvsadm("-A -t 10.1.0.6:80 -" + long + "\n"), `rules:1: unknown option "-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…"`},
		{"ipvsadm multicast vip", ipvsadm("-A -t 224.0.0.1:80 -s rr\n-a -t 224.0.0.1:80 -r 10.1.0.50:80 -m\n"), "rules:1: service tcp 224.0.0.1:80: 224.0.0.1 is a multicast address, not a VIP"},
		{"ipvsadm NUL byte", ipvsadm("-A -t 10.1.0.6:80 -s rr\n\x00-A -t 10.1.0.7:80 -g\n"), "rules:2: binary content (a NUL byte): want a text file"},
		{"ipvsadm line over 1 MiB", ipvsadm("-A -t 10.1.0.6:80\n" + big + "\n"), "rules:2: line is longer than the 1 MiB lbdoctor reads"},

		{"keepalived lowercase nat", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind nat\n real_server 10.1.0.50 80 {\n }\n}\n"), `k.conf:2: virtual_server 10.1.0.6:80: lb_kind "nat": lbdoctor sets up NAT only (write lb_kind NAT)`},
		{"keepalived DR", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind DR\n}\n"), `k.conf:2: virtual_server 10.1.0.6:80: lb_kind "DR": lbdoctor sets up NAT only (write lb_kind NAT)`},
		{"keepalived no lb_kind", keepalived("virtual_server 10.1.0.6 80 {\n real_server 10.1.0.50 80 {\n }\n}\n"), "k.conf:1: virtual_server 10.1.0.6:80 has no lb_kind: lbdoctor sets up NAT only (write lb_kind NAT)"},
		{"keepalived unbalanced", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n"), "k.conf:2: file ends inside a block"},
		{"keepalived include", keepalived("global_defs { router_id lb1 }\ninclude /etc/keepalived/conf.d/*.conf\n"), "k.conf:2: include is not followed: lbdoctor reads this one file; give it the file with the virtual_server blocks"},
		{"keepalived hostname", keepalived("virtual_server lb.example.com 80 {\n lb_kind NAT\n}\n"), "k.conf:1: virtual_server lb.example.com 80: hostnames are not supported (lbdoctor resolves no names): give an IPv4 address"},
		{"keepalived real hostname", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server web1 80 {\n }\n}\n"), "k.conf:3: real_server web1 80: hostnames are not supported (lbdoctor resolves no names): give an IPv4 address"},
		{"keepalived unknown scheduler", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n lb_algo rrr\n real_server 10.1.0.50 80 {\n }\n}\n"), `k.conf:3: service tcp 10.1.0.6:80: unknown scheduler "rrr" (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh)`},
		{"keepalived weight 70000", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n  weight 70000\n }\n}\n"), `k.conf:4: weight: want a whole number 0-65535, got "70000"`},
		{"keepalived no real", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n}\n"), "k.conf:1: service tcp 10.1.0.6:80: no real server"},
		{"keepalived duplicate real", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n real_server 10.1.0.50 80 {\n }\n}\n"), "k.conf:5: service tcp 10.1.0.6:80: real 10.1.0.50:80 is given twice"},
		{"keepalived empty", keepalived(""), "k.conf: has no virtual_server block: lbdoctor builds the lb_kind NAT virtual_servers of a keepalived.conf"},
		{"keepalived misspelled virtual_server", keepalived(kaNAT + "virtual_servr 10.1.0.7 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n}\n"), `k.conf:6: unknown keyword "virtual_servr" at the top level (keepalived would ignore it too: check the spelling)`},
		{"keepalived misspelled real_server", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n real_servr 10.1.0.51 80 {}\n}\n"), `k.conf:5: unknown keyword "real_servr" in virtual_server (keepalived would ignore it too: check the spelling)`},
		{"keepalived misspelled weight", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n  wieght 5\n }\n}\n"), `k.conf:4: unknown keyword "wieght" in real_server (keepalived would ignore it too: check the spelling)`},
		{"keepalived weight with a value too many", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n  weight 1 2\n }\n}\n"), `k.conf:4: weight: "2" is one value too many`},
		{"keepalived misspelled weight on one line", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 { wieght 5 }\n}\n"), `k.conf:3: unknown keyword "wieght" in real_server (keepalived would ignore it too: check the spelling)`},
		{"keepalived unknown top-level block", keepalived("global_def { router_id lb1 }\n" + kaNAT), `k.conf:1: unknown keyword "global_def" at the top level (keepalived would ignore it too: check the spelling)`},
		{"keepalived NUL before a DR block", keepalived(kaNAT + "\x00virtual_server 10.1.0.7 80 {\n lb_kind DR\n real_server 10.1.0.50 80 {\n }\n}\n"), "k.conf:6: binary content (a NUL byte): want a text file"},
		{"keepalived control character", keepalived(kaNAT + "# \x07\n"), "k.conf:6: binary content (control character 0x07): want a text file"},
		{"keepalived real lvs_method DR", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n  lvs_method DR\n }\n}\n"), "k.conf:4: real_server 10.1.0.50:80: lvs_method: lbdoctor sets up NAT only (write lb_kind NAT, or leave it out)"},
		{"keepalived uthreshold", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n  uthreshold 100\n }\n}\n"), "k.conf:4: uthreshold is not supported by lbdoctor setup"},
		{"keepalived persistence", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n persistence_timeout 50\n}\n"), "k.conf:3: persistence_timeout is not supported by lbdoctor setup"},
		{"keepalived parameter", keepalived("$VIP=10.1.0.6\n" + kaNAT), `k.conf:1: "$VIP=10.1.0.6": keepalived's parameters ($NAME) and conditional lines (@ID) are not supported: write the values out`},
		{"keepalived lowercase protocol", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n protocol udp\n}\n"), `k.conf:3: protocol "udp": want TCP or UDP (keepalived reads them in capitals only)`},
		{"keepalived multicast vip", keepalived("virtual_server 224.0.0.1 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n}\n"), "k.conf:1: service tcp 224.0.0.1:80: 224.0.0.1 is a multicast address, not a VIP"},
		{"keepalived unspecified real", keepalived("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 0.0.0.0 80 {\n }\n}\n"), "k.conf:3: service tcp 10.1.0.6:80: real 0.0.0.0:80: 0.0.0.0 is the unspecified address, not a real server"},
		{"keepalived long protocol", keepalived("virtual_server 10.1.0.6 80 {\n protocol " + long + "\n}\n"), `k.conf:2: protocol "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…": want TCP or UDP (keepalived reads them in capitals only)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse()
			var pe *setup.ParseError
			if err == nil || !errors.As(err, &pe) || err.Error() != tt.want {
				t.Errorf("%s = %v, want %s", tt.name, err, tt.want)
			}
		})
	}
}

// goInternals are words of Go and its libraries that a user must never see.
// Quoted values are the user's own and are not searched.
var goInternals = []string{"strconv.", "yamlService", "yamlSpec", "unmarshal", "!!", "bufio.", "netip.", "ParseAddr", "<nil>", "%!", "yaml: "}

var quoted = regexp.MustCompile(`"(\\.|[^"\\])*"`)

// checkErr fails unless err is nil or one short ParseError line naming the
// file, without Go internals.
func checkErr(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *setup.ParseError
	msg := err.Error()
	switch {
	case !errors.As(err, &pe):
		t.Fatalf("error %q is %T, want *setup.ParseError", msg, err)
	case strings.ContainsAny(msg, "\n\r"):
		t.Fatalf("error %q is more than one line", msg)
	case !strings.HasPrefix(msg, "f:") && !strings.HasPrefix(msg, "f: "):
		t.Fatalf("error %q does not start with the file name", msg)
	case len(msg) > 400:
		t.Fatalf("error is %d bytes long, want a short line: %.200q…", len(msg), msg)
	}
	words := quoted.ReplaceAllString(msg, `""`)
	for _, w := range goInternals {
		if strings.Contains(words, w) {
			t.Fatalf("error %q shows Go internals (%q)", msg, w)
		}
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add("snat_backend: nft\nservices:\n  - vip: 10.1.0.6:8085\n    reals:\n      - addr: 10.1.0.50:8085\n        weight: 3\n")
	f.Add("services:\n  - vip: 224.0.0.1:80\n    proto: UDP\n    reals: [{addr: 10.1.0.50:80}]\n\x00")
	f.Add("services: " + strings.Repeat("[", 10001))
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := setup.ParseYAML("f", []byte(in))
		checkErr(t, err)
		if err == nil && spec.Validate() != nil {
			t.Fatalf("accepted an invalid spec: %+v", spec)
		}
	})
}

func FuzzParseKeepalived(f *testing.F) {
	f.Add("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 { weight 2 }\n}\n")
	f.Add(keepalivedFull)
	f.Add("virtual_servr 10.1.0.7 80 {\n lb_kind NAT\n real_servr 10.1.0.50 80 { wieght 5 }\n}\n")
	f.Add("\x00virtual_server 10.1.0.7 80 {\n lb_kind DR\n}\n")
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := setup.ParseKeepalived("f", strings.NewReader(in))
		checkErr(t, err)
		if err == nil && spec.Validate() != nil {
			t.Fatalf("accepted an invalid spec: %+v", spec)
		}
	})
}

func FuzzParseIpvsadm(f *testing.F) {
	f.Add("-A -t 10.1.0.6:80 -s rr\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -m -w 1\n")
	f.Add("-A -t 224.0.0.1:80 -s RR\n\x00-a -t 224.0.0.1:80 -r 10.1.0.50:80 -m\n")
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := setup.ParseIpvsadm("f", strings.NewReader(in))
		checkErr(t, err)
		if err == nil && spec.Validate() != nil {
			t.Fatalf("accepted an invalid spec: %+v", spec)
		}
	})
}

// teardown --vip picks only that service's objects, and keeps the
// sysctls and addresses recorded without services (an older lbdoctor's).
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
	st.Add(apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward", Previous: "0"},
		apply.Object{Kind: "address", Key: "10.1.0.6/32", Dev: "eth0"}) // check --fix of ipvs.vip_local
	_, objs, _ := setup.TeardownSteps(ns, st, netip.MustParseAddrPort("10.1.0.6:443"))
	var got []string
	for _, o := range objs {
		got = append(got, o.Kind+" "+o.VIP+o.Real+strings.Join(o.Rule, " "))
	}
	if len(objs) != 3 || strings.Contains(strings.Join(got, "|"), ":80") || strings.Contains(strings.Join(got, "|"), "--vport 80") {
		t.Errorf("TeardownSteps(--vip :443) = %q, want the 3 objects of :443 only", got)
	}
	if _, all, _ := setup.TeardownSteps(ns, st, netip.AddrPort{}); len(all) != 8 {
		t.Errorf("TeardownSteps(all) = %d objects, want 8", len(all))
	}
}

// The user's record: check --fix made a source NAT rule and sysctls for
// service A (which lbdoctor did not make), setup made service B and found
// some of A's sysctls already set (now made for both). teardown --vip B
// undoes only what B alone needs, and says what it keeps and why.
func TestTeardownStepsKeepsOtherServices(t *testing.T) {
	ns := netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb"}
	const a, b = "TCP 10.1.0.6:8085", "TCP 10.1.0.7:80"
	record := func() *apply.State {
		st := &apply.State{}
		st.Add( // check --fix for A
			apply.Object{Kind: "iptables-rule", Backend: "iptables-legacy", Table: "nat", Chain: "POSTROUTING", VIP: "10.1.0.6:8085",
				Rule: []string{"-m", "ipvs", "--vaddr", "10.1.0.6/32", "--vport", "8085", "--vproto", "tcp", "-j", "MASQUERADE"}},
			apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward", Previous: "0", Set: "1", Services: []string{a}},
			apply.Object{Kind: "sysctl", Key: "net.ipv4.vs.conntrack", Previous: "0", Set: "1", Services: []string{a}},
			apply.Object{Kind: "sysctl", Key: "net.ipv4.conf.all.send_redirects", Previous: "1", Set: "0", Services: []string{a}},
		)
		st.Add( // setup of B: its own objects, and what it found already set
			apply.Object{Kind: "ipvs-service", VIP: "10.1.0.7:80", Proto: "tcp", Key: "rr"},
			apply.Object{Kind: "ipvs-real", VIP: "10.1.0.7:80", Proto: "tcp", Real: "10.1.0.50:8085", Key: "1"},
			apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward", Services: []string{b}},
			apply.Object{Kind: "sysctl", Key: "net.ipv4.vs.expire_nodest_conn", Previous: "0", Set: "1", Services: []string{b}},
			apply.Object{Kind: "sysctl", Key: "net.ipv4.vs.conntrack", Services: []string{b}},
		)
		return st
	}
	const rule = "iptables-legacy rule -t nat -A POSTROUTING -m ipvs --vaddr 10.1.0.6/32 --vport 8085 --vproto tcp -j MASQUERADE"
	tests := []struct {
		name    string
		release string // a --vip torn down before
		vip     string
		undone  []string // newest first
		kept    []string
	}{
		{
			name:   "B",
			vip:    "10.1.0.7:80",
			undone: []string{"sysctl net.ipv4.vs.expire_nodest_conn", "ipvs real 10.1.0.50:8085 of tcp 10.1.0.7:80", "ipvs service tcp 10.1.0.7:80"},
			kept: []string{
				"sysctl net.ipv4.conf.all.send_redirects: made for TCP 10.1.0.6:8085, not 10.1.0.7:80",
				"sysctl net.ipv4.vs.conntrack: still needed by TCP 10.1.0.6:8085",
				"sysctl net.ipv4.ip_forward: still needed by TCP 10.1.0.6:8085",
				rule + ": made for 10.1.0.6:8085, not 10.1.0.7:80",
			},
		},
		{
			name:    "A after B",
			release: "10.1.0.7:80",
			vip:     "10.1.0.6:8085",
			undone:  []string{"sysctl net.ipv4.conf.all.send_redirects", "sysctl net.ipv4.vs.conntrack", "sysctl net.ipv4.ip_forward", rule},
		},
		{
			name:   "A while B stands",
			vip:    "10.1.0.6:8085",
			undone: []string{"sysctl net.ipv4.conf.all.send_redirects", rule},
			kept: []string{
				"sysctl net.ipv4.vs.expire_nodest_conn: made for TCP 10.1.0.7:80, not 10.1.0.6:8085",
				"ipvs real 10.1.0.50:8085 of tcp 10.1.0.7:80: made for 10.1.0.7:80, not 10.1.0.6:8085",
				"ipvs service tcp 10.1.0.7:80: made for 10.1.0.7:80, not 10.1.0.6:8085",
				"sysctl net.ipv4.vs.conntrack: still needed by TCP 10.1.0.7:80",
				"sysctl net.ipv4.ip_forward: still needed by TCP 10.1.0.7:80",
			},
		},
		{
			name: "everything",
			undone: []string{"sysctl net.ipv4.vs.expire_nodest_conn", "ipvs real 10.1.0.50:8085 of tcp 10.1.0.7:80", "ipvs service tcp 10.1.0.7:80",
				"sysctl net.ipv4.conf.all.send_redirects", "sysctl net.ipv4.vs.conntrack", "sysctl net.ipv4.ip_forward", rule},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := record()
			if tt.release != "" {
				_, objs, _ := setup.TeardownSteps(ns, st, netip.MustParseAddrPort(tt.release))
				for _, o := range objs {
					st.Remove(o)
				}
				st.Release(tt.release)
			}
			var vip netip.AddrPort
			if tt.vip != "" {
				vip = netip.MustParseAddrPort(tt.vip)
			}
			_, objs, kept := setup.TeardownSteps(ns, st, vip)
			var undone []string
			for _, o := range objs {
				undone = append(undone, o.String())
			}
			if !slices.Equal(undone, tt.undone) {
				t.Errorf("TeardownSteps(--vip %s) undoes %q, want %q", tt.vip, undone, tt.undone)
			}
			if !slices.Equal(kept, tt.kept) {
				t.Errorf("TeardownSteps(--vip %s) kept = %q, want %q", tt.vip, kept, tt.kept)
			}
		})
	}
}
