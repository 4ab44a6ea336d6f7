package apply_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

// fakeStep records what happens to it (pure engine logic; real steps are
// tested against real kernels below and in the guest).
type fakeStep struct {
	name   string
	needed bool
	fail   bool
	log    *[]string
}

func (f fakeStep) Describe() string                     { return f.name }
func (f fakeStep) Needed(context.Context) (bool, error) { return f.needed, nil }
func (f fakeStep) Owned() *apply.Object                 { return &apply.Object{Kind: "fake", Key: f.name} }
func (f fakeStep) Undo(context.Context) error           { *f.log = append(*f.log, "undo "+f.name); return nil }
func (f fakeStep) Apply(context.Context) error {
	if f.fail {
		return errors.New("boom")
	}
	*f.log = append(*f.log, "apply "+f.name)
	return nil
}

func TestRunRollsBackInReverse(t *testing.T) {
	var log []string
	steps := []apply.Step{
		fakeStep{"a", true, false, &log}, fakeStep{"skip", false, false, &log},
		fakeStep{"b", true, false, &log}, fakeStep{"c", true, true, &log},
	}
	p, err := apply.Build(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Commands(), ","); got != "a,b,c" {
		t.Fatalf("Build() plan = %s, want a,b,c (skip is not needed)", got)
	}
	_, err = apply.Run(context.Background(), p, apply.Hooks{})
	if !errors.Is(err, apply.ErrRolledBack) || !strings.Contains(err.Error(), `step 3 "c" failed`) {
		t.Errorf("Run() error = %v, want step 3 failed, rolled back", err)
	}
	if got := strings.Join(log, ","); got != "apply a,apply b,undo b,undo a" {
		t.Errorf("Run() did %s, want apply a,apply b,undo b,undo a", got)
	}
}

func TestStateRecordsOwnership(t *testing.T) {
	t.Setenv("LBDOCTOR_STATE_DIR", t.TempDir())
	ns := testkit.Netns(t, "state") // a record names a real namespace's identity
	st, err := apply.LoadState(ns)
	if err != nil || len(st.Objects) != 0 {
		t.Fatalf("LoadState(new) = %+v, %v; want empty", st, err)
	}
	o := apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward", Previous: "0"}
	st.Add(o, o)
	if err := st.Save(ns); err != nil {
		t.Fatal(err)
	}
	st, _ = apply.LoadState(ns)
	if len(st.Objects) != 1 || !st.Owns(apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward"}) || st.Objects[0].Previous != "0" {
		t.Errorf("LoadState() = %+v, want the one sysctl with its previous value", st.Objects)
	}
	st.Remove(o)
	st.Save(ns)
	if st, _ = apply.LoadState(ns); len(st.Objects) != 0 {
		t.Errorf("after Remove, LoadState() = %+v, want empty", st.Objects)
	}
}

// Real steps on a real kernel: a failure injected after every step leaves
// the namespace exactly as it was.
func TestRollbackRestoresTheHost(t *testing.T) {
	ns := testkit.Netns(t, "apply")
	testkit.Sysctl(t, ns, "net.ipv4.ip_forward", "0")
	steps := []apply.Step{
		apply.NewSysctl(ns, "net.ipv4.ip_forward", "1"),
		apply.IptablesRule{NS: ns, Backend: "iptables-nft", Table: "nat", Chain: "POSTROUTING", Rule: []string{"-d", "10.9.0.1/32", "-m", "comment", "--comment", "lbdoctor", "-j", "MASQUERADE"}},
		apply.IptablesRule{NS: ns, Backend: "iptables-legacy", Table: "filter", Chain: "INPUT", Rule: []string{"-s", "10.9.0.2/32", "-j", "ACCEPT"}},
		apply.NftTable{NS: ns, Family: "ip", Name: "lbdtest", Script: "table ip lbdtest {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tct original ip daddr 10.9.0.6 counter masquerade\n\t}\n}\n"},
		apply.Address{NS: ns, Prefix: netip.MustParsePrefix("10.9.0.6/32"), Dev: "lo"},
	}
	before := testkit.HostState(t, ns)
	for k := 1; k <= len(steps); k++ {
		p, err := apply.Build(context.Background(), steps)
		if err != nil {
			t.Fatal(err)
		}
		_, err = apply.Run(context.Background(), p, apply.Hooks{AfterStep: func(n int) error {
			if n == k {
				return fmt.Errorf("injected after step %d", n)
			}
			return nil
		}})
		if !errors.Is(err, apply.ErrRolledBack) {
			t.Fatalf("fail after %d: Run() = %v, want rolled back", k, err)
		}
		if after := testkit.HostState(t, ns); after != before {
			t.Fatalf("fail after step %d: state differs after rollback\n--- before ---\n%s\n--- after ---\n%s", k, before, after)
		}
	}
	p, _ := apply.Build(context.Background(), steps)
	if _, err := apply.Run(context.Background(), p, apply.Hooks{}); err != nil {
		t.Fatal(err)
	}
	if p2, _ := apply.Build(context.Background(), steps); !p2.Empty() {
		t.Errorf("second Build() = %v, want nothing to change", p2.Commands())
	}
}

