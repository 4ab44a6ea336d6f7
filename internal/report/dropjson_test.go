package report

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/probes/drops"
)

func sampleDrops() map[string]Drop {
	ap := netip.MustParseAddrPort
	flow := &drops.Flow{Client: ap("10.0.0.1:1"), VIP: ap("10.0.0.2:2"), Real: ap("[fe80::1%eth0]:80"), Direction: "SYN (request)", Stage: "after DNAT & SNAT", Source: "conntrack", EarlierReal: ap("10.0.1.99:80")}
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
		"icmp":           {Type: "drop", Reason: "NETFILTER_DROP", Proto: "icmp", Src: "10.1.0.5", Dst: "10.1.0.50", ICMP: "redirect, type 5 code 1"},
	}
}

// TestDropJSONAsMarshal: the hand encoder writes what json.Marshal writes,
// for every field; a field added to Drop, Flow or RawEvent fails it until
// appendJSON writes it too.
func TestDropJSONAsMarshal(t *testing.T) {
	for typ, n := range map[reflect.Type]int{reflect.TypeFor[Drop](): 19, reflect.TypeFor[drops.Flow](): 7, reflect.TypeFor[drops.RawEvent](): 7} {
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
// one json.Marshal refuses, one that differs from it in a single field of
// the texts it keeps: its place, its flow's stage).
func TestDropLinesAsDropsJSONLine(t *testing.T) {
	var got, want bytes.Buffer
	l := DropLines{W: &got}
	check := func(name string, d Drop) {
		t.Helper()
		got.Reset()
		want.Reset()
		err := l.Write(&d)
		wantErr := DropsJSONLine(&want, d)
		if (err != nil) != (wantErr != nil) || got.String() != want.String() {
			t.Errorf("DropLines.Write(%s: %+v) = %q, %v, want %q, %v", name, d, got.String(), err, want.String(), wantErr)
		}
	}
	for range 2 {
		for name, d := range sampleDrops() {
			check(name, d)
		}
	}
	d := sampleDrops()["aggregate"]
	flow := *d.Flow
	d.Flow = &flow
	for _, step := range []struct {
		name   string
		change func()
	}{
		{"as before", func() {}},
		{"netns", func() { d.Netns++ }},
		{"netns name", func() { d.NetnsTag = "lb2" }},
		{"no netns name", func() { d.NetnsTag = "" }},
		{"ifname", func() { d.Ifname = "eth1" }},
		{"reason", func() { d.Reason = "NO_SOCKET" }},
		{"location", func() { d.Location = "udp_rcv+0x1" }},
		{"proto", func() { d.Proto = "tcp" }},
		{"direction", func() { flow.Direction = "reply" }},
		{"stage", func() { flow.Stage = "after DNAT to the real server" }},
		{"source", func() { flow.Source = "ipvs" }},
		{"escaped stage", func() { flow.Stage = "<\u2028>" }},
		{"no flow", func() { d.Flow = nil }},
		{"a flow again", func() { d.Flow = &flow }},
	} {
		step.change()
		check("aggregate, "+step.name+" changed", d)
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
	lines := DropLines{W: io.Discard}
	for name, write := range map[string]func(Drop) ([]byte, error){
		"Marshal":    func(d Drop) ([]byte, error) { return json.Marshal(d) },
		"appendJSON": func(d Drop) ([]byte, error) { return d.appendJSON(make([]byte, 0, 512)), nil },
		// A flood's lines, one after another: the texts DropLines keeps.
		"DropLines": func(d Drop) ([]byte, error) { return nil, lines.Write(&d) },
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

// TestDropEventOfAsDropOf: an event's line, its endpoints appended as it
// is written (DropEventOf), is DropOf's line byte for byte, in JSON and in
// text, for every kind of endpoint.
func TestDropEventOfAsDropOf(t *testing.T) {
	ap := netip.MustParseAddrPort
	pkt := func(family, proto uint8, s, d netip.AddrPort) drops.Counted {
		return drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Netns: 7, Family: family, Proto: proto, Src: s, Dst: d}}, ReasonName: "NO_SOCKET", Symbol: "udp_queue_rcv_one_skb+0x1a"}
	}
	cases := map[string]drops.Counted{
		"udp4":         pkt(4, 17, ap("10.79.0.1:1234"), ap("10.79.0.2:20001")),
		"tcp6":         pkt(6, 6, ap("[2001:db8::1]:443"), ap("[2001:db8::2]:5")),
		"icmp no port": pkt(4, 1, ap("10.0.0.1:0"), ap("10.0.0.2:0")),
		"zoned":        pkt(6, 17, netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone("a\"<"), 1), ap("[fe80::2]:2")),
		"zero addrs":   pkt(4, 17, netip.AddrPort{}, netip.AddrPort{}),
		"zero no port": pkt(4, 1, netip.AddrPort{}, netip.AddrPort{}),
		"not IP":       pkt(0, 0, netip.AddrPort{}, netip.AddrPort{}),
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			want, got := DropOf(c, "lb"), DropEventOf(c, "lb")
			var wj, gj bytes.Buffer
			if err := DropsJSONLine(&wj, want); err != nil {
				t.Fatal(err)
			}
			if err := (&DropLines{W: &gj}).Write(&got); err != nil || gj.String() != wj.String() {
				t.Errorf("DropLines.Write(DropEventOf(%s)) = %q, %v, want %q", name, gj.String(), err, wj.String())
			}
			if g, w := DropLine(got), DropLine(want); g != w {
				t.Errorf("DropLine(DropEventOf(%s)) = %q, want %q", name, g, w)
			}
			if gs, gd := got.Endpoints(); gs != want.Src || gd != want.Dst {
				t.Errorf("DropEventOf(%s).Endpoints() = %q, %q, want %q, %q", name, gs, gd, want.Src, want.Dst)
			}
		})
	}
}

