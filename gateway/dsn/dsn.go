// Package dsn composes delivery status notifications (DSNs, "bounces").
//
// The message is a multipart/report (RFC 6522, formerly RFC 3462) of
// report-type delivery-status with three parts: a human-readable
// explanation, the machine-readable message/delivery-status of RFC 3464
// and the returned original (its header block or, with RET=FULL of
// RFC 3461 §4.3, the whole message). For a message that was sent with
// SMTPUTF8 the internationalised media types of RFC 6533 are used. Every
// DSN carries "Auto-Submitted: auto-replied" (RFC 3834 §5).
package dsn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"
)

// Recipient is one per-recipient block of the report (RFC 3464 §2.3).
type Recipient struct {
	Rcpt        string    // final recipient address
	ORCPT       string    // original recipient as received in ORCPT ("rfc822;a@b"), "" if none
	Action      string    // "failed" | "delayed" | "delivered" | "relayed" | "expanded"
	Status      string    // enhanced status "5.1.1"
	RemoteMTA   string    // DNS name of the remote MTA, "" if none
	Diagnostic  string    // SMTP reply text from the remote, e.g. "550 5.1.1 no such user" (written as "smtp; …"); "" if none
	LastAttempt time.Time // zero: field omitted
}

// Params describes the DSN to build.
type Params struct {
	ReportingMTA string    // our hostname
	Sender       string    // envelope sender of the original message; the DSN goes to it
	EnvelopeID   string    // ENVID, "" if none
	QueueID      string    // our queue id of the original message, "" if none
	Arrival      time.Time // when the original was received; zero: field omitted
	Return       string    // "FULL" | "HDRS" | "" (""= headers only)
	MaxReturn    int64     // max bytes of original returned when FULL (beyond: headers only); 0 = 10 MiB
	UTF8         bool      // original used SMTPUTF8: use message/global-delivery-status and message/global-headers (RFC 6533)
	Recipients   []Recipient
	Now          time.Time // Date header; zero = time.Now()
	MessageID    string    // Message-ID to use (without <>); "" = generate random@ReportingMTA
}

const (
	// DefaultMaxReturn is the size limit for returning the full original
	// when Params.MaxReturn is 0.
	DefaultMaxReturn = 10 << 20

	// maxHeaderBlock caps the original header block that is returned; a
	// longer block is cut at a header field boundary.
	maxHeaderBlock = 256 << 10

	// maxDiagnostic caps a remote diagnostic, in bytes.
	maxDiagnostic = 2048

	// maxValue caps other single-line values taken from the envelope.
	maxValue = 512

	// RFC 5322 §2.1.1: lines SHOULD be at most 78 characters and MUST be
	// at most 998, excluding the CRLF.
	foldWidth   = 78
	maxLineBody = 998

	// dateLayout is the RFC 5322 §3.3 date-time format.
	dateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"
)

