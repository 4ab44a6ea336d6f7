package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// proc is an lbdoctor process run by a test: its output, when it said it
// started measuring, when it ended, what it cost.
type proc struct {
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	mu      sync.Mutex
	stderr  strings.Builder
	started chan time.Time // the line that says the window opened (or the tracer program loaded)
	done    chan struct{}
	ended   time.Time
	code    int
}

// startLbdoctor starts the binary; startLine is the beginning of the stderr
// line that opens the window ("" with -o json: the tracer program appearing
// in the kernel opens it).
func startLbdoctor(t testing.TB, startLine string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(testkit.LbdoctorBinary(t), args...), started: make(chan time.Time, 1), done: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	errPipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		rd := bufio.NewReader(errPipe)
		for {
			line, err := rd.ReadString('\n')
			p.mu.Lock()
			p.stderr.WriteString(line)
			p.mu.Unlock()
			if startLine != "" && strings.HasPrefix(line, startLine) {
				select {
				case p.started <- time.Now():
				default:
				}
			}
			if err != nil {
				break
			}
		}
		err := p.cmd.Wait()
		p.ended = time.Now()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			p.code = ee.ExitCode() // -1: killed by the signal
		case err != nil:
			p.code = -2
		}
		close(p.done)
	}()
	if startLine == "" {
		go func() {
			name := drops.ProgramName(p.cmd.Process.Pid)
			for {
				select {
				case <-p.done:
					return
				default:
				}
				if len(testkit.LoadedPrograms(name)) > 0 {
					p.started <- time.Now()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// waitStart waits for the window to open.
func (p *proc) waitStart(t testing.TB) time.Time {
	t.Helper()
	select {
	case at := <-p.started:
		return at
	case <-p.done:
		t.Fatalf("lbdoctor %v ended before its window opened: exit %d\n%s\n%s", p.cmd.Args[1:], p.code, p.stdout.String(), p.errText())
	case <-time.After(30 * time.Second):
		t.Fatalf("lbdoctor %v did not open its window in 30 s\n%s", p.cmd.Args[1:], p.errText())
	}
	return time.Time{}
}

// wait waits for the process to end.
func (p *proc) wait(t testing.TB, limit time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		t.Fatalf("lbdoctor %v still running after %s\n%s", p.cmd.Args[1:], limit, p.errText())
	}
}

func (p *proc) errText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// cpu is the user+system CPU time the process used.
func (p *proc) cpu() time.Duration {
	return p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
}

// lastJSON decodes the last line of stdout (the drops summary line, or the
// one document of --summary -o json).
func (p *proc) summary(t testing.TB, summaryMode bool) report.DropsSummary {
	t.Helper()
	var s report.DropsSummary
	b := p.stdout.Bytes()
	if !summaryMode {
		b = bytes.TrimSpace(b)
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	if err := json.Unmarshal(b, &s); err != nil || s.Type != "summary" {
		t.Fatalf("lbdoctor %v: no summary (%v) in\n%.2000s\n%s", p.cmd.Args[1:], err, p.stdout.String(), p.errText())
	}
	return s
}

// flowsShown counts the drops the output attributes to a flow: event lines
// or aggregates with a "flow" (works for any lbdoctor version).
func (p *proc) flowsShown(summaryMode bool) (with, without uint64) {
	if summaryMode {
		var s report.DropsSummary
		json.Unmarshal(p.stdout.Bytes(), &s)
		for _, d := range s.Aggregates {
			if d.Flow != nil {
				with += d.Count
			} else {
				without += d.Count
			}
		}
		return with, without
	}
	sc := bufio.NewScanner(bytes.NewReader(p.stdout.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var d report.Drop
		if json.Unmarshal(sc.Bytes(), &d) != nil || d.Type != "drop" {
			continue
		}
		if d.Flow != nil {
			with++
		} else {
			without++
		}
	}
	return with, without
}

// A window ends on time whatever the drop rate, and every drop is counted
// as attributed or not: thousands of distinct flows, half of them known to
// the namespace's conntrack table (UDP to closed ports: confirmed, then
// dropped for want of a socket), half dropped by nft before conntrack
// confirms them (no table knows them).
func TestDropsWindowHoldsUnderAFlood(t *testing.T) {
	const window, flows = 2 * time.Second, 4000
	p := testkit.NewDropPair(t)
	known, unknown := testkit.Ports(20000, flows/2), testkit.Ports(testkit.DroppedPorts, flows/2)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"events", nil},
		{"summary", []string{"--summary"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"drops", "--netns", p.B.Name, "--host", p.AddrA.String(), "--duration", window.String(), "-o", "json"}, tc.args...)
			lp := startLbdoctor(t, "", args...)
			start := lp.waitStart(t)
			p.Flood(t, append(append([]uint16{}, known...), unknown...), window/2)
			lp.wait(t, 2*window+10*time.Second)
			took := lp.ended.Sub(start)
			s := lp.summary(t, tc.name == "summary")
			t.Logf("window %s: process ran %s after the tracer loaded (CPU %s; attach %.0f ms, window %s); %d matched, %d lost; %+v", window, took.Round(time.Millisecond), lp.cpu(), s.AttachMs, s.Window, s.Counters.Matched, s.Lost, s.Attribution)
			// The program appears in the kernel a little before the window
			// opens (attach): the bound is generous by that much only.
			if lp.code != 0 || took > window+100*time.Millisecond {
				t.Errorf("lbdoctor %v = exit %d after %s, want exit 0 within %s", args, lp.code, took, window+100*time.Millisecond)
			}
			if s.Counters.Matched != flows || s.Lost != 0 {
				t.Errorf("drops matched %d, lost %d; want %d, 0", s.Counters.Matched, s.Lost, flows)
			}
			with, without := lp.flowsShown(tc.name == "summary")
			if s.Attribution.Attributed != flows/2 || s.Attribution.NotAttributed != flows/2 || with != flows/2 || without != flows/2 {
				t.Errorf("attribution = %+v, shown with a flow %d, without %d; want %d each", s.Attribution, with, without, flows/2)
			}
		})
	}
}
