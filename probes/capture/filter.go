package capture

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/net/bpf"
)

// ErrBadOptions marks options no capture can be opened with (a bad snaplen,
// ring size or match): bad input.
var ErrBadOptions = errors.New("bad capture options")

// maxInsns is the kernel's BPF_MAXINSNS: a longer classic program is refused.
const maxInsns = 4096

// ErrFilterTooLong marks a match whose program would be longer than the
// kernel takes (maxInsns): too many addresses to compare one by one. It is
// ErrBadOptions too; Open answers it by filtering on the ports alone.
var ErrFilterTooLong = errors.New("capture filter longer than the kernel takes")

// Offsets into a VLAN-less Ethernet frame (what AF_PACKET's SOCK_RAW gives
// on veth, Ethernet and loopback links).
const (
	offEtherType = 12
	offIP        = 14
	// IPv4 (no options assumed only for the fixed fields below).
	offV4Frag  = offIP + 6
	offV4Proto = offIP + 9
	offV4Src   = offIP + 12
	offV4Dst   = offIP + 16
	// IPv6: the fixed 40-byte header; ports follow it directly.
	offV6Next  = offIP + 6
	offV6Src   = offIP + 8
	offV6Dst   = offIP + 24
	offV6Ports = offIP + 40

	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	protoTCP  = 6
	protoUDP  = 17
)

// Filter returns the classic BPF program that accepts, on a VLAN-less
// Ethernet link, the packets m selects and keeps their first snaplen bytes:
// IPv4 or IPv6 packets of m.Proto (0: TCP and UDP) with a source or
// destination address in m.Addrs (none: any) and a source or destination
// port in m.Ports (none: any). Everything else — ARP, other protocols, IPv6
// packets whose first next header is not TCP or UDP (extension headers),
// IPv4 fragments after the first when ports are asked for (they carry no
// ports) — is rejected. It uses no kernel extension, so golang.org/x/net/bpf's
// userland VM runs it as the kernel does; the VLAN check a socket adds in
// front (socketFilter) is kernel-only.
func Filter(m Match, snaplen int) ([]bpf.Instruction, error) {
	if snaplen <= 0 {
		return nil, fmt.Errorf("snaplen %d: want at least 1: %w", snaplen, ErrBadOptions)
	}
	if m.Proto != 0 && m.Proto != protoTCP && m.Proto != protoUDP {
		return nil, fmt.Errorf("protocol %d: want TCP (6), UDP (17) or 0 for both: %w", m.Proto, ErrBadOptions)
	}
	var v4, v6 []netip.Addr
	for _, a := range m.Addrs {
		switch {
		case !a.IsValid() || a.Zone() != "":
			return nil, fmt.Errorf("address %q: want an IPv4 or IPv6 address without a zone: %w", a, ErrBadOptions)
		case a.Is4() || a.Is4In6():
			v4 = append(v4, a.Unmap())
		default:
			v6 = append(v6, a)
		}
	}
	anyAddr := len(m.Addrs) == 0
	var a asm
	a.ld(bpf.LoadAbsolute{Off: offEtherType, Size: 2})
	if anyAddr || len(v4) > 0 {
		a.jeqTo(etherIPv4, "v4")
	}
	if anyAddr || len(v6) > 0 {
		a.jeqTo(etherIPv6, "v6")
	}
	a.jump("reject")

	if anyAddr || len(v4) > 0 {
		a.label("v4")
		a.proto(bpf.LoadAbsolute{Off: offV4Proto, Size: 1}, m.Proto)
		if len(m.Ports) > 0 {
			// A fragment after the first has no transport header.
			a.ld(bpf.LoadAbsolute{Off: offV4Frag, Size: 2})
			a.emit(bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 0, SkipFalse: 1})
			a.jump("reject")
		}
		if len(v4) > 0 {
			for _, off := range []uint32{offV4Src, offV4Dst} {
				a.ld(bpf.LoadAbsolute{Off: off, Size: 4})
				for _, ad := range v4 {
					b := ad.As4()
					a.jeqTo(uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]), "v4addr")
				}
			}
			a.jump("reject")
			a.label("v4addr")
		}
		if len(m.Ports) > 0 {
			a.emit(bpf.LoadMemShift{Off: offIP}) // X = the IPv4 header's length
		}
		a.ports(m.Ports, bpf.LoadIndirect{Off: offIP, Size: 2}, bpf.LoadIndirect{Off: offIP + 2, Size: 2})
	}

	if anyAddr || len(v6) > 0 {
		a.label("v6")
		a.proto(bpf.LoadAbsolute{Off: offV6Next, Size: 1}, m.Proto)
		if len(v6) > 0 {
			for _, off := range []uint32{offV6Src, offV6Dst} {
				for i, ad := range v6 {
					next := fmt.Sprintf("v6next%d_%d", off, i)
					b := ad.As16()
					for w := 0; w < 4; w++ {
						a.ld(bpf.LoadAbsolute{Off: off + uint32(4*w), Size: 4})
						val := uint32(b[4*w])<<24 | uint32(b[4*w+1])<<16 | uint32(b[4*w+2])<<8 | uint32(b[4*w+3])
						if w < 3 {
							a.jneTo(val, next)
						} else {
							a.jeqTo(val, "v6addr")
						}
					}
					a.label(next)
				}
			}
			a.jump("reject")
			a.label("v6addr")
		}
		a.ports(m.Ports, bpf.LoadAbsolute{Off: offV6Ports, Size: 2}, bpf.LoadAbsolute{Off: offV6Ports + 2, Size: 2})
	}

	a.label("accept")
	a.emit(bpf.RetConstant{Val: uint32(snaplen)})
	a.label("reject")
	a.emit(bpf.RetConstant{Val: 0})
	prog, err := a.resolve()
	if err != nil {
		return nil, err
	}
	// The VLAN check socketFilter adds takes 3 more.
	if len(prog)+3 > maxInsns {
		return nil, fmt.Errorf("match of %d addresses and %d ports needs %d BPF instructions, more than the kernel's %d: %w: %w",
			len(m.Addrs), len(m.Ports), len(prog)+3, maxInsns, ErrFilterTooLong, ErrBadOptions)
	}
	return prog, nil
}

