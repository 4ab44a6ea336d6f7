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

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
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

// ErrNotNetns reports a --netns that exists but is not a network namespace
// (a regular file, a directory, /proc/self/ns/mnt): bad input.
var ErrNotNetns = errors.New("not a network namespace")

// ErrNotOwned reports a namespace that is not the one a record names: its
// name now holds another namespace, so lbdoctor leaves it.
var ErrNotOwned = errors.New("not the recorded namespace")

// MaxName is the longest /run/netns name: a file name (NAME_MAX).
const MaxName = 255

// maxSpec caps --netns (PATH_MAX): longer is no path the kernel opens.
const maxSpec = 4096

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
// namespace: "ip netns exec lb ", "nsenter -t 42 -n ", or "" for the current
// one. Names and paths are shell-quoted: a namespace may be called anything.
func (t Target) ExecPrefix() string {
	switch {
	case t.IsCurrent():
		return ""
	case t.Name != "":
		return "ip netns exec " + shellquote.Quote(t.Name) + " "
	case strings.HasPrefix(t.Spec, "pid:"):
		return "nsenter -t " + shellquote.Quote(strings.TrimPrefix(t.Spec, "pid:")) + " -n "
	default:
		return "nsenter " + shellquote.Quote("--net="+t.Path) + " "
	}
}

// IsCurrent reports whether the target is the caller's own namespace, so no
// switch is needed.
func (t Target) IsCurrent() bool { return t.Spec == "" }

// ValidName checks a /run/netns name the way `ip netns` does: a file name
// directly in /run/netns (no "/", not "." or "..", at most NAME_MAX bytes),
// so no name reaches outside the directory.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("empty netns name")
	case len(name) > MaxName:
		return fmt.Errorf("netns name of %d bytes: at most %d", len(name), MaxName)
	case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("netns name %q: a name in %s has no '/' and is not . or ..", name, RunDir)
	}
	return nil
}

// Resolve turns "", "NAME", "/path" or "pid:N" into a Target. Whatever the
// form, the file must be a network namespace (checked with NS_GET_NSTYPE on
// the opened file): anything else is ErrNotFound or ErrNotNetns, bad input.
func Resolve(spec string) (Target, error) {
	t := Target{Spec: spec}
	shown := short(spec)
	if len(spec) > maxSpec {
		return t, fmt.Errorf("netns %s: %d bytes, longer than any path (%d): %w", shown, len(spec), maxSpec, ErrNotFound)
	}
	switch {
	case spec == "":
		t.Path = "/proc/thread-self/ns/net"
	case strings.HasPrefix(spec, "pid:"):
		pid, err := strconv.Atoi(strings.TrimPrefix(spec, "pid:"))
		if err != nil || pid <= 0 || strings.HasPrefix(spec, "pid:+") {
			return t, fmt.Errorf("netns %s: pid:N needs a positive process id: %w", shown, ErrNotFound)
		}
		t.Path = fmt.Sprintf("/proc/%d/ns/net", pid)
	case strings.Contains(spec, "/"):
		t.Path = spec
	default:
		if err := ValidName(spec); err != nil {
			return t, fmt.Errorf("netns %s: %v: %w", shown, err, ErrNotFound)
		}
		t.Name = spec
		t.Path = filepath.Join(RunDir, spec)
	}
	ino, err := netnsInode(t.Path)
	if err != nil {
		return t, fmt.Errorf("netns %s: %w", shown, err)
	}
	t.Inode = ino
	if t.Name == "" && t.Spec != "" {
		t.Name = nameOf(t.Inode)
	}
	return t, nil
}

// short keeps a user's value readable in a one-line error.
func short(s string) string {
	if len(s) > 80 {
		return strconv.Quote(s[:80]) + "…"
	}
	return strconv.Quote(s)
}

