package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Stats are conntrack's counters summed over CPUs, and the table's fill.
type Stats struct {
	Entries       uint32 `json:"entries"`
	MaxEntries    uint32 `json:"max_entries"`
	Found         uint64 `json:"found"`
	Invalid       uint64 `json:"invalid"`
	Insert        uint64 `json:"insert"`
	InsertFailed  uint64 `json:"insert_failed"`
	Drop          uint64 `json:"drop"`
	EarlyDrop     uint64 `json:"early_drop"`
	Error         uint64 `json:"error"`
	SearchRestart uint64 `json:"search_restart"`
	PerCPU        []CPU  `json:"per_cpu"`
}

// CPU is one CPU's share of the counters.
type CPU struct {
	CPU          uint16 `json:"cpu"`
	Invalid      uint32 `json:"invalid"`
	InsertFailed uint32 `json:"insert_failed"`
	Drop         uint32 `json:"drop"`
	EarlyDrop    uint32 `json:"early_drop"`
}

func open(ns netns.Target) (*ct.Conn, error) {
	c, err := netns.Dial(ns, ct.Dial)
	if err != nil {
		return nil, fmt.Errorf("open conntrack netlink in %s: %w", ns, err)
	}
	return c, nil
}

// ReadStats returns the statistics of ns (conntrack -S).
func ReadStats(ns netns.Target) (Stats, error) {
	var s Stats
	c, err := open(ns)
	if err != nil {
		return s, err
	}
	defer c.Close()
	cpus, err := c.Stats()
	if err != nil {
		return s, fmt.Errorf("read conntrack stats in %s: %w", ns, err)
	}
	for _, p := range cpus {
		s.Found += uint64(p.Found)
		s.Invalid += uint64(p.Invalid)
		s.Insert += uint64(p.Insert)
		s.InsertFailed += uint64(p.InsertFailed)
		s.Drop += uint64(p.Drop)
		s.EarlyDrop += uint64(p.EarlyDrop)
		s.Error += uint64(p.Error)
		s.SearchRestart += uint64(p.SearchRestart)
		s.PerCPU = append(s.PerCPU, CPU{CPU: p.CPUID, Invalid: p.Invalid, InsertFailed: p.InsertFailed, Drop: p.Drop, EarlyDrop: p.EarlyDrop})
	}
	g, err := c.StatsGlobal()
	if err != nil {
		return s, fmt.Errorf("read conntrack table size in %s: %w", ns, err)
	}
	s.Entries, s.MaxEntries = g.Entries, g.MaxEntries
	return s, nil
}

// Event is one change of a flow.
type Event struct {
	Type string `json:"type"` // new, update, destroy
	Flow Flow   `json:"flow"`
}

// Watch streams conntrack events of ns whose flow touches one of addrs
// (all flows when addrs is empty) until ctx ends. The returned error says
// why it stopped; ENOBUFS (events lost because the socket buffer filled) is
// reported, never swallowed.
func Watch(ctx context.Context, ns netns.Target, addrs []netip.Addr, out chan<- Event) error {
	c, err := open(ns)
	if err != nil {
		return err
	}
	defer c.Close()
	evs := make(chan ct.Event, 1024)
	errc, err := c.Listen(evs, 1, []netfilter.NetlinkGroup{netfilter.GroupCTNew, netfilter.GroupCTUpdate, netfilter.GroupCTDestroy})
	if err != nil {
		return fmt.Errorf("listen to conntrack events in %s: %w", ns, err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if err == nil {
				err = errors.New("listener stopped")
			}
			return fmt.Errorf("conntrack events in %s: %w", ns, err)
		case ev := <-evs:
			if ev.Flow == nil {
				continue
			}
			f := convert(ev.Flow)
			if !touches(f, addrs) {
				continue
			}
			select {
			case out <- Event{Type: eventName(ev), Flow: f}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func touches(f Flow, addrs []netip.Addr) bool {
	if len(addrs) == 0 {
		return true
	}
	for _, a := range addrs {
		if f.Orig.Src.Addr() == a || f.Orig.Dst.Addr() == a || f.Reply.Src.Addr() == a || f.Reply.Dst.Addr() == a {
			return true
		}
	}
	return false
}

func eventName(ev ct.Event) string {
	switch ev.Type {
	case ct.EventNew:
		return "new"
	case ct.EventUpdate:
		return "update"
	case ct.EventDestroy:
		return "destroy"
	}
	return "unknown"
}
