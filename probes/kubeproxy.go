package probes

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/probes/ipset"
)

// KubeProxyDummy is the dummy link kube-proxy's IPVS mode holds every
// service address on (ClusterIPs, external and load-balancer IPs).
const KubeProxyDummy = "kube-ipvs0"

// KubeProxyProbeService is the virtual server kube-proxy adds and deletes
// at start to learn whether IPVS works (pkg/proxy/ipvs: 198.51.100.0:20000
// TCP, an address of TEST-NET-2): not a user's service. A kube-proxy that
// died between the two leaves it, without reals.
var KubeProxyProbeService = netip.MustParseAddrPort("198.51.100.0:20000")

// KubeProxy is what marks the namespace as a node of kube-proxy in IPVS
// mode, each fact read from the probes' own layers; nil in a Snapshot when
// none was seen.
type KubeProxy struct {
	// Dummy is kube-ipvs0 when the namespace has it ("" otherwise).
	Dummy string `json:"dummy,omitempty"`
	// Chains are the KUBE-* chains that hold rules, sorted.
	Chains []string `json:"chains,omitempty"`
	// Sets are the KUBE-* ipsets, sorted.
	Sets []string `json:"sets,omitempty"`
	// ProbeService is true when kube-proxy's probe virtual server is in
	// the IPVS table (it is left out of every check).
	ProbeService bool `json:"probe_service,omitempty"`
}

// Facts are the kube-proxy facts as lines for evidence and inspect.
func (k *KubeProxy) Facts() []string {
	var out []string
	if k.Dummy != "" {
		out = append(out, "dummy link "+k.Dummy+" holds the service addresses")
	}
	if len(k.Chains) > 0 {
		out = append(out, "rule chains "+strings.Join(k.Chains, ", "))
	}
	if len(k.Sets) > 0 {
		out = append(out, "ipsets "+strings.Join(k.Sets, ", "))
	}
	if k.ProbeService {
		out = append(out, fmt.Sprintf("kube-proxy's probe virtual server TCP %s (not a user's service: left out of the checks)", KubeProxyProbeService))
	}
	return out
}

// IsProbeService reports whether a service is kube-proxy's probe virtual
// server on a kube-proxy node.
func (k *KubeProxy) IsProbeService(addr netip.AddrPort, proto string) bool {
	return k != nil && proto == "tcp" && addr == KubeProxyProbeService
}

// recogniseKubeProxy reads kube-proxy's marks from what the other probes
// read: its dummy link, or its KUBE-SERVICES chain with one of its sets
// (a node whose dummy link was deleted is still one).
func recogniseKubeProxy(s *Snapshot) *KubeProxy {
	k := &KubeProxy{}
	for _, l := range s.Net.Links {
		if l.Name == KubeProxyDummy {
			k.Dummy = l.Name
		}
	}
	for _, r := range s.Rules.Rules {
		if strings.HasPrefix(r.Chain, "KUBE-") && !slices.Contains(k.Chains, r.Chain) {
			k.Chains = append(k.Chains, r.Chain)
		}
	}
	slices.Sort(k.Chains)
	for _, x := range s.IPSets.Sets {
		if strings.HasPrefix(x.Name, "KUBE-") {
			k.Sets = append(k.Sets, x.Name)
		}
	}
	slices.Sort(k.Sets)
	if k.Dummy == "" && !(slices.Contains(k.Chains, "KUBE-SERVICES") && len(k.Sets) > 0) {
		return nil
	}
	for _, svc := range s.IPVS.Services {
		if k.IsProbeService(svc.Addr, svc.Proto) {
			k.ProbeService = true
		}
	}
	return k
}

// IPSets is the ipset part of a snapshot.
type IPSets struct {
	ipset.Snapshot
	// Unavailable says why no set could exist (a kernel without ipset):
	// not an error, since no rule can match a set there either.
	Unavailable string `json:"unavailable,omitempty"`
}
