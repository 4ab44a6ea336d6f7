package apply

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/proto"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/probes/rules"
	"github.com/lbdoctor/lbdoctor/probes/sysctl"
)

// Remove turns a step that makes something into the step that removes it:
// needed when the thing is there, applied by undoing, undone by redoing.
func Remove(s Step) Step { return removal{s} }

type removal struct{ s Step }

func (r removal) Describe() string { return undoCommand(r.s) }
func (r removal) Needed(ctx context.Context) (bool, error) {
	n, err := r.s.Needed(ctx)
	return !n, err
}
func (r removal) Apply(ctx context.Context) error { return r.s.Undo(ctx) }
func (r removal) Undo(ctx context.Context) error  { return r.s.Apply(ctx) }
func (r removal) Owned() *Object                  { return nil }

// undoer is a step that can describe its own undo as a command.
type undoer interface{ DescribeUndo() string }

func undoCommand(s Step) string {
	if u, ok := s.(undoer); ok {
		return u.DescribeUndo()
	}
	return "undo: " + s.Describe()
}

// IPVSService is a virtual service (`ipvsadm -A`).
type IPVSService struct {
	NS        netns.Target
	Proto     string // tcp or udp
	VIP       netip.AddrPort
	Scheduler string
}

func (s IPVSService) svc() *mobyipvs.Service {
	return &mobyipvs.Service{Address: net.IP(s.VIP.Addr().AsSlice()), Port: s.VIP.Port(), Protocol: uint16(proto.Number(s.Proto)),
		AddressFamily: syscall.AF_INET, SchedName: s.Scheduler, Netmask: 0xffffffff}
}

func ipvsHandle(ns netns.Target) (*mobyipvs.Handle, error) {
	path := ns.Path
	if ns.IsCurrent() {
		path = ""
	}
	h, err := mobyipvs.New(path)
	if err != nil {
		return nil, fmt.Errorf("open IPVS in %s: %w", ns, err)
	}
	return h, nil
}

