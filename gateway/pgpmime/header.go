package pgpmime

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxHeaderBytes bounds the header section of a message; it is held in
// memory (it appears both outside and inside the encrypted part).
const maxHeaderBytes = 1 << 20

// field is one header field (RFC 5322 §2.2) as found in the message, with
// its folding kept and its line endings made CRLF.
type field struct {
	name  string // as written, without trailing white space
	lower string // lower-case name
	value []byte // everything after the colon, folded lines and final CRLF included
}

func (f field) writeTo(w *bytes.Buffer) {
	w.WriteString(f.name)
	w.WriteByte(':')
	w.Write(f.value)
}

// readHeader reads the header section of a message, up to and including the
// empty line that ends it (RFC 5322 §2.1), leaving br at the first body
// octet. A message that ends inside its header section has an empty body.
func readHeader(br *bufio.Reader) ([]field, error) {
	var fields []field
	total := 0
	for {
		line, err := readLine(br, maxHeaderBytes-total)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return fields, nil // end of input: no body
		}
		total += len(line)
		content := trimEOL(line)
		if len(content) == 0 {
			return fields, nil // the empty line before the body
		}
		switch content[0] {
		case ' ', '\t': // folded continuation (RFC 5322 §2.2.3)
			if len(fields) == 0 {
				return nil, errors.New("header section starts with a continuation line")
			}
			f := &fields[len(fields)-1]
			f.value = append(f.value, content...)
			f.value = append(f.value, '\r', '\n')
		default:
			colon := bytes.IndexByte(content, ':')
			if colon <= 0 {
				return nil, fmt.Errorf("malformed header line %q", truncate(content, 60))
			}
			name := bytes.TrimRight(content[:colon], " \t") // obsolete WSP before the colon (RFC 5322 §4.5)
			if !validFieldName(name) {
				return nil, fmt.Errorf("malformed header field name %q", truncate(name, 60))
			}
			v := make([]byte, 0, len(content)-colon+1)
			v = append(v, content[colon+1:]...)
			v = append(v, '\r', '\n')
			fields = append(fields, field{name: string(name), lower: strings.ToLower(string(name)), value: v})
		}
		if errors.Is(err, io.EOF) {
			return fields, nil
		}
	}
}

// readLine returns the next line with its ending (which may be missing at
// the end of input), failing when it would exceed limit octets.
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > limit {
			return nil, fmt.Errorf("header section larger than %d bytes", maxHeaderBytes)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, err
		}
	}
}

func trimEOL(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r"))
}

// validFieldName: printable US-ASCII except colon (RFC 5322 §2.2, ftext).
func validFieldName(name []byte) bool {
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// crlfWriter turns every bare LF into CRLF and leaves CRLF alone, so the
// output is in MIME canonical form (RFC 3156 §4, RFC 2045 §2.10) whatever
// line endings the input used. It holds no data between writes.
type crlfWriter struct {
	w      io.Writer
	lastCR bool
}

var crlf = []byte("\r\n")

func (c *crlfWriter) Write(p []byte) (int, error) {
	n := len(p)
	start := 0 // p[start:] is not written yet
	for off := 0; off < len(p); {
		i := bytes.IndexByte(p[off:], '\n')
		if i < 0 {
			break
		}
		i += off
		if (i > 0 && p[i-1] == '\r') || (i == 0 && c.lastCR) {
			off = i + 1 // already CRLF: keep it in the pending run
			continue
		}
		// A bare LF: flush what precedes it, then CRLF in its place.
		if _, err := c.w.Write(p[start:i]); err != nil {
			return 0, err
		}
		if _, err := c.w.Write(crlf); err != nil {
			return 0, err
		}
		start, off = i+1, i+1
	}
	if start < len(p) {
		if _, err := c.w.Write(p[start:]); err != nil {
			return 0, err
		}
	}
	if n > 0 {
		c.lastCR = p[n-1] == '\r'
	}
	return n, nil
}
