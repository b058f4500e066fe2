package smimecerts_test

import (
	"crypto/x509"
	"testing"

	"go.mozilla.org/pkcs7"

	"github.com/postern-mail/postern/certs/smimecerts"
	"github.com/postern-mail/postern/certs/smimecerts/smimetest"
)

// FuzzParseCertificates feeds hostile DER, PEM and PKCS #7 to the parser
// that reads keys.smime_dir files and LDAP attribute values. It must never
// panic, and whatever it returns must be judged without panicking either —
// including certificates with non-RSA keys.
func FuzzParseCertificates(f *testing.F) {
	ca := smimetest.NewCA(f, "Fuzz Root")
	leaf := ca.Issue(f, smimetest.LeafOptions{Emails: []string{"fuzz@x.example"}})
	ec := ca.Issue(f, smimetest.LeafOptions{Emails: []string{"fuzz@x.example"}, KeyType: smimetest.ECDSA})
	p7, err := pkcs7.DegenerateCertificate(append(append([]byte(nil), leaf.Cert.Raw...), ca.Cert.Raw...))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(leaf.Cert.Raw)
	f.Add(ec.Cert.Raw)
	f.Add(smimetest.CertPEM(leaf.Cert, ca.Cert))
	f.Add(p7)
	f.Add([]byte("-----BEGIN PKCS7-----\nMIAGCSqGSIb3DQEHAqCAMIACAQExADALBgkqhkiG9w0BBwGggDAA\n-----END PKCS7-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"))
	f.Add([]byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80, 0x00, 0x00})
	f.Add([]byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff})
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := smimecerts.ParseCertificates(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificate")
		}
		for _, c := range certs {
			if c == nil {
				t.Fatal("nil certificate")
			}
			_ = smimecerts.CheckKey(c)
			_ = smimecerts.Fingerprint(c)
			_, _ = c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}})
		}
	})
}
