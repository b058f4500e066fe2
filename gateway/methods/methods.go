// Package methods connects the key and certificate stores (certs/) and
// the encryption formats (gateway/pgpmime, gateway/smime) to the policy
// engine and the courier: it answers "is this method available for this
// recipient, and why" (policy.Checker) and produces the encrypted copies
// (courier.Encoder).
package methods

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/postern-mail/postern/certs/pgpkeys"
	"github.com/postern-mail/postern/certs/smimecerts"
	"github.com/postern-mail/postern/gateway/config"
	"github.com/postern-mail/postern/gateway/courier"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/metrics"
	"github.com/postern-mail/postern/gateway/pgpmime"
	"github.com/postern-mail/postern/gateway/portal"
	"github.com/postern-mail/postern/gateway/smime"
	"github.com/postern-mail/postern/policy"
)

// Set is the methods configured for this gateway.
type Set struct {
	PGP   *pgpkeys.Store    // nil: the pgp method is not configured
	SMIME *smimecerts.Store // nil: the smime method is not configured
	// Portal is the secure portal (portal.base_url set); nil: the portal
	// method is not configured.
	Portal *portal.Portal

	pgpSigner   *openpgp.Entity
	smimeSigner struct {
		cert  *x509.Certificate
		chain []*x509.Certificate
		key   crypto.PrivateKey
	}
}

// New builds the stores the config asks for. The pgp method is configured
// when keys.pgp_dir, keys.wkd or keys.keyserver is set; smime when
// keys.smime_dir or keys.ldap.url is set. m may be nil (CLI use).
func New(cfg *config.Config, resolver dnsr.Resolver, roots *x509.CertPool, m *metrics.Metrics, log *slog.Logger) (*Set, error) {
	s := &Set{}
	onLookup := func(source, result string) {
		if m != nil {
			m.KeyLookups.WithLabelValues(source, result).Inc()
		}
	}
	k := cfg.Keys
	if k.PGPDir != "" || k.WKD || k.Keyserver != "" {
		st, err := pgpkeys.New(pgpkeys.Options{
			Dir: k.PGPDir, WKD: k.WKD, Keyserver: k.Keyserver,
			Dial: Dialer(resolver), RootCAs: roots, CacheTTL: k.CacheTTL,
			OnLookup: onLookup, Log: log,
		})
		if err != nil {
			return nil, fmt.Errorf("keys.pgp_dir: %w", err)
		}
		s.PGP = st
		for _, p := range st.Problems() {
			log.Warn("OpenPGP key file skipped", "problem", p)
		}
	}
	if k.Signing.PGPKey != "" {
		e, err := pgpkeys.ReadSigningKey(k.Signing.PGPKey, time.Now())
		if err != nil {
			return nil, fmt.Errorf("keys.signing.pgp_key: %w", err)
		}
		s.pgpSigner = e
	}
	if k.SMIMEDir != "" || k.LDAP.URL != "" {
		st, err := smimecerts.New(smimecerts.Options{
			Dir: k.SMIMEDir, RootsFile: k.SMIMERoots,
			LDAP:     smimecerts.LDAPOptions{URL: k.LDAP.URL, BaseDN: k.LDAP.BaseDN, Filter: k.LDAP.Filter},
			CacheTTL: k.CacheTTL, OnLookup: onLookup, Log: log,
		})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("keys.smime_dir: %w", err)
		}
		s.SMIME = st
		for _, p := range st.Problems() {
			log.Warn("S/MIME certificate file skipped", "problem", p)
		}
	}
	if k.Signing.SMIMECert != "" {
		cert, chain, key, err := smime.LoadSigner(k.Signing.SMIMECert, k.Signing.SMIMEKey)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("keys.signing.smime_cert: %w", err)
		}
		s.smimeSigner.cert, s.smimeSigner.chain, s.smimeSigner.key = cert, chain, key
	}
	return s, nil
}

// Dialer resolves host names through r (delivery.dns) so WKD and VKS
// look-ups follow the same DNS as delivery.
func Dialer(r dnsr.Resolver) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if net.ParseIP(host) != nil || r == nil {
			return d.DialContext(ctx, network, addr)
		}
		ips, _, err := r.LookupIP(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		var last error
		for _, ip := range ips {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return c, nil
			}
			last = err
		}
		if last == nil {
			last = fmt.Errorf("no address for %s", host)
		}
		return nil, last
	}
}

// Reload re-reads the local key and certificate directories.
func (s *Set) Reload() error {
	var errs []string
	if s.PGP != nil {
		if err := s.PGP.Reload(); err != nil {
			errs = append(errs, "keys.pgp_dir: "+err.Error())
		}
	}
	if s.SMIME != nil {
		if err := s.SMIME.Reload(); err != nil {
			errs = append(errs, "keys.smime_dir: "+err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// Close releases the stores.
func (s *Set) Close() {
	if s.PGP != nil {
		s.PGP.Close()
	}
	if s.SMIME != nil {
		s.SMIME.Close()
	}
}

// Available implements policy.Checker.
func (s *Set) Available(ctx context.Context, method, rcpt string) (bool, string) {
	switch method {
	case policy.TLS:
		return true, "decided at delivery"
	case policy.PGP:
		if s.PGP == nil {
			return false, "not configured"
		}
		best, all, err := s.PGP.Best(ctx, rcpt)
		if best != nil {
			return true, best.Reason
		}
		return false, refusal("key", pgpReasons(all), err)
	case policy.SMIME:
		if s.SMIME == nil {
			return false, "not configured"
		}
		best, all, err := s.SMIME.Best(ctx, rcpt)
		if best != nil {
			return true, best.Reason
		}
		return false, refusal("certificate", smimeReasons(all), err)
	case policy.Portal:
		if s.Portal == nil {
			return false, "not configured"
		}
		return true, "portal configured"
	}
	return false, "unknown method"
}

func pgpReasons(ks []pgpkeys.Key) []string {
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprintf("key %s from %s: %s", k.KeyID, k.Source, k.Reason))
	}
	return out
}

func smimeReasons(cs []smimecerts.Cert) []string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("certificate serial %s from %s: %s", c.Serial, c.Source, c.Reason))
	}
	return out
}

