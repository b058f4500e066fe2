package portal

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits for parsing stored messages for display; a message beyond them
// is still shown, with the rest offered as the raw message.
const (
	maxDepth = 12
	maxParts = 500
)

// parsed is a stored message as the portal shows it.
type parsed struct {
	Subject   string
	From      string // display form of From
	ReplyTo   string // address a secure reply goes to (Reply-To, else From)
	To        string
	Date      time.Time
	MessageID string // with angle brackets, "" when absent
	Refs      string // References of the original
	Text      string
	HTML      string // unsanitised; sanitise before display
	Atts      []attachment
}

type attachment struct {
	Name string
	Type string
	Data []byte
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

// charsetReader handles the charsets decoded without extra modules;
// others fail, and the caller then shows the undecoded text.
func charsetReader(charset string, in io.Reader) (io.Reader, error) {
	switch strings.ToLower(charset) {
	case "iso-8859-1", "latin1", "windows-1252", "cp1252":
		b, err := io.ReadAll(in)
		if err != nil {
			return nil, err
		}
		return strings.NewReader(latin1(b)), nil
	}
	return nil, fmt.Errorf("unsupported charset %q", charset)
}

func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

func decodeHeader(v string) string {
	d, err := wordDecoder.DecodeHeader(v)
	if err != nil {
		d = v
	}
	return strings.ToValidUTF8(d, "\uFFFD")
}

// parseMessage parses a complete RFC 5322 message (RFC 2045–2049 MIME).
// It never fails on a damaged body: what cannot be parsed is offered as
// an attachment.
func parseMessage(raw []byte) (*parsed, error) {
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse message: %w", err)
	}
	p := &parsed{
		Subject:   decodeHeader(m.Header.Get("Subject")),
		To:        decodeHeader(m.Header.Get("To")),
		MessageID: strings.TrimSpace(m.Header.Get("Message-Id")),
		Refs:      strings.TrimSpace(m.Header.Get("References")),
	}
	if from, err := m.Header.AddressList("From"); err == nil && len(from) > 0 {
		p.From = from[0].String()
		p.ReplyTo = from[0].Address
		if from[0].Name != "" {
			p.From = from[0].Name + " <" + from[0].Address + ">"
		}
	} else {
		p.From = decodeHeader(m.Header.Get("From"))
	}
	if rt, err := m.Header.AddressList("Reply-To"); err == nil && len(rt) > 0 {
		p.ReplyTo = rt[0].Address
	}
	if d, err := m.Header.Date(); err == nil {
		p.Date = d
	}
	body, err := io.ReadAll(m.Body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	n := 0
	p.walk(textproto.MIMEHeader(m.Header), body, 0, &n)
	return p, nil
}

func (p *parsed) walk(h textproto.MIMEHeader, body []byte, depth int, n *int) {
	*n++
	if *n > maxParts || depth > maxDepth {
		p.Atts = append(p.Atts, attachment{Name: "part.bin", Type: "application/octet-stream", Data: body})
		return
	}
	ct, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || ct == "" {
		ct, params = "text/plain", map[string]string{"charset": "us-ascii"} // RFC 2045 §5.2
	}
	disp, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	name := dparams["filename"]
	if name == "" {
		name = params["name"]
	}
	name = decodeHeader(name)

	if strings.HasPrefix(ct, "multipart/") && params["boundary"] != "" {
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			part, err := mr.NextRawPart()
			if err != nil {
				return // io.EOF or a damaged structure: keep what was read
			}
			b, err := io.ReadAll(part)
			if err != nil {
				return
			}
			p.walk(part.Header, b, depth+1, n)
		}
	}
	data := decodeTransfer(h.Get("Content-Transfer-Encoding"), body)
	inline := disp != "attachment" && name == ""
	switch {
	case inline && ct == "text/plain" && p.Text == "":
		p.Text = toUTF8(data, params["charset"])
	case inline && ct == "text/html" && p.HTML == "":
		p.HTML = toUTF8(data, params["charset"])
	default:
		if name == "" {
			name = defaultName(ct, len(p.Atts)+1)
		}
		p.Atts = append(p.Atts, attachment{Name: cleanName(name), Type: ct, Data: data})
	}
}

func defaultName(ct string, i int) string {
	switch ct {
	case "message/rfc822":
		return fmt.Sprintf("message-%d.eml", i)
	case "text/plain":
		return fmt.Sprintf("text-%d.txt", i)
	case "text/html":
		return fmt.Sprintf("text-%d.html", i)
	}
	return fmt.Sprintf("attachment-%d.bin", i)
}

// cleanName keeps a file name fit for a Content-Disposition header and a
// download folder: no path, no control characters.
func cleanName(s string) string {
	if i := strings.LastIndexAny(s, `/\`); i >= 0 {
		s = s[i+1:]
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' {
			return '_'
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if s == "" || s == "." || s == ".." {
		return "attachment.bin"
	}
	if len(s) > 200 {
		s = s[:200]
		s = strings.ToValidUTF8(s, "")
	}
	return s
}

// decodeTransfer undoes a Content-Transfer-Encoding (RFC 2045 §6); a
// damaged encoding yields what could be decoded.
func decodeTransfer(cte string, body []byte) []byte {
	var r io.Reader
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		clean := bytes.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
				return -1
			}
			return r
		}, body)
		r = base64.NewDecoder(base64.StdEncoding, bytes.NewReader(clean))
	case "quoted-printable":
		r = quotedprintable.NewReader(bytes.NewReader(body))
	default:
		return body
	}
	out, _ := io.ReadAll(bufio.NewReader(r))
	return out
}

func toUTF8(b []byte, charset string) string {
	switch strings.ToLower(charset) {
	case "iso-8859-1", "latin1", "windows-1252", "cp1252":
		return latin1(b)
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
