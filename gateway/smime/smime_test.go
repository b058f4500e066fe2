package smime_test

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"go.mozilla.org/pkcs7"

	"github.com/postern-mail/postern/certs/smimecerts/smimetest"
	"github.com/postern-mail/postern/gateway/smime"
)

// pki is shared by the tests of this file: RSA key generation is slow.
type pki struct {
	ca   *smimetest.CA
	bob  *smimetest.Leaf // recipient
	org  *smimetest.Leaf // organisation signer
	ec   *smimetest.Leaf
	ed   *smimetest.Leaf
	weak *smimetest.Leaf
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca := smimetest.NewCA(t, "Test Root")
	return &pki{
		ca:   ca,
		bob:  ca.Issue(t, smimetest.LeafOptions{Emails: []string{"bob@x.example"}}),
		org:  ca.Issue(t, smimetest.LeafOptions{Emails: []string{"secure@example.org"}}),
		ec:   ca.Issue(t, smimetest.LeafOptions{Emails: []string{"ec@x.example"}, KeyType: smimetest.ECDSA}),
		ed:   ca.Issue(t, smimetest.LeafOptions{Emails: []string{"ed@x.example"}, KeyType: smimetest.Ed25519}),
		weak: ca.Issue(t, smimetest.LeafOptions{Emails: []string{"weak@x.example"}, KeyType: smimetest.RSA1024}),
	}
}

// testMessage is a message as it leaves the queue: trace fields first, a
// folded Subject, an internal header, a text part and a binary attachment
// of attachBytes random bytes.
type testMessage struct {
	raw        []byte
	body       []byte // everything after the blank line
	subjectRaw string
}

func makeMessage(t testing.TB, attachBytes int) testMessage {
	t.Helper()
	attach := make([]byte, attachBytes)
	if _, err := rand.Read(attach); err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	body.WriteString("--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	body.WriteString("Hello Bob,\r\n\r\nthe numbers: \xc3\xbcber 42.\r\n.\r\n..leading dots\r\n")
	body.WriteString("--b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n")
	body.WriteString("Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(attach)
	for len(enc) > 76 {
		body.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	body.WriteString(enc + "\r\n--b1--\r\n")
	subj := "Subject: [secure] quarterly\r\n numbers\r\n"
	head := "Received: from client.example.org (client.example.org [192.0.2.1])\r\n" +
		"\tby gw.example.org with ESMTPS id Q1; Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
		"Return-Path: <alice@example.org>\r\n" +
		"From: Alice <alice@example.org>\r\n" +
		"To: Bob <bob@x.example>\r\n" +
		"Cc: carol@x.example\r\n" +
		subj +
		"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
		"Message-ID: <m1@example.org>\r\n" +
		"In-Reply-To: <m0@x.example>\r\n" +
		"References: <m0@x.example>\r\n" +
		"X-Internal-Note: not for the outside\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n" +
		"\r\n"
	return testMessage{raw: append([]byte(head), body.Bytes()...), body: body.Bytes(), subjectRaw: subj}
}

// wantInner is the inner entity postern must produce for makeMessage,
// written out by hand: the original fields minus trace fields, the
// Content-Type marked as the Cryptographic Payload, HP-Outer fields, body.
func (m testMessage) wantInner(keepSubject bool) []byte {
	outerSubj := "Subject: ...\r\n"
	if keepSubject {
		outerSubj = m.subjectRaw
	}
	h := "From: Alice <alice@example.org>\r\n" +
		"To: Bob <bob@x.example>\r\n" +
		"Cc: carol@x.example\r\n" +
		m.subjectRaw +
		"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
		"Message-ID: <m1@example.org>\r\n" +
		"In-Reply-To: <m0@x.example>\r\n" +
		"References: <m0@x.example>\r\n" +
		"X-Internal-Note: not for the outside\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed;\r\n boundary=\"b1\";\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\n" +
		"HP-Outer: From: Alice <alice@example.org>\r\n" +
		"HP-Outer: To: Bob <bob@x.example>\r\n" +
		"HP-Outer: Cc: carol@x.example\r\n" +
		"HP-Outer: " + outerSubj +
		"HP-Outer: Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
		"HP-Outer: Message-ID: <m1@example.org>\r\n" +
		"HP-Outer: In-Reply-To: <m0@x.example>\r\n" +
		"HP-Outer: References: <m0@x.example>\r\n" +
		"\r\n"
	return append([]byte(h), m.body...)
}

func encrypt(t testing.TB, msg []byte, to *x509.Certificate, opt smime.Options) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := smime.Encrypt(&out, bytes.NewReader(msg), to, opt); err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return out.Bytes()
}

// splitOuter returns the outer header section and the decoded DER.
func splitOuter(t testing.TB, out []byte) (header string, der []byte) {
	t.Helper()
	if i := bytes.IndexByte(bytes.ReplaceAll(out, []byte("\r\n"), nil), '\n'); i >= 0 {
		t.Fatalf("bare LF in output at %d", i)
	}
	h, b, ok := bytes.Cut(out, []byte("\r\n\r\n"))
	if !ok {
		t.Fatal("no blank line in output")
	}
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n") {
		if len(line) > 76 {
			t.Fatalf("base64 line %d is %d characters", i, len(line))
		}
	}
	der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(b), "\r\n", ""))
	if err != nil {
		t.Fatalf("body is not base64: %v", err)
	}
	return string(h) + "\r\n", der
}

