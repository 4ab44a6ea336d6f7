package kernel

import (
	"os/exec"

	"golang.org/x/sys/unix"
)

var capNames = map[int]string{
	unix.CAP_NET_ADMIN: "CAP_NET_ADMIN", unix.CAP_SYS_ADMIN: "CAP_SYS_ADMIN", unix.CAP_NET_RAW: "CAP_NET_RAW",
	unix.CAP_BPF: "CAP_BPF", unix.CAP_PERFMON: "CAP_PERFMON", unix.CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
	unix.CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE", unix.CAP_SYS_RESOURCE: "CAP_SYS_RESOURCE",
}

// Capabilities are the calling thread's capabilities that lbdoctor uses,
// read from both 32-bit words of capget.
type Capabilities struct {
	Effective []string `json:"effective"`
	Permitted []string `json:"permitted"`
}

func capData() ([2]unix.CapUserData, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	err := unix.Capget(&hdr, &data[0])
	return data, err
}

// HasCapability reports whether cap is effective for the calling thread.
func HasCapability(c int) bool {
	data, err := capData()
	return err == nil && data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// ReadCapabilities lists the capabilities lbdoctor cares about.
func ReadCapabilities() (Capabilities, error) {
	c := Capabilities{Effective: []string{}, Permitted: []string{}}
	data, err := capData()
	if err != nil {
		return c, err
	}
	for _, n := range []int{unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN, unix.CAP_NET_RAW, unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_PTRACE, unix.CAP_DAC_OVERRIDE, unix.CAP_SYS_RESOURCE} {
		if data[n/32].Effective&(1<<(uint(n)%32)) != 0 {
			c.Effective = append(c.Effective, capNames[n])
		}
		if data[n/32].Permitted&(1<<(uint(n)%32)) != 0 {
			c.Permitted = append(c.Permitted, capNames[n])
		}
	}
	return c, nil
}

// Tools are the programs lbdoctor reads through, and those an operator
// would cross-check with: name → path ("" when absent).
func Tools() map[string]string {
	out := map[string]string{}
	for _, t := range []string{"iptables", "iptables-legacy", "iptables-nft", "iptables-legacy-save", "iptables-nft-save", "nft", "ipvsadm", "conntrack"} {
		p, _ := exec.LookPath(t)
		out[t] = p
	}
	return out
}
