package dkim

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

const msg = "From: Alice <alice@example.org>\r\nTo: bob@dest.test\r\nSubject: hello\r\nDate: Mon, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nX-Other: x\r\n\r\nbody line\r\n"

func writeKey(t *testing.T, dir, name string, der []byte, typ string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSignVerify(t *testing.T) {
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner([]Key{
		{Domain: "Example.org", Selector: "rsa", KeyFile: writeKey(t, dir, "rsa.pem", x509.MarshalPKCS1PrivateKey(rsaKey), "RSA PRIVATE KEY")},
		{Domain: "example.org", Selector: "ed", KeyFile: writeKey(t, dir, "ed.pem", edDER, "PRIVATE KEY")},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.TempDir = dir
	txt := map[string]string{
		"rsa._domainkey.example.org": "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(rsaPub),
		"ed._domainkey.example.org":  "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edPub),
	}
	lookup := func(name string) ([]string, error) {
		if v, ok := txt[name]; ok {
			return []string{v}, nil
		}
		return nil, fmt.Errorf("no TXT at %s", name)
	}

	var out bytes.Buffer
	if err := s.Sign(&out, strings.NewReader(msg), "EXAMPLE.org"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), msg) {
		t.Fatalf("message altered:\n%s", out.String())
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(out.Bytes()), &msgdkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.org" {
			t.Errorf("verification %+v: %v", v, v.Err)
		}
		if !contains(v.HeaderKeys, "Subject") || !contains(v.HeaderKeys, "From") || contains(v.HeaderKeys, "X-Other") {
			t.Errorf("signed headers %v", v.HeaderKeys)
		}
	}
	if !strings.Contains(out.String(), "c=relaxed/relaxed") || !strings.Contains(out.String(), "a=rsa-sha256") || !strings.Contains(out.String(), "a=ed25519-sha256") {
		t.Errorf("signature tags:\n%s", out.String()[:len(out.String())-len(msg)])
	}

	// Tampering with the signed body breaks the signature.
	tampered := strings.Replace(out.String(), "body line", "body lime", 1)
	vs, err = msgdkim.VerifyWithOptions(strings.NewReader(tampered), &msgdkim.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 2 || vs[0].Err == nil || vs[1].Err == nil {
		t.Errorf("tampered message verified: %v", err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func TestNoKeyCopiesUnchanged(t *testing.T) {
	s, err := NewSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := s.Sign(&out, strings.NewReader(msg), "other.test"); err != nil || out.String() != msg {
		t.Errorf("got %q, %v", out.String(), err)
	}
	if s.Has("other.test") {
		t.Error("Has reports a key")
	}
}

func TestBadKeys(t *testing.T) {
	dir := t.TempDir()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]Key{
		"missing file": {Domain: "a", Selector: "s", KeyFile: filepath.Join(dir, "nope.pem")},
		"not PEM":      {Domain: "a", Selector: "s", KeyFile: writeRaw(t, dir, "x.pem", "hello")},
		"ECDSA key":    {Domain: "a", Selector: "s", KeyFile: writeKey(t, dir, "e.pem", ecDER, "PRIVATE KEY")},
		"certificate":  {Domain: "a", Selector: "s", KeyFile: writeKey(t, dir, "c.pem", []byte{1}, "CERTIFICATE")},
		"no selector":  {Domain: "a", KeyFile: filepath.Join(dir, "x.pem")},
	} {
		if _, err := NewSigner([]Key{k}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func writeRaw(t *testing.T, dir, name, s string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
