package checks

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lbdoctor/lbdoctor/internal/expect"
	"github.com/lbdoctor/lbdoctor/internal/shellquote"
	"github.com/lbdoctor/lbdoctor/probes"
	"github.com/lbdoctor/lbdoctor/probes/ipvs"
)

// driftAsked: ipvs.drift runs only with check --expect FILE.
func driftAsked(s *probes.Snapshot) bool { return s.Expected != nil }

// persistence is a service's persistence timeout in seconds, 0 when it is
// not persistent.
func persistence(svc ipvs.Service) uint32 {
	if slices.Contains(svc.Flags, "persistent") {
		return svc.Timeout
	}
	return 0
}

// expectedSelected are the services of the file that --vip selects; a
// firewall-mark service has no VIP, so only "every service" selects it.
func expectedSelected(e *expect.Config, sel probes.Selector) []expect.Service {
	var out []expect.Service
	for _, svc := range e.Services {
		if svc.FWMark != 0 && !sel.VIP.IsValid() || svc.FWMark == 0 && sel.Matches(svc.Addr, svc.Proto) {
			out = append(out, svc)
		}
	}
	return out
}

// checkDrift compares what the operator meant (check --expect FILE: a
// keepalived.conf, `ipvsadm -Sn` output, lbdoctor's YAML) with what IPVS
// runs: services and reals missing or extra, schedulers, persistence,
// weights and forwarding methods, one evidence line per difference and an
// ipvsadm command that makes the kernel say what the file says.
func checkDrift(s *probes.Snapshot, sel probes.Selector) Finding {
	e := s.Expected
	if why := ipvsUnjudged(s); why != "" {
		// IPVS unread lists no service, or some: every one FILE names
		// would be "missing", and its ipvsadm -A a second service.
		return skip(why + ": nothing to compare " + e.File + " with")
	}
	file := fmt.Sprintf("%s (%s)", e.File, e.Format)
	src := "ipvs, " + s.Target.String() + " vs " + file
	at := func(line int) string { return fmt.Sprintf("%s:%d", e.File, line) }
	x := s.Target.ExecPrefix()
	want := expectedSelected(e, sel)
	got := selected(s, sel)
	byKey := map[string]ipvs.Service{}
	for _, svc := range got {
		byKey[svc.Key()] = svc
	}
	var diff []Evidence
	var fix []string
	var about []string
	removedReal := false
	add := func(key, format string, a ...any) {
		diff = append(diff, Evidence{Fact: key + ": " + fmt.Sprintf(format, a...), Source: src})
		if !slices.Contains(about, key) {
			about = append(about, key)
		}
	}
	reals := 0
	seen := map[string]bool{}
	for _, w := range want {
		key := w.Key()
		seen[key] = true
		reals += len(w.Reals)
		flag := ipvsadmService(ipvs.Service{Proto: w.Proto, Addr: w.Addr, FWMark: w.FWMark})
		pflag := ""
		if w.Persistence > 0 {
			pflag = fmt.Sprintf(" -p %d", w.Persistence)
		}
		g, ok := byKey[key]
		if !ok {
			add(key, "missing from IPVS (%s)", at(w.Line))
			fix = append(fix, fmt.Sprintf("%sipvsadm -A %s -s %s%s", x, flag, w.Scheduler, pflag))
			for _, r := range w.Reals {
				fix = append(fix, fmt.Sprintf("%sipvsadm -a %s -r %s %s -w %d", x, flag, r.Addr, methodFlag(r.Method), r.Weight))
			}
			continue
		}
		edit := false
		if g.Scheduler != w.Scheduler {
			add(key, "scheduler %s in IPVS, %s in %s", g.Scheduler, w.Scheduler, at(w.Line))
			edit = true
		}
		switch p := persistence(g); {
		case p == w.Persistence:
		case w.Persistence == 0:
			add(key, "persistent (timeout %ds) in IPVS, not persistent in %s", p, at(w.Line))
			edit = true
		case p == 0:
			add(key, "not persistent in IPVS, persistence timeout %ds in %s", w.Persistence, at(w.Line))
			edit = true
		default:
			add(key, "persistence timeout %ds in IPVS, %ds in %s", p, w.Persistence, at(w.Line))
			edit = true
		}
		if edit {
			fix = append(fix, fmt.Sprintf("%sipvsadm -E %s -s %s%s", x, flag, w.Scheduler, pflag))
		}
		used := make([]bool, len(g.Reals))
		for _, r := range w.Reals {
			i := matchReal(g.Reals, used, r)
			cmd := fmt.Sprintf("%sipvsadm -e %s -r %s %s -w %d", x, flag, r.Addr, methodFlag(r.Method), r.Weight)
			if i < 0 {
				add(key, "real %s is missing from IPVS (%s)", r.Addr, at(r.Line))
				fix = append(fix, strings.Replace(cmd, "ipvsadm -e", "ipvsadm -a", 1))
				removedReal = true
				continue
			}
			used[i] = true
			k := g.Reals[i]
			changed := false
			if k.Weight != r.Weight {
				add(key, "real %s has weight %d in IPVS, %d in %s", r.Addr, k.Weight, r.Weight, at(r.Line))
				changed = true
				removedReal = removedReal || k.Weight == 0
			}
			if k.Method != r.Method {
				add(key, "real %s forwards by %s in IPVS, %s in %s", r.Addr, methodName(k.Method), methodName(r.Method), at(r.Line))
				changed = true
			}
			if changed {
				fix = append(fix, cmd)
			}
		}
		for i, k := range g.Reals {
			if !used[i] {
				add(key, "real %s (%s, weight %d) is in IPVS, not in %s", k.Addr, methodName(k.Method), k.Weight, at(w.Line))
				fix = append(fix, fmt.Sprintf("%sipvsadm -d %s -r %s", x, flag, k.Addr))
			}
		}
	}
	for _, g := range got {
		if !seen[g.Key()] {
			add(g.Key(), "in IPVS (%d reals), not in %s", len(g.Reals), e.File)
			fix = append(fix, fmt.Sprintf("%sipvsadm -D %s", x, ipvsadmService(g)))
		}
	}
	if len(diff) == 0 {
		if len(want) == 0 {
			return skip(fmt.Sprintf("%s has no service that --vip %s selects, and IPVS none either", file, sel.VIPString()))
		}
		return Finding{Status: Pass, Title: "IPVS runs what " + e.File + " says", Evidence: []Evidence{{
			Fact:   fmt.Sprintf("%d services and %d reals of %s match IPVS: schedulers, persistence, weights and forwarding methods", len(want), reals, file),
			Source: src,
		}}}
	}
	reason := "what IPVS runs is not what " + e.File + " says: the kernel keeps whatever was programmed last (a manual ipvsadm change, a configuration not reloaded), and clients get the kernel's version"
	if e.Format == expect.Keepalived && removedReal {
		reason += "; keepalived's health checkers remove a real they find down (or set its weight to 0 with inhibit_on_failure): look at its log before adding one back"
	}
	return Finding{
		Status:   Fail,
		Title:    fmt.Sprintf("IPVS differs from %s in %d places", e.File, len(diff)),
		Reason:   reason,
		Evidence: diff,
		Fix:      append(fix, reprogram(s, e)),
		about:    about,
	}
}

