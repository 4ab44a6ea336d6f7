//go:build guest

package sysctl_test

import "testing"

// The host's sysctl tests again on the guest's kernel (6.1), where
// net.ipv4.vs.* exists.
func TestGuestSysctlOnTheOtherKernel(t *testing.T) {
	t.Run("ReadIsPerNamespace", TestReadIsPerNamespace)
	t.Run("ReadSaysWhyAKeyIsAbsent", TestReadSaysWhyAKeyIsAbsent)
	t.Run("ReadAllCoversEveryInterface", TestReadAllCoversEveryInterface)
}
