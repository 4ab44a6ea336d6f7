// Package report renders findings for people (text) and for machines (JSON,
// schema 1). One renderer per format; nothing here decides a verdict.
package report

import (
	"fmt"
	"io"
	"strings"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/internal/netns"
)

// Schema is the version of the JSON document; it changes only when a field
// changes meaning or goes away.
const Schema = 1

// Report is the result of one check run.
type Report struct {
	Schema   int              `json:"schema"`
	Target   Target           `json:"target"`
	Verdict  checks.Status    `json:"verdict"`
	Summary  map[string]int   `json:"summary"` // count per status
	Findings []checks.Finding `json:"findings"`
	// Errors lists the probes that could not read their layer, by name.
	Errors map[string]string `json:"errors,omitempty"`
	// Interrupted is true when SIGINT or SIGTERM cut the measurement short
	// (the drop window): the findings rest on what was measured until then.
	Interrupted bool `json:"interrupted,omitempty"`
	// CutShort is the line that says so in text.
	CutShort string `json:"-"`
}

// Target says what was inspected.
type Target struct {
	Netns  netns.Target `json:"netns"`
	Kernel string       `json:"kernel"`
	VIP    string       `json:"vip,omitempty"`
	Proto  string       `json:"proto,omitempty"`
}

// New builds a report from findings.
func New(t Target, fs []checks.Finding, errs map[string]string) *Report {
	r := &Report{Schema: Schema, Target: t, Verdict: checks.Verdict(fs), Findings: fs, Errors: errs,
		Summary: map[string]int{"pass": 0, "warn": 0, "fail": 0, "skip": 0}}
	for _, f := range fs {
		r.Summary[string(f.Status)]++
	}
	return r
}

// JSON writes the report as one indented JSON document.
func JSON(w io.Writer, r *Report) error { return JSONDocument(w, r) }

var marks = map[checks.Status]string{checks.Pass: "✓", checks.Warn: "!", checks.Fail: "✗", checks.Skip: "-"}

// Text writes the report as a list a person reads in seconds: failures
// first, each with its evidence and fix.
func Text(w io.Writer, r *Report) error {
	var b strings.Builder
	head := "lbdoctor check: " + r.Target.Netns.String()
	switch {
	case r.Target.VIP != "" && r.Target.Proto == "":
		head += ", VIP " + r.Target.VIP + " (any protocol)"
	case r.Target.VIP != "":
		head += ", " + strings.ToUpper(r.Target.Proto) + " " + r.Target.VIP
	}
	fmt.Fprintf(&b, "%s (kernel %s)\n\n", head, r.Target.Kernel)
	for _, st := range []checks.Status{checks.Fail, checks.Warn, checks.Pass, checks.Skip} {
		for _, f := range r.Findings {
			if f.Status != st {
				continue
			}
			fmt.Fprintf(&b, "%s %-20s %s\n", marks[f.Status], f.ID, f.Title)
			if f.Status == checks.Skip {
				fmt.Fprintf(&b, "    skipped: %s\n", f.Reason)
				continue
			}
			if f.Status == checks.Pass {
				continue
			}
			if f.Reason != "" {
				fmt.Fprintf(&b, "    why:      %s\n", f.Reason)
			}
			for _, e := range f.Evidence {
				fmt.Fprintf(&b, "    evidence: %s\n", e)
			}
			for _, p := range f.Path {
				fmt.Fprintf(&b, "    path:     %s: %s\n", p.Service, p)
			}
			for _, fx := range f.Fix {
				fmt.Fprintf(&b, "    fix:      %s\n", fx)
			}
		}
	}
	for _, name := range sortedKeys(r.Errors) {
		fmt.Fprintf(&b, "! probe %s could not read: %s\n", name, r.Errors[name])
	}
	s := r.Summary
	if r.CutShort != "" {
		fmt.Fprintln(&b, r.CutShort)
	}
	fmt.Fprintf(&b, "\nverdict: %s (%d fail, %d warn, %d pass, %d skipped)\n", r.Verdict, s["fail"], s["warn"], s["pass"], s["skip"])
	_, err := io.WriteString(w, Printable(b.String()))
	return err
}
