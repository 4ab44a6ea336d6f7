package report

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/lbdoctor/lbdoctor/probes/drops"
)

// A drops flood makes one Drop per flow: encoding/json's reflection, and
// its scanner over each value a Marshaler returns, cost more than the rest
// of naming a drop. appendJSON writes a Drop exactly as json.Marshal does
// (TestDropJSONAsMarshal holds the two together, field by field).

// appendJSON appends d as json.Marshal encodes it.
func (d *Drop) appendJSON(b []byte) []byte { return d.appendJSONWith(b, nil) }

// lineTexts are the texts DropLines keeps from one line to the next: a
// flood's events fall in few seconds, at few places, on few NAT stages.
type lineTexts struct {
	time  timeText
	place placeText
	stage stageText
}

// appendJSONWith is appendJSON; the text of its time, place and flow stage
// are lt's when it has them (nil: made whole).
func (d *Drop) appendJSONWith(b []byte, lt *lineTexts) []byte {
	var tc *timeText
	if lt != nil {
		tc = &lt.time
	}
	b = append(b, `{"type":`...)
	b = appendJSONString(b, d.Type)
	if !d.Time.IsZero() {
		// Time.MarshalJSON's text, quoted, without its allocation.
		var err error
		if b, err = tc.appendTo(append(b, `,"time":"`...), d.Time); err != nil {
			return nil // out of its range: json.Marshal says so
		}
		b = append(b, '"')
	}
	if lt != nil {
		b = lt.place.appendTo(b, d)
	} else {
		b = d.appendPlace(b)
	}
	if d.deferred() {
		b = appendEndpoint(append(b, `,"src":`...), &d.ends, false)
		b = appendEndpoint(append(b, `,"dst":`...), &d.ends, true)
	} else {
		b = appendOmitEmpty(b, `,"src":`, d.Src)
		b = appendOmitEmpty(b, `,"dst":`, d.Dst)
	}
	b = appendOmitEmpty(b, `,"tcp_flags":`, d.TCPFlags)
	b = appendOmitEmpty(b, `,"icmp":`, d.ICMP)
	if d.Len != 0 {
		b = append(b, `,"len":`...)
		b = strconv.AppendUint(b, uint64(d.Len), 10)
	}
	if d.Count != 0 {
		b = append(b, `,"count":`...)
		b = strconv.AppendUint(b, d.Count, 10)
	}
	if d.NotItemised {
		b = append(b, `,"not_itemised":true`...)
	}
	if len(d.Stack) > 0 {
		b = append(b, `,"stack":[`...)
		for i, f := range d.Stack {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, f)
		}
		b = append(b, ']')
	}
	if f := d.Flow; f != nil {
		b = append(b, `,"flow":{"client":`...)
		b = appendAddrPort(b, f.Client)
		b = append(b, `,"vip":`...)
		b = appendAddrPort(b, f.VIP)
		b = append(b, `,"real":`...)
		b = appendAddrPort(b, f.Real)
		if lt != nil {
			b = lt.stage.appendTo(b, f)
		} else {
			b = appendStage(b, f)
		}
		if f.EarlierReal.IsValid() { // omitzero
			b = append(b, `,"earlier_real":`...)
			b = appendAddrPort(b, f.EarlierReal)
		}
		b = append(b, '}')
	}
	if r := d.Raw; r != nil {
		b = appendRaw(b, r)
	}
	return append(b, '}')
}

// appendPlace appends the fields of d from netns to proto: where it was
// dropped, and why.
func (d *Drop) appendPlace(b []byte) []byte {
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(d.Netns), 10)
	b = appendOmitEmpty(b, `,"netns_name":`, d.NetnsTag)
	b = appendOmitEmpty(b, `,"ifname":`, d.Ifname)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, d.Reason)
	b = append(b, `,"location":`...)
	b = appendJSONString(b, d.Location)
	return appendOmitEmpty(b, `,"proto":`, d.Proto)
}

// placeText is appendPlace's text of the drops of one place, made once
// for all of them.
type placeText struct {
	netns                                uint32
	tag, ifname, reason, location, proto string
	text                                 []byte // nil: none made yet
}

