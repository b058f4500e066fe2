package smimecerts

import (
	"crypto/dsa" // deprecated, imported only to name the key type in a refusal
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// MinRSABits is the smallest RSA modulus postern encrypts to.
const MinRSABits = 2048

// oidKeyUsage is id-ce-keyUsage, RFC 5280 §4.2.1.3.
var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

// trust is what a certificate is verified against: the trust anchors from
// keys.smime_roots and intermediates gathered from the local directory, the
// roots file and the LDAP entry a certificate came with.
type trust struct {
	roots         *x509.CertPool // nil: no trust anchors configured
	intermediates *x509.CertPool
}

// Fingerprint is the lower-case hex SHA-256 of a certificate's DER.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// KeyType names a certificate's public key algorithm as shown in refusals.
func KeyType(c *x509.Certificate) string {
	switch c.PublicKey.(type) {
	case *rsa.PublicKey:
		return "RSA"
	case *ecdsa.PublicKey:
		return "ECDSA"
	case ed25519.PublicKey:
		return "Ed25519"
	case *ecdh.PublicKey:
		return "ECDH"
	case *dsa.PublicKey:
		return "DSA"
	}
	if c.PublicKeyAlgorithm != x509.UnknownPublicKeyAlgorithm {
		return c.PublicKeyAlgorithm.String()
	}
	return "unknown"
}

// CheckKey reports why the key of c cannot be used for RSA key transport
// (RFC 8551 §2.3, RFC 5652 §6.2.1), or "" when it can. It is the guard in
// front of go.mozilla.org/pkcs7, which panics on any non-RSA key.
func CheckKey(c *x509.Certificate) string {
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok || pub == nil || pub.N == nil {
		return "unsupported key type " + KeyType(c)
	}
	if bits := pub.N.BitLen(); bits < MinRSABits {
		return fmt.Sprintf("RSA key %d bits < %d", bits, MinRSABits)
	}
	return ""
}

// hasEmail reports whether c names addr in a subjectAltName rfc822Name
// (RFC 8550 §3; RFC 5280 §4.2.1.6). Addresses compare case-insensitively:
// mail systems treat local parts case-insensitively in practice, and the
// domain is case-insensitive by definition.
func hasEmail(c *x509.Certificate, addr string) bool {
	for _, e := range c.EmailAddresses {
		if strings.EqualFold(strings.TrimSpace(e), addr) {
			return true
		}
	}
	return false
}

func hasKeyUsageExtension(c *x509.Certificate) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(oidKeyUsage) {
			return true
		}
	}
	return false
}

// refusal returns why c cannot be used to encrypt to addr at now, or "" when
// it can. Checks run in a fixed order and the first failure is the reason.
func refusal(c *x509.Certificate, addr string, now time.Time, tr trust) string {
	if r := CheckKey(c); r != "" {
		return r
	}
	if now.Before(c.NotBefore) {
		return "not yet valid (from " + c.NotBefore.UTC().Format(time.DateOnly) + ")"
	}
	if now.After(c.NotAfter) {
		return "expired " + c.NotAfter.UTC().Format(time.DateOnly)
	}
	if !hasEmail(c, addr) {
		return "no rfc822Name for " + addr
	}
	// RFC 8550 §4.4.2: keyEncipherment is needed for RSA key transport when
	// the extension is present; absence permits any use.
	if hasKeyUsageExtension(c) && c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return "key usage lacks keyEncipherment"
	}
	// RFC 8550 §4.4.4: when extendedKeyUsage is present it must allow
	// id-kp-emailProtection (or anyExtendedKeyUsage).
	if len(c.ExtKeyUsage) > 0 || len(c.UnknownExtKeyUsage) > 0 {
		ok := false
		for _, u := range c.ExtKeyUsage {
			if u == x509.ExtKeyUsageEmailProtection || u == x509.ExtKeyUsageAny {
				ok = true
			}
		}
		if !ok {
			return "extended key usage lacks emailProtection"
		}
	}
	if tr.roots == nil {
		return "untrusted: no trust anchors (keys.smime_roots not set)"
	}
	// RFC 5280 §6 path validation against keys.smime_roots. Never call
	// Verify with nil Roots: that would silently trust the system store.
	_, err := c.Verify(x509.VerifyOptions{
		Roots:         tr.roots,
		Intermediates: tr.intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	})
	if err != nil {
		return "untrusted: " + err.Error()
	}
	return ""
}

// evaluate builds the Cert record for c found for addr.
func evaluate(c *x509.Certificate, addr, source, origin string, now time.Time, tr trust) Cert {
	out := Cert{
		Fingerprint: Fingerprint(c),
		Serial:      serialHex(c),
		Subject:     c.Subject.String(),
		Issuer:      c.Issuer.String(),
		NotBefore:   c.NotBefore,
		NotAfter:    c.NotAfter,
		Source:      source,
		Origin:      origin,
		Cert:        c,
	}
	if r := refusal(c, addr, now, tr); r != "" {
		out.Reason = r
		return out
	}
	out.Usable = true
	out.Reason = fmt.Sprintf("certificate SHA256:%s… serial %s from %s", out.Fingerprint[:16], out.Serial, source)
	return out
}

func serialHex(c *x509.Certificate) string {
	if c.SerialNumber == nil {
		return ""
	}
	if c.SerialNumber.Sign() < 0 {
		return "-" + strings.ToUpper(new(big.Int).Neg(c.SerialNumber).Text(16))
	}
	return strings.ToUpper(c.SerialNumber.Text(16))
}
