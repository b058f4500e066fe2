package pgpmime

import (
	"bytes"
	"testing"
)

// canonical is an independent CRLF conversion: each LF not preceded by CR
// becomes CRLF.
func canonical(b []byte) []byte {
	var out []byte
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// FuzzEncrypt feeds arbitrary messages (untrusted input from SMTP
// clients) to Encrypt: it must never panic; it either refuses before
// writing anything, or produces a PGP/MIME message whose decrypted body is
// the input's body in CRLF form.
func FuzzEncrypt(f *testing.F) {
	key := newEntity(f, nil)
	msg, _, _ := testMessage(f, []byte("seed"))
	f.Add(msg)
	f.Add([]byte("From: a@example.org\nSubject: x\n\nbody\n"))
	f.Add([]byte("\r\n\r\nonly body"))
	f.Add([]byte("X: a\r\r\n\r\n\r"))
	f.Add([]byte("Content-Type: text/plain; hp=\"clear\"\r\nContent-Type: text/html\r\n\r\n<p>"))
	f.Add([]byte(" bad\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		if err := Encrypt(&out, bytes.NewReader(in), key, Options{}); err != nil {
			if out.Len() != 0 {
				t.Fatalf("error %v after writing %d bytes", err, out.Len())
			}
			return
		}
		_, asc := outerParts(t, out.Bytes())
		plain, _, _ := decryptGo(t, asc, key)
		c := canonical(in)
		var wantBody []byte
		if bytes.HasPrefix(c, []byte("\r\n")) {
			wantBody = c[2:]
		} else if i := bytes.Index(c, []byte("\r\n\r\n")); i >= 0 {
			wantBody = c[i+4:]
		}
		i := bytes.Index(plain, []byte("\r\n\r\n"))
		if i < 0 {
			t.Fatalf("no header/body separator in %q", plain)
		}
		if got := plain[i+4:]; !bytes.Equal(got, wantBody) {
			t.Fatalf("body\n got %q\nwant %q", got, wantBody)
		}
		if !bytes.Contains(plain[:i], []byte("hp=")) {
			t.Fatalf("inner header lacks hp parameter: %q", plain[:i])
		}
	})
}
