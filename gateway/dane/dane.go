// Package dane authenticates a TLS server with TLSA records: DANE for SMTP
// (RFC 7672) on top of the DANE protocol (RFC 6698, updated by RFC 7671).
//
// Only the usages RFC 7672 §3.1 allows for SMTP are usable: DANE-TA(2) and
// DANE-EE(3). PKIX-TA(0) and PKIX-EE(1) records are "unusable" for SMTP
// (RFC 7672 §3.1.3) and are ignored, as are unknown selectors and matching
// types (RFC 6698 §4.1).
package dane

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
)

// Certificate usages, selectors and matching types (RFC 6698 §2.1.1-§2.1.3,
// RFC 7218 acronyms).
const (
	UsagePKIXTA = 0
	UsagePKIXEE = 1
	UsageDANETA = 2
	UsageDANEEE = 3

	SelectorCert = 0 // full certificate (DER)
	SelectorSPKI = 1 // SubjectPublicKeyInfo (DER)

	MatchFull   = 0
	MatchSHA256 = 1
	MatchSHA512 = 2
)

// ErrNoMatch is wrapped by Verify when no usable record matched.
var ErrNoMatch = errors.New("no TLSA record matches the server certificate")

// Usable returns the records usable for SMTP (RFC 7672 §3.1): usage 2 or 3,
// a known selector and a known matching type with data of the right size.
func Usable(recs []dnsr.TLSA) []dnsr.TLSA {
	var out []dnsr.TLSA
	for _, r := range recs {
		if r.Usage != UsageDANETA && r.Usage != UsageDANEEE {
			continue
		}
		if r.Selector != SelectorCert && r.Selector != SelectorSPKI {
			continue
		}
		switch r.MatchingType {
		case MatchFull:
			if len(r.Data) == 0 {
				continue
			}
		case MatchSHA256:
			if len(r.Data) != sha256.Size {
				continue
			}
		case MatchSHA512:
			if len(r.Data) != sha512.Size {
				continue
			}
		default:
			continue
		}
		out = append(out, r)
	}
	return out
}

// Matches reports whether cert matches the selector and matching type of r
// (RFC 6698 §2.1.2, §2.1.3); the usage is not considered.
func Matches(r dnsr.TLSA, cert *x509.Certificate) bool {
	var data []byte
	switch r.Selector {
	case SelectorCert:
		data = cert.Raw
	case SelectorSPKI:
		data = cert.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch r.MatchingType {
	case MatchFull:
		return bytes.Equal(data, r.Data)
	case MatchSHA256:
		h := sha256.Sum256(data)
		return bytes.Equal(h[:], r.Data)
	case MatchSHA512:
		h := sha512.Sum512(data)
		return bytes.Equal(h[:], r.Data)
	}
	return false
}

// Verify authenticates the chain a server presented (leaf first) against
// recs, for the TLSA base domain host (the MX host name, RFC 7672 §3.2.2).
// It returns nil when one usable record authenticates the server:
//
//   - DANE-EE(3): the leaf matches; neither its names nor its validity
//     period are checked (RFC 7672 §3.1.1, RFC 7671 §5.1).
//   - DANE-TA(2): a certificate of the chain matches and becomes the trust
//     anchor; the leaf must chain to it, be within its validity period and
//     carry host among its DNS names (RFC 7672 §3.1.2, §3.2.2; RFC 7671
//     §5.2). The anchor may also be the leaf itself when self-issued.
//
// An error wraps ErrNoMatch when no record matched.
func Verify(chain []*x509.Certificate, recs []dnsr.TLSA, host string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("dane: server sent no certificate")
	}
	usable := Usable(recs)
	if len(usable) == 0 {
		return fmt.Errorf("dane: no usable TLSA records: %w", ErrNoMatch)
	}
	leaf := chain[0]
	var taErr error
	for _, r := range usable {
		switch r.Usage {
		case UsageDANEEE:
			if Matches(r, leaf) {
				return nil
			}
		case UsageDANETA:
			for i, c := range chain {
				if !Matches(r, c) {
					continue
				}
				if err := verifyTA(chain, i, host, now); err != nil {
					taErr = err
					continue
				}
				return nil
			}
		}
	}
	if taErr != nil {
		return fmt.Errorf("dane: trust anchor matched but the chain does not validate: %v: %w", taErr, ErrNoMatch)
	}
	return fmt.Errorf("dane: %w", ErrNoMatch)
}

// verifyTA checks the chain with chain[anchor] as the only trust anchor.
func verifyTA(chain []*x509.Certificate, anchor int, host string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(chain[anchor])
	inter := x509.NewCertPool()
	for i, c := range chain[1:] {
		if i+1 != anchor {
			inter.AddCert(c)
		}
	}
	leaf := chain[0]
	if anchor == 0 {
		// A self-issued leaf that is itself the anchor: only the name
		// and the validity period remain to be checked.
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			return fmt.Errorf("certificate outside its validity period")
		}
		return leaf.VerifyHostname(host)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}
