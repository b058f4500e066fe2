package smimecerts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/postern-mail/postern/certs/ttlcache"
)

// ldapSizeLimit bounds the entries one search may return (RFC 4511 §4.5.1
// sizeLimit); an address matching more than this is a directory problem.
const ldapSizeLimit = 20

// ldapAttrs are the attributes that hold S/MIME certificates:
// userCertificate (RFC 4523 §2.1, transferred with ;binary, RFC 4522) and
// userSMIMECertificate (RFC 2798 §2.8, a PKCS #7 SignedData). Active
// Directory serves userCertificate without the ;binary option.
var ldapAttrs = []string{"userCertificate;binary", "userCertificate", "userSMIMECertificate", "userSMIMECertificate;binary"}

// ldapEntry is what one directory entry yielded.
type ldapEntry struct {
	origin string              // URL/DN
	certs  []*x509.Certificate // end-entity certificates
	chain  []*x509.Certificate // CA certificates in the same entry: intermediates
}

type ldapClient struct {
	opt   LDAPOptions
	log   *slog.Logger
	cache *answerCache

	mu     sync.Mutex
	conn   *ldap.Conn
	closed bool
}

func newLDAPClient(o LDAPOptions, ttl time.Duration, log *slog.Logger) (*ldapClient, error) {
	o, err := checkLDAPOptions(o)
	if err != nil {
		return nil, err
	}
	return &ldapClient{opt: o, log: log, cache: newAnswerCache(ttl)}, nil
}

// lookup returns the entries for addr, from the cache when fresh. The
// caller judges them and stores the answer with remember.
func (l *ldapClient) lookup(ctx context.Context, addr string, now time.Time) (entries []ldapEntry, cached bool, err error) {
	if e, ok := l.cache.get(strings.ToLower(addr), now); ok {
		return e, true, nil
	}
	entries, err = l.search(ctx, addr)
	if err != nil {
		return nil, false, err
	}
	return entries, false, nil
}

// remember caches an answer; one without a usable certificate is negative.
func (l *ldapClient) remember(addr string, entries []ldapEntry, usable bool, now time.Time) {
	l.cache.put(strings.ToLower(addr), entries, usable, now)
}

// search asks the directory, reusing the connection; a reused connection
// that turns out broken is replaced once.
func (l *ldapClient) search(ctx context.Context, addr string) ([]ldapEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, l.opt.Timeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		conn, fresh, err := l.getConn(ctx)
		if err != nil {
			return nil, err
		}
		entries, err := l.searchOn(ctx, conn, addr)
		if err == nil {
			return entries, nil
		}
		var lerr *ldap.Error
		// Result codes below 200 are the server's answers (RFC 4511
		// §4.1.9); go-ldap's own codes start at ErrorNetwork (200).
		protocolAnswer := errors.As(err, &lerr) && lerr.ResultCode < ldap.ErrorNetwork
		if !protocolAnswer {
			// Network trouble or our own timeout: the connection may be
			// half-used; never reuse it.
			l.dropConn(conn)
		}
		if protocolAnswer || fresh || attempt > 0 || ctx.Err() != nil {
			return nil, err
		}
		l.log.Debug("ldap connection broken, redialling", "err", err)
	}
}

func (l *ldapClient) searchOn(ctx context.Context, conn *ldap.Conn, addr string) ([]ldapEntry, error) {
	// RFC 4515 §3: the assertion value is escaped, so an address can never
	// change the filter's structure.
	filter := strings.ReplaceAll(l.opt.Filter, "%s", ldap.EscapeFilter(addr))
	timeLimit := int(l.opt.Timeout / time.Second)
	if timeLimit < 1 {
		timeLimit = 1
	}
	req := ldap.NewSearchRequest(l.opt.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		ldapSizeLimit, timeLimit, false, filter, ldapAttrs, nil)
	resp := conn.SearchAsync(ctx, req, 4)
	var out []ldapEntry
	for resp.Next() {
		if e := resp.Entry(); e != nil {
			out = append(out, l.entryCerts(e))
		}
	}
	// SearchAsync reports cancellation as no error at all.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ldap search %s: %w", l.opt.URL, err)
	}
	if err := resp.Err(); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
			l.log.Warn("ldap: more entries than the size limit; using the first", "addr", addr, "limit", ldapSizeLimit)
			return out, nil
		}
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return out, nil // base DN absent: nothing there
		}
		return nil, fmt.Errorf("ldap search %s: %w", l.opt.URL, err)
	}
	return out, nil
}

