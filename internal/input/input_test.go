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

// Every input format refuses the same bytes, naming the first one's line.
func TestBinaryLine(t *testing.T) {
	tests := []struct {
		name, in string
		line     int
		why      string
	}{
		{"text", "a\tb\r\nc\n", 0, ""},
		{"utf-8", "é ü →\n", 0, ""},
		{"NUL", "a\nb\x00c\n", 2, "binary content (a NUL byte): want a text file"},
		{"control character", "a\n\nb\x1b[0m\n", 3, "binary content (control character 0x1b): want a text file"},
		{"DEL", "\x7f", 1, "binary content (control character 0x7f): want a text file"},
		{"not UTF-8", "a\n\xff\n", 2, "binary content (byte 0xff is not UTF-8): want a text file"},
	}
	for _, tt := range tests {
		if line, why := BinaryLine([]byte(tt.in)); line != tt.line || why != tt.why {
			t.Errorf("%s: BinaryLine(%q) = %d, %q; want %d, %q", tt.name, tt.in, line, why, tt.line, tt.why)
		}
	}
}
