//go:build guest

package kernel_test

import (
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// On the guest's 6.1 kernel the same probes hold, with its own numbers:
// IPVS is there, kprobes work, and drop reasons come from its BTF.
func TestGuestKernelFeatures(t *testing.T) {
	TestFeatureProbesAnswerThreeWay(t)
	TestDropReasonsFromBTF(t)
	f := kernel.ReadFeatures()
	for _, want := range []string{"ipvs", "kprobe", "tracepoint", "kfree_skb_reason"} {
		if !f.Available(want) {
			t.Errorf("ReadFeatures() on %s: %s unavailable, want available", f.Release, want)
		}
	}
	if f.DropFunction != "kfree_skb_reason" {
		t.Errorf("DropFunction() on %s = %q, want kfree_skb_reason", f.Release, f.DropFunction)
	}
}
