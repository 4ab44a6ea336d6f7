package drops

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

func zzVariant(t *testing.T, obj string, unlink, kernelTypes bool) (time.Duration, string) {
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	var specs dropsSpecs
	if err := spec.Assign(&specs); err != nil {
		t.Fatal(err)
	}
	if unlink {
		unlinkAbsentKfuncs(spec)
	}
	reasons, _ := kernel.DropReasons()
	if err := setFilters(&specs.dropsVariableSpecs, Config{NetnsInode: 1, Ports: []uint16{80, 8080}}, reasons); err != nil {
		t.Fatal(err)
	}
	tr := &Tracer{Reasons: reasons}
	tr.setHook(&specs.dropsVariableSpecs)
	for name := range spec.Programs {
		if name != dropsProgDropTpBtf {
			delete(spec.Programs, name)
		}
	}
	specs.Events.MaxEntries = 4096
	specs.Stacks.MaxEntries = 1
	specs.Agg.MaxEntries = DefaultFlowMapSize
	opts := ebpf.CollectionOptions{Cache: kernel.BTFCache(), Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}}
	if kernelTypes {
		k, _ := kernel.BTFCache().Kernel()
		opts.Programs.KernelTypes = k
	}
	start := time.Now()
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	lines := strings.Split(strings.TrimSpace(coll.Programs[dropsProgDropTpBtf].VerifierLog), "\n")
	coll.Close()
	return took, strings.Join(lines[max(0, len(lines)-3):], " | ")
}

func TestZZVerifierStats(t *testing.T) {
	dir := os.Getenv("LBDOCTOR_ZZDIR")
	if dir == "" {
		dir = "/tmp/scale3"
	}
	kernel.DropReasons() // BTF cached
	for round := 0; round < 3; round++ {
		for _, v := range []struct {
			name                string
			obj                 string
			unlink, kernelTypes bool
		}{
			{"old", dir + "/old_bpfel.o", false, false},
			{"new", dir + "/new_bpfel.o", true, true},
			{"new-obj-only", dir + "/new_bpfel.o", false, false},
		} {
			took, log := zzVariant(t, v.obj, v.unlink, v.kernelTypes)
			t.Logf("round %d %s: %s (%s)", round, v.name, took.Round(time.Millisecond), log)
		}
	}
}
