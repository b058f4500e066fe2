// Package smimetest makes throw-away S/MIME test certificates with
// crypto/x509: a test CA, RSA user certificates with an rfc822Name, and the
// deliberately broken ones (EC key, expired, wrong address, wrong key usage)
// the refusal tests need. For tests only.
package smimetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"testing"
	"time"
)

// Key types for LeafOptions.KeyType.
const (
	RSA2048 = "rsa2048"
	RSA1024 = "rsa1024"
	ECDSA   = "ecdsa"
	Ed25519 = "ed25519"
)

// CA is a certificate authority that issues test certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed RSA-2048 root valid from a day ago for ten years.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := NewKey(t, RSA2048)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"postern test"}},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("create CA: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse CA: %v", err)
	}
	return &CA{Cert: c, Key: key}
}

// Intermediate issues a sub-CA.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	key := NewKey(t, RSA2048)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"postern test"}},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("create intermediate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse intermediate: %v", err)
	}
	return &CA{Cert: c, Key: key}
}

// LeafOptions describe a user certificate. Zero values give a valid RSA-2048
// S/MIME certificate: valid from an hour ago for a year, keyUsage
// digitalSignature+keyEncipherment, extKeyUsage emailProtection.
type LeafOptions struct {
	Emails        []string      // subjectAltName rfc822Names
	SubjectEmail  string        // PKCS #9 emailAddress in the subject DN
	KeyType       string        // RSA2048 (default), RSA1024, ECDSA, Ed25519
	Key           crypto.Signer // reuse this key instead of making one
	NotBefore     time.Time
	NotAfter      time.Time
	KeyUsage      x509.KeyUsage // 0 = the default above
	NoKeyUsage    bool          // leave the keyUsage extension out
	ExtKeyUsage   []x509.ExtKeyUsage
	NoExtKeyUsage bool // leave the extKeyUsage extension out
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Issue makes a user certificate.
func (ca *CA) Issue(t testing.TB, o LeafOptions) *Leaf {
	t.Helper()
	key := o.Key
	if key == nil {
		kt := o.KeyType
		if kt == "" {
			kt = RSA2048
		}
		key = NewKey(t, kt)
	}
	nb, na := o.NotBefore, o.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-time.Hour)
	}
	if na.IsZero() {
		na = nb.Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial(t),
		Subject:        pkix.Name{CommonName: "test user", Organization: []string{"postern test"}},
		NotBefore:      nb,
		NotAfter:       na,
		EmailAddresses: o.Emails,
	}
	if len(o.Emails) > 0 {
		tmpl.Subject.CommonName = o.Emails[0]
	}
	if o.SubjectEmail != "" {
		tmpl.Subject.ExtraNames = append(tmpl.Subject.ExtraNames, pkix.AttributeTypeAndValue{
			Type: []int{1, 2, 840, 113549, 1, 9, 1}, Value: o.SubjectEmail,
		})
	}
	if !o.NoKeyUsage {
		tmpl.KeyUsage = o.KeyUsage
		if tmpl.KeyUsage == 0 {
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		}
	}
	if !o.NoExtKeyUsage {
		tmpl.ExtKeyUsage = o.ExtKeyUsage
		if tmpl.ExtKeyUsage == nil {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("create leaf: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse leaf: %v", err)
	}
	if o.NoKeyUsage && c.KeyUsage != 0 {
		t.Fatalf("leaf has key usage %v, want none", c.KeyUsage)
	}
	return &Leaf{Cert: c, Key: key}
}

// NewKey makes a private key of the given type.
func NewKey(t testing.TB, keyType string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch keyType {
	case RSA2048:
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case RSA1024:
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case ECDSA:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key type %q", keyType)
	}
	if err != nil {
		t.Fatalf("generate %s key: %v", keyType, err)
	}
	return k
}

// CertPEM encodes certificates as PEM.
func CertPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM encodes a private key as PKCS #8 PEM.
func KeyPEM(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFile writes data to path, failing the test on error.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}
