package smimecerts

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"go.mozilla.org/pkcs7"
)

// MaxCertFileSize bounds one certificate file or one LDAP attribute value.
// Real S/MIME certificates (even with a chain) are a few kilobytes.
const MaxCertFileSize = 1 << 20

// ErrNoCertificate is returned by [ParseCertificates] when the input holds no
// certificate at all.
var ErrNoCertificate = errors.New("no certificate found")

// ParseCertificates parses untrusted input holding X.509 certificates in any
// of the forms S/MIME certificates are distributed in:
//
//   - PEM (RFC 7468 §5): any number of "CERTIFICATE" blocks; other block
//     types (keys, CRLs) are skipped;
//   - DER (RFC 5280 §4.1): one certificate;
//   - a degenerate PKCS #7 / CMS SignedData "certs-only" bundle, DER or PEM
//     "PKCS7" (RFC 5652 §5.1; RFC 8551 §3.9 application/pkcs7-mime
//     smime-type=certs-only; LDAP userSMIMECertificate, RFC 2798 §2.8).
//
// It returns the certificates it could parse. When some parts failed, err
// describes the first failure alongside the good certificates; when nothing
// parsed, err is non-nil and the slice empty. It never panics.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if len(data) > MaxCertFileSize {
		return nil, fmt.Errorf("input of %d bytes exceeds %d", len(data), MaxCertFileSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, ErrNoCertificate
	}
	// DER starts with a SEQUENCE tag (0x30, also the character '0'): try it
	// first, then PEM text, which may have anything before its first block.
	if data[0] == 0x30 {
		if certs, err := parseDER(data); err == nil {
			return certs, nil
		}
	}
	if bytes.Contains(data, []byte("-----BEGIN ")) {
		return parsePEM(data)
	}
	return parseDER(data)
}

func parsePEM(data []byte) ([]*x509.Certificate, error) {
	var (
		out      []*x509.Certificate
		firstErr error
		n        int
	)
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		n++
		var (
			certs []*x509.Certificate
			err   error
		)
		switch blk.Type {
		case "CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE":
			var c *x509.Certificate
			c, err = x509.ParseCertificate(blk.Bytes)
			if err == nil {
				certs = []*x509.Certificate{c}
			}
		case "PKCS7", "CMS":
			certs, err = parsePKCS7(blk.Bytes)
		default:
			continue // private keys, CRLs, parameters: not ours to read
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("PEM block %d (%s): %w", n, blk.Type, err)
			}
			continue
		}
		out = append(out, certs...)
	}
	if len(out) == 0 && firstErr == nil {
		firstErr = ErrNoCertificate
	}
	return out, firstErr
}

func parseDER(data []byte) ([]*x509.Certificate, error) {
	c, err := x509.ParseCertificate(data)
	if err == nil {
		return []*x509.Certificate{c}, nil
	}
	certs, perr := parsePKCS7(data)
	if perr == nil {
		return certs, nil
	}
	return nil, fmt.Errorf("not a DER certificate (%w) nor a PKCS #7 bundle (%v)", err, perr)
}

// parsePKCS7 reads the certificates of a (degenerate) SignedData, RFC 5652
// §5.1. Signatures, if any, are not checked: the certificates are validated
// one by one against keys.smime_roots afterwards.
func parsePKCS7(der []byte) ([]*x509.Certificate, error) {
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("pkcs7: %w", err)
	}
	if len(p7.Certificates) == 0 {
		return nil, ErrNoCertificate
	}
	return p7.Certificates, nil
}
