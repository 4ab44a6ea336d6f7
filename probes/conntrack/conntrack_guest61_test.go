//go:build guest

package conntrack_test

import "testing"

// The host's conntrack tests again on the guest's kernel (6.1).
func TestGuestConntrackOnTheOtherKernel(t *testing.T) {
	t.Run("FlowsOfANATLoadBalancer", TestFlowsOfANATLoadBalancer)
	t.Run("StatsAndEvents", TestStatsAndEvents)
}
