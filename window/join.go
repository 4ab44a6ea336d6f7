package window

import "github.com/lbdoctor/lbdoctor/probes"

// Join groups the window's drops by kind and place and joins each group to
// what explains it: a NETFILTER_DROP to its hook and to the rule or chain
// policy whose counter moved by as much, a NEIGH_FAILED to the neighbour
// that never answered, an IP_RPFILTER to the interface and route.
// Pure: it reads only the snapshots and the window.
func Join(before, after *probes.Snapshot, w *probes.Window) []probes.DropPoint {
	return nil // the joins part implements it
}