// TestTimeTextAsAppendText: the per-second text of DropLines' times is
// AppendText's, for times in one second and across seconds, zones, a
// whole second, and years AppendText refuses.
func TestTimeTextAsAppendText(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = time.FixedZone("CET", 3600)
	}
	base := time.Date(2026, 3, 29, 0, 59, 59, 0, time.UTC) // Berlin changes to summer time at 01:00 UTC
	var times []time.Time
	for _, ns := range []int{0, 1, 10, 123456789, 999999999, 500000000, 1000000000, 1000000001, 2999999990} {
		for _, loc := range []*time.Location{time.UTC, berlin, time.FixedZone("odd", -(3*3600 + 30*60)), time.Local} {
			times = append(times, base.Add(time.Duration(ns)).In(loc))
		}
	}
	times = append(times, time.Unix(0, 1).In(time.UTC), time.Unix(-1, 5).In(time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 5, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 5, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 5, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("25h", 25*3600)))
	var tc timeText
	for range 2 { // a second time, from a cache left by the last one
		for _, tm := range times {
			want, wantErr := tm.AppendText([]byte("x"))
			got, err := tc.appendTo([]byte("x"), tm)
			if (err != nil) != (wantErr != nil) || err == nil && string(got) != string(want) {
				t.Errorf("timeText.appendTo(%v) = %q, %v, want %q, %v", tm, got, err, want, wantErr)
			}
		}
	}
}

// BenchmarkDropEventLine: one event-mode drop from its named packet to its
// JSON line, as `drops -o json` makes it (DropOf formats the endpoints and
// AppendText the time; DropEventOf and DropLines append both).
func BenchmarkDropEventLine(b *testing.B) {
	c := drops.Counted{Aggregate: drops.Aggregate{Packet: drops.Packet{Netns: 4026532252, Family: 4, Proto: 17,
		Src: netip.MustParseAddrPort("10.79.0.1:41234"), Dst: netip.MustParseAddrPort("10.79.0.2:20001")}}, ReasonName: "NO_SOCKET", Symbol: "__udp4_lib_rcv+0x8e1"}
	raw := drops.RawEvent{TimeNs: 1, Ifindex: 2, Ifname: "f1", Len: 29}
	start := time.Now().UnixNano()
	for name, of := range map[string]func(drops.Counted, string) Drop{"DropOf": DropOf, "DropEventOf": DropEventOf} {
		b.Run(name, func(b *testing.B) {
			l := DropLines{W: io.Discard}
			b.ReportAllocs()
			i := int64(0)
			for b.Loop() {
				i++
				d := of(c, "fb")
				d.Time = time.Unix(0, start+i*400000) // 2,500 drops a second
				d.Ifname, d.Len, d.Raw = raw.Ifname, raw.Len, &raw
				if err := l.Write(&d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
