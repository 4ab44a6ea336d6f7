package testkit

import (
	"strings"

	"github.com/cilium/ebpf"
)

// LoadedPrograms lists the IDs of loaded BPF programs whose name starts
// with prefix (lbdoctor's tracer programs are drop_*).
func LoadedPrograms(prefix string) []ebpf.ProgramID {
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
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, prefix) {
			ids = append(ids, id)
		}
		p.Close()
	}
}
