package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

const origMsg = "Received: from client.example.org by gw.example.org\r\n" +
	"From: Alice <alice@example.org>\r\n" +
	"To: bob@x.example, carol@y.example\r\n" +
	"Subject: quarterly figures\r\n" +
	"Message-ID: <orig-123@example.org>\r\n" +
	"\r\n" +
	"SECRET BODY LINE 1\r\n" +
	"SECRET BODY LINE 2\r\n"

const origHeaders = "Received: from client.example.org by gw.example.org\r\n" +
	"From: Alice <alice@example.org>\r\n" +
	"To: bob@x.example, carol@y.example\r\n" +
	"Subject: quarterly figures\r\n" +
	"Message-ID: <orig-123@example.org>\r\n"

var (
	tNow     = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	tArrival = time.Date(2026, 12, 1, 9, 30, 0, 0, time.FixedZone("", 3600))
	tLast    = time.Date(2026, 12, 3, 9, 59, 0, 0, time.UTC)
)

func baseParams() Params {
	return Params{
		ReportingMTA: "gw.example.org",
		Sender:       "alice@example.org",
		EnvelopeID:   "env+2B42",
		QueueID:      "Q123",
		Arrival:      tArrival,
		Now:          tNow,
		MessageID:    "dsn-1@gw.example.org",
		Recipients: []Recipient{
			{
				Rcpt:        "bob@x.example",
				ORCPT:       "rfc822;bob+2Btag@x.example",
				Action:      "failed",
				Status:      "5.1.1",
				RemoteMTA:   "mx1.x.example.",
				Diagnostic:  "550 5.1.1 <bob@x.example>: no such user",
				LastAttempt: tLast,
			},
			{
				Rcpt:   "carol@y.example",
				Action: "delayed",
				Status: "4.4.1",
			},
		},
	}
}

// parsed is a DSN taken apart with the standard library.
type parsed struct {
	msg        *mail.Message
	partTypes  []string
	partHdrs   []textproto.MIMEHeader
	parts      [][]byte // decoded (quoted-printable undone by mime/multipart)
	perMessage textproto.MIMEHeader
	perRcpt    []textproto.MIMEHeader
}

func build(t testing.TB, p Params, original io.Reader) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Build(&buf, p, original); err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes()
}

// checkWire verifies CRLF line ends and the 998-character line limit
// (RFC 5322 §2.1.1).
func checkWire(t testing.TB, out []byte) {
	t.Helper()
	for i, c := range out {
		if c == '\n' && (i == 0 || out[i-1] != '\r') {
			t.Fatalf("bare LF at offset %d", i)
		}
		if c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
			t.Fatalf("bare CR at offset %d", i)
		}
	}
	for n, line := range strings.Split(string(out), "\r\n") {
		if len(line) > 998 {
			t.Fatalf("line %d has %d characters", n+1, len(line))
		}
	}
}

func parse(t testing.TB, out []byte) parsed {
	t.Helper()
	checkWire(t, out)
	msg, err := mail.ReadMessage(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("ReadMessage: %v\n%s", err, out)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type: %v", err)
	}
	if mt != "multipart/report" || params["report-type"] != "delivery-status" || params["boundary"] == "" {
		t.Fatalf("Content-Type = %q", msg.Header.Get("Content-Type"))
	}
	res := parsed{msg: msg}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		body, err := io.ReadAll(part)
		if err != nil {
			t.Fatalf("read part: %v", err)
		}
		pt, _, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if err != nil {
			t.Fatalf("part Content-Type %q: %v", part.Header.Get("Content-Type"), err)
		}
		res.partTypes = append(res.partTypes, pt)
		res.partHdrs = append(res.partHdrs, part.Header)
		res.parts = append(res.parts, body)
	}
	if len(res.parts) < 2 {
		t.Fatalf("%d parts", len(res.parts))
	}
	tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(res.parts[1])))
	for i := 0; ; i++ {
		h, err := tr.ReadMIMEHeader()
		if len(h) > 0 {
			if i == 0 {
				res.perMessage = h
			} else {
				res.perRcpt = append(res.perRcpt, h)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("delivery-status block %d: %v\n%s", i, err, res.parts[1])
		}
	}
	return res
}