// reprogram is the other fix: have what the file is for program IPVS again.
func reprogram(s *probes.Snapshot, e *expect.Config) string {
	f := shellquote.Quote(e.File)
	switch e.Format {
	case expect.Keepalived:
		return "# or have keepalived program it again from the file: systemctl reload keepalived"
	case expect.Ipvsadm:
		return fmt.Sprintf("# or load the whole table again: %sipvsadm -C && %sipvsadm -R < %s", s.Target.ExecPrefix(), s.Target.ExecPrefix(), f)
	}
	return "# or build it again from the file: " + lbdoctorCmd(s, "setup") + " -f " + f
}

// matchReal finds the kernel's real that is r (-1: none, or taken): the
// same address and port, else — DR and tunnels keep the service's port, so
// ipvsadm stores the service's port (0 for a firewall mark) whatever the
// file wrote — the same address forwarded by DR or tunnel on both sides.
func matchReal(reals []ipvs.Real, used []bool, r expect.Real) int {
	for i, k := range reals {
		if !used[i] && k.Addr == r.Addr {
			return i
		}
	}
	for i, k := range reals {
		if !used[i] && k.Addr.Addr() == r.Addr.Addr() && k.Method != ipvs.Masq && r.Method != ipvs.Masq {
			return i
		}
	}
	return -1
}