// Ctrl-C during an apply: the steps already applied are undone — on a real
// namespace's sysctls — and the error carries the signal's cause and
// ErrRolledBack; nothing is left half-applied.
func TestRunRollsBackWhenInterrupted(t *testing.T) {
	ns := testkit.Netns(t, "intr")
	keys := []string{"net.ipv4.ip_forward", "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.all.rp_filter"}
	read := func() string {
		var vals []string
		for _, k := range keys {
			vals = append(vals, strings.TrimSpace(testkit.Run(t, ns, "sysctl", "-n", k)))
		}
		return strings.Join(vals, " ")
	}
	before := read()
	// Values other than the namespace's: a new namespace copies the host's
	// (devconf_inherit_init_net=0), and a host may forward already (podman
	// sets ip_forward=1), when a step that changes nothing is no step.
	var steps []apply.Step
	for i, v := range strings.Fields(before) {
		want := "1"
		if v == "1" {
			want = "0"
		}
		steps = append(steps, apply.NewSysctl(ns, keys[i], want))
	}
	for _, after := range []int{1, 2} {
		t.Run(fmt.Sprintf("after step %d", after), func(t *testing.T) {
			p, err := apply.Build(context.Background(), steps)
			if err != nil || len(p.Steps) != 3 {
				t.Fatalf("Build() = %v, %v; want 3 steps", p, err)
			}
			cause := errors.New("interrupted by SIGINT")
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			// The signal arrives while step `after` runs.
			_, err = apply.Run(ctx, p, apply.Hooks{AfterStep: func(n int) error {
				if n == after {
					cancel(cause)
				}
				return nil
			}})
			if !errors.Is(err, cause) || !errors.Is(err, apply.ErrRolledBack) {
				t.Errorf("Run(interrupted after step %d) = %v, want the cause and ErrRolledBack", after, err)
			}
			if got := read(); got != before {
				t.Errorf("after an interrupted Run, sysctls = %s, want %s (all undone)", got, before)
			}
		})
	}
}

// A change recorded again for another service is made for both; one
// recorded without services (an older lbdoctor's) stays every service's;
// Release drops a VIP's share only while another service needs it.
func TestStateSharedServices(t *testing.T) {
	const a, b = "TCP 10.1.0.6:8085", "TCP 10.1.0.7:80"
	sysctl := func(services ...string) apply.Object {
		return apply.Object{Kind: "sysctl", Key: "net.ipv4.ip_forward", Previous: "0", Set: "1", Services: services}
	}
	tests := []struct {
		name    string
		record  []apply.Object
		release string
		want    []string
	}{
		{"one service", []apply.Object{sysctl(a)}, "", []string{a}},
		{"made again for another", []apply.Object{sysctl(a), sysctl(b), sysctl(a)}, "", []string{a, b}},
		{"older record without services", []apply.Object{sysctl(), sysctl(b)}, "", nil},
		{"made for every service later", []apply.Object{sysctl(a), sysctl()}, "", nil},
		{"released by one of two", []apply.Object{sysctl(a), sysctl(b)}, "10.1.0.7:80", []string{a}},
		{"released by its only service", []apply.Object{sysctl(a)}, "10.1.0.6:8085", []string{a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &apply.State{}
			st.Add(tt.record...)
			if tt.release != "" {
				st.Release(tt.release)
			}
			if len(st.Objects) != 1 || fmt.Sprint(st.Objects[0].Services) != fmt.Sprint(tt.want) || st.Objects[0].Previous != "0" {
				t.Errorf("Add(%v) then Release(%q) = %+v, want one object made for %v with its first Previous", tt.record, tt.release, st.Objects, tt.want)
			}
		})
	}
}
