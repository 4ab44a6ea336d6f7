package kernel

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPVS reports whether IPVS can be used: its generic netlink family exists.
// When it does not, the error says whether the kernel lacks CONFIG_IP_VS or
// only the ip_vs module is not loaded. It never loads the module itself.
func IPVS() error {
	_, err := netlink.GenlFamilyGet("IPVS")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("look up IPVS generic netlink family: %w", err)
	}
	return &NotSupportedError{Feature: "IPVS", Reason: ipvsAbsentReason()}
}

func ipvsAbsentReason() string {
	rel := Release()
	v, found := ConfigOption("CONFIG_IP_VS")
	switch {
	case found && v == "":
		return fmt.Sprintf("is not in this kernel: %s was built without IPVS (CONFIG_IP_VS is not set)", rel)
	case v == "m":
		if _, err := os.Stat("/sys/module/ip_vs"); err != nil {
			return fmt.Sprintf("module ip_vs is not loaded (kernel %s has CONFIG_IP_VS=m; load it with: modprobe ip_vs)", rel)
		}
		return "module ip_vs is loaded but its netlink family is missing"
	default:
		return fmt.Sprintf("is not available: no IPVS netlink family in kernel %s (needs CONFIG_IP_VS and module ip_vs)", rel)
	}
}
