// Package snmp reads the kernel's SNMP and netstat counters
// (/proc/net/snmp, /proc/net/netstat) of a network namespace, e.g.
// IpInAddrErrors, the counter the seed's dropped SYN-ACKs raise.
package snmp

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Counters maps "Ip.InAddrErrors", "TcpExt.ListenOverflows", … to values,
// named as nstat names them without the dot ("IpInAddrErrors").
type Counters map[string]uint64

// Files read, per thread so that they belong to the namespace the reading
// thread is in (/proc/net follows the thread-group leader instead).
var Files = []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"}

// Read returns the counters of ns.
func Read(ns netns.Target) (Counters, error) {
	c := Counters{}
	err := ns.Do(func() error {
		for _, f := range Files {
			data, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			if err := Parse(data, c); err != nil {
				return fmt.Errorf("parse %s: %w", f, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read SNMP counters in %s: %w", ns, err)
	}
	return c, nil
}

// Parse adds the counters of a /proc/net/snmp or netstat file to c. The
// files pair a header line with a value line per protocol.
func Parse(data []byte, c Counters) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	var header []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		if header == nil || header[0] != f[0] {
			header = f
			continue
		}
		if len(f) != len(header) {
			return fmt.Errorf("%s has %d values for %d names", f[0], len(f)-1, len(header)-1)
		}
		proto := strings.TrimSuffix(f[0], ":")
		for i := 1; i < len(f); i++ {
			// Negative values exist (Tcp MaxConn = -1): keep them as 0.
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				if _, ierr := strconv.ParseInt(f[i], 10, 64); ierr != nil {
					return fmt.Errorf("%s %s: bad value %q", proto, header[i], f[i])
				}
				v = 0
			}
			c[proto+header[i]] = v
		}
		header = nil
	}
	return sc.Err()
}

// Delta returns after - before for every counter in after.
func Delta(before, after Counters) Counters {
	d := Counters{}
	for k, v := range after {
		if v >= before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
