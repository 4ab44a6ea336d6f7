package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BTF reports whether the kernel describes its types (/sys/kernel/btf/vmlinux).
func BTF() error {
	_, err := kernelSpec()
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, os.ErrNotExist) {
			return &NotSupportedError{Feature: "BTF", Reason: "is missing: no /sys/kernel/btf/vmlinux (needs CONFIG_DEBUG_INFO_BTF)"}
		}
		return fmt.Errorf("load kernel BTF: %w", err)
	}
	return nil
}

// btfCache holds the kernel's BTF once read, for every load that needs it
// (the drop tracer's CO-RE and attach target, the feature probes): each
// load reads and indexes /sys/kernel/btf/vmlinux again without it, which
// takes seconds on a slow machine (the TCG guest).
var btfCache = btf.NewCache()

func kernelSpec() (*btf.Spec, error) { return btfCache.Kernel() }

// BTFCache is the kernel's BTF as every load of lbdoctor shares it
// (ebpf.CollectionOptions.Cache).
func BTFCache() *btf.Cache { return btfCache }

// DropReasons maps the kernel's enum skb_drop_reason values to names without
// the SKB_DROP_REASON_ prefix ("IP_INADDRERRORS"). The numbers differ between
// kernels, so they are always read from this kernel's BTF.
func DropReasons() (map[uint32]string, error) {
	spec, err := kernelSpec()
	if err != nil {
		return nil, BTF()
	}
	var enum *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &enum); err != nil {
		if errors.Is(err, btf.ErrNotFound) {
			return nil, &NotSupportedError{Feature: "drop reasons", Reason: "are not in this kernel (enum skb_drop_reason appeared in 5.17)"}
		}
		return nil, fmt.Errorf("find enum skb_drop_reason: %w", err)
	}
	out := make(map[uint32]string, len(enum.Values))
	for _, v := range enum.Values {
		out[uint32(v.Value)] = strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
	}
	return out, nil
}

// TracefsDir returns where tracefs is mounted.
func TracefsDir() (string, error) {
	for _, d := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(d + "/events"); err == nil {
			return d, nil
		}
	}
	return "", &NotSupportedError{Feature: "tracefs", Reason: "is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"}
}

// KfreeSkbReasonField reports whether skb:kfree_skb passes a drop reason
// (Linux 5.17+); without it only the location of a drop is known. It asks
// the kernel's BTF (enum skb_drop_reason came with the argument), else the
// tracepoint's format file, else /proc/kallsyms for the drop function.
func KfreeSkbReasonField() error {
	missing := &NotSupportedError{Feature: "drop reasons", Reason: "are not passed to kfree_skb by kernel " + Release() + " (they came in 5.17): locations only"}
	if spec, err := kernelSpec(); err == nil {
		var enum *btf.Enum
		err := spec.TypeByName("skb_drop_reason", &enum)
		if errors.Is(err, btf.ErrNotFound) {
			return missing
		}
		if err == nil {
			return nil
		}
	}
	if dir, err := TracefsDir(); err == nil {
		if data, err := os.ReadFile(dir + "/events/skb/kfree_skb/format"); err == nil {
			if !strings.Contains(string(data), " reason;") {
				return missing
			}
			return nil
		}
	}
	if DropFunction() == "" {
		return missing
	}
	return nil
}

// DropFunction is the kernel function that frees a dropped skb: it moved
// from kfree_skb_reason to sk_skb_reason_drop in 6.11.
func DropFunction() string {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return ""
	}
	defer f.Close()
	found := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && (fs[1] == "T" || fs[1] == "t") {
			switch fs[2] {
			case "sk_skb_reason_drop":
				return fs[2]
			case "kfree_skb_reason":
				found = fs[2]
			}
		}
	}
	return found
}

func nopProgram(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	spec.Instructions = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	spec.License = "GPL"
	// A collection of one, for the shared BTF (NewProgram reads its own).
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{"nop": spec}}, ebpf.CollectionOptions{Cache: btfCache})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram("nop"), nil
}