func decryptGo(t testing.TB, der []byte, leaf *smimetest.Leaf) []byte {
	t.Helper()
	p7, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatalf("parse CMS: %v", err)
	}
	plain, err := p7.Decrypt(leaf.Cert, leaf.Key)
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	return plain
}

func TestEncryptStructure(t *testing.T) {
	p := newPKI(t)
	m := makeMessage(t, 5000)
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keepSubject=%v", keep), func(t *testing.T) {
			out := encrypt(t, m.raw, p.bob.Cert, smime.Options{KeepSubject: keep})
			header, der := splitOuter(t, out)
			subj := "Subject: ...\r\n"
			if keep {
				subj = m.subjectRaw
			}
			want := "Received: from client.example.org (client.example.org [192.0.2.1])\r\n" +
				"\tby gw.example.org with ESMTPS id Q1; Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
				"Return-Path: <alice@example.org>\r\n" +
				"From: Alice <alice@example.org>\r\n" +
				"To: Bob <bob@x.example>\r\n" +
				"Cc: carol@x.example\r\n" +
				subj +
				"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
				"Message-ID: <m1@example.org>\r\n" +
				"In-Reply-To: <m0@x.example>\r\n" +
				"References: <m0@x.example>\r\n" +
				"MIME-Version: 1.0\r\n" +
				"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n" +
				"Content-Disposition: attachment; filename=smime.p7m\r\n" +
				"Content-Transfer-Encoding: base64\r\n"
			if header != want {
				t.Errorf("outer header:\n%s\nwant:\n%s", header, want)
			}
			if got := decryptGo(t, der, p.bob); !bytes.Equal(got, m.wantInner(keep)) {
				t.Errorf("inner entity differs:\n%.1500s\nwant:\n%.1500s", got, m.wantInner(keep))
			}
		})
	}
}

// TestNoDES: the package-wide cipher is AES-256-CBC from init, every output
// says so, and a changed variable is refused rather than obeyed.
func TestNoDES(t *testing.T) {
	if pkcs7.ContentEncryptionAlgorithm != pkcs7.EncryptionAlgorithmAES256CBC {
		t.Fatalf("pkcs7.ContentEncryptionAlgorithm = %d after init", pkcs7.ContentEncryptionAlgorithm)
	}
	p := newPKI(t)
	m := makeMessage(t, 100)
	aes256 := "2.16.840.1.101.3.4.1.42"
	for i := range 20 {
		_, der := splitOuter(t, encrypt(t, m.raw, p.bob.Cert, smime.Options{}))
		info, err := smime.InspectEnvelope(der)
		if err != nil {
			t.Fatal(err)
		}
		if info.ContentCipher.String() != aes256 || info.IVLen != 16 {
			t.Fatalf("encryption %d: cipher %v, IV %d bytes", i, info.ContentCipher, info.IVLen)
		}
		if len(info.KeyTransport) != 1 || info.KeyTransport[0].String() != "1.2.840.113549.1.1.1" {
			t.Fatalf("key transport %v", info.KeyTransport)
		}
	}

	for _, alg := range []int{pkcs7.EncryptionAlgorithmDESCBC, pkcs7.EncryptionAlgorithmAES256GCM, pkcs7.EncryptionAlgorithmAES128CBC} {
		pkcs7.ContentEncryptionAlgorithm = alg
		var out bytes.Buffer
		err := smime.Encrypt(&out, bytes.NewReader(m.raw), p.bob.Cert, smime.Options{})
		pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
		if !errors.Is(err, smime.ErrCipherChanged) || out.Len() != 0 {
			t.Errorf("cipher %d: err %v, %d bytes written", alg, err, out.Len())
		}
	}
}

