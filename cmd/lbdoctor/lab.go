package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lbdoctor/lbdoctor/internal/apply"
	"github.com/lbdoctor/lbdoctor/internal/lab"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/setup"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/kernel"
)

const labPort = 8085

func newLabCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A client, an IPVS load balancer and a real server in network namespaces, with a common NAT fault on request",
		Long: `lab builds a client, an IPVS load balancer (set up with lbdoctor setup) and a
real server as network namespaces NAME-client, NAME-lb, NAME-real (and
NAME-sw, the switch), on one segment (one-arm) or two (two-arm, the LB as the
real server's gateway). --fault builds in one of three common NAT failures the
way an operator would have: no-snat (setup --snat never), vs-conntrack-off
(net.ipv4.vs.conntrack=0 under a conntrack-based SNAT rule), ip-forward-off
(net.ipv4.ip_forward=0).

status and probe exit 1 when the lab is not up (or not answering).
NAME is 1-64 letters, digits, '_' and '-'. lab down removes only what the
lab's record proves lab up made: namespaces NAME-* that still have the
recorded inode and cookie, the server process if it still has the recorded
start time and boot.`,
		Example: `  sudo lbdoctor lab up --fault vs-conntrack-off
  sudo lbdoctor lab probe -n 5
  sudo lbdoctor check --netns lab-lb --fix
  sudo lbdoctor lab down`,
	}
	cmd.PersistentFlags().StringVar(&name, "name", "lab", "lab `NAME`: prefix of its namespaces (letters, digits, _ and -)")
	cmd.PersistentFlags().SetAnnotation("name", validatesEmpty, []string{"true"}) // labName says "bad lab name"
	cmd.AddCommand(newLabUpCmd(&name), newLabDownCmd(&name), newLabStatusCmd(&name), newLabProbeCmd(&name), newLabServeCmd())
	return cmd
}

func newLabUpCmd(name *string) *cobra.Command {
	var topo, proto, fault string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build the lab",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			changesHost(cmd)
			topo, fault = strings.ToLower(topo), strings.ToLower(fault) // names are read in any case
			if topo != string(lab.OneArm) && topo != string(lab.TwoArm) {
				return usageErrorf("--topology %q: want one-arm or two-arm", topo)
			}
			p, err := parseServiceProto(proto, false)
			if err != nil {
				return err
			}
			proto = p
			if !slices.Contains(lab.Faults, fault) {
				return usageErrorf("--fault %q: want one of %s", fault, strings.Join(lab.Faults, ", "))
			}
			if err := labName(*name); err != nil {
				return err
			}
			switch _, err := lab.LoadRecord(*name); {
			case err == nil:
				return usageErrorf("lab %q is already up (lbdoctor lab down --name %s)", *name, *name)
			case !errors.Is(err, lab.ErrNoLab):
				return labError(err)
			}
			if err := kernel.IPVS(); err != nil {
				return &kernel.NotSupportedError{Feature: "lab", Reason: "needs IPVS: " + err.Error()}
			}
			out := cmd.OutOrStdout()
			err = labUp(cmd, *name, lab.Topology(topo), proto, fault)
			if err != nil {
				gone, left, _ := lab.Down(*name, forgetSetup) // nothing half-built stays
				printDown(out, gone, left)
				return fmt.Errorf("lab up: %w", err)
			}
			printf(out, "lab %s is up: client %s-client, load balancer %s-lb, real server %s-real; VIP %s %s:%d\n",
				*name, *name, *name, *name, proto, "10.1.0.6", labPort)
			return nil
		},
	}
	cmd.Flags().StringVar(&topo, "topology", string(lab.OneArm), "`one-arm|two-arm`: the real server on the VIP's segment, or behind the LB")
	cmd.Flags().StringVar(&proto, "proto", "tcp", "protocol of the service: `tcp|udp`")
	cmd.Flags().StringVar(&fault, "fault", lab.FaultNone, "build in a `FAULT`: "+strings.Join(lab.Faults, ", "))
	return cmd
}

