package ipvs

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// IPVS's generic netlink interface (linux/ip_vs.h), as ipvsadm reads it:
// one dump of the services, then one dump of the reals per service (1,001
// requests for 1,000 services). Read here through one raw socket (see
// genlConn); moby/ipvs (which lbdoctor uses to change IPVS) took 2.2 × as long
// for the same dumps in the guest (BenchmarkGuestReadScale: 7.4 s against
// 3.4 s a read of 1,000 services × 10 reals under TCG; ipvsadm -Ln 4.1 s):
// it asks the socket's address (getsockname) for every request and sets a
// read deadline for every receive. Two more reasons it is not used to read:
// it resolves IPVS's netlink family once per process (a sync.Once), so a
// long-running reader (serve) never saw IPVS again after the module was
// reloaded and the family got a new id (TestGuestServeIPVSModuleReload:
// this reader resolves it at each read); and it runs `modprobe ip_vs`,
// which a read-only doctor must not.
const (
	genlCtrlID            = 0x10 // GENL_ID_CTRL
	genlCtrlCmdGetFamily  = 3    // CTRL_CMD_GETFAMILY
	genlCtrlAttrFamilyID  = 1    // CTRL_ATTR_FAMILY_ID
	genlCtrlAttrFamilyNam = 2    // CTRL_ATTR_FAMILY_NAME

	ipvsGenlVersion = 1 // IPVS_GENL_VERSION

	cmdGetService = 4  // IPVS_CMD_GET_SERVICE
	cmdGetDest    = 8  // IPVS_CMD_GET_DEST
	cmdGetConfig  = 13 // IPVS_CMD_GET_CONFIG

	cmdAttrService    = 1 // IPVS_CMD_ATTR_SERVICE
	cmdAttrDest       = 2 // IPVS_CMD_ATTR_DEST
	cmdAttrTimeoutTCP = 4 // IPVS_CMD_ATTR_TIMEOUT_TCP
	cmdAttrTimeoutFin = 5 // IPVS_CMD_ATTR_TIMEOUT_TCP_FIN
	cmdAttrTimeoutUDP = 6 // IPVS_CMD_ATTR_TIMEOUT_UDP

	svcAttrAF        = 1  // IPVS_SVC_ATTR_AF
	svcAttrProtocol  = 2  // IPVS_SVC_ATTR_PROTOCOL
	svcAttrAddr      = 3  // IPVS_SVC_ATTR_ADDR
	svcAttrPort      = 4  // IPVS_SVC_ATTR_PORT
	svcAttrFWMark    = 5  // IPVS_SVC_ATTR_FWMARK
	svcAttrSchedName = 6  // IPVS_SVC_ATTR_SCHED_NAME
	svcAttrFlags     = 7  // IPVS_SVC_ATTR_FLAGS (struct ip_vs_flags)
	svcAttrTimeout   = 8  // IPVS_SVC_ATTR_TIMEOUT
	svcAttrStats     = 10 // IPVS_SVC_ATTR_STATS

	destAttrAddr      = 1  // IPVS_DEST_ATTR_ADDR
	destAttrPort      = 2  // IPVS_DEST_ATTR_PORT
	destAttrFwdMethod = 3  // IPVS_DEST_ATTR_FWD_METHOD
	destAttrWeight    = 4  // IPVS_DEST_ATTR_WEIGHT
	destAttrUThresh   = 5  // IPVS_DEST_ATTR_U_THRESH
	destAttrLThresh   = 6  // IPVS_DEST_ATTR_L_THRESH
	destAttrActive    = 7  // IPVS_DEST_ATTR_ACTIVE_CONNS
	destAttrInact     = 8  // IPVS_DEST_ATTR_INACT_CONNS
	destAttrStats     = 10 // IPVS_DEST_ATTR_STATS
	destAttrAF        = 11 // IPVS_DEST_ATTR_ADDR_FAMILY (3.18+)

	statsConns    = 1  // IPVS_STATS_ATTR_CONNS
	statsInPkts   = 2  // IPVS_STATS_ATTR_INPKTS
	statsOutPkts  = 3  // IPVS_STATS_ATTR_OUTPKTS
	statsInBytes  = 4  // IPVS_STATS_ATTR_INBYTES
	statsOutBytes = 5  // IPVS_STATS_ATTR_OUTBYTES
	statsCPS      = 6  // IPVS_STATS_ATTR_CPS
	statsInPPS    = 7  // IPVS_STATS_ATTR_INPPS
	statsOutPPS   = 8  // IPVS_STATS_ATTR_OUTPPS
	statsInBPS    = 9  // IPVS_STATS_ATTR_INBPS
	statsOutBPS   = 10 // IPVS_STATS_ATTR_OUTBPS
)

