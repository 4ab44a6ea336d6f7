package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

func TestCreateFile(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.pcapng")
	os.WriteFile(existing, []byte(strings.Repeat("old", 1000)), 0o644)
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o644)
	link := filepath.Join(dir, "link.pcapng")
	os.Symlink(target, link)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		path string
		want error // nil: created, 0600, holding only the header
	}{
		{"new file", filepath.Join(dir, "new.pcapng"), nil},
		{"existing regular file", existing, nil},
		{"symbolic link", link, ErrNotRegular},
		{"directory", dir, ErrNotRegular},
		{"FIFO", fifo, ErrNotRegular},
		{"character device", "/dev/null", ErrNotRegular},
		{"missing directory", filepath.Join(dir, "no", "x.pcapng"), os.ErrNotExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := CreateFile(tc.path, 128, []FileInterface{{Name: "l0"}})
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Errorf("CreateFile(%s) = %v, want %v", tc.name, err, tc.want)
				}
				if err == nil {
					w.Close(nil)
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateFile(%s) = %v, want a file", tc.name, err)
			}
			if err := w.Close(nil); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("CreateFile(%s) mode = %v, want 0600", tc.name, st.Mode().Perm())
			}
			data, _ := os.ReadFile(tc.path)
			if strings.Contains(string(data), "old") {
				t.Errorf("CreateFile(%s) left the old content", tc.name)
			}
		})
	}
	if data, _ := os.ReadFile(target); string(data) != "keep" {
		t.Errorf("the symbolic link's target = %q, want it untouched", data)
	}
}

// readBack reads a pcapng file with gopacket's reader: packets per
// interface name, comments, and each interface's last statistics.
func readBack(t *testing.T, path string) (perIface map[string]int, comments []string, stats map[string]pcapgo.NgInterfaceStatistics) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	byID := map[int]pcapgo.NgInterfaceStatistics{}
	r, err := pcapgo.NewNgReader(f, pcapgo.NgReaderOptions{StatisticsCallback: func(id int, s pcapgo.NgInterfaceStatistics) { byID[id] = s }})
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	perIface = map[string]int{}
	for {
		_, ci, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			break
		}
		intf, _ := r.Interface(ci.InterfaceIndex)
		perIface[intf.Name]++
		comments = append(comments, opts.Comments...)
	}
	stats = map[string]pcapgo.NgInterfaceStatistics{}
	for id, s := range byID {
		intf, _ := r.Interface(id)
		stats[intf.Name] = s
	}
	return perIface, comments, stats
}

// countWith counts the packets tcpdump or tshark reads from path.
func countWith(t *testing.T, path string, name string, args ...string) int {
	t.Helper()
	cmd := exec.Command(name, append(args, "-r", path)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s -r %s: %v: %s", name, path, err, stderr.String())
	}
	return strings.Count(string(out), "\n")
}

