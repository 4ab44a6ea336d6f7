package ipvs_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

const connTable = `Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A010003 A3F2 0A010006 1F95 0A010032 1F95 SYN_RECV         56
UDP 0A010003 8000 0A010006 0035 0A010033 0035 UDP             298
TCP 2001:0db8:0000:0000:0000:0000:0000:0001 0050 2001:0db8:0000:0000:0000:0000:0000:0006 0050 2001:0db8:0000:0000:0000:0000:0000:0032 0050 ESTABLISHED     899 sip 1234
IP  0A010003 0000 00000009 0000 0A020032 0000 ASSURED          57
TCP 0A010003 0000 0A010007 1F95 0A020033 1F95 ASSURED          57
`

func TestParseConns(t *testing.T) {
	var got []ipvs.Conn
	if err := ipvs.ParseConns(strings.NewReader(connTable), func(c ipvs.Conn) { got = append(got, c) }); err != nil {
		t.Fatal(err)
	}
	want := []ipvs.Conn{
		{Proto: "tcp", Client: netip.MustParseAddrPort("10.1.0.3:41970"), VIP: netip.MustParseAddrPort("10.1.0.6:8085"), Dest: netip.MustParseAddrPort("10.1.0.50:8085"), State: "SYN_RECV", Expires: 56},
		{Proto: "udp", Client: netip.MustParseAddrPort("10.1.0.3:32768"), VIP: netip.MustParseAddrPort("10.1.0.6:53"), Dest: netip.MustParseAddrPort("10.1.0.51:53"), State: "UDP", Expires: 298},
		{Proto: "tcp", Client: netip.MustParseAddrPort("[2001:db8::1]:80"), VIP: netip.MustParseAddrPort("[2001:db8::6]:80"), Dest: netip.MustParseAddrPort("[2001:db8::32]:80"), State: "ESTABLISHED", Expires: 899, PEName: "sip", PEData: "1234"},
		// Persistence templates as 6.1 lists them (guest): a firewall-mark
		// service's carries protocol IP and the mark as its address, its
		// real without a port; an address service's its own protocol.
		{Proto: "ip", Client: netip.MustParseAddrPort("10.1.0.3:0"), VIP: netip.MustParseAddrPort("0.0.0.9:0"), Dest: netip.MustParseAddrPort("10.2.0.50:0"), State: "ASSURED", Expires: 57},
		{Proto: "tcp", Client: netip.MustParseAddrPort("10.1.0.3:0"), VIP: netip.MustParseAddrPort("10.1.0.7:8085"), Dest: netip.MustParseAddrPort("10.2.0.51:8085"), State: "ASSURED", Expires: 57},
	}
	if len(got) != len(want) {
		t.Fatalf("ParseConns() = %d conns, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("ParseConns() [%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestParseConnsRejectsGarbage(t *testing.T) {
	for name, in := range map[string]string{
		"short line":    "TCP 0A010003 A3F2\n",
		"bad address":   "TCP 0A01 A3F2 0A010006 1F95 0A010032 1F95 SYN_RECV 56\n",
		"bad port":      "TCP 0A010003 XYZW 0A010006 1F95 0A010032 1F95 SYN_RECV 56\n",
		"bad expiry":    "TCP 0A010003 A3F2 0A010006 1F95 0A010032 1F95 SYN_RECV soon\n",
		"bad ipv6 addr": "TCP 2001:zz 0050 0A010006 1F95 0A010032 1F95 SYN_RECV 56\n",
	} {
		if err := ipvs.ParseConns(strings.NewReader(in), func(ipvs.Conn) {}); err == nil {
			t.Errorf("ParseConns(%s) = nil error, want an error", name)
		}
	}
}

func FuzzParseConns(f *testing.F) {
	f.Add(connTable)
	f.Fuzz(func(t *testing.T, in string) {
		ipvs.ParseConns(strings.NewReader(in), func(c ipvs.Conn) {
			if !c.Client.IsValid() || !c.VIP.IsValid() || !c.Dest.IsValid() {
				t.Fatalf("ParseConns accepted an invalid address: %+v", c)
			}
		})
	})
}

// BenchmarkParseConns parses a table of 100,000 IPv4 connections, as a busy
// LB's /proc/net/ip_vs_conn holds them.
func BenchmarkParseConns(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n")
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&sb, "TCP 0A010002 %04X 0A60%02X%02X 0050 0AF4%02X%02X 1F90 ESTABLISHED     %d\n", 10000+i/1000, i%1000/250, i%250+1, i%10000/250, i%250+1, 800+i%100)
	}
	table := sb.String()
	b.SetBytes(int64(len(table)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		if err := ipvs.ParseConns(strings.NewReader(table), func(ipvs.Conn) { n++ }); err != nil || n != 100000 {
			b.Fatalf("ParseConns() = %d conns, %v; want 100000", n, err)
		}
	}
}

func TestCountConns(t *testing.T) {
	vip, a, b := netip.MustParseAddrPort("10.1.0.6:80"), netip.MustParseAddrPort("10.1.0.40:80"), netip.MustParseAddrPort("10.1.0.41:80")
	conns := []ipvs.Conn{
		{Proto: "tcp", VIP: vip, Dest: b, State: "ESTABLISHED"},
		{Proto: "tcp", VIP: vip, Dest: a, State: "SYN_RECV"},
		{Proto: "tcp", VIP: vip, Dest: a, State: "SYN_RECV"},
		{Proto: "tcp", VIP: vip, Dest: a, State: "ESTABLISHED"},
		// A persistence template: the client's address, port 0.
		{Proto: "tcp", Client: netip.MustParseAddrPort("10.1.0.2:0"), VIP: vip, Dest: a, State: "NONE"},
	}
	got := ipvs.CountConns(conns)
	want := []ipvs.ConnCount{{Proto: "tcp", VIP: vip, Dest: a, State: "ESTABLISHED", Count: 1}, {Proto: "tcp", VIP: vip, Dest: a, State: "NONE", Template: true, Count: 1},
		{Proto: "tcp", VIP: vip, Dest: a, State: "SYN_RECV", Count: 2}, {Proto: "tcp", VIP: vip, Dest: b, State: "ESTABLISHED", Count: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CountConns(4 conns) = %v, want %v", got, want)
	}
}