// TestRefusesUnsupportedKeys: go.mozilla.org/pkcs7 would panic on these.
func TestRefusesUnsupportedKeys(t *testing.T) {
	p := newPKI(t)
	m := makeMessage(t, 100)
	for name, leaf := range map[string]*smimetest.Leaf{"ecdsa": p.ec, "ed25519": p.ed, "rsa1024": p.weak} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := smime.Encrypt(&out, bytes.NewReader(m.raw), leaf.Cert, smime.Options{})
			if !errors.Is(err, smime.ErrUnsupportedKey) {
				t.Fatalf("err %v, want ErrUnsupportedKey", err)
			}
			if out.Len() != 0 {
				t.Errorf("%d bytes written", out.Len())
			}
		})
	}
	if err := smime.Encrypt(new(bytes.Buffer), bytes.NewReader(m.raw), nil, smime.Options{}); err == nil {
		t.Error("nil certificate accepted")
	}
}

func TestHeaderEdgeCases(t *testing.T) {
	p := newPKI(t)
	cases := []struct {
		name, in  string
		wantInner string
		wantOuter []string // substrings of the outer header
		notOuter  []string
	}{
		{
			name:      "bare LF and no Content-Type",
			in:        "From: a@example.org\nTo: bob@x.example\nSubject: hi\n\nline one\nline two\r\n",
			wantInner: "From: a@example.org\r\nTo: bob@x.example\r\nSubject: hi\r\nContent-Type: text/plain; charset=us-ascii;\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\nHP-Outer: From: a@example.org\r\nHP-Outer: To: bob@x.example\r\nHP-Outer: Subject: ...\r\n\r\nline one\r\nline two\r\n",
			wantOuter: []string{"Subject: ...\r\n"},
			notOuter:  []string{"hi"},
		},
		{
			name:      "existing protection parameters replaced",
			in:        "From: a@example.org\r\nContent-Type: text/plain; hp=clear; charset=utf-8\r\n\r\nx\r\n",
			wantInner: "From: a@example.org\r\nContent-Type: text/plain; charset=utf-8;\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\nHP-Outer: From: a@example.org\r\n\r\nx\r\n",
		},
		{
			name:      "header only, no body",
			in:        "From: a@example.org\r\nSubject: s",
			wantInner: "From: a@example.org\r\nSubject: s\r\nContent-Type: text/plain; charset=us-ascii;\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\nHP-Outer: From: a@example.org\r\nHP-Outer: Subject: ...\r\n\r\n",
		},
		{
			name:      "malformed line ends the header",
			in:        "From: a@example.org\r\nthis is not a header\r\nmore\r\n",
			wantInner: "From: a@example.org\r\nContent-Type: text/plain; charset=us-ascii;\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\nHP-Outer: From: a@example.org\r\n\r\nthis is not a header\r\nmore\r\n",
		},
		{
			name:      "trailing semicolon, sender and list headers stay inside",
			in:        "Sender: s@example.org\r\nList-Id: <l.example.org>\r\nContent-Type: text/html;\r\n\r\n<p>x</p>",
			wantInner: "Sender: s@example.org\r\nList-Id: <l.example.org>\r\nContent-Type: text/html;\r\n protected-headers=\"v1\"; hp=\"cipher\"\r\n\r\n<p>x</p>",
			notOuter:  []string{"Sender", "List-Id"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			header, der := splitOuter(t, encrypt(t, []byte(c.in), p.bob.Cert, smime.Options{}))
			if got := string(decryptGo(t, der, p.bob)); got != c.wantInner {
				t.Errorf("inner:\n%q\nwant:\n%q", got, c.wantInner)
			}
			for _, s := range c.wantOuter {
				if !strings.Contains(header, s) {
					t.Errorf("outer lacks %q:\n%s", s, header)
				}
			}
			for _, s := range c.notOuter {
				if strings.Contains(header, s) {
					t.Errorf("outer has %q:\n%s", s, header)
				}
			}
		})
	}
}