// genlConn is a generic netlink socket to IPVS in one namespace, read raw:
// a blocking socket (no netpoller), one receive buffer for every answer, no
// peek before each receive. A read of 1,000 services is 1,001 dumps, each a
// send and two receives (the reals, then NLMSG_DONE); through
// mdlayher/netlink each was a send and four receives (a peek before each),
// a page allocated for each, and every attribute decoded through an
// allocating decoder.
type genlConn struct {
	fd     int
	family uint16
	seq    uint32
	buf    []byte // the receive buffer
	req    []byte // the request being built
}

// recvBuf is the receive buffer's size. The kernel sizes each datagram
// of a dump to the largest buffer a receive offered (at most 32 KiB): 8 KiB
// holds the reals of a service of ten (about 400 bytes each) in one, where
// a page took two; 64 KiB made every pass, NLMSG_DONE's too, an order-3
// allocation in the kernel, and the read slower (in the guest: 1.6–1.8 s
// at 4 and 8 KiB, 6.2 s at 64 KiB, side by side, 1,000 services × 10).
const recvBuf = 8 << 10

// dialIPVS opens a generic netlink socket in ns and resolves IPVS's family.
func dialIPVS(ns netns.Target) (*genlConn, error) {
	g := &genlConn{fd: -1, buf: make([]byte, recvBuf)}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
		if err != nil {
			return err
		}
		g.fd = fd
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	})
	if err != nil {
		g.Close()
		return nil, err
	}
	// A read must never hang a probe.
	tv := unix.Timeval{Sec: 10}
	unix.SetsockoptTimeval(g.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	name := append([]byte("IPVS"), 0)
	err = g.exec(genlCtrlID, genlCtrlCmdGetFamily, 0, appendAttr(nil, genlCtrlAttrFamilyNam, name), func(m []byte) error {
		return attrs(m, func(typ uint16, v []byte) {
			if typ == genlCtrlAttrFamilyID && len(v) >= 2 {
				g.family = binary.NativeEndian.Uint16(v)
			}
		})
	})
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("resolve the IPVS netlink family: %w", err)
	}
	if g.family == 0 {
		g.Close()
		return nil, errors.New("resolve the IPVS netlink family: no family id in the answer")
	}
	return g, nil
}

func (g *genlConn) Close() error {
	if g.fd < 0 {
		return nil
	}
	err := unix.Close(g.fd)
	g.fd = -1
	return err
}

// exec sends one generic netlink request (cmd, the encoded attributes,
// flags besides Request) to family and calls fn with each answer's payload
// past its generic netlink header (valid during the call only), until the
// answer ends: NLMSG_DONE for a dump, its one message otherwise. No
// request asks for an acknowledgement.
func (g *genlConn) exec(family uint16, cmd uint8, flags uint16, attrBytes []byte, fn func([]byte) error) error {
	g.seq++
	l := unix.NLMSG_HDRLEN + 4 + len(attrBytes)
	req := g.req[:0]
	req = binary.NativeEndian.AppendUint32(req, uint32(l))
	req = binary.NativeEndian.AppendUint16(req, family)
	req = binary.NativeEndian.AppendUint16(req, unix.NLM_F_REQUEST|flags)
	req = binary.NativeEndian.AppendUint32(req, g.seq)
	req = binary.NativeEndian.AppendUint32(req, 0) // the kernel fills the port id
	req = append(req, cmd, ipvsGenlVersion, 0, 0)
	req = append(req, attrBytes...)
	g.req = req
	if err := unix.Sendto(g.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	dump := flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP
	for {
		n, _, err := unix.Recvfrom(g.fd, g.buf, unix.MSG_TRUNC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > len(g.buf) {
			return fmt.Errorf("a generic netlink answer of %d bytes, over %d", n, len(g.buf))
		}
		b := g.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			h := (*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
			ml := int(h.Len)
			if ml < unix.NLMSG_HDRLEN || ml > len(b) {
				return fmt.Errorf("generic netlink message length %d out of range", ml)
			}
			m := b[unix.NLMSG_HDRLEN:ml]
			b = b[min(nlAlign(ml), len(b)):]
			if h.Seq != g.seq {
				continue // the rest of an earlier, abandoned request
			}
			switch h.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m)); errno != 0 {
						return unix.Errno(errno)
					}
				}
				if !dump {
					return nil
				}
				continue
			}
			if len(m) < 4 {
				return fmt.Errorf("short generic netlink message (%d bytes)", len(m))
			}
			if err := fn(m[4:]); err != nil {
				return err
			}
			if !dump {
				return nil
			}
		}
	}
}