func labUp(cmd *cobra.Command, name string, topo lab.Topology, proto, fault string) error {
	out := cmd.OutOrStdout()
	// The record exists before anything it names, and each object is added
	// as it is made: lab down can prove all of it, whenever lab up stopped.
	rec := lab.Record{Name: name, Topology: topo, Proto: proto, Fault: fault}
	if err := rec.Save(); err != nil {
		return err
	}
	l, err := lab.BuildRecorded(&rec)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The server waits for "recorded" on its stdin before it serves: if lab
	// up dies before the record names the server, the pipe closes and the
	// server exits by itself, so no unrecorded process is left.
	ready, recorded, err := os.Pipe()
	if err != nil {
		return err
	}
	defer recorded.Close()
	srv := exec.Command(self, "lab", "serve", "--netns", l.Real.Name, "--proto", proto, "--after-record")
	srv.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	srv.Stdin = ready
	err = srv.Start()
	ready.Close()
	if err != nil {
		return fmt.Errorf("start the real server: %w", err)
	}
	proc, err := lab.Identify(srv.Process.Pid)
	if err != nil {
		srv.Process.Kill() // started just now by this process: provably ours
		return fmt.Errorf("identify the real server: %w", err)
	}
	rec.Server = &proc
	srv.Process.Release()
	if err := rec.Save(); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(recorded, "recorded"); err != nil {
		return fmt.Errorf("start the real server: %w", err)
	}
	svc := setup.Service{Proto: proto, VIP: netip.AddrPortFrom(l.VIP, labPort), Scheduler: "rr", SNAT: setup.SNATAuto,
		Reals: []setup.Real{{Addr: netip.AddrPortFrom(l.RealIP, labPort), Weight: 1}}}
	if fault == lab.FaultNoSNAT {
		svc.SNAT = setup.SNATNever
	}
	steps, _, err := setup.Steps(l.LB, setup.Spec{SNATBackend: setup.BackendAuto, Services: []setup.Service{svc}}, probes.Gather(l.LB, probes.Selector{}, probes.Options{}))
	if err != nil {
		return err
	}
	p, err := apply.Build(cmd.Context(), steps)
	if err != nil {
		return err
	}
	printPlan(out, p, false)
	done, err := apply.Run(cmd.Context(), p, apply.Hooks{})
	if err != nil {
		return err
	}
	st := &apply.State{Netns: l.LB.String()}
	recordOwned(st, done)
	if err := st.Save(l.LB); err != nil {
		return err
	}
	var faultSteps []apply.Step
	switch fault {
	case lab.FaultVSConntrackOff:
		faultSteps = append(faultSteps, apply.NewSysctl(l.LB, "net.ipv4.vs.conntrack", "0"))
	case lab.FaultIPForwardOff:
		faultSteps = append(faultSteps, apply.NewSysctl(l.LB, "net.ipv4.ip_forward", "0"))
	}
	for _, s := range faultSteps {
		printf(out, "fault %s: %s\n", fault, s.Describe())
		if _, err := s.Needed(cmd.Context()); err != nil {
			return err
		}
		if err := s.Apply(cmd.Context()); err != nil {
			return err
		}
	}
	if fault == lab.FaultNoSNAT {
		printf(out, "fault %s: the service was set up with --snat never\n", fault)
	}
	return nil
}

func newLabDownCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the lab, also after a crashed lab up",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			changesHost(cmd)
			if err := labName(*name); err != nil {
				return err
			}
			gone, left, err := lab.Down(*name, forgetSetup)
			if err != nil && len(gone)+len(left) == 0 {
				return labError(err)
			}
			out := cmd.OutOrStdout()
			printDown(out, gone, left)
			if len(gone) == 0 && err == nil {
				printf(out, "lab %s is not up: nothing to remove\n", *name)
			}
			return err
		},
	}
}

func newLabStatusCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's namespaces, server and fault",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := labName(*name); err != nil {
				return err
			}
			rec, err := lab.LoadRecord(*name)
			if err != nil {
				return labNotUp(err)
			}
			out := cmd.OutOrStdout()
			printf(out, "lab %s: %s, %s, fault %s\n", rec.Name, rec.Topology, rec.Proto, rec.Fault)
			l, err := lab.Open(rec)
			if err != nil {
				printf(out, "  namespaces: incomplete (%v): run lbdoctor lab down\n", err)
				return &exitError{code: exitFindings}
			}
			printf(out, "  client %s (%s) → VIP %s:%d on %s (%s) → real %s (%s)\n", l.Client.Name, l.ClientIP, l.VIP, labPort, l.LB.Name, l.LBIP, l.Real.Name, l.RealIP)
			alive := false
			switch {
			case rec.Server == nil:
				printf(out, "  real server process: not recorded (lab up did not finish)\n")
			default:
				err := rec.Server.Check()
				alive = err == nil
				state := "running"
				if !alive {
					state = "not running: " + err.Error()
				}
				printf(out, "  real server process %d: %s\n", rec.Server.PID, state)
			}
			if !alive {
				return &exitError{code: exitFindings}
			}
			return nil
		},
	}
}

