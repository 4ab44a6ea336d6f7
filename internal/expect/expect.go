// Package expect is what an operator meant IPVS to run — the services and
// real servers a keepalived.conf, `ipvsadm -Sn` output or lbdoctor's
// services YAML describe (`check --expect FILE`; internal/setup reads the
// files) — as plain data the ipvs.drift check compares with the kernel's
// IPVS table. It reads nothing itself.
package expect

import (
	"net/netip"

	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// Formats of an expectation file.
const (
	Keepalived = "keepalived.conf"
	Ipvsadm    = "ipvsadm -Sn"
	YAML       = "lbdoctor YAML"
)

// Config is one expectation file, read whole.
type Config struct {
	File     string    `json:"file"`   // as the user named it ("stdin" for -)
	Format   string    `json:"format"` // Keepalived, Ipvsadm or YAML
	Services []Service `json:"services"`
}

// Service is one virtual service the file describes.
type Service struct {
	Proto     string         `json:"proto"` // tcp or udp; "" for a firewall-mark service
	Addr      netip.AddrPort `json:"addr,omitzero"`
	FWMark    uint32         `json:"fwmark,omitempty"`
	Scheduler string         `json:"scheduler"`
	// Persistence is the persistence timeout in seconds (keepalived's
	// persistence_timeout, ipvsadm's -p); 0: not persistent.
	Persistence uint32 `json:"persistence_timeout,omitempty"`
	Line        int    `json:"line"` // where the file gives it
	Reals       []Real `json:"reals"`
}

// Real is one real server of a Service.
type Real struct {
	Addr   netip.AddrPort `json:"addr"`
	Weight int            `json:"weight"`
	Method string         `json:"method"` // ipvs.Masq, ipvs.Route or ipvs.Tunnel
	Line   int            `json:"line"`
}

// Key names the service as ipvs.Service.Key names the kernel's: the two
// are matched by it.
func (s Service) Key() string {
	return ipvs.Service{Proto: s.Proto, Addr: s.Addr, FWMark: s.FWMark}.Key()
}
