package report

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable escapes what a terminal would act on instead of showing: every
// rune that is not printable (ESC, \x01, \r, \t, DEL, C1 controls) and every
// byte that is not UTF-8 becomes its Go escape (\x1b, \x01, \r, \u0085,
// \xff), as strconv.Quote writes it but without quotes; a newline ends a
// line of the output and is kept. Every text output passes through it, so a
// user-controlled string (a namespace, interface, rule or comment name)
// cannot drive the terminal; JSON and JUnit escape on their own.
func Printable(s string) string {
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !keep(r, size) {
			break
		}
		i += size
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for s = s[i:]; len(s) > 0; {
		r, size := utf8.DecodeRuneInString(s)
		switch {
		case keep(r, size):
			b.WriteString(s[:size])
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		default:
			q := strconv.QuoteRune(r) // '\x1b'
			b.WriteString(q[1 : len(q)-1])
		}
		s = s[size:]
	}
	return b.String()
}

func keep(r rune, size int) bool {
	return r == '\n' || (unicode.IsPrint(r) && !(r == utf8.RuneError && size == 1))
}
