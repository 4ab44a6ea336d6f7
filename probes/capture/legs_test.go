package capture_test

import (
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/probes/capture"
	"github.com/lbdoctor/lbdoctor/probes/conntrack"
	"github.com/lbdoctor/lbdoctor/probes/drops"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

var (
	client = netip.MustParseAddrPort("10.1.0.3:41234")
	vip    = netip.MustParseAddrPort("10.1.0.6:8085")
	real   = netip.MustParseAddrPort("10.1.0.50:8080")
	snat   = netip.MustParseAddrPort("10.1.0.6:61000") // the LB's address, masqueraded port
)

// pkt is one packet as the LB's capture saw it.
type pkt struct {
	s, d  netip.AddrPort
	dir   capture.Direction
	flags uint8
}

const (
	syn    = 0x02
	synAck = 0x12
	ack    = 0x10
)

// The flows of the seed's faults, as conntrack or IPVS hold them, and the
// packets a capture on the LB sees of them.
var (
	// nft DNAT + masquerade (one-arm, healthy): conntrack holds both NATs.
	nftFlow = conntrack.Flow{Proto: "tcp", Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: snat}}
	// IPVS with vs.conntrack=1 and MASQUERADE: the same shape in conntrack.
	ipvsMasq = nftFlow
	// IPVS with vs.conntrack=0, no SNAT: only IPVS knows the flow.
	ipvsConn = ipvs.Conn{Proto: "TCP", Client: client, VIP: vip, Dest: real, State: "SYN_RECV"}
	// Two-arm, no SNAT, conntrack sees IPVS's DNAT.
	twoArm = conntrack.Flow{Proto: "tcp", Orig: conntrack.Tuple{Src: client, Dst: vip}, Reply: conntrack.Tuple{Src: real, Dst: client}}
)

type source struct {
	ct *conntrack.Flow
	vs *ipvs.Conn
}

// flowOf is what the attributor finds for a packet s → d: conntrack first,
// IPVS after (the attributor's own order).
func flowOf(src source, s, d netip.AddrPort) *drops.Flow {
	if src.ct != nil {
		if f := drops.MatchConntrack(s, d, *src.ct); f != nil {
			return f
		}
	}
	if src.vs != nil {
		return drops.MatchIPVS(s, d, *src.vs)
	}
	return nil
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		src  source
		p    pkt
		want flowpath.LegKind // "": on no leg
	}{
		{"nft: client SYN arrives", source{ct: &nftFlow}, pkt{client, vip, capture.In, syn}, flowpath.Request},
		{"nft: SYN leaves DNATed and SNATed", source{ct: &nftFlow}, pkt{snat, real, capture.Out, syn}, flowpath.ToReal},
		{"nft: SYN-ACK arrives from the real", source{ct: &nftFlow}, pkt{real, snat, capture.In, synAck}, flowpath.Reply},
		{"nft: SYN-ACK leaves from the VIP", source{ct: &nftFlow}, pkt{vip, client, capture.Out, synAck}, flowpath.ToClient},
		{"ipvs masq (stage 3): SYN-ACK arrives", source{ct: &ipvsMasq}, pkt{real, snat, capture.In, synAck}, flowpath.Reply},
		{"ipvs no SNAT (stage 1): SYN leaves with the client's source", source{vs: &ipvsConn}, pkt{client, real, capture.Out, syn}, flowpath.ToReal},
		{"ipvs no SNAT: client SYN arrives", source{vs: &ipvsConn}, pkt{client, vip, capture.In, syn}, flowpath.Request},
		{"ipvs no SNAT: reply from the real seen arriving", source{vs: &ipvsConn}, pkt{real, client, capture.In, synAck}, flowpath.Reply},
		{"ipvs: reply leaves de-NATed", source{vs: &ipvsConn}, pkt{vip, client, capture.Out, synAck}, flowpath.ToClient},
		{"two-arm: reply arrives with the client's address", source{ct: &twoArm}, pkt{real, client, capture.In, synAck}, flowpath.Reply},
		{"two-arm: reply forwarded without the VIP restored", source{ct: &twoArm}, pkt{real, client, capture.Out, synAck}, flowpath.ToClient},
		{"a request leaving with the VIP still in it", source{ct: &nftFlow}, pkt{client, vip, capture.Out, syn}, ""},
		{"a reply arriving already de-NATed", source{ct: &nftFlow}, pkt{vip, client, capture.In, synAck}, ""},
		{"no flow", source{}, pkt{client, vip, capture.In, syn}, ""},
		{"another flow's tuple", source{ct: &nftFlow}, pkt{netip.MustParseAddrPort("10.1.0.9:1"), vip, capture.In, syn}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := flowOf(tt.src, tt.p.s, tt.p.d)
			got, ok := capture.Classify(f, tt.p.dir)
			if ok != (tt.want != "") || got != tt.want {
				t.Errorf("Classify(%v, %v) = %q, %v; want %q", f, tt.p.dir, got, ok, tt.want)
			}
		})
	}
}

