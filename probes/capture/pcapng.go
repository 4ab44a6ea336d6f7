package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/input"
)

// ErrNotRegular reports a -w path that exists and is not a regular file
// (a directory, FIFO, device, socket or symbolic link): lbdoctor writes
// over regular files only. Bad input.
var ErrNotRegular = errors.New("not a regular file")

// writeBuffer is how much of the file is buffered between writes.
const writeBuffer = 256 << 10

// FileInterface describes one interface block (IDB) of a pcapng file:
// one per leg of a flow, or one per captured interface and direction
// (SocketInterfaces). Wireshark shows Name as the packet's interface.
// The kernel's counts are per interface: a file with one interface per
// leg puts them where the caller chooses.
type FileInterface struct {
	Name        string
	Description string
}

// FileStats is what an interface's statistics block (ISB) says at the
// end of the file: packets the kernel accepted for it (drops included)
// and packets it lost (PACKET_STATISTICS), over Start..End.
type FileStats struct {
	Received, Dropped uint64
	Start, End        time.Time
}

// Writer writes a pcapng file: a section, the caller's interfaces,
// enhanced packet blocks with a comment each and the packet's direction,
// and at Close the interfaces' statistics. Not safe for concurrent use
// (Capture.Run calls its handler one packet at a time).
type Writer struct {
	f       *os.File
	w       *pcapgo.NgWriter
	ifaces  int
	snaplen int
	packets uint64
	start   time.Time
	bw      *bufio.Writer // what w writes to, without a buffer of its own
	scratch [32]byte
}

// CreateFile creates path for a pcapng file (mode 0600: packets are the
// users' data): a new file, or an existing regular file truncated — never
// a symbolic link, directory, FIFO or device (ErrNotRegular). Each of
// ifaces becomes an interface block, in order: WritePacket's iface
// indexes them.
func CreateFile(path string, snaplen int, ifaces []FileInterface) (*Writer, error) {
	if len(ifaces) == 0 {
		return nil, fmt.Errorf("pcapng %s: no interface to describe: %w", path, ErrBadOptions)
	}
	f, err := createRegular(path)
	if err != nil {
		return nil, err
	}
	w, err := newWriter(f, snaplen, ifaces)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("pcapng %s: %w", path, err)
	}
	return w, nil
}

func newWriter(f *os.File, snaplen int, ifaces []FileInterface) (*Writer, error) {
	idb := func(fi FileInterface) pcapgo.NgInterface {
		return pcapgo.NgInterface{Name: fi.Name, Description: fi.Description, OS: runtime.GOOS,
			LinkType: layers.LinkTypeEthernet, SnapLength: uint32(snaplen), TimestampResolution: 9}
	}
	// pcapgo buffers 4 KiB (a write(2) every dozen packets) unless given
	// a bufio.Writer at least that large, which it then uses as it is: so
	// packet blocks written to bw directly (WritePacket) and pcapgo's
	// blocks come out in the order they were written.
	bw := bufio.NewWriterSize(f, writeBuffer)
	nw, err := pcapgo.NewNgWriterInterface(bw, idb(ifaces[0]), pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: "lbdoctor"}})
	if err != nil {
		return nil, err
	}
	for _, fi := range ifaces[1:] {
		if _, err := nw.AddInterface(idb(fi)); err != nil {
			return nil, err
		}
	}
	// The header and interfaces on disk at once: a file cut short later
	// still opens.
	if err := nw.Flush(); err != nil {
		return nil, err
	}
	return &Writer{f: f, w: nw, bw: bw, ifaces: len(ifaces), snaplen: snaplen, start: time.Now()}, nil
}

// createRegular opens path for writing, created 0600 with O_EXCL, or, when
// it exists, truncated after checking it is a regular file (lstat before
// opening: opening a FIFO blocks, opening a device can start it; the
// opened file must be the one checked).
func createRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	var before unix.Stat_t
	if err := unix.Lstat(path, &before); err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if kind := input.FileKind(before.Mode); kind != "" {
		return nil, fmt.Errorf("create %s: it is %s: %w", path, kind, ErrNotRegular)
	}
	f, err = os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	var after unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &after); err != nil || after.Ino != before.Ino || after.Dev != before.Dev || input.FileKind(after.Mode) != "" {
		f.Close()
		return nil, fmt.Errorf("create %s: it changed while it was opened: %w", path, ErrNotRegular)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("create %s: truncate: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("create %s: chmod 0600: %w", path, err)
	}
	return f, nil
}