// Build writes a complete RFC 5322 message: From "Mail Delivery System
// <MAILER-DAEMON@ReportingMTA>", To: Sender, a Subject naming the worst
// outcome, Date, Message-ID, Auto-Submitted: auto-replied, and a
// multipart/report body. Lines are CRLF-terminated, header fields are
// folded at 78 characters where possible and no line exceeds 998.
//
// original is the original message as queued (header block, blank line,
// body); it may be nil, and then the third part is omitted. The whole
// original is returned only for Return "FULL", when some recipient failed
// (RFC 3461 §4.3), when it is at most MaxReturn bytes and when it can
// travel as 7bit or 8bit (no NUL, bare CR or line over 998 characters);
// otherwise its header block is returned.
//
// Values from the remote or the envelope are sanitised: control characters
// (CR and LF included) become spaces, and non-ASCII text is replaced by "?"
// unless p.UTF8 is set. Build writes nothing when p is invalid; an empty
// Sender is refused because a DSN is never sent to the null reverse-path
// (RFC 5321 §4.5.5, RFC 3464 §2).
func Build(w io.Writer, p Params, original io.Reader) error {
	m, err := prepare(p)
	if err != nil {
		return err
	}
	if original != nil {
		// RFC 3461 §4.3: RET=FULL asks for the whole message in a "failed"
		// DSN; delay and success notices carry only the headers.
		full := strings.EqualFold(p.Return, "FULL") && m.anyFailed()
		ret, err := readOriginal(original, full, m.maxReturn, p.UTF8)
		if err != nil {
			return err
		}
		m.orig = &ret
	}
	bw := bufio.NewWriter(w)
	if err := m.write(bw); err != nil {
		return fmt.Errorf("dsn: write: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("dsn: write: %w", err)
	}
	return nil
}

// message is a validated, sanitised Params ready to be written.
type message struct {
	p         Params
	reporting string
	to        string // formatted addr-spec for the To header
	subject   string
	now       time.Time
	msgID     string
	maxReturn int64
	rcpts     []rcpt
	orig      *returned
}

// rcpt is a sanitised Recipient.
type rcpt struct {
	display    string // address for the human-readable part
	final      string // Final-Recipient value
	original   string // Original-Recipient value, "" if none
	action     string
	status     string
	remoteMTA  string
	diagnostic string
	last       time.Time
}

func prepare(p Params) (*message, error) {
	m := &message{p: p, now: p.Now, maxReturn: p.MaxReturn}
	if m.now.IsZero() {
		m.now = time.Now()
	}
	if m.maxReturn <= 0 {
		m.maxReturn = DefaultMaxReturn
	}

	host := strings.TrimSuffix(strings.TrimSpace(p.ReportingMTA), ".")
	if !validHostname(host) {
		return nil, fmt.Errorf("dsn: reporting MTA %q is not a host name", p.ReportingMTA)
	}
	m.reporting = host

	to, err := formatSender(p.Sender, p.UTF8)
	if err != nil {
		return nil, err
	}
	m.to = to

	if p.MessageID != "" {
		id := strings.Trim(clean(p.MessageID, false, maxValue), "<>")
		if id == "" || strings.ContainsAny(id, " <>") || !strings.Contains(id, "@") {
			return nil, fmt.Errorf("dsn: message id %q is not usable", p.MessageID)
		}
		m.msgID = id
	} else {
		m.msgID = strings.ToLower(rand.Text()) + "@" + host
	}

	if len(p.Recipients) == 0 {
		return nil, errors.New("dsn: no recipients to report on")
	}
	var failed, delayed bool
	for i, r := range p.Recipients {
		c, err := prepareRecipient(r, p.UTF8)
		if err != nil {
			return nil, fmt.Errorf("dsn: recipient %d: %w", i+1, err)
		}
		switch c.action {
		case "failed":
			failed = true
		case "delayed":
			delayed = true
		}
		m.rcpts = append(m.rcpts, c)
	}
	switch {
	case failed:
		m.subject = "Undelivered Mail Returned to Sender"
	case delayed:
		m.subject = "Delayed Mail (still being retried)"
	default:
		m.subject = "Successful Mail Delivery Report"
	}
	return m, nil
}

func prepareRecipient(r Recipient, utf8ok bool) (rcpt, error) {
	var c rcpt
	switch r.Action {
	case "failed", "delayed", "delivered", "relayed", "expanded": // RFC 3464 §2.3.3
		c.action = r.Action
	default:
		return c, fmt.Errorf("invalid action %q", r.Action)
	}
	if !validStatus(r.Status) {
		return c, fmt.Errorf("invalid status %q", r.Status)
	}
	c.status = r.Status

	addr := strings.Trim(strings.TrimSpace(r.Rcpt), "<>")
	if addr == "" {
		return c, errors.New("empty recipient address")
	}
	c.display = clean(addr, utf8ok, maxValue)
	if c.display == "" {
		return c, fmt.Errorf("recipient address %q has no printable characters", r.Rcpt)
	}
	c.final = addressField("rfc822", addr, utf8ok)
	if r.ORCPT != "" {
		c.original = originalRecipient(r.ORCPT, utf8ok)
	}
	if r.RemoteMTA != "" {
		c.remoteMTA = strings.ReplaceAll(clean(strings.TrimSuffix(r.RemoteMTA, "."), utf8ok, maxValue), " ", "")
	}
	if r.Diagnostic != "" {
		c.diagnostic = clean(r.Diagnostic, utf8ok, maxDiagnostic)
	}
	c.last = r.LastAttempt
	return c, nil
}

// validStatus checks an enhanced status code, RFC 3463 §2:
// class "." subject "." detail, class 2, 4 or 5, subject and detail 1-3 digits.
func validStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.ContainsAny(parts[0], "245") {
		return false
	}
	for _, n := range parts[1:] {
		if len(n) < 1 || len(n) > 3 {
			return false
		}
		for i := 0; i < len(n); i++ {
			if n[i] < '0' || n[i] > '9' {
				return false
			}
		}
	}
	return true
}

