package report_test

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbdoctor/lbdoctor/checks"
	"github.com/lbdoctor/lbdoctor/flowpath"
	"github.com/lbdoctor/lbdoctor/internal/netns"
	"github.com/lbdoctor/lbdoctor/internal/report"
	"github.com/lbdoctor/lbdoctor/internal/testkit"
	"github.com/lbdoctor/lbdoctor/probes/drops"
)

func sample() *report.Report {
	fs := []checks.Finding{
		{ID: "kernel.ipvs", Status: checks.Pass, Title: "IPVS is available: 1 virtual service(s)", Evidence: []checks.Evidence{}},
		{ID: "sysctl.vs_conntrack", Status: checks.Skip, Title: "IPVS connections are in conntrack where rules need them",
			Reason: "no rule depends on IPVS connections being in conntrack", Evidence: []checks.Evidence{}},
		{ID: "sysctl.ip_forward", Status: checks.Fail, Title: "IP forwarding is off while IPVS masquerades",
			Reason:   "replies are dropped",
			Evidence: []checks.Evidence{{Fact: "net.ipv4.ip_forward = 0", Source: "netns lb"}},
			Fix:      []string{"ip netns exec lb sysctl -w net.ipv4.ip_forward=1"},
			Path: []flowpath.Path{{Service: "TCP 10.1.0.6:8085", Real: "10.1.0.40:8085", Window: 3 * time.Second, Legs: []flowpath.Leg{
				{Kind: flowpath.Request, Name: "client→VIP", Status: flowpath.OK, Packets: 13, Counted: true, Source: "IPVS stats of TCP 10.1.0.6:8085"},
				{Kind: flowpath.Route, Name: "route", Status: flowpath.Stopped, Note: "10.1.0.3 not local, forwarding off", Source: "net.ipv4.ip_forward, netns lb"},
			}, Stops: []flowpath.Stop{{Leg: flowpath.Route, Reason: "IP_INADDRERRORS", Function: "ip_error", Count: 13}}}}},
	}
	t := report.Target{Netns: netns.Target{Spec: "lb", Name: "lb", Path: "/run/netns/lb", Inode: 4026532252},
		Kernel: "6.1.0-56-cloud-amd64", VIP: "10.1.0.6:8085", Proto: "tcp"}
	return report.New(t, fs, map[string]string{"rules": "iptables-legacy-save not installed"})
}

func TestRenderers(t *testing.T) {
	for _, tt := range []struct {
		name   string
		render func(*bytes.Buffer, *report.Report) error
	}{
		{"report.json", func(b *bytes.Buffer, r *report.Report) error { return report.JSON(b, r) }},
		{"report.txt", func(b *bytes.Buffer, r *report.Report) error { return report.Text(b, r) }},
		{"report.junit.xml", func(b *bytes.Buffer, r *report.Report) error { return report.JUnit(b, r) }},
	} {
		var buf bytes.Buffer
		if err := tt.render(&buf, sample()); err != nil {
			t.Fatal(err)
		}
		testkit.Golden(t, tt.name, buf.Bytes())
	}
}

func TestNewCountsAndVerdict(t *testing.T) {
	r := sample()
	if r.Schema != 1 || r.Verdict != checks.Fail || r.Summary["fail"] != 1 || r.Summary["skip"] != 1 || r.Summary["pass"] != 1 {
		t.Errorf("New() = schema %d verdict %s summary %v, want 1, fail, 1 fail 1 skip 1 pass", r.Schema, r.Verdict, r.Summary)
	}
}

// A flood from many source ports: the text summary shows the top flows and
// sums up the rest by place; without a cap it shows them all.
func TestDropsSummaryTop(t *testing.T) {
	var rows []report.Drop
	for i := 0; i < 30; i++ {
		rows = append(rows, report.Drop{Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "NO_SOCKET", Location: "tcp_v4_rcv+0x91",
			Proto: "tcp", Src: fmt.Sprintf("10.1.0.3:%d", 40000+i), Dst: "10.1.0.6:80", Count: uint64(1 + i%3)})
	}
	rows = append(rows,
		report.Drop{Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "IP_INADDRERRORS", Location: "ip_error+0x92", Proto: "tcp", Src: "10.1.0.50:8085", Dst: "10.1.0.3:45140", Count: 9},
		report.Drop{Type: "drop", Netns: 4026531840, Reason: "NOT_SPECIFIED", Location: "ip6_mc_input+0x15e", Proto: "icmpv6", Src: "fe80::1", Dst: "ff02::2", Count: 1})
	for _, top := range []int{3, 0} {
		t.Run(fmt.Sprintf("top %d", top), func(t *testing.T) {
			var b bytes.Buffer
			s := report.DropsSummary{Type: "summary", Attach: "tp_btf", AttachMs: 61, Window: 5 * time.Second,
				Counters: drops.Counters{Matched: 70}, Delivered: 70, Aggregates: append([]report.Drop{}, rows...), Top: top,
				Attribution: drops.Attribution{Attributed: 9, NotAttributed: 61, Batches: 2}}
			if err := report.DropsSummaryText(&b, s); err != nil {
				t.Fatal(err)
			}
			testkit.Golden(t, fmt.Sprintf("drops-summary-top%d.txt", top), b.Bytes())
		})
	}
}