func refusal(what string, reasons []string, err error) string {
	if len(reasons) == 0 {
		if err != nil {
			return "no " + what + " found (look-up failed: " + err.Error() + ")"
		}
		return "no " + what + " found"
	}
	s := strings.Join(reasons, "; ")
	if err != nil {
		s += " (a look-up failed: " + err.Error() + ")"
	}
	return s
}

// Encoders returns the courier encoders for the configured methods.
func (s *Set) Encoders() map[string]courier.Encoder {
	m := map[string]courier.Encoder{}
	if s.PGP != nil {
		m[policy.PGP] = pgpEncoder{s}
	}
	if s.SMIME != nil {
		m[policy.SMIME] = smimeEncoder{s}
	}
	if s.Portal != nil {
		m[policy.Portal] = portalEncoder{s.Portal}
	}
	return m
}

type pgpEncoder struct{ s *Set }

// Encode implements courier.Encoder with PGP/MIME (RFC 3156).
func (e pgpEncoder) Encode(ctx context.Context, cp courier.Copy, msg io.Reader, w io.Writer) (string, error) {
	rcpt := cp.Rcpt
	best, all, err := e.s.PGP.Best(ctx, rcpt)
	if best == nil {
		if err != nil && len(all) == 0 {
			return "", fmt.Errorf("key look-up: %w", err) // temporary
		}
		return "", fmt.Errorf("%w: %s", courier.ErrUnavailable, refusal("key", pgpReasons(all), err))
	}
	if err := pgpmime.Encrypt(w, msg, best.Entity, pgpmime.Options{Signer: e.s.pgpSigner}); err != nil {
		return "", fmt.Errorf("PGP/MIME: %w", err)
	}
	return fmt.Sprintf("encrypted to key %s (%s) from %s", best.KeyID, best.Fingerprint, best.Source), nil
}

type smimeEncoder struct{ s *Set }

// Encode implements courier.Encoder with S/MIME enveloped-data (RFC 8551).
func (e smimeEncoder) Encode(ctx context.Context, cp courier.Copy, msg io.Reader, w io.Writer) (string, error) {
	rcpt := cp.Rcpt
	best, all, err := e.s.SMIME.Best(ctx, rcpt)
	if best == nil {
		if err != nil && len(all) == 0 {
			return "", fmt.Errorf("certificate look-up: %w", err)
		}
		return "", fmt.Errorf("%w: %s", courier.ErrUnavailable, refusal("certificate", smimeReasons(all), err))
	}
	opt := smime.Options{SignerCert: e.s.smimeSigner.cert, SignerKey: e.s.smimeSigner.key, SignerChain: e.s.smimeSigner.chain}
	if err := smime.Encrypt(w, msg, best.Cert, opt); err != nil {
		return "", fmt.Errorf("S/MIME: %w", err)
	}
	return fmt.Sprintf("encrypted to certificate SHA256:%s serial %s from %s", best.Fingerprint, best.Serial, best.Source), nil
}

// ExportExpiry sets postern_key_expiry_timestamp_seconds for the local keys
// and certificates (call at start-up and after each reload).
func (s *Set) ExportExpiry(m *metrics.Metrics) {
	m.KeyExpiry.Reset()
	if s.PGP != nil {
		for _, k := range s.PGP.Local() {
			if !k.Expires.IsZero() {
				m.KeyExpiry.WithLabelValues("pgp_key", firstAddr(k.UserIDs)).Set(float64(k.Expires.Unix()))
			}
		}
	}
	if s.SMIME != nil {
		for _, c := range s.SMIME.Local() {
			subject := c.Subject
			if c.Cert != nil && len(c.Cert.EmailAddresses) > 0 {
				subject = c.Cert.EmailAddresses[0]
			}
			m.KeyExpiry.WithLabelValues("smime_cert", subject).Set(float64(c.NotAfter.Unix()))
		}
	}
}

func firstAddr(uids []string) string {
	for _, u := range uids {
		if a, err := mail.ParseAddress(u); err == nil {
			return strings.ToLower(a.Address)
		}
	}
	if len(uids) > 0 {
		return uids[0]
	}
	return "unknown"
}

type portalEncoder struct{ p *portal.Portal }

// Encode implements courier.Encoder: the message is stored encrypted in the
// portal and the recipient's copy is the notification mail. A revoked or
// expired id (portal.ErrGone) stays a temporary error on purpose: it must
// never fall through to another method.
func (e portalEncoder) Encode(ctx context.Context, cp courier.Copy, msg io.Reader, w io.Writer) (string, error) {
	if cp.PortalID == "" {
		return "", fmt.Errorf("%w: no portal id assigned", courier.ErrUnavailable)
	}
	desc, err := e.p.Deposit(ctx, cp.PortalID, cp.Rcpt, msg, w)
	if err != nil {
		return "", fmt.Errorf("portal: %w", err)
	}
	return desc, nil
}
