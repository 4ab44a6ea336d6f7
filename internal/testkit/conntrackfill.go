package testkit

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// RaiseHostSysctl sets the host's key to at least min for the test and
// puts it back after (nf_conntrack_max is global: a child netns cannot set
// its own).
func RaiseHostSysctl(tb testing.TB, key string, min int) {
	tb.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	old, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if v, _ := strconv.Atoi(strings.TrimSpace(string(old))); v >= min {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(min)), 0o644); err != nil {
		tb.Fatalf("raise %s: %v", key, err)
	}
	tb.Cleanup(func() { os.WriteFile(path, old, 0o644) })
}

// FillConntrack inserts total confirmed UDP flows into ns's conntrack
// table over netlink (ctnetlink IPCTNL_MSG_CT_NEW, in batches), vipFlows
// of them to vip and the rest to other addresses (10.2.0.0/15) on vip's
// port, each from its own client of 10.100.0.0/16. With a valid backend,
// the VIP's flows are answered by it, as a DNAT rule's are (their reply
// tuple's source).
func FillConntrack(ns netns.Target, total int, vip netip.AddrPort, vipFlows int, backend netip.AddrPort) error {
	return ns.Do(func() error {
		sock, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer unix.Close(sock)
		if err := unix.Bind(sock, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return err
		}
		var batch []byte
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := unix.Sendto(sock, batch, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
			batch = batch[:0]
			return err
		}
		for i := 0; i < total; i++ {
			dst := vip.Addr()
			if i >= vipFlows {
				dst = netip.AddrFrom4([4]byte{10, 2 + byte(i>>16), byte(i >> 8), byte(i)})
			}
			src := netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})
			reply := netip.AddrPortFrom(dst, vip.Port())
			if i < vipFlows && backend.IsValid() {
				reply = backend
			}
			msg, err := newFlowMsg(src, dst, uint16(1024+i%60000), vip.Port(), reply, uint32(i+1))
			if err != nil {
				return err
			}
			batch = append(batch, msg...)
			if len(batch) > 200_000 {
				if err := flush(); err != nil {
					return fmt.Errorf("insert flows: %w", err)
				}
			}
		}
		return flush()
	})
}

// newFlowMsg is one flow src:sport → dst:dport answered by reply.
func newFlowMsg(src, dst netip.Addr, sport, dport uint16, reply netip.AddrPort, seq uint32) ([]byte, error) {
	be16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	tuple := func(typ uint16, s, d netip.Addr, sp, dp uint16) netfilter.Attribute {
		return netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
			{Type: 1, Nested: true, Children: []netfilter.Attribute{{Type: 1, Data: s.AsSlice()}, {Type: 2, Data: d.AsSlice()}}},
			{Type: 2, Nested: true, Children: []netfilter.Attribute{{Type: 1, Data: []byte{unix.IPPROTO_UDP}}, {Type: 2, Data: be16(sp)}, {Type: 3, Data: be16(dp)}}},
		}}
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink, MessageType: 0, Family: netfilter.ProtoIPv4,
		Flags: netlink.Request | netlink.Create | netlink.Excl,
	}, []netfilter.Attribute{
		tuple(1, src, dst, sport, dport),
		tuple(2, reply.Addr(), src, reply.Port(), sport),
		{Type: 3, Data: be32(1<<3 | 1<<1)}, // CONFIRMED | SEEN_REPLY
		{Type: 7, Data: be32(3600)},
	})
	if err != nil {
		return nil, err
	}
	m.Header.Length = uint32(unix.NLMSG_HDRLEN + len(m.Data))
	m.Header.Sequence = seq
	return m.MarshalBinary()
}
