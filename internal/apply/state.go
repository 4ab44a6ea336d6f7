package apply

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Object is something lbdoctor made (or changed) on a host.
type Object struct {
	Kind string `json:"kind"` // ipvs-service, ipvs-real, sysctl, iptables-rule, nft-table, address
	// What identifies it, by kind: vip+proto; vip+proto+real; key; backend+table+chain+rule; family+table.
	VIP      string   `json:"vip,omitempty"`
	Proto    string   `json:"proto,omitempty"`
	Real     string   `json:"real,omitempty"`
	Key      string   `json:"key,omitempty"`
	Previous string   `json:"previous,omitempty"` // a sysctl's value before lbdoctor set it
	Set      string   `json:"set,omitempty"`      // the value lbdoctor set: teardown restores only while it is still there
	Backend  string   `json:"backend,omitempty"`
	Table    string   `json:"table,omitempty"`
	Chain    string   `json:"chain,omitempty"`
	Rule     []string `json:"rule,omitempty"`
	Family   string   `json:"family,omitempty"`
	Dev      string   `json:"dev,omitempty"` // the interface of an address (Key: ADDR/BITS)
	// Services names the services a change shared by several — a sysctl,
	// an address — was made for (ServiceKey: "TCP 10.1.0.6:8085"): setup's
	// services that need it, or the services --fix's finding named.
	// teardown --vip undoes it only when no other service it names needs
	// it. Absent (an older lbdoctor's record, or a fix no service was
	// named for): it is every service's, and only a whole teardown undoes
	// it. Objects of one service (ipvs-*, rules, tables) name it by VIP.
	Services []string `json:"services,omitempty"`
}

// ServiceKey names a service in Object.Services, as ipvsadm prints it and
// checks.Finding.Services does: "TCP 10.1.0.6:8085".
func ServiceKey(proto string, vip netip.AddrPort) string {
	return strings.ToUpper(proto) + " " + vip.String()
}

// ServiceVIP is the ADDR:PORT of a ServiceKey ("" for one that has none,
// such as "FWM 16").
func ServiceVIP(key string) string {
	_, vip, _ := strings.Cut(key, " ")
	if _, err := netip.ParseAddrPort(vip); err != nil {
		return ""
	}
	return vip
}

// Same reports whether two records name the same object.
func (o Object) Same(p Object) bool {
	o.Previous, p.Previous, o.Set, p.Set = "", "", "", ""
	o.Services, p.Services = nil, nil
	a, _ := json.Marshal(o)
	b, _ := json.Marshal(p)
	return string(a) == string(b)
}

// State is what lbdoctor made in one namespace, and which namespace that
// was. The file is named after the namespace's name, but a name proves
// nothing: it can be deleted and added again (and the new namespace often
// gets the old inode back), and the state dir outlives a reboot, which ends
// every namespace's objects. So the record keeps the namespace's identity —
// inode, cookie (never reused within a boot) and boot id — and LoadState
// compares it with the namespace found under the name now.
type State struct {
	Netns   string   `json:"netns"`
	Inode   uint64   `json:"inode,omitempty"`
	Cookie  uint64   `json:"cookie,omitempty"`
	BootID  string   `json:"boot_id,omitempty"`
	Objects []Object `json:"objects"`

	// Unproven lists what a record that cannot prove its namespace names (an
	// older lbdoctor's record without an identity, or one from another boot):
	// nothing of it is touched, callers name each object, and the next Save
	// forgets them, as teardown forgets a sysctl it leaves.
	Unproven []Object `json:"-"`
	// Why says why Unproven is unproven: "the record at PATH …".
	Why string `json:"-"`
}

// StateDir holds one state file per namespace; LBDOCTOR_STATE_DIR overrides.
func StateDir() string {
	if d := os.Getenv("LBDOCTOR_STATE_DIR"); d != "" {
		return d
	}
	return "/var/lib/lbdoctor"
}

// ErrCorrupt reports a state file that cannot be parsed: it proves nothing,
// so nothing is changed until an operator looks at it (bad input).
var ErrCorrupt = errors.New("corrupt lbdoctor state")

// stateKey names a namespace's state file: its /run/netns name, or its inode.
// A name is a file name in /run/netns (netns.ValidName), so the key never
// leaves StateDir; anything else falls back to the inode.
func stateKey(t netns.Target) string {
	if t.Name != "" && netns.ValidName(t.Name) == nil {
		return "netns-" + t.Name
	}
	if t.IsCurrent() {
		return "host-" + strconv.FormatUint(t.Inode, 10)
	}
	return "netns-inode-" + strconv.FormatUint(t.Inode, 10)
}