// classify turns a load or attach failure into the three-way answer.
func classify(feature string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, os.ErrNotExist), errors.Is(err, unix.EOPNOTSUPP):
		return &NotSupportedError{Feature: feature, Reason: "is not supported by this kernel: " + err.Error()}
	case strings.Contains(err.Error(), "neither debugfs nor tracefs are mounted"):
		return &NotSupportedError{Feature: feature, Reason: "needs tracefs, which is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"}
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		if !HasCapability(unix.CAP_BPF) && !HasCapability(unix.CAP_SYS_ADMIN) {
			return fmt.Errorf("%s needs CAP_BPF (run as root): %w", feature, err)
		}
		// Tracing programs and tracepoint perf events also need CAP_PERFMON:
		// a container given CAP_BPF alone is refused here, not by hardening.
		if !HasCapability(unix.CAP_PERFMON) && !HasCapability(unix.CAP_SYS_ADMIN) {
			return fmt.Errorf("%s needs CAP_PERFMON (run as root): %w", feature, err)
		}
		return &NotSupportedError{Feature: feature, Reason: "is refused by this kernel (EPERM although privileged: lockdown or hardening)"}
	}
	return fmt.Errorf("probe %s: %w", feature, err)
}

// TPBTF reports whether a BTF-enabled tracepoint program can attach to kfree_skb.
func TPBTF() error {
	if err := BTF(); err != nil {
		return err
	}
	p, err := nopProgram(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "kfree_skb"})
	if err != nil {
		return classify("tp_btf", err)
	}
	defer p.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: p})
	if err != nil {
		return classify("tp_btf", err)
	}
	return l.Close()
}

// RawTracepoint reports whether a raw tracepoint program can attach to kfree_skb.
func RawTracepoint() error {
	p, err := nopProgram(&ebpf.ProgramSpec{Type: ebpf.RawTracepoint})
	if err != nil {
		return classify("raw_tp", err)
	}
	defer p.Close()
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "kfree_skb", Program: p})
	if err != nil {
		return classify("raw_tp", err)
	}
	return l.Close()
}

// Tracepoint reports whether a classic tracepoint program can attach to skb:kfree_skb.
func Tracepoint() error {
	if _, err := TracefsDir(); err != nil {
		return err
	}
	p, err := nopProgram(&ebpf.ProgramSpec{Type: ebpf.TracePoint})
	if err != nil {
		return classify("tracepoint", err)
	}
	defer p.Close()
	l, err := link.Tracepoint("skb", "kfree_skb", p, nil)
	if err != nil {
		return classify("tracepoint", err)
	}
	return l.Close()
}

// Kprobe reports whether a kprobe can attach to the drop function.
func Kprobe() error {
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
		return &NotSupportedError{Feature: "kprobe", Reason: "is not available: no kprobe PMU (needs CONFIG_KPROBES)"}
	}
	fn := DropFunction()
	if fn == "" {
		return &NotSupportedError{Feature: "kprobe", Reason: "has no drop function to attach to in /proc/kallsyms"}
	}
	p, err := nopProgram(&ebpf.ProgramSpec{Type: ebpf.Kprobe})
	if err != nil {
		return classify("kprobe", err)
	}
	defer p.Close()
	l, err := link.Kprobe(fn, p, nil)
	if err != nil {
		return classify("kprobe", err)
	}
	return l.Close()
}

// Fentry reports whether an fentry program can attach to the drop function.
func Fentry() error {
	if err := BTF(); err != nil {
		return err
	}
	fn := DropFunction()
	if fn == "" {
		return &NotSupportedError{Feature: "fentry", Reason: "has no drop function to attach to in /proc/kallsyms"}
	}
	p, err := nopProgram(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: fn})
	if err != nil {
		return classify("fentry", err)
	}
	defer p.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: p})
	if err != nil {
		return classify("fentry", err)
	}
	return l.Close()
}
