package kernel_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

// IPVS answers in the three-way style, and an absence names its cause from
// the kernel's own build configuration.
func TestIPVSNamesWhyItIsMissing(t *testing.T) {
	err := kernel.IPVS()
	cfg, found := kernel.ConfigOption("CONFIG_IP_VS")
	switch {
	case err == nil:
		if found && cfg == "" {
			t.Errorf("IPVS() = nil on a kernel whose config says CONFIG_IP_VS is not set")
		}
	case errors.Is(err, kernel.ErrNotSupported):
		if found && cfg == "" && !strings.Contains(err.Error(), "CONFIG_IP_VS is not set") {
			t.Errorf("IPVS() = %q, want it to say CONFIG_IP_VS is not set", err)
		}
		if cfg == "m" && !strings.Contains(err.Error(), "modprobe ip_vs") {
			t.Errorf("IPVS() = %q, want it to say modprobe ip_vs", err)
		}
	default:
		t.Fatalf("IPVS() = %v, want nil or ErrNotSupported", err)
	}
}

func TestConfigOption(t *testing.T) {
	v, found := kernel.ConfigOption("CONFIG_NET")
	if !found {
		t.Skip("no /proc/config.gz or /boot/config-* on this machine")
	}
	if v != "y" {
		t.Errorf(`ConfigOption("CONFIG_NET") = %q, want "y"`, v)
	}
}
