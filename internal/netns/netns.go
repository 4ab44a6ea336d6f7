// Package netns names a network namespace the way an operator does (a
// /run/netns name, a path, or pid:N) and runs functions inside it on a locked
// OS thread. Every probe reaches a namespace through this one helper.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	vnetns "github.com/vishvananda/netns"
)

func init() {
	// Keep the main goroutine on the main thread so that no Do or Create ever
	// runs on it: a thread that joins a namespace is thrown away afterwards,
	// but the main thread cannot be, and /proc/PID/ns/net follows it.
	runtime.LockOSThread()
}

// RunDir is where `ip netns` keeps named namespaces.
const RunDir = "/run/netns"

// ErrNotFound reports a namespace that does not exist: bad input.
var ErrNotFound = errors.New("no such network namespace")

// Target is a resolved network namespace.
type Target struct {
	Spec  string `json:"spec"`           // as the user gave it ("" for the current one)
	Name  string `json:"name,omitempty"` // /run/netns name, when it has one
	Path  string `json:"path"`           // a path that opens it
	Inode uint64 `json:"inode"`          // its identity (what drop events carry)
}

// String names the namespace for evidence lines: "netns lb", "current netns".
func (t Target) String() string {
	switch {
	case t.Name != "":
		return "netns " + t.Name
	case t.Spec == "":
		return "current netns"
	default:
		return "netns " + t.Spec
	}
}

// ExecPrefix is what an operator types before a command to run it in the
// namespace: "ip netns exec lb ", "nsenter -t 42 -n ", or "" for the current one.
func (t Target) ExecPrefix() string {
	switch {
	case t.IsCurrent():
		return ""
	case t.Name != "":
		return "ip netns exec " + t.Name + " "
	case strings.HasPrefix(t.Spec, "pid:"):
		return "nsenter -t " + strings.TrimPrefix(t.Spec, "pid:") + " -n "
	default:
		return "nsenter --net=" + t.Path + " "
	}
}

// IsCurrent reports whether the target is the caller's own namespace, so no
// switch is needed.
func (t Target) IsCurrent() bool { return t.Spec == "" }

// Resolve turns "", "NAME", "/path" or "pid:N" into a Target.
func Resolve(spec string) (Target, error) {
	t := Target{Spec: spec}
	switch {
	case spec == "":
		t.Path = "/proc/thread-self/ns/net"
	case strings.HasPrefix(spec, "pid:"):
		pid, err := strconv.Atoi(strings.TrimPrefix(spec, "pid:"))
		if err != nil || pid <= 0 {
			return t, fmt.Errorf("netns %q: pid:N needs a positive process id: %w", spec, ErrNotFound)
		}
		t.Path = fmt.Sprintf("/proc/%d/ns/net", pid)
	case strings.Contains(spec, "/"):
		t.Path = spec
	default:
		t.Name = spec
		t.Path = filepath.Join(RunDir, spec)
	}
	var st unix.Stat_t
	if err := unix.Stat(t.Path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return t, fmt.Errorf("netns %q: %w (%s)", spec, ErrNotFound, t.Path)
		}
		return t, fmt.Errorf("netns %q: stat %s: %w", spec, t.Path, err)
	}
	t.Inode = st.Ino
	if t.Name == "" && t.Spec != "" {
		t.Name = nameOf(t.Inode)
	}
	if t.Spec != "" && !isNetns(t.Path) {
		return t, fmt.Errorf("netns %q: %s is not a network namespace: %w", spec, t.Path, ErrNotFound)
	}
	return t, nil
}

// isNetns checks the file really is a netns (a bind mount or an nsfs link).
func isNetns(path string) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return false
	}
	return fs.Type == unix.NSFS_MAGIC
}

// NameOf finds the /run/netns name of a namespace inode, if any.
func NameOf(inode uint64) string { return nameOf(inode) }

func nameOf(inode uint64) string {
	ents, _ := os.ReadDir(RunDir)
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(RunDir, e.Name()), &st) == nil && st.Ino == inode {
			return e.Name()
		}
	}
	return ""
}

// Do runs fn on an OS thread that has joined the target namespace. The thread
// is thrown away afterwards (the goroutine exits locked), so a namespace can
// never leak into other goroutines.
func (t Target) Do(fn func() error) error {
	if t.IsCurrent() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := vnetns.GetFromPath(t.Path)
		if err != nil {
			errc <- fmt.Errorf("open %s: %w", t, err)
			return
		}
		defer h.Close()
		if err := vnetns.Set(h); err != nil {
			errc <- fmt.Errorf("enter %s: %w", t, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Handle opens the namespace for APIs that take a netns handle or fd.
func (t Target) Handle() (vnetns.NsHandle, error) {
	if t.IsCurrent() {
		return vnetns.Get()
	}
	h, err := vnetns.GetFromPath(t.Path)
	if err != nil {
		return h, fmt.Errorf("open %s: %w", t, err)
	}
	return h, nil
}

// Create makes a new named namespace (like `ip netns add NAME`) with lo up,
// without moving the caller into it.
func Create(name string) (Target, error) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread ends up in the new netns
		h, err := vnetns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		h.Close()
		errc <- setLinkUp("lo")
	}()
	if err := <-errc; err != nil {
		vnetns.DeleteNamed(name)
		return Target{}, err
	}
	return Resolve(name)
}

// Delete removes a named namespace made by Create (like `ip netns del`).
func Delete(name string) error {
	if err := vnetns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}