func TestBuildFailedHeadersOnly(t *testing.T) {
	out := build(t, baseParams(), strings.NewReader(origMsg))
	d := parse(t, out)
	h := d.msg.Header

	want := map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@gw.example.org>",
		"To":             "<alice@example.org>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Date":           "Thu, 03 Dec 2026 10:00:00 +0000",
		"Message-Id":     "<dsn-1@gw.example.org>",
		"References":     "<orig-123@example.org>",
		"Auto-Submitted": "auto-replied",
		"Mime-Version":   "1.0",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if h.Get("Content-Transfer-Encoding") != "" {
		t.Errorf("unexpected top-level Content-Transfer-Encoding %q", h.Get("Content-Transfer-Encoding"))
	}
	if a, err := mail.ParseAddress(h.Get("To")); err != nil || a.Address != "alice@example.org" {
		t.Errorf("To does not parse: %v %v", a, err)
	}
	if a, err := mail.ParseAddress(h.Get("From")); err != nil || a.Address != "MAILER-DAEMON@gw.example.org" {
		t.Errorf("From does not parse: %v %v", a, err)
	}
	if dt, err := h.Date(); err != nil || !dt.Equal(tNow) {
		t.Errorf("Date = %v, %v", dt, err)
	}

	wantTypes := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}
	if strings.Join(d.partTypes, ",") != strings.Join(wantTypes, ",") {
		t.Fatalf("part types %v, want %v", d.partTypes, wantTypes)
	}

	text := string(d.parts[0])
	for _, s := range []string{"<bob@x.example>", "5.1.1", "mx1.x.example", "no such", "<carol@y.example>", "delayed", "Q123"} {
		if !strings.Contains(text, s) {
			t.Errorf("human-readable part lacks %q:\n%s", s, text)
		}
	}
	if strings.Contains(string(out), "SECRET BODY") {
		t.Errorf("body content leaked into a headers-only DSN")
	}

	pm := d.perMessage
	for k, v := range map[string]string{
		"Original-Envelope-Id": "env+42",
		"Reporting-MTA":        "dns; gw.example.org",
		"Arrival-Date":         "Tue, 01 Dec 2026 09:30:00 +0100",
		"X-Postern-Queue-ID":   "Q123",
	} {
		if got := pm.Get(k); got != v {
			t.Errorf("per-message %s = %q, want %q", k, got, v)
		}
	}
	if len(d.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(d.perRcpt))
	}
	r1 := d.perRcpt[0]
	for k, v := range map[string]string{
		"Original-Recipient": "rfc822; bob+tag@x.example",
		"Final-Recipient":    "rfc822; bob@x.example",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-MTA":         "dns; mx1.x.example",
		"Diagnostic-Code":    "smtp; 550 5.1.1 <bob@x.example>: no such user",
		"Last-Attempt-Date":  "Thu, 03 Dec 2026 09:59:00 +0000",
	} {
		if got := r1.Get(k); got != v {
			t.Errorf("recipient 1 %s = %q, want %q", k, got, v)
		}
	}
	r2 := d.perRcpt[1]
	for k, v := range map[string]string{
		"Final-Recipient": "rfc822; carol@y.example",
		"Action":          "delayed",
		"Status":          "4.4.1",
	} {
		if got := r2.Get(k); got != v {
			t.Errorf("recipient 2 %s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"Original-Recipient", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"} {
		if _, ok := r2[textproto.CanonicalMIMEHeaderKey(k)]; ok {
			t.Errorf("recipient 2 has %s although it was not given", k)
		}
	}

	if got := string(d.parts[2]); got != origHeaders {
		t.Errorf("returned headers:\n%q\nwant\n%q", got, origHeaders)
	}
	for i, want := range []string{"7bit", "7bit", "7bit"} {
		// mime/multipart drops the header only for quoted-printable.
		if got := d.partHdrs[i].Get("Content-Transfer-Encoding"); got != want {
			t.Errorf("part %d Content-Transfer-Encoding = %q, want %q", i+1, got, want)
		}
	}
	if bytes.ContainsFunc(out, func(r rune) bool { return r >= 0x80 }) {
		t.Errorf("non-ASCII output for an ASCII DSN")
	}
}

func TestHeaderFolding(t *testing.T) {
	p := baseParams()
	p.Recipients[0].Diagnostic = strings.Repeat("550 5.1.1 the mailbox you tried to reach does not exist here ", 12)
	out := build(t, p, nil)
	d := parse(t, out)
	if got, want := d.perRcpt[0].Get("Diagnostic-Code"), "smtp; "+strings.TrimSpace(p.Recipients[0].Diagnostic); got != want {
		t.Errorf("unfolded Diagnostic-Code = %q, want %q", got, want)
	}
	for _, line := range strings.Split(string(out), "\r\n") {
		if len(line) > 78 {
			t.Errorf("line of %d characters although it could be folded: %q", len(line), line)
		}
	}
	if len(d.parts) != 2 {
		t.Errorf("nil original: %d parts, want 2", len(d.parts))
	}

	// A single word longer than a line can hold must still respect 998.
	p.Recipients[0].Diagnostic = "550 " + strings.Repeat("x", 1500)
	out = build(t, p, nil)
	d = parse(t, out)
	diag := strings.ReplaceAll(d.perRcpt[0].Get("Diagnostic-Code"), " ", "")
	if !strings.Contains(diag, strings.Repeat("x", 1500)) {
		t.Errorf("long word lost characters: %d x", strings.Count(diag, "x"))
	}
}

func TestInjectionNeutralised(t *testing.T) {
	p := baseParams()
	p.Recipients[0].Diagnostic = "550 no\r\nBcc: victim@evil.example\r\n\r\nfake body\nX-Injected: 1"
	p.Recipients[0].Rcpt = "bob@x.example\r\nX-Injected: rcpt"
	p.Recipients[0].RemoteMTA = "mx.evil\r\nX-Injected: mta"
	p.Recipients[0].ORCPT = "rfc822;a@b+0D+0AX-Injected:+20orcpt"
	p.EnvelopeID = "id+0D+0AX-Injected:+20envid"
	p.QueueID = "Q\r\nX-Injected: q"
	p.Sender = "alice@example.org"
	out := build(t, p, strings.NewReader(origMsg))
	d := parse(t, out)

	for _, line := range strings.Split(string(out), "\r\n") {
		if strings.HasPrefix(line, "Bcc:") || strings.HasPrefix(line, "X-Injected") {
			t.Errorf("injected line %q", line)
		}
	}
	if _, ok := d.msg.Header["Bcc"]; ok {
		t.Errorf("Bcc header injected")
	}
	for i, h := range append([]textproto.MIMEHeader{d.perMessage}, d.perRcpt...) {
		if _, ok := h["X-Injected"]; ok {
			t.Errorf("block %d: X-Injected field injected", i)
		}
		if _, ok := h["Bcc"]; ok {
			t.Errorf("block %d: Bcc field injected", i)
		}
	}
	if len(d.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(d.perRcpt))
	}
	if got := d.perRcpt[0].Get("Diagnostic-Code"); got != "smtp; 550 no Bcc: victim@evil.example fake body X-Injected: 1" {
		t.Errorf("Diagnostic-Code = %q", got)
	}
	if got := d.perRcpt[0].Get("Final-Recipient"); got != "rfc822; bob@x.example X-Injected: rcpt" {
		t.Errorf("Final-Recipient = %q", got)
	}

	// The envelope sender becomes the To header: refuse rather than mangle.
	for _, s := range []string{"alice@example.org\r\nBcc: v@evil.example", "a\nb@example.org", "", "<>", "no-at-sign", "a@b\x00c"} {
		p := baseParams()
		p.Sender = s
		if err := Build(io.Discard, p, nil); err == nil {
			t.Errorf("sender %q accepted", s)
		}
	}
}