func TestConcurrentEncryptions(t *testing.T) {
	p := newPKI(t)
	m := makeMessage(t, 20000)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			if err := smime.Encrypt(&out, bytes.NewReader(m.raw), p.bob.Cert, smime.Options{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestSignedThenEnveloped(t *testing.T) {
	p := newPKI(t)
	m := makeMessage(t, 1000)
	out := encrypt(t, m.raw, p.bob.Cert, smime.Options{SignerCert: p.org.Cert, SignerKey: p.org.Key})
	_, der := splitOuter(t, out)
	entity := decryptGo(t, der, p.bob)
	h, b, ok := bytes.Cut(entity, []byte("\r\n\r\n"))
	if !ok || !strings.Contains(string(h), "application/pkcs7-mime; smime-type=signed-data") {
		t.Fatalf("enveloped entity is not signed-data:\n%.300s", entity)
	}
	sd, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(b), "\r\n", ""))
	if err != nil {
		t.Fatal(err)
	}
	p7, err := pkcs7.Parse(sd)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	if err := p7.VerifyWithChain(roots); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if !bytes.Equal(p7.Content, m.wantInner(false)) {
		t.Error("signed content is not the inner entity")
	}

	// A key that does not match the certificate is refused.
	err = smime.Encrypt(new(bytes.Buffer), bytes.NewReader(m.raw), p.bob.Cert, smime.Options{SignerCert: p.org.Cert, SignerKey: p.bob.Key})
	if err == nil {
		t.Error("mismatched signer key accepted")
	}
	err = smime.Encrypt(new(bytes.Buffer), bytes.NewReader(m.raw), p.bob.Cert, smime.Options{SignerCert: p.org.Cert})
	if err == nil {
		t.Error("signer certificate without key accepted")
	}
}

func TestLoadSigner(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		smimetest.WriteFile(t, path, data)
		return path
	}
	mid := p.ca.Intermediate(t, "Signing Sub CA")
	signer := mid.Issue(t, smimetest.LeafOptions{Emails: []string{"secure@example.org"}})
	certFile := write("org.pem", smimetest.CertPEM(signer.Cert, mid.Cert))
	keyFile := write("org-key.pem", smimetest.KeyPEM(t, signer.Key))
	cert, chain, key, err := smime.LoadSigner(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.Equal(signer.Cert) || len(chain) != 1 || !chain[0].Equal(mid.Cert) || key == nil {
		t.Fatalf("cert %v chain %d key %T", cert.Subject, len(chain), key)
	}
	if _, _, _, err := smime.LoadSigner(certFile, write("other-key.pem", smimetest.KeyPEM(t, p.bob.Key))); err == nil {
		t.Error("mismatched key accepted")
	}
	encOnly := p.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"x@example.org"}, KeyUsage: x509.KeyUsageKeyEncipherment, Key: signer.Key})
	if _, _, _, err := smime.LoadSigner(write("enc.pem", smimetest.CertPEM(encOnly.Cert)), keyFile); err == nil || !strings.Contains(err.Error(), "digitalSignature") {
		t.Errorf("encipherment-only certificate: %v", err)
	}
}

// --- OpenSSL interoperability -------------------------------------------

func needOpenSSL(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is needed for the interoperability tests: %v", err)
	}
	return path
}

