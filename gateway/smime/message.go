package smime

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
)

// MaxHeaderBytes bounds the header section of a message to encrypt.
const MaxHeaderBytes = 2 << 20

// ObscuredSubject replaces the outer Subject (RFC 9788 §4.1 suggests
// "[...]"; postern's contract, SPEC.md §5, says "...").
const ObscuredSubject = "..."

// traceFields stay on the outside only: they record the path so far
// (RFC 5321 §4.4) and belong to no author.
var traceFields = map[string]bool{"received": true, "return-path": true}

// outerFields are copied to the outer header section (besides trace
// fields and Subject): what transport, threading and display need.
var outerFields = map[string]bool{
	"from": true, "to": true, "cc": true, "date": true, "message-id": true,
	"references": true, "in-reply-to": true, "reply-to": true,
}

// field is one header field as it came, folding kept, with CRLF line ends.
type field struct {
	name string // lower case
	raw  []byte // "Name: value\r\n" including continuation lines
}

type message struct {
	fields []field       // the original header section
	inner  *bytes.Buffer // the Cryptographic Payload: protected header + body
}

// readMessage reads the message, keeping its header fields, and builds the
// inner entity (RFC 9788 §4.2's Cryptographic Payload) in one buffer of
// about the message's size, in canonical CRLF form (RFC 8551 §3.1.1).
func readMessage(r io.Reader, hint int, keepSubject bool) (*message, error) {
	br := bufio.NewReaderSize(r, min(max(hint, 4<<10), 64<<10))
	fields, bodyStart, err := readHeader(br)
	if err != nil {
		return nil, err
	}
	// Room for the header's HP-Outer copies, CRLF growth of a body with
	// bare LFs, and the CBC padding pkcs7 appends in place.
	size := hint + hint/64 + 2*headerLen(fields) + 4096 + aes.BlockSize
	m := &message{fields: fields, inner: bytes.NewBuffer(make([]byte, 0, size))}
	writeInnerHeader(m.inner, fields, keepSubject)
	m.inner.WriteString("\r\n")
	cw := &crlfWriter{buf: m.inner}
	if len(bodyStart) > 0 {
		cw.Write(bodyStart)
	}
	if _, err := br.WriteTo(cw); err != nil {
		return nil, err
	}
	if m.inner.Cap()-m.inner.Len() < aes.BlockSize {
		m.inner.Grow(aes.BlockSize)
	}
	return m, nil
}

// readHeader reads the header section (RFC 5322 §2.2). Parsing is lenient,
// as the message was already accepted: a line that is neither a field nor a
// continuation ends the header and is returned as the body's first line.
func readHeader(br *bufio.Reader) (fields []field, bodyStart []byte, err error) {
	total := 0
	for {
		line, rerr := br.ReadBytes('\n')
		if rerr != nil && rerr != io.EOF {
			return nil, nil, rerr
		}
		if len(line) == 0 && rerr == io.EOF {
			return fields, nil, nil
		}
		total += len(line)
		if total > MaxHeaderBytes {
			return nil, nil, fmt.Errorf("header section larger than %d bytes", MaxHeaderBytes)
		}
		text := trimEOL(line)
		switch {
		case len(text) == 0:
			return fields, nil, nil // the blank line ending the header
		case text[0] == ' ' || text[0] == '\t':
			if len(fields) == 0 {
				return fields, line, nil
			}
			f := &fields[len(fields)-1]
			f.raw = append(append(f.raw, text...), '\r', '\n')
		default:
			name, ok := fieldName(text)
			if !ok {
				return fields, line, nil
			}
			fields = append(fields, field{name: strings.ToLower(name), raw: append(append([]byte(nil), text...), '\r', '\n')})
		}
		if rerr == io.EOF {
			return fields, nil, nil
		}
	}
}

// fieldName returns the name of a field line: printable ASCII other than
// ':' (RFC 5322 §3.6.8 ftext), optionally followed by blanks (obsolete
// syntax, RFC 5322 §4.5.3), then ':'.
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return "", false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return "", false
		}
	}
	return string(name), true
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

