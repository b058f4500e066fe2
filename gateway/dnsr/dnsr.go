// Package dnsr resolves the DNS records mail delivery needs — MX (RFC 5321
// §5.1, RFC 7505), A/AAAA, TXT (MTA-STS, RFC 8461 §3.1) and TLSA (DANE,
// RFC 6698, RFC 7672) — and reports with each answer whether it was
// DNSSEC-validated.
//
// DNSSEC status comes from the AD bit (RFC 4035 §3.2.3) of a validating
// resolver, and is trusted only when that resolver is reached over loopback:
// on any other path an attacker can set the bit (RFC 6698 §4.1 requires a
// secure channel to the validator; RFC 7672 §1.3 likewise).
package dnsr

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
)

// MX is one mail exchanger of a domain (RFC 5321 §5.1).
type MX struct {
	Host string // without trailing dot, lowercase; "" for a null MX (RFC 7505)
	Pref uint16
}

// TLSA is one TLSA record (RFC 6698 §2.1).
type TLSA struct {
	Usage, Selector, MatchingType uint8
	Data                          []byte // certificate association data
}

// Result carries the DNSSEC status of an answer.
type Result struct {
	// Authentic is the AD bit from a trusted (loopback) resolver: every
	// answer that contributed, CNAMEs included, was validated.
	Authentic bool
}

// Resolver looks up what mail delivery needs. Implementations are safe for
// concurrent use. Every error returned is, or wraps, *Error. With a
// NotFound error the Result still tells whether the denial was
// authenticated.
type Resolver interface {
	// LookupMX returns the MX records of domain sorted by preference, equal
	// preferences in random order (RFC 5321 §5.1). A null MX (RFC 7505 §3)
	// is returned as the single MX{Host: ""} so callers can bounce. A
	// domain without MX records gives a NotFound error: callers then use
	// the domain itself as the implicit MX (RFC 5321 §5.1).
	LookupMX(ctx context.Context, domain string) ([]MX, Result, error)
	// LookupIP returns the A and AAAA addresses of host, IPv4 first.
	LookupIP(ctx context.Context, host string) ([]netip.Addr, Result, error)
	// LookupTXT returns one string per TXT record, that record's strings
	// concatenated (RFC 7208 §3.3, RFC 8461 §3.1).
	LookupTXT(ctx context.Context, name string) ([]string, Result, error)
	// LookupTLSA returns the TLSA records at _port._tcp.host (RFC 6698 §3).
	LookupTLSA(ctx context.Context, port int, host string) ([]TLSA, Result, error)
}

// Kind classifies a lookup failure.
type Kind int

const (
	// NotFound: the name does not exist (NXDOMAIN) or has no record of
	// the type asked for (NODATA).
	NotFound Kind = iota + 1
	// Temporary: timeout, SERVFAIL, network trouble; try again later.
	Temporary
	// Permanent: any other RCODE, a malformed answer or name, a CNAME loop.
	Permanent
)

func (k Kind) String() string {
	switch k {
	case NotFound:
		return "not found"
	case Temporary:
		return "temporary failure"
	case Permanent:
		return "permanent failure"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error is the error type of every failed lookup.
type Error struct {
	Name string // the name looked up
	Kind Kind
	Err  error // underlying cause, may be nil
}

func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("dns lookup %s: %s", e.Name, e.Kind)
	}
	return fmt.Sprintf("dns lookup %s: %s: %v", e.Name, e.Kind, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether retrying later may succeed.
func (e *Error) Temporary() bool { return e.Kind == Temporary }

// IsNotFound reports whether err is (or wraps) an *Error of kind NotFound.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == NotFound
}

// IsTemporary reports whether err is (or wraps) an *Error of kind Temporary.
func IsTemporary(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == Temporary
}

// errNoData marks NOERROR answers without records of the asked type.
var errNoData = errors.New("no records of that type (NODATA)")

// errNXDomain marks NXDOMAIN answers.
var errNXDomain = errors.New("no such domain (NXDOMAIN)")

// normalizeName lowercases name and strips one trailing dot.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// sortMX orders MX records by preference, shuffling equal preferences
// (RFC 5321 §5.1: "the SMTP client SHOULD randomize them to spread the
// load"), and applies the null MX rule of RFC 7505 §3: a lone "." target
// means the domain accepts no mail; a "." among other records is dropped.
func sortMX(in []MX) []MX {
	var out []MX
	var null []MX
	for _, mx := range in {
		if mx.Host == "" || mx.Host == "." {
			null = append(null, MX{Host: "", Pref: mx.Pref})
			continue
		}
		out = append(out, MX{Host: normalizeName(mx.Host), Pref: mx.Pref})
	}
	if len(out) == 0 && len(null) > 0 {
		return null[:1]
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	slices.SortStableFunc(out, func(a, b MX) int { return int(a.Pref) - int(b.Pref) })
	return out
}

// tlsaName is the owner name of the TLSA RRset for a TCP service,
// RFC 6698 §3: _port._tcp.host.
func tlsaName(port int, host string) (string, error) {
	if port < 1 || port > 65535 {
		return "", &Error{Name: host, Kind: Permanent, Err: fmt.Errorf("invalid port %d", port)}
	}
	return fmt.Sprintf("_%d._tcp.%s", port, normalizeName(host)), nil
}
