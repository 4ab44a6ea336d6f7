package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// check --expect with a file it cannot take: one line naming the file (and
// the line), exit 2, nothing watched and nothing on stdout.
func TestCheckExpectBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	huge := write("huge.conf", "virtual_server 10.1.0.6 80 {\n"+strings.Repeat("! padding\n", 110_000)+"}\n")
	tests := []struct {
		name string
		file string
		want string
	}{
		{"include", write("inc.conf", "global_defs {\n}\ninclude /etc/keepalived/conf.d/*.conf\n"), "inc.conf:3: include is not followed"},
		{"lowercase lb_kind", write("nat.conf", "virtual_server 10.1.0.6 80 {\n  lb_kind nat\n}\n"), `nat.conf:2: lb_kind "nat": keepalived takes NAT, DR or TUN, in capitals only`},
		{"neither format", write("unit", "[Service]\nExecStart=/usr/sbin/keepalived\n"), "unit: is none of the files --expect reads"},
		{"larger than 1 MiB", huge, "huge.conf"},
		{"a directory", dir, "not a regular file"},
		{"a device", "/dev/zero", "not a regular file"},
		{"missing", filepath.Join(dir, "nope.conf"), "nope.conf"},
		{"empty name", "", "--expect: empty value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI("check", "--watch", "0", "--expect", tt.file)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code != exitUsage || len(lines) != 1 || !strings.Contains(stderr, tt.want) || !strings.HasPrefix(stderr, "lbdoctor: --expect") || stdout != "" {
				t.Errorf("lbdoctor check --expect %s = exit %d, stderr %q, stdout %q; want exit 2, one line with %q, no stdout", tt.file, code, stderr, stdout, tt.want)
			}
		})
	}
}

// On this host (no IPVS) a good file is read, and ipvs.drift is reported
// and skipped, naming why; without --expect it is not reported at all.
func TestCheckExpectReported(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "exp")
	r, _ := checkJSON(t, "--netns", ns.Name, "--expect", "testdata/keepalived.conf")
	var got string
	for _, f := range r.Findings {
		if f.ID == "ipvs.drift" {
			got = string(f.Status) + ": " + f.Reason
		}
	}
	want := "skip: IPVS is not available (see kernel.ipvs): nothing to compare testdata/keepalived.conf with"
	if got != want {
		t.Errorf("check --expect testdata/keepalived.conf: ipvs.drift = %q, want %q", got, want)
	}
	r, _ = checkJSON(t, "--netns", ns.Name)
	for _, f := range r.Findings {
		if f.ID == "ipvs.drift" {
			t.Errorf("check without --expect reports ipvs.drift (%s), want it left out", f.Status)
		}
	}
}
