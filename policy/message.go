package policy

import (
	"fmt"
	"io"
	"mime"
	"net/textproto"
	"strings"
	"sync"
)

// Bounds of body extraction for body_regex: the decoded text searched is at
// most MaxBodyText bytes in all, from at most MaxBodyParts MIME entities
// nested at most MaxBodyDepth deep. What lies beyond is not searched.
const (
	MaxBodyText  = 1 << 20
	MaxBodyParts = 100
	MaxBodyDepth = 10
)

// Message is a message as the engine sees it. Build one per message and share
// it (by pointer; it must not be copied after first use) between the
// decisions for its recipients: the decoded text of the body is extracted
// lazily, at most once, and only when a rule with body_regex is evaluated.
// Malformed MIME never makes extraction fail: the rules match on what could
// be decoded.
type Message struct {
	From   string               // envelope sender ("" for the null reverse-path)
	Header textproto.MIMEHeader // the message header (canonical keys); values may be RFC 2047-encoded
	Size   int64                // size of the message in bytes
	// Open returns the full raw RFC 5322 message (header and body). When nil,
	// body_regex never matches.
	Open func() (io.ReadCloser, error)

	body struct {
		once  sync.Once
		texts []string
		err   error
	}
}

// BodyErr returns the error met opening or reading the message for
// body_regex, or nil when there was none or the body was not needed. A
// body_regex rule cannot have matched a message it could not read, so a
// caller should defer such a message rather than act on its decisions.
// Malformed MIME is not an error.
func (m *Message) BodyErr() error {
	m.bodyTexts()
	return m.body.err
}

// bodyTexts returns the decoded text parts, extracting them on first use.
func (m *Message) bodyTexts() []string {
	m.body.once.Do(func() {
		if m.Open == nil {
			return
		}
		rc, err := m.Open()
		if err != nil {
			m.body.err = fmt.Errorf("policy: open message: %w", err)
			return
		}
		defer rc.Close()
		texts, err := bodyText(rc, bodyLimits{text: MaxBodyText, parts: MaxBodyParts, depth: MaxBodyDepth})
		m.body.texts = texts
		if err != nil {
			m.body.err = fmt.Errorf("policy: read message: %w", err)
		}
	})
	return m.body.texts
}

// subjects returns every Subject field, RFC 2047-decoded. All of them are
// matched: a message with several Subject fields is malformed (RFC 5322
// §3.6 allows one), and clients differ in which they show.
func (m *Message) subjects() []string {
	return m.headerValues("Subject")
}

// headerValues returns the values of the named header field, with RFC 2047
// encoded-words decoded (an undecodable value is kept as it is).
func (m *Message) headerValues(name string) []string {
	if m.Header == nil {
		return nil
	}
	vals := m.Header[canonicalHeader(name)]
	if len(vals) == 0 {
		return nil
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = decodeHeader(v)
	}
	return out
}

// decodeHeader decodes RFC 2047 encoded-words in an unstructured header
// value.
func decodeHeader(v string) string {
	if !strings.Contains(v, "=?") {
		return v
	}
	dec := mime.WordDecoder{CharsetReader: charsetReader}
	s, err := dec.DecodeHeader(v)
	if err != nil {
		return v
	}
	return s
}

// charsetReader serves mime.WordDecoder for the charsets it does not know
// itself (it handles UTF-8, US-ASCII and ISO-8859-1). An unknown charset is
// passed through undecoded: ASCII text in it still matches.
func charsetReader(charset string, input io.Reader) (io.Reader, error) {
	data, err := io.ReadAll(io.LimitReader(input, MaxBodyText))
	if err != nil {
		return nil, fmt.Errorf("read encoded word: %w", err)
	}
	return strings.NewReader(decodeCharset(charset, data)), nil
}
