package ipvs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
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

// Template reports whether c is a persistence template rather than a
// connection: IPVS keys a template by the client's address alone, with
// port 0, which no real client sends from (ip_vs_sched_persist).
func (c Conn) Template() bool { return c.Client.IsValid() && c.Client.Port() == 0 }

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
// IPv4 addresses are hex; IPv6 ones are printed in colon form. A busy LB's
// table has hundreds of thousands of lines, read twice a window: a line is
// parsed in place, without allocating (but for IPv6 addresses and PE data).
func ParseConns(r io.Reader, fn func(Conn)) error {
	sc := bufio.NewScanner(r)
	line := 0
	var f [11][]byte
	for sc.Scan() {
		line++
		n := fields(sc.Bytes(), f[:])
		if n == 0 || string(f[0]) == "Pro" {
			continue
		}
		if n < 9 {
			return fmt.Errorf("ip_vs_conn line %d: %d fields, want at least 9", line, n)
		}
		var c Conn
		var err error
		c.Proto = intern(lowerNames, f[0], strings.ToLower)
		if c.Client, err = hexAddrPort(f[1], f[2]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: client: %w", line, err)
		}
		if c.VIP, err = hexAddrPort(f[3], f[4]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: vip: %w", line, err)
		}
		if c.Dest, err = hexAddrPort(f[5], f[6]); err != nil {
			return fmt.Errorf("ip_vs_conn line %d: dest: %w", line, err)
		}
		c.State = intern(stateNames, f[7], nil)
		var ok bool
		if c.Expires, ok = decimal(f[8]); !ok {
			return fmt.Errorf("ip_vs_conn line %d: expires %q", line, f[8])
		}
		if n > 9 {
			c.PEName = string(f[9])
		}
		if n > 10 {
			c.PEData = string(f[10])
		}
		fn(c)
	}
	return sc.Err()
}

// fields splits b at runs of spaces and tabs into f, as strings.Fields
// would, and returns how many it found (at most len(f); the rest of the
// line is ignored).
func fields(b []byte, f [][]byte) int {
	n := 0
	for i := 0; i < len(b) && n < len(f); {
		for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
			i++
		}
		j := i
		for j < len(b) && b[j] != ' ' && b[j] != '\t' {
			j++
		}
		if j > i {
			f[n] = b[i:j]
			n++
		}
		i = j
	}
	return n
}

// The names the kernel prints, each one string shared by every line.
var (
	lowerNames = map[string]string{"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
	stateNames = map[string]string{}
)

func init() {
	for _, s := range []string{"NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK",
		"UDP", "ICMP", "INIT", "COOKIE_WAIT", "COOKIE_ECHOED", "SHUTDOWN_SENT", "SHUTDOWN_RECEIVED", "SHUTDOWN_ACK_SENT", "REJECTED", "CLOSED", "ERR"} {
		stateNames[s] = s
	}
}

// intern returns the shared string for b from names, else conv(b) (b itself
// when conv is nil) as a new string.
func intern(names map[string]string, b []byte, conv func(string) string) string {
	if s, ok := names[string(b)]; ok {
		return s
	}
	if conv == nil {
		return string(b)
	}
	return conv(string(b))
}

// decimal parses an optionally signed decimal int, as strconv.Atoi does.
func decimal(b []byte) (int, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		neg, b = b[0] == '-', b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	if neg {
		v = -v
	}
	return v, true
}

// hexValue parses b as unsigned hex of at most bits bits.
func hexValue(b []byte, bits int) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(d)
		if v >= 1<<bits {
			return 0, false
		}
	}
	return v, true
}

func hexAddrPort(addr, port []byte) (netip.AddrPort, error) {
	p, ok := hexValue(port, 16)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("port %q", port)
	}
	var a netip.Addr
	if bytes.IndexByte(addr, ':') >= 0 {
		var err error
		a, err = netip.ParseAddr(string(addr))
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q", addr)
		}
	} else {
		v, ok := hexValue(addr, 32)
		if !ok || len(addr) != 8 {
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
