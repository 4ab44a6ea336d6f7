//go:build guest

package capture

import "testing"

// The engine's host tests again on the guest's kernel (Debian's 6.1, where
// real IPVS runs): the ring's frame layout frameType reads, the filter in
// that kernel, the directions, the drop counts.

func TestGuestCaptureVIPFlow(t *testing.T)    { TestCaptureVIPFlow(t) }
func TestGuestCaptureLoopback(t *testing.T)   { TestCaptureLoopback(t) }
func TestGuestCaptureIPv6(t *testing.T)       { TestCaptureIPv6(t) }
func TestGuestCaptureAttachRace(t *testing.T) { TestCaptureAttachRace(t) }
func TestGuestCaptureDrops(t *testing.T)      { TestCaptureDrops(t) }