func TestNonASCIIWithoutUTF8(t *testing.T) {
	p := baseParams()
	p.Recipients[0].Diagnostic = "550 Benutzer unbekannt: jörg ✓"
	p.Recipients[0].Rcpt = "jörg@x.example"
	p.Recipients[0].RemoteMTA = "mx.bücher.example"
	out := build(t, p, strings.NewReader(origMsg))
	if i := bytes.IndexFunc(out, func(r rune) bool { return r >= 0x80 }); i >= 0 {
		t.Fatalf("non-ASCII byte at %d without UTF8:\n%s", i, out)
	}
	d := parse(t, out)
	if got := d.perRcpt[0].Get("Diagnostic-Code"); got != "smtp; 550 Benutzer unbekannt: j?rg ?" {
		t.Errorf("Diagnostic-Code = %q", got)
	}
	// RFC 6533 §3: the utf-8 address type with \x{HEX} escapes.
	if got := d.perRcpt[0].Get("Final-Recipient"); got != `utf-8; j\x{F6}rg@x.example` {
		t.Errorf("Final-Recipient = %q", got)
	}

	p = baseParams()
	p.Sender = "jörg@example.org"
	if err := Build(io.Discard, p, nil); err == nil {
		t.Errorf("non-ASCII sender accepted without UTF8")
	}
}