func runOpenSSL(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// TestOpenSSLDecrypts: `openssl cms -decrypt` recovers headers, body and a
// multi-megabyte attachment exactly, and `-cmsout -print` shows AES-256-CBC.
func TestOpenSSLDecrypts(t *testing.T) {
	bin := needOpenSSL(t)
	p := newPKI(t)
	dir := t.TempDir()
	certFile := filepath.Join(dir, "bob.pem")
	keyFile := filepath.Join(dir, "bob-key.pem")
	smimetest.WriteFile(t, certFile, smimetest.CertPEM(p.bob.Cert))
	smimetest.WriteFile(t, keyFile, smimetest.KeyPEM(t, p.bob.Key))

	m := makeMessage(t, 3<<20)
	in := filepath.Join(dir, "out.eml")
	smimetest.WriteFile(t, in, encrypt(t, m.raw, p.bob.Cert, smime.Options{}))
	dec := filepath.Join(dir, "dec.eml")
	runOpenSSL(t, bin, "cms", "-decrypt", "-in", in, "-recip", certFile, "-inkey", keyFile, "-out", dec)
	got, err := os.ReadFile(dec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m.wantInner(false)) {
		t.Fatalf("openssl's plaintext (%d bytes) differs from the inner entity (%d bytes)", len(got), len(m.wantInner(false)))
	}

	// The cipher as OpenSSL reads it, on a small message (the print of a
	// large one holds megabytes of hex dump).
	small := filepath.Join(dir, "small.eml")
	smimetest.WriteFile(t, small, encrypt(t, makeMessage(t, 10).raw, p.bob.Cert, smime.Options{}))
	printed := strings.ToLower(string(runOpenSSL(t, bin, "cms", "-cmsout", "-print", "-in", small)))
	if !regexp.MustCompile(`contentencryptionalgorithm:\s*\n?\s*algorithm:\s*aes-256-cbc`).MatchString(printed) {
		t.Errorf("no aes-256-cbc content encryption in:\n%s", printed)
	}
	if regexp.MustCompile(`algorithm:\s*des|des-ede|des-cbc`).MatchString(printed) {
		t.Errorf("DES in:\n%s", printed)
	}
	if !strings.Contains(printed, "rsaencryption") {
		t.Errorf("no RSA key transport in:\n%s", printed)
	}
}

// TestOpenSSLVerifiesSignedThenEnveloped: decrypt, then verify the
// organisation's signature against the test root.
func TestOpenSSLVerifiesSignedThenEnveloped(t *testing.T) {
	bin := needOpenSSL(t)
	p := newPKI(t)
	dir := t.TempDir()
	files := map[string][]byte{
		"bob.pem":     smimetest.CertPEM(p.bob.Cert),
		"bob-key.pem": smimetest.KeyPEM(t, p.bob.Key),
		"ca.pem":      smimetest.CertPEM(p.ca.Cert),
	}
	for name, data := range files {
		smimetest.WriteFile(t, filepath.Join(dir, name), data)
	}
	m := makeMessage(t, 200<<10)
	in := filepath.Join(dir, "out.eml")
	smimetest.WriteFile(t, in, encrypt(t, m.raw, p.bob.Cert, smime.Options{SignerCert: p.org.Cert, SignerKey: p.org.Key}))
	dec := filepath.Join(dir, "signed.eml")
	runOpenSSL(t, bin, "cms", "-decrypt", "-in", in, "-recip", filepath.Join(dir, "bob.pem"), "-inkey", filepath.Join(dir, "bob-key.pem"), "-out", dec)
	content := filepath.Join(dir, "content.eml")
	runOpenSSL(t, bin, "cms", "-verify", "-in", dec, "-CAfile", filepath.Join(dir, "ca.pem"), "-out", content)
	got, err := os.ReadFile(content)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m.wantInner(false)) {
		t.Fatalf("verified content (%d bytes) differs from the inner entity (%d bytes)", len(got), len(m.wantInner(false)))
	}
}

// TestReaders: a queue file, and a reader of unknown length, give the same
// inner entity as a bytes.Reader.
func TestReaders(t *testing.T) {
	p := newPKI(t)
	m := makeMessage(t, 300<<10)
	path := filepath.Join(t.TempDir(), "msg.eml")
	smimetest.WriteFile(t, path, m.raw)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	readers := map[string]func() io.Reader{
		"file":    func() io.Reader { f.Seek(0, io.SeekStart); return f },
		"unsized": func() io.Reader { return io.MultiReader(bytes.NewReader(m.raw[:100]), bytes.NewReader(m.raw[100:])) },
	}
	for name, r := range readers {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			if err := smime.Encrypt(&out, r(), p.bob.Cert, smime.Options{}); err != nil {
				t.Fatal(err)
			}
			_, der := splitOuter(t, out.Bytes())
			if !bytes.Equal(decryptGo(t, der, p.bob), m.wantInner(false)) {
				t.Error("inner entity differs")
			}
		})
	}
}
