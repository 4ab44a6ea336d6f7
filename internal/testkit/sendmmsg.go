package testkit

import (
	"context"
	"net/netip"
	"runtime"
	"sort"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// FloodUDP sends 64-byte UDP datagrams from ns to dst (IPv4) with sendmmsg,
// from a thread pinned to the last CPU (so what the flood costs the
// receiver, which runs in the sender's softirq on veth, stays off the other
// CPUs), until ctx ends: rate datagrams per second, or as fast as it can
// with rate 0. It adds what the kernel took to sent, when not nil.
func FloodUDP(ctx context.Context, ns netns.Target, dst netip.AddrPort, rate int, sent *atomic.Uint64) error {
	return ns.Do(func() error {
		var cpus unix.CPUSet
		cpus.Set(runtime.NumCPU() - 1)
		if err := unix.SchedSetaffinity(0, &cpus); err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}); err != nil {
			return err
		}
		const batch = 64
		payload := make([]byte, 64)
		iov := unix.Iovec{Base: &payload[0]}
		iov.SetLen(len(payload))
		type mmsghdr struct {
			hdr unix.Msghdr
			n   uint32
			_   [4]byte
		}
		msgs := make([]mmsghdr, batch)
		for i := range msgs {
			msgs[i].hdr.Iov = &iov
			msgs[i].hdr.Iovlen = 1
		}
		send := func(n int) int {
			k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(n), 0, 0, 0)
			if errno != 0 {
				return 0
			}
			if sent != nil {
				sent.Add(uint64(k))
			}
			return int(k)
		}
		if rate <= 0 {
			for ctx.Err() == nil {
				for i := 0; i < 16; i++ {
					send(batch)
				}
			}
			return nil
		}
		start, done := time.Now(), 0
		for ctx.Err() == nil {
			due := int(time.Since(start).Seconds()*float64(rate)) - done
			if due <= 0 {
				time.Sleep(200 * time.Microsecond)
				continue
			}
			done += send(min(batch, due))
		}
		return nil
	})
}

// Median is the middle of v (the upper one of an even count), 0 for none:
// what benchmarks report of their rounds.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