func TestUTF8(t *testing.T) {
	p := baseParams()
	p.UTF8 = true
	p.Sender = "jörg@bücher.example"
	p.Recipients[0].Rcpt = "zoë@x.example"
	p.Recipients[0].ORCPT = `utf-8;zo\x{EB}@x.example`
	p.Recipients[0].Diagnostic = "550 Benutzer unbekannt: zoë"
	orig := "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n"
	out := build(t, p, strings.NewReader(orig))
	d := parse(t, out)
	if got := d.msg.Header.Get("Content-Transfer-Encoding"); got != "8bit" {
		t.Errorf("top-level Content-Transfer-Encoding = %q, want 8bit", got)
	}
	if a, err := mail.ParseAddress(d.msg.Header.Get("To")); err != nil || a.Address != "jörg@bücher.example" {
		t.Errorf("To = %q: %v %v", d.msg.Header.Get("To"), a, err)
	}
	wantTypes := []string{"text/plain", "message/global-delivery-status", "message/global-headers"}
	if strings.Join(d.partTypes, ",") != strings.Join(wantTypes, ",") {
		t.Fatalf("part types %v, want %v", d.partTypes, wantTypes)
	}
	if got := d.perRcpt[0].Get("Final-Recipient"); got != "utf-8; zoë@x.example" {
		t.Errorf("Final-Recipient = %q", got)
	}
	if got := d.perRcpt[0].Get("Original-Recipient"); got != "utf-8; zoë@x.example" {
		t.Errorf("Original-Recipient = %q", got)
	}
	if got := d.perRcpt[0].Get("Diagnostic-Code"); got != "smtp; 550 Benutzer unbekannt: zoë" {
		t.Errorf("Diagnostic-Code = %q", got)
	}
	if got, want := string(d.parts[2]), "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n"; got != want {
		t.Errorf("headers = %q, want %q", got, want)
	}
	if got := d.partHdrs[2].Get("Content-Transfer-Encoding"); got != "8bit" {
		t.Errorf("headers part encoding %q, want 8bit", got)
	}
	if !strings.Contains(string(d.parts[0]), "zoë@x.example") || !strings.Contains(d.partHdrs[0].Get("Content-Type"), "utf-8") {
		t.Errorf("text part: %q %q", d.partHdrs[0].Get("Content-Type"), d.parts[0])
	}

	p.Return = "FULL"
	d = parse(t, build(t, p, strings.NewReader(orig)))
	if d.partTypes[2] != "message/global" || string(d.parts[2]) != orig {
		t.Errorf("FULL UTF8: type %q body %q", d.partTypes[2], d.parts[2])
	}
}

