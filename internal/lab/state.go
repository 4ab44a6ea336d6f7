package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Faults `lab up` can build in, each with the commands an operator would have typed.
const (
	FaultNone           = "none"
	FaultNoSNAT         = "no-snat"
	FaultVSConntrackOff = "vs-conntrack-off"
	FaultIPForwardOff   = "ip-forward-off"
)

// Faults lists them.
var Faults = []string{FaultNone, FaultNoSNAT, FaultVSConntrackOff, FaultIPForwardOff}

// Record is what `lab up` leaves for status, probe and down: the proof of
// what it made. It lives on /run, like the namespaces: a reboot forgets both.
type Record struct {
	Name     string   `json:"name"`
	Topology Topology `json:"topology"`
	Proto    string   `json:"proto"`
	Fault    string   `json:"fault"`
	BootID   string   `json:"boot_id,omitempty"` // the boot lab up ran in: inodes and cookies name a namespace only within it
	Netns    []Made   `json:"netns"`             // the namespaces it made, each before it had its name
	Server   *Process `json:"server,omitempty"`  // the real server process it started
}

// Made is a namespace lab made: its name, the inode it had and its cookie
// (0 on kernels without): a name deleted and added again often gets the
// old inode back, never the old cookie.
type Made struct {
	Name   string `json:"name"`
	Inode  uint64 `json:"inode"`
	Cookie uint64 `json:"cookie,omitempty"`
}

// Is reports whether t is the namespace m was made as. Where the kernel
// gives namespaces cookies, lab up recorded one: a record without (written
// by hand, or edited) names a namespace by inode alone, which a name added
// again often gets back, so it proves nothing.
func (m Made) Is(t netns.Target) (bool, error) {
	if m.Inode != t.Inode {
		return false, nil
	}
	c, err := t.Cookie()
	if err != nil {
		return false, err
	}
	if m.Cookie == 0 {
		return c == 0, nil
	}
	return c == 0 || c == m.Cookie, nil
}

// MaxName is the longest lab name. The lab's namespaces are NAME-client
// and so on (file names, at most 255 bytes); the links inside them have
// fixed names (eth0, lb0, br0), so NAME never reaches an interface name.
const MaxName = 64

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

// ErrBadName reports a lab name lbdoctor refuses: bad input.
var ErrBadName = errors.New("bad lab name")

// ValidName checks a lab name: letters, digits, '_' and '-', starting with a
// letter or digit, at most MaxName bytes. It becomes namespace and file names,
// so nothing else may reach a path.
func ValidName(name string) error {
	if len(name) > MaxName {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadName, len(name), MaxName)
	}
	if !validName.MatchString(name) {
		shown := name
		if len(shown) > 80 {
			shown = shown[:80] + "…"
		}
		return fmt.Errorf("%w %q: use letters, digits, '_' and '-', starting with a letter or digit", ErrBadName, shown)
	}
	return nil
}

// RecordDir is where lab records are kept; LBDOCTOR_LAB_DIR overrides.
func RecordDir() string {
	if d := os.Getenv("LBDOCTOR_LAB_DIR"); d != "" {
		return d
	}
	return "/run/lbdoctor"
}

// RecordPath is the file of lab name's record (name must be valid).
func RecordPath(name string) string { return filepath.Join(RecordDir(), "lab-"+name+".json") }

// Save writes the record atomically, with this boot's id.
func (r Record) Save() error {
	if err := ValidName(r.Name); err != nil {
		return err
	}
	if r.BootID == "" {
		boot, err := netns.BootID()
		if err != nil {
			return fmt.Errorf("save lab record: %w", err)
		}
		r.BootID = boot
	}
	if err := os.MkdirAll(RecordDir(), 0o755); err != nil {
		return fmt.Errorf("save lab record: %w", err)
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	path := RecordPath(r.Name)
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		return fmt.Errorf("save lab record: %w", err)
	}
	return os.Rename(path+".tmp", path)
}

// ErrNoLab reports a lab that is not up.
var ErrNoLab = errors.New("no such lab")

// ErrCorrupt reports a record that cannot be read: it proves nothing, so
// nothing is changed (bad input, naming the file).
var ErrCorrupt = errors.New("corrupt lab record")

// LoadRecord reads the record of lab name.
func LoadRecord(name string) (Record, error) {
	var r Record
	if err := ValidName(name); err != nil {
		return r, err
	}
	path := RecordPath(name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("lab %q is not up (lbdoctor lab up): %w", name, ErrNoLab)
	}
	if err != nil {
		return r, fmt.Errorf("read lab record: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w (%v): remove it once nothing of lab %s is left", path, ErrCorrupt, err, name)
	}
	if r.Name != name {
		return r, fmt.Errorf("%s: %w: it names lab %q", path, ErrCorrupt, r.Name)
	}
	// lab down deletes only the namespaces lab up makes, NAME-ROLE, once
	// each: a record listing any other namespace is not one lab up wrote.
	seen := map[string]bool{}
	for _, m := range r.Netns {
		if !slices.Contains(roleNames(name), m.Name) || seen[m.Name] {
			return r, fmt.Errorf("%s: %w: it lists netns %q, which is not one of lab %s's (%s) or is listed twice: nothing changed; remove it once nothing of lab %s is left",
				path, ErrCorrupt, m.Name, name, strings.Join(roleNames(name), ", "), name)
		}
		seen[m.Name] = true
	}
	return r, nil
}

