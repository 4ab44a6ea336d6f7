package setup_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/expect"
	"github.com/lbdoctor/lbdoctor/internal/setup"
)

// summary is an expectation one service a line: KEY scheduler pN @line:
// real method weight @line, …
func summary(c expect.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", c.Format)
	for _, s := range c.Services {
		fmt.Fprintf(&b, "\n%s %s p%d @%d:", s.Key(), s.Scheduler, s.Persistence, s.Line)
		for _, r := range s.Reals {
			fmt.Fprintf(&b, " %s %s %d @%d", r.Addr, r.Method, r.Weight, r.Line)
		}
	}
	return b.String()
}

func TestParseExpected(t *testing.T) {
	lab, err := os.ReadFile("../../cmd/lbdoctor/testdata/keepalived.conf")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, in, want string
	}{
		{"the guest director's keepalived.conf", string(lab), `keepalived.conf
TCP 10.1.0.6:8085 wrr p0 @18: 10.1.0.50:8085 masq 2 @24 10.1.0.51:8085 masq 1 @30 10.1.0.50:8086 masq 1 @36
UDP 10.1.0.6:53 rr p60 @41: 10.1.0.50:53 route 1 @47
FWM 7 sh p0 @52: 10.1.0.50:8085 route 1 @56`},
		{"keepalived: a real's own lb_kind over the virtual_server's", `virtual_server 10.1.0.6 80 {
  lb_kind NAT
  real_server 10.1.0.50 80 { weight 3 }
  real_server 10.1.0.51 80 { lb_kind TUN }
}`, `keepalived.conf
TCP 10.1.0.6:80 wlc p0 @1: 10.1.0.50:80 masq 3 @3 10.1.0.51:80 tunnel 1 @4`},
		{"keepalived: a bare persistence_timeout is 6 minutes", "virtual_server 10.1.0.6 80 {\n lb_kind NAT\n persistence_timeout\n}\n", `keepalived.conf
TCP 10.1.0.6:80 wlc p360 @1:`},
		{"keepalived: a virtual_server without reals", "virtual_server 10.1.0.6 80 {\n lb_kind DR\n}\n", `keepalived.conf
TCP 10.1.0.6:80 wlc p0 @1:`},
		{"ipvsadm -Sn: every method, persistence, a firewall mark", `# saved
-A -t 10.1.0.6:80 -s rr -p 300
-a -t 10.1.0.6:80 -r 10.1.0.50:80 -g -w 1
-a -t 10.1.0.6:80 -r 10.1.0.51:80 -i -w 2
-a -t 10.1.0.6:80 -r 10.1.0.52:8080 -m -w 0
-A -f 7 -s sh -p
-a -f 7 -r 10.1.0.53:0 -g -w 1
-A -u 10.1.0.6:53 -s rr
-a -u 10.1.0.6:53 -r 10.1.0.50:53 -w 4
`, `ipvsadm -Sn
TCP 10.1.0.6:80 rr p300 @2: 10.1.0.50:80 route 1 @3 10.1.0.51:80 tunnel 2 @4 10.1.0.52:8080 masq 0 @5
FWM 7 sh p300 @6: 10.1.0.53:0 route 1 @7
UDP 10.1.0.6:53 rr p0 @8: 10.1.0.50:53 route 4 @9`},
		{"ipvsadm -Sn of an IPv6 service, as ipvsadm writes it", `-A -t [fd00:1::6]:8085 -s rr
-a -t [fd00:1::6]:8085 -r [fd00:2::50]:8085 -m -w 1
-A -u [fd00:1::6]:53 -s rr -p 60
-a -u [fd00:1::6]:53 -r [fd00:2::51]:53 -g -w 0
`, `ipvsadm -Sn
TCP [fd00:1::6]:8085 rr p0 @1: [fd00:2::50]:8085 masq 1 @2
UDP [fd00:1::6]:53 rr p60 @3: [fd00:2::51]:53 route 0 @4`},
		{"keepalived.conf saved by an editor that writes a UTF-8 BOM", "\ufeff! Configuration File for keepalived\nvirtual_server 10.1.0.6 80 {\n lb_kind NAT\n real_server 10.1.0.50 80 {\n }\n}\n", `keepalived.conf
TCP 10.1.0.6:80 wlc p0 @2: 10.1.0.50:80 masq 1 @4`},
		{"keepalived: an IPv6 virtual_server", "virtual_server fd00:1::6 8085 {\n lb_kind NAT\n protocol TCP\n real_server fd00:2::50 8085 {\n  weight 2\n }\n}\n", `keepalived.conf
TCP [fd00:1::6]:8085 wlc p0 @1: [fd00:2::50]:8085 masq 2 @4`},
		{"lbdoctor YAML: every real masquerades", `---
services:
  - vip: 10.1.0.6:8085
    scheduler: WRR
    reals:
      - addr: 10.1.0.50:8085
        weight: 3
`, `lbdoctor YAML
TCP 10.1.0.6:8085 wrr p0 @3: 10.1.0.50:8085 masq 3 @6`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := setup.ParseExpected("f", []byte(tt.in))
			if err != nil {
				t.Fatalf("ParseExpected(%q) = %v, want\n%s", tt.in, err, tt.want)
			}
			if got := summary(c); got != tt.want {
				t.Errorf("ParseExpected(%q) =\n%s\nwant\n%s", tt.in, got, tt.want)
			}
		})
	}
}

