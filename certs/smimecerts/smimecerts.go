// Package smimecerts finds and validates recipients' S/MIME certificates
// (SPEC.md §4, method smime): from keys.smime_dir (PEM or DER files, reloaded
// with the policy) and from an LDAP directory (keys.ldap, attributes
// userCertificate;binary and userSMIMECertificate, cached for keys.cache_ttl).
//
// A certificate is usable for an address only when every check holds, in
// this order (the first failure is the refusal's reason):
//
//  1. the key is RSA of at least [MinRSABits] bits — go.mozilla.org/pkcs7
//     does RSA key transport only and panics on any other key type, so
//     such a certificate is "unsupported key type …" here, never a crash;
//  2. now is within notBefore..notAfter (RFC 5280 §4.1.2.5);
//  3. a subjectAltName rfc822Name equals the address (RFC 8550 §3);
//  4. keyUsage, when present, has keyEncipherment (RFC 8550 §4.4.2);
//  5. extendedKeyUsage, when present, has emailProtection (RFC 8550 §4.4.4);
//  6. it chains to keys.smime_roots (RFC 5280 §6), with intermediates taken
//     from the roots file, keys.smime_dir and the same LDAP entry.
//
// Among several usable certificates [Store.Best] takes the one valid
// longest (latest notAfter).
//
// This package does not import gateway/: it is shared by the delivery path,
// the availability checker and `postern keys lookup`.
package smimecerts

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Sources of a certificate, as in Cert.Source and the OnLookup hook.
const (
	SourceLocal = "local"
	SourceLDAP  = "ldap"
)

// Results reported to Options.OnLookup (postern_key_lookups_total{result}).
const (
	ResultFound    = "found"     // at least one usable certificate
	ResultNotFound = "not_found" // none, or none usable
	ResultError    = "error"     // the source could not be asked
)

// DefaultLDAPFilter is used when LDAPOptions.Filter is empty.
const DefaultLDAPFilter = "(mail=%s)"

// DefaultLDAPTimeout bounds one LDAP look-up (connect and search) when
// LDAPOptions.Timeout is zero.
const DefaultLDAPTimeout = 10 * time.Second

// MaxNegativeTTL caps how long "no certificate in LDAP" is remembered.
const MaxNegativeTTL = 5 * time.Minute

// Cert is one certificate found for an address, judged for that address.
type Cert struct {
	Fingerprint             string // SHA-256 hex of DER, lower case
	Serial, Subject, Issuer string // serial in upper-case hex
	NotBefore, NotAfter     time.Time
	Source                  string // SourceLocal | SourceLDAP
	Origin                  string // file path, or LDAP URL/DN
	Usable                  bool
	// Reason: when usable, what is used ("certificate SHA256:ab12… serial
	// 1234 from local"); when not, why not ("expired 2026-01-02", "not yet
	// valid (from …)", "no rfc822Name for bob@x.example", "untrusted: …",
	// "key usage lacks keyEncipherment", "extended key usage lacks
	// emailProtection", "unsupported key type ECDSA", "RSA key 1024 bits <
	// 2048").
	Reason string
	Cert   *x509.Certificate
}

// LDAPOptions configure the LDAP source (keys.ldap). Binding is anonymous.
type LDAPOptions struct {
	URL     string        // ldap://, ldaps:// or ldapi://; "" = LDAP off
	BaseDN  string        // search base, whole subtree
	Filter  string        // "%s" is replaced by the address, escaped (RFC 4515 §3)
	Timeout time.Duration // per look-up, connect and search; 0 = DefaultLDAPTimeout
}

