package kernel

import "errors"

// Feature is the answer of one feature probe, as data.
type Feature struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"` // why not
}

// Features is everything lbdoctor needs to know about the running kernel.
type Features struct {
	Release      string            `json:"release"`
	Probes       []Feature         `json:"probes"`
	DropFunction string            `json:"drop_function,omitempty"`
	DropReasons  int               `json:"drop_reasons"` // entries in enum skb_drop_reason
	Capabilities Capabilities      `json:"capabilities"`
	Tools        map[string]string `json:"tools"`
}

// Available reports a feature by name.
func (f Features) Available(name string) bool {
	for _, p := range f.Probes {
		if p.Name == name {
			return p.Available
		}
	}
	return false
}

// ReadFeatures runs every feature probe. Loading BPF programs needs
// CAP_BPF; without it those probes say so in their reason.
func ReadFeatures() Features {
	f := Features{Release: Release(), DropFunction: DropFunction(), Tools: Tools()}
	f.Capabilities, _ = ReadCapabilities()
	for _, p := range []struct {
		name  string
		probe func() error
	}{
		{"ipvs", IPVS}, {"btf", BTF}, {"tracefs", func() error { _, err := TracefsDir(); return err }},
		{"kfree_skb_reason", KfreeSkbReasonField}, {"tp_btf", TPBTF}, {"raw_tp", RawTracepoint},
		{"tracepoint", Tracepoint}, {"kprobe", Kprobe}, {"fentry", Fentry},
	} {
		err := p.probe()
		ft := Feature{Name: p.name, Available: err == nil}
		if err != nil {
			ft.Reason = err.Error()
			var ns *NotSupportedError
			if errors.As(err, &ns) {
				ft.Reason = ns.Reason
			}
		}
		f.Probes = append(f.Probes, ft)
	}
	if r, err := DropReasons(); err == nil {
		f.DropReasons = len(r)
	}
	return f
}
