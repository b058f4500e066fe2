package smtpd

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// FuzzCopyMessage drives the header scanning of copyMessage (hop counting,
// Message-ID detection and insertion) through a real SMTP session: whatever
// the message, the reply is 250 or the loop refusal, and what is queued is
// our Received header plus the message, changed at most by one added
// Message-ID line.
func FuzzCopyMessage(f *testing.F) {
	for _, s := range []string{
		simpleMsg,
		"Message-ID: <a@b>\r\n\r\nbody\r\n",
		"Message-Id:\r\n  <folded@b>\r\nSubject: x\r\n\r\n",
		"message-id: \r\n\r\n",
		"Subject: only header\r\n",
		"\r\nno header at all\r\n",
		"",
		".\r\n..\r\n.x\r\n",
		"Received: a\r\n received: b\r\nRECEIVED : c\r\n\tReceived: d\r\n\r\nReceived: e\r\n",
		strings.Repeat("Received: x\r\n", 49) + "\r\n",
		strings.Repeat("Received: x\r\n", 50) + "\r\n",
		"X: " + strings.Repeat("y", 70000) + "\r\nMessage-ID: <after-long@b>\r\n\r\n",
		"no colon line\r\nMessage-ID:<x@y>\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	h := start(f, func(o *Options) { o.MaxLineLength = 0; o.MaxMessageBytes = 4 << 20 })
	var c *smtp.Client
	f.Cleanup(func() {
		if c != nil {
			c.Close()
		}
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 1<<20 {
			return
		}
		// Bare CRs are not what this target is about; the client turns LF
		// into CRLF and dot-stuffs.
		in = bytes.ReplaceAll(in, []byte("\r"), nil)
		if len(in) == 0 || in[len(in)-1] != '\n' { // the client ends DATA with CRLF
			in = append(in, '\n')
		}
		norm := string(bytes.ReplaceAll(in, []byte("\n"), []byte("\r\n")))

		if c == nil {
			var err error
			if c, err = smtp.Dial(h.addr); err != nil {
				t.Fatal(err)
			}
			if err := c.Hello("client.test"); err != nil {
				t.Fatal(err)
			}
		}
		reply, err := send(c, "a@example.org", []string{"b@x.example"}, string(in))
		hops := receivedFields(norm)
		if err != nil {
			var se *smtp.SMTPError
			if errors.As(err, &se) && se.Code == 554 && se.EnhancedCode == (smtp.EnhancedCode{5, 4, 6}) {
				if hops+1 <= MaxHops {
					t.Fatalf("refused as a loop with %d Received fields", hops)
				}
				return
			}
			c.Close()
			c = nil
			t.Fatalf("message refused: %v", err)
		}
		if hops+1 > MaxHops {
			t.Fatalf("accepted with %d Received fields", hops)
		}
		id := reply[strings.LastIndexByte(reply, ' ')+1:]
		it, body := h.item(t, id)
		defer func() {
			_ = os.Remove(filepath.Join(h.dir, "meta", id+".json"))
			_ = os.Remove(filepath.Join(h.dir, "msg", id))
		}()
		if it.Size != int64(len(body)) {
			t.Fatalf("Size %d, body %d bytes", it.Size, len(body))
		}
		// Our Received header: first line, continuation lines up to the one
		// ending in ';', then the date line.
		if !strings.HasPrefix(body, "Received: from client.test ([127.0.0.1])\r\n\tby "+testHost+" ") {
			t.Fatalf("body does not start with our Received header: %.200q", body)
		}
		semi := strings.Index(body, ";\r\n\t")
		if semi < 0 {
			t.Fatalf("malformed Received header: %.300q", body)
		}
		end := strings.Index(body[semi+4:], "\r\n")
		if end < 0 {
			t.Fatalf("malformed Received header: %.300q", body)
		}
		rest := body[semi+4+end+2:]

		generated := "<" + id + "@" + testHost + ">"
		if it.MessageID == generated {
			line := "Message-ID: " + generated + "\r\n"
			i := strings.Index(rest, line)
			if i < 0 || rest[:i]+rest[i+len(line):] != norm {
				t.Fatalf("message changed beyond one added Message-ID:\nin:  %.300q\nout: %.300q", norm, rest)
			}
			if i > 0 && rest[i-1] != '\n' {
				t.Fatalf("Message-ID added inside a line: %.300q", rest)
			}
			return
		}
		if rest != norm {
			t.Fatalf("message changed:\nin:  %.300q\nout: %.300q", norm, rest)
		}
		// The record is JSON: invalid UTF-8 comes back as U+FFFD, and the
		// 998-octet cut may split a character.
		stored := strings.TrimRight(it.MessageID, "\uFFFD")
		if it.MessageID == "" || len(stored) > 998*3 || !strings.Contains(jsonText(norm), stored) {
			t.Fatalf("Message-ID %q is not the message's", it.MessageID)
		}
	})
}

// jsonText is s as it reads back from JSON: each byte of invalid UTF-8
// replaced by U+FFFD.
func jsonText(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

// receivedFields counts Received header fields in the header section of msg
// (RFC 5322 §2.2: a field name, then ':'; continuation lines start with
// white space), the way a loop check should.
func receivedFields(msg string) int {
	n := 0
	for line := range strings.SplitSeq(msg, "\r\n") {
		if line == "" {
			break
		}
		if len(line)+2 > 64<<10 {
			continue // over-long lines are kept unparsed
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		name, _, _ := strings.Cut(line, ":")
		if strings.EqualFold(strings.TrimSpace(name), "Received") {
			n++
		}
	}
	return n
}