// validHostname accepts an ASCII DNS host name (letters, digits, hyphens,
// dots; RFC 1123 §2.1) or a bracketed address literal.
func validHostname(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		for i := 1; i < len(h)-1; i++ {
			c := h[i]
			if !(isAlnum(c) || c == '.' || c == ':') {
				return false
			}
		}
		return len(h) > 2
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(isAlnum(c) || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// formatSender turns the envelope sender into the addr-spec of the To
// header, quoting the local part where RFC 5322 §3.4.1 requires it.
func formatSender(sender string, utf8ok bool) (string, error) {
	s := strings.Trim(strings.TrimSpace(sender), "<>")
	if s == "" {
		// RFC 5321 §4.5.5 / RFC 3464: never send a DSN to the null reverse-path.
		return "", errors.New("dsn: empty sender (null reverse-path): no DSN may be sent")
	}
	if !utf8ok && !isASCII(s) {
		return "", fmt.Errorf("dsn: sender %q is not ASCII but the original did not use SMTPUTF8", sender)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("dsn: sender %q contains control characters", sender)
		}
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return "", fmt.Errorf("dsn: sender %q is not an address", sender)
	}
	local, domain := s[:at], s[at+1:]
	if !isDotAtom(local) {
		local = quoteLocal(strings.Trim(local, `"`))
	}
	addr := local + "@" + domain
	if len(addr) > maxValue {
		return "", fmt.Errorf("dsn: sender %q is too long", sender)
	}
	if _, err := mail.ParseAddress("<" + addr + ">"); err != nil {
		return "", fmt.Errorf("dsn: sender %q is not a valid address: %w", sender, err)
	}
	return addr, nil
}

// isDotAtom reports whether s is an RFC 5322 §3.2.3 dot-atom (with UTF-8
// allowed per RFC 6532 §3.2).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r >= utf8.RuneSelf {
			continue
		}
		if isAlnum(byte(r)) || strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", r) {
			continue
		}
		return false
	}
	return true
}

// quoteLocal builds an RFC 5322 §3.2.4 quoted-string.
func quoteLocal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// addressField formats an address-type ";" generic-address value
// (RFC 3464 §2.1.2). An address with non-ASCII characters uses the
// "utf-8" address type of RFC 6533 §3: raw UTF-8 in a
// message/global-delivery-status, otherwise the ASCII utf-8-addr-xtext
// form with \x{HEX} escapes.
func addressField(typ, addr string, utf8ok bool) string {
	if isASCII(addr) {
		return typ + "; " + clean(addr, false, maxValue)
	}
	if utf8ok && utf8.ValidString(addr) {
		return "utf-8; " + clean(addr, true, maxValue)
	}
	return "utf-8; " + embedUnicode(addr)
}

// embedUnicode writes non-printable-ASCII characters (and the backslash) as
// RFC 6533 §3 EmbeddedUnicodeChar "\x{HEXPOINT}". Invalid UTF-8 bytes become
// U+FFFD.
func embedUnicode(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > 0x20 && r < 0x7f && r != '\\' {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
		if b.Len() > maxValue {
			break
		}
	}
	return b.String()
}

