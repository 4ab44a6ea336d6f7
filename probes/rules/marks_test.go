package rules

import (
	"reflect"
	"testing"
)

func TestReadWords(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		want       Words
	}{
		{"kube-proxy's cluster IP marking", `-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ`,
			Words{Sets: []SetMatch{{Name: "KUBE-CLUSTER-IP", Flags: "dst,dst"}}, Other: true}},
		{"loop-back masquerade", `-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE`,
			Words{Sets: []SetMatch{{Name: "KUBE-LOOP-BACK", Flags: "dst,dst,src"}}}},
		{"return unless marked", `-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`,
			Words{Marks: []MarkMatch{{Value: 0x4000, Mask: 0x4000, Negated: true}}}},
		{"mark set", `-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`,
			Words{SetsMark: &MarkMatch{Value: 0x4000, Mask: 0x4000}}},
		{"masquerade random-fully", `-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`,
			Words{}},
		{"negated set", `-A X -m set ! --match-set S dst -j ACCEPT`,
			Words{Sets: []SetMatch{{Name: "S", Flags: "dst", Negated: true}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Rule{Backend: IptablesNft, Spec: tc.spec}
			if got := r.ReadWords(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ReadWords(%q) = %+v, want %+v", tc.spec, got, tc.want)
			}
		})
	}
}

func TestMarkSatisfies(t *testing.T) {
	for _, tc := range []struct {
		name      string
		match, by MarkMatch
		want      bool
	}{
		{"kube-proxy's bit", MarkMatch{Value: 0x4000, Mask: 0x4000}, MarkMatch{Value: 0x4000, Mask: 0x4000}, true},
		{"another bit", MarkMatch{Value: 0x4000, Mask: 0x4000}, MarkMatch{Value: 0x8000, Mask: 0x8000}, false},
		{"whole mark written", MarkMatch{Value: 0x4000, Mask: 0x4000}, MarkMatch{Value: 0x4000, Mask: 0xffffffff}, true},
		{"bit cleared", MarkMatch{Value: 0x4000, Mask: 0x4000}, MarkMatch{Value: 0, Mask: 0x4000}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.match.Satisfies(tc.by); got != tc.want {
				t.Errorf("%+v.Satisfies(%+v) = %v, want %v", tc.match, tc.by, got, tc.want)
			}
		})
	}
}
