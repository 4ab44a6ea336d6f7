package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/input"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

func newSetupCmd(g *globalFlags) *cobra.Command {
	var vip, proto, scheduler, snat, backend, file, fromIpvsadm, fromKeepalived string
	var reals []string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Build an IPVS NAT service correctly: service, reals, sysctls, source NAT",
		Long: `setup builds an IPVS masquerade (NAT) virtual service with its real servers,
turns on the sysctls it needs, and adds source NAT when the return path needs
it: with --snat auto (the default) SNAT is added when a real server would
answer clients without crossing the load balancer (one-arm), and left out
when the reals sit behind the LB on another segment (two-arm, client
addresses kept). SNAT uses iptables (-m ipvs, with the backend the host
already uses) or native nftables (ct original), every rule tagged lbdoctor.

It prints its plan first; --dry-run stops there. The change is
transactional: if any step fails, every step already done is undone. A
second run changes nothing. What it made is recorded, and
` + "`lbdoctor teardown`" + ` removes exactly that (and restores the sysctls it changed).`,
		Example: `  sudo lbdoctor setup --netns lb --vip 10.1.0.6:8085 --real 10.1.0.50:8085 --dry-run
  sudo lbdoctor setup --netns lb --vip 10.1.0.6:8085 --real 10.1.0.50:8085,2 --real 10.1.0.51:8085
  sudo lbdoctor teardown --netns lb`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			changesHost(cmd)
			// Reading the input and the host changes nothing: Ctrl-C
			// abandons it at once.
			ctx := cmd.Context()
			var spec setup.Spec
			var err error
			if !measure(ctx, func() {
				spec, err = setupSpec(ctx, cmd.InOrStdin(), vip, proto, scheduler, snat, backend, reals, file, fromIpvsadm, fromKeepalived)
			}) {
				return notChanged(ctx, "setup")
			}
			if err != nil {
				return err
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			if _, err := apply.LoadState(t); err != nil {
				return err // a corrupt record: exit 2 before anything is read or planned
			}
			var snap *probes.Snapshot
			if !measure(ctx, func() { snap = probes.Gather(t, probes.Selector{}, probes.Options{}) }) {
				return notChanged(ctx, "setup")
			}
			if !snap.IPVS.Available {
				return &kernel.NotSupportedError{Feature: "setup", Reason: "needs IPVS: " + snap.IPVS.Reason}
			}
			steps, decisions, err := setup.Steps(t, spec, snap)
			if err != nil {
				return usageErrorf("%v", err)
			}
			out := cmd.OutOrStdout()
			for _, d := range decisions {
				printf(out, "%s: source NAT %s (%s)\n", d.Service, map[bool]string{true: "needed", false: "not needed"}[d.SNAT], d.Reason)
			}
			return runPlan(cmd, t, steps, dryRun, "setup", recordShared(steps))
		},
	}
	f := cmd.Flags()
	f.StringVar(&vip, "vip", "", "virtual service address, `ADDR:PORT`")
	f.StringVar(&proto, "proto", "tcp", "protocol of the service: `tcp|udp` (any case)")
	f.StringArrayVar(&reals, "real", nil, "real server `ADDR:PORT[,WEIGHT]` (repeatable)")
	f.StringVar(&scheduler, "scheduler", "rr", "IPVS `SCHEDULER`: "+strings.Join(setup.Schedulers, ", "))
	f.StringVar(&snat, "snat", setup.SNATAuto, "source NAT: `auto|always|never` (auto: from the return path)")
	f.StringVar(&backend, "snat-backend", setup.BackendAuto, "SNAT with: `auto|iptables|nft`")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	f.StringVarP(&file, "file", "f", "", "YAML `FILE` of several services (see README); - reads standard input")
	f.StringVar(&fromIpvsadm, "from-ipvsadm", "", "build the NAT services of a `FILE` of ipvsadm -Sn output (- for standard input)")
	f.StringVar(&fromKeepalived, "from-keepalived", "", "build the lb_kind NAT virtual_servers of a keepalived.conf `FILE` (- for standard input)")
	return cmd
}

