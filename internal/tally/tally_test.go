package tally

import (
	"fmt"
	"testing"
)

func TestBy(t *testing.T) {
	type row struct {
		place string
		n     uint64
	}
	rows := []row{{"b", 1}, {"a", 2}, {"b", 3}, {"c", 4}, {"a", 2}}
	got := By(rows, func(r row) string { return r.place }, func(r row) uint64 { return r.n })
	var s string
	for _, g := range got {
		s += fmt.Sprintf("%s:%d/%d ", g.Key, g.Count, g.Members)
	}
	// b and c and a all sum to 4: the order of their first rows stays.
	if want := "b:4/2 a:4/2 c:4/1 "; s != want {
		t.Errorf("By(%v) = %q, want %q", rows, s, want)
	}
}

func TestOf(t *testing.T) {
	for _, c := range []struct {
		n    int
		want string
	}{{0, "0 flows"}, {1, "1 flow"}, {28, "28 flows"}} {
		if got := Of(c.n, "flow"); got != c.want {
			t.Errorf("Of(%d, flow) = %q, want %q", c.n, got, c.want)
		}
	}
}