// socketFilter puts the kernel-only check in front of body: packets the
// NIC or veth untagged from a VLAN are refused (their headers are not
// where body looks, and the VLAN's own interface shows them).
func socketFilter(body []bpf.Instruction) ([]bpf.RawInstruction, error) {
	prog := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtVLANTagPresent},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
	}
	return bpf.Assemble(append(prog, body...))
}

// rejectAll is the filter a socket gets before anything else: libpcap's
// way to keep what arrived before the real filter out of the capture.
var rejectAll = []bpf.RawInstruction{{Op: 0x06}} // ret #0

// asm lays out a classic BPF program with named labels. Every conditional
// jump is short (skip 0 or 1) over an unconditional `ja`, whose 32-bit
// offset reaches any label: a program of hundreds of addresses never
// needs a conditional jump further than 255.
type asm struct {
	ins    []bpf.Instruction
	labels map[string]int
	jumps  map[int]string // index of a `ja` → its label
}

func (a *asm) emit(i bpf.Instruction) { a.ins = append(a.ins, i) }
func (a *asm) ld(i bpf.Instruction)   { a.emit(i) }

func (a *asm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.ins)
}

func (a *asm) jump(label string) {
	if a.jumps == nil {
		a.jumps = map[int]string{}
	}
	a.jumps[len(a.ins)] = label
	a.emit(bpf.Jump{})
}

// jeqTo jumps to label when A == val, else goes on.
func (a *asm) jeqTo(val uint32, label string) {
	a.emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: val, SkipTrue: 0, SkipFalse: 1})
	a.jump(label)
}

// jneTo jumps to label when A != val, else goes on.
func (a *asm) jneTo(val uint32, label string) {
	a.emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: val, SkipTrue: 1, SkipFalse: 0})
	a.jump(label)
}

// ports accepts when the port either load reads is one of ports (any port
// when there are none), and rejects otherwise.
func (a *asm) ports(ports []uint16, loads ...bpf.Instruction) {
	if len(ports) == 0 {
		a.jump("accept")
		return
	}
	for _, ld := range loads {
		a.ld(ld)
		for _, p := range ports {
			a.jeqTo(uint32(p), "accept")
		}
	}
	a.jump("reject")
}

// proto checks the protocol byte ld loads: proto, or TCP or UDP for 0.
func (a *asm) proto(ld bpf.Instruction, proto uint8) {
	a.ld(ld)
	if proto != 0 {
		a.jneTo(uint32(proto), "reject")
		return
	}
	ok := fmt.Sprintf("proto%d", len(a.ins))
	a.jeqTo(protoTCP, ok)
	a.jeqTo(protoUDP, ok)
	a.jump("reject")
	a.label(ok)
}

func (a *asm) resolve() ([]bpf.Instruction, error) {
	out := append([]bpf.Instruction(nil), a.ins...)
	for at, name := range a.jumps {
		to, ok := a.labels[name]
		if !ok || to <= at {
			return nil, fmt.Errorf("bpf: label %q of instruction %d not found ahead", name, at)
		}
		out[at] = bpf.Jump{Skip: uint32(to - at - 1)}
	}
	return out, nil
}