// Open finds the namespaces of a built lab: each must be the one the record
// says lab up made.
func Open(rec Record) (*Lab, error) {
	l := addressed(rec.Topology, rec.Name)
	for _, h := range []struct {
		t    *netns.Target
		role string
	}{{&l.Switch, "sw"}, {&l.Client, "client"}, {&l.LB, "lb"}, {&l.Real, "real"}} {
		name := rec.Name + "-" + h.role
		t, err := netns.Resolve(name)
		if err != nil {
			return nil, err
		}
		m, ok := rec.made(name)
		if !ok {
			return nil, fmt.Errorf("netns %s is not in the record of lab %s", name, rec.Name)
		}
		if same, err := m.Is(t); err != nil || !same {
			return nil, fmt.Errorf("netns %s is not the one lab %s made (inode or cookie differs)", name, rec.Name)
		}
		*h.t = t
		l.created = append(l.created, t)
	}
	return l, nil
}

// roleNames are the namespaces lab name is made of.
func roleNames(name string) []string {
	var ns []string
	for _, r := range Roles {
		ns = append(ns, name+"-"+r)
	}
	return ns
}

func (r Record) made(name string) (Made, bool) {
	for _, m := range r.Netns {
		if m.Name == name {
			return m, true
		}
	}
	return Made{}, false
}

// Down removes what the record of lab name proves lab made — also after a
// crashed `lab up`, which recorded each object before making it: the server
// process if it is still the one started, each namespace whose name still
// holds the recorded inode and cookie, then the record. Anything else is left and
// reported. before runs for each namespace about to be deleted.
func Down(name string, before func(netns.Target)) (gone, left []string, err error) {
	rec, err := LoadRecord(name)
	if errors.Is(err, ErrNoLab) {
		for _, role := range Roles {
			if _, err := netns.Resolve(name + "-" + role); err == nil {
				left = append(left, fmt.Sprintf("netns %s-%s: no lab record proves lab made it", name, role))
			}
		}
		return nil, left, nil
	}
	if err != nil {
		return nil, nil, err
	}
	boot, err := netns.BootID()
	if err != nil {
		return nil, nil, err
	}
	if rec.BootID != "" && rec.BootID != boot {
		// Inodes, cookies and PIDs start again at each boot: the record
		// proves nothing in this one. Every name it lists is left, named;
		// the record goes.
		why := fmt.Sprintf("the record is from another boot (boot id %s, now %s): left alone", rec.BootID, boot)
		if p := rec.Server; p != nil {
			left = append(left, fmt.Sprintf("process %d: %s", p.PID, why))
		}
		for _, m := range rec.Netns {
			if _, err := netns.Resolve(m.Name); err == nil {
				left = append(left, fmt.Sprintf("netns %s: %s", m.Name, why))
			}
		}
		if err := os.Remove(RecordPath(name)); err != nil {
			return nil, left, fmt.Errorf("remove lab record: %w", err)
		}
		return []string{"record " + RecordPath(name)}, left, nil
	}
	var errs []error
	if p := rec.Server; p != nil {
		switch err := p.Signal(); {
		case err == nil:
			gone = append(gone, fmt.Sprintf("server process %d", p.PID))
		case errors.Is(err, ErrGone):
		case errors.Is(err, ErrNotOurs), errors.Is(err, ErrOtherBoot):
			left = append(left, fmt.Sprintf("process %d: %v", p.PID, err))
		default:
			errs = append(errs, err)
		}
	}
	for i := len(rec.Netns) - 1; i >= 0; i-- {
		m := rec.Netns[i]
		t := netns.Target{Spec: m.Name, Name: m.Name, Inode: m.Inode}
		cur, rerr := netns.Resolve(m.Name)
		if rerr != nil {
			continue // gone already (or never named: a crash between record and name)
		}
		switch same, err := m.Is(cur); {
		case err != nil:
			errs = append(errs, err)
			continue
		case !same && cur.Inode != m.Inode:
			left = append(left, fmt.Sprintf("netns %s: not made by this lab (inode differs)", m.Name))
			continue
		case !same && m.Cookie == 0:
			left = append(left, fmt.Sprintf("netns %s: the record has no namespace cookie, though this kernel gives namespaces one: not proven this lab made it", m.Name))
			continue
		case !same:
			left = append(left, fmt.Sprintf("netns %s: not made by this lab (cookie differs: the name was added again and got the old inode)", m.Name))
			continue
		}
		if before != nil {
			before(cur)
		}
		switch err := t.Delete(); {
		case err == nil:
			gone = append(gone, "netns "+m.Name)
		case errors.Is(err, netns.ErrNotOwned):
			left = append(left, fmt.Sprintf("netns %s: not made by this lab (inode differs)", m.Name))
		default:
			errs = append(errs, err)
		}
	}
	for _, role := range Roles {
		n := name + "-" + role
		if _, ok := rec.made(n); !ok {
			if _, err := netns.Resolve(n); err == nil {
				left = append(left, fmt.Sprintf("netns %s: not in the lab record", n))
			}
		}
	}
	if len(errs) > 0 {
		return gone, left, errors.Join(errs...) // the record stays for another try
	}
	if err := os.Remove(RecordPath(name)); err == nil {
		gone = append(gone, "record "+RecordPath(name))
	}
	return gone, left, nil
}