// Options configure a Store.
type Options struct {
	Dir       string // keys.smime_dir; "" = no local certificates
	RootsFile string // keys.smime_roots (PEM); "" = no trust anchors → every certificate "untrusted"
	LDAP      LDAPOptions
	// CacheTTL is how long LDAP answers are kept (keys.cache_ttl); answers
	// without a usable certificate for min(CacheTTL, MaxNegativeTTL). 0
	// disables the cache. Errors are not cached.
	CacheTTL time.Duration
	Now      func() time.Time // nil = time.Now
	// OnLookup, when set, is called once per source consulted: source
	// SourceLocal|SourceLDAP, result ResultFound|ResultNotFound|ResultError.
	// An LDAP answer served from the cache is not a look-up and is not
	// reported.
	OnLookup func(source, result string)
	Log      *slog.Logger // nil = discard
}

// Store answers certificate look-ups. It is safe for concurrent use.
type Store struct {
	opt   Options
	log   *slog.Logger
	local atomic.Pointer[localState]
	ldap  *ldapClient // nil when LDAP is off
}

// New loads the local certificates and trust anchors and prepares the LDAP
// source (connecting lazily, on the first look-up that needs it).
func New(opt Options) (*Store, error) {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	s := &Store{opt: opt, log: opt.Log}
	if opt.LDAP.URL != "" {
		lc, err := newLDAPClient(opt.LDAP, opt.CacheTTL, opt.Log)
		if err != nil {
			return nil, fmt.Errorf("smime certificates: keys.ldap: %w", err)
		}
		s.ldap = lc
	}
	if err := s.Reload(); err != nil {
		if s.ldap != nil {
			s.ldap.close()
		}
		return nil, err
	}
	return s, nil
}

// Reload re-reads keys.smime_roots and keys.smime_dir and forgets cached
// LDAP answers. It is atomic: on error the previous state stays in use.
// Files that cannot be parsed do not fail the reload; they are listed by
// [Store.Problems].
func (s *Store) Reload() error {
	st, err := loadLocal(s.opt.Dir, s.opt.RootsFile)
	if err != nil {
		return fmt.Errorf("smime certificates: %w", err)
	}
	s.local.Store(st)
	if s.ldap != nil {
		s.ldap.cache.clear()
	}
	for _, p := range st.problems {
		s.log.Warn("smime certificate problem", "problem", p)
	}
	s.log.Info("smime certificates loaded", "dir", s.opt.Dir, "addresses", len(st.byAddr),
		"roots", st.nRoots, "problems", len(st.problems))
	return nil
}

// Problems lists what the last successful load could not use: unreadable or
// unparsable files, a roots file without certificates, and the like. Each
// entry names the file.
func (s *Store) Problems() []string {
	return slices.Clone(s.local.Load().problems)
}

// Lookup returns the certificates found for addr, each judged for it: first
// keys.smime_dir; LDAP only when no local certificate is usable. The result
// is sorted usable first, then longest valid first. When LDAP was needed but
// failed, the local results come back with a non-nil error.
func (s *Store) Lookup(ctx context.Context, addr string) ([]Cert, error) {
	addr = normAddr(addr)
	st := s.local.Load()
	now := s.opt.Now()

	var out []Cert
	for _, lc := range st.byAddr[strings.ToLower(addr)] {
		out = append(out, evaluate(lc.cert, addr, SourceLocal, lc.origin, now, st.trust))
	}
	s.report(SourceLocal, resultOf(out, nil))
	if anyUsable(out) || s.ldap == nil {
		sortCerts(out)
		return out, nil
	}
	if addr == "" || !strings.Contains(addr, "@") {
		sortCerts(out)
		return out, nil
	}

	found, cached, err := s.ldap.lookup(ctx, addr, now)
	seen := map[string]bool{}
	for _, c := range out {
		seen[c.Fingerprint] = true
	}
	var lout []Cert
	for _, e := range found {
		tr := st.trust
		if len(e.chain) > 0 {
			tr.intermediates = st.trust.intermediates.Clone()
			for _, c := range e.chain {
				tr.intermediates.AddCert(c)
			}
		}
		for _, c := range e.certs {
			if fp := Fingerprint(c); !seen[fp] {
				seen[fp] = true
				lout = append(lout, evaluate(c, addr, SourceLDAP, e.origin, now, tr))
			}
		}
	}
	if !cached {
		s.report(SourceLDAP, resultOf(lout, err))
		if err == nil {
			s.ldap.remember(addr, found, anyUsable(lout), now)
		}
	}
	out = append(out, lout...)
	sortCerts(out)
	if err != nil {
		s.log.Warn("ldap certificate look-up failed", "addr", addr, "err", err)
		return out, fmt.Errorf("smime certificates for %s: %w", addr, err)
	}
	return out, nil
}

