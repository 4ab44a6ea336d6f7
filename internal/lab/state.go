package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

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

// Record is what `lab up` leaves for status, probe and down. It lives on
// /run, like the namespaces: a reboot forgets both.
type Record struct {
	Name      string   `json:"name"`
	Topology  Topology `json:"topology"`
	Proto     string   `json:"proto"`
	Fault     string   `json:"fault"`
	ServerPID int      `json:"server_pid"`
}

// RecordDir is where lab records are kept; LBDOCTOR_LAB_DIR overrides.
func RecordDir() string {
	if d := os.Getenv("LBDOCTOR_LAB_DIR"); d != "" {
		return d
	}
	return "/run/lbdoctor"
}

func recordPath(name string) string { return filepath.Join(RecordDir(), "lab-"+name+".json") }

// Save writes the record.
func (r Record) Save() error {
	if err := os.MkdirAll(RecordDir(), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	return os.WriteFile(recordPath(r.Name), b, 0o644)
}

// ErrNoLab reports a lab that is not up.
var ErrNoLab = errors.New("no such lab")

// LoadRecord reads the record of lab name.
func LoadRecord(name string) (Record, error) {
	var r Record
	b, err := os.ReadFile(recordPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("lab %q is not up (lbdoctor lab up): %w", name, ErrNoLab)
	}
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

// Open finds the namespaces of a built lab.
func Open(name string, topo Topology) (*Lab, error) {
	l := addressed(topo, name)
	for _, h := range []struct {
		t    *netns.Target
		role string
	}{{&l.Switch, "sw"}, {&l.Client, "client"}, {&l.LB, "lb"}, {&l.Real, "real"}} {
		t, err := netns.Resolve(name + "-" + h.role)
		if err != nil {
			return nil, err
		}
		*h.t = t
		l.created = append(l.created, name+"-"+h.role)
	}
	return l, nil
}

// Down removes everything lab name made — also what a crashed `lab up`
// left: its server process, its namespaces, its record.
func Down(name string) ([]string, error) {
	var gone []string
	var errs []error
	if r, err := LoadRecord(name); err == nil && r.ServerPID > 0 {
		if syscall.Kill(r.ServerPID, syscall.SIGTERM) == nil {
			gone = append(gone, fmt.Sprintf("server process %d", r.ServerPID))
		}
	}
	ents, _ := os.ReadDir(netns.RunDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), name+"-") && isRole(strings.TrimPrefix(e.Name(), name+"-")) {
			if err := netns.Delete(e.Name()); err != nil {
				errs = append(errs, err)
				continue
			}
			gone = append(gone, "netns "+e.Name())
		}
	}
	if err := os.Remove(recordPath(name)); err == nil {
		gone = append(gone, "record "+recordPath(name))
	}
	return gone, errors.Join(errs...)
}

func isRole(s string) bool { return s == "sw" || s == "client" || s == "lb" || s == "real" }
