package testkit

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// WithoutCaps runs fn on an OS thread of its own whose effective set lacks
// caps (unix.CAP_*), and waits for it. Capabilities are per thread: the
// thread is locked and never unlocked, so it dies with what it dropped
// instead of serving other goroutines.
func WithoutCaps(t testing.TB, fn func(), caps ...uint) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		for _, c := range caps {
			data[c/32].Effective &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("drop capabilities %v: %v", caps, err)
	}
}