func TestReturnFull(t *testing.T) {
	p := baseParams()
	p.Return = "FULL"
	d := parse(t, build(t, p, strings.NewReader(origMsg)))
	if d.partTypes[2] != "message/rfc822" {
		t.Fatalf("part 3 type %q, want message/rfc822", d.partTypes[2])
	}
	if string(d.parts[2]) != origMsg {
		t.Errorf("returned message:\n%q\nwant\n%q", d.parts[2], origMsg)
	}
	inner, err := mail.ReadMessage(bytes.NewReader(d.parts[2]))
	if err != nil {
		t.Fatalf("inner message: %v", err)
	}
	body, _ := io.ReadAll(inner.Body)
	if inner.Header.Get("Subject") != "quarterly figures" || !strings.Contains(string(body), "SECRET BODY LINE 2") {
		t.Errorf("inner message: %v %q", inner.Header, body)
	}
	if !strings.Contains(string(d.parts[0]), "original message is attached") {
		t.Errorf("text part does not say the message is attached:\n%s", d.parts[0])
	}

	// RFC 3461 §4.3: FULL applies to failures; a delay notice gets headers.
	delayed := baseParams()
	delayed.Return = "FULL"
	delayed.Recipients = delayed.Recipients[1:]
	if d := parse(t, build(t, delayed, strings.NewReader(origMsg))); d.partTypes[2] != "text/rfc822-headers" {
		t.Errorf("delay notice with RET=FULL returned %q", d.partTypes[2])
	}

	// "HDRS" and "" return only the header block.
	for _, ret := range []string{"HDRS", ""} {
		p.Return = ret
		d := parse(t, build(t, p, strings.NewReader(origMsg)))
		if d.partTypes[2] != "text/rfc822-headers" || string(d.parts[2]) != origHeaders {
			t.Errorf("Return %q: type %q content %q", ret, d.partTypes[2], d.parts[2])
		}
	}

	// Bare LF line ends are normalised; 8-bit bodies are declared 8bit.
	p.Return = "FULL"
	lf := "Subject: hi\nFrom: a@b.example\n\nl\xe4ngere Zeile\n"
	out := build(t, p, strings.NewReader(lf))
	d = parse(t, out)
	if got, want := string(d.parts[2]), strings.ReplaceAll(lf, "\n", "\r\n"); got != want {
		t.Errorf("normalised = %q, want %q", got, want)
	}
	if d.partHdrs[2].Get("Content-Transfer-Encoding") != "8bit" || d.msg.Header.Get("Content-Transfer-Encoding") != "8bit" {
		t.Errorf("8-bit original not declared 8bit: part %q top %q",
			d.partHdrs[2].Get("Content-Transfer-Encoding"), d.msg.Header.Get("Content-Transfer-Encoding"))
	}
}

