package lab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Process identifies a process lbdoctor started beyond its PID, which the
// kernel reuses: its start time (field 22 of /proc/PID/stat, clock ticks
// since boot) and the boot it started in. A PID is signalled only while all
// three match.
type Process struct {
	PID        int    `json:"pid"`
	StartTicks uint64 `json:"start_ticks"`
	BootID     string `json:"boot_id"`
}

// ErrGone reports that the recorded process no longer runs.
var ErrGone = errors.New("process is gone")

// ErrNotOurs reports a PID that now belongs to another process.
var ErrNotOurs = errors.New("not the process lbdoctor started")

// ErrOtherBoot reports a record made in another boot: the process it names
// is gone, and what has its PID now is not lbdoctor's.
var ErrOtherBoot = errors.New("the record is from another boot")

// Identify reads the identity of process pid (right after starting it).
func Identify(pid int) (Process, error) {
	start, err := startTicks(pid)
	if err != nil {
		return Process{}, err
	}
	boot, err := netns.BootID()
	if err != nil {
		return Process{}, err
	}
	return Process{PID: pid, StartTicks: start, BootID: boot}, nil
}

// Check reports whether pid is still the process p: nil, ErrGone,
// ErrOtherBoot or ErrNotOurs.
func (p Process) Check() error {
	if p.PID <= 0 || p.StartTicks == 0 || p.BootID == "" {
		return fmt.Errorf("%w: the record does not identify it (pid %d)", ErrNotOurs, p.PID)
	}
	boot, err := netns.BootID()
	if err != nil {
		return err
	}
	if boot != p.BootID {
		// Its PID and start time name another process in this boot, if any.
		return fmt.Errorf("%w (boot id %s, now %s)", ErrOtherBoot, p.BootID, boot)
	}
	start, err := startTicks(p.PID)
	if errors.Is(err, os.ErrNotExist) {
		return ErrGone
	}
	if err != nil {
		return err
	}
	if start != p.StartTicks {
		return fmt.Errorf("%w (start time %d, recorded %d): left alone", ErrNotOurs, start, p.StartTicks)
	}
	return nil
}

// Signal sends SIGTERM to p if it is still the process started. A pidfd is
// opened first and the identity checked after, so a PID reused in between is
// never signalled: the pidfd keeps pointing at the process that was checked.
func (p Process) Signal() error {
	if p.PID <= 0 {
		return fmt.Errorf("%w: the record does not identify it (pid %d)", ErrNotOurs, p.PID)
	}
	fd, err := unix.PidfdOpen(p.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return ErrGone
	}
	if err != nil {
		return fmt.Errorf("open process %d: %w", p.PID, err)
	}
	defer unix.Close(fd)
	if err := p.Check(); err != nil {
		return err
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return ErrGone
		}
		return fmt.Errorf("signal process %d: %w", p.PID, err)
	}
	return nil
}

// startTicks reads field 22 of /proc/PID/stat. The command name (field 2)
// may hold spaces and parentheses, so fields are counted after its last ')'.
func startTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, syscall.ESRCH) {
		err = os.ErrNotExist
	}
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: unreadable /proc stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 { // f[0] is field 3
		return 0, fmt.Errorf("process %d: short /proc stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}
