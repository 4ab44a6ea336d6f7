package netns

import "github.com/mdlayher/netlink"

// Dial opens a netlink socket inside t through dial, given a
// mdlayher/netlink Config whose NetNS is t (none for the calling thread's
// namespace); the namespace's handle is closed once dial returns.
func Dial[C any](t Target, dial func(*netlink.Config) (C, error)) (C, error) {
	cfg := &netlink.Config{}
	if !t.IsCurrent() {
		h, err := t.Handle()
		if err != nil {
			var zero C
			return zero, err
		}
		defer h.Close()
		cfg.NetNS = int(h)
	}
	return dial(cfg)
}
