package ipset_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/ipset"
)

// TestRead builds kube-proxy's sets with the ipset tool in a fresh
// namespace and reads them back: every type kube-proxy uses, a set large
// enough to span several netlink messages, and an empty one.
func TestRead(t *testing.T) {
	ns := testkit.Netns(t, "ipset")
	run := func(args ...string) { testkit.Run(t, ns, "ipset", args...) }
	run("create", "KUBE-CLUSTER-IP", "hash:ip,port")
	run("add", "KUBE-CLUSTER-IP", "10.96.0.10,tcp:80")
	run("add", "KUBE-CLUSTER-IP", "10.96.0.10,udp:53")
	run("create", "KUBE-LOOP-BACK", "hash:ip,port,ip")
	run("add", "KUBE-LOOP-BACK", "10.244.0.5,tcp:8080,10.244.0.5")
	run("create", "KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535")
	run("add", "KUBE-NODE-PORT-TCP", "30080")
	run("create", "KUBE-EMPTY", "hash:ip,port")
	run("create", "BIG", "hash:ip")
	var restore strings.Builder
	for i := range 3000 {
		restore.WriteString("add BIG 10.1." + itoa(i/250) + "." + itoa(i%250+1) + "\n")
	}
	if err := ns.Do(func() error { return runStdin("ipset", restore.String(), "restore") }); err != nil {
		t.Fatalf("ipset restore: %v", err)
	}

	snap, err := ipset.Read(ns)
	if err != nil {
		t.Fatalf("Read(%s) = %v", ns, err)
	}
	members := func(name string) []string {
		x, ok := snap.Set(name)
		if !ok {
			t.Fatalf("Read(%s) has no set %s; sets %v", ns, name, snap.Sets)
		}
		var out []string
		for _, m := range x.Members {
			out = append(out, m.String())
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name, set, typ string
		want           []string
	}{
		{"hash:ip,port", "KUBE-CLUSTER-IP", "hash:ip,port", []string{"10.96.0.10,tcp:80", "10.96.0.10,udp:53"}},
		{"hash:ip,port,ip", "KUBE-LOOP-BACK", "hash:ip,port,ip", []string{"10.244.0.5,tcp:8080,10.244.0.5"}},
		{"bitmap:port", "KUBE-NODE-PORT-TCP", "bitmap:port", []string{"30080"}},
		{"empty", "KUBE-EMPTY", "hash:ip,port", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := members(tc.set); !slices.Equal(got, tc.want) {
				t.Errorf("Read(%s) set %s = %q, want %q", ns, tc.set, got, tc.want)
			}
			if x, _ := snap.Set(tc.set); x.Type != tc.typ || x.Entries != len(tc.want) {
				t.Errorf("Read(%s) set %s: type %q entries %d, want %q %d", ns, tc.set, x.Type, x.Entries, tc.typ, len(tc.want))
			}
		})
	}
	t.Run("spans messages", func(t *testing.T) {
		x, _ := snap.Set("BIG")
		if len(x.Members) != 3000 || x.Entries != 3000 {
			t.Errorf("Read(%s) set BIG: %d members, %d entries, want 3000 each (one set, merged across messages)", ns, len(x.Members), x.Entries)
		}
		n := 0
		for _, s := range snap.Sets {
			if s.Name == "BIG" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("Read(%s) lists set BIG %d times, want once", ns, n)
		}
	})
	t.Run("has", func(t *testing.T) {
		x, _ := snap.Set("KUBE-CLUSTER-IP")
		m := ipset.Member{IP: netip.MustParseAddr("10.96.0.10"), Proto: "tcp", Port: 80}
		if has, known := x.Has(m); !has || !known {
			t.Errorf("Has(%s) = %v, %v, want true, true", m, has, known)
		}
		m.Port = 81
		if has, known := x.Has(m); has || !known {
			t.Errorf("Has(%s) = %v, %v, want false, true", m, has, known)
		}
	})
}

func itoa(i int) string { return strconv.Itoa(i) }

func runStdin(name, stdin string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}