// netnsInode opens path and returns its inode if it is a network namespace.
// Only a regular file is opened (an nsfs file is one): opening a FIFO would
// block, opening a device could start it.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		switch {
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return 0, fmt.Errorf("stat %s: %w", path, err) // a privilege: exit 3
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
			return 0, fmt.Errorf("%w (%s)", ErrNotFound, path)
		default: // ENOTDIR, ENAMETOOLONG, ELOOP: no such file either
			return 0, fmt.Errorf("%s: %v: %w", path, err, ErrNotFound)
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("%s is %s, %w", path, input.FileKind(st.Mode), ErrNotNetns)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is a regular file, %w", path, ErrNotNetns)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return 0, fmt.Errorf("%s: NS_GET_NSTYPE: %v: %w", path, err, ErrNotNetns)
	}
	if typ != unix.CLONE_NEWNET {
		return 0, fmt.Errorf("%s is a %s namespace, %w", path, nsKind(typ), ErrNotNetns)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

func nsKind(typ int) string {
	for flag, name := range map[int]string{unix.CLONE_NEWNS: "mnt", unix.CLONE_NEWUTS: "uts", unix.CLONE_NEWIPC: "ipc",
		unix.CLONE_NEWUSER: "user", unix.CLONE_NEWPID: "pid", unix.CLONE_NEWCGROUP: "cgroup", unix.CLONE_NEWTIME: "time"} {
		if typ == flag {
			return name
		}
	}
	return fmt.Sprintf("type %#x", typ)
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
		h, err := t.open()
		if err != nil {
			errc <- err
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
	return t.open()
}

// open opens the namespace and checks it is still the one Resolve found: a
// name deleted and made again in between is another namespace (ErrNotOwned).
func (t Target) open() (vnetns.NsHandle, error) {
	h, err := vnetns.GetFromPath(t.Path)
	if err != nil {
		return h, fmt.Errorf("open %s: %w", t, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return vnetns.None(), fmt.Errorf("open %s: %w", t, err)
	}
	if t.Inode != 0 && st.Ino != t.Inode {
		h.Close()
		return vnetns.None(), fmt.Errorf("open %s: it is another namespace now (inode %d, resolved %d): %w", t, st.Ino, t.Inode, ErrNotOwned)
	}
	return h, nil
}

// Create makes a new named namespace (like `ip netns add NAME`) with lo up,
// without moving the caller into it.
func Create(name string) (Target, error) { return CreateRecorded(name, nil) }

// CreateRecorded is Create that calls record with the new namespace's inode
// after the namespace exists and before it has its name, on a thread inside
// it (so record can read more of its identity, ThreadCookie): whoever records
// what it made (lab) has the proof before the object can be found, so a crash
// at any point leaves nothing unrecorded. A name that exists already is an
// error, never adopted; on error only what this call made is removed.
func CreateRecorded(name string, record func(inode uint64) error) (Target, error) {
	if err := ValidName(name); err != nil {
		return Target{}, fmt.Errorf("create netns: %w", err)
	}
	path := filepath.Join(RunDir, name)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread ends up in the new netns
		if err := os.MkdirAll(RunDir, 0o755); err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("create netns %s: unshare: %w", name, err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		var st unix.Stat_t
		if err := unix.Stat(self, &st); err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		if record != nil {
			if err := record(st.Ino); err != nil {
				errc <- fmt.Errorf("create netns %s: record it: %w", name, err)
				return
			}
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		f.Close()
		if err := unix.Mount(self, path, "bind", unix.MS_BIND, ""); err != nil {
			os.Remove(path) // the empty file this call made, nothing else
			errc <- fmt.Errorf("create netns %s: bind %s: %w", name, path, err)
			return
		}
		if err := setLinkUp("lo"); err != nil {
			Target{Name: name, Path: path, Inode: st.Ino}.Delete()
			errc <- err
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return Target{}, err
	}
	return Resolve(name)
}

// Delete removes the named namespace t (like `ip netns del`) if its name
// still holds the namespace t resolved to: a name someone else reused is
// left alone (ErrNotOwned). Already gone is no error.
func (t Target) Delete() error {
	if t.Name == "" {
		return fmt.Errorf("delete %s: it has no /run/netns name", t)
	}
	path := filepath.Join(RunDir, t.Name)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("delete netns %s: %w", t.Name, err)
	}
	if st.Ino != t.Inode || !isNsfs(path) {
		return fmt.Errorf("delete netns %s: inode %d, recorded %d: %w", t.Name, st.Ino, t.Inode, ErrNotOwned)
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete netns %s: unmount: %w", t.Name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", t.Name, err)
	}
	return nil
}

func isNsfs(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}

// Cookie is the namespace's cookie (SO_NETNS_COOKIE, Linux 5.14): unlike its
// inode, which the kernel gives to the next namespace once this one is gone
// (delete a namespace and add one under the same name, and it often gets the
// same inode), a cookie is never reused within a boot. 0 when the kernel has
// no cookies: the inode is then all there is.
func (t Target) Cookie() (uint64, error) {
	var cookie uint64
	err := t.Do(func() (err error) {
		cookie, err = ThreadCookie()
		if err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
		return nil
	})
	return cookie, err
}

// ThreadCookie is the cookie of the calling thread's namespace (0 without
// cookies): what a CreateRecorded record function reads for the new one.
func ThreadCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return cookie, nil
}

// BootID is this boot's id: an inode or a cookie names a namespace only
// within one boot, and no namespace outlives it.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