// entryCerts parses the certificate attributes of one entry. Values that do
// not parse are logged and skipped: they cannot be used, and the rest of the
// entry can.
func (l *ldapClient) entryCerts(e *ldap.Entry) ldapEntry {
	out := ldapEntry{origin: strings.TrimRight(l.opt.URL, "/") + "/" + e.DN}
	seen := map[string]bool{}
	for _, a := range e.Attributes {
		name := strings.ToLower(a.Name)
		if i := strings.IndexByte(name, ';'); i >= 0 {
			name = name[:i]
		}
		if name != "usercertificate" && name != "usersmimecertificate" {
			continue
		}
		for i, v := range a.ByteValues {
			certs, err := ParseCertificates(v)
			if err != nil {
				l.log.Warn("ldap: unusable certificate value", "dn", e.DN, "attribute", a.Name, "index", i, "err", err)
			}
			for _, c := range certs {
				fp := Fingerprint(c)
				if seen[fp] {
					continue
				}
				seen[fp] = true
				if c.BasicConstraintsValid && c.IsCA {
					out.chain = append(out.chain, c)
				} else {
					out.certs = append(out.certs, c)
				}
			}
		}
	}
	return out
}

func (l *ldapClient) getConn(ctx context.Context) (conn *ldap.Conn, fresh bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false, errors.New("ldap: store closed")
	}
	if l.conn != nil && !l.conn.IsClosing() {
		return l.conn, false, nil
	}
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
	c, err := l.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	l.conn = c
	return c, true, nil
}

func (l *ldapClient) dropConn(c *ldap.Conn) {
	l.mu.Lock()
	if l.conn == c {
		l.conn = nil
	}
	l.mu.Unlock()
	c.Close()
}

// dial connects, honouring ctx and the look-up timeout. Binding is
// anonymous: LDAPv3 allows operations without a Bind (RFC 4511 §4.2).
func (l *ldapClient) dial(ctx context.Context) (*ldap.Conn, error) {
	network, address, useTLS, host, err := ldapTarget(l.opt.URL)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: l.opt.Timeout}
	var nc net.Conn
	if useTLS {
		td := &tls.Dialer{NetDialer: d, Config: &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}}
		nc, err = td.DialContext(ctx, network, address)
	} else {
		nc, err = d.DialContext(ctx, network, address)
	}
	if err != nil {
		return nil, fmt.Errorf("ldap connect %s: %w", l.opt.URL, err)
	}
	c := ldap.NewConn(nc, useTLS)
	c.Start()
	c.SetTimeout(l.opt.Timeout)
	return c, nil
}

// ldapTarget splits an LDAP URL (RFC 4516 §2) into what to dial.
func ldapTarget(raw string) (network, address string, useTLS bool, host string, err error) {
	if rest, ok := strings.CutPrefix(raw, "ldapi://"); ok {
		path, _, _ := strings.Cut(rest, "/")
		path, err = url.PathUnescape(path)
		if err != nil {
			return "", "", false, "", fmt.Errorf("ldap url %q: %w", raw, err)
		}
		if path == "" {
			path = "/var/run/slapd/ldapi"
		}
		return "unix", path, false, "", nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", false, "", fmt.Errorf("ldap url %q: %w", raw, err)
	}
	host, port := u.Hostname(), u.Port()
	switch u.Scheme {
	case "ldap":
		if port == "" {
			port = ldap.DefaultLdapPort
		}
	case "ldaps":
		useTLS = true
		if port == "" {
			port = ldap.DefaultLdapsPort
		}
	default:
		return "", "", false, "", fmt.Errorf("ldap url %q: unsupported scheme", raw)
	}
	if host == "" {
		host = "localhost"
	}
	return "tcp", net.JoinHostPort(host, port), useTLS, host, nil
}

func (l *ldapClient) close() {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.closed = true
	l.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// maxCacheEntries bounds the answer cache (see ttlcache for eviction).
const maxCacheEntries = 10000

// answerCache keeps LDAP answers: positive ones (with a usable certificate)
// for ttl, negative ones for min(ttl, MaxNegativeTTL), so a certificate
// published to replace an expired one is seen within minutes.
type answerCache struct {
	ttl time.Duration
	c   *ttlcache.Cache[[]ldapEntry]
}

func newAnswerCache(ttl time.Duration) *answerCache {
	return &answerCache{ttl: ttl, c: ttlcache.New[[]ldapEntry](maxCacheEntries)}
}

func (c *answerCache) get(key string, now time.Time) ([]ldapEntry, bool) {
	return c.c.Get(key, now)
}

func (c *answerCache) put(key string, entries []ldapEntry, positive bool, now time.Time) {
	ttl := c.ttl
	if ttl <= 0 {
		return
	}
	if !positive {
		ttl = min(ttl, MaxNegativeTTL)
	}
	c.c.Put(key, entries, now.Add(ttl), now)
}

func (c *answerCache) clear() { c.c.Clear() }
