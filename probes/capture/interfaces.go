package capture

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/netstate"
)

// FlowInterfaces are the interfaces the flows of vips cross in lb: those
// that hold a VIP (where clients arrive) and those the routes to the reals
// leave by. A VIP on loopback or a dummy (kube-ipvs0), or one that is not
// local, tells nothing of where clients arrive: then every interface that
// is up (nil, Options' default).
func FlowInterfaces(lb netns.Target, vips []netip.Addr, reals []netip.AddrPort) ([]string, error) {
	st, err := netstate.Read(lb)
	if err != nil {
		return nil, fmt.Errorf("read the interfaces of %s: %w", lb, err)
	}
	var out []string
	for _, vip := range vips {
		held := false
		for _, l := range st.Links {
			if !slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr() == vip }) {
				continue
			}
			if l.Name == "lo" || l.Type == "dummy" || !l.Up {
				return nil, nil
			}
			held = true
			if !slices.Contains(out, l.Name) {
				out = append(out, l.Name)
			}
		}
		if !held {
			return nil, nil
		}
	}
	var qs []netstate.Query
	for _, r := range reals {
		qs = append(qs, netstate.Query{Dst: r.Addr()})
	}
	ds, err := netstate.LookupAll(lb, qs)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		if d.Dev != "" && !d.Local && !slices.Contains(out, d.Dev) {
			out = append(out, d.Dev)
		}
	}
	return out, nil
}
