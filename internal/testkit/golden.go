package testkit

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

// update is the test binary's -update flag. A package that also imports
// charmbracelet's golden (teatest's goldens) gets its -update, defined first
// (packages initialise in import-path order, charmbracelet before lbdoctor):
// one flag rewrites both kinds, where a second definition would panic.
var update = sharedBool("update", "rewrite golden files in testdata/")

func sharedBool(name, usage string) func() bool {
	if f := flag.Lookup(name); f != nil {
		return func() bool {
			g, ok := f.Value.(flag.Getter)
			if !ok {
				return false
			}
			b, _ := g.Get().(bool)
			return b
		}
	}
	b := flag.Bool(name, false, usage)
	return func() bool { return *b }
}

// Golden compares got with testdata/NAME, or rewrites it under -update.
func Golden(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if update() {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}
