package drops

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
)

// Symbols turns kernel addresses into symbol+offset from /proc/kallsyms.
// Its tens of thousands of names are one string, each symbol an offset
// into it: nothing in it for the collector to follow, and a parse that
// allocates per symbol only to grow its two slices.
type Symbols struct {
	syms  []symbol // text symbols, by address
	names string   // every symbol's name, " [module]" after a module's
	// hidden: the file listed symbols but every address as 0, which is what
	// the kernel shows a reader it does not trust (kernel.kptr_restrict).
	hidden bool
}

// symbol is one text symbol: its address and its name in Symbols.names.
type symbol struct {
	addr     uint64
	off, end uint32
}

func (s *Symbols) name(i int) string { return s.names[s.syms[i].off:s.syms[i].end] }

// LoadSymbols reads /proc/kallsyms (real addresses need root).
func LoadSymbols() (*Symbols, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	defer f.Close()
	return ParseKallsyms(f)
}

// ParseKallsyms parses "ADDR TYPE NAME [MODULE]" lines (fields apart by
// spaces or tabs), keeping text symbols.
func ParseKallsyms(r io.Reader) (*Symbols, error) {
	var syms []symbol
	var names []byte
	zeros := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		addr, rest := field(sc.Bytes())
		typ, rest := field(rest)
		name, rest := field(rest)
		mod, _ := field(rest)
		if len(name) == 0 || len(typ) != 1 || (typ[0] != 't' && typ[0] != 'T') {
			continue
		}
		a, ok := parseHex(addr)
		if !ok || a == 0 {
			if ok {
				zeros++
			}
			continue
		}
		off := len(names)
		names = append(names, name...)
		if len(mod) > 0 {
			names = append(append(names, ' '), mod...) // [module]
		}
		if len(names) > math.MaxUint32 {
			return nil, errors.New("read kernel symbols: more than 4 GiB of names")
		}
		syms = append(syms, symbol{a, uint32(off), uint32(len(names))})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// sort.Slice, as before symbols were packed: its order of aliases
	// (symbols at one address; Lookup names the last) depends only on the
	// addresses, so a location is named as it was.
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	return &Symbols{syms: syms, names: string(names), hidden: len(syms) == 0 && zeros > 0}, nil
}

// field cuts the first field off b: the bytes up to a space or tab, after
// the ones before it; and what follows.
func field(b []byte) (f, rest []byte) {
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' }
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	return b[i:j], b[j:]
}

// parseHex parses b as a hexadecimal uint64 (no prefix, no sign).
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(c)
	}
	return v, true
}

// Hidden reports that the kernel showed every symbol address as 0: locations
// can only be raw addresses.
func (s *Symbols) Hidden() bool { return s != nil && s.hidden }

// Lookup returns "symbol+0xoff", or the address in hex when unknown.
func (s *Symbols) Lookup(addr uint64) string {
	if s == nil || len(s.syms) == 0 || addr < s.syms[0].addr {
		return fmt.Sprintf("0x%x", addr)
	}
	i := sort.Search(len(s.syms), func(i int) bool { return s.syms[i].addr > addr }) - 1
	name, mod, _ := strings.Cut(s.name(i), " ")
	out := fmt.Sprintf("%s+0x%x", name, addr-s.syms[i].addr)
	if mod != "" {
		out += " " + mod
	}
	return out
}

// Range returns where the text symbol name starts and where the next one
// starts (its end, as far as kallsyms tells).
func (s *Symbols) Range(name string) (start, end uint64, ok bool) {
	if s == nil {
		return 0, 0, false
	}
	for i := range s.syms {
		if s.name(i) != name {
			continue
		}
		for _, y := range s.syms[i+1:] {
			if y.addr > s.syms[i].addr { // aliases share an address
				return s.syms[i].addr, y.addr, true
			}
		}
	}
	return 0, 0, false
}