// setupSpec builds the spec from flags or from one input file; any error is
// a usage error naming the place.
func setupSpec(ctx context.Context, stdin io.Reader, vip, proto, scheduler, snat, backend string, reals []string, file, fromIpvsadm, fromKeepalived string) (setup.Spec, error) {
	inputs := 0
	for _, x := range []string{vip, file, fromIpvsadm, fromKeepalived} {
		if x != "" {
			inputs++
		}
	}
	if inputs > 1 {
		return setup.Spec{}, usageErrorf("give one of --vip, --file, --from-ipvsadm, --from-keepalived")
	}
	// Names are read in any case, as in input files.
	scheduler, snat, backend = strings.ToLower(scheduler), strings.ToLower(snat), strings.ToLower(backend)
	var spec setup.Spec
	var err error
	switch {
	case file != "" || fromIpvsadm != "" || fromKeepalived != "":
		path := file + fromIpvsadm + fromKeepalived
		data, rerr := input.Read(ctx, path, stdin)
		if rerr != nil {
			return spec, usageErrorf("%v", rerr)
		}
		name := input.Name(path)
		switch {
		case file != "":
			spec, err = setup.ParseYAML(name, data)
		case fromIpvsadm != "":
			spec, err = setup.ParseIpvsadm(name, bytes.NewReader(data))
		default:
			spec, err = setup.ParseKeepalived(name, bytes.NewReader(data))
		}
		if err != nil {
			return spec, usageErrorf("%v", err)
		}
		if backend != setup.BackendAuto {
			spec.SNATBackend = backend
		}
		if snat != setup.SNATAuto {
			for i := range spec.Services {
				spec.Services[i].SNAT = snat
			}
		}
	case vip == "":
		return spec, usageErrorf("--vip is required (ADDR:PORT), or --file / --from-ipvsadm / --from-keepalived")
	default:
		ap, perr := parseVIP(vip, true)
		if perr != nil {
			return spec, perr
		}
		p, perr := parseServiceProto(proto, false)
		if perr != nil {
			return spec, perr
		}
		svc := setup.Service{Proto: p, VIP: ap, Scheduler: scheduler, SNAT: snat}
		for _, r := range reals {
			real, err := parseReal(r)
			if err != nil {
				return spec, err
			}
			svc.Reals = append(svc.Reals, real)
		}
		spec = setup.Spec{SNATBackend: backend, Services: []setup.Service{svc}}
	}
	if err := spec.Validate(); err != nil {
		return spec, usageErrorf("%v", err)
	}
	return spec, nil
}

func newTeardownCmd(g *globalFlags) *cobra.Command {
	var vip string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Remove what lbdoctor setup made (and nothing else)",
		Long: `teardown removes the services, real servers, rules and tables that lbdoctor
made in the namespace, and puts back the sysctls it changed (while they still
hold the value it set) — never an object it found there, nor a service that
now has real servers lbdoctor did not add. With --vip only that service's
objects go, and a shared change (a sysctl, an address) only when no other
service it was made for — by setup, or by check --fix for the services its
finding named — needs it; the plan says what stays and why. A change
recorded without its services (by an older lbdoctor) goes only with a whole
teardown. A record
made for another namespace under the same name is refused (exit 2); one from
another boot, or without the namespace's identity, proves nothing: its
objects are left, named, and the record is forgotten.`,
		Example: `  sudo lbdoctor teardown --netns lb --vip 10.1.0.6:8085 --dry-run
  sudo lbdoctor teardown --netns lb`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			changesHost(cmd)
			var ap netip.AddrPort
			if vip != "" {
				var err error
				if ap, err = parseVIP(vip, true); err != nil {
					return err
				}
			}
			t, err := target(g)
			if err != nil {
				return err
			}
			st, err := apply.LoadState(t)
			if err != nil {
				return err
			}
			steps, objs, kept := setup.TeardownSteps(t, st, ap)
			out := cmd.OutOrStdout()
			for _, k := range kept {
				printf(out, "kept %s\n", k)
			}
			forget := func(st *apply.State, _ []apply.Step) {
				for _, o := range objs {
					st.Remove(o)
				}
				if ap.IsValid() {
					st.Release(ap.String()) // what stays for others is no longer made for it
				}
			}
			if len(objs) == 0 {
				if len(st.Unproven) > 0 {
					printUnproven(out, t, st)
				}
				if !dryRun {
					// Forgets unproven objects, and ap's share of what stays.
					forget(st, nil)
					if err := st.Save(t); err != nil {
						return fmt.Errorf("teardown: save the record: %w", err)
					}
				}
				switch {
				case len(st.Unproven) > 0:
					printf(out, "nothing to tear down: no record proves lbdoctor made anything in %s\n", t)
				case ap.IsValid() && len(kept) > 0:
					printf(out, "nothing to tear down: lbdoctor made nothing for %s alone in %s\n", ap, t)
				default:
					printf(out, "nothing to tear down: lbdoctor made nothing in %s\n", t)
				}
				return nil
			}
			return runPlan(cmd, t, steps, dryRun, "teardown", forget)
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "only this service, `ADDR:PORT`")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	return cmd
}