func newLabProbeCmd(name *string) *cobra.Command {
	var n int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Connect from the client to the VIP and say, per connection, whether it was answered and which source address the real server saw",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Flags first: a bad value is bad usage whether or not the
			// lab is up.
			if n < 1 || n > maxProbes {
				return usageErrorf("-n/--count %d: want 1-%d", n, maxProbes)
			}
			if timeout <= 0 || timeout > maxProbeTimeout {
				return usageErrorf("--timeout %s: want a timeout > 0, at most %s", timeout, maxProbeTimeout)
			}
			if err := labName(*name); err != nil {
				return err
			}
			rec, err := lab.LoadRecord(*name)
			if err != nil {
				return labNotUp(err)
			}
			l, err := lab.Open(rec)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			vip := netip.AddrPortFrom(l.VIP, labPort)
			ok := 0
			for i := 0; i < n; i++ {
				var res lab.ProbeResult
				if rec.Proto == "udp" {
					res = lab.ProbeUDP(context.Background(), l.Client, vip, timeout)
				} else {
					res = lab.Probe(context.Background(), l.Client, vip, timeout)
				}
				if res.OK {
					ok++
					who := "the client's own address (NAT keeps it)"
					if res.Peer.Addr() == l.LBIP {
						who = "the load balancer's address (source NAT)"
					}
					printf(out, "%d: %s %s: answered; the real server saw %s, %s\n", i+1, rec.Proto, vip, res.Peer, who)
				} else {
					printf(out, "%d: %s %s: failed: %v\n", i+1, rec.Proto, vip, res.Err)
				}
			}
			printf(out, "%d/%d answered (%.0f%%)\n", ok, n, 100*float64(ok)/float64(n))
			if ok < n {
				return &exitError{code: exitFindings}
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 3, "how many connections, `N` (1-1000)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "wait for each answer this `TIMEOUT` (> 0, at most 1m)")
	return cmd
}

// printDown says what lab down removed and what it left, and why.
func printDown(w io.Writer, gone, left []string) {
	for _, g := range gone {
		printf(w, "removed %s\n", g)
	}
	for _, l := range left {
		printf(w, "left %s\n", l)
	}
}

// labName refuses a --name that could not be a lab's (exit 2).
func labName(name string) error {
	if err := lab.ValidName(name); err != nil {
		return usageErrorf("--name: %v", err)
	}
	return nil
}

// Bounds of lab probe: every connection may wait its whole timeout, so
// together they bound how long a probe runs (1000 × 1m at most).
const (
	maxProbes       = 1000
	maxProbeTimeout = time.Minute
)

// labNotUp is the one meaning of a lab that is not up, for status and
// probe: exit 1, like a check that failed (the lab was asked about and is
// not there), not 2 — the command line was right. A corrupt record stays
// bad input (exit 2).
func labNotUp(err error) error {
	if errors.Is(err, lab.ErrNoLab) {
		return &exitError{code: exitFindings, msg: err.Error()}
	}
	return labError(err)
}

// labError makes a lab record that is missing or unreadable bad input
// (exit 2, one line naming the file); other errors pass through.
func labError(err error) error {
	if errors.Is(err, lab.ErrNoLab) || errors.Is(err, lab.ErrCorrupt) || errors.Is(err, lab.ErrBadName) {
		return usageErrorf("%v", err)
	}
	return err
}

// forgetSetup drops the setup record of the lab's LB namespace just before
// lab down deletes it (proven the lab's): what setup made there goes with it.
func forgetSetup(t netns.Target) {
	if t.Name == "" || !strings.HasSuffix(t.Name, "-lb") {
		return
	}
	st := &apply.State{}
	st.Save(t)
}

// newLabServeCmd is the real server process `lab up` starts in the
// background; it answers until killed.
func newLabServeCmd() *cobra.Command {
	var ns, proto string
	var afterRecord bool
	cmd := &cobra.Command{
		Use:    "serve",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if afterRecord {
				line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if strings.TrimSpace(line) != "recorded" {
					return &exitError{code: exitCannot, msg: "lab serve: lab up stopped before it recorded this server: not serving"}
				}
			}
			t, err := netns.Resolve(ns)
			if err != nil {
				return err
			}
			addr := fmt.Sprintf(":%d", labPort)
			if proto == "udp" {
				_, err = lab.ServeUDP(t, addr)
			} else {
				_, err = lab.Serve(t, addr)
			}
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&ns, "netns", "", "network namespace `NAME` to serve in")
	cmd.Flags().StringVar(&proto, "proto", "tcp", "`tcp|udp`")
	cmd.Flags().BoolVar(&afterRecord, "after-record", false, `serve only after reading "recorded" on stdin`)
	return cmd
}
