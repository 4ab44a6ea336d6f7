// Package sysctl reads kernel parameters as seen from a network namespace
// (net.* keys are per namespace), saying when a key does not exist rather
// than reporting a value it does not have.
package sysctl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Value is one key as read in a namespace.
type Value struct {
	Key     string `json:"key"`
	Value   string `json:"value,omitempty"`
	Present bool   `json:"present"`
	// Absent explains a missing key, e.g. that net.ipv4.vs.* exists only once ip_vs is loaded.
	Absent string `json:"absent,omitempty"`
	Error  string `json:"error,omitempty"` // reading failed (not absence)
}

// Snapshot holds the keys read, by name.
type Snapshot map[string]Value

// Keys the doctor reads on every run.
var DefaultKeys = []string{
	"net.ipv4.ip_forward",
	"net.ipv4.vs.conntrack",
}

// Path maps a dotted key to its /proc/sys file.
func Path(key string) string {
	return "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
}

// Read reads keys inside ns.
func Read(ns netns.Target, keys ...string) (Snapshot, error) {
	snap := Snapshot{}
	err := ns.Do(func() error {
		for _, k := range keys {
			snap[k] = readKey(k)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read sysctls in %s: %w", ns, err)
	}
	return snap, nil
}

func readKey(key string) Value {
	v := Value{Key: key}
	data, err := os.ReadFile(Path(key))
	switch {
	case err == nil:
		v.Present = true
		v.Value = strings.TrimSpace(string(data))
	case errors.Is(err, fs.ErrNotExist):
		v.Absent = "no such key"
		if strings.HasPrefix(key, "net.ipv4.vs.") {
			v.Absent = "net.ipv4.vs.* exists only once the ip_vs module is loaded"
		}
	default:
		v.Error = err.Error()
	}
	return v
}