// The flow table counts each flow's legs and says where it stops: the
// seed's three pictures, as a capture on the LB sees them.
func TestTableStops(t *testing.T) {
	tests := []struct {
		name     string
		src      source
		pkts     []pkt
		wantLine string
		wantStop flowpath.LegKind
	}{
		{
			name: "nft DNAT + masquerade: every leg",
			src:  source{ct: &nftFlow},
			pkts: []pkt{
				{client, vip, capture.In, syn}, {snat, real, capture.Out, syn}, {real, snat, capture.In, synAck}, {vip, client, capture.Out, synAck},
				{client, vip, capture.In, ack}, {snat, real, capture.Out, ack},
			},
			wantLine: "tcp 10.1.0.3:41234 → VIP 10.1.0.6:8085 ✓ 2 SYN,ACK · →real 10.1.0.50:8080 ✓ 2 SYN,ACK · real→ ✓ 1 SYN-ACK · →client ✓ 1 SYN-ACK",
		},
		{
			name:     "stage 1, no SNAT: the reply never comes back through the LB",
			src:      source{vs: &ipvsConn},
			pkts:     []pkt{{client, vip, capture.In, syn}, {client, real, capture.Out, syn}, {client, vip, capture.In, syn}, {client, real, capture.Out, syn}},
			wantLine: "tcp 10.1.0.3:41234 → VIP 10.1.0.6:8085 ✓ 2 SYN · →real 10.1.0.50:8080 ✓ 2 SYN · real→ ✗ · →client ✗ · stops at real→",
			wantStop: flowpath.Reply,
		},
		{
			name:     "stage 3, forwarding off: the SYN-ACK arrives and never leaves",
			src:      source{ct: &ipvsMasq},
			pkts:     []pkt{{client, vip, capture.In, syn}, {snat, real, capture.Out, syn}, {real, snat, capture.In, synAck}, {real, snat, capture.In, synAck}},
			wantLine: "tcp 10.1.0.3:41234 → VIP 10.1.0.6:8085 ✓ 1 SYN · →real 10.1.0.50:8080 ✓ 1 SYN · real→ ✓ 2 SYN-ACK · →client ✗ · stops at →client",
			wantStop: flowpath.ToClient,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := capture.NewTable()
			at := time.Unix(1700000000, 0)
			for i, p := range tt.pkts {
				f := flowOf(tt.src, p.s, p.d)
				leg, ok := capture.Classify(f, p.dir)
				tab.Add(f, leg, ok, capture.Header{Proto: unix.IPPROTO_TCP, Src: p.s, Dst: p.d, TCPFlags: p.flags}, at.Add(time.Duration(i)*time.Millisecond))
			}
			if len(tab.Flows()) != 1 || tab.Unclaimed != 0 {
				t.Fatalf("Table after %d packets: %d flows, %d unclaimed; want 1, 0", len(tt.pkts), len(tab.Flows()), tab.Unclaimed)
			}
			fl := tab.Flows()[0]
			if got := fl.String(); got != tt.wantLine {
				t.Errorf("FlowLegs.String() =\n  %s\nwant\n  %s", got, tt.wantLine)
			}
			if got := fl.Stop(); got != tt.wantStop {
				t.Errorf("FlowLegs.Stop() = %q, want %q", got, tt.wantStop)
			}
		})
	}
}

// Packets no flow claims are counted, and flows past the bound are counted
// rather than listed: nothing seen is hidden.
func TestTableBounds(t *testing.T) {
	tab := capture.NewTable()
	tab.Max = 2
	h := capture.Header{Proto: unix.IPPROTO_UDP}
	for i := range 4 {
		f := &drops.Flow{Client: netip.AddrPortFrom(client.Addr(), uint16(1000+i)), VIP: vip, Real: real, Direction: "request", Stage: "as the client sent it, before NAT"}
		tab.Add(f, flowpath.Request, true, h, time.Now())
	}
	tab.Add(nil, "", false, h, time.Now())
	if got := len(tab.Flows()); got != 2 {
		t.Errorf("len(Flows()) = %d, want 2 (Max)", got)
	}
	if tab.Unlisted != 2 || tab.Unclaimed != 1 {
		t.Errorf("Unlisted, Unclaimed = %d, %d; want 2, 1", tab.Unlisted, tab.Unclaimed)
	}
	if c := tab.Counts(); c != [4]uint64{2, 0, 0, 0} {
		t.Errorf("Counts() = %v, want [2 0 0 0]", c)
	}
}

