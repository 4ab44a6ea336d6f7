package report

import "testing"

func TestPrintable(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "netns lb: tcp 10.1.0.3:1 → 10.1.0.6:8085 × 2", "netns lb: tcp 10.1.0.3:1 → 10.1.0.6:8085 × 2"},
		{"newline kept", "a\nb\n", "a\nb\n"},
		{"ESC sequence", "netns x\x1b[31mred", `netns x\x1b[31mred`},
		{"SOH", "a\x01b", `a\x01b`},
		{"CR and tab", "a\rb\tc", `a\rb\tc`},
		{"DEL and C1", "a\x7fb\u0085c", `a\x7fb\u0085c`},
		{"invalid UTF-8", "a\xffb", `a\xffb`},
		{"replacement char itself", "a\uFFFDb", "a\uFFFDb"},
		{"backslash stays", `a\b`, `a\b`},
	}
	for _, tt := range tests {
		if got := Printable(tt.in); got != tt.want {
			t.Errorf("Printable(%s: %q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
}
