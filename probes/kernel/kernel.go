// Package kernel answers what the running kernel can do for lbdoctor, in the
// three-way style of cilium/ebpf's features: nil (available), an error that
// Is ErrNotSupported (absent, with the reason named), or another error.
package kernel

import (
	"bufio"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotSupported is matched by every "the kernel lacks it" answer.
var ErrNotSupported = errors.New("not supported")

// NotSupportedError names the missing feature and why it is missing.
type NotSupportedError struct {
	Feature string // e.g. "IPVS"
	Reason  string // e.g. "kernel 6.18 was built without IPVS (CONFIG_IP_VS is not set)"
}

func (e *NotSupportedError) Error() string        { return e.Feature + " " + e.Reason }
func (e *NotSupportedError) Is(target error) bool { return target == ErrNotSupported }

// Release is the running kernel's release string (uname -r).
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// ConfigOption returns the value of a kernel build option ("y", "m", or ""
// when it is not set) from /proc/config.gz or /boot/config-RELEASE. found is
// false when neither file can be read.
func ConfigOption(name string) (value string, found bool) {
	var r io.Reader
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if zr, err := gzip.NewReader(f); err == nil {
			r = zr
		}
	}
	if r == nil {
		f, err := os.Open("/boot/config-" + Release())
		if err != nil {
			return "", false
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+"="); ok {
			return v, true
		}
	}
	return "", true
}
