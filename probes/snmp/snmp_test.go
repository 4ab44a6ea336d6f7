package snmp_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/snmp"
)

const sample = `Ip: Forwarding DefaultTTL InReceives InAddrErrors
Ip: 2 64 100 87
Tcp: RtoAlgorithm MaxConn ActiveOpens
Tcp: 1 -1 5
`

func TestParse(t *testing.T) {
	c := snmp.Counters{}
	if err := snmp.Parse([]byte(sample), c); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]uint64{"IpInAddrErrors": 87, "IpForwarding": 2, "TcpMaxConn": 0, "TcpActiveOpens": 5} {
		if c[k] != want {
			t.Errorf("Parse(sample)[%s] = %d, want %d", k, c[k], want)
		}
	}
	if err := snmp.Parse([]byte("Ip: A B\nIp: 1\n"), snmp.Counters{}); err == nil {
		t.Error("Parse(short value line) = nil error, want an error")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Fuzz(func(t *testing.T, data []byte) {
		snmp.Parse(data, snmp.Counters{})
	})
}

// Counters belong to the namespace: traffic in one netns moves its counters only.
func TestReadIsPerNamespace(t *testing.T) {
	a, b := testkit.Netns(t, "snmpa"), testkit.Netns(t, "snmpb")
	beforeA, err := snmp.Read(a)
	if err != nil {
		t.Fatal(err)
	}
	beforeB, _ := snmp.Read(b)
	testkit.SendUDP(t, a, netip.Addr{}, netip.MustParseAddrPort("127.0.0.1:9"), 5)
	afterA, _ := snmp.Read(a)
	afterB, _ := snmp.Read(b)
	if d := snmp.Delta(beforeA, afterA); d["UdpOutDatagrams"] != 5 {
		t.Errorf("netns a: UdpOutDatagrams delta = %d, want 5", d["UdpOutDatagrams"])
	}
	if d := snmp.Delta(beforeB, afterB); d["UdpOutDatagrams"] != 0 {
		t.Errorf("netns b: UdpOutDatagrams delta = %d, want 0", d["UdpOutDatagrams"])
	}
}

// The probe and `nstat -az`, in the same quiet namespace, agree on every
// counter both show.
func TestReadAgreesWithNstat(t *testing.T) {
	ns := testkit.Netns(t, "nstat")
	testkit.SendUDP(t, ns, netip.Addr{}, netip.MustParseAddrPort("127.0.0.1:9"), 1)
	got, err := snmp.Read(ns)
	if err != nil {
		t.Fatal(err)
	}
	out := testkit.Run(t, ns, "nstat", "-azs")
	compared := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		v, ok := got[f[0]]
		if !ok {
			continue // snmp6 and others the probe does not read
		}
		compared++
		if strconv.FormatUint(v, 10) != f[1] && !(v == 0 && strings.HasPrefix(f[1], "-")) {
			t.Errorf("%s: probe %d, nstat %s", f[0], v, f[1])
		}
	}
	if compared < 50 || got["UdpOutDatagrams"] != 1 {
		t.Errorf("compared %d counters (UdpOutDatagrams %d); want ≥50 and 1 datagram", compared, got["UdpOutDatagrams"])
	}
}
