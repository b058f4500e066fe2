package config

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fixture creates a folder holding every kind of file a config references,
// good and bad, and returns its path.
//
//	certs/a.pem, certs/a-key.pem  a certificate and its key (ECDSA)
//	certs/b-key.pem               another key (does not match a.pem)
//	certs/ca.pem                  a CA certificate
//	certs/dkim-rsa.pem            PKCS #1 RSA key
//	certs/dkim-ed.pem             PKCS #8 Ed25519 key
//	certs/dkim-ec.pem             PKCS #8 ECDSA key (not usable for DKIM)
//	certs/pgp/, certs/smime/      key directories
//	certs/master.key              32 random bytes, base64
//	certs/short.key               16 bytes, base64
//	junk.txt                      not PEM
//	policy.yaml, users            plain files
//	afile                         a file where a directory is expected
//	adir/                         a directory where a file is expected
func fixture(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, data []byte) {
		t.Helper()
		p := filepath.Join(dir, name)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, 0o600))
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		must(err)
		return pemOf("PRIVATE KEY", der)
	}

	keyA, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	keyB, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gw.example.org"},
		DNSNames:              []string{"gw.example.org"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &keyA.PublicKey, keyA)
	must(err)
	write("certs/a.pem", pemOf("CERTIFICATE", der))
	write("certs/ca.pem", pemOf("CERTIFICATE", der))
	write("certs/a-key.pem", pkcs8(keyA))
	write("certs/b-key.pem", pkcs8(keyB))

	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	must(err)
	write("certs/dkim-rsa.pem", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)))
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	must(err)
	write("certs/dkim-ed.pem", pkcs8(edKey))
	write("certs/dkim-ec.pem", pkcs8(keyB))

	master := make([]byte, 32)
	_, err = rand.Read(master)
	must(err)
	write("certs/master.key", []byte(base64.StdEncoding.EncodeToString(master)+"\n"))
	write("certs/short.key", []byte(base64.StdEncoding.EncodeToString(master[:16])))
	must(os.MkdirAll(filepath.Join(dir, "certs/pgp"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "certs/smime"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "adir"), 0o755))
	write("junk.txt", []byte("not pem\n"))
	write("policy.yaml", []byte("methods: [tls, portal]\n"))
	write("users", []byte("alice:$2a$10$abcdefghijklmnopqrstuv\n"))
	write("afile", []byte("x"))
	return dir
}
