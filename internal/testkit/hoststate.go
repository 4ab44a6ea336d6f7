package testkit

import (
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// HostState is everything setup may touch in ns, as the tools print it:
// `ipvsadm -Sn` (where the kernel has IPVS), the addresses (`ip -o addr`), the rules of
// iptables-nft-save, iptables-legacy-save and `nft list ruleset`, and the
// sysctls. Rules are compared, not table headers: iptables itself leaves an
// empty built-in table behind after -A then -D.
func HostState(t testing.TB, ns netns.Target) string {
	t.Helper()
	var b strings.Builder
	run := func(name string, args ...string) string {
		out, err := Output(ns, name, args...)
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return out
	}
	if InGuest() {
		b.WriteString("== ipvsadm -Sn\n" + run("ipvsadm", "-Sn"))
	}
	for _, be := range []string{rules.IptablesNft, rules.IptablesLegacy} {
		rs, err := rules.ParseSave(be, []byte(run(be+"-save")))
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("== " + be + "-save\n")
		for _, r := range rs {
			b.WriteString(r.Table + " " + r.Spec + "\n")
		}
	}
	rs, err := rules.ParseNftList([]byte(run("nft", "list", "ruleset")))
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString("== nft list ruleset\n")
	for _, r := range rs {
		b.WriteString(r.Table + " " + r.Chain + " " + r.Spec + "\n")
	}
	// Addresses, not their flags and lifetimes: the kernel's own IPv6
	// link-local address leaves "tentative" (DAD) on its own.
	b.WriteString("== ip -o addr\n")
	for _, l := range strings.Split(run("ip", "-o", "addr", "show"), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || strings.HasPrefix(f[3], "fe80:") {
			continue
		}
		b.WriteString(f[1] + " " + f[2] + " " + f[3] + "\n")
	}
	keys := []string{"net.ipv4.ip_forward", "net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.eth0.send_redirects"}
	snap, err := sysctl.Read(ns, keys...)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		b.WriteString(k + " = " + snap[k].Value + "\n")
	}
	return b.String()
}
