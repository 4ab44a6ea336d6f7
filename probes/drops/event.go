package drops

import (
	"context"
	"strings"

	"golang.org/x/sys/unix"
)

// NameEvent names one event-mode drop as Name does an aggregate, and adds
// what only an event carries: the kind of TCP segment on its flow
// ("SYN-ACK (reply)", on a copy: the attributor caches flows) and, with
// Config.Stack, the kernel stack named, innermost first, without the
// tracer's own frames. Attribution waits for the tables only while ctx is
// live: a drop read after the window is named from what is known.
func (n *Namer) NameEvent(ctx context.Context, p Packet, raw RawEvent) (Counted, []string) {
	c := n.Name(ctx, Aggregate{Packet: p}, int64(raw.TimeNs))
	if p.Proto == unix.IPPROTO_TCP && c.Flow != nil {
		f := *c.Flow
		f.Direction = Kind(raw.TCPFlags) + " (" + f.Direction + ")"
		c.Flow = &f
	}
	var stack []string
	for _, pc := range raw.Stack {
		fr := n.Symbol(pc)
		// The tracer's own frames say nothing about the drop.
		if len(stack) == 0 && (strings.Contains(fr, "[bpf]") || strings.HasPrefix(fr, "bpf_trace_run") || strings.HasPrefix(fr, "__bpf_trace")) {
			continue
		}
		stack = append(stack, fr)
	}
	return c, stack
}