// originalRecipient turns an ORCPT parameter (RFC 3461 §4.2: addr-type ";"
// xtext) into an Original-Recipient value (RFC 3464 §2.3.1). RFC 3461
// restricts the address before xtext encoding to what the DSN can carry,
// so the xtext is decoded here.
func originalRecipient(orcpt string, utf8ok bool) string {
	typ, addr, ok := strings.Cut(orcpt, ";")
	if !ok {
		typ, addr = "rfc822", orcpt
	}
	typ = strings.ToLower(strings.TrimSpace(typ))
	if typ == "" || len(typ) > 32 || !isAtom(typ) {
		typ = "unknown"
	}
	addr = decodeXtext(strings.TrimSpace(addr))
	if typ == "utf-8" {
		addr = decodeEmbeddedUnicode(addr)
		if isASCII(addr) {
			typ = "rfc822"
		}
	}
	if !isASCII(addr) {
		return addressField(typ, addr, utf8ok)
	}
	return typ + "; " + clean(addr, false, maxValue)
}

func isAtom(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// decodeXtext decodes RFC 3461 §4 xtext: "+" followed by two upper-case hex
// digits stands for that octet. A "+" not followed by two hex digits is kept.
func decodeXtext(s string) string {
	if !strings.Contains(s, "+") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '+' && i+2 < len(s) && isUpperHex(s[i+1]) && isUpperHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// decodeEmbeddedUnicode decodes RFC 6533 §3 "\x{HEXPOINT}" sequences.
func decodeEmbeddedUnicode(s string) string {
	if !strings.Contains(s, `\x{`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.HasPrefix(s[i:], `\x{`) {
			if end := strings.IndexByte(s[i+3:], '}'); end > 0 && end <= 6 {
				var r rune
				ok := true
				for _, c := range []byte(s[i+3 : i+3+end]) {
					if !isUpperHex(c) && !(c >= 'a' && c <= 'f') {
						ok = false
						break
					}
					r = r<<4 | rune(unhex(c))
				}
				if ok && utf8.ValidRune(r) {
					b.WriteRune(r)
					i += 3 + end
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isUpperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return 0
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// clean makes an untrusted value safe for a single header or text line:
// control characters (CR, LF, NUL, C1 controls, Unicode line separators)
// become spaces, runs of white space collapse to one, invalid UTF-8 and,
// unless utf8ok, all non-ASCII characters become "?", and the result is
// cut to at most max bytes.
func clean(s string, utf8ok bool, max int) string {
	var b strings.Builder
	space := true // suppresses leading white space
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size <= 1:
			r = '?'
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029':
			r = ' '
		case r >= utf8.RuneSelf && !utf8ok:
			r = '?'
		}
		if r == ' ' {
			if !space {
				b.WriteByte(' ')
			}
			space = true
		} else {
			if b.Len()+utf8.RuneLen(r) > max {
				break
			}
			b.WriteRune(r)
			space = false
		}
		if b.Len() >= max {
			break
		}
	}
	return strings.TrimRight(b.String(), " ")
}

// writeField writes "Name: value" CRLF, folded (RFC 5322 §2.2.3) at white
// space so that lines stay within 78 characters where the words allow it.
// A word too long for one line (over 998 characters with its prefix) is
// split, which inserts white space into it: the hard limit wins.
func writeField(w io.Writer, name, value string) error {
	_, err := io.WriteString(w, fieldString(name, value))
	return err
}

// fieldString is the folded "Name: value" CRLF line(s) of writeField.
func fieldString(name, value string) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(":")
	lineLen := b.Len()
	for _, word := range strings.Fields(value) {
		for len(word) > 0 {
			// Room for the separating space and the word on this line?
			if lineLen+1+len(word) > foldWidth && lineLen > len(name)+1 {
				b.WriteString("\r\n")
				lineLen = 0
			}
			chunk := word
			if lineLen+1+len(chunk) > maxLineBody {
				chunk = cutAtRune(word, maxLineBody-lineLen-1)
			}
			b.WriteByte(' ')
			b.WriteString(chunk)
			lineLen += 1 + len(chunk)
			word = word[len(chunk):]
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

// cutAtRune returns the longest prefix of s of at most n bytes that ends on
// a rune boundary (at least one rune, so progress is guaranteed).
func cutAtRune(s string, n int) string {
	if n >= len(s) {
		return s
	}
	if n < 1 {
		n = 1
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	if n == 0 {
		_, size := utf8.DecodeRuneInString(s)
		return s[:size]
	}
	return s[:n]
}

// wrapText breaks s into lines of at most width bytes at spaces; longer
// words get a line of their own, cut to 998 bytes.
func wrapText(s string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, word := range strings.Fields(s) {
		for len(word) > maxLineBody-4 {
			if cur.Len() > 0 {
				lines = append(lines, cur.String())
				cur.Reset()
			}
			chunk := cutAtRune(word, maxLineBody-4)
			lines = append(lines, chunk)
			word = word[len(chunk):]
		}
		if word == "" {
			continue
		}
		if cur.Len() > 0 && cur.Len()+1+len(word) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(word)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

// write renders the message.
func (m *message) write(w io.Writer) error {
	ew := &errWriter{w: w}
	mw := multipart.NewWriter(ew)

	text := m.humanText()
	status := m.statusText()
	eightBit := !isASCII(text) || !isASCII(status) || (m.orig != nil && m.orig.cte == "8bit")

	fields := []struct{ name, value string }{
		{"From", "Mail Delivery System <MAILER-DAEMON@" + m.reporting + ">"},
		{"To", "<" + m.to + ">"},
		{"Subject", m.subject},
		{"Date", m.now.Format(dateLayout)},
		{"Message-ID", "<" + m.msgID + ">"},
	}
	if m.orig != nil && m.orig.messageID != "" {
		// Lets mail user agents thread the DSN with the original.
		fields = append(fields, struct{ name, value string }{"References", m.orig.messageID})
	}
	fields = append(fields,
		struct{ name, value string }{"Auto-Submitted", "auto-replied"}, // RFC 3834 §5
		struct{ name, value string }{"MIME-Version", "1.0"},
		// RFC 6522 §3: report-type names the machine-readable part; RFC 6533
		// keeps "delivery-status" for message/global-delivery-status too.
		struct{ name, value string }{"Content-Type", `multipart/report; report-type=delivery-status; boundary="` + mw.Boundary() + `"`},
	)
	if eightBit {
		// RFC 2045 §6.4: a multipart entity declares the widest encoding
		// used by its parts.
		fields = append(fields, struct{ name, value string }{"Content-Transfer-Encoding", "8bit"})
	}
	for _, f := range fields {
		if err := writeField(ew, f.name, f.value); err != nil {
			return err
		}
	}
	if _, err := io.WriteString(ew, "\r\n"); err != nil {
		return err
	}

	// Part 1: human-readable explanation (RFC 6522 §3). It never contains
	// the original's content.
	hdr := textproto.MIMEHeader{}
	hdr.Set("Content-Description", "Notification")
	if isASCII(text) {
		hdr.Set("Content-Type", "text/plain; charset=us-ascii")
		hdr.Set("Content-Transfer-Encoding", "7bit")
	} else {
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		hdr.Set("Content-Transfer-Encoding", "8bit")
	}
	pw, err := mw.CreatePart(hdr)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(pw, text); err != nil {
		return err
	}

	// Part 2: machine-readable status (RFC 3464 §2, RFC 6533 §6.2).
	hdr = textproto.MIMEHeader{}
	hdr.Set("Content-Description", "Delivery report")
	if m.p.UTF8 {
		hdr.Set("Content-Type", "message/global-delivery-status")
	} else {
		hdr.Set("Content-Type", "message/delivery-status")
	}
	if isASCII(status) {
		hdr.Set("Content-Transfer-Encoding", "7bit")
	} else {
		hdr.Set("Content-Transfer-Encoding", "8bit")
	}
	if pw, err = mw.CreatePart(hdr); err != nil {
		return err
	}
	if _, err := io.WriteString(pw, status); err != nil {
		return err
	}

	// Part 3: the original, in full or its header block (RFC 6522 §3,
	// RFC 3462 §2; RFC 6533 §6.3 and RFC 6532 §3.7 for the global types).
	if m.orig != nil {
		hdr = textproto.MIMEHeader{}
		switch {
		case m.orig.full && m.p.UTF8:
			hdr.Set("Content-Type", "message/global")
		case m.orig.full:
			hdr.Set("Content-Type", "message/rfc822")
		case m.p.UTF8:
			hdr.Set("Content-Type", "message/global-headers")
		default:
			hdr.Set("Content-Type", "text/rfc822-headers")
		}
		if m.orig.full {
			hdr.Set("Content-Description", "Original message")
		} else {
			hdr.Set("Content-Description", "Original message headers")
		}
		hdr.Set("Content-Transfer-Encoding", m.orig.cte)
		if pw, err = mw.CreatePart(hdr); err != nil {
			return err
		}
		if m.orig.cte == "quoted-printable" {
			qw := quotedprintable.NewWriter(pw)
			if _, err := qw.Write(m.orig.data); err != nil {
				return err
			}
			if err := qw.Close(); err != nil {
				return err
			}
		} else if _, err := pw.Write(m.orig.data); err != nil {
			return err
		}
	}
	if err := mw.Close(); err != nil {
		return err
	}
	return ew.err
}

func (m *message) anyFailed() bool {
	for _, r := range m.rcpts {
		if r.action == "failed" {
			return true
		}
	}
	return false
}

func (m *message) humanText() string {
	var b strings.Builder
	line := func(s string) {
		for _, l := range wrapText(s, 76) {
			b.WriteString(l)
			b.WriteString("\r\n")
		}
	}
	blank := func() { b.WriteString("\r\n") }

	line("This is the mail system at host " + m.reporting + ".")
	blank()
	var failed, delayed, other []rcpt
	for _, r := range m.rcpts {
		switch r.action {
		case "failed":
			failed = append(failed, r)
		case "delayed":
			delayed = append(delayed, r)
		default:
			other = append(other, r)
		}
	}
	if len(failed) > 0 {
		line("Your message could not be delivered to the recipients listed below. This is a permanent failure; the message will not be retried for them.")
		blank()
		m.describe(&b, failed)
	}
	if len(delayed) > 0 {
		line("Delivery of your message to the recipients listed below has been delayed. The mail system will keep trying; you do not need to send the message again yet.")
		blank()
		m.describe(&b, delayed)
	}
	if len(other) > 0 {
		line("Your message was successfully handed on for the recipients listed below.")
		blank()
		m.describe(&b, other)
	}
	if m.p.QueueID != "" || !m.p.Arrival.IsZero() {
		s := "The original message"
		if q := clean(m.p.QueueID, false, 64); q != "" {
			s += " has queue ID " + q
			if !m.p.Arrival.IsZero() {
				s += " and"
			}
		}
		if !m.p.Arrival.IsZero() {
			s += " was received on " + m.p.Arrival.Format(dateLayout)
		}
		line(s + ".")
		blank()
	}
	if m.orig != nil {
		switch {
		case m.orig.full:
			line("The original message is attached.")
		case m.orig.tooLarge:
			line("The original message was too large to return in full; its headers are attached.")
		case m.orig.unrepresentable:
			line("The original message could not be returned unchanged; its headers are attached.")
		default:
			line("The headers of the original message are attached.")
		}
		if m.orig.truncated {
			line("The header block was too long and has been shortened.")
		}
	}
	return b.String()
}

func (m *message) describe(b *strings.Builder, rs []rcpt) {
	for _, r := range rs {
		verb := map[string]string{
			"failed":    "delivery failed",
			"delayed":   "delivery delayed",
			"delivered": "delivered",
			"relayed":   "relayed to a system that does not send delivery notifications",
			"expanded":  "delivered and forwarded to further recipients",
		}[r.action]
		for _, l := range wrapText("<"+r.display+">: "+verb+" (status "+r.status+").", 76) {
			b.WriteString(l + "\r\n")
		}
		if r.diagnostic != "" {
			who := "The remote server"
			if r.remoteMTA != "" {
				who += " " + r.remoteMTA
			}
			for _, l := range wrapText(who+" said: "+r.diagnostic, 72) {
				b.WriteString("    " + l + "\r\n")
			}
		} else if r.remoteMTA != "" {
			for _, l := range wrapText("Remote server: "+r.remoteMTA, 72) {
				b.WriteString("    " + l + "\r\n")
			}
		}
		b.WriteString("\r\n")
	}
}

// statusText renders the message/delivery-status body: per-message fields,
// then one block per recipient, blocks separated by blank lines
// (RFC 3464 §2.1).
func (m *message) statusText() string {
	var b strings.Builder
	// RFC 3464 §2.2: per-message fields.
	if m.p.EnvelopeID != "" {
		// RFC 3464 §2.2.1; the ENVID arrives as xtext (RFC 3461 §4.4).
		writeField(&b, "Original-Envelope-Id", clean(decodeXtext(m.p.EnvelopeID), false, 100))
	}
	writeField(&b, "Reporting-MTA", "dns; "+m.reporting) // RFC 3464 §2.2.2
	if q := clean(m.p.QueueID, false, 64); q != "" {
		// RFC 3464 §2.4: extension fields carry an "X-" prefix.
		writeField(&b, "X-Postern-Queue-ID", q)
	}
	if !m.p.Arrival.IsZero() {
		writeField(&b, "Arrival-Date", m.p.Arrival.Format(dateLayout)) // RFC 3464 §2.2.5
	}
	// RFC 3464 §2.3: per-recipient fields.
	for _, r := range m.rcpts {
		b.WriteString("\r\n")
		if r.original != "" {
			writeField(&b, "Original-Recipient", r.original) // §2.3.1
		}
		writeField(&b, "Final-Recipient", r.final) // §2.3.2
		writeField(&b, "Action", r.action)         // §2.3.3
		writeField(&b, "Status", r.status)         // §2.3.4
		if r.remoteMTA != "" {
			writeField(&b, "Remote-MTA", "dns; "+r.remoteMTA) // §2.3.5
		}
		if r.diagnostic != "" {
			writeField(&b, "Diagnostic-Code", "smtp; "+r.diagnostic) // §2.3.6
		}
		if !r.last.IsZero() {
			writeField(&b, "Last-Attempt-Date", r.last.Format(dateLayout)) // §2.3.7
		}
	}
	return b.String()
}

// returned is the part of the original that goes into the DSN.
type returned struct {
	full            bool   // data is the whole message
	data            []byte // CRLF-normalised message or header block
	cte             string // "7bit" | "8bit" | "quoted-printable"
	tooLarge        bool   // FULL asked for but over MaxReturn
	unrepresentable bool   // FULL asked for but not sendable as 7bit/8bit
	truncated       bool   // header block cut at maxHeaderBlock
	messageID       string // the original's Message-ID, "" if none or unusable
}

// readOriginal reads what is needed of the original: everything up to
// maxReturn+1 bytes when full, otherwise only the header block.
func readOriginal(r io.Reader, full bool, maxReturn int64, utf8ok bool) (returned, error) {
	var ret returned
	var raw []byte
	var cut bool // raw is a prefix cut by a read limit
	if full {
		var err error
		raw, err = io.ReadAll(io.LimitReader(r, maxReturn+1))
		if err != nil {
			return ret, fmt.Errorf("dsn: read original: %w", err)
		}
		if int64(len(raw)) > maxReturn {
			ret.tooLarge, cut = true, true
		} else if data, cte, ok := fullMessage(raw); ok {
			ret.full, ret.data, ret.cte = true, data, cte
		} else {
			ret.unrepresentable = true
		}
	} else {
		var err error
		raw, cut, err = readHeaderBytes(r, maxHeaderBlock+1)
		if err != nil {
			return ret, fmt.Errorf("dsn: read original: %w", err)
		}
	}
	block, truncated := headerBlock(raw, cut)
	ret.truncated = truncated
	ret.messageID = originalMessageID(block)
	if !ret.full {
		ret.data = block
		ret.cte = headerEncoding(block, utf8ok)
	}
	return ret, nil
}

// readHeaderBytes reads up to and including the blank line ending the
// header block, or at most about limit bytes, without reading the body. cut
// reports that the limit stopped it.
func readHeaderBytes(r io.Reader, limit int) (out []byte, cut bool, err error) {
	br := bufio.NewReaderSize(r, 4096)
	atLineStart := true
	for len(out) < limit {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			lineStart := atLineStart
			out = append(out, chunk...)
			atLineStart = chunk[len(chunk)-1] == '\n'
			if lineStart && atLineStart && (len(chunk) == 1 || (len(chunk) == 2 && chunk[0] == '\r')) {
				return out, false, nil // the blank line ending the header block
			}
		}
		switch {
		case err == nil || errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return out, false, nil
		default:
			return nil, false, err
		}
	}
	return out, true, nil
}

// headerBlock extracts the header block (RFC 5322 §2.1) from the start of a
// message: lines up to the first empty one, each ended by CRLF. Bare LF
// line ends become CRLF; a bare CR inside a line becomes a space. A block
// longer than maxHeaderBlock, or one whose end was not read (cut), is
// shortened to the header fields known to be complete; truncated reports
// that.
func headerBlock(raw []byte, cut bool) (block []byte, truncated bool) {
	var out []byte
	fieldStart := 0 // offset in out of the current field's first line
	rest := raw
	for len(rest) > 0 {
		var line []byte
		i := bytes.IndexByte(rest, '\n')
		if i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			line, rest = rest, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			return out, false // the blank line: block complete
		}
		continuation := line[0] == ' ' || line[0] == '\t'
		if len(out)+len(line)+2 > maxHeaderBlock {
			if continuation {
				return out[:fieldStart], true
			}
			return out, true
		}
		if !continuation {
			fieldStart = len(out)
		}
		start := len(out)
		out = append(out, line...)
		for j := start; j < len(out); j++ {
			if out[j] == '\r' {
				out[j] = ' '
			}
		}
		out = append(out, '\r', '\n')
	}
	if cut {
		// The end of the block was not read: the last field may go on.
		return out[:fieldStart], true
	}
	return out, false
}

// headerEncoding picks the Content-Transfer-Encoding for a header block:
// 7bit when it is plain ASCII with short lines; 8bit for valid UTF-8 with
// short lines when the original used SMTPUTF8 (RFC 6532 §3.7); otherwise
// quoted-printable, which text/rfc822-headers allows as a text type and
// message/global-headers allows explicitly (RFC 6533 §6.3).
func headerEncoding(block []byte, utf8ok bool) string {
	s := scan(block)
	switch {
	case s.nul || s.longLine:
		return "quoted-printable"
	case !s.eightBit:
		return "7bit"
	case utf8ok && s.validUTF8:
		return "8bit"
	default:
		return "quoted-printable"
	}
}

type textScan struct {
	nul, longLine, eightBit, bareCR, validUTF8 bool
}

func scan(b []byte) textScan {
	s := textScan{validUTF8: utf8.Valid(b)}
	lineLen := 0
	for i, c := range b {
		switch {
		case c == '\n':
			lineLen = 0
			continue
		case c == '\r':
			if i+1 >= len(b) || b[i+1] != '\n' {
				s.bareCR = true
			}
			continue
		case c == 0:
			s.nul = true
		case c >= 0x80:
			s.eightBit = true
		}
		lineLen++
		if lineLen > maxLineBody {
			s.longLine = true
		}
	}
	return s
}

// fullMessage normalises line ends of the whole original to CRLF and
// reports whether it can be sent as a message/rfc822 (or message/global)
// part, which allows only 7bit or 8bit here (RFC 2046 §5.2.1): no NUL, no
// bare CR, no line over 998 characters.
func fullMessage(raw []byte) ([]byte, string, bool) {
	s := scan(raw)
	if s.nul || s.longLine || s.bareCR {
		return nil, "", false
	}
	out := make([]byte, 0, len(raw)+len(raw)/40)
	for i, c := range raw {
		if c == '\n' && (i == 0 || raw[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if s.eightBit {
		return out, "8bit", true
	}
	return out, "7bit", true
}

// originalMessageID returns the original's Message-ID when it is a plain
// "<...>" token, for the References header.
func originalMessageID(block []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte(nil), block...), '\r', '\n')))
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(msg.Header.Get("Message-Id"))
	if len(id) < 3 || len(id) > 250 || id[0] != '<' || id[len(id)-1] != '>' {
		return ""
	}
	for i := 1; i < len(id)-1; i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return ""
		}
	}
	return id
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
