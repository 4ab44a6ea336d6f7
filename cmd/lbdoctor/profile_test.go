package main

import (
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/probes"
)

// TestProfileLine: LBDOCTOR_TIMINGS says where both reads of a window went,
// probe by probe, not the last read's alone.
func TestProfileLine(t *testing.T) {
	t.Setenv(timingsEnv, "1")
	t.Setenv(profileEnv, "")
	took := map[string]time.Duration{"ipvs": 1043 * time.Millisecond, "rules": 969 * time.Millisecond}
	for _, tc := range []struct {
		name string
		s    *probes.Snapshot
		want string
	}{
		{"static", &probes.Snapshot{Took: took},
			"lbdoctor: profile: read ipvs 1.043s, rules 969ms, checks 400ms"},
		{"window", &probes.Snapshot{Took: took, Window: &probes.Window{
			FirstRead: 3366 * time.Millisecond, FirstTook: map[string]time.Duration{"rules": 2 * time.Second, "ipvs": time.Second},
			TracerWait: 2164 * time.Millisecond, LastRead: 2029 * time.Millisecond}},
			"lbdoctor: profile: read ipvs 1.043s, rules 969ms, window: first read 3.366s (ipvs 1s, rules 2s), tracer wait 2.164s, last read 2.029s, checks 400ms"},
		{"window without the first read's probes", &probes.Snapshot{Took: took, Window: &probes.Window{FirstRead: time.Second}},
			"lbdoctor: profile: read ipvs 1.043s, rules 969ms, window: first read 1s, tracer wait 0s, last read 0s, checks 400ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := profileLine(tc.s, 400*time.Millisecond); got != tc.want {
				t.Errorf("profileLine(%s) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
}