// Best returns the usable certificate for addr that is valid longest, with
// everything found (see [Store.Lookup]). best is nil when none is usable; err
// is non-nil only when a source could not be asked.
func (s *Store) Best(ctx context.Context, addr string) (best *Cert, all []Cert, err error) {
	all, err = s.Lookup(ctx, addr)
	for i := range all {
		// sortCerts put usable certificates first, longest valid first.
		if all[i].Usable {
			best = &all[i]
			break
		}
	}
	return best, all, err
}

// Close releases the LDAP connection. Later LDAP look-ups fail.
func (s *Store) Close() {
	if s.ldap != nil {
		s.ldap.close()
	}
}

func (s *Store) report(source, result string) {
	if s.opt.OnLookup != nil {
		s.opt.OnLookup(source, result)
	}
}

func resultOf(cs []Cert, err error) string {
	switch {
	case anyUsable(cs):
		return ResultFound
	case err != nil:
		return ResultError
	default:
		return ResultNotFound
	}
}

func anyUsable(cs []Cert) bool {
	for _, c := range cs {
		if c.Usable {
			return true
		}
	}
	return false
}

// sortCerts orders usable first, then latest notAfter, then fingerprint so
// the order is stable.
func sortCerts(cs []Cert) {
	slices.SortStableFunc(cs, func(a, b Cert) int {
		if a.Usable != b.Usable {
			if a.Usable {
				return -1
			}
			return 1
		}
		if c := b.NotAfter.Compare(a.NotAfter); c != 0 {
			return c
		}
		return cmp.Compare(a.Fingerprint, b.Fingerprint)
	})
}

// normAddr trims blanks and one pair of angle brackets.
func normAddr(a string) string {
	a = strings.TrimSpace(a)
	if strings.HasPrefix(a, "<") && strings.HasSuffix(a, ">") {
		a = strings.TrimSpace(a[1 : len(a)-1])
	}
	return a
}

// checkLDAPOptions validates and completes o.
func checkLDAPOptions(o LDAPOptions) (LDAPOptions, error) {
	u, err := url.Parse(o.URL)
	if err != nil && !strings.HasPrefix(o.URL, "ldapi://") {
		return o, fmt.Errorf("url %q: %w", o.URL, err)
	}
	if u != nil {
		switch u.Scheme {
		case "ldap", "ldaps", "ldapi":
		default:
			return o, fmt.Errorf("url %q: scheme must be ldap, ldaps or ldapi", o.URL)
		}
	}
	if o.Filter == "" {
		o.Filter = DefaultLDAPFilter
	}
	if n := strings.Count(o.Filter, "%s"); n != 1 {
		return o, fmt.Errorf("filter %q: must contain %%s exactly once, found %d", o.Filter, n)
	}
	if _, err := ldap.CompileFilter(strings.ReplaceAll(o.Filter, "%s", "x@example.org")); err != nil {
		return o, fmt.Errorf("filter %q: %w", o.Filter, err)
	}
	if o.Timeout < 0 {
		return o, errors.New("timeout must not be negative")
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultLDAPTimeout
	}
	return o, nil
}

// Local returns the certificates of keys.smime_dir, each evaluated for the
// address it was filed under (for expiry monitoring and listings).
func (s *Store) Local() []Cert {
	st := s.local.Load()
	now := s.opt.Now()
	var out []Cert
	for addr, lcs := range st.byAddr {
		for _, lc := range lcs {
			out = append(out, evaluate(lc.cert, addr, SourceLocal, lc.origin, now, st.trust))
		}
	}
	sortCerts(out)
	return out
}
