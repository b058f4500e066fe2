package smime

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzReadMessage feeds arbitrary messages to the header parser and the
// builders of the outer header and the inner entity. Whatever comes in, the
// output must be canonical CRLF, the outer header must hold only the fields
// allowed outside, and the real Subject must not leak.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte("From: a@example.org\r\nSubject: secret\r\n\r\nbody\r\n"), false)
	f.Add([]byte("Received: x\r\n\ty\r\nSubject: a\n b\nContent-Type: text/plain; hp=x\n\nbody\n"), true)
	f.Add([]byte(" leading continuation\r\nFrom: a\r\n"), false)
	f.Add([]byte("no header at all"), false)
	f.Add([]byte("Subject : obsolete spacing\r\nContent-Type: multipart/mixed; boundary=\"x\";\r\n\r\n--x--\r"), false)
	f.Add([]byte("To: a\r\n\r"), false)
	f.Add([]byte{}, true)
	allowed := map[string]bool{"subject": true}
	for k := range outerFields {
		allowed[k] = true
	}
	for k := range traceFields {
		allowed[k] = true
	}
	f.Fuzz(func(t *testing.T, data []byte, keep bool) {
		m, err := readMessage(bytes.NewReader(data), len(data), keep)
		if err != nil {
			return // only an oversized header section is an error
		}
		inner := m.inner.Bytes()
		if i := bareLF(inner); i >= 0 {
			t.Fatalf("bare LF at %d in inner entity %q", i, inner)
		}
		if m.inner.Cap()-m.inner.Len() < 16 {
			t.Fatal("no room for the CBC padding")
		}
		head, _, ok := bytes.Cut(inner, []byte("\r\n\r\n"))
		if !ok {
			t.Fatalf("inner entity without a header/body separator: %q", inner)
		}
		if !bytes.Contains(head, []byte("protected-headers=\"v1\"; hp=\"cipher\"")) {
			t.Fatalf("inner header not marked: %q", head)
		}
		var outer bytes.Buffer
		writeOuterHeader(&outer, m.fields, keep)
		o := outer.Bytes()
		if len(o) > 0 && !bytes.HasSuffix(o, []byte("\r\n")) {
			t.Fatalf("outer header does not end in CRLF: %q", o)
		}
		if i := bareLF(o); i >= 0 {
			t.Fatalf("bare LF at %d in outer header %q", i, o)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(o), "\r\n"), "\r\n") {
			if line == "" || line[0] == ' ' || line[0] == '\t' {
				continue
			}
			name, _, _ := strings.Cut(line, ":")
			name = strings.ToLower(strings.TrimRight(name, " \t"))
			if !allowed[name] {
				t.Fatalf("field %q outside", name)
			}
			if name == "subject" && !keep && line != "Subject: ..." {
				t.Fatalf("subject leaked: %q", line)
			}
		}
	})
}

// bareLF returns the index of an LF not preceded by CR, or -1.
func bareLF(b []byte) int {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return i
		}
	}
	return -1
}
