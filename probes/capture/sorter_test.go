package capture

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
)

// TestSorter feeds a Sorter packets of two interfaces as their rings hand
// them over (each ring in order, the two apart) and reads the file back:
// time order, the order added among packets of one instant, none lost.
func TestSorter(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type in struct {
		ms      int
		iface   int
		comment string
	}
	tests := []struct {
		name    string
		in      []in
		want    []string // comments, in file order
		inOrder bool     // the file's times in order: all came within the horizon
	}{
		{"a ring handed over late: its earlier packets first",
			[]in{{2, 1, "to real SYN"}, {3, 1, "real SYN-ACK"}, {1, 0, "client SYN"}, {4, 0, "to client SYN-ACK"}},
			[]string{"client SYN", "to real SYN", "real SYN-ACK", "to client SYN-ACK"}, true},
		{"one instant keeps the order added",
			[]in{{5, 1, "b"}, {5, 0, "a"}, {5, 1, "c"}},
			[]string{"b", "a", "c"}, true},
		{"past the horizon: written as it comes, not lost",
			[]in{{0, 0, "first"}, {500, 0, "late ring's newest"}, {10, 1, "older than the horizon"}, {600, 1, "last"}},
			[]string{"first", "older than the horizon", "late ring's newest", "last"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.pcapng")
			w, err := CreateFile(path, 256, []FileInterface{{Name: "eth0"}, {Name: "eth1"}})
			if err != nil {
				t.Fatal(err)
			}
			s := NewSorter(w)
			for _, p := range tt.in {
				if err := s.Add(Packet{Time: at(p.ms), Length: 4, Data: []byte("abcd")}, p.iface, p.comment); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Drain(); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(nil); err != nil {
				t.Fatal(err)
			}
			got, times := readOrder(t, path)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Sorter wrote %q, want %q", got, tt.want)
			}
			if w.Packets() != uint64(len(tt.in)) {
				t.Errorf("Writer.Packets() = %d, want %d", w.Packets(), len(tt.in))
			}
			if tt.inOrder && !slices.IsSortedFunc(times, time.Time.Compare) {
				t.Errorf("Sorter wrote times %v, want them in order", times)
			}
		})
	}
}

// TestSorterBounded: a Sorter holds at most sortBytes; past them the
// oldest packets are written without waiting for the horizon.
func TestSorterBounded(t *testing.T) {
	w, err := CreateFile(filepath.Join(t.TempDir(), "b.pcapng"), 65535, []FileInterface{{Name: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(nil)
	s := NewSorter(w)
	t0 := time.Now()
	const n = 200 // 200 × 64 KiB, all within 1 ms: far past sortBytes
	for i := range n {
		if err := s.Add(Packet{Time: t0.Add(time.Duration(i) * time.Microsecond), Length: 65535, Data: make([]byte, 65535)}, 0, ""); err != nil {
			t.Fatal(err)
		}
		if s.bytes > sortBytes {
			t.Fatalf("Sorter holds %d bytes after %d packets, want at most %d", s.bytes, i+1, sortBytes)
		}
	}
	if w.Packets() == 0 || w.Packets() == n {
		t.Errorf("Writer.Packets() = %d before Drain, want some written (past sortBytes) and some held", w.Packets())
	}
	if err := s.Drain(); err != nil || w.Packets() != n {
		t.Errorf("Drain() = %v with %d written, want nil and %d", err, w.Packets(), n)
	}
}

// readOrder is the comments and timestamps of path's packets, in file order.
func readOrder(t *testing.T, path string) (comments []string, times []time.Time) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, ci, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			break
		}
		comments = append(comments, strings.Join(opts.Comments, ","))
		times = append(times, ci.Timestamp)
	}
	return comments, times
}
