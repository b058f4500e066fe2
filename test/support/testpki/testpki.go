// Package testpki is a throw-away ECDSA P-256 certificate authority for
// tests: it issues TLS certificates for DNS names (RFC 5280 subjectAltName
// dNSName), self-signed certificates, and the pool, PEM and server
// tls.Config that loopback servers and their clients need. Everything is
// valid from an hour ago for a day. For tests only.
//
// It lives in the module's top-level internal directory so that test
// packages anywhere in the module (gateway/..., certs/..., test/...) can
// import it.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA whose subject common name is name.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("create test CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("parse test CA: %v", err)
	}
	return &CA{Cert: cert, Key: key}
}

// Pool returns a new CertPool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// PEM returns the CA certificate PEM-encoded (RFC 7468 section 5).
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Issue returns a certificate for names (the first is also the subject
// common name) with the given extended key usage, signed by the CA.
func (ca *CA) Issue(tb testing.TB, usage x509.ExtKeyUsage, names ...string) tls.Certificate {
	tb.Helper()
	return makeCert(tb, ca.Cert, ca.Key, usage, names)
}

// Server returns a server-authentication certificate for names signed by
// the CA.
func (ca *CA) Server(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	return makeCert(tb, ca.Cert, ca.Key, x509.ExtKeyUsageServerAuth, names)
}

// ServerTLS returns a server tls.Config presenting a certificate for names
// signed by the CA.
func (ca *CA) ServerTLS(tb testing.TB, names ...string) *tls.Config {
	tb.Helper()
	return &tls.Config{Certificates: []tls.Certificate{ca.Server(tb, names...)}}
}

// SelfSigned returns a self-signed server-authentication certificate for
// names; it is not a CA and chains to nothing.
func SelfSigned(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	return makeCert(tb, nil, nil, x509.ExtKeyUsageServerAuth, names)
}

// Leaf parses the first (leaf) certificate of c.
func Leaf(tb testing.TB, c tls.Certificate) *x509.Certificate {
	tb.Helper()
	if len(c.Certificate) == 0 {
		tb.Fatal("testpki: tls.Certificate holds no certificate")
	}
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		tb.Fatalf("parse leaf certificate: %v", err)
	}
	return x
}

// makeCert issues a leaf for names; a nil parent makes it self-signed.
func makeCert(tb testing.TB, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage, names []string) tls.Certificate {
	tb.Helper()
	if len(names) == 0 {
		tb.Fatal("testpki: a certificate needs at least one DNS name")
	}
	key := newKey(tb)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		tb.Fatalf("certificate serial: %v", err)
	}
	tmpl := &x509.Certificate{
		// RFC 5280 section 4.1.2.2: the serial number is a positive integer.
		SerialNumber: serial.Add(serial, big.NewInt(1)), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatalf("create certificate for %v: %v", names, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generate P-256 key: %v", err)
	}
	return key
}