// runPlan prints the plan, applies it transactionally and updates the
// record of what lbdoctor made.
func runPlan(cmd *cobra.Command, t netns.Target, steps []apply.Step, dryRun bool, verb string, record func(*apply.State, []apply.Step)) error {
	return runPlanConfirm(cmd, t, steps, dryRun, verb, record, nil)
}

// runPlanConfirm is runPlan that asks confirm (when not nil) before applying.
func runPlanConfirm(cmd *cobra.Command, t netns.Target, steps []apply.Step, dryRun bool, verb string, record func(*apply.State, []apply.Step), confirm func(n int) bool) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	st, err := apply.LoadState(t) // first: a corrupt record stops everything
	if err != nil {
		return err
	}
	plan, err := apply.Build(ctx, steps)
	if err != nil {
		if ctx.Err() != nil {
			return notChanged(ctx, verb)
		}
		return err
	}
	printUnproven(out, t, st)
	for _, l := range plan.Left {
		printf(out, "left %s\n", l)
	}
	if plan.Empty() {
		printf(out, "nothing to change: %s already matches\n", t)
		before, _ := json.Marshal(st.Objects)
		record(st, nil) // teardown forgets what it leaves: it is no longer lbdoctor's
		after, _ := json.Marshal(st.Objects)
		if (len(plan.Left)+len(st.Unproven) > 0 || !bytes.Equal(before, after)) && !dryRun {
			if err := st.Save(t); err != nil {
				return fmt.Errorf("%s: save the record: %w", verb, err)
			}
		}
		return nil
	}
	printPlan(out, plan, dryRun)
	if dryRun {
		return nil
	}
	if confirm != nil && !confirm(len(plan.Steps)) {
		if ctx.Err() != nil {
			return notChanged(ctx, verb)
		}
		return &exitError{code: exitFindings, msg: verb + ": nothing changed (not confirmed)"}
	}
	done, err := apply.Run(ctx, plan, apply.Hooks{})
	if err != nil {
		return fmt.Errorf("%s: %w", verb, err)
	}
	record(st, done)
	if err := st.Save(t); err != nil {
		return fmt.Errorf("%s applied, but the record of it was not saved: %w", verb, err)
	}
	printf(out, "%s: %d change(s) applied\n", verb, len(done))
	return nil
}

// printUnproven names each object of a record that does not prove its
// namespace: lbdoctor leaves them, and the next save forgets them.
func printUnproven(w io.Writer, t netns.Target, st *apply.State) {
	for _, o := range st.Unproven {
		printf(w, "left %s in %s: %s; not proven lbdoctor's\n", o, t, st.Why)
	}
}

// recordShared is recordOwned for a plan of steps: a change one of them
// needs that lbdoctor recorded before (for other services) and found
// already there is now made for these steps' services too, so a teardown
// of those keeps it.
func recordShared(steps []apply.Step) func(*apply.State, []apply.Step) {
	return func(st *apply.State, done []apply.Step) {
		recordOwned(st, done)
		for _, s := range steps {
			if o := s.Owned(); o != nil && st.Owns(*o) {
				st.Add(*o)
			}
		}
	}
}

// recordOwned remembers what the done steps made, for teardown.
func recordOwned(st *apply.State, done []apply.Step) {
	for _, s := range done {
		if o := s.Owned(); o != nil {
			st.Add(*o)
		}
	}
}

func printPlan(w io.Writer, p *apply.Plan, dryRun bool) {
	head := "plan"
	if dryRun {
		head = "plan (dry run: nothing is changed)"
	}
	printf(w, "%s:\n", head)
	for i, c := range p.Commands() {
		printf(w, "  %d. %s\n", i+1, strings.ReplaceAll(c, "\n", "\n     "))
	}
}

func parseReal(s string) (setup.Real, error) {
	addr, w, hasW := strings.Cut(s, ",")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return setup.Real{}, usageErrorf("--real %s: want ADDR:PORT[,WEIGHT]", input.Quote(s))
	}
	r := setup.Real{Addr: ap, Weight: 1}
	if hasW {
		if r.Weight, err = strconv.Atoi(w); err != nil {
			return r, usageErrorf("--real %s: weight %s is not a number", input.Quote(s), input.Quote(w))
		}
	}
	return r, nil
}
