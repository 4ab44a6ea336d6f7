package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/testkit"
)

var closingRE = regexp.MustCompile(`(?m)^(\d+) drops matched in [^:]+: (\d+) reported, (\d+) lost`)

// A stdout nobody reads holds neither a drops window nor a signal: during a
// flood whose lines fill the pipe, the window still ends on time and SIGINT
// still ends the process within 200 ms; the lines that could not be
// written are counted and said on stderr, and matched = reported + lost
// still holds.
func TestDropsStdoutBlocked(t *testing.T) {
	p := testkit.NewDropPair(t)
	ports := testkit.Ports(20000, 5000) // 5,000 lines: far more than a pipe holds
	const window = 3 * time.Second
	for _, tc := range []struct {
		name      string
		args      []string
		startLine string
		signal    bool // SIGINT once the flood is over (stdout long blocked)
		want      []string
	}{
		{"window ends", nil, "tracing drops", false, []string{"drops reported were not written: the output blocked"}},
		{"sigint", nil, "tracing drops", true, []string{"drops reported were not written: the output blocked", "! cut short (interrupted by SIGINT)"}},
		{"json window ends", []string{"-o", "json"}, "", false, []string{"! the JSON summary was not written", "drops reported were not written: the output blocked"}},
		{"json sigint", []string{"-o", "json"}, "", true, []string{"! the JSON summary was not written", "drops reported were not written: the output blocked"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close() // never read
			args := append([]string{"drops", "--netns", p.B.Name, "--host", p.AddrA.String(), "--duration", window.String()}, tc.args...)
			lp := startLbdoctorTo(t, "", w, tc.startLine, args...)
			w.Close()
			start := lp.waitStart(t)
			p.Flood(t, ports, time.Second)
			var limit time.Duration
			from := start
			if tc.signal {
				time.Sleep(200 * time.Millisecond)
				from = time.Now()
				lp.cmd.Process.Signal(syscall.SIGINT)
				limit = 200 * time.Millisecond
			} else {
				limit = window + 300*time.Millisecond
				if tc.startLine == "" {
					// Started from the program's loading, before it is
					// attached and the tables read: up to ~0.5 s earlier.
					limit += time.Second
				}
			}
			lp.wait(t, window+10*time.Second)
			took := lp.ended.Sub(from)
			errText := lp.errText()
			ok := lp.code == 0 && took <= limit
			for _, want := range tc.want {
				ok = ok && strings.Contains(errText, want)
			}
			if !ok {
				t.Errorf("lbdoctor %v, stdout never read = exit %d after %s:\n%.3000s\nwant exit 0 within %s, with %q", args, lp.code, took, errText, limit, tc.want)
			}
			if m := closingRE.FindStringSubmatch(errText); tc.startLine != "" {
				if m == nil {
					t.Fatalf("lbdoctor %v said no closing line:\n%s", args, errText)
				}
				matched, _ := strconv.Atoi(m[1])
				reported, _ := strconv.Atoi(m[2])
				lost, _ := strconv.Atoi(m[3])
				if matched != reported+lost || matched == 0 {
					t.Errorf("lbdoctor %v: %d matched, %d reported, %d lost; want matched = reported + lost > 0", args, matched, reported, lost)
				}
			}
			t.Logf("ended %s after the %s", took.Round(time.Millisecond), map[bool]string{true: "signal", false: "window opened"}[tc.signal])
		})
	}
}
