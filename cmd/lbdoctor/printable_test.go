package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// A namespace may be named with control characters (`ip netns add
// $'x\e[2J\x01'`). Every text output that names it — check, inspect, drops,
// teardown, and the one stderr line of an error — shows the escapes
// (\x1b, \x01), never the raw bytes a terminal would act on.
func TestTextOutputEscapesControlCharacters(t *testing.T) {
	ns := testkit.Netns(t, "esc\x1b[2J\x01")
	testkit.Tracefs(t)
	escaped := strings.NewReplacer("\x1b", `\x1b`, "\x01", `\x01`).Replace(ns.Name)
	tests := []struct {
		name string
		args []string
	}{
		{"check", []string{"check", "--watch", "0", "--netns", ns.Name}},
		{"check --vip", []string{"check", "--watch", "0", "--netns", ns.Name, "--vip", "10.1.0.6:8085"}},
		{"inspect", []string{"inspect", "--netns", ns.Name}},
		{"drops", []string{"drops", "--netns", ns.Name, "--duration", "200ms"}},
		{"drops --summary", []string{"drops", "--netns", ns.Name, "--duration", "200ms", "--summary"}},
		{"teardown", []string{"teardown", "--netns", ns.Name, "--dry-run"}},
		{"error line", []string{"check", "--netns", "/run/netns/" + ns.Name + "-gone"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(tt.args...)
			all := stdout + stderr
			if i := strings.IndexFunc(all, func(r rune) bool { return r < 0x20 && r != '\n' || r == 0x7f }); i >= 0 {
				t.Errorf("%s: output holds control character %q at %d (exit %d): %q", tt.name, all[i], i, code, all)
			}
			if !strings.Contains(all, escaped) && !strings.Contains(all, fmt.Sprintf("%q", ns.Name)[1:len(fmt.Sprintf("%q", ns.Name))-1]) {
				t.Errorf("%s: output does not name the namespace as %s (exit %d): %q", tt.name, escaped, code, all)
			}
		})
	}
}