// appendTo appends d's place as appendPlace does.
func (p *placeText) appendTo(b []byte, d *Drop) []byte {
	if p.text == nil || p.netns != d.Netns || p.tag != d.NetnsTag || p.ifname != d.Ifname || p.reason != d.Reason || p.location != d.Location || p.proto != d.Proto {
		*p = placeText{netns: d.Netns, tag: d.NetnsTag, ifname: d.Ifname, reason: d.Reason, location: d.Location, proto: d.Proto, text: d.appendPlace(p.text[:0])}
	}
	return append(b, p.text...)
}

// appendStage appends a flow's direction, stage and source fields.
func appendStage(b []byte, f *drops.Flow) []byte {
	b = append(b, `,"direction":`...)
	b = appendJSONString(b, f.Direction)
	b = append(b, `,"stage":`...)
	b = appendJSONString(b, f.Stage)
	b = append(b, `,"source":`...)
	return appendJSONString(b, f.Source)
}

// stageText is appendStage's text of the flows of one stage, made once for
// all of them.
type stageText struct {
	direction, stage, source string
	text                     []byte // nil: none made yet
}

// appendTo appends f's stage as appendStage does.
func (st *stageText) appendTo(b []byte, f *drops.Flow) []byte {
	if st.text == nil || st.direction != f.Direction || st.stage != f.Stage || st.source != f.Source {
		*st = stageText{direction: f.Direction, stage: f.Stage, source: f.Source, text: appendStage(st.text[:0], f)}
	}
	return append(b, st.text...)
}

func appendRaw(b []byte, r *drops.RawEvent) []byte {
	b = append(b, `,"raw":{"time_ns":`...)
	b = strconv.AppendUint(b, r.TimeNs, 10)
	b = append(b, `,"ifindex":`...)
	b = strconv.AppendUint(b, uint64(r.Ifindex), 10)
	b = appendOmitEmpty(b, `,"ifname":`, r.Ifname)
	b = append(b, `,"len":`...)
	b = strconv.AppendUint(b, uint64(r.Len), 10)
	b = append(b, `,"cpu":`...)
	b = strconv.AppendUint(b, uint64(r.CPU), 10)
	b = append(b, `,"tcp_flags":`...)
	b = strconv.AppendUint(b, uint64(r.TCPFlags), 10)
	return append(b, '}')
}

func appendOmitEmpty(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendJSONString(append(b, key...), s)
}

// appendAddrPort appends ap as its MarshalText: "" for the zero address.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	n := len(b)
	b = ap.AppendTo(append(b, '"'))
	if !plain(b[n+1:]) { // a zone can hold anything
		return appendJSONString(b[:n], string(b[n+1:]))
	}
	return append(b, '"')
}

// appendEndpoint appends e's source (dst false) or destination as a JSON
// string, as appendJSONString would the string Endpoints makes of it.
func appendEndpoint(b []byte, e *endpoints, dst bool) []byte {
	n := len(b)
	b = e.appendTo(append(b, '"'), dst)
	if !plain(b[n+1:]) { // a zone can hold anything
		return appendJSONString(b[:n], string(b[n+1:]))
	}
	return append(b, '"')
}

// plain says whether s is copied into JSON as it is: printable ASCII that
// encoding/json does not escape. Every string of every event line goes
// through it: one table load a byte, not seven comparisons.
func plain[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if !plainByte[s[i]] {
			return false
		}
	}
	return true
}

