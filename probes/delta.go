package probes

import (
	"net/netip"
	"time"

	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/snmp"
)

// Deltas are what changed between two snapshots of one namespace: the
// counters of `inspect --watch`.
type Deltas struct {
	Window time.Duration `json:"window_ns"`
	SNMP   snmp.Counters `json:"snmp"`  // counters that moved
	Rules  []RuleDelta   `json:"rules"` // rules whose counters moved
	// Chains are the base chains whose policy counter moved (a native nft
	// chain has none: rules.Chain.HasCounter).
	Chains    []ChainDelta   `json:"chains,omitempty"`
	IPVS      []ServiceDelta `json:"ipvs"`
	Conntrack CounterDelta   `json:"conntrack"`
}

// RuleDelta is a rule and what it counted in the window.
type RuleDelta struct {
	Rule    rules.Rule `json:"rule"`
	Packets uint64     `json:"packets"`
	Bytes   uint64     `json:"bytes"`
}

// ChainDelta is a base chain and what its policy counted in the window.
type ChainDelta struct {
	Chain   rules.Chain `json:"chain"`
	Packets uint64      `json:"packets"`
	Bytes   uint64      `json:"bytes"`
}

// ServiceDelta is what one IPVS service and its reals counted.
type ServiceDelta struct {
	Service    string      `json:"service"`
	Conns      uint32      `json:"conns"`
	PacketsIn  uint32      `json:"packets_in"`
	PacketsOut uint32      `json:"packets_out"`
	Reals      []RealDelta `json:"reals"`
}

// RealDelta is what one real server counted.
type RealDelta struct {
	Real       string `json:"real"`
	Conns      uint32 `json:"conns"`
	PacketsIn  uint32 `json:"packets_in"`
	PacketsOut uint32 `json:"packets_out"`
}

// CounterDelta is how conntrack's statistics moved.
type CounterDelta struct {
	Entries      int64  `json:"entries"`
	Insert       uint64 `json:"insert"`
	InsertFailed uint64 `json:"insert_failed"`
	Drop         uint64 `json:"drop"`
	EarlyDrop    uint64 `json:"early_drop"`
	Invalid      uint64 `json:"invalid"`
}

// Delta computes after − before. Counters that went backwards (a rule
// replaced, a service re-created) count from zero.
func Delta(before, after *Snapshot) Deltas {
	d := Deltas{Window: after.Time.Sub(before.Time), SNMP: snmp.Counters{}, Rules: []RuleDelta{}, IPVS: []ServiceDelta{}}
	for k, v := range snmp.Delta(before.SNMP, after.SNMP) {
		if v != 0 {
			d.SNMP[k] = v
		}
	}
	old := map[string]rules.Rule{}
	for _, r := range before.Rules.Rules {
		old[r.Key()] = r
	}
	for _, r := range after.Rules.Rules {
		o := old[r.Key()]
		p, b := sub(r.Packets, o.Packets), sub(r.Bytes, o.Bytes)
		if p != 0 || b != 0 {
			d.Rules = append(d.Rules, RuleDelta{Rule: r, Packets: p, Bytes: b})
		}
	}
	oldc := map[string]rules.Chain{}
	for _, c := range before.Rules.Chains {
		oldc[c.Key()] = c
	}
	for _, c := range after.Rules.Chains {
		o := oldc[c.Key()]
		p, b := sub(c.Packets, o.Packets), sub(c.Bytes, o.Bytes)
		if p != 0 || b != 0 {
			d.Chains = append(d.Chains, ChainDelta{Chain: c, Packets: p, Bytes: b})
		}
	}
	// Keyed by value, not by formatted names: 1,000 services × 10 reals
	// are matched without formatting 20,000 strings.
	type stat struct{ conns, in, out uint32 }
	type key struct {
		proto      string
		addr, real netip.AddrPort // real: zero for the service itself
		fwmark     uint32
	}
	prev := map[key]stat{}
	for _, s := range before.IPVS.Services {
		k := key{proto: s.Proto, addr: s.Addr, fwmark: s.FWMark}
		prev[k] = stat{s.Stats.Conns, s.Stats.PacketsIn, s.Stats.PacketsOut}
		for _, r := range s.Reals {
			k.real = r.Addr
			prev[k] = stat{r.Stats.Conns, r.Stats.PacketsIn, r.Stats.PacketsOut}
		}
	}
	for _, s := range after.IPVS.Services {
		k := key{proto: s.Proto, addr: s.Addr, fwmark: s.FWMark}
		p := prev[k]
		sd := ServiceDelta{Service: s.Key(), Conns: sub32(s.Stats.Conns, p.conns), PacketsIn: sub32(s.Stats.PacketsIn, p.in), PacketsOut: sub32(s.Stats.PacketsOut, p.out), Reals: make([]RealDelta, 0, len(s.Reals))}
		for _, r := range s.Reals {
			k.real = r.Addr
			rp := prev[k]
			sd.Reals = append(sd.Reals, RealDelta{Real: r.Addr.String(), Conns: sub32(r.Stats.Conns, rp.conns), PacketsIn: sub32(r.Stats.PacketsIn, rp.in), PacketsOut: sub32(r.Stats.PacketsOut, rp.out)})
		}
		d.IPVS = append(d.IPVS, sd)
	}
	a, b := before.Conntrack.Stats, after.Conntrack.Stats
	d.Conntrack = CounterDelta{
		Entries: int64(b.Entries) - int64(a.Entries), Insert: sub(b.Insert, a.Insert), InsertFailed: sub(b.InsertFailed, a.InsertFailed),
		Drop: sub(b.Drop, a.Drop), EarlyDrop: sub(b.EarlyDrop, a.EarlyDrop), Invalid: sub(b.Invalid, a.Invalid),
	}
	return d
}

func sub(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return a - b
}

func sub32(a, b uint32) uint32 {
	if a < b {
		return a
	}
	return a - b
}
