package input

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestQuote(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"short", "heavy", `"heavy"`},
		{"exactly the cap", strings.Repeat("a", MaxValue), `"` + strings.Repeat("a", MaxValue) + `"`},
		{"5 MB", strings.Repeat("x", 5<<20), `"` + strings.Repeat("x", MaxValue-1) + `…"`},
		{"multibyte", strings.Repeat("é", 50), `"` + strings.Repeat("é", MaxValue-1) + `…"`},
		{"newline", "a\nb", `"a\nb"`},
	}
	for _, tt := range tests {
		if got := Quote(tt.in); got != tt.want {
			t.Errorf("%s: Quote(%.20q) = %s, want %s", tt.name, tt.in, got, tt.want)
		}
	}
}

// A read of stdin that never ends returns when ctx ends.
func TestReadStdinEndsWithContext(t *testing.T) {
	r, w := io.Pipe()
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Read(ctx, Stdin, r)
	want := "stdin: interrupted before standard input ended; nothing was read"
	if err == nil || err.Error() != want || time.Since(start) > 2*time.Second {
		t.Errorf("Read(-) of an endless stdin = %v after %v, want %q at once", err, time.Since(start), want)
	}
}
