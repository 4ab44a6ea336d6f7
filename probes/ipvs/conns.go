package ipvs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Conn is one entry of the IPVS connection table: client → VIP, sent to Dest.
type Conn struct {
	Proto   string         `json:"proto"`
	Client  netip.AddrPort `json:"client"`
	VIP     netip.AddrPort `json:"vip"`
	Dest    netip.AddrPort `json:"dest"`
	State   string         `json:"state"`
	Expires int            `json:"expires"` // seconds
	PEName  string         `json:"pe_name,omitempty"`
	PEData  string         `json:"pe_data,omitempty"`
}

// ConnTableFile is the connection table of the reading thread's namespace.
const ConnTableFile = "/proc/thread-self/net/ip_vs_conn"

// ReadConns streams the IPVS connection table of ns to fn, keeping those
// for which keep returns true (nil keeps all). moby/ipvs has no API for it.
func ReadConns(ns netns.Target, keep func(Conn) bool) ([]Conn, error) {
	var out []Conn
	err := ns.Do(func() error {
		f, err := os.Open(ConnTableFile)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no %s: ip_vs is not loaded", ConnTableFile)
			}
			return err
		}
		defer f.Close()
		return ParseConns(f, func(c Conn) {
			if keep == nil || keep(c) {
				out = append(out, c)
			}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read IPVS connections in %s: %w", ns, err)
	}
	return out, nil
}

// ParseConns parses /proc/net/ip_vs_conn:
//
//	Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
//	TCP 0A010003 A3F2 0A010006 1F95 0A010032 1F95 SYN_RECV         56
//
// IPv4 addresses are hex; IPv6 ones are printed in colon form.
func ParseConns(r io.Reader, fn func(Conn)) error {
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] == "Pro" {
			continue
		}
		if len(f) < 9 {
			return fmt.Errorf("ip_vs_conn line %d: %d fields, want at least 9", line, len(f))
		}
		var c Conn
		var err error
		c.Proto = strings.ToLower(f[0])
		if c.Client, err = hexAddrPort(f[1], f[2]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: client: %w", line, err)
		}
		if c.VIP, err = hexAddrPort(f[3], f[4]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: vip: %w", line, err)
		}
		if c.Dest, err = hexAddrPort(f[5], f[6]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: dest: %w", line, err)
		}
		c.State = f[7]
		if c.Expires, err = strconv.Atoi(f[8]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: expires %q", line, f[8])
		}
		if len(f) > 9 {
			c.PEName = f[9]
		}
		if len(f) > 10 {
			c.PEData = f[10]
		}
		fn(c)
	}
	return sc.Err()
}

func hexAddrPort(addr, port string) (netip.AddrPort, error) {
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", port)
	}
	var a netip.Addr
	if strings.Contains(addr, ":") {
		a, err = netip.ParseAddr(addr)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q", addr)
		}
	} else {
		v, err := strconv.ParseUint(addr, 16, 32)
		if err != nil || len(addr) != 8 {
			return netip.AddrPort{}, fmt.Errorf("address %q", addr)
		}
		a = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// ConnTable is the IPVS connection table of one namespace, opened once in
// it: every Read reads it afresh without switching namespaces again.
type ConnTable struct {
	f *os.File
}

// OpenConns opens the IPVS connection table of ns.
func OpenConns(ns netns.Target) (*ConnTable, error) {
	var f *os.File
	err := ns.Do(func() error {
		var err error
		f, err = os.Open(ConnTableFile)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no %s: ip_vs is not loaded", ConnTableFile)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read IPVS connections in %s: %w", ns, err)
	}
	return &ConnTable{f: f}, nil
}

// Read streams the whole table, as it is now, to fn.
func (t *ConnTable) Read(fn func(Conn)) error {
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read IPVS connections: %w", err)
	}
	return ParseConns(t.f, fn)
}

// Close closes the table.
func (t *ConnTable) Close() error { return t.f.Close() }
