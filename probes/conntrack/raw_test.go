package conntrack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
)

// ctMessage builds a ctnetlink message body (nfgenmsg + attributes) with an
// original and a reply tuple, as the kernel sends them.
func ctMessage(t *testing.T) []byte {
	t.Helper()
	tuple := func(src, dst string, sp, dp uint16) func(*netlink.AttributeEncoder) error {
		return func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(ctaIPv4Src, netip.MustParseAddr(src).AsSlice())
				ae.Bytes(ctaIPv4Dst, netip.MustParseAddr(dst).AsSlice())
				return nil
			})
			ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoNum, 17)
				ae.Bytes(ctaProtoSrc, binary.BigEndian.AppendUint16(nil, sp))
				ae.Bytes(ctaProtoDst, binary.BigEndian.AppendUint16(nil, dp))
				return nil
			})
			return nil
		}
	}
	ae := netlink.NewAttributeEncoder()
	ae.Nested(ctaTupleOrig, tuple("10.0.0.1", "10.0.0.2", 1000, 80))
	ae.Nested(ctaTupleReply, tuple("10.0.1.9", "10.0.0.1", 8080, 1000))
	ae.Uint32(7, 30) // CTA_TIMEOUT: skipped
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{2, 0, 0, 0}, b...)
}

func TestRawTuples(t *testing.T) {
	msg := ctMessage(t)
	o, r, err := rawTuples(msg)
	want := [2]rawTupleT{
		{src: netip.MustParseAddr("10.0.0.1"), dst: netip.MustParseAddr("10.0.0.2"), proto: 17, srcPort: 1000, dstPort: 80},
		{src: netip.MustParseAddr("10.0.1.9"), dst: netip.MustParseAddr("10.0.0.1"), proto: 17, srcPort: 8080, dstPort: 1000},
	}
	if err != nil || o != want[0] || r != want[1] {
		t.Fatalf("rawTuples(msg) = %+v, %+v, %v, want %+v, %+v, nil", o, r, err, want[0], want[1])
	}
	bad := map[string][]byte{
		"short message":       msg[:3],
		"cut header":          msg[:6],
		"length past the end": msg[:len(msg)-4],
		"length below header": append(msg[:4:4], 2, 0, 1, 0),
	}
	for name, b := range bad {
		t.Run(name, func(t *testing.T) {
			if _, _, err := rawTuples(b); err == nil {
				t.Errorf("rawTuples(%x) = nil error, want one", b)
			}
		})
	}
}

func BenchmarkRawTuples(b *testing.B) {
	msg := ctMessage(&testing.T{})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := rawTuples(msg); err != nil {
			b.Fatal(err)
		}
	}
}
