package report

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/probes/drops"
)

func sampleDrops() map[string]Drop {
	ap := netip.MustParseAddrPort
	flow := &drops.Flow{Client: ap("10.0.0.1:1"), VIP: ap("10.0.0.2:2"), Real: ap("[fe80::1%eth0]:80"), Direction: "SYN (request)", Stage: "after DNAT & SNAT", Source: "conntrack"}
	return map[string]Drop{
		"zero":      {},
		"aggregate": {Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x4d", Proto: "udp", Src: "10.0.0.1:1", Dst: "10.0.0.2:2", Count: 3, Flow: flow},
		"event": {Type: "drop", Time: time.Date(2026, 11, 30, 5, 1, 2, 345678901, time.FixedZone("x", 3600)), Netns: 1, Ifname: "eth0", Reason: "NO_SOCKET",
			Location: "[unknown]", Proto: "tcp", Src: "[2001:db8::1]:443", Dst: "[2001:db8::2]:5", TCPFlags: "SYN", Len: 60,
			Stack: []string{"kfree_skb_reason+0x1", "ip_rcv"}, Raw: &drops.RawEvent{TimeNs: 1 << 60, Ifindex: 2, Ifname: "eth0", Len: 60, CPU: 1, TCPFlags: 2}},
		"escapes": {Type: "drop", NetnsTag: "a\"b\\c<d>&e\u2028f\x01g\xffh", Reason: "é", Location: "\t", Stack: []string{"<x>", ""},
			Flow: &drops.Flow{Direction: "\n"}, Raw: &drops.RawEvent{Ifname: "é"}},
		"zoned":          {Flow: &drops.Flow{Client: netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("a\"<"), 1)}},
		"year past 9999": {Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
}

// TestDropJSONAsMarshal: the hand encoder writes what json.Marshal writes,
// for every field; a field added to Drop, Flow or RawEvent fails it until
// appendJSON writes it too.
func TestDropJSONAsMarshal(t *testing.T) {
	for typ, n := range map[reflect.Type]int{reflect.TypeFor[Drop](): 17, reflect.TypeFor[drops.Flow](): 6, reflect.TypeFor[drops.RawEvent](): 7} {
		if got := typ.NumField(); got != n {
			t.Errorf("%s has %d fields, appendJSON writes %d: teach it the new ones", typ, got, n)
		}
	}
	for name, d := range sampleDrops() {
		t.Run(name, func(t *testing.T) {
			want, wantErr := json.Marshal(d)
			var got bytes.Buffer
			err := DropsJSONLine(&got, d)
			if (err != nil) != (wantErr != nil) || err == nil && got.String() != string(want)+"\n" {
				t.Errorf("DropsJSONLine(%+v) = %q, %v, want %q, %v", d, got.String(), err, want, wantErr)
			}
		})
	}
}

// TestDropLinesAsDropsJSONLine: the reused buffer writes each line as
// DropsJSONLine does, whatever the line before it was (longer, shorter,
// one json.Marshal refuses).
func TestDropLinesAsDropsJSONLine(t *testing.T) {
	var got, want bytes.Buffer
	l := DropLines{W: &got}
	for range 2 {
		for name, d := range sampleDrops() {
			got.Reset()
			want.Reset()
			err := l.Write(&d)
			wantErr := DropsJSONLine(&want, d)
			if (err != nil) != (wantErr != nil) || got.String() != want.String() {
				t.Errorf("DropLines.Write(%s: %+v) = %q, %v, want %q, %v", name, d, got.String(), err, want.String(), wantErr)
			}
		}
	}
}

// TestDropsSummaryJSONAsDocument: the --summary document is JSONDocument's.
func TestDropsSummaryJSONAsDocument(t *testing.T) {
	var rows []Drop
	for _, d := range sampleDrops() {
		if d.Time.Year() < 10000 {
			rows = append(rows, d)
		}
	}
	sum := DropsSummary{Type: "summary", Length: time.Second, NoReasons: "old kernel", Filter: DropsFilter{Mode: "summary", Netns: "lb"},
		Attribution: drops.Attribution{Errors: map[string]string{"drops": `,"drops":[]`}}}
	cases := map[string][]Drop{"none matched": {}, "nil": nil, "rows": rows, "past 9999": {{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		"past 9999 after a row": append(rows[:1:1], Drop{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)})}
	for name, rows := range cases {
		t.Run(name, func(t *testing.T) {
			s := sum
			s.Aggregates = rows
			var got, want bytes.Buffer
			err := DropsSummaryJSON(&got, s)
			wantErr := JSONDocument(&want, s)
			if (err != nil) != (wantErr != nil) || got.String() != want.String() {
				t.Errorf("DropsSummaryJSON(%+v) =\n%s, %v\nwant\n%s, %v", s, got.String(), err, want.String(), wantErr)
			}
		})
	}
}

func FuzzDropJSON(f *testing.F) {
	f.Add("lb", "NO_SOCKET", "a<b>\"", uint64(3))
	f.Add("\xff\x00", "\u2028", "\\", uint64(0))
	f.Fuzz(func(t *testing.T, tag, reason, stage string, count uint64) {
		d := Drop{Type: "drop", NetnsTag: tag, Reason: reason, Location: stage, Count: count, Stack: []string{stage, tag},
			Flow: &drops.Flow{Stage: stage}, Raw: &drops.RawEvent{Ifname: tag}}
		want, _ := json.Marshal(d)
		if got := d.appendJSON(nil); string(got) != string(want) {
			t.Errorf("appendJSON(%+v) = %s, want %s", d, got, want)
		}
	})
}

func BenchmarkDropsJSONLine(b *testing.B) {
	d := sampleDrops()["aggregate"]
	d.Time, d.Raw = time.Now(), &drops.RawEvent{TimeNs: 1, Ifindex: 2, Len: 28}
	for name, write := range map[string]func(Drop) ([]byte, error){
		"Marshal":    func(d Drop) ([]byte, error) { return json.Marshal(d) },
		"appendJSON": func(d Drop) ([]byte, error) { return d.appendJSON(make([]byte, 0, 512)), nil },
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := write(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