// nlaTypeMask clears an attribute type's flag bits (NLA_TYPE_MASK).
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

func nlAlign(l int) int { return (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

// appendAttr appends a netlink attribute of type typ and value v to b.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.NLA_HDRLEN+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for range nlAlign(len(v)) - len(v) {
		b = append(b, 0)
	}
	return b
}

// attrs calls fn with the type (its flag bits cleared) and value of each
// attribute of b; an attribute that overruns b is an error.
func attrs(b []byte, fn func(typ uint16, v []byte)) error {
	for len(b) >= unix.NLA_HDRLEN {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.NLA_HDRLEN || l > len(b) {
			return fmt.Errorf("netlink attribute length %d out of range (%d bytes left)", l, len(b))
		}
		fn(binary.NativeEndian.Uint16(b[2:])&nlaTypeMask, b[unix.NLA_HDRLEN:l])
		b = b[min(nlAlign(l), len(b)):]
	}
	return nil
}

func u16(v []byte) uint16 {
	if len(v) < 2 {
		return 0
	}
	return binary.NativeEndian.Uint16(v)
}

func u32(v []byte) uint32 {
	if len(v) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(v)
}

func u64(v []byte) uint64 {
	if len(v) < 8 {
		return 0
	}
	return binary.NativeEndian.Uint64(v)
}

// config reads IPVS's timeouts (ipvsadm -L --timeout).
func (g *genlConn) config() (Timeouts, error) {
	var t Timeouts
	err := g.exec(g.family, cmdGetConfig, 0, nil, func(m []byte) error {
		return attrs(m, func(typ uint16, v []byte) {
			switch typ {
			case cmdAttrTimeoutTCP:
				t.TCP = int(u32(v))
			case cmdAttrTimeoutFin:
				t.TCPFin = int(u32(v))
			case cmdAttrTimeoutUDP:
				t.UDP = int(u32(v))
			}
		})
	})
	return t, err
}

// service is a service as the dump gives it, with what a request for its
// reals must name.
type service struct {
	Service
	af    uint16
	proto uint16
	addr  []byte // 16 bytes, as the kernel's union nf_inet_addr
}

// services dumps every service.
func (g *genlConn) services() ([]service, error) {
	var out []service
	err := g.exec(g.family, cmdGetService, unix.NLM_F_DUMP, appendAttr(nil, cmdAttrService|unix.NLA_F_NESTED, nil), func(m []byte) error {
		s, err := parseService(m)
		if err == nil {
			out = append(out, s)
		}
		return err
	})
	return out, err
}

// parseService reads one answer of IPVS_CMD_GET_SERVICE.
func parseService(m []byte) (service, error) {
	s := service{Service: Service{Reals: []Real{}}}
	var port uint16
	var err error
	err = nested(m, cmdAttrService, func(typ uint16, v []byte) {
		switch typ {
		case svcAttrAF:
			s.af = u16(v)
		case svcAttrProtocol:
			s.proto = u16(v)
		case svcAttrAddr:
			s.addr = slices.Clone(v)
		case svcAttrPort:
			port = bePort(v)
		case svcAttrFWMark:
			s.FWMark = u32(v)
		case svcAttrSchedName:
			s.Scheduler = string(bytes.TrimRight(v, "\x00"))
		case svcAttrFlags:
			if len(v) >= 4 {
				s.Flags = flagNames(u32(v))
			}
		case svcAttrTimeout:
			s.Timeout = u32(v)
		case svcAttrStats:
			s.Stats, err = parseStats(v)
		}
	})
	if err != nil {
		return s, fmt.Errorf("parse an IPVS service: %w", err)
	}
	s.Proto = protoName(s.proto, s.FWMark)
	s.Addr = netip.AddrPortFrom(inetAddr(s.addr, s.af), port)
	if s.Flags == nil {
		s.Flags = []string{}
	}
	return s, nil
}

