package drops

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Symbols turns kernel addresses into symbol+offset from /proc/kallsyms.
type Symbols struct {
	addrs []uint64
	names []string
	// hidden: the file listed symbols but every address as 0, which is what
	// the kernel shows a reader it does not trust (kernel.kptr_restrict).
	hidden bool
}

// LoadSymbols reads /proc/kallsyms (real addresses need root).
func LoadSymbols() (*Symbols, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	defer f.Close()
	return ParseKallsyms(f)
}

// ParseKallsyms parses "ADDR TYPE NAME [MODULE]" lines, keeping text symbols.
func ParseKallsyms(r io.Reader) (*Symbols, error) {
	type sym struct {
		addr uint64
		name string
	}
	var syms []sym
	zeros := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || (f[1] != "t" && f[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil || a == 0 {
			if err == nil {
				zeros++
			}
			continue
		}
		name := f[2]
		if len(f) > 3 {
			name += " " + f[3] // [module]
		}
		syms = append(syms, sym{a, name})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	s := &Symbols{addrs: make([]uint64, len(syms)), names: make([]string, len(syms)), hidden: len(syms) == 0 && zeros > 0}
	for i, y := range syms {
		s.addrs[i], s.names[i] = y.addr, y.name
	}
	return s, nil
}

// Hidden reports that the kernel showed every symbol address as 0: locations
// can only be raw addresses.
func (s *Symbols) Hidden() bool { return s != nil && s.hidden }

// Lookup returns "symbol+0xoff", or the address in hex when unknown.
func (s *Symbols) Lookup(addr uint64) string {
	if s == nil || len(s.addrs) == 0 || addr < s.addrs[0] {
		return fmt.Sprintf("0x%x", addr)
	}
	i := sort.Search(len(s.addrs), func(i int) bool { return s.addrs[i] > addr }) - 1
	name, mod, _ := strings.Cut(s.names[i], " ")
	out := fmt.Sprintf("%s+0x%x", name, addr-s.addrs[i])
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
	for i, n := range s.names {
		if n != name {
			continue
		}
		for _, a := range s.addrs[i+1:] {
			if a > s.addrs[i] { // aliases share an address
				return s.addrs[i], a, true
			}
		}
	}
	return 0, 0, false
}