func TestFlowLegsJSON(t *testing.T) {
	tab := capture.NewTable()
	f := flowOf(source{ct: &nftFlow}, client, vip)
	tab.Add(f, flowpath.Request, true, capture.Header{Proto: unix.IPPROTO_TCP, TCPFlags: syn}, time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC))
	b, err := json.Marshal(tab.Flows()[0])
	if err != nil {
		t.Fatal(err)
	}
	want := `{"proto":"tcp","client":"10.1.0.3:41234","vip":"10.1.0.6:8085","real":"10.1.0.50:8080","legs":[` +
		`{"kind":"request","packets":1,"segments":["SYN"],"first":"2026-11-30T10:00:00Z","last":"2026-11-30T10:00:00Z"},` +
		`{"kind":"to_real","packets":0},{"kind":"reply","packets":0},{"kind":"to_client","packets":0}],"stop":"to_real"}`
	if string(b) != want {
		t.Errorf("json.Marshal(flow) =\n  %s\nwant\n  %s", b, want)
	}
}

func frame(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestHeaderParser(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	eth := func(et layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: et}
	}
	ip4 := func(p layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: p, SrcIP: client.Addr().AsSlice(), DstIP: vip.Addr().AsSlice()}
	}
	v6s, v6d := netip.MustParseAddr("fd00::3"), netip.MustParseAddr("fd00::6")
	tests := []struct {
		name   string
		frame  []byte
		want   capture.Header
		wantOK bool
	}{
		{"IPv4 TCP SYN", frame(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 41234, DstPort: 8085, SYN: true, DataOffset: 5}),
			capture.Header{Proto: unix.IPPROTO_TCP, Src: client, Dst: vip, TCPFlags: syn}, true},
		{"IPv4 UDP", frame(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 41234, DstPort: 8085}),
			capture.Header{Proto: unix.IPPROTO_UDP, Src: client, Dst: vip}, true},
		{"IPv6 TCP SYN-ACK", frame(t, eth(layers.EthernetTypeIPv6), &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: v6s.AsSlice(), DstIP: v6d.AsSlice()},
			&layers.TCP{SrcPort: 8085, DstPort: 41234, SYN: true, ACK: true, DataOffset: 5}),
			capture.Header{Proto: unix.IPPROTO_TCP, Src: netip.AddrPortFrom(v6s, 8085), Dst: netip.AddrPortFrom(v6d, 41234), TCPFlags: synAck}, true},
		{"ICMP", frame(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4), &layers.ICMPv4{}), capture.Header{}, false},
		{"ARP", frame(t, eth(layers.EthernetTypeARP), &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			SourceHwAddress: mac, SourceProtAddress: []byte{10, 1, 0, 3}, DstHwAddress: mac, DstProtAddress: []byte{10, 1, 0, 6}}), capture.Header{}, false},
		{"cut before the ports", frame(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 1, DstPort: 2, DataOffset: 5})[:14+20+2], capture.Header{}, false},
		{"empty", nil, capture.Header{}, false},
	}
	p := capture.NewHeaderParser()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := p.Parse(tt.frame)
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Errorf("Parse(%s) = %+v, %v; want %+v, %v", strings.ToLower(tt.name), got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// A window's capture sums flows by service path; its JSON names each leg.
func TestTableByPath(t *testing.T) {
	tab := capture.NewTable()
	for i, p := range []pkt{{client, vip, capture.In, syn}, {snat, real, capture.Out, syn}, {real, snat, capture.In, synAck}} {
		f := flowOf(source{ct: &nftFlow}, p.s, p.d)
		leg, ok := capture.Classify(f, p.dir)
		tab.Add(f, leg, ok, capture.Header{Proto: unix.IPPROTO_TCP, TCPFlags: p.flags}, time.Unix(int64(i), 0).UTC())
	}
	ps := tab.ByPath()
	if len(ps) != 1 || ps[0].Flows != 1 || ps[0].Stopped != 1 || ps[0].Legs[2].Packets != 1 {
		t.Fatalf("ByPath() = %+v, want one path, one flow stopped, 1 reply", ps)
	}
	b, err := json.Marshal(ps[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := `"legs":[{"kind":"request","packets":1,"segments":["SYN"],"first":"1970-01-01T00:00:00Z","last":"1970-01-01T00:00:00Z"},`; !strings.Contains(string(b), want) || !strings.Contains(string(b), `{"kind":"to_client","packets":0}]`) {
		t.Errorf("json.Marshal(path) = %s, want legs by kind: %s…", b, want)
	}
}