// plainByte marks the bytes plain keeps as they are.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString appends s quoted. Plain ASCII (what names, addresses and
// kernel symbols are) is copied; anything else is left to encoding/json, so
// that its escaping (HTML characters, control characters, invalid UTF-8,
// U+2028) stays the one rule.
func appendJSONString(b []byte, s string) []byte {
	if !plain(s) {
		q, _ := json.Marshal(s)
		return append(b, q...)
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// timeText makes Time.AppendText's text (RFC 3339, nanoseconds without
// their trailing zeros) of times that mostly fall in one second, as a
// flood's events do: the date, clock and zone are made once a second and
// copied; only the fraction is made per time. Not for concurrent use.
type timeText struct {
	sec        int64
	loc        *time.Location
	head, zone []byte // "2006-01-02T15:04:05", and "Z" or "+01:00"
}

// appendTo appends t as t.AppendText does, and fails where it fails. A nil
// tc makes the text whole.
func (tc *timeText) appendTo(b []byte, t time.Time) ([]byte, error) {
	if tc == nil {
		return t.AppendText(b)
	}
	ns := t.Nanosecond()
	if sec := t.Unix(); tc.head == nil || sec != tc.sec || t.Location() != tc.loc {
		// The second's own text: AppendText's, of its first nanosecond
		// (no fraction). Zones change offset on whole seconds.
		whole, err := t.Add(-time.Duration(ns)).AppendText(tc.head[:0])
		if err != nil {
			tc.head = nil
			return t.AppendText(b) // its own error (or text, should it have one)
		}
		const clock = len("2006-01-02T15:04:05")
		tc.sec, tc.loc = sec, t.Location()
		tc.head, tc.zone = whole[:clock], append(tc.zone[:0], whole[clock:]...)
	}
	b = append(b, tc.head...)
	if ns != 0 {
		// ".123456789" without trailing zeros.
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, tc.zone...), nil
}

// DropLines writes drop events as DropsJSONLine does, one line each,
// through one buffer it reuses: a flood's lines cost no allocation (nor a
// Drop copied into an interface). The writer must not keep what it is
// given (a lineQueue copies it). Not for concurrent use.
type DropLines struct {
	W     io.Writer
	buf   []byte
	texts lineTexts
}

// Write writes d as one JSON line.
func (l *DropLines) Write(d *Drop) error {
	b := d.appendJSONWith(l.buf[:0], &l.texts)
	if b == nil {
		return DropsJSONLine(l.W, *d) // json.Marshal says what it cannot encode
	}
	l.buf = append(b, '\n')
	_, err := l.W.Write(l.buf)
	return err
}

// DropsSummaryJSON writes the --summary -o json document: JSONDocument's
// bytes, with the rows encoded by appendJSON and indented one by one into
// the document (no compact copy of it is made), which is handed to w
// whole, in one Write.
func DropsSummaryJSON(w io.Writer, s DropsSummary) error {
	rows := s.Aggregates
	if rows != nil {
		s.Aggregates = []Drop{}
	}
	head, err := json.Marshal(s)
	if err != nil {
		return err
	}
	// The top-level "drops" follows other keys; no nested object has one,
	// and a string cannot hold this byte sequence unescaped.
	const empty = `,"drops":[]`
	i := bytes.Index(head, []byte(empty))
	if len(rows) == 0 || i < 0 {
		return JSONDocument(w, s)
	}
	// Room for every row as long as the longest of a sample, indented (the
	// document grows past it if need be): one allocation, not a doubling
	// series of copies of megabytes. Room not written is never touched.
	var row []byte // each row, compact, before it is indented
	longest := 0
	for j := 0; j < len(rows); j += max(1, len(rows)/16) {
		row = rows[j].appendJSON(row[:0])
		longest = max(longest, len(row))
	}
	doc, depth := indentJSONFrom(make([]byte, 0, 2*len(head)+len(rows)*(3*longest/2+64)), head[:i+len(empty)-1], 0)
	for j := range rows {
		if j > 0 {
			doc, depth = indentJSONFrom(doc, []byte{','}, depth)
		}
		if row = rows[j].appendJSON(row[:0]); row == nil {
			s.Aggregates = rows
			return JSONDocument(w, s)
		}
		doc, depth = indentJSONFrom(doc, row, depth)
	}
	doc, _ = indentJSONFrom(doc, head[i+len(empty)-1:], depth)
	_, err = writeOwned(w, append(doc, '\n'))
	return err
}

// An OwningWriter takes a buffer for good: its caller never uses it again,
// so the writer need not copy it (cmd's guarded stdout, which may give up
// a write and leave it running, would otherwise copy a document of
// megabytes).
type OwningWriter interface {
	WriteOwned(p []byte) (int, error)
}

// writeOwned writes p, which its caller drops, to w.
func writeOwned(w io.Writer, p []byte) (int, error) {
	if ow, ok := w.(OwningWriter); ok {
		return ow.WriteOwned(p)
	}
	return w.Write(p)
}
