package proto

import "testing"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name string
		in   string
		want uint8
		ok   bool
	}{
		{"tcp by name", "tcp", 6, true},
		{"vrrp by name", "vrrp", 112, true},
		{"by number", "47", 47, true},
		{"zero is no protocol", "0", 0, false},
		{"hop-by-hop is no filter either", "hopopt", 0, false},
		{"too big", "256", 0, false},
		{"unknown name", "tcpp", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Parse(c.in)
			if got != c.want || ok != c.ok {
				t.Errorf("Parse(%q) = %d, %v, want %d, %v", c.in, got, ok, c.want, c.ok)
			}
		})
	}
}

func TestNameRoundTrip(t *testing.T) {
	for p := 1; p < 256; p++ {
		n := Name(uint8(p))
		if got, ok := Parse(n); !ok || got != uint8(p) {
			t.Errorf("Parse(Name(%d) = %q) = %d, %v, want %d, true", p, n, got, ok, p)
		}
	}
}
