package report

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"

	"github.com/lbdoctor/lbdoctor/checks"
)

// JUnit XML, as CI systems read it: one testcase per finding; fail →
// <failure>, skip → <skipped> with its reason, warn → a passing case whose
// output says so (JUnit has no warning).
// The shape follows the Jenkins xUnit plugin's junit-10.xsd (kept in
// testdata/junit.xsd, and every output is validated against it in the tests):
// a testsuite must carry errors, even when it is 0. lbdoctor reports no
// errors: a check that could not run is skipped, with its reason.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Cases    []junitCase `xml:"testcase"`
	// SystemErr names the probes that could not read their layer.
	SystemErr string `xml:"system-err,omitempty"`
}

type junitCase struct {
	Class     string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Body    string `xml:",cdata"` // through xmlText: CDATA cannot carry every character
}

// JUnit writes the report as JUnit XML.
func JUnit(w io.Writer, r *Report) error {
	suite := junitSuite{Name: "lbdoctor check " + r.Target.Netns.String(), Tests: len(r.Findings)}
	// A window cut short proves less than the one asked for: said on the
	// suite and on every case the drop window judged, as text and JSON say it.
	cut := strings.TrimPrefix(r.CutShort, "! ")
	if cut == "" && r.Interrupted {
		cut = "interrupted: the results cover what was measured until then"
	}
	if cut != "" {
		suite.SystemErr = xmlText(cut) + "\n"
	}
	for _, f := range r.Findings {
		c := junitCase{Class: "lbdoctor." + strings.SplitN(f.ID, ".", 2)[0], Name: f.ID}
		var body strings.Builder
		if f.Reason != "" {
			fmt.Fprintf(&body, "why: %s\n", f.Reason)
		}
		for _, e := range f.Evidence {
			fmt.Fprintf(&body, "evidence: %s\n", e)
		}
		for _, p := range f.Path {
			fmt.Fprintf(&body, "path: %s: %s\n", p.Service, p)
		}
		for _, fx := range f.Fix {
			fmt.Fprintf(&body, "fix: %s\n", fx)
		}
		switch f.Status {
		case checks.Fail:
			suite.Failures++
			c.Failure = &junitMessage{Message: f.Title, Body: xmlText(body.String())}
		case checks.Skip:
			suite.Skipped++
			c.Skipped = &junitMessage{Message: f.Reason}
		case checks.Warn:
			c.SystemOut = "warning: " + f.Title + "\n" + body.String()
		}
		if cut != "" && strings.HasPrefix(f.ID, "drops.") {
			c.SystemOut += xmlText(cut) + "\n"
		}
		suite.Cases = append(suite.Cases, c)
	}
	for _, name := range sortedKeys(r.Errors) {
		suite.SystemErr += fmt.Sprintf("probe %s could not read: %s\n", name, r.Errors[name])
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(junitSuites{Tests: suite.Tests, Failures: suite.Failures, Suites: []junitSuite{suite}}); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// xmlText replaces what XML 1.0 cannot carry at all (control characters such
// as an escape sequence in an interface name) with U+FFFD; the encoder
// escapes the rest, and splits "]]>" in CDATA.
func xmlText(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r',
			r >= 0x20 && r <= 0xD7FF, r >= 0xE000 && r <= 0xFFFD, r >= 0x10000 && r <= 0x10FFFF:
			return r
		}
		return '\uFFFD'
	}, s)
}