// A flood of more flows than the tracer's flow map holds: the drops of
// flows not itemised are no row of their own but counted with their place
// in the by-place lines, with or without a cap, and said on the closing
// lines.
func TestDropsSummaryNotItemised(t *testing.T) {
	var rows []report.Drop
	for i := 0; i < 5; i++ {
		rows = append(rows, report.Drop{Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "NO_SOCKET", Location: "udp_queue_rcv_one_skb+0x2f",
			Proto: "udp", Src: fmt.Sprintf("10.1.0.3:%d", 40000+i), Dst: "10.1.0.6:53", Count: 1})
	}
	rows = append(rows,
		report.Drop{Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "NO_SOCKET", Location: "udp_queue_rcv_one_skb+0x2f", Count: 123617, NotItemised: true},
		report.Drop{Type: "drop", Netns: 4026532252, NetnsTag: "lb", Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x46f", Count: 40, NotItemised: true})
	for _, top := range []int{3, 0} {
		t.Run(fmt.Sprintf("top %d", top), func(t *testing.T) {
			var b bytes.Buffer
			s := report.DropsSummary{Type: "summary", Attach: "tp_btf", AttachMs: 61, Window: 5 * time.Second,
				Counters: drops.Counters{Matched: 123662, NotItemised: 123657}, Delivered: 123662, Aggregates: append([]report.Drop{}, rows...), Top: top,
				Attribution: drops.Attribution{NotAttributed: 123662, Batches: 2}}
			if err := report.DropsSummaryText(&b, s); err != nil {
				t.Fatal(err)
			}
			testkit.Golden(t, fmt.Sprintf("drops-summary-not-itemised-top%d.txt", top), b.Bytes())
		})
	}
}

// CI servers read -o junit with the common JUnit schema (Jenkins xUnit's
// junit-10.xsd, in testdata): every report validates against it with
// xmllint, also one with every status and text XML cannot carry as is.
func TestJUnitValidatesAgainstSchema(t *testing.T) {
	xmllint, err := exec.LookPath("xmllint")
	if err != nil {
		if testkit.InCI() {
			t.Fatal("xmllint is not installed (Debian: libxml2-utils)")
		}
		t.Skip("xmllint is not installed (Debian: libxml2-utils)")
	}
	odd := "a ]]> b <c> & \"d\" \x1b[31m e\u00a0f"
	tricky := report.New(report.Target{Netns: netns.Target{Spec: odd, Name: odd}}, []checks.Finding{
		{ID: "a.pass", Status: checks.Pass, Title: odd},
		{ID: "a.warn", Status: checks.Warn, Title: odd, Reason: odd, Evidence: []checks.Evidence{{Fact: odd, Source: odd}}, Fix: []string{odd}},
		{ID: "a.fail", Status: checks.Fail, Title: odd, Reason: odd, Evidence: []checks.Evidence{{Fact: odd, Source: odd}}, Fix: []string{odd}},
		{ID: "a.skip", Status: checks.Skip, Title: odd, Reason: odd},
	}, map[string]string{"rules": odd})
	for name, r := range map[string]*report.Report{"sample": sample(), "every status, odd text": tricky, "no findings": report.New(report.Target{}, nil, nil), "cut short": cutShort()} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := report.JUnit(&buf, r); err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(t.TempDir(), "junit.xml")
			if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(xmllint, "--noout", "--schema", filepath.Join("testdata", "junit.xsd"), f).CombinedOutput()
			if err != nil {
				t.Errorf("xmllint --schema junit.xsd (%s) = %v:\n%s\n%s", name, err, out, buf.String())
			}
		})
	}
}

// cutShort is a check whose drop window SIGINT cut short, no drop seen.
func cutShort() *report.Report {
	r := report.New(report.Target{Netns: netns.Target{Spec: "lb", Name: "lb"}}, []checks.Finding{
		{ID: "kernel.ipvs", Status: checks.Pass, Title: "IPVS is available"},
		{ID: "drops.vip_flows", Status: checks.Warn, Title: "no drop was seen, but the window was cut short"},
	}, nil)
	r.Interrupted = true
	r.CutShort = "! cut short by SIGINT after 1.5s of 10s: the results cover that much"
	return r
}

// -o junit says a cut-short window as text and JSON do: on the suite and on
// the cases the window judged, not on the others.
func TestJUnitSaysCutShort(t *testing.T) {
	var buf bytes.Buffer
	if err := report.JUnit(&buf, cutShort()); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Suites []struct {
			SystemErr string `xml:"system-err"`
			Cases     []struct {
				Name      string `xml:"name,attr"`
				SystemOut string `xml:"system-out"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil || len(doc.Suites) != 1 {
		t.Fatalf("JUnit(cut short) = %v:\n%s", err, buf.String())
	}
	const want = "cut short by SIGINT after 1.5s of 10s"
	s := doc.Suites[0]
	if !strings.Contains(s.SystemErr, want) {
		t.Errorf("JUnit(cut short) suite system-err = %q, want %q", s.SystemErr, want)
	}
	for _, c := range s.Cases {
		if got := strings.Contains(c.SystemOut, want); got != (c.Name == "drops.vip_flows") {
			t.Errorf("JUnit(cut short) case %s system-out = %q, want the cut short said only on drops cases", c.Name, c.SystemOut)
		}
	}
}