// Bad and hostile files: one line naming the place and what to do, never
// a silent guess at what the operator meant.
func TestParseExpectedRefuses(t *testing.T) {
	vs := func(body string) string { return "virtual_server 10.1.0.6 80 {\n" + body + "\n}\n" }
	tests := []struct {
		name, in, want string
	}{
		{"include", "include /etc/keepalived/conf.d/*.conf\n", "f:1: include is not followed"},
		{"lowercase lb_kind", vs("  lb_kind nat"), `f:2: lb_kind "nat": keepalived takes NAT, DR or TUN, in capitals only`},
		{"lowercase method of a real", vs("  lb_kind NAT\n  real_server 10.1.0.50 80 { lvs_method dr }"), "f:3: real_server 10.1.0.50:80: lvs_method: keepalived takes NAT, DR or TUN"},
		{"no lb_kind", vs("  lb_algo rr"), "f:1: virtual_server 10.1.0.6:80 has no lb_kind"},
		{"virtual_server group", "virtual_server group web {\n}\n", "f:1: virtual_server group is not compared by lbdoctor check --expect"},
		{"a keyword not compared", vs("  lb_kind NAT\n  ops"), "f:3: ops is not compared by lbdoctor check --expect"},
		{"persistence without a number", vs("  lb_kind NAT\n  persistence_timeout long"), `f:3: persistence_timeout "long": want a timeout in seconds`},
		{"persistence, one value too many", vs("  lb_kind NAT\n  persistence_timeout 60 120"), `f:3: persistence_timeout: "120" is one value too many`},
		{"fwmark 0", "virtual_server fwmark 0 {\n lb_kind DR\n}\n", `f:1: virtual_server fwmark "0": want a firewall mark`},
		{"protocol in lower case", vs("  lb_kind NAT\n  protocol udp"), "keepalived reads them in capitals only"},
		{"a real given twice", vs("  lb_kind NAT\n  real_server 10.1.0.50 80 {\n  }\n  real_server 10.1.0.50 80 {\n  }"), "real 10.1.0.50:80 is given twice"},
		{"unbalanced", "virtual_server 10.1.0.6 80 {\n lb_kind NAT\n}\n}\n", "f:4: unbalanced }"},
		{"ends inside a block", "virtual_server 10.1.0.6 80 {\n lb_kind NAT\n", "f:2: file ends inside a block"},
		{"ipvsadm listing", "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n", "this is `ipvsadm -L` (list) output"},
		{"ipvsadm -p not a number", "-A -t 10.1.0.6:80 -s rr -p x\n", `f:1: -p: want a timeout in seconds, got "x"`},
		{"ipvsadm netmask", "-A -t 10.1.0.6:80 -s rr -p 60 -M 255.255.255.0\n", "f:1: option -M is not compared by lbdoctor check --expect"},
		{"ipvsadm fwmark not a number", "-A -f x -s rr\n", `f:1: -f: want a firewall mark 1-4294967295, got "x"`},
		{"ipvsadm names instead of numbers", "-A -t web.example.com:http -s rr\n", "give `ipvsadm -Sn` (numeric) output"},
		{"ipvsadm masquerade without a port", "-A -f 7 -s rr\n-a -f 7 -r 10.1.0.50:0 -m\n", "real 10.1.0.50:0 must be ADDR:PORT"},
		{"empty", "", "f: is none of the files --expect reads"},
		{"comments only", "# nothing\n! nothing\n", "f: is none of the files --expect reads"},
		{"something else", "[Unit]\nDescription=x\n", "f: is none of the files --expect reads"},
		{"binary", "virtual_server \x00\x01", "f:1: binary content"},
		{"a YAML file with a method", "services:\n  - vip: 10.1.0.6:80\n    method: dr\n    reals: []\n", `unknown key "method"`},
		{"keepalived parameters", "$VIP=10.1.0.6\nvirtual_server $VIP 80 {\n}\n", "keepalived's parameters ($NAME)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := setup.ParseExpected("f", []byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseExpected(%q) = %v, want an error with %q", tt.in, err, tt.want)
			}
			checkErr(t, err)
		})
	}
}

