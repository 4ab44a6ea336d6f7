package checks_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// A namespace may be called anything `ip netns add` accepts. Every fix
// command names it; pasted into a shell, the command must run in that
// namespace and run nothing else. The names are real namespaces, and each fix
// goes, as the text output shows it (control characters escaped), through
// bash -c in a directory where a `touch` smuggled into the name would leave
// its marker.
func TestFixCommandsQuoteNamespaceNames(t *testing.T) {
	testkit.RequireRoot(t)
	data, err := os.ReadFile(filepath.Join("testdata", "seed-stage1.snapshot.json"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, role string }{
		{"command substitution in quotes", `q"$(touch pwned)"`},
		{"bare command substitution", `q$(touch pwned)`},
		{"single quote and backticks", "it's`touch pwned`"},
		{"space and semicolon", "a b;touch pwned"},
		{"escape and bell", "v\x1b]0;touch pwned\a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testkit.Netns(t, tt.role)
			var snap probes.Snapshot
			if err := json.Unmarshal(data, &snap); err != nil {
				t.Fatal(err)
			}
			snap.Target = ns
			const key = "net.ipv4.conf.all.send_redirects"
			testkit.Sysctl(t, ns, key, "1")
			dir := t.TempDir()
			ran := 0
			for _, f := range checks.Run(&snap, probes.Selector{}) {
				for _, fix := range f.Fix {
					if !strings.HasPrefix(fix, "ip netns exec ") {
						continue
					}
					ran++
					// Some fail here (no IPVS on this kernel): what counts is what ran.
					cmd := exec.Command("bash", "-c", report.Printable(fix))
					cmd.Dir = dir
					out, _ := cmd.CombinedOutput()
					if ents, _ := os.ReadDir(dir); len(ents) > 0 {
						t.Fatalf("fix %q of %s ran a command smuggled in the namespace name (%s left %s): %s", fix, f.ID, ns.Name, ents[0].Name(), out)
					}
				}
			}
			if ran == 0 {
				t.Fatalf("no fix command of seed-stage1 names netns %q", ns.Name)
			}
			var got []byte
			if err := ns.Do(func() error { got, err = os.ReadFile(sysctl.Path(key)); return err }); err != nil {
				t.Fatal(err)
			}
			if v := strings.TrimSpace(string(got)); v != "0" {
				t.Errorf("after the pasted fixes %s in netns %q = %s, want 0 (the fix did not run in that namespace)", key, ns.Name, v)
			}
		})
	}
}
