package drops

import "testing"

// Every place the attributor can put a dropped packet is on a leg of the
// path model: a stage added without one would drop out of the paths.
func TestEveryStageHasALeg(t *testing.T) {
	var stages []string
	for _, pl := range conntrackPlaces {
		stages = append(stages, pl.stage)
	}
	for _, pl := range ipvsPlaces {
		stages = append(stages, pl.stage)
	}
	for _, st := range stages {
		if got := (Flow{Stage: st}).Leg(); got == "" {
			t.Errorf("Flow{Stage: %q}.Leg() = %q, want a leg", st, got)
		}
	}
}