// TestPcapngCapture captures the VIP flow into a pcapng file, cut short by
// cancelling the context under a flood, and reads it back with gopacket,
// tcpdump and tshark: the same packet count everywhere, one interface per
// socket, a comment per packet, the kernel's counts in the statistics.
func TestPcapngCapture(t *testing.T) {
	for _, tool := range []string{"tcpdump", "tshark", "capinfos"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (.ci/run installs tcpdump and tshark)", tool, err)
		}
	}
	p := newLBPair(t)
	p.echo(t)
	path := filepath.Join(t.TempDir(), "vip.pcapng")
	if k := os.Getenv("LBDOCTOR_KEEP_PCAPNG"); k != "" {
		path = k
	}
	c, err := Open(p.L, Options{Match: Match{Proto: 17, Addrs: []netip.Addr{p.VIP.Addr()}}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := CreateFile(path, c.Snaplen(), c.SocketInterfaces())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var werr error
	var handled atomic.Int64
	go func() {
		done <- c.Run(ctx, func(pk Packet) bool {
			handled.Add(1)
			if err := w.WritePacket(pk, pk.Socket, fmt.Sprintf("flow udp %s leg %s", p.VIP, pk.Direction)); err != nil {
				werr = err
				return false
			}
			return true
		})
	}()
	start := time.Now()
	const n = 20
	p.exchange(t, p.VIP, n, true)
	for deadline := time.Now().Add(2 * time.Second); handled.Load() < 2*n && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		testkit.SendUDP(t, p.C, p.CAddr, netip.AddrPortFrom(p.VIP.Addr(), 9), 20000)
	}()
	time.Sleep(20 * time.Millisecond)
	cancel() // mid-flood: the file must still be whole
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-flooding
	stats := c.Close()
	if werr != nil {
		t.Fatal(werr)
	}
	if err := w.Close(FileStatsOf(stats, start, time.Now())); err != nil {
		t.Fatal(err)
	}

	written := int(w.Packets())
	perIface, comments, isb := readBack(t, path)
	if perIface["l0"] != written || written < 2*n {
		t.Errorf("pcapng holds %v, want %d on l0, at least %d", perIface, written, 2*n)
	}
	// Cut short mid-flood: what the kernel counted is written, dropped,
	// or counted as left unread; nothing else.
	if st := stats[0]; st.Packets != uint64(written)+st.Drops+st.Unread {
		t.Errorf("Stats(l0) = %+v with %d written, want packets = written + dropped + unread", st, written)
	}
	if len(comments) != written || !strings.HasPrefix(comments[0], "flow udp 10.81.1.1:8085 leg ") {
		t.Errorf("pcapng comments: %d, first %q; want one per packet naming the flow", len(comments), comments)
	}
	for _, st := range stats {
		if got := isb[st.Interface]; got.PacketsReceived != st.Packets || got.PacketsDropped != st.Drops {
			t.Errorf("ISB(%s) = received %d dropped %d, want %d and %d", st.Interface, got.PacketsReceived, got.PacketsDropped, st.Packets, st.Drops)
		}
	}
	if got := countWith(t, path, "tcpdump", "-nn"); got != written {
		t.Errorf("tcpdump -r reads %d packets, want %d", got, written)
	}
	if got := countWith(t, path, "tshark", "-n"); got != written {
		t.Errorf("tshark -r reads %d packets, want %d", got, written)
	}
	// -M: the count in full (capinfos says "10 k" past 9,999 otherwise).
	info, err := exec.Command("capinfos", "-c", "-M", path).CombinedOutput()
	if err != nil || !strings.Contains(string(info), fmt.Sprintf("Number of packets:   %d", written)) {
		t.Errorf("capinfos -c: %v\n%s", err, info)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("pcapng mode = %v, want 0600", st.Mode().Perm())
	}
}

// TestWritePacketAsPcapgo holds WritePacket's own block encoding to
// pcapgo's WritePacketWithOptions, byte for byte.
func TestWritePacketAsPcapgo(t *testing.T) {
	ts := time.Date(2026, 11, 30, 10, 0, 0, 123456789, time.UTC)
	cases := []struct {
		name    string
		p       Packet
		comment string
	}{
		{"received, no comment", Packet{Time: ts, Direction: In, Length: 60, Data: []byte("0123456789abcdef0123456789abcdef0123456789ab")}, ""},
		{"sent, comment to pad", Packet{Time: ts, Direction: Out, Length: 1500, Data: []byte("0123456789abc")}, "flow udp 10.81.1.1:8085 leg to_real"},
		{"comment of 4n bytes", Packet{Time: ts, Direction: In, Length: 4, Data: []byte("abcd")}, "abcdefgh"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ifaces := []FileInterface{{Name: "l0"}, {Name: "l1"}}
			mine, err := CreateFile(filepath.Join(dir, "mine"), 256, ifaces)
			if err != nil {
				t.Fatal(err)
			}
			if err := mine.WritePacket(tc.p, 1, tc.comment); err != nil {
				t.Fatal(err)
			}
			mine.Close(nil)
			ref, err := CreateFile(filepath.Join(dir, "ref"), 256, ifaces)
			if err != nil {
				t.Fatal(err)
			}
			opts := pcapgo.NgPacketOptions{Flags: &pcapgo.NgEpbFlags{Direction: pcapgo.NgEpbFlagDirectionInbound}}
			if tc.p.Direction == Out {
				opts.Flags.Direction = pcapgo.NgEpbFlagDirectionOutbound
			}
			if tc.comment != "" {
				opts.Comments = []string{tc.comment}
			}
			ci := gopacket.CaptureInfo{Timestamp: tc.p.Time, CaptureLength: len(tc.p.Data), Length: tc.p.Length, InterfaceIndex: 1}
			if err := ref.w.WritePacketWithOptions(ci, tc.p.Data, opts); err != nil {
				t.Fatal(err)
			}
			ref.Close(nil)
			a, _ := os.ReadFile(filepath.Join(dir, "mine"))
			b, _ := os.ReadFile(filepath.Join(dir, "ref"))
			if !bytes.Equal(a, b) {
				t.Errorf("WritePacket(%s) wrote\n%x\nwant (pcapgo)\n%x", tc.name, a, b)
			}
		})
	}
}
