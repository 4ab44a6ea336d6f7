//go:build guest

package drops_test

import "testing"

// The host's drop tests again on the guest's kernel (6.1): other reason
// numbers, kfree_skb_reason instead of sk_skb_reason_drop, CO-RE against
// another layout of sk_buff.
func TestGuestDropsOnTheOtherKernel(t *testing.T) {
	for _, tt := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"IPInAddrErrors", TestIPInAddrErrors},
		{"NetfilterDropAndNoSocket", TestNetfilterDropAndNoSocket},
		{"IPv6", TestIPv6},
		{"WithoutReasons", TestWithoutReasons},
		{"IPRPFilter", TestIPRPFilter},
		{"FiltersExclude", TestFiltersExclude},
		{"AggregateMode", TestAggregateMode},
		{"AggregateCountsExactly", TestAggregateCountsExactly},
		{"AggregateFlowMapFull", TestAggregateFlowMapFull},
		{"LoneDropWakesReader", TestLoneDropWakesReader},
		{"EveryAttachPoint", TestEveryAttachPoint},
		{"Stack", TestStack},
		{"NetfilterDropHooks", TestNetfilterDropHooks},
		{"KilledTracerLeavesNothing", TestKilledTracerLeavesNothing},
		{"TerminatedTracerDetachesAndSummarizes", TestTerminatedTracerDetachesAndSummarizes},
		{"WatchFromAndSetFilter", TestWatchFromAndSetFilter},
		{"WatchFromPrunesIdleFlows", TestWatchFromPrunesIdleFlows},
	} {
		t.Run(tt.name, tt.fn)
	}
}
