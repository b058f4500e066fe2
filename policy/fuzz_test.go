package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse: any policy file either parses into a usable policy or gives
// problems with the file's name and a message; never a panic.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"spec.yaml", "bad.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(extended))
	f.Add([]byte("rules:\n  - {name: a, when: {sender: &x [a@b]}, methods: [tls]}\n  - {name: b, when: {recipient: *x}, methods: [pgp]}\n"))
	f.Add([]byte("methods: [tls]\nrules: a: b\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data, "f.yaml")
		if err != nil {
			probs := problemStrings(t, err)
			if len(probs) == 0 {
				t.Fatal("an error without problems")
			}
			for _, s := range probs {
				if !strings.HasPrefix(s, "f.yaml") || strings.HasSuffix(s, ": ") {
					t.Fatalf("bad problem %q", s)
				}
			}
			return
		}
		if len(p.Methods) == 0 || (p.TLSLevel != TLSVerify && p.TLSLevel != TLSEncrypt) {
			t.Fatalf("invalid policy accepted: %+v", p)
		}
		names := map[string]bool{}
		for _, r := range p.Rules {
			if r.Name == "" || r.Name == DefaultRule || names[r.Name] || len(r.Methods) == 0 {
				t.Fatalf("invalid rule accepted: %+v", r)
			}
			names[r.Name] = true
		}
		m := headerMessage("a@example.org", "Subject", "[secure] x", "X-Classification", "confidential")
		d := p.Decide(context.Background(), m, "b@partner.example", avail(TLS))
		if len(d.Considered) != len(d.Plan) {
			t.Fatalf("decision %+v", d)
		}
	})
}

// FuzzBodyText: any raw message is read within the bounds; never a panic,
// never an error from a reader that has none.
func FuzzBodyText(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nhello 078-05-1120\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=latin1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nStra=DFe=\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n\r\nx\r\n--d--"))
	f.Add([]byte("Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=\r\n= \r\n=4\r\n=ZZ="))
	lim := bodyLimits{text: 4096, parts: 8, depth: 3}
	f.Fuzz(func(t *testing.T, data []byte) {
		texts, err := bodyText(strings.NewReader(string(data)), lim)
		if err != nil {
			t.Fatalf("error from a strings.Reader: %v", err)
		}
		if len(texts) > lim.parts {
			t.Fatalf("%d texts, bound %d", len(texts), lim.parts)
		}
		total := 0
		for _, s := range texts {
			if s == "" {
				t.Fatal("empty text kept")
			}
			total += len(s)
		}
		if total > lim.text {
			t.Fatalf("%d bytes of text, bound %d", total, lim.text)
		}
	})
}
