package drops

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/lbdoctor/lbdoctor/probes/conntrack"
)

// BenchmarkAddPlaces: caching the places of one conntrack flow, as each
// new-flow event does.
func BenchmarkAddPlaces(b *testing.B) {
	a := &Attributor{cur: map[pairKey]*cached{}, old: map[pairKey]*cached{}, maxKeys: MaxCacheKeys}
	o := conntrack.Tuple{Src: netip.MustParseAddrPort("10.0.0.1:1000"), Dst: netip.MustParseAddrPort("10.0.0.2:80")}
	r := conntrack.Tuple{Src: netip.MustParseAddrPort("10.0.1.2:8080"), Dst: netip.MustParseAddrPort("10.0.1.1:1000")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		o.Src = netip.AddrPortFrom(o.Src.Addr(), uint16(i))
		a.addPlacesLocked(17, conntrack.Flow{Orig: o, Reply: r})
		if len(a.cur) > 1<<16 {
			clear(a.cur)
		}
	}
}

// TestEventLayout: Read copies a ring record into dropsEvent byte for byte;
// that is encoding/binary's reading only while the struct has no implicit
// padding (bpf2go writes explicit padding fields).
func TestEventLayout(t *testing.T) {
	if got, want := unsafe.Sizeof(dropsEvent{}), uintptr(binary.Size(dropsEvent{})); got != want {
		t.Errorf("unsafe.Sizeof(dropsEvent{}) = %d, want binary.Size %d: the struct has implicit padding", got, want)
	}
	var raw [unsafe.Sizeof(dropsEvent{})]byte
	for i := range raw {
		raw[i] = byte(i + 1)
	}
	var viaBinary, viaCopy dropsEvent
	if _, err := binary.Decode(raw[:], binary.NativeEndian, &viaBinary); err != nil {
		t.Fatal(err)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&viaCopy)), unsafe.Sizeof(viaCopy)), raw[:])
	if viaCopy != viaBinary {
		t.Errorf("copied record = %+v, want %+v (binary.Decode)", viaCopy, viaBinary)
	}
}

func BenchmarkEventDecode(b *testing.B) {
	raw := make([]byte, unsafe.Sizeof(dropsEvent{}))
	var ev dropsEvent
	b.Run("binary.Decode", func(b *testing.B) {
		for b.Loop() {
			binary.Decode(raw, binary.NativeEndian, &ev)
		}
	})
	b.Run("copy", func(b *testing.B) {
		for b.Loop() {
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&ev)), unsafe.Sizeof(ev)), raw)
		}
	})
}

// The sizes Go mirrors as constants are the compiled program's: a filter
// array, bitmap or stack value resized in bpf/ without them would be set
// or read wrong.
func TestSizesMatchTheProgram(t *testing.T) {
	spec, err := loadDrops()
	if err != nil {
		t.Fatal(err)
	}
	var specs dropsSpecs
	if err := spec.Assign(&specs); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		got, want uint32
	}{
		{"filters", specs.Filters.Size(), 2 * uint32(unsafe.Sizeof(dropsFilter{}))},
		{"filter addrs", uint32(len(dropsFilter{}.Addrs)), MaxFilter},
		{"filter ports", uint32(len(dropsFilter{}.Ports)), MaxFilter},
		{"ignore_reasons", specs.IgnoreReasons.Size(), ignoreWords * 8},
		{"stacks value", specs.Stacks.ValueSize, stackFrames * 8},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("size of %s = %d bytes, want %d (the constant Go mirrors it with)", tt.name, tt.got, tt.want)
		}
	}
}
