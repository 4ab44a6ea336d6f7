package report_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// encoderDocument is what JSONDocument must write: json.Encoder's indented
// output.
func encoderDocument(t testing.TB, v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// FuzzJSONDocument checks JSONDocument against json.Encoder with SetIndent
// on any JSON value: same bytes. The seeds run in every `go test`.
func FuzzJSONDocument(f *testing.F) {
	seeds := []string{
		`null`, `0`, `"x"`, `[]`, `{}`, `[[],{},[{}],{"a":[]}]`,
		`{"a":"b,c:d{e}[f]","b":"quote \" backslash \\ \\\" end","c":[1,-2.5e3,true,false,null]}`,
		`{"nested":{"deeper":{"deepest":[[[1]],{"x":{}}]}},"after":"\u003c\u2028"}`,
		`"\\"`, `["\\\\",",","{","}"]`, `{"":""}`,
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var v any
		if json.Unmarshal([]byte(s), &v) != nil {
			return
		}
		var got bytes.Buffer
		if err := report.JSONDocument(&got, v); err != nil {
			t.Fatal(err)
		}
		if want := encoderDocument(t, v); got.String() != want {
			t.Errorf("JSONDocument(%s) = %q, want %q", s, got.String(), want)
		}
	})
}

// TestJSONDocumentDropsSummary checks a --summary document with rows, flows
// and empty lists.
func TestJSONDocumentDropsSummary(t *testing.T) {
	ap := netip.MustParseAddrPort
	sum := report.DropsSummary{Type: "summary", Attach: "tracepoint", Window: 5 * time.Second,
		Attribution: drops.Attribution{Attributed: 1, Errors: map[string]string{"ipvs": `can't "read"`}},
		Aggregates: []report.Drop{
			{Type: "drop", Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x4d", Proto: "udp", Src: "10.0.0.1:1", Dst: "10.0.0.2:2", Count: 3,
				Flow: &drops.Flow{Client: ap("10.0.0.1:1"), VIP: ap("10.0.0.2:2"), Real: ap("10.0.1.2:80"), Direction: "request", Stage: "<after> & DNAT", Source: "conntrack"}},
			{Type: "drop", Reason: "NO_SOCKET", Location: "[unknown]", Stack: []string{"a", "b"}},
		},
		Filter: report.DropsFilter{Mode: "summary", Netns: "lb", Addrs: []string{}, Ports: []uint16{80, 443}},
	}
	for name, v := range map[string]report.DropsSummary{"rows": sum, "no rows": {Type: "summary", Aggregates: []report.Drop{}}} {
		t.Run(name, func(t *testing.T) {
			var got bytes.Buffer
			if err := report.JSONDocument(&got, v); err != nil {
				t.Fatal(err)
			}
			if want := encoderDocument(t, v); got.String() != want {
				t.Errorf("JSONDocument(%+v) =\n%s\nwant\n%s", v, got.String(), want)
			}
		})
	}
}

func BenchmarkDropsSummary(b *testing.B) {
	ap := netip.MustParseAddrPort
	rows := make([]report.Drop, 10000)
	for i := range rows {
		rows[i] = report.Drop{Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x4d",
			Proto: "udp", Src: "10.0.0.1:20000", Dst: "10.0.0.2:9", Len: 28, Count: 1,
			Flow: &drops.Flow{Client: ap("10.0.0.1:20000"), VIP: ap("10.0.0.2:9"), Real: ap("10.0.0.2:9"), Direction: "request", Stage: "as the client sent it, before NAT", Source: "conntrack"}}
	}
	sum := report.DropsSummary{Type: "summary", Aggregates: rows}
	for name, write := range map[string]func(io.Writer, report.DropsSummary) error{
		"JSONDocument":     func(w io.Writer, s report.DropsSummary) error { return report.JSONDocument(w, s) },
		"DropsSummaryJSON": report.DropsSummaryJSON,
	} {
		b.Run(name, func(b *testing.B) {
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := write(&buf, sum); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
