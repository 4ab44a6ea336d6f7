//go:build guest

package netstate_test

import "testing"

// The host's netstate tests again on the guest's kernel (6.1).
func TestGuestNetstateOnTheOtherKernel(t *testing.T) {
	t.Run("LookupReturnPath", TestLookupReturnPath)
	t.Run("Read", TestRead)
	t.Run("LocalAndRefusedLookups", TestLocalAndRefusedLookups)
}
