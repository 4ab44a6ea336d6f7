// Package ipset reads the IP sets of a network namespace (what `ipset
// list` shows: each set's name, type and members) over netlink
// (nfnetlink's ipset subsystem, IPSET_CMD_LIST), so that a rule matching
// `-m set --match-set NAME dst,dst` can be judged by what the set holds.
//
// Netlink, not the `ipset` tool: a kube-proxy node or its container need
// not have the tool, and lbdoctor is one static binary. Not
// vishvananda/netlink's IpsetListAll either: it splits a set that spans
// several netlink messages into several results, and it logs every
// attribute it does not know (a 6.1 kernel's bucket size, initval) on the
// standard logger, which would write to lbdoctor's stderr.
package ipset

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
)

// MaxMembers caps the members kept per set; the rest are counted in
// Set.Omitted (a node with thousands of services has sets that large).
const MaxMembers = 5000

// Snapshot is every set read in one namespace.
type Snapshot struct {
	Sets []Set `json:"sets"`
}

// Set is one IP set.
type Set struct {
	Name string `json:"name"`
	Type string `json:"type"` // e.g. hash:ip,port, bitmap:port
	// Entries is the member count the kernel reports; Members lists at most
	// MaxMembers of them, Omitted counts the rest.
	Entries    int      `json:"entries"`
	References int      `json:"references"` // rules (and sets) that use it
	Members    []Member `json:"members"`
	Omitted    int      `json:"omitted,omitempty"`
}

// Member is one entry of a set: the fields its type has, the others zero.
type Member struct {
	IP    netip.Addr `json:"ip,omitzero"`
	CIDR  uint8      `json:"cidr,omitempty"`
	Proto string     `json:"proto,omitempty"` // tcp, udp, sctp…; with Port
	Port  uint16     `json:"port,omitempty"`
	IP2   netip.Addr `json:"ip2,omitzero"`
	CIDR2 uint8      `json:"cidr2,omitempty"`
}

// String is the member as `ipset list` prints it: 10.96.0.1,tcp:443,
// 10.244.0.5,tcp:80,10.244.0.5, or a bitmap's port alone.
func (m Member) String() string {
	var parts []string
	addr := func(a netip.Addr, cidr uint8) {
		if !a.IsValid() {
			return
		}
		s := a.String()
		if cidr != 0 && int(cidr) != a.BitLen() {
			s += "/" + strconv.Itoa(int(cidr))
		}
		parts = append(parts, s)
	}
	addr(m.IP, m.CIDR)
	if m.Port != 0 || m.Proto != "" {
		if m.Proto != "" && m.IP.IsValid() {
			parts = append(parts, m.Proto+":"+strconv.Itoa(int(m.Port)))
		} else {
			parts = append(parts, strconv.Itoa(int(m.Port)))
		}
	}
	addr(m.IP2, m.CIDR2)
	return strings.Join(parts, ",")
}

// Set returns the set named name, and whether it exists.
func (s Snapshot) Set(name string) (Set, bool) {
	for _, x := range s.Sets {
		if x.Name == name {
			return x, true
		}
	}
	return Set{}, false
}

// Has reports whether the set lists a member equal to m. A set whose
// members were capped (Omitted > 0) may hold m unlisted: known is false
// then when m is not among those listed.
func (x Set) Has(m Member) (has, known bool) {
	for _, y := range x.Members {
		if y == m {
			return true, true
		}
	}
	return false, x.Omitted == 0
}

// nfnetlink's ipset subsystem (include/uapi/linux/netfilter/ipset/ip_set.h).
const (
	cmdList = 7 // IPSET_CMD_LIST

	// IPSET_PROTOCOL_MIN: every kernel since 3.x answers protocol 6.
	protocol = 6

	attrProtocol = 1
	attrSetname  = 2
	attrTypename = 3
	attrData     = 7
	attrADT      = 8

	// In a DATA attribute (the set's header, or one member).
	attrIP         = 1 // nested: IPADDR_IPV4 or IPADDR_IPV6
	attrCIDR       = 3
	attrPort       = 4
	attrProto      = 7
	attrElements   = 24
	attrReferences = 25
	attrIP2        = 20 // nested, as attrIP
	attrCIDR2      = 21

	attrIPAddrV4 = 1
	attrIPAddrV6 = 2
)

