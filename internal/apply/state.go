package apply

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Object is something lbdoctor made (or changed) on a host.
type Object struct {
	Kind string `json:"kind"` // ipvs-service, ipvs-real, sysctl, iptables-rule, nft-table
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
}

// Same reports whether two records name the same object.
func (o Object) Same(p Object) bool {
	o.Previous, p.Previous, o.Set, p.Set = "", "", "", ""
	a, _ := json.Marshal(o)
	b, _ := json.Marshal(p)
	return string(a) == string(b)
}

// State is what lbdoctor made in one namespace.
type State struct {
	Netns   string   `json:"netns"`
	Objects []Object `json:"objects"`
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

// LoadState reads what lbdoctor made in t (empty when nothing).
func LoadState(t netns.Target) (*State, error) {
	s := &State{Netns: t.String()}
	path := filepath.Join(StateDir(), stateKey(t)+".json")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lbdoctor state: %w", err)
	}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("%s: %w (%v): nothing changed; fix or remove the file", path, ErrCorrupt, err)
	}
	for i, o := range s.Objects {
		if err := o.validate(); err != nil {
			return nil, fmt.Errorf("%s: %w: object %d: %v: nothing changed; fix or remove the file", path, ErrCorrupt, i+1, err)
		}
	}
	return s, nil
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
	default:
		return fmt.Errorf("unknown kind %q", o.Kind)
	}
	return nil
}

// Save writes the state atomically; an empty state removes the file.
func (s *State) Save(t netns.Target) error {
	path := filepath.Join(StateDir(), stateKey(t)+".json")
	if len(s.Objects) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
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

// Add records objects (once each).
func (s *State) Add(objs ...Object) {
	for _, o := range objs {
		if !s.Owns(o) {
			s.Objects = append(s.Objects, o)
		}
	}
}

// Owns reports whether lbdoctor made o.
func (s *State) Owns(o Object) bool {
	for _, x := range s.Objects {
		if x.Same(o) {
			return true
		}
	}
	return false
}

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
