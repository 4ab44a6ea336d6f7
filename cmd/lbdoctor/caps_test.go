package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// Without CAP_NET_RAW iptables-legacy-save cannot open its raw socket and
// says "Permission denied (you must be root)": check names the capability
// the layer it could not read lacked, as README's Privileges say.
func TestCheckNamesNetRawForLegacyRules(t *testing.T) {
	testkit.RequireRoot(t)
	ns := testkit.Netns(t, "raw")
	testkit.Run(t, ns, "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	cmd := exec.Command("setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", "--",
		testkit.LbdoctorBinary(t), "check", "--netns", ns.Name, "--watch", "0", "-o", "json")
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() > 1) {
		t.Fatalf("setpriv lbdoctor check: %v", err)
	}
	var rep struct {
		Errors map[string]string `json:"errors"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("check -o json without CAP_NET_RAW: %v\n%s", err, out)
	}
	if why := rep.Errors["rules"]; !strings.Contains(why, "reading iptables-legacy rules needs CAP_NET_RAW") {
		t.Errorf("check without CAP_NET_RAW: errors.rules = %q, want it to name CAP_NET_RAW", why)
	}
}