// ErrOtherNamespace reports a record made for another namespace than the
// one its name holds now (deleted and added again): it proves nothing here,
// and it may still prove objects in the namespace it was made for, so it is
// kept and nothing is changed (bad input: exit 2, naming the file).
var ErrOtherNamespace = errors.New("record made for another namespace")

type otherNamespaceError struct{ msg string }

func (e *otherNamespaceError) Error() string        { return e.msg }
func (e *otherNamespaceError) Is(target error) bool { return target == ErrOtherNamespace }

// StatePath is the file of t's state.
func StatePath(t netns.Target) string { return filepath.Join(StateDir(), stateKey(t)+".json") }

// identify records what names t beyond its name: set on every state read or
// saved, so a record always says which namespace it is about.
func (s *State) identify(t netns.Target) error {
	cookie, err := t.Cookie()
	if err != nil {
		return fmt.Errorf("identify %s: %w", t, err)
	}
	boot, err := netns.BootID()
	if err != nil {
		return err
	}
	s.Inode, s.Cookie, s.BootID = t.Inode, cookie, boot
	return nil
}

// LoadState reads what lbdoctor made in t (empty when nothing). A record
// whose identity is not t's is ErrOtherNamespace; one that has no identity
// (older lbdoctor), comes from another boot, or has no cookie on a kernel
// that gives namespaces cookies proves nothing: its objects are returned as
// Unproven, never as Objects.
func LoadState(t netns.Target) (*State, error) {
	path := StatePath(t)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read lbdoctor state: %w", err)
	}
	var rec State
	if err == nil {
		if err := json.Unmarshal(data, &rec); err != nil {
			return nil, fmt.Errorf("%s: %w (%v): nothing changed; fix or remove the file", path, ErrCorrupt, err)
		}
		for i, o := range rec.Objects {
			if err := o.validate(); err != nil {
				return nil, fmt.Errorf("%s: %w: object %d: %v: nothing changed; fix or remove the file", path, ErrCorrupt, i+1, err)
			}
		}
	}
	s := &State{Netns: t.String()}
	if err := s.identify(t); err != nil {
		return nil, err
	}
	switch {
	case len(rec.Objects) == 0:
	case rec.Inode == 0 || rec.BootID == "":
		s.Unproven, s.Why = rec.Objects, fmt.Sprintf("the record at %s does not say which namespace it was made for (an older lbdoctor wrote it)", path)
	case rec.BootID != s.BootID:
		// Nothing lbdoctor makes outlives a reboot (services, rules,
		// tables and sysctls are the kernel's runtime state), not even in the
		// host's namespace: what holds those names now, this boot made.
		s.Unproven, s.Why = rec.Objects, fmt.Sprintf("the record at %s is from another boot (%s), and nothing lbdoctor made outlives a reboot", path, rec.BootID)
	case rec.Inode != s.Inode || (rec.Cookie != 0 && s.Cookie != 0 && rec.Cookie != s.Cookie):
		return nil, &otherNamespaceError{fmt.Sprintf("the record at %s was made for another namespace named %s (inode %d cookie %d, now inode %d cookie %d): nothing changed; remove the record if that namespace is gone",
			path, nsName(t), rec.Inode, rec.Cookie, s.Inode, s.Cookie)}
	case rec.Cookie == 0 && s.Cookie != 0:
		// This kernel gives every namespace a cookie, so a record lbdoctor
		// wrote here has one; without it only the inode is left, and a name
		// deleted and added again often gets the old inode back.
		s.Unproven, s.Why = rec.Objects, fmt.Sprintf("the record at %s has no namespace cookie, though this kernel gives namespaces one (it may name another namespace that got the same inode)", path)
	default:
		s.Objects = rec.Objects
	}
	return s, nil
}

// nsName is how the user named t.
func nsName(t netns.Target) string {
	switch {
	case t.Name != "":
		return t.Name
	case t.Spec != "":
		return t.Spec
	}
	return "(lbdoctor's own)"
}

