package ipvs

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// kernelAddr is an address as the kernel's union nf_inet_addr (16 bytes).
func kernelAddr(a netip.Addr) []byte {
	b := make([]byte, 16)
	copy(b, a.AsSlice())
	return b
}

func kernelStats(ae *netlink.AttributeEncoder, s Stats) {
	ae.Uint32(statsConns, s.Conns)
	ae.Uint32(statsInPkts, s.PacketsIn)
	ae.Uint32(statsOutPkts, s.PacketsOut)
	ae.Uint64(statsInBytes, s.BytesIn)
	ae.Uint64(statsOutBytes, s.BytesOut)
	ae.Uint32(statsCPS, s.CPS)
	ae.Uint32(statsInPPS, s.PPSIn)
	ae.Uint32(statsOutPPS, s.PPSOut)
	ae.Uint32(statsInBPS, s.BPSIn)
	ae.Uint32(statsOutBPS, s.BPSOut)
	ae.Uint32(11, 0) // IPVS_STATS_ATTR_PAD and later attributes are skipped
}

// The answers of IPVS_CMD_GET_SERVICE, built as ip_vs_genl_fill_service
// writes them, read back into the snapshot's Service.
func TestParseService(t *testing.T) {
	st := Stats{Conns: 5, PacketsIn: 30, PacketsOut: 25, BytesIn: 1800, BytesOut: 1500, CPS: 1, PPSIn: 2, PPSOut: 3, BPSIn: 4, BPSOut: 5}
	for _, tc := range []struct {
		name   string
		af     uint16
		proto  uint16
		addr   netip.Addr
		port   uint16
		fwmark uint32
		flags  uint32
		want   Service
	}{
		{"tcp-v4-persistent", unix.AF_INET, unix.IPPROTO_TCP, netip.MustParseAddr("10.1.0.6"), 8085, 0, 1 | 2, Service{Proto: "tcp", Addr: netip.MustParseAddrPort("10.1.0.6:8085"), Scheduler: "rr", Flags: []string{"persistent", "hashed"}, Timeout: 300, Stats: st, Reals: []Real{}}},
		{"udp-v6", unix.AF_INET6, unix.IPPROTO_UDP, netip.MustParseAddr("2001:db8::6"), 53, 0, 2, Service{Proto: "udp", Addr: netip.MustParseAddrPort("[2001:db8::6]:53"), Scheduler: "rr", Flags: []string{"hashed"}, Timeout: 300, Stats: st, Reals: []Real{}}},
		{"fwmark-no-address", unix.AF_INET, 0, netip.Addr{}, 0, 7, 0, Service{Proto: "fwmark", FWMark: 7, Scheduler: "rr", Flags: []string{}, Timeout: 300, Stats: st, Reals: []Real{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ae := netlink.NewAttributeEncoder()
			ae.Nested(cmdAttrService, func(ae *netlink.AttributeEncoder) error {
				ae.Uint16(svcAttrAF, tc.af)
				if tc.fwmark != 0 {
					ae.Uint32(svcAttrFWMark, tc.fwmark)
				} else {
					ae.Uint16(svcAttrProtocol, tc.proto)
					ae.Bytes(svcAttrAddr, kernelAddr(tc.addr))
					ae.Bytes(svcAttrPort, binary.BigEndian.AppendUint16(nil, tc.port))
				}
				ae.String(svcAttrSchedName, "rr")
				ae.Bytes(svcAttrFlags, binary.NativeEndian.AppendUint32(binary.NativeEndian.AppendUint32(nil, tc.flags), ^uint32(0)))
				ae.Uint32(svcAttrTimeout, 300)
				ae.Uint32(9, 0xffffffff) // IPVS_SVC_ATTR_NETMASK: not kept
				ae.Nested(svcAttrStats, func(ae *netlink.AttributeEncoder) error { kernelStats(ae, st); return nil })
				return nil
			})
			b, err := ae.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseService(b)
			if err != nil {
				t.Fatalf("parseService(%s) = %v", tc.name, err)
			}
			if !reflect.DeepEqual(got.Service, tc.want) {
				t.Errorf("parseService(%s) = %+v, want %+v", tc.name, got.Service, tc.want)
			}
		})
	}
}

// The answers of IPVS_CMD_GET_DEST, as ip_vs_genl_fill_dest writes them;
// a kernel before 3.18 sends no address family: the service's is used.
func TestParseDest(t *testing.T) {
	st := Stats{Conns: 2, PacketsIn: 12, PacketsOut: 10, BytesIn: 720, BytesOut: 600}
	for _, tc := range []struct {
		name    string
		af      uint16 // 0: no IPVS_DEST_ATTR_ADDR_FAMILY
		svcAF   uint16
		addr    netip.Addr
		method  uint32
		want    Real
		wantErr bool
	}{
		{"masq-v4", unix.AF_INET, unix.AF_INET, netip.MustParseAddr("10.1.0.50"), 0, Real{Addr: netip.MustParseAddrPort("10.1.0.50:8085"), Method: Masq, Weight: 3, ActiveConns: 1, InactiveConns: 4, UpperThresh: 100, LowerThresh: 10, Stats: st}, false},
		{"route-v6", unix.AF_INET6, unix.AF_INET6, netip.MustParseAddr("2001:db8::50"), 3, Real{Addr: netip.MustParseAddrPort("[2001:db8::50]:8085"), Method: Route, Weight: 3, ActiveConns: 1, InactiveConns: 4, UpperThresh: 100, LowerThresh: 10, Stats: st}, false},
		{"tunnel-old-kernel", 0, unix.AF_INET, netip.MustParseAddr("10.1.0.51"), 2, Real{Addr: netip.MustParseAddrPort("10.1.0.51:8085"), Method: Tunnel, Weight: 3, ActiveConns: 1, InactiveConns: 4, UpperThresh: 100, LowerThresh: 10, Stats: st}, false},
		{"v4-real-of-v6-service", unix.AF_INET, unix.AF_INET6, netip.MustParseAddr("10.1.0.52"), 1, Real{Addr: netip.MustParseAddrPort("10.1.0.52:8085"), Method: Local, Weight: 3, ActiveConns: 1, InactiveConns: 4, UpperThresh: 100, LowerThresh: 10, Stats: st}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ae := netlink.NewAttributeEncoder()
			ae.Nested(cmdAttrDest, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(destAttrAddr, kernelAddr(tc.addr))
				ae.Bytes(destAttrPort, binary.BigEndian.AppendUint16(nil, 8085))
				ae.Uint32(destAttrFwdMethod, tc.method)
				ae.Uint32(destAttrWeight, 3)
				ae.Uint32(destAttrUThresh, 100)
				ae.Uint32(destAttrLThresh, 10)
				ae.Uint32(destAttrActive, 1)
				ae.Uint32(destAttrInact, 4)
				ae.Uint32(9, 0) // IPVS_DEST_ATTR_PERSIST_CONNS: not kept
				ae.Nested(destAttrStats, func(ae *netlink.AttributeEncoder) error { kernelStats(ae, st); return nil })
				if tc.af != 0 {
					ae.Uint16(destAttrAF, tc.af)
				}
				return nil
			})
			b, err := ae.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseDest(b, tc.svcAF)
			if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseDest(%s) = %+v, %v, want %+v", tc.name, got, err, tc.want)
			}
		})
	}
}

// A truncated answer is an error, not a zero service.
func TestParseServiceTruncated(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(cmdAttrService, func(ae *netlink.AttributeEncoder) error {
		ae.Uint16(svcAttrAF, unix.AF_INET)
		ae.Uint16(svcAttrProtocol, unix.IPPROTO_TCP)
		return nil
	})
	b, _ := ae.Encode()
	if _, err := parseService(b[:len(b)-3]); err == nil {
		t.Errorf("parseService(truncated) = nil error, want one")
	}
}

func TestServiceKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		svc  Service
		want string
	}{
		{"tcp", Service{Proto: "tcp", Addr: netip.MustParseAddrPort("10.1.0.6:8085")}, "TCP 10.1.0.6:8085"},
		{"udp-v6", Service{Proto: "udp", Addr: netip.MustParseAddrPort("[2001:db8::6]:53")}, "UDP [2001:db8::6]:53"},
		{"fwmark", Service{Proto: "fwmark", FWMark: 4294967295}, "FWM 4294967295"},
	} {
		if got := tc.svc.Key(); got != tc.want {
			t.Errorf("Service.Key(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
}
