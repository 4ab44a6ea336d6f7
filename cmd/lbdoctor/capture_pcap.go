package main

import (
	"fmt"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/lbdoctor/lbdoctor/probes/capture"
)

// pcapFile is `capture -w`: pcapng with one interface block per socket
// (interface and direction: "lb0 in", "lb0 out"), each packet commented
// with its flow and leg, and each interface's statistics (the kernel's
// ring drops) at the end. Written 0600: packets carry what the flows said.
type pcapFile struct {
	f       *os.File
	w       *pcapgo.NgWriter
	start   time.Time
	packets uint64
}

func createPcap(path string, c *capture.Capture) (*pcapFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("-w %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("-w %s: %w", path, err)
	}
	p := &pcapFile{f: f, start: time.Now()}
	opts := pcapgo.DefaultNgWriterOptions
	opts.SectionInfo.Application = "lbdoctor " + versionString()
	for i, s := range c.Stats() {
		intf := pcapgo.NgInterface{Name: s.Interface + " " + s.Direction.String(), LinkType: layers.LinkTypeEthernet,
			SnapLength: uint32(c.Snaplen()), TimestampResolution: 9, OS: "linux",
			Description: fmt.Sprintf("packets %s %s: %s", s.Interface, map[capture.Direction]string{capture.In: "received", capture.Out: "sent"}[s.Direction], "the LB's side of the VIP's flows")}
		if i == 0 {
			p.w, err = pcapgo.NewNgWriterInterface(f, intf, opts)
		} else {
			_, err = p.w.AddInterface(intf)
		}
		if err != nil {
			f.Close()
			os.Remove(path)
			return nil, fmt.Errorf("-w %s: %w", path, err)
		}
	}
	return p, nil
}

// write is the capture's Sink: one enhanced packet block, its direction
// flag and a comment naming its flow and leg.
func (p *pcapFile) write(pk capture.Packet, leg capture.LegOf, ok bool) error {
	comment := "claimed by no flow of the VIP"
	if ok {
		comment = fmt.Sprintf("leg %s (%s) of %s → VIP %s via real %s", capture.LegName(leg.Kind), leg.Kind, leg.Client, leg.VIP, leg.Real)
	}
	flags := pcapgo.NgEpbFlags{Direction: pcapgo.NgEpbFlagDirectionInbound}
	if pk.Direction == capture.Out {
		flags.Direction = pcapgo.NgEpbFlagDirectionOutbound
	}
	ci := gopacket.CaptureInfo{Timestamp: pk.Time, CaptureLength: len(pk.Data), Length: pk.Length, InterfaceIndex: pk.Socket}
	if err := p.w.WritePacketWithOptions(ci, pk.Data, pcapgo.NgPacketOptions{Comments: []string{comment}, Flags: &flags}); err != nil {
		return err
	}
	p.packets++
	return nil
}

// close writes each interface's statistics (packets its filter took, the
// kernel's ring drops) and closes the file: a capture cut short leaves a
// complete file.
func (p *pcapFile) close(stats []capture.Stats, sinkErr error) error {
	end := time.Now()
	err := sinkErr
	for i, s := range stats {
		if err != nil {
			break
		}
		err = p.w.WriteInterfaceStats(i, pcapgo.NgInterfaceStatistics{LastUpdate: end, StartTime: p.start, EndTime: end,
			PacketsReceived: s.Packets, PacketsDropped: s.Drops, Comment: "ring drops counted by the kernel (PACKET_STATISTICS)"})
	}
	if err == nil {
		err = p.w.Flush()
	}
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	return err
}
