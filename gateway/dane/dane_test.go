package dane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
)

type kp struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func mk(t *testing.T, name string, parent *kp, ca bool, notAfter time.Time) *kp {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, IsCA: ca, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign
		tmpl.DNSNames = nil
	}
	pc, pk := tmpl, key
	if parent != nil {
		pc, pk = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, pc, &key.PublicKey, pk)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &kp{c, key}
}

func TestVerify(t *testing.T) {
	now := time.Now()
	ca := mk(t, "TA", nil, true, now.Add(time.Hour))
	leaf := mk(t, "mx.example", ca, false, now.Add(time.Hour))
	expired := mk(t, "other.name", nil, false, now.Add(-time.Hour))
	s256 := sha256.Sum256(leaf.cert.RawSubjectPublicKeyInfo)
	s512 := sha512.Sum512(leaf.cert.Raw)
	ta256 := sha256.Sum256(ca.cert.RawSubjectPublicKeyInfo)
	exp256 := sha256.Sum256(expired.cert.Raw)
	chain := []*x509.Certificate{leaf.cert, ca.cert}
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		recs  []dnsr.TLSA
		host  string
		ok    bool
	}{
		{"EE spki sha256", chain, []dnsr.TLSA{rec(3, 1, 1, s256[:])}, "mx.example", true},
		{"EE cert sha512", chain, []dnsr.TLSA{rec(3, 0, 2, s512[:])}, "mx.example", true},
		{"EE cert full", chain, []dnsr.TLSA{rec(3, 0, 0, leaf.cert.Raw)}, "mx.example", true},
		{"EE ignores name and expiry", []*x509.Certificate{expired.cert}, []dnsr.TLSA{rec(3, 0, 1, exp256[:])}, "mx.example", true},
		{"EE mismatch", chain, []dnsr.TLSA{rec(3, 1, 1, ta256[:])}, "mx.example", false},
		{"TA spki", chain, []dnsr.TLSA{rec(2, 1, 1, ta256[:])}, "mx.example", true},
		{"TA wrong name", chain, []dnsr.TLSA{rec(2, 1, 1, ta256[:])}, "evil.example", false},
		{"TA not in chain", []*x509.Certificate{leaf.cert}, []dnsr.TLSA{rec(2, 1, 1, ta256[:])}, "mx.example", false},
		{"PKIX-EE unusable", chain, []dnsr.TLSA{rec(1, 1, 1, s256[:])}, "mx.example", false},
		{"PKIX-TA unusable", chain, []dnsr.TLSA{rec(0, 1, 1, ta256[:])}, "mx.example", false},
		{"bad length", chain, []dnsr.TLSA{rec(3, 1, 1, s256[:31])}, "mx.example", false},
		{"one of several", chain, []dnsr.TLSA{rec(3, 1, 1, ta256[:]), rec(9, 9, 9, nil), rec(3, 1, 1, s256[:])}, "mx.example", true},
		{"no chain", nil, []dnsr.TLSA{rec(3, 1, 1, s256[:])}, "mx.example", false},
	} {
		err := Verify(tc.chain, tc.recs, tc.host, now)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && tc.chain != nil && !errors.Is(err, ErrNoMatch) {
			t.Errorf("%s: %v does not wrap ErrNoMatch", tc.name, err)
		}
	}
	if n := len(Usable([]dnsr.TLSA{rec(0, 0, 0, []byte{1}), rec(3, 2, 1, s256[:]), rec(3, 1, 3, s256[:]), rec(2, 0, 0, []byte{1})})); n != 1 {
		t.Errorf("Usable kept %d, want 1", n)
	}
}

func rec(u, s, m uint8, data []byte) dnsr.TLSA {
	return dnsr.TLSA{Usage: u, Selector: s, MatchingType: m, Data: data}
}
