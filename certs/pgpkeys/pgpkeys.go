// Package pgpkeys finds recipients' OpenPGP certificates and decides whether
// each can be used to encrypt to an address (SPEC §4, method pgp).
//
// Sources, in priority order: the local directory keys.pgp_dir (armored or
// binary files, any number of keys per file), the OpenPGP Web Key Directory
// (draft-koch-openpgp-webkey-service, advanced then direct method) and a
// Verifying Keyserver (VKS, /vks/v1/by-email/). Remote sources are asked
// only when no usable local key exists, and the keyserver only when WKD gave
// no usable key. Remote answers are cached.
//
// A key is usable for an address only if it is not revoked or expired, has a
// valid encryption-capable (sub)key and carries a user ID with exactly that
// address (RFC 9580 §10.1); otherwise Key.Reason says why.
package pgpkeys

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/postern-mail/postern/certs/ttlcache"
)

// Key sources, as recorded in Key.Source and passed to Options.OnLookup.
const (
	SourceLocal = "local"
	SourceWKD   = "wkd"
	SourceVKS   = "vks"
)

// Look-up results passed to Options.OnLookup.
const (
	ResultFound    = "found"
	ResultNotFound = "not_found"
	ResultError    = "error"
)

const (
	defaultTimeout     = 10 * time.Second
	defaultMaxKeyBytes = 1 << 20
	maxNegativeTTL     = 5 * time.Minute
	// maxFileBytes bounds one file in keys.pgp_dir.
	maxFileBytes = 16 << 20
)

// Key is one OpenPGP certificate found for an address, with the verdict on
// whether it may be used to encrypt to that address.
type Key struct {
	Fingerprint string    // upper-case hex, no spaces ("" if not even the key packet could be read)
	KeyID       string    // "0x" + 16 upper-case hex digits: the RFC 9580 §5.5.4 key ID (low 64 bits of a v4 fingerprint, high 64 bits of a v6 one)
	Source      string    // "local" | "wkd" | "vks"
	Origin      string    // file path or URL it came from
	UserIDs     []string  // user IDs with a valid self-signature (all user ID packets when the key could not be parsed)
	Created     time.Time // zero when unknown
	Expires     time.Time // zero = never
	Usable      bool
	// Reason, when usable: "key 0xABCD1234ABCD1234 from wkd"; when not,
	// why: "expired 2026-01-02", "revoked", "no encryption subkey",
	// "no user ID for bob@x.example", "unsupported algorithm: …", ….
	Reason string
	Entity *openpgp.Entity // nil when unparseable; public parts only (without revoked subkeys when usable): pass it to pgpmime.Encrypt
}

// Options configure a Store.
type Options struct {
	Dir       string // keys.pgp_dir; "" = none
	WKD       bool   // keys.wkd
	Keyserver string // keys.keyserver, e.g. "https://keys.openpgp.org"; "" = off
	// Dial opens connections for WKD and VKS look-ups; nil = net.Dialer.
	// The caller passes one that resolves names through delivery.dns.
	Dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	RootCAs *x509.CertPool // system + delivery.tls_roots; nil = system roots
	Timeout time.Duration  // per HTTP request; 0 = 10s
	// CacheTTL is how long remote answers with keys are kept; answers
	// without keys are kept min(CacheTTL, 5m). 0 disables the cache.
	// Failed look-ups are never cached.
	CacheTTL    time.Duration
	MaxKeyBytes int64 // cap per HTTP response body; 0 = 1 MiB
	Now         func() time.Time
	// OnLookup is called once per source consulted: source is local, wkd
	// or vks; result is found, not_found or error. Answers served from the
	// cache are not reported.
	OnLookup func(source, result string)
	Log      *slog.Logger
}

// Store holds the local certificates and looks up remote ones. It is safe
// for concurrent use.
type Store struct {
	opt       Options
	local     atomic.Pointer[localSet]
	transport *http.Transport
	client    *http.Client
	cache     *ttlcache.Cache[[]*parsedKey]
	flight    *flightGroup
	closeOnce sync.Once
}

