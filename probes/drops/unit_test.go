package drops_test

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

const kallsyms = `ffffffff81000000 T _stext
ffffffff81a3f000 t ip_error
ffffffff81a3f200 T ip_forward
ffffffffc0a01000 t ip_vs_conn_new	[ip_vs]
0000000000000000 A fixed_percpu_data
`

func TestSymbols(t *testing.T) {
	s, err := drops.ParseKallsyms(strings.NewReader(kallsyms))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[uint64]string{
		0xffffffff81a3f094: "ip_error+0x94",
		0xffffffff81a3f200: "ip_forward+0x0",
		0xffffffffc0a01010: "ip_vs_conn_new+0x10 [ip_vs]",
		0x1000:             "0x1000",
	} {
		if got := s.Lookup(addr); got != want {
			t.Errorf("Lookup(%#x) = %q, want %q", addr, got, want)
		}
	}
}

func FuzzParseKallsyms(f *testing.F) {
	f.Add(kallsyms)
	f.Fuzz(func(t *testing.T, in string) {
		s, err := drops.ParseKallsyms(strings.NewReader(in))
		if err != nil {
			return
		}
		s.Lookup(0xffffffff81a3f094)
	})
}

// The seed's stage 3: the SYN-ACK, de-SNATed in the input path but not yet
// seen by IPVS, goes real → client. Attribution finds the VIP flow.
func TestMatchConntrack(t *testing.T) {
	ap := netip.MustParseAddrPort
	fl := conntrack.Flow{
		Orig:  conntrack.Tuple{Src: ap("10.1.0.3:41234"), Dst: ap("10.1.0.6:8085")},
		Reply: conntrack.Tuple{Src: ap("10.1.0.50:8085"), Dst: ap("10.1.0.5:41234")},
	}
	tests := []struct {
		name      string
		src, dst  string
		direction string
		stage     string
	}{
		{"client's SYN", "10.1.0.3:41234", "10.1.0.6:8085", "request", "before NAT"},
		{"after DNAT", "10.1.0.3:41234", "10.1.0.50:8085", "request", "after DNAT to the real server"},
		{"on the wire to the real", "10.1.0.5:41234", "10.1.0.50:8085", "request", "after DNAT and SNAT"},
		{"real's reply", "10.1.0.50:8085", "10.1.0.5:41234", "reply", "before de-NAT"},
		{"stage 3 SYN-ACK", "10.1.0.50:8085", "10.1.0.3:41234", "reply", "after SNAT reverse"},
		{"back to client", "10.1.0.6:8085", "10.1.0.3:41234", "reply", "after full de-NAT"},
	}
	for _, tt := range tests {
		f := drops.MatchConntrack(ap(tt.src), ap(tt.dst), fl)
		if f == nil || f.Direction != tt.direction || !strings.Contains(f.Stage, tt.stage) || f.VIP != ap("10.1.0.6:8085") || f.Real != ap("10.1.0.50:8085") || f.Client != ap("10.1.0.3:41234") {
			t.Errorf("MatchConntrack(%s) = %+v, want %s %q on VIP 10.1.0.6:8085", tt.name, f, tt.direction, tt.stage)
		}
	}
	if f := drops.MatchConntrack(ap("10.9.9.9:1"), ap("10.1.0.3:41234"), fl); f != nil {
		t.Errorf("MatchConntrack(unrelated) = %+v, want nil", f)
	}
	// No DNAT (SNAT or not): a plain flow, not a load-balanced one.
	for _, reply := range []conntrack.Tuple{
		{Src: ap("10.1.0.6:8085"), Dst: ap("10.1.0.3:41234")},
		{Src: ap("10.1.0.6:8085"), Dst: ap("10.1.0.5:41234")},
	} {
		plain := conntrack.Flow{Orig: fl.Orig, Reply: reply}
		if f := drops.MatchConntrack(ap("10.1.0.3:41234"), ap("10.1.0.6:8085"), plain); f != nil {
			t.Errorf("MatchConntrack(no DNAT, reply %s) = %+v, want nil", reply, f)
		}
	}
	c := ipvs.Conn{Proto: "tcp", Client: ap("10.1.0.3:41234"), VIP: ap("10.1.0.6:8085"), Dest: ap("10.1.0.50:8085")}
	if f := drops.MatchIPVS(ap("10.1.0.50:8085"), ap("10.1.0.3:41234"), c); f == nil || f.Direction != "reply" || f.Source != "ipvs" {
		t.Errorf("MatchIPVS(real → client) = %+v, want the reply that IPVS never de-NATed", f)
	}
}

func TestEndpoints(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.1.0.3:41000"), netip.MustParseAddrPort("[fe80::1]:80")
	for _, c := range []struct {
		name     string
		proto    uint8
		src, dst string
	}{
		{"tcp has ports", unix.IPPROTO_TCP, "10.1.0.3:41000", "[fe80::1]:80"},
		{"sctp has ports", unix.IPPROTO_SCTP, "10.1.0.3:41000", "[fe80::1]:80"},
		{"icmp has none", unix.IPPROTO_ICMP, "10.1.0.3", "fe80::1"},
		{"vrrp has none", 112, "10.1.0.3", "fe80::1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, d := drops.Packet{Proto: c.proto, Src: src, Dst: dst}.Endpoints()
			if s != c.src || d != c.dst {
				t.Errorf("Endpoints(proto %d) = %s, %s, want %s, %s", c.proto, s, d, c.src, c.dst)
			}
		})
	}
}

// TestTCPFlags: the flags' text, made once for each of the 256 values, as
// tcpdump's readers know them.
func TestTCPFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags uint8
		want  string
	}{
		{"none", 0, ""},
		{"SYN", 0x02, "SYN"},
		{"SYN-ACK", 0x12, "SYN,ACK"},
		{"RST-ACK", 0x14, "RST,ACK"},
		{"all", 0xff, "FIN,SYN,RST,PSH,ACK,URG,ECE,CWR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 {
				if got := drops.TCPFlags(tc.flags); got != tc.want {
					t.Errorf("TCPFlags(%#x) = %q, want %q", tc.flags, got, tc.want)
				}
			}
		})
	}
}

// A kept tracer reads kallsyms again when a module was loaded, unloaded or
// loaded elsewhere, not when a module's use count moved.
func TestModulesOf(t *testing.T) {
	const before = "nf_tables 356352 5 nft_chain_nat, Live 0xffffffffc0a00000\nveth 45056 0 - Live 0xffffffffc0900000\n"
	tests := []struct {
		name, after string
		wantSame    bool
	}{
		{"use counts moved", "nf_tables 356352 9 nft_chain_nat,nft_ct, Live 0xffffffffc0a00000\nveth 45056 2 - Live 0xffffffffc0900000\n", true},
		{"ip_vs loaded", before + "ip_vs 204800 0 - Live 0xffffffffc0b00000\n", false},
		{"veth unloaded", "nf_tables 356352 5 nft_chain_nat, Live 0xffffffffc0a00000\n", false},
		{"veth loaded again elsewhere", "nf_tables 356352 5 nft_chain_nat, Live 0xffffffffc0a00000\nveth 45056 0 - Live 0xffffffffc0c00000\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if same := drops.ModulesOf([]byte(before)) == drops.ModulesOf([]byte(tt.after)); same != tt.wantSame {
				t.Errorf("ModulesOf(%q) == ModulesOf(%q) = %v, want %v", before, tt.after, same, tt.wantSame)
			}
		})
	}
}