func TestReturnFullTooLarge(t *testing.T) {
	p := baseParams()
	p.Return = "FULL"
	p.MaxReturn = 4096
	big := origMsg + strings.Repeat("SECRET BODY padding line\r\n", 1000)
	out := build(t, p, strings.NewReader(big))
	d := parse(t, out)
	if d.partTypes[2] != "text/rfc822-headers" || string(d.parts[2]) != origHeaders {
		t.Errorf("too large: type %q content %q", d.partTypes[2], d.parts[2])
	}
	if strings.Contains(string(out), "SECRET BODY") {
		t.Errorf("body returned although over MaxReturn")
	}
	if !strings.Contains(string(d.parts[0]), "too large") {
		t.Errorf("text part does not explain:\n%s", d.parts[0])
	}

	// The default limit is 10 MiB.
	p.MaxReturn = 0
	huge := io.MultiReader(strings.NewReader(origMsg), &repeatReader{line: []byte("SECRET BODY padding line\r\n"), n: DefaultMaxReturn/26 + 10})
	d = parse(t, build(t, p, huge))
	if d.partTypes[2] != "text/rfc822-headers" {
		t.Errorf("over 10 MiB: part 3 is %q", d.partTypes[2])
	}

	// Lines over 998 characters cannot go into message/rfc822: headers only.
	p.MaxReturn = 0
	long := origMsg + strings.Repeat("y", 2000) + "\r\n"
	d = parse(t, build(t, p, strings.NewReader(long)))
	if d.partTypes[2] != "text/rfc822-headers" || !strings.Contains(string(d.parts[0]), "could not be returned unchanged") {
		t.Errorf("long-line original: part 3 is %q\n%s", d.partTypes[2], d.parts[0])
	}
}

type repeatReader struct {
	line []byte
	n    int
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	c := copy(p, r.line[r.off:])
	r.off += c
	if r.off == len(r.line) {
		r.off = 0
		r.n--
	}
	return c, nil
}

func TestHugeHeaderBlock(t *testing.T) {
	var b strings.Builder
	for i := 0; b.Len() < 400<<10; i++ {
		b.WriteString("X-Filler: some header value that repeats\r\n\tand is folded onto a second line\r\n")
	}
	b.WriteString("\r\nbody\r\n")
	d := parse(t, build(t, baseParams(), strings.NewReader(b.String())))
	got := string(d.parts[2])
	if len(got) > maxHeaderBlock || len(got) < maxHeaderBlock-200 {
		t.Errorf("truncated block has %d bytes, cap %d", len(got), maxHeaderBlock)
	}
	if !strings.HasSuffix(got, "\tand is folded onto a second line\r\n") {
		t.Errorf("block not cut at a field boundary: ...%q", got[len(got)-80:])
	}
	if !strings.Contains(string(d.parts[0]), "shortened") {
		t.Errorf("text part does not mention the shortened header block")
	}
}

func TestHeaderBlockEncoding(t *testing.T) {
	// 8-bit header bytes without SMTPUTF8, a NUL and an over-long line:
	// quoted-printable, which mime/multipart decodes back.
	orig := "Subject: caf\xe9\r\nX-Nul: a\x00b\r\nX-Long: " + strings.Repeat("z", 1200) + "\r\n\r\nbody"
	out := build(t, baseParams(), strings.NewReader(orig))
	if i := bytes.IndexFunc(out, func(r rune) bool { return r >= 0x80 }); i >= 0 {
		t.Fatalf("8-bit byte in output at %d", i)
	}
	d := parse(t, out)
	if got, want := string(d.parts[2]), strings.TrimSuffix(orig, "\r\nbody"); got != want {
		t.Errorf("decoded headers = %q, want %q", got, want)
	}
}

