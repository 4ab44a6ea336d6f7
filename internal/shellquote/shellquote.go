// Package shellquote quotes the words of the commands lbdoctor prints for a
// person to paste (fixes, plans), so that a pasted command runs exactly what
// it says in a POSIX shell — and still does when a word holds characters a
// terminal would act on.
package shellquote

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"al.essio.dev/pkg/shellescape"
)

// Quote returns s as one shell word. Printable text is single-quoted where
// it needs quoting (shellescape: POSIX). A word with control characters or
// bytes that are not UTF-8 — a namespace may be named with ESC — is written
// as ANSI-C quoting ($'…', bash, zsh, ksh, busybox ash), every such byte as
// \xHH: printed to a terminal it acts on nothing, and pasted it names the
// same bytes. Single quotes could not carry those characters visibly.
func Quote(s string) string {
	if printable(s) {
		return shellescape.Quote(s)
	}
	var b strings.Builder
	b.WriteString("$'")
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1, !unicode.IsPrint(r):
			for _, c := range []byte(s[i : i+n]) {
				const hex = "0123456789abcdef"
				b.WriteString(`\x`)
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
			}
		case r == '\\' || r == '\'':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	b.WriteByte('\'')
	return b.String()
}

// Command quotes each word of argv and joins them with spaces.
func Command(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) && r != ' ' {
			return false
		}
	}
	return true
}
