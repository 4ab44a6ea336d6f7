//go:build guest

package rules_test

import "testing"

// The host's rule-reading tests again on the guest's kernel (6.1).
func TestGuestRulesOnTheOtherKernel(t *testing.T) {
	t.Run("ReadAllThreeBackends", TestReadAllThreeBackends)
	t.Run("ReadNativeNft", TestReadNativeNft)
}