func headerLen(fs []field) int {
	n := 0
	for _, f := range fs {
		n += len(f.raw)
	}
	return n
}

// outerSubject is the Subject field written outside.
func outerSubject(f field, keep bool) []byte {
	if keep {
		return f.raw
	}
	return []byte("Subject: " + ObscuredSubject + "\r\n")
}

// writeOuterHeader writes the fields that stay visible, in their original
// order: trace fields, addressing, threading, Date, and Subject ("..."
// unless kept). MIME fields are written by the caller.
func writeOuterHeader(w io.Writer, fs []field, keepSubject bool) {
	for _, f := range fs {
		switch {
		case traceFields[f.name] || outerFields[f.name]:
			w.Write(f.raw)
		case f.name == "subject":
			w.Write(outerSubject(f, keepSubject))
		}
	}
}

// writeInnerHeader writes the protected header section (RFC 9788 §4.2): the
// original fields except trace fields, the Content-Type marked as the
// Cryptographic Payload, then one HP-Outer field (RFC 9788 §2.2) per
// non-structural field of the outer header.
func writeInnerHeader(b *bytes.Buffer, fs []field, keepSubject bool) {
	haveCT := false
	for _, f := range fs {
		switch {
		case traceFields[f.name]:
		case f.name == "content-type" && !haveCT:
			haveCT = true
			b.Write(protectedContentType(f.raw))
		default:
			b.Write(f.raw)
		}
	}
	if !haveCT {
		// RFC 2045 §5.2: the default is text/plain; charset=us-ascii.
		b.WriteString("Content-Type: text/plain; charset=us-ascii;" + hpParams)
	}
	for _, f := range fs {
		switch {
		case outerFields[f.name]:
			b.WriteString("HP-Outer: ")
			b.Write(f.raw)
		case f.name == "subject":
			b.WriteString("HP-Outer: ")
			b.Write(outerSubject(f, keepSubject))
		}
	}
}

// hpParams mark the Cryptographic Payload: hp="cipher" (RFC 9788 §2.1.1)
// and protected-headers="v1" (the draft's marker, read by Thunderbird and
// Enigmail-era clients).
const hpParams = "\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\n"

// protectedContentType returns the Content-Type field with the header
// protection parameters added, the rest of the value kept byte for byte.
func protectedContentType(raw []byte) []byte {
	i := bytes.IndexByte(raw, ':')
	value := string(raw[i+1:])
	unfolded := strings.ReplaceAll(value, "\r\n", "")
	if strings.TrimSpace(unfolded) == "" {
		// An empty Content-Type means the default (RFC 2045 §5.2).
		return []byte("Content-Type: text/plain; charset=us-ascii;" + hpParams)
	}
	mt, params, err := mime.ParseMediaType(unfolded)
	if err == nil || errors.Is(err, mime.ErrInvalidMediaParameter) {
		_, hasHP := params["hp"]
		_, hasPH := params["protected-headers"]
		if hasHP || hasPH {
			delete(params, "hp")
			delete(params, "protected-headers")
			if s := mime.FormatMediaType(mt, params); s != "" {
				return []byte("Content-Type: " + s + ";" + hpParams)
			}
		}
	}
	kept := bytes.TrimRight(raw, " \t\r\n;")
	out := make([]byte, 0, len(kept)+len(hpParams)+1)
	out = append(out, kept...)
	out = append(out, ';')
	return append(out, hpParams...)
}

// crlfWriter appends to buf, turning bare LF into CRLF (RFC 8551 §3.1.1
// canonical form; RFC 5322 §2.3 allows CR and LF only together).
type crlfWriter struct {
	buf    *bytes.Buffer
	prevCR bool
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.buf.Write(p)
			c.prevCR = p[len(p)-1] == '\r'
			break
		}
		cr := c.prevCR
		if i > 0 {
			cr = p[i-1] == '\r'
		}
		if cr {
			c.buf.Write(p[:i+1])
		} else {
			c.buf.Write(p[:i])
			c.buf.WriteString("\r\n")
		}
		c.prevCR = false
		p = p[i+1:]
	}
	return n, nil
}
