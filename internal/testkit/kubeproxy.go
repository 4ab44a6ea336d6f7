package testkit

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// KubeNode is a node built the way kube-proxy's IPVS mode builds one
// (pkg/proxy/ipvs), on a two-arm lab: the lab's LB is the node, its real
// the namespace of the node's pods (pod CIDR 10.2.0.0/24, the node its
// gateway), its client an outside client on the node's LAN, and Node2 a
// second node on that LAN whose pod 10.2.1.10 is an endpoint too.
//
// The node has the dummy kube-ipvs0 (DOWN) holding the ClusterIP; the
// sysctls kube-proxy sets on a ≥ 5.9 kernel (vs.conntrack,
// expire_nodest_conn, expire_quiescent_template, ip_forward; strict ARP);
// ipsets KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-TCP; nat
// KUBE-SERVICES / KUBE-NODE-PORT / KUBE-MARK-MASQ / KUBE-POSTROUTING and
// filter KUBE-FORWARD as kube-proxy writes them (iptables, which is
// iptables-nft in the guest); a ClusterIP service (one local endpoint), a
// NodePort service (the local and the remote endpoint) and kube-proxy's
// probe virtual server, left behind as a kube-proxy that died at start
// leaves it. Every endpoint answers.
type KubeNode struct {
	*lab.Lab
	Node, Pods, Node2 netns.Target
	ClusterIP         netip.AddrPort // 10.96.0.10:80, TCP
	NodePort          netip.AddrPort // the node's LAN address, port 30080
	LocalPod          netip.AddrPort // 10.2.0.50:8080, in Pods
	RemotePod         netip.AddrPort // 10.2.1.10:8080, in Node2
}

// KubeNodeRules are the rules kube-proxy's IPVS mode writes (v1.2x, one
// ClusterIP and one NodePort service, cluster CIDR 10.2.0.0/16), as
// iptables-restore --noflush input.
const KubeNodeRules = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES ! -s 10.2.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
`

// KubeProxyNode builds a KubeNode (guest only: it needs ipvsadm, ipset and
// iptables with xt_set); it goes when the test ends.
func KubeProxyNode(t testing.TB) *KubeNode {
	t.Helper()
	l := Lab(t, lab.TwoArm)
	k := &KubeNode{Lab: l, Node: l.LB, Pods: l.Real,
		ClusterIP: netip.MustParseAddrPort("10.96.0.10:80"),
		NodePort:  netip.AddrPortFrom(l.LBIP, 30080),
		LocalPod:  netip.AddrPortFrom(l.RealIP, 8080),
		RemotePod: netip.MustParseAddrPort("10.2.1.10:8080"),
	}
	// The second node: on the LAN, its pod on its own address.
	k.Node2 = Netns(t, "node2")
	node2IP := netip.MustParseAddr("10.1.0.7")
	Veth(t, VethEnd{NS: l.Switch, Name: "node2"}, VethEnd{NS: k.Node2, Name: "eth0", Addrs: []string{node2IP.String() + "/24"}})
	err := l.Switch.Do(func() error {
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		port, err := netlink.LinkByName("node2")
		if err != nil {
			return err
		}
		return netlink.LinkSetMaster(port, br)
	})
	if err != nil {
		t.Fatalf("plug node2 into the LAN: %v", err)
	}
	Run(t, k.Node2, "ip", "link", "set", "lo", "up")
	Run(t, k.Node2, "ip", "addr", "add", k.RemotePod.Addr().String()+"/32", "dev", "lo")
	Serve(t, k.Pods, ":8080")
	Serve(t, k.Node2, ":8080")

	n := k.Node
	// The lab's VIP is no kube-proxy address; the pods of node2 are
	// routed through it, as a CNI's routes do.
	Run(t, n, "ip", "addr", "del", l.VIP.String()+"/32", "dev", "eth0")
	Run(t, n, "ip", "route", "add", "10.2.1.0/24", "via", node2IP.String())
	Run(t, n, "ip", "link", "add", "kube-ipvs0", "type", "dummy")
	Run(t, n, "ip", "addr", "add", k.ClusterIP.Addr().String()+"/32", "dev", "kube-ipvs0")
	for _, kv := range []string{
		"net.ipv4.vs.conntrack=1", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.expire_quiescent_template=1",
		"net.ipv4.ip_forward=1", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
	} {
		Run(t, n, "sysctl", "-w", kv)
	}
	for _, args := range [][]string{
		{"create", "KUBE-CLUSTER-IP", "hash:ip,port"},
		{"add", "KUBE-CLUSTER-IP", k.ClusterIP.Addr().String() + ",tcp:80"},
		{"create", "KUBE-LOOP-BACK", "hash:ip,port,ip"},
		{"add", "KUBE-LOOP-BACK", k.LocalPod.Addr().String() + ",tcp:8080," + k.LocalPod.Addr().String()},
		{"create", "KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535"},
		{"add", "KUBE-NODE-PORT-TCP", "30080"},
	} {
		Run(t, n, "ipset", args...)
	}
	RunStdin(t, n, KubeNodeRules, "iptables-restore", "--noflush")
	Run(t, n, "ipvsadm", "-A", "-t", k.ClusterIP.String(), "-s", "rr")
	Run(t, n, "ipvsadm", "-a", "-t", k.ClusterIP.String(), "-r", k.LocalPod.String(), "-m")
	Run(t, n, "ipvsadm", "-A", "-t", k.NodePort.String(), "-s", "rr")
	Run(t, n, "ipvsadm", "-a", "-t", k.NodePort.String(), "-r", k.LocalPod.String(), "-m")
	Run(t, n, "ipvsadm", "-a", "-t", k.NodePort.String(), "-r", k.RemotePod.String(), "-m")
	Run(t, n, "ipvsadm", "-A", "-t", "198.51.100.0:20000", "-s", "rr")
	Run(t, l.Client, "ip", "route", "add", "10.96.0.0/12", "via", l.LBIP.String())
	return k
}

// Call is one exchange from ns with a service (connect, a line, its
// echo), as a client or a pod makes it.
func (k *KubeNode) Call(ns netns.Target, svc netip.AddrPort, timeout time.Duration) lab.ProbeResult {
	return lab.Probe(context.Background(), ns, svc, timeout)
}

// RunStdin runs a command inside ns with stdin, failing the test when it
// exits non-zero.
func RunStdin(t testing.TB, ns netns.Target, stdin, name string, args ...string) string {
	t.Helper()
	out, err := outputStdin(ns, strings.NewReader(stdin), name, args...)
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns, err, out)
	}
	return out
}