func (s IPVSService) Describe() string {
	return fmt.Sprintf("%sipvsadm -A %s %s -s %s", s.NS.ExecPrefix(), proto.IpvsadmFlag(s.Proto), s.VIP, shellquote.Quote(s.Scheduler))
}
func (s IPVSService) DescribeUndo() string {
	return fmt.Sprintf("%sipvsadm -D %s %s", s.NS.ExecPrefix(), proto.IpvsadmFlag(s.Proto), s.VIP)
}
func (s IPVSService) Needed(context.Context) (bool, error) {
	h, err := ipvsHandle(s.NS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	return !h.IsServicePresent(s.svc()), nil
}
func (s IPVSService) Apply(context.Context) error {
	h, err := ipvsHandle(s.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.NewService(s.svc())
}
func (s IPVSService) Undo(context.Context) error {
	h, err := ipvsHandle(s.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.DelService(s.svc())
}
func (s IPVSService) Owned() *Object {
	return &Object{Kind: "ipvs-service", VIP: s.VIP.String(), Proto: s.Proto, Key: s.Scheduler}
}

// RemoveIPVSService deletes a service lbdoctor made, unless it now holds a
// real server lbdoctor did not add: deleting the service would delete that
// real too, so the service stays (Left says so). Reals are what the record
// lists for the service; teardown removes them in steps before this one.
type RemoveIPVSService struct {
	Service IPVSService
	Reals   []netip.AddrPort
	left    *string
}

// NewRemoveIPVSService makes the step that undoes a recorded service.
func NewRemoveIPVSService(s IPVSService, reals []netip.AddrPort) *RemoveIPVSService {
	return &RemoveIPVSService{Service: s, Reals: reals, left: new(string)}
}

func (r *RemoveIPVSService) Describe() string     { return r.Service.DescribeUndo() }
func (r *RemoveIPVSService) DescribeUndo() string { return r.Service.Describe() }
func (r *RemoveIPVSService) Needed(context.Context) (bool, error) {
	*r.left = ""
	h, err := ipvsHandle(r.Service.NS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	if !h.IsServicePresent(r.Service.svc()) {
		return false, nil
	}
	dsts, err := h.GetDestinations(r.Service.svc())
	if err != nil {
		return false, err
	}
	var foreign []string
	for _, d := range dsts {
		a, _ := netip.AddrFromSlice(d.Address)
		if ap := netip.AddrPortFrom(a.Unmap(), d.Port); !slices.Contains(r.Reals, ap) {
			foreign = append(foreign, ap.String())
		}
	}
	if len(foreign) > 0 {
		*r.left = fmt.Sprintf("ipvs service %s %s in %s: it has real servers lbdoctor did not add (%s)", r.Service.Proto, r.Service.VIP, r.Service.NS, strings.Join(foreign, ", "))
		return false, nil
	}
	return true, nil
}
func (r *RemoveIPVSService) Apply(ctx context.Context) error { return r.Service.Undo(ctx) }
func (r *RemoveIPVSService) Undo(ctx context.Context) error  { return r.Service.Apply(ctx) }
func (r *RemoveIPVSService) Owned() *Object                  { return nil }

// Left says why Needed left the service ("" when it did not).
func (r *RemoveIPVSService) Left() string { return *r.left }

// IPVSReal is a masquerade real server of a service (`ipvsadm -a … -m`).
type IPVSReal struct {
	Service IPVSService
	Real    netip.AddrPort
	Weight  int
}

func (r IPVSReal) dest() *mobyipvs.Destination {
	return &mobyipvs.Destination{Address: net.IP(r.Real.Addr().AsSlice()), Port: r.Real.Port(), Weight: r.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET}
}

func (r IPVSReal) Describe() string {
	s := r.Service
	return fmt.Sprintf("%sipvsadm -a %s %s -r %s -m -w %d", s.NS.ExecPrefix(), proto.IpvsadmFlag(s.Proto), s.VIP, r.Real, r.Weight)
}
func (r IPVSReal) DescribeUndo() string {
	s := r.Service
	return fmt.Sprintf("%sipvsadm -d %s %s -r %s", s.NS.ExecPrefix(), proto.IpvsadmFlag(s.Proto), s.VIP, r.Real)
}
func (r IPVSReal) Needed(context.Context) (bool, error) {
	h, err := ipvsHandle(r.Service.NS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	if !h.IsServicePresent(r.Service.svc()) {
		return true, nil
	}
	dsts, err := h.GetDestinations(r.Service.svc())
	if err != nil {
		return false, err
	}
	for _, d := range dsts {
		a, _ := netip.AddrFromSlice(d.Address)
		if netip.AddrPortFrom(a.Unmap(), d.Port) == r.Real {
			return false, nil
		}
	}
	return true, nil
}
func (r IPVSReal) Apply(context.Context) error {
	h, err := ipvsHandle(r.Service.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.NewDestination(r.Service.svc(), r.dest())
}
func (r IPVSReal) Undo(context.Context) error {
	h, err := ipvsHandle(r.Service.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.DelDestination(r.Service.svc(), r.dest())
}
func (r IPVSReal) Owned() *Object {
	return &Object{Kind: "ipvs-real", VIP: r.Service.VIP.String(), Proto: r.Service.Proto, Real: r.Real.String(), Key: fmt.Sprint(r.Weight)}
}

// Sysctl sets a key; Undo puts back the value it found.
type Sysctl struct {
	NS       netns.Target
	Key      string
	Value    string
	previous *string // read by Needed, so the plan knows what it replaces
	// Services are the services (ServiceKey) it is set for: Object.Services.
	Services []string
}

// NewSysctl makes a Sysctl step.
func NewSysctl(ns netns.Target, key, value string) *Sysctl {
	return &Sysctl{NS: ns, Key: key, Value: value, previous: new(string)}
}

func (s *Sysctl) Describe() string     { return s.NS.ExecPrefix() + sysctl.Command(s.Key, s.Value) }
func (s *Sysctl) DescribeUndo() string { return s.NS.ExecPrefix() + sysctl.Command(s.Key, *s.previous) }
func (s *Sysctl) Needed(context.Context) (bool, error) {
	snap, err := sysctl.Read(s.NS, s.Key)
	if err != nil {
		return false, err
	}
	v := snap[s.Key]
	if !v.Present {
		return false, fmt.Errorf("sysctl %s: %s%s", s.Key, v.Absent, v.Error)
	}
	*s.previous = v.Value
	return v.Value != s.Value, nil
}
func (s *Sysctl) write(v string) error {
	return s.NS.Do(func() error { return os.WriteFile(sysctl.Path(s.Key), []byte(v), 0o644) })
}
func (s *Sysctl) Apply(ctx context.Context) error {
	if *s.previous == "" {
		if _, err := s.Needed(ctx); err != nil {
			return err
		}
	}
	return s.write(s.Value)
}
func (s *Sysctl) Undo(context.Context) error { return s.write(*s.previous) }
func (s *Sysctl) Owned() *Object {
	return &Object{Kind: "sysctl", Key: s.Key, Previous: *s.previous, Set: s.Value, Services: s.Services}
}

// RestoreSysctl puts back the value a sysctl had before lbdoctor set it, but
// only while it still holds the value lbdoctor set: a value changed since is
// someone else's and stays (Left says so), as does one a record cannot prove
// (an older record without the value set).
type RestoreSysctl struct {
	NS                 netns.Target
	Key, Previous, Set string
	left               *string
}

// NewRestoreSysctl makes the step that undoes a recorded sysctl.
func NewRestoreSysctl(ns netns.Target, key, previous, set string) *RestoreSysctl {
	return &RestoreSysctl{NS: ns, Key: key, Previous: previous, Set: set, left: new(string)}
}

func (s *RestoreSysctl) Describe() string {
	return s.NS.ExecPrefix() + sysctl.Command(s.Key, s.Previous)
}
func (s *RestoreSysctl) DescribeUndo() string {
	return s.NS.ExecPrefix() + sysctl.Command(s.Key, s.Set)
}
func (s *RestoreSysctl) Needed(context.Context) (bool, error) {
	snap, err := sysctl.Read(s.NS, s.Key)
	if err != nil {
		return false, err
	}
	v := snap[s.Key]
	*s.left = ""
	switch {
	case !v.Present || v.Value == s.Previous:
		return false, nil
	case s.Set == "":
		*s.left = fmt.Sprintf("sysctl %s=%s in %s: the record does not say which value lbdoctor set; it was %s before (%s%s)",
			s.Key, v.Value, s.NS, s.Previous, s.NS.ExecPrefix(), sysctl.Command(s.Key, s.Previous))
		return false, nil
	case v.Value != s.Set:
		*s.left = fmt.Sprintf("sysctl %s=%s in %s: lbdoctor set %s, someone changed it since; not put back to %s", s.Key, v.Value, s.NS, s.Set, s.Previous)
		return false, nil
	}
	return true, nil
}
func (s *RestoreSysctl) write(v string) error {
	return s.NS.Do(func() error { return os.WriteFile(sysctl.Path(s.Key), []byte(v), 0o644) })
}
func (s *RestoreSysctl) Apply(context.Context) error { return s.write(s.Previous) }
func (s *RestoreSysctl) Undo(context.Context) error  { return s.write(s.Set) }
func (s *RestoreSysctl) Owned() *Object              { return nil }

// Left says why Needed left the sysctl alone ("" when it did not).
func (s *RestoreSysctl) Left() string { return *s.left }

// run runs a command inside ns with optional stdin.
func run(ns netns.Target, stdin string, name string, args ...string) (string, error) {
	var out bytes.Buffer
	err := ns.Do(func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &out, &out
		return cmd.Run()
	})
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// IptablesRule appends a rule with an iptables backend (iptables-nft or
// iptables-legacy), tagged with an lbdoctor comment.
type IptablesRule struct {
	NS      netns.Target
	Backend string // iptables-nft or iptables-legacy
	Table   string
	Chain   string
	Rule    []string // without -A CHAIN
	VIP     string   // the service it serves, recorded so teardown --vip finds it
}

func (r IptablesRule) args(op string) []string {
	return append([]string{"-w", "-t", r.Table, op, r.Chain}, r.Rule...)
}

// tool is the command that drives r.Backend on this host, found by the
// backend it drives (a host whose only tool is `iptables` on nf_tables
// writes through it), and the same as a plan shows it: by name where PATH
// finds it so; without one, the backend's own name, which then fails as
// "not found".
func (r IptablesRule) tool() (argv, shown []string) {
	t, ok := ruleTools()[r.Backend]
	if !ok {
		return []string{r.Backend}, []string{r.Backend}
	}
	argv = append([]string{t.Path}, t.Args...)
	if p, err := exec.LookPath(filepath.Base(t.Path)); err == nil && p == t.Path {
		return argv, append([]string{filepath.Base(t.Path)}, t.Args...)
	}
	return argv, argv
}

func (r IptablesRule) describe(op string) string {
	_, shown := r.tool()
	return r.NS.ExecPrefix() + shellquote.Command(append(shown, r.args(op)[1:]...))
}
func (r IptablesRule) run(op string) error {
	argv, _ := r.tool()
	_, err := run(r.NS, "", argv[0], append(argv[1:], r.args(op)...)...)
	return err
}
func (r IptablesRule) Describe() string     { return r.describe("-A") }
func (r IptablesRule) DescribeUndo() string { return r.describe("-D") }
func (r IptablesRule) Needed(context.Context) (bool, error) {
	return r.run("-C") != nil, nil
}
func (r IptablesRule) Apply(context.Context) error { return r.run("-A") }
func (r IptablesRule) Undo(context.Context) error  { return r.run("-D") }

var (
	ruleToolsMu sync.Mutex
	ruleToolsOf = map[string]map[string]rules.Tool{} // by PATH
)

// ruleTools asks the iptables tools on PATH which backend each drives, once
// per PATH: a plan names and runs the same tool in every step.
func ruleTools() map[string]rules.Tool {
	ruleToolsMu.Lock()
	defer ruleToolsMu.Unlock()
	path := os.Getenv("PATH")
	if t, ok := ruleToolsOf[path]; ok {
		return t
	}
	t := rules.FindRuleTools()
	ruleToolsOf[path] = t
	return t
}

func (r IptablesRule) Owned() *Object {
	return &Object{Kind: "iptables-rule", Backend: r.Backend, Table: r.Table, Chain: r.Chain, Rule: r.Rule, VIP: r.VIP}
}

// NftTable creates a whole native nftables table from a script.
type NftTable struct {
	NS     netns.Target
	Family string
	Name   string
	Script string // `nft -f -` input that creates the table
	VIP    string // the service it serves, recorded so teardown --vip finds it
}

func (t NftTable) Describe() string {
	return fmt.Sprintf("%snft -f - <<'EOF'\n%sEOF", t.NS.ExecPrefix(), t.Script)
}
func (t NftTable) DescribeUndo() string {
	return t.NS.ExecPrefix() + shellquote.Command([]string{"nft", "delete", "table", t.Family, t.Name})
}
func (t NftTable) Needed(context.Context) (bool, error) {
	_, err := run(t.NS, "", "nft", "list", "table", t.Family, t.Name)
	return err != nil, nil
}
func (t NftTable) Apply(context.Context) error {
	_, err := run(t.NS, t.Script, "nft", "-f", "-")
	return err
}
func (t NftTable) Undo(context.Context) error {
	_, err := run(t.NS, "", "nft", "delete", "table", t.Family, t.Name)
	return err
}
func (t NftTable) Owned() *Object {
	return &Object{Kind: "nft-table", Family: t.Family, Table: t.Name, Key: t.Script, VIP: t.VIP}
}

// Address adds an address to an interface (`ip addr add`): a VIP that was
// not a local address (ipvs.vip_local). Undo deletes it.
type Address struct {
	NS     netns.Target
	Prefix netip.Prefix
	Dev    string
	// Services are the services (ServiceKey) it is added for: Object.Services.
	Services []string
}

func (a Address) Describe() string {
	return fmt.Sprintf("%sip addr add %s dev %s", a.NS.ExecPrefix(), a.Prefix, shellquote.Quote(a.Dev))
}
func (a Address) DescribeUndo() string {
	return fmt.Sprintf("%sip addr del %s dev %s", a.NS.ExecPrefix(), a.Prefix, shellquote.Quote(a.Dev))
}

// do runs f on the interface and the address as netlink takes them.
func (a Address) do(f func(netlink.Link, *netlink.Addr) error) error {
	return a.NS.Do(func() error {
		l, err := netlink.LinkByName(a.Dev)
		if err != nil {
			return fmt.Errorf("interface %s in %s: %w", a.Dev, a.NS, err)
		}
		return f(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.Prefix.Addr().AsSlice()), Mask: net.CIDRMask(a.Prefix.Bits(), a.Prefix.Addr().BitLen())}})
	})
}
func (a Address) Needed(context.Context) (bool, error) {
	present := false
	err := a.do(func(l netlink.Link, want *netlink.Addr) error {
		have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, h := range have {
			present = present || h.Equal(*want)
		}
		return err
	})
	return !present, err
}
func (a Address) Apply(context.Context) error {
	return a.do(func(l netlink.Link, ad *netlink.Addr) error { return netlink.AddrAdd(l, ad) })
}
func (a Address) Undo(context.Context) error {
	return a.do(func(l netlink.Link, ad *netlink.Addr) error { return netlink.AddrDel(l, ad) })
}
func (a Address) Owned() *Object {
	return &Object{Kind: "address", Key: a.Prefix.String(), Dev: a.Dev, Services: a.Services}
}