// ErrNotSupported says the kernel has no ipset (CONFIG_IP_SET).
var ErrNotSupported = errors.New("the kernel has no ipset support (CONFIG_IP_SET, module ip_set not loaded)")

// Read lists every set of ns with its members.
func Read(ns netns.Target) (Snapshot, error) {
	snap := Snapshot{Sets: []Set{}}
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysIPSet,
		MessageType: cmdList,
		Family:      netfilter.ProtoIPv4,
		Flags:       netlink.Request | netlink.Dump,
	}, []netfilter.Attribute{{Type: attrProtocol, Data: []byte{protocol}}})
	if err != nil {
		return snap, err
	}
	var msgs []netlink.Message
	err = ns.Do(func() error {
		c, err := netfilter.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		// A dump must never hang a probe.
		if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			return err
		}
		msgs, err = c.Query(req)
		return err
	})
	if err != nil {
		var op *netlink.OpError
		if errors.As(err, &op) && (errors.Is(op.Err, unix.EPROTONOSUPPORT) || errors.Is(op.Err, unix.ENOENT)) {
			return snap, fmt.Errorf("read ipsets in %s: %w", ns, ErrNotSupported)
		}
		return snap, fmt.Errorf("read ipsets in %s: %w", ns, err)
	}
	for _, m := range msgs {
		_, attrs, err := netfilter.UnmarshalNetlink(m)
		if err != nil {
			return snap, fmt.Errorf("read ipsets in %s: decode: %w", ns, err)
		}
		snap.add(attrs)
	}
	return snap, nil
}

// add merges one message of the dump: a large set spans several, each
// naming it again.
func (s *Snapshot) add(attrs []netfilter.Attribute) {
	var name, typ string
	for _, a := range attrs {
		switch a.Type {
		case attrSetname:
			name = cstring(a.Data)
		case attrTypename:
			typ = cstring(a.Data)
		}
	}
	if name == "" {
		return
	}
	i := len(s.Sets)
	for j := range s.Sets {
		if s.Sets[j].Name == name {
			i = j
		}
	}
	if i == len(s.Sets) {
		s.Sets = append(s.Sets, Set{Name: name, Members: []Member{}})
	}
	x := &s.Sets[i]
	if typ != "" {
		x.Type = typ
	}
	for _, a := range attrs {
		switch a.Type {
		case attrData:
			for _, d := range a.Children {
				switch d.Type {
				case attrElements:
					x.Entries = int(be32(d.Data))
				case attrReferences:
					x.References = int(be32(d.Data))
				}
			}
		case attrADT:
			for _, d := range a.Children {
				if d.Type != attrData {
					continue
				}
				if len(x.Members) == MaxMembers {
					x.Omitted++
					continue
				}
				x.Members = append(x.Members, member(d.Children))
			}
		}
	}
}

func member(attrs []netfilter.Attribute) Member {
	var m Member
	for _, a := range attrs {
		switch a.Type {
		case attrIP:
			m.IP = nestedAddr(a.Children)
		case attrIP2:
			m.IP2 = nestedAddr(a.Children)
		case attrCIDR:
			if len(a.Data) > 0 {
				m.CIDR = a.Data[0]
			}
		case attrCIDR2:
			if len(a.Data) > 0 {
				m.CIDR2 = a.Data[0]
			}
		case attrPort:
			if len(a.Data) >= 2 {
				m.Port = binary.BigEndian.Uint16(a.Data)
			}
		case attrProto:
			if len(a.Data) > 0 {
				m.Proto = proto.Name(a.Data[0])
			}
		}
	}
	return m
}

func nestedAddr(attrs []netfilter.Attribute) netip.Addr {
	for _, a := range attrs {
		if a.Type == attrIPAddrV4 || a.Type == attrIPAddrV6 {
			if ip, ok := netip.AddrFromSlice(a.Data); ok {
				return ip
			}
		}
	}
	return netip.Addr{}
}

func be32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func cstring(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\x00")
	return s
}
