//go:build guest

package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// TestGuestKubeProxyNode builds a node the way kube-proxy's IPVS mode
// does (testkit.KubeProxyNode) and checks it: recognised (inspect names
// kube-ipvs0, the KUBE-* chains and ipsets, and lists the sets), judged by
// its design (its source NAT by mark is source NAT, its probe service no
// user's, a pod calling its own service masqueraded by KUBE-LOOP-BACK) and
// passed with no failure while clients use it. Then broken as the
// kube-proxy reports describe — the loop-back masquerade gone (a pod
// calling its own service hangs), KUBE-POSTROUTING flushed (the remote
// endpoint's replies bypass the node) — each failing its id, and passing
// again once put back.
func TestGuestKubeProxyNode(t *testing.T) {
	k := testkit.KubeProxyNode(t)
	node := k.Node.Name
	call := func(what string, fromPods bool, svc string, want bool) {
		t.Helper()
		ns, addr := k.Client, k.NodePort
		switch svc {
		case "cluster":
			addr = k.ClusterIP
		}
		if fromPods {
			ns = k.Pods
		}
		timeout := exchangeTimeout
		if !want {
			timeout = time.Second
		}
		res := k.Call(ns, addr, timeout)
		for try := 1; want && !res.OK && try < 3; try++ {
			res = k.Call(ns, addr, timeout)
		}
		if res.OK != want {
			t.Fatalf("%s → %s: answered %v (%v), want %v", what, addr, res.OK, res.Err, want)
		}
	}
	// Every path works: the client through the node port (both endpoints,
	// round robin) and the ClusterIP, and the pod through its own service
	// (scheduled to itself: the hairpin).
	for i := 0; i < 4; i++ {
		call("client", false, "nodeport", true)
	}
	call("client", false, "cluster", true)
	call("pod", true, "cluster", true)

	t.Run("inspect", func(t *testing.T) {
		out, code := testkit.RunLbdoctor(t, "inspect", "--netns", node, "-o", "json")
		var in report.Inspection
		if err := json.Unmarshal([]byte(out), &in); code != 0 || err != nil {
			t.Fatalf("lbdoctor inspect -o json = exit %d (%v), want 0 and JSON:\n%s", code, err, out)
		}
		kp := in.Snapshot.KubeProxy
		if kp == nil || kp.Dummy != "kube-ipvs0" || !kp.ProbeService ||
			!slices.Contains(kp.Sets, "KUBE-LOOP-BACK") || !slices.Contains(kp.Chains, "KUBE-POSTROUTING") {
			t.Errorf("inspect -o json kube_proxy = %+v, want kube-ipvs0, the probe service, set KUBE-LOOP-BACK, chain KUBE-POSTROUTING", kp)
		}
		x, ok := in.Snapshot.IPSets.Set("KUBE-CLUSTER-IP")
		if !ok || len(x.Members) != 1 || x.Members[0].String() != "10.96.0.10,tcp:80" {
			t.Errorf("inspect -o json ipsets KUBE-CLUSTER-IP = %+v, want one member 10.96.0.10,tcp:80", x)
		}
		// The text is the same snapshot rendered (one more inspect would
		// cost the guest its feature probes again).
		var b strings.Builder
		if err := report.InspectText(&b, &in); err != nil {
			t.Fatalf("InspectText: %v", err)
		}
		text := b.String()
		for _, want := range []string{"IP sets\n", "  KUBE-NODE-PORT-TCP bitmap:port, 1 entries", "    30080", "10.2.0.50,tcp:8080,10.2.0.50", "kube-proxy (IPVS mode)\n", "dummy link kube-ipvs0"} {
			if !strings.Contains(text, want) {
				t.Errorf("lbdoctor inspect --netns %s as text: no %q in:\n%s", node, want, text)
			}
		}
	})

	t.Run("healthy", func(t *testing.T) {
		call("pod", true, "cluster", true) // a hairpin in the table
		args := []string{"check", "--netns", node, "-o", "json"}
		traffic := testkit.StartTraffic(t, 20*time.Millisecond, func() lab.ProbeResult { return k.Call(k.Client, k.NodePort, exchangeTimeout) })
		r, code := runBinary(t, args...)
		if ok, failed, err := traffic.Stop(); ok == 0 || failed*100 > ok+failed {
			t.Errorf("client → %s during the window: %d answered, %d not (first: %v)", k.NodePort, ok, failed, err)
		}
		var fails []string
		for _, f := range r.Findings {
			if f.Status == checks.Fail {
				fails = append(fails, f.ID)
			}
		}
		if code != 0 || len(fails) > 0 {
			t.Errorf("lbdoctor %s = exit %d, failing %v, want exit 0 and no failure on a healthy kube-proxy node\n%s", strings.Join(args, " "), code, fails, findingsText(r))
		}
		for _, tc := range []struct{ id, status, evidence string }{
			{"nat.return_path", "pass", "kube-proxy marks TCP 10.1.0.5:30080 for masquerade"},
			{"nat.hairpin", "pass", "KUBE-LOOP-BACK"},
			{"sysctl.vs_conntrack", "pass", "KUBE-POSTROUTING"},
			{"ipvs.reals_available", "pass", ""},
			{"net.arp_strict", "pass", "none inside a subnet"},
		} {
			f := findingOf(*r, tc.id)
			if string(f.Status) != tc.status || !strings.Contains(evidenceText(f), tc.evidence) {
				t.Errorf("check on a healthy kube-proxy node: %s = %v, want %s with evidence %q\n%s", tc.id, f, tc.status, tc.evidence, findingsText(r))
			}
		}
	})

	t.Run("hairpin-without-loop-back", func(t *testing.T) {
		const rule = "KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"
		testkit.Run(t, k.Node, "iptables", "-t", "nat", "-D", "KUBE-POSTROUTING", "-m", "comment", "--comment",
			"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose", "-m", "set", "--match-set", "KUBE-LOOP-BACK", "dst,dst,src", "-j", "MASQUERADE")
		testkit.Run(t, k.Node, "conntrack", "-F")
		call("pod, no loop-back masquerade", true, "cluster", false)
		r, code := runBinary(t, "check", "--netns", node, "--watch", "0", "-o", "json")
		f := findingOf(*r, "nat.hairpin")
		if code != 1 || f.Status != checks.Fail || !strings.Contains(f.Title, "10.2.0.50:8080") ||
			!slices.ContainsFunc(f.Fix, func(x string) bool {
				return strings.Contains(x, "--match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE")
			}) {
			t.Errorf("check with the loop-back masquerade gone: exit %d, nat.hairpin = %v, want exit 1 and a fail naming 10.2.0.50:8080 with the rule as fix\n%s", code, f, findingsText(r))
		}
		// Put back as kube-proxy writes it: the pod reaches itself again.
		testkit.Run(t, k.Node, "sh", "-c", "iptables -t nat -I "+strings.Replace(rule, "KUBE-POSTROUTING ", "KUBE-POSTROUTING 1 ", 1))
		call("pod, loop-back masquerade back", true, "cluster", true)
		r, _ = runBinary(t, "check", "--netns", node, "--watch", "0", "-o", "json")
		if f := findingOf(*r, "nat.hairpin"); f.Status != checks.Pass {
			t.Errorf("check with the loop-back masquerade back: nat.hairpin = %v, want pass\n%s", f, findingsText(r))
		}
	})

	t.Run("kube-postrouting-flushed", func(t *testing.T) {
		saved := testkit.Run(t, k.Node, "iptables-save", "-t", "nat")
		testkit.Run(t, k.Node, "iptables", "-t", "nat", "-F", "KUBE-POSTROUTING")
		testkit.Run(t, k.Node, "conntrack", "-F")
		// Round robin: one of two calls goes to node2's pod, whose replies
		// now go straight to the client.
		failed := 0
		for i := 0; i < 4; i++ {
			if !k.Call(k.Client, k.NodePort, time.Second).OK {
				failed++
			}
		}
		if failed == 0 {
			t.Fatalf("client → %s with KUBE-POSTROUTING flushed: every call answered, want the remote endpoint's to fail", k.NodePort)
		}
		r, code := runBinary(t, "check", "--netns", node, "--watch", "0", "-o", "json")
		f := findingOf(*r, "nat.return_path")
		if code != 1 || f.Status != checks.Fail || !strings.Contains(f.Title, "10.1.0.5:30080") ||
			!strings.Contains(evidenceText(f), "KUBE-POSTROUTING masquerades no marked packet") {
			t.Errorf("check with KUBE-POSTROUTING flushed: exit %d, nat.return_path = %v, want exit 1 and a fail for 10.1.0.5:30080 saying KUBE-POSTROUTING masquerades nothing\n%s", code, f, findingsText(r))
		}
		testkit.RunStdin(t, k.Node, saved, "iptables-restore", "-T", "nat")
		r, _ = runBinary(t, "check", "--netns", node, "--watch", "0", "-o", "json")
		if f := findingOf(*r, "nat.return_path"); f.Status != checks.Pass {
			t.Errorf("check with KUBE-POSTROUTING restored: nat.return_path = %v, want pass\n%s", f, findingsText(r))
		}
	})
}

func evidenceText(f checks.Finding) string {
	var b strings.Builder
	for _, e := range f.Evidence {
		b.WriteString(e.String() + "\n")
	}
	return b.String()
}
