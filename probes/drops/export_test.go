package drops

import (
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// AsKernelWithoutReasons makes New behave as on a kernel older than 5.17,
// whose kfree_skb passes no drop reason, until the returned func is called.
func AsKernelWithoutReasons() (restore func()) {
	kernelReasonField = func() error {
		return &kernel.NotSupportedError{Feature: "drop reasons", Reason: "are not passed to kfree_skb (test: as before 5.17)"}
	}
	return func() { kernelReasonField = kernel.KfreeSkbReasonField }
}

// AsKernelWithoutRdonlyCast makes Prepare load the program as on a kernel
// older than 6.2, which has no bpf_rdonly_cast kfunc (headers are read
// through bpf_probe_read_kernel), until the returned func is called.
func AsKernelWithoutRdonlyCast() (restore func()) {
	old := kernelHasKfunc
	kernelHasKfunc = func(*btf.Spec, string) bool { return false }
	return func() { kernelHasKfunc = old }
}

// KfuncReferences counts the instructions of p's programs that refer to
// a kfunc (cilium/ebpf looks each up in the kernel's BTF at load).
func KfuncReferences(p *Prepared) int {
	n := 0
	for _, prog := range p.spec.Programs {
		for _, ins := range prog.Instructions {
			if slices.Contains(vmlinuxKfuncs, ins.Reference()) {
				n++
			}
		}
	}
	return n
}

// SetPollInterval changes how often Read polls the ring unwoken, until the
// returned func is called.
func SetPollInterval(d time.Duration) (restore func()) {
	old := pollInterval
	pollInterval = d
	return func() { pollInterval = old }
}

// SetBounds bounds a's cache generations to keys keys, and its batched
// reads to one per interval.
func SetBounds(a *Attributor, keys int, interval time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.maxKeys, a.Interval = keys, interval
}

// NewAttributorBounded is NewAttributor told never to read the IPVS
// connection table (noVS) or never to dump conntrack (noCT), saying why.
func NewAttributorBounded(lb netns.Target, addrs []netip.Addr, noVS, noCT string) *Attributor {
	return newAttributor(lb, addrs, 0, Bounds{NoIPVSTable: noVS, NoConntrackDump: noCT})
}

// ModulesOf is modulesOf.
var ModulesOf = modulesOf
