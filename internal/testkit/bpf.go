package testkit

import (
	"github.com/cilium/ebpf"
)

// LoadedPrograms lists the IDs of loaded BPF programs named name
// (lbdoctor's tracer of process P is drops.ProgramName(P)).
func LoadedPrograms(name string) []ebpf.ProgramID {
	var ids []ebpf.ProgramID
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return ids
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil && info.Name == name {
			ids = append(ids, id)
		}
		p.Close()
	}
}
