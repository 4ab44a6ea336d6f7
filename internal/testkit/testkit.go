// Package testkit gives tests real kernel fixtures — network namespaces, the
// lab topologies, sysctls — that clean up after themselves on every path, and
// the rule for root-only tests: skip on a developer's machine, fail in CI.
package testkit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// InGuest reports whether the test runs inside the IPVS test guest.
func InGuest() bool { return os.Getenv("LBDOCTOR_GUEST") == "1" }

// RequireRoot skips a test that needs root, except in CI where it fails.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("test needs root, and CI runs as root: check the CI setup")
	}
	t.Skip("needs root (CI runs it as root)")
}

// UniqueName returns prefix-PID-xxxxxx: unique across parallel tests, and
// the PID lets a later run remove what a killed one left behind.
func UniqueName(prefix string) string {
	sweepOnce.Do(sweep)
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(b))
}

var sweepOnce sync.Once

// sweep deletes the lbd-* namespaces of test processes that no longer
// exist (a test killed by a timeout cannot run its cleanups).
func sweep() {
	ents, _ := os.ReadDir(netns.RunDir)
	for _, e := range ents {
		f := strings.Split(e.Name(), "-")
		if len(f) < 3 || f[0] != "lbd" {
			continue
		}
		// lbd-ROLE-PID-HEX (Netns) or lbd-PID-HEX-ROLE (Lab): the PID is the
		// first numeric field.
		pid := 0
		for _, x := range f[1:] {
			if p, err := strconv.Atoi(x); err == nil {
				pid = p
				break
			}
		}
		if pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			if ns, err := netns.Resolve(e.Name()); err == nil {
				ns.Delete()
			} else {
				os.Remove(filepath.Join(netns.RunDir, e.Name())) // an unmounted leftover
			}
		}
	}
}

// Netns creates a named namespace that is deleted when the test ends.
func Netns(t testing.TB, role string) netns.Target {
	t.Helper()
	RequireRoot(t)
	name := UniqueName("lbd-" + role)
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatalf("netns.Create(%s): %v", name, err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ns
}

// Lab builds a lab topology that is torn down when the test ends.
func Lab(t testing.TB, topo lab.Topology) *lab.Lab {
	t.Helper()
	RequireRoot(t)
	l, err := lab.Build(topo, UniqueName("lbd"))
	if err != nil {
		t.Fatalf("lab.Build(%s): %v", topo, err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return l
}

// Sysctl writes a sysctl inside ns, failing the test on error.
func Sysctl(t testing.TB, ns netns.Target, key, value string) {
	t.Helper()
	err := ns.Do(func() error { return os.WriteFile(sysctl.Path(key), []byte(value), 0o644) })
	if err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, ns, err)
	}
}

// Run runs a command inside ns and returns its combined output, failing the
// test when it exits non-zero. It is how tests do what an operator would type.
func Run(t testing.TB, ns netns.Target, name string, args ...string) string {
	t.Helper()
	out, err := Output(ns, name, args...)
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns, err, out)
	}
	return out
}

// Output runs a command inside ns and returns its combined output and error.
func Output(ns netns.Target, name string, args ...string) (string, error) {
	return outputStdin(ns, nil, name, args...)
}

// outputStdin is Output with stdin (nil: none).
func outputStdin(ns netns.Target, stdin io.Reader, name string, args ...string) (string, error) {
	var out []byte
	err := ns.Do(func() error {
		var err error
		// The child is forked from this locked thread, so it starts in ns.
		cmd := exec.Command(name, args...)
		cmd.Stdin = stdin
		out, err = cmd.CombinedOutput()
		return err
	})
	return string(out), err
}

// Tracefs mounts tracefs at /sys/kernel/tracing for the test when it is not
// mounted (the classic tracepoint needs it) and unmounts it afterwards.
func Tracefs(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/sys/kernel/tracing/events"); err == nil {
		return
	}
	if out, err := exec.Command("mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing").CombinedOutput(); err != nil {
		t.Fatalf("mount tracefs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "/sys/kernel/tracing").Run() })
}

var nftPackets = regexp.MustCompile(`counter packets (\d+)`)

// NftPackets sums the packets the rule counters of an nft chain counted in
// ns: what a test compares the drop tracer's counts with. (Rule counters,
// not named ones: those need nft_objref, which not every kernel loads.)
func NftPackets(t testing.TB, ns netns.Target, family, table, chain string) uint64 {
	t.Helper()
	out := Run(t, ns, "nft", "list", "chain", family, table, chain)
	ms := nftPackets.FindAllStringSubmatch(out, -1)
	if ms == nil {
		t.Fatalf("nft list chain %s %s %s in %s: no counter in\n%s", family, table, chain, ns, out)
	}
	var sum uint64
	for _, m := range ms {
		n, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}