// setup itself still refuses what it cannot build, with its own words.
func TestSetupParsersStillRefuseWhatExpectTakes(t *testing.T) {
	if _, err := setup.ParseKeepalived("f", strings.NewReader("virtual_server 10.1.0.6 80 {\n lb_kind NAT\n persistence_timeout 60\n real_server 10.1.0.50 80 {\n }\n}\n")); err == nil || !strings.Contains(err.Error(), "persistence_timeout is not supported by lbdoctor setup") {
		t.Errorf("ParseKeepalived(persistence_timeout) = %v, want refused for setup", err)
	}
	if _, err := setup.ParseIpvsadm("f", strings.NewReader("-A -f 7 -s rr\n")); err == nil || !strings.Contains(err.Error(), "firewall-mark services cannot be set up") {
		t.Errorf("ParseIpvsadm(-f) = %v, want refused for setup", err)
	}
	if _, err := setup.ParseIpvsadm("f", strings.NewReader("-A -t 10.1.0.6:80 -s rr -p 60\n")); err == nil || !strings.Contains(err.Error(), "option -p is not supported by lbdoctor setup") {
		t.Errorf("ParseIpvsadm(-p) = %v, want refused for setup", err)
	}
}

func FuzzParseExpected(f *testing.F) {
	f.Add("virtual_server 10.1.0.6 80 {\n lb_kind DR\n persistence_timeout 60\n real_server 10.1.0.50 80 { weight 2 lb_kind TUN }\n}\n")
	f.Add("virtual_server fwmark 7 {\n lvs_method NAT\n real_server 10.1.0.50 80 {\n}\n}\n")
	f.Add("-A -t 10.1.0.6:80 -s rr -p\n-a -t 10.1.0.6:80 -r 10.1.0.50:80 -i -w 1\n-A -f 1\n-a -f 1 -r 10.1.0.50:0\n")
	f.Add("services:\n  - vip: 10.1.0.6:80\n    reals: [{addr: 10.1.0.50:80}]\n")
	f.Add("virtual_server 10.1.0.6 80 { lb_kind nat }")
	f.Add("include x\n")
	f.Add("-A -f 4294967296\n")
	f.Add("virtual_server fwmark 7 { lb_kind DR real_server 10.1.0.50 0 { } }")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := setup.ParseExpected("f", []byte(in))
		checkErr(t, err)
		if err != nil {
			return
		}
		for _, s := range c.Services {
			if s.Key() == "" || (s.FWMark == 0) == (s.Proto == "") {
				t.Fatalf("accepted a service without a key: %+v", s)
			}
			for _, r := range s.Reals {
				if r.Method != "masq" && r.Method != "route" && r.Method != "tunnel" {
					t.Fatalf("accepted a real without a method: %+v", r)
				}
			}
		}
	})
}
