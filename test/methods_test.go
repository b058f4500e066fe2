package test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern-mail/postern/certs/pgpkeys/pgptest"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/test/support/testpki"
)

// gpgHome makes a GnuPG home with a key pair for uid (gpg's default
// algorithms: ed25519 + cv25519 encryption subkey) and exports the public
// key into exportDir/key.asc.
func gpgHome(t *testing.T, uid, exportDir string) *pgptest.GPG {
	t.Helper()
	g := pgptest.NewRequired(t)
	fpr := g.GenKey(uid, "future-default", "default", "never")
	pub := g.Export(fpr, true)
	if err := os.MkdirAll(exportDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(exportDir, "key.asc"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

// gpgDecrypt decrypts the PGP/MIME message's encrypted part.
func gpgDecrypt(t *testing.T, g *pgptest.GPG, msg []byte) []byte {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("parse PGP/MIME message: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("not PGP/MIME (RFC 3156): %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var armored []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		if strings.HasPrefix(p.Header.Get("Content-Type"), "application/octet-stream") {
			armored = b
		}
	}
	return g.Run(armored, "--decrypt")
}

func TestPGPRecipientGetsEncryptedCopy(t *testing.T) {
	w := newWorld(t)
	w.dns.SetMX("pgp.example", dnsrMX("mx.pgp.example"))
	w.dns.SetA("mx.pgp.example", ipPlain)
	mx := w.receiver(ipPlain, "mx.pgp.example", false) // no TLS: the copy is encrypted anyway
	g := gpgHome(t, "Alice <alice@pgp.example>", filepath.Join(w.dir, "pgp"))
	w.keys = "  pgp_dir: pgp\n"
	w.start()
	const body = "Diagnosis: confidential.\r\n"
	data := "From: doctor@example.org\r\nTo: alice@pgp.example\r\nSubject: lab results\r\nMessage-ID: <pgp-1@example.org>\r\n\r\n" + body
	if out, err := w.swaks("--from", "doctor@example.org", "--to", "alice@pgp.example", "--data", data); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the encrypted copy", func() bool { return len(mx.messages()) == 1 })
	got := mx.messages()[0].Data
	if bytes.Contains(got, []byte("confidential")) || bytes.Contains(got, []byte("lab results")) {
		t.Fatalf("plaintext body or subject left postern:\n%s", got)
	}
	plain := gpgDecrypt(t, g, got)
	for _, want := range []string{"Subject: lab results", "Diagnosis: confidential.", "protected-headers=\"v1\""} {
		if !bytes.Contains(plain, []byte(want)) {
			t.Errorf("decrypted copy lacks %q:\n%s", want, plain)
		}
	}
	dec := w.findAudit("decision", "alice@pgp.example", "")
	if dec == nil || dec["method"] != "pgp" || !strings.Contains(dec["reason"].(string), "from local") {
		t.Fatalf("decision record: %v", dec)
	}
	waitFor(t, 10*time.Second, "the delivered record", func() bool { return w.findAudit("delivery", "alice@pgp.example", "delivered") != nil })
	del := w.findAudit("delivery", "alice@pgp.example", "delivered")
	if del == nil || del["method"] != "pgp" || !strings.Contains(del["reason"].(string), "encrypted to key") {
		t.Fatalf("delivery record: %v", del)
	}
}

// TestFallThroughTLSToPGP: plan [tls, pgp]; the recipient's MX has no
// STARTTLS, so the recipient moves to pgp at once (SPEC §1).
func TestFallThroughTLSToPGP(t *testing.T) {
	w := newWorld(t)
	mx := w.receiver(ipPlain, "mx.plain.example", false)
	g := gpgHome(t, "Carol <carol@plain.example>", filepath.Join(w.dir, "pgp"))
	w.keys = "  pgp_dir: pgp\n"
	w.policy = "methods: [tls, pgp]\ntls: {level: verify}\n"
	w.start()
	if out, err := w.swaks("--from", "alice@example.org", "--to", "carol@plain.example", "--header", "Subject: fall through", "--body", "secret words"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the encrypted copy after fall-through", func() bool { return len(mx.messages()) == 1 })
	got := mx.messages()[0].Data
	if bytes.Contains(got, []byte("secret words")) {
		t.Fatal("plaintext left postern")
	}
	if plain := gpgDecrypt(t, g, got); !bytes.Contains(plain, []byte("secret words")) {
		t.Fatalf("decrypted copy:\n%s", plain)
	}
	fb := w.findAudit("fallback", "carol@plain.example", "")
	if fb == nil || fb["method"] != "pgp" || !strings.Contains(fb["reason"].(string), "STARTTLS") {
		t.Fatalf("fallback record: %v", fb)
	}
	metrics := httpGet(t, "http://"+w.admin+"/metrics")
	if !strings.Contains(metrics, `postern_fallbacks_total{from="tls",to="pgp"} 1`) {
		t.Errorf("fallback metric not counted:\n%s", grepLines(metrics, "postern_fallbacks_total"))
	}
}

func TestSMIMERecipientGetsEncryptedCopy(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required")
	}
	w := newWorld(t)
	w.dns.SetMX("smime.example", dnsrMX("mx.smime.example"))
	w.dns.SetA("mx.smime.example", ipTLS)
	mx := w.receiver(ipTLS, "mx.smime.example", true)
	// An RSA certificate for bob@smime.example from the test CA.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(4242), Subject: pkix.Name{CommonName: "Bob"}, EmailAddresses: []string{"bob@smime.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage:    x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, w.ca.Cert, &key.PublicKey, w.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	os.MkdirAll(filepath.Join(w.dir, "smime"), 0o755)
	os.WriteFile(filepath.Join(w.dir, "smime", "bob.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(w.dir, "bob-cert.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(w.dir, "bob-key.pem"), keyPEM, 0o600)
	w.keys = "  smime_dir: smime\n  smime_roots: ca.pem\n"
	w.start()
	body := "Attached results.\r\n" + strings.Repeat(strings.Repeat("0123456789abcdef", 4)+"0123456789AB\r\n", 40000)
	data := "From: doctor@example.org\r\nTo: bob@smime.example\r\nSubject: scan\r\nMessage-ID: <smime-1@example.org>\r\n\r\n" + body
	dataFile := filepath.Join(w.dir, "data.eml")
	os.WriteFile(dataFile, []byte(data), 0o600)
	if out, err := w.swaks("--from", "doctor@example.org", "--to", "bob@smime.example", "--data", dataFile); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out[:min(len(out), 2000)])
	}
	waitFor(t, 30*time.Second, "the S/MIME copy", func() bool { return len(mx.messages()) == 1 })
	got := mx.messages()[0].Data
	if !bytes.Contains(got, []byte("application/pkcs7-mime")) || bytes.Contains(got, []byte("Attached results")) {
		t.Fatalf("not an S/MIME enveloped copy:\n%s", got[:min(len(got), 2000)])
	}
	in := filepath.Join(w.dir, "got.eml")
	os.WriteFile(in, got, 0o600)
	out, err := exec.Command("openssl", "cms", "-decrypt", "-in", in, "-recip", filepath.Join(w.dir, "bob-cert.pem"),
		"-inkey", filepath.Join(w.dir, "bob-key.pem")).Output()
	if err != nil {
		t.Fatalf("openssl cms -decrypt: %v", err)
	}
	if !bytes.Contains(out, []byte("Subject: scan")) || !bytes.Contains(out, []byte(body)) {
		t.Fatalf("decrypted copy differs (%d bytes)", len(out))
	}
	info, err := exec.Command("openssl", "cms", "-cmsout", "-print", "-in", in).Output()
	if err != nil {
		t.Fatalf("openssl cms -cmsout -print: %v", err)
	}
	if !bytes.Contains(info, []byte("aes-256-cbc")) || bytes.Contains(bytes.ToLower(info), []byte("des-")) {
		t.Fatalf("content cipher is not AES-256-CBC:\n%s", info)
	}
	waitFor(t, 10*time.Second, "the delivered record", func() bool { return w.findAudit("delivery", "bob@smime.example", "delivered") != nil })
	if del := w.findAudit("delivery", "bob@smime.example", "delivered"); del == nil || del["method"] != "smime" {
		t.Fatalf("delivery record: %v", del)
	}
	out2, err := w.postern("keys", "lookup", "-config", filepath.Join(w.dir, "postern.yaml"), "bob@smime.example")
	if err != nil || !strings.Contains(out2, "usable") || !strings.Contains(out2, "serial") {
		t.Fatalf("keys lookup: %v\n%s", err, out2)
	}
}

// TestDANEDelivery: a domain requiring DANE (policy domains:) whose MX
// publishes a DNSSEC-authentic TLSA 3 1 1 record gets the message over TLS
// validated by DANE although the certificate's name does not match; a
// second domain whose TLSA does not match gets nothing.
func TestDANEDelivery(t *testing.T) {
	w := newWorld(t)
	cert := w.ca.Server(t, "not-the-mx-name.example")
	leaf := testpki.Leaf(t, cert)
	spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	mx := startReceiver(t, fmt.Sprintf("%s:%d", ipTLS, w.mxPort), &cert)
	for _, dom := range []string{"dane.example", "badtlsa.example"} {
		w.dns.SetMX(dom, dnsrMX("mx."+dom))
		w.dns.SetA("mx."+dom, ipTLS)
		w.dns.SetAuthentic(dom, true)
		w.dns.SetAuthentic("mx."+dom, true)
		tlsa := fmt.Sprintf("_%d._tcp.mx.%s", w.mxPort, dom)
		data := spki[:]
		if dom == "badtlsa.example" {
			data = make([]byte, 32)
		}
		w.dns.SetTLSA(tlsa, dnsr.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: data})
		w.dns.SetAuthentic(tlsa, true)
	}
	w.policy = "methods: [tls]\ntls: {level: verify}\ndomains:\n  dane.example: {tls: dane}\n  badtlsa.example: {tls: dane}\n"
	w.start()
	for _, rcpt := range []string{"eve@dane.example", "mallory@badtlsa.example"} {
		if out, err := w.swaks("--from", "alice@example.org", "--to", rcpt); err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
	}
	waitFor(t, 20*time.Second, "the DANE delivery", func() bool { return w.findAudit("delivery", "eve@dane.example", "delivered") != nil })
	rec := w.findAudit("delivery", "eve@dane.example", "delivered")
	if tlsInfo, _ := rec["tls"].(map[string]any); tlsInfo["policy"] != "dane" || tlsInfo["verified"] != true {
		t.Fatalf("delivery record: %v", rec)
	}
	waitFor(t, 20*time.Second, "the refusal for a TLSA mismatch", func() bool {
		return w.findAudit("delivery", "mallory@badtlsa.example", "deferred") != nil
	})
	for _, m := range mx.messages() {
		if m.Rcpts[0] == "mallory@badtlsa.example" {
			t.Fatal("a message went to an MX whose certificate does not match its TLSA record")
		}
	}
}