func TestSubjects(t *testing.T) {
	cases := []struct {
		actions []string
		want    string
	}{
		{[]string{"failed"}, "Undelivered Mail Returned to Sender"},
		{[]string{"delayed", "failed"}, "Undelivered Mail Returned to Sender"},
		{[]string{"delayed"}, "Delayed Mail (still being retried)"},
		{[]string{"delivered", "delayed"}, "Delayed Mail (still being retried)"},
		{[]string{"delivered"}, "Successful Mail Delivery Report"},
		{[]string{"relayed", "expanded"}, "Successful Mail Delivery Report"},
	}
	for _, c := range cases {
		p := baseParams()
		p.Recipients = nil
		for i, a := range c.actions {
			st := map[string]string{"failed": "5.0.0", "delayed": "4.0.0"}[a]
			if st == "" {
				st = "2.0.0"
			}
			p.Recipients = append(p.Recipients, Recipient{Rcpt: string(rune('a'+i)) + "@x.example", Action: a, Status: st})
		}
		d := parse(t, build(t, p, nil))
		if got := d.msg.Header.Get("Subject"); got != c.want {
			t.Errorf("%v: Subject %q, want %q", c.actions, got, c.want)
		}
		for i, a := range c.actions {
			if got := d.perRcpt[i].Get("Action"); got != a {
				t.Errorf("%v: recipient %d Action %q", c.actions, i, got)
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	p := baseParams()
	p.MessageID = ""
	p.Now = time.Time{}
	before := time.Now().Add(-time.Second)
	d := parse(t, build(t, p, nil))
	id := d.msg.Header.Get("Message-Id")
	if !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@gw.example.org>") || len(id) < 20 {
		t.Errorf("generated Message-ID %q", id)
	}
	d2 := parse(t, build(t, p, nil))
	if d2.msg.Header.Get("Message-Id") == id {
		t.Errorf("two DSNs got the same Message-ID %q", id)
	}
	if dt, err := d.msg.Header.Date(); err != nil || dt.Before(before) || dt.After(time.Now().Add(time.Second)) {
		t.Errorf("Date %v %v not now", dt, err)
	}
}

func TestInvalidParams(t *testing.T) {
	cases := map[string]func(*Params){
		"no recipients":    func(p *Params) { p.Recipients = nil },
		"bad action":       func(p *Params) { p.Recipients[0].Action = "bounced" },
		"bad status":       func(p *Params) { p.Recipients[0].Status = "550" },
		"status class 3":   func(p *Params) { p.Recipients[0].Status = "3.1.1" },
		"empty rcpt":       func(p *Params) { p.Recipients[0].Rcpt = "" },
		"no reporting MTA": func(p *Params) { p.ReportingMTA = "" },
		"bad reporting":    func(p *Params) { p.ReportingMTA = "gw.example.org\r\nX: y" },
		"bad message id":   func(p *Params) { p.MessageID = "no at sign" },
		"null sender":      func(p *Params) { p.Sender = "" },
	}
	for name, mod := range cases {
		p := baseParams()
		mod(&p)
		var buf bytes.Buffer
		if err := Build(&buf, p, strings.NewReader(origMsg)); err == nil {
			t.Errorf("%s: no error", name)
		} else if buf.Len() != 0 {
			t.Errorf("%s: %d bytes written before the error", name, buf.Len())
		}
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.after {
		n := f.after
		f.after = 0
		return n, errors.New("disk full")
	}
	f.after -= len(p)
	return len(p), nil
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errors.New("queue file vanished") }

func TestIOErrors(t *testing.T) {
	if err := Build(&failWriter{after: 100}, baseParams(), strings.NewReader(origMsg)); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("write error not reported: %v", err)
	}
	for _, ret := range []string{"FULL", "HDRS"} {
		p := baseParams()
		p.Return = ret
		if err := Build(io.Discard, p, failReader{}); err == nil || !strings.Contains(err.Error(), "vanished") {
			t.Errorf("%s: read error not reported: %v", ret, err)
		}
	}
}

func TestHelpers(t *testing.T) {
	if got := decodeXtext("a+2Bb+3Dc+zz+4"); got != "a+b=c+zz+4" {
		t.Errorf("decodeXtext = %q", got)
	}
	if got := decodeEmbeddedUnicode(`j\x{F6}rg\x{}\x{110000}`); got != `jörg\x{}\x{110000}` {
		t.Errorf("decodeEmbeddedUnicode = %q", got)
	}
	if got := clean("  a\r\n\tb\x00\u2028c é \xff ", false, 100); got != "a b c ? ?" {
		t.Errorf("clean = %q", got)
	}
	if got := clean("abcdé", true, 5); got != "abcd" {
		t.Errorf("clean cut = %q", got)
	}
	if got, err := formatSender(`"john doe"@example.org`, false); err != nil || got != `"john doe"@example.org` {
		t.Errorf("formatSender quoted = %q, %v", got, err)
	}
	for _, s := range []string{"2.0.0", "4.4.7", "5.7.123"} {
		if !validStatus(s) {
			t.Errorf("validStatus(%q) = false", s)
		}
	}
	for _, s := range []string{"", "5.1", "5.1.1.1", "6.1.1", "5.1234.1", "5.a.1", "5..1"} {
		if validStatus(s) {
			t.Errorf("validStatus(%q) = true", s)
		}
	}
}

func FuzzBuild(f *testing.F) {
	f.Add("550 5.1.1 no such user", "bob@x.example", "alice@example.org", "rfc822;bob@x.example", []byte(origMsg), false, false)
	f.Add("550 x\r\nBcc: y", "a@b\r\nX: y", "a@example.org", "", []byte("Subject: x\n\nbody"), true, false)
	f.Add("é\xff\x00", "zoë@x.example", "jörg@example.org", "utf-8;a\\x{E9}", []byte("S: \xe9\r\n\r\n\x00"), true, true)
	f.Add(strings.Repeat("w ", 600), strings.Repeat("r", 1100), "a@b.c", "+", []byte(strings.Repeat("h", 3000)), false, true)
	f.Fuzz(func(t *testing.T, diag, rcpt, sender, orcpt string, orig []byte, full, utf8 bool) {
		p := baseParams()
		p.UTF8 = utf8
		p.Sender = sender
		p.Recipients[0].Diagnostic = diag
		p.Recipients[0].Rcpt = rcpt
		p.Recipients[0].ORCPT = orcpt
		p.Recipients[0].RemoteMTA = diag
		p.EnvelopeID = orcpt
		if full {
			p.Return = "FULL"
		}
		p.MaxReturn = 2048
		var buf bytes.Buffer
		if err := Build(&buf, p, bytes.NewReader(orig)); err != nil {
			// Only bad envelope addresses may be refused.
			if strings.Contains(err.Error(), "sender") || strings.Contains(err.Error(), "recipient 1") {
				return
			}
			t.Fatalf("Build: %v", err)
		}
		out := buf.Bytes()
		d := parse(t, out)
		allowed := map[string]bool{"From": true, "To": true, "Subject": true, "Date": true, "Message-Id": true,
			"References": true, "Auto-Submitted": true, "Mime-Version": true, "Content-Type": true, "Content-Transfer-Encoding": true}
		for k := range d.msg.Header {
			if !allowed[k] {
				t.Fatalf("unexpected top-level header %q", k)
			}
		}
		if _, err := mail.ParseAddress(d.msg.Header.Get("To")); err != nil {
			t.Fatalf("To %q does not parse: %v", d.msg.Header.Get("To"), err)
		}
		if len(d.perRcpt) != 2 {
			t.Fatalf("%d recipient blocks", len(d.perRcpt))
		}
		rcptFields := map[string]bool{"Original-Recipient": true, "Final-Recipient": true, "Action": true, "Status": true,
			"Remote-Mta": true, "Diagnostic-Code": true, "Last-Attempt-Date": true}
		for _, h := range d.perRcpt {
			for k := range h {
				if !rcptFields[k] {
					t.Fatalf("unexpected per-recipient field %q", k)
				}
			}
		}
		if !utf8 {
			// Everything but the returned original is ASCII.
			end := bytes.Index(out, []byte("Content-Description: Original message"))
			if end < 0 {
				end = len(out)
			}
			if i := bytes.IndexFunc(out[:end], func(r rune) bool { return r >= 0x80 }); i >= 0 {
				t.Fatalf("non-ASCII at %d without UTF8", i)
			}
		}
	})
}
