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
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
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
	"net.ipv6.conf.all.forwarding", // IPv6's one forwarding switch
	"net.ipv4.vs.conntrack",
	"net.ipv4.vs.conn_reuse_mode",
	"net.ipv4.vs.expire_nodest_conn",
	"net.ipv4.vs.expire_quiescent_template",
	"net.ipv4.vs.snat_reroute",
	"net.netfilter.nf_conntrack_max",
	"net.netfilter.nf_conntrack_count",
	"net.netfilter.nf_conntrack_tcp_be_liberal",
	"net.netfilter.nf_conntrack_tcp_loose",
	// The idle gaps an IPVS timeout is judged against (ipvs.timeouts).
	"net.ipv4.tcp_keepalive_time",
	"net.netfilter.nf_conntrack_tcp_timeout_established",
	"net.netfilter.nf_conntrack_udp_timeout_stream",
}

// InterfaceKeys are read for "all", "default" and every interface.
var InterfaceKeys = []string{"forwarding", "rp_filter", "send_redirects", "accept_redirects", "arp_ignore", "arp_announce"}

// ReadAll reads DefaultKeys and InterfaceKeys of every interface of ns.
func ReadAll(ns netns.Target) (Snapshot, error) {
	snap := Snapshot{}
	err := ns.Do(func() error {
		for _, k := range DefaultKeys {
			snap[k] = readKey(k)
		}
		ents, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		for _, e := range ents {
			for _, k := range InterfaceKeys {
				key := "net.ipv4.conf." + e.Name() + "." + k
				snap[key] = readKey(key)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read sysctls in %s: %w", ns, err)
	}
	return snap, nil
}

// confPrefixes are the keys whose next word is an interface name, which
// may hold dots (eth0.100, a VLAN): /proc/sys keeps such a name as one
// directory, and sysctl(8) writes its dots as '/'. A key of this package
// names the interface as it is: net.ipv4.conf.eth0.100.rp_filter.
var confPrefixes = []string{"net.ipv4.conf.", "net.ipv6.conf."}

// splitConf splits a per-interface key into its prefix, interface and
// setting (the last word: no setting has a dot).
func splitConf(key string) (prefix, dev, leaf string, ok bool) {
	for _, p := range confPrefixes {
		if rest, found := strings.CutPrefix(key, p); found {
			if i := strings.LastIndexByte(rest, '.'); i > 0 {
				return p, rest[:i], rest[i+1:], true
			}
		}
	}
	return "", "", "", false
}

// Path maps a dotted key to its /proc/sys file: net.ipv4.conf.eth0.100.rp_filter
// is /proc/sys/net/ipv4/conf/eth0.100/rp_filter.
func Path(key string) string {
	if p, dev, leaf, ok := splitConf(key); ok {
		return "/proc/sys/" + strings.ReplaceAll(p, ".", "/") + dev + "/" + leaf
	}
	return "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
}

// Command is the sysctl(8) command line that sets key to value, quoted
// for a shell.
func Command(key, value string) string {
	return "sysctl -w " + shellquote.Quote(Arg(key)+"="+value)
}

// Arg is key as sysctl(8) takes it: the dots of an interface name written
// as '/' (net.ipv4.conf.eth0/100.rp_filter); other keys as they are.
func Arg(key string) string {
	if p, dev, leaf, ok := splitConf(key); ok {
		return p + strings.ReplaceAll(dev, ".", "/") + "." + leaf
	}
	return key
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
		switch {
		case strings.HasPrefix(key, "net.ipv4.vs."):
			v.Absent = "net.ipv4.vs.* exists only once the ip_vs module is loaded"
		case strings.HasPrefix(key, "net.netfilter.nf_conntrack"):
			v.Absent = "net.netfilter.nf_conntrack_* exists only once nf_conntrack is loaded"
		}
	default:
		v.Error = err.Error()
	}
	return v
}
