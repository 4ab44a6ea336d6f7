package kernel_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// Every probe answers nil or ErrNotSupported on a kernel we run on, never a
// third kind of error when privileged.
func TestFeatureProbesAnswerThreeWay(t *testing.T) {
	testkit.RequireRoot(t)
	for name, probe := range map[string]func() error{
		"BTF": kernel.BTF, "TPBTF": kernel.TPBTF, "RawTracepoint": kernel.RawTracepoint,
		"Tracepoint": kernel.Tracepoint, "Kprobe": kernel.Kprobe, "Fentry": kernel.Fentry,
		"KfreeSkbReasonField": kernel.KfreeSkbReasonField,
	} {
		if err := probe(); err != nil && !errors.Is(err, kernel.ErrNotSupported) {
			t.Errorf("%s() = %v, want nil or ErrNotSupported", name, err)
		}
	}
	f := kernel.ReadFeatures()
	b, _ := json.MarshalIndent(f, "", "  ")
	t.Logf("%s", b)
	// Both kernels lbdoctor is tested on have BTF, raw_tp and tp_btf on kfree_skb.
	for _, want := range []string{"btf", "raw_tp", "tp_btf"} {
		if !f.Available(want) {
			t.Errorf("ReadFeatures() %s unavailable on %s, want available", want, f.Release)
		}
	}
	if !strings.HasPrefix(f.DropFunction, "sk_skb_reason_drop") && f.DropFunction != "kfree_skb_reason" {
		t.Errorf("DropFunction() = %q, want sk_skb_reason_drop or kfree_skb_reason", f.DropFunction)
	}
	if len(f.Capabilities.Effective) == 0 {
		t.Error("ReadCapabilities() as root = none effective")
	}
}

// The reason names come from this kernel's BTF; IP_INADDRERRORS and
// NO_SOCKET exist on both kernels, with different numbers.
func TestDropReasonsFromBTF(t *testing.T) {
	reasons, err := kernel.DropReasons()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]uint32{}
	for v, n := range reasons {
		names[n] = v
	}
	for _, want := range []string{"NOT_SPECIFIED", "NO_SOCKET", "IP_INADDRERRORS", "NETFILTER_DROP", "IP_RPFILTER"} {
		if _, ok := names[want]; !ok {
			t.Errorf("DropReasons() lacks %s (%d names on %s)", want, len(reasons), kernel.Release())
		}
	}
	t.Logf("%s: IP_INADDRERRORS = %d, %d reasons", kernel.Release(), names["IP_INADDRERRORS"], len(reasons))
}