// dests dumps the reals of s.
func (g *genlConn) dests(s service) ([]Real, error) {
	var a [8]byte
	var svc []byte
	binary.NativeEndian.PutUint16(a[:], s.af)
	svc = appendAttr(svc, svcAttrAF, a[:2])
	if s.FWMark != 0 {
		binary.NativeEndian.PutUint32(a[:], s.FWMark)
		svc = appendAttr(svc, svcAttrFWMark, a[:4])
	} else {
		binary.NativeEndian.PutUint16(a[:], s.proto)
		svc = appendAttr(svc, svcAttrProtocol, a[:2])
		svc = appendAttr(svc, svcAttrAddr, s.addr)
		binary.BigEndian.PutUint16(a[:], s.Addr.Port())
		svc = appendAttr(svc, svcAttrPort, a[:2])
	}
	out := []Real{}
	err := g.exec(g.family, cmdGetDest, unix.NLM_F_DUMP, appendAttr(nil, cmdAttrService|unix.NLA_F_NESTED, svc), func(m []byte) error {
		r, err := parseDest(m, s.af)
		if err == nil {
			out = append(out, r)
		}
		return err
	})
	return out, err
}

// parseDest reads one answer of IPVS_CMD_GET_DEST; af is the service's
// family, the real's own before kernel 3.18 (no IPVS_DEST_ATTR_ADDR_FAMILY).
func parseDest(m []byte, af uint16) (Real, error) {
	var r Real
	var addr []byte
	var port uint16
	var err error
	err = nested(m, cmdAttrDest, func(typ uint16, v []byte) {
		switch typ {
		case destAttrAddr:
			addr = v
		case destAttrPort:
			port = bePort(v)
		case destAttrFwdMethod:
			r.Method = methodName(u32(v))
		case destAttrWeight:
			r.Weight = int(u32(v))
		case destAttrUThresh:
			r.UpperThresh = u32(v)
		case destAttrLThresh:
			r.LowerThresh = u32(v)
		case destAttrActive:
			r.ActiveConns = int(u32(v))
		case destAttrInact:
			r.InactiveConns = int(u32(v))
		case destAttrStats:
			r.Stats, err = parseStats(v)
		case destAttrAF:
			af = u16(v)
		}
	})
	if err != nil {
		return r, fmt.Errorf("parse an IPVS real server: %w", err)
	}
	r.Addr = netip.AddrPortFrom(inetAddr(addr, af), port)
	return r, nil
}

// nested calls fn with the attributes nested in each top-level attribute
// of m of type typ (the service or real an answer describes).
func nested(m []byte, typ uint16, fn func(typ uint16, v []byte)) error {
	var inner error
	err := attrs(m, func(t uint16, v []byte) {
		if t == typ && inner == nil {
			inner = attrs(v, fn)
		}
	})
	return cmp.Or(err, inner)
}

// parseStats reads IPVS_*_ATTR_STATS (32-bit counters, 64-bit bytes).
func parseStats(b []byte) (Stats, error) {
	var s Stats
	err := attrs(b, func(typ uint16, v []byte) {
		switch typ {
		case statsConns:
			s.Conns = u32(v)
		case statsInPkts:
			s.PacketsIn = u32(v)
		case statsOutPkts:
			s.PacketsOut = u32(v)
		case statsInBytes:
			s.BytesIn = u64(v)
		case statsOutBytes:
			s.BytesOut = u64(v)
		case statsCPS:
			s.CPS = u32(v)
		case statsInPPS:
			s.PPSIn = u32(v)
		case statsOutPPS:
			s.PPSOut = u32(v)
		case statsInBPS:
			s.BPSIn = u32(v)
		case statsOutBPS:
			s.BPSOut = u32(v)
		}
	})
	return s, err
}

// bePort reads a port in network byte order.
func bePort(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// inetAddr reads the kernel's union nf_inet_addr (16 bytes; an IPv4
// address in the first 4) of family af.
func inetAddr(b []byte, af uint16) netip.Addr {
	switch {
	case af == unix.AF_INET && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case af == unix.AF_INET6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.Addr{}
}
