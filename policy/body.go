package policy

import (
	"bufio"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
)

type bodyLimits struct {
	text  int // decoded text bytes in all
	parts int // MIME entities visited
	depth int // nesting of multiparts and message/rfc822
}

// bodyText returns the decoded text of the text/* parts of the raw RFC 5322
// message r, within lim. Malformed MIME is not an error: what could be
// decoded is returned. The error is one from r itself (an I/O error).
func bodyText(r io.Reader, lim bodyLimits) ([]string, error) {
	er := &errReader{r: r}
	x := &extractor{lim: lim}
	x.message(bufio.NewReader(er), 0)
	return x.texts, er.err
}

// errReader remembers the first error of its reader other than io.EOF, so
// that I/O errors can be told from malformed MIME.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && e.err == nil {
		e.err = err
	}
	return n, err
}

type extractor struct {
	lim   bodyLimits
	texts []string
	used  int // decoded text bytes kept
	parts int // entities visited
}

func (x *extractor) full() bool { return x.used >= x.lim.text || x.parts >= x.lim.parts }

// message reads an RFC 5322 message: header, then body as one MIME entity.
func (x *extractor) message(br *bufio.Reader, depth int) {
	// A malformed header line ends the header; what follows is read as the
	// body, so that its text is still searched.
	h, _ := textproto.NewReader(br).ReadMIMEHeader()
	x.entity(h, br, depth, "text/plain")
}

// entity reads one MIME entity (RFC 2045) with header h and body r.
// defaultType is its type when it has no Content-Type: text/plain, or
// message/rfc822 inside multipart/digest (RFC 2046 §5.1.5).
func (x *extractor) entity(h textproto.MIMEHeader, r io.Reader, depth int, defaultType string) {
	if x.full() {
		return
	}
	x.parts++
	mediatype, params := defaultType, map[string]string{}
	if ct := h.Get("Content-Type"); ct != "" {
		mt, p, err := mime.ParseMediaType(ct)
		switch {
		case err == nil, errors.Is(err, mime.ErrInvalidMediaParameter):
			mediatype, params = mt, p
		default:
			// RFC 2045 §5.2: an invalid Content-Type means text/plain.
			mediatype = "text/plain"
		}
	}
	switch {
	case strings.HasPrefix(mediatype, "multipart/"):
		boundary := params["boundary"]
		if boundary == "" {
			// Unusable as a multipart (RFC 2046 §5.1.1 requires a
			// boundary): search it as text.
			x.text(h, r, params)
			return
		}
		if depth >= x.lim.depth {
			return
		}
		child := "text/plain"
		if mediatype == "multipart/digest" {
			child = "message/rfc822"
		}
		mr := multipart.NewReader(r, boundary)
		for !x.full() {
			// NextRawPart: leave quoted-printable to transferDecoder, which
			// is more lenient than multipart's own decoding.
			p, err := mr.NextRawPart()
			if err != nil {
				return
			}
			x.entity(p.Header, p, depth+1, child)
		}
	case mediatype == "message/rfc822" || mediatype == "message/global":
		// message/global: RFC 6532 §3.7.
		if depth >= x.lim.depth {
			return
		}
		x.message(bufio.NewReader(transferDecoder(h, r)), depth+1)
	case strings.HasPrefix(mediatype, "text/"):
		x.text(h, r, params)
	}
}

// text keeps the decoded text of a text/* entity, within the text budget.
func (x *extractor) text(h textproto.MIMEHeader, r io.Reader, params map[string]string) {
	room := x.lim.text - x.used
	if room <= 0 {
		return
	}
	// A read error or corrupt encoding ends the part; what was decoded
	// before it is kept.
	data, _ := io.ReadAll(io.LimitReader(transferDecoder(h, r), int64(room)))
	s := truncateUTF8(decodeCharset(params["charset"], data), room)
	if s == "" {
		return
	}
	x.texts = append(x.texts, s)
	x.used += len(s)
}

// transferDecoder undoes the Content-Transfer-Encoding (RFC 2045 §6).
func transferDecoder(h textproto.MIMEHeader, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Filter{r: r})
	case "quoted-printable":
		return &qpReader{br: bufio.NewReader(r)}
	default: // 7bit, 8bit, binary (RFC 2045 §6.2), or unknown
		return r
	}
}

// base64Filter drops what is not in the base64 alphabet: RFC 2045 §6.8
// says such characters (line breaks and others) are to be ignored.
type base64Filter struct {
	r io.Reader
}

func (f *base64Filter) Read(p []byte) (int, error) {
	for {
		n, err := f.r.Read(p)
		k := 0
		for _, c := range p[:n] {
			if isBase64(c) {
				p[k] = c
				k++
			}
		}
		if k > 0 || err != nil {
			return k, err
		}
	}
}

func isBase64(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '='
}

// qpReader decodes quoted-printable (RFC 2045 §6.7) leniently: "=XX" is the
// byte XX, "=" before optional white space and a line break is a soft line
// break, and any other "=" is kept literally. Nothing is an error, unlike
// mime/quotedprintable, which stops at control characters and long lines.
type qpReader struct {
	br *bufio.Reader
}

func (q *qpReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c, err := q.br.ReadByte()
		if err != nil {
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
		if c != '=' {
			p[n] = c
			n++
			continue
		}
		if b, _ := q.br.Peek(2); len(b) == 2 && isHex(b[0]) && isHex(b[1]) {
			p[n] = unhex(b[0])<<4 | unhex(b[1])
			n++
			_, _ = q.br.Discard(2)
			continue
		}
		if q.softBreak() {
			continue
		}
		p[n] = '='
		n++
	}
	return n, nil
}

// softBreak consumes the white space and line break after "=" when they
// form a soft line break (or "=" ends the input), and reports whether they
// did.
func (q *qpReader) softBreak() bool {
	k := 0
	for k < 80 {
		b, _ := q.br.Peek(k + 1)
		if len(b) <= k || (b[k] != ' ' && b[k] != '\t') {
			break
		}
		k++
	}
	b, _ := q.br.Peek(k + 2)
	switch {
	case len(b) == k: // end of input
	case b[k] == '\n':
		k++
	case b[k] == '\r' && len(b) > k+1 && b[k+1] == '\n':
		k += 2
	default:
		return false
	}
	_, _ = q.br.Discard(k)
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
