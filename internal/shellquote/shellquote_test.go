package shellquote_test

import (
	"os/exec"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/shellquote"
)

// What bash reads back from a quoted word is the word, byte for byte.
func TestQuoteRoundTrips(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "lb", "lb"},
		{"space", "a b", "'a b'"},
		{"command substitution", `q"$(id)"`, `'q"$(id)"'`},
		{"single quote", "it's", `'it'"'"'s'`},
		{"escape and bell", "v10\x1b]0;pwn\a", `$'v10\x1b]0;pwn\x07'`},
		{"escape and quote", "a'\x01\\", `$'a\'\x01\\'`},
		{"not UTF-8", "x\xffy", `$'x\xffy'`},
		{"newline", "a\nb", `$'a\x0ab'`},
		{"unicode", "lb-ü", "'lb-ü'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shellquote.Quote(tt.in)
			if got != tt.want {
				t.Errorf("Quote(%q) = %s, want %s", tt.in, got, tt.want)
			}
			out, err := exec.Command("bash", "-c", "printf %s "+got).Output()
			if err != nil || string(out) != tt.in {
				t.Errorf("bash reads Quote(%q) = %s back as %q (%v), want the word itself", tt.in, got, out, err)
			}
		})
	}
}