// New returns a Store and reads opt.Dir. It fails when the directory cannot
// be read or the keyserver URL is invalid; a key file that cannot be parsed
// is logged and skipped, and reported by Problems.
func New(opt Options) (*Store, error) {
	if opt.Timeout <= 0 {
		opt.Timeout = defaultTimeout
	}
	if opt.MaxKeyBytes <= 0 {
		opt.MaxKeyBytes = defaultMaxKeyBytes
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Keyserver != "" {
		if _, err := vksURL(opt.Keyserver, "probe@example.org"); err != nil {
			return nil, err
		}
	}
	s := &Store{opt: opt, cache: ttlcache.New[[]*parsedKey](maxCacheEntries), flight: newFlightGroup()}
	s.transport, s.client = newHTTPClient(opt)
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads Options.Dir and swaps the new set in at once. When the
// directory cannot be read, the old set stays and the error is returned.
func (s *Store) Reload() error {
	set, err := loadDir(s.opt.Dir, s.opt.Log)
	if err != nil {
		return err
	}
	s.local.Store(set)
	return nil
}

// Problems lists the files in Options.Dir that could not be (fully)
// parsed, each as "path: why".
func (s *Store) Problems() []string {
	set := s.local.Load()
	if set == nil {
		return nil
	}
	return slices.Clone(set.problems)
}

// Close releases idle network connections.
func (s *Store) Close() {
	s.closeOnce.Do(func() { s.transport.CloseIdleConnections() })
}

// Lookup returns every key found for addr: local keys first, then WKD, then
// VKS; within a source, usable keys first, newest first. Remote sources are
// consulted only when no earlier source gave a usable key. The error is set
// only for an invalid address, or when nothing was found and every remote
// source consulted failed (network, TLS, HTTP errors).
func (s *Store) Lookup(ctx context.Context, addr string) ([]Key, error) {
	keys, remoteErrs, consulted, err := s.lookup(ctx, addr, false)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 && consulted > 0 && len(remoteErrs) == consulted {
		a, _ := normalizeAddr(addr)
		return nil, fmt.Errorf("OpenPGP key look-up for %s: %w", a, errors.Join(remoteErrs...))
	}
	return keys, nil
}

// LookupAll is Lookup for diagnostics ("postern keys lookup", "explain"):
// it consults every enabled source even when an earlier one gave a usable
// key. keys are in priority order as for Lookup; err, when set, joins the
// failures of the sources that could not be asked (or reports an invalid
// address), and keys holds what the other sources gave.
func (s *Store) LookupAll(ctx context.Context, addr string) ([]Key, error) {
	keys, remoteErrs, _, err := s.lookup(ctx, addr, true)
	if err != nil {
		return nil, err
	}
	return keys, errors.Join(remoteErrs...)
}

func (s *Store) lookup(ctx context.Context, addr string, all bool) (keys []Key, remoteErrs []error, consulted int, err error) {
	a, err := normalizeAddr(addr)
	if err != nil {
		return nil, nil, 0, err
	}
	rawAddr := strings.TrimSpace(addr)
	now := s.opt.Now()

	if set := s.local.Load(); set != nil && s.opt.Dir != "" {
		local := evaluateAll(set.byAddr[a], a, SourceLocal, now)
		s.report(SourceLocal, resultOf(len(local), nil))
		keys = append(keys, local...)
		if anyUsable(local) && !all {
			return keys, nil, 0, nil
		}
	}

	type source struct {
		name  string
		on    bool
		fetch func(context.Context, string, string) ([]*parsedKey, error)
	}
	for _, src := range []source{
		{SourceWKD, s.opt.WKD, s.fetchWKD},
		{SourceVKS, s.opt.Keyserver != "", s.fetchVKS},
	} {
		if !src.on {
			continue
		}
		consulted++
		found, err := s.remote(ctx, src.name, rawAddr, a, src.fetch)
		if err != nil {
			s.opt.Log.Warn("OpenPGP key look-up failed", "source", src.name, "rcpt", a, "err", err)
			remoteErrs = append(remoteErrs, fmt.Errorf("%s: %w", src.name, err))
			continue
		}
		ks := evaluateAll(found, a, src.name, now)
		keys = append(keys, ks...)
		if anyUsable(ks) && !all {
			break
		}
	}
	return keys, remoteErrs, consulted, nil
}

// Best returns the first usable key for addr in priority order (nil if
// none) and every key found, as Lookup.
func (s *Store) Best(ctx context.Context, addr string) (*Key, []Key, error) {
	keys, err := s.Lookup(ctx, addr)
	if err != nil {
		return nil, keys, err
	}
	for i := range keys {
		if keys[i].Usable {
			k := keys[i]
			return &k, keys, nil
		}
	}
	return nil, keys, nil
}

func (s *Store) report(source, result string) {
	if s.opt.OnLookup != nil {
		s.opt.OnLookup(source, result)
	}
}

func resultOf(n int, err error) string {
	switch {
	case err != nil:
		return ResultError
	case n > 0:
		return ResultFound
	default:
		return ResultNotFound
	}
}

// evaluateAll judges each key for addr and orders them: usable first, then
// newest first; otherwise the order found.
func evaluateAll(pks []*parsedKey, addr, source string, now time.Time) []Key {
	out := make([]Key, 0, len(pks))
	for _, pk := range pks {
		out = append(out, evaluate(pk, addr, source, now))
	}
	slices.SortStableFunc(out, func(x, y Key) int {
		if x.Usable != y.Usable {
			if x.Usable {
				return -1
			}
			return 1
		}
		return -cmp.Compare(x.Created.Unix(), y.Created.Unix())
	})
	return out
}

func anyUsable(keys []Key) bool {
	for _, k := range keys {
		if k.Usable {
			return true
		}
	}
	return false
}

// remote returns the keys source has for addr, from the cache or by
// calling fetch once however many goroutines ask at the same time.
func (s *Store) remote(ctx context.Context, source, rawAddr, addr string,
	fetch func(context.Context, string, string) ([]*parsedKey, error)) ([]*parsedKey, error) {
	ckey := source + "\x00" + addr
	if keys, ok := s.cache.Get(ckey, s.opt.Now()); ok {
		return keys, nil
	}
	c := s.flight.do(ckey, func() ([]*parsedKey, error) {
		// The fetch outlives a caller that gives up, so that the other
		// callers waiting on it still get an answer; it is bounded by the
		// per-request timeouts.
		keys, err := fetch(context.WithoutCancel(ctx), rawAddr, addr)
		s.report(source, resultOf(len(keys), err))
		if err == nil && s.opt.CacheTTL > 0 {
			ttl := s.opt.CacheTTL
			if len(keys) == 0 {
				ttl = min(ttl, maxNegativeTTL)
			}
			now := s.opt.Now()
			s.cache.Put(ckey, keys, now.Add(ttl), now)
		}
		return keys, err
	})
	select {
	case <-c.done:
		return c.keys, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Local returns the keys of keys.pgp_dir, each evaluated for the address
// it carries (for expiry monitoring and listings).
func (s *Store) Local() []Key {
	set := s.local.Load()
	now := s.opt.Now()
	var out []Key
	for addr, pks := range set.byAddr {
		out = append(out, evaluateAll(pks, addr, SourceLocal, now)...)
	}
	return out
}
