package drops_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// /proc/kallsyms read without CAP_SYSLOG lists every symbol at address 0:
// that is "hidden", not "no symbols", so the tracer can say why.
func TestParseKallsymsHidden(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		hidden   bool
		lookup   string
	}{
		{"readable", "ffffffff81000000 T _stext\nffffffff81000100 t ip_error\n", false, "ip_error+0x10"},
		{"hidden", "0000000000000000 T _stext\n0000000000000000 t ip_error\n", true, "0xffffffff81000110"},
		{"empty", "", false, "0xffffffff81000110"},
	} {
		s, err := drops.ParseKallsyms(strings.NewReader(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Lookup(0xffffffff81000110); s.Hidden() != tt.hidden || got != tt.lookup {
			t.Errorf("ParseKallsyms(%s): Hidden() = %v, Lookup = %s; want %v, %s", tt.name, s.Hidden(), got, tt.hidden, tt.lookup)
		}
	}
}

// BenchmarkParseKallsyms parses this machine's /proc/kallsyms (read once,
// beforehand): what every tracer's Namer does at its start.
func BenchmarkParseKallsyms(b *testing.B) {
	data, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		b.Skip(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := drops.ParseKallsyms(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