// String names the object for a line of output.
func (o Object) String() string {
	switch o.Kind {
	case "ipvs-service":
		return fmt.Sprintf("ipvs service %s %s", o.Proto, o.VIP)
	case "ipvs-real":
		return fmt.Sprintf("ipvs real %s of %s %s", o.Real, o.Proto, o.VIP)
	case "sysctl":
		return "sysctl " + o.Key
	case "iptables-rule":
		return fmt.Sprintf("%s rule -t %s -A %s %s", o.Backend, o.Table, o.Chain, strings.Join(o.Rule, " "))
	case "nft-table":
		return fmt.Sprintf("nft table %s %s", o.Family, o.Table)
	case "address":
		return fmt.Sprintf("address %s on %s", o.Key, o.Dev)
	}
	return o.Kind
}

// validate checks that a recorded object names one thing teardown can act
// on: a record that parses as JSON can still hold garbage.
func (o Object) validate() error {
	switch o.Kind {
	case "ipvs-service", "ipvs-real":
		if _, err := netip.ParseAddrPort(o.VIP); err != nil {
			return fmt.Errorf("%s vip %q: %w", o.Kind, o.VIP, err)
		}
		if o.Proto != "tcp" && o.Proto != "udp" {
			return fmt.Errorf("%s proto %q: want tcp or udp", o.Kind, o.Proto)
		}
		if _, err := netip.ParseAddrPort(o.Real); o.Kind == "ipvs-real" && err != nil {
			return fmt.Errorf("%s real %q: %w", o.Kind, o.Real, err)
		}
	case "sysctl":
		if o.Key == "" || strings.Contains(o.Key, "/") || strings.Contains(o.Key, "..") || strings.HasPrefix(o.Key, ".") {
			return fmt.Errorf("sysctl key %q", o.Key)
		}
	case "iptables-rule":
		if o.Backend == "" || o.Table == "" || o.Chain == "" || len(o.Rule) == 0 {
			return fmt.Errorf("iptables-rule without backend, table, chain or rule")
		}
	case "nft-table":
		if o.Family == "" || o.Table == "" {
			return fmt.Errorf("nft-table without family or name")
		}
	case "address":
		if _, err := netip.ParsePrefix(o.Key); err != nil || o.Dev == "" || strings.ContainsAny(o.Dev, "/\x00") {
			return fmt.Errorf("address %q on %q: want ADDR/BITS and an interface", o.Key, o.Dev)
		}
	default:
		return fmt.Errorf("unknown kind %q", o.Kind)
	}
	return nil
}

// Save writes the state atomically, with the identity LoadState found (or
// t's, for a state made afresh); an empty state removes the file. Unproven objects are not written: they are forgotten.
func (s *State) Save(t netns.Target) error {
	path := StatePath(t)
	if len(s.Objects) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if s.BootID == "" { // made, not loaded: LoadState identified a loaded one
		if err := s.identify(t); err != nil {
			return fmt.Errorf("save lbdoctor state: %w", err)
		}
	}
	if err := os.MkdirAll(StateDir(), 0o755); err != nil {
		return fmt.Errorf("save lbdoctor state: %w", err)
	}
	data, _ := json.MarshalIndent(s, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("save lbdoctor state: %w", err)
	}
	return os.Rename(tmp, path)
}

// Add records objects (once each). An object already recorded is now also
// made for o's services: a change several services need stays until none
// of them is torn down (none named: every service's).
func (s *State) Add(objs ...Object) {
	for _, o := range objs {
		i := s.index(o)
		if i < 0 {
			s.Objects = append(s.Objects, o)
			continue
		}
		x := &s.Objects[i]
		if len(x.Services) == 0 || len(o.Services) == 0 {
			x.Services = nil
			continue
		}
		for _, k := range o.Services {
			if !slices.Contains(x.Services, k) {
				x.Services = append(x.Services, k)
			}
		}
	}
}

// index is where o is recorded, -1 when it is not.
func (s *State) index(o Object) int {
	return slices.IndexFunc(s.Objects, o.Same)
}

// Release says that the services of vip (ADDR:PORT, any protocol) no
// longer need the recorded objects other services need too: they stay for
// those (teardown --vip removes the ones only vip's services needed).
func (s *State) Release(vip string) {
	for i := range s.Objects {
		x := &s.Objects[i]
		rest := slices.DeleteFunc(slices.Clone(x.Services), func(k string) bool { return ServiceVIP(k) == vip })
		if len(rest) > 0 {
			x.Services = rest
		}
	}
}

// Owns reports whether lbdoctor made o.
func (s *State) Owns(o Object) bool { return s.index(o) >= 0 }

// Remove forgets o.
func (s *State) Remove(o Object) {
	out := s.Objects[:0]
	for _, x := range s.Objects {
		if !x.Same(o) {
			out = append(out, x)
		}
	}
	s.Objects = out
}