// WritePacket writes p as a packet of interface iface (an index into the
// interfaces given to CreateFile), with comment (the flow and leg: "" for
// none; cut at MaxComment bytes) and p's direction as the block's flags.
//
// The enhanced packet block is encoded here, not by pcapgo's
// WritePacketWithOptions, which allocates its options for every packet
// (two thirds of the capture's user CPU under a flood, measured by
// BenchmarkCaptureFlood); TestWritePacketAsPcapgo holds the two to the same
// bytes.
func (w *Writer) WritePacket(p Packet, iface int, comment string) error {
	if iface < 0 || iface >= w.ifaces {
		return fmt.Errorf("pcapng: interface %d of %d", iface, w.ifaces)
	}
	if len(comment) > MaxComment {
		comment = comment[:MaxComment]
	}
	pad := func(n int) int { return (4 - n&3) & 3 }
	optLen := 8 + 4 // epb_flags, opt_endofopt
	if comment != "" {
		optLen += 4 + len(comment) + pad(len(comment))
	}
	total := 28 + len(p.Data) + pad(len(p.Data)) + optLen + 4
	ts := p.Time.UnixNano()
	b := w.scratch[:]
	le := binary.LittleEndian
	le.PutUint32(b[0:], 6) // enhanced packet block
	le.PutUint32(b[4:], uint32(total))
	le.PutUint32(b[8:], uint32(iface))
	le.PutUint32(b[12:], uint32(ts>>32))
	le.PutUint32(b[16:], uint32(ts))
	le.PutUint32(b[20:], uint32(len(p.Data)))
	le.PutUint32(b[24:], uint32(max(p.Length, len(p.Data))))
	w.bw.Write(b[:28])
	w.bw.Write(p.Data)
	var zero [4]byte
	w.bw.Write(zero[:pad(len(p.Data))])
	if comment != "" {
		le.PutUint16(b[0:], 1) // opt_comment
		le.PutUint16(b[2:], uint16(len(comment)))
		w.bw.Write(b[:4])
		w.bw.WriteString(comment)
		w.bw.Write(zero[:pad(len(comment))])
	}
	flags := uint32(pcapgo.NgEpbFlagDirectionInbound)
	if p.Direction == Out {
		flags = uint32(pcapgo.NgEpbFlagDirectionOutbound)
	}
	le.PutUint16(b[0:], 2) // epb_flags
	le.PutUint16(b[2:], 4)
	le.PutUint32(b[4:], flags)
	le.PutUint32(b[8:], 0) // opt_endofopt
	le.PutUint32(b[12:], uint32(total))
	if _, err := w.bw.Write(b[:16]); err != nil {
		// bufio keeps the first error and refuses every write after it.
		return fmt.Errorf("pcapng %s: %w", w.f.Name(), err)
	}
	w.packets++
	return nil
}

// MaxComment is the longest packet comment written (an option's length is
// 16 bits).
const MaxComment = 4096

// Packets is the number of packets written so far.
func (w *Writer) Packets() uint64 { return w.packets }

// Flush writes what is buffered to the file.
func (w *Writer) Flush() error { return w.w.Flush() }

// Close writes a statistics block for each interface stats covers (stats[i]
// for interface i; fewer is fine), flushes and closes the file: a capture
// cut short by Ctrl-C still leaves a complete file.
func (w *Writer) Close(stats []FileStats) error {
	var errs []error
	for i, st := range stats {
		if i >= w.ifaces {
			errs = append(errs, fmt.Errorf("statistics for interface %d of %d", i, w.ifaces))
			break
		}
		start, end := st.Start, st.End
		if start.IsZero() {
			start = w.start
		}
		if end.IsZero() {
			end = time.Now()
		}
		errs = append(errs, w.w.WriteInterfaceStats(i, pcapgo.NgInterfaceStatistics{LastUpdate: end, StartTime: start, EndTime: end,
			PacketsReceived: st.Received, PacketsDropped: st.Dropped}))
	}
	// No fsync: readers see the page cache; a flood's file is tens of
	// megabytes that tcpdump does not sync either.
	errs = append(errs, w.w.Flush(), w.f.Close())
	// The first error only: the buffered writer keeps it and returns it
	// again for every later write, and a closing line is one line.
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("pcapng %s: %w", w.f.Name(), err)
		}
	}
	return nil
}

// SocketInterfaces describes one file interface per socket of c, in
// socket order (so Packet.Socket is the packet's interface in the file):
// named after the interface, described with the namespace; each packet's
// block says whether it was received or sent.
func (c *Capture) SocketInterfaces() []FileInterface {
	out := make([]FileInterface, len(c.socks))
	for i, s := range c.socks {
		out[i] = FileInterface{Name: s.iface,
			Description: fmt.Sprintf("%s, %s: packets received and sent (lbdoctor, AF_PACKET)", c.ns, s.iface)}
	}
	return out
}

// FileStatsOf turns sockets' statistics into the file's, one for one.
func FileStatsOf(stats []Stats, start, end time.Time) []FileStats {
	out := make([]FileStats, len(stats))
	for i, s := range stats {
		out[i] = FileStats{Received: s.Packets, Dropped: s.Drops, Start: start, End: end}
	}
	return out
}
