package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
)

// FetchTimeout bounds one policy fetch (RFC 8461 §3.3 suggests about a
// minute at most; we are stricter).
const FetchTimeout = 10 * time.Second

// Client finds the MTA-STS policy of recipient domains (RFC 8461 §5.1),
// keeping policies in a Store. It is safe for concurrent use.
type Client struct {
	Resolver dnsr.Resolver
	// Roots are the WebPKI trust anchors for the policy host (system roots
	// plus delivery.tls_roots); nil means the system roots.
	Roots *x509.CertPool
	Store Store
	// Dial connects to an address the resolver returned; nil means
	// net.Dialer. Tests route loopback addresses with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds one fetch; 0 means FetchTimeout.
	Timeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger

	once   sync.Once
	http   *http.Client
	mu     sync.Mutex
	flight map[string]*call
}

type call struct {
	done chan struct{}
	c    *Cached
	err  error
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

// ErrNoPolicy is returned by Get when the domain publishes no MTA-STS
// policy and none is cached.
var ErrNoPolicy = errors.New("no MTA-STS policy")

// Get returns the policy in force for domain (RFC 8461 §5.1):
//
//   - a valid _mta-sts TXT record whose id equals the cached policy's id
//     means the cached policy, while it has not expired;
//   - a new id, or nothing cached, means fetching the policy over HTTPS;
//     when that fails the unexpired cached policy, if any, is kept;
//   - no record (or a failed look-up) with an unexpired cached policy
//     means the cached policy.
//
// It returns an error wrapping ErrNoPolicy when the domain has no policy,
// and another error when the policy could not be determined (look-up or
// fetch failure with nothing cached): RFC 8461 §5.1 then lets delivery go
// on as if the domain had no policy, which the caller decides.
func (c *Client) Get(ctx context.Context, domain string) (*Cached, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	now := c.now()
	cached, err := c.Store.Load(domain)
	if err != nil {
		c.log().Warn("mta-sts cache read failed", "domain", domain, "err", err)
		cached = nil
	}
	if cached != nil && !now.Before(cached.Expires) {
		cached = nil // expired: as if never seen
	}
	id, txtErr := c.lookupID(ctx, domain)
	if txtErr != nil {
		if cached != nil {
			return cached, nil
		}
		return nil, txtErr
	}
	if cached != nil && cached.ID == id {
		if now.After(cached.Fetched.Add(cached.Policy.MaxAge / 2)) {
			// Past half its life: refresh without making the caller wait
			// (RFC 8461 §10.2: refresh proactively).
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), c.timeout()+5*time.Second)
				defer cancel()
				if _, err := c.fetchOnce(ctx, domain, id); err != nil {
					c.log().Info("mta-sts background refresh failed", "domain", domain, "err", err)
				}
			}()
		}
		return cached, nil
	}
	fresh, err := c.fetchOnce(ctx, domain, id)
	if err != nil {
		if cached != nil {
			c.log().Info("mta-sts policy fetch failed; using cached policy", "domain", domain, "err", err)
			return cached, nil
		}
		return nil, err
	}
	return fresh, nil
}

// Refresh re-fetches every cached, unexpired policy past half its max_age
// (RFC 8461 §10.2), so a policy stays cached while the domain's policy
// host is briefly down.
func (c *Client) Refresh(ctx context.Context) error {
	domains, err := c.Store.Domains()
	if err != nil {
		return fmt.Errorf("mta-sts refresh: %w", err)
	}
	var errs []error
	for _, d := range domains {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		cached, err := c.Store.Load(d)
		if err != nil || cached == nil {
			continue
		}
		now := c.now()
		if !now.Before(cached.Expires) || now.Before(cached.Fetched.Add(cached.Policy.MaxAge/2)) {
			continue
		}
		id, err := c.lookupID(ctx, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := c.fetchOnce(ctx, d, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Run calls Refresh every interval (0 means one hour) until ctx ends.
func (c *Client) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Hour
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Refresh(ctx); err != nil {
				c.log().Info("mta-sts refresh", "err", err)
			}
		}
	}
}

// lookupID returns the id of the domain's _mta-sts record (RFC 8461 §3.1).
func (c *Client) lookupID(ctx context.Context, domain string) (string, error) {
	txts, _, err := c.Resolver.LookupTXT(ctx, "_mta-sts."+domain)
	if err != nil {
		if dnsr.IsNotFound(err) {
			return "", fmt.Errorf("%s: %w", domain, ErrNoPolicy)
		}
		return "", fmt.Errorf("mta-sts record of %s: %w", domain, err)
	}
	// RFC 8461 §3.1: records not starting with v=STSv1; are discarded;
	// anything but exactly one remaining valid record means no policy.
	var ids []string
	var bad error
	for _, t := range txts {
		if !strings.HasPrefix(t, "v=STSv1") {
			continue
		}
		id, err := ParseRecord(t)
		if err != nil {
			bad = err
		}
		ids = append(ids, id)
	}
	switch {
	case len(ids) != 1:
		return "", fmt.Errorf("%s: %d STSv1 records: %w", domain, len(ids), ErrNoPolicy)
	case bad != nil:
		return "", fmt.Errorf("%s: %v: %w", domain, bad, ErrNoPolicy)
	}
	return ids[0], nil
}

// fetchOnce fetches and stores a domain's policy, one fetch per domain at
// a time.
func (c *Client) fetchOnce(ctx context.Context, domain, id string) (*Cached, error) {
	c.mu.Lock()
	if c.flight == nil {
		c.flight = map[string]*call{}
	}
	if f := c.flight[domain]; f != nil {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.c, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &call{done: make(chan struct{})}
	c.flight[domain] = f
	c.mu.Unlock()

	f.c, f.err = c.fetchStore(ctx, domain, id)
	c.mu.Lock()
	delete(c.flight, domain)
	c.mu.Unlock()
	close(f.done)
	return f.c, f.err
}

func (c *Client) fetchStore(ctx context.Context, domain, id string) (*Cached, error) {
	p, err := c.Fetch(ctx, domain)
	if err != nil {
		return nil, err
	}
	now := c.now()
	cached := &Cached{Domain: domain, ID: id, Policy: *p, Fetched: now, Expires: now.Add(p.MaxAge)}
	if err := c.Store.Save(cached); err != nil {
		// The policy is still good for this delivery.
		c.log().Warn("mta-sts cache write failed", "domain", domain, "err", err)
	}
	return cached, nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return FetchTimeout
}

// Fetch downloads and parses https://mta-sts.<domain>/.well-known/mta-sts.txt
// (RFC 8461 §3.3): the server certificate must be WebPKI-valid for that
// name, redirects are not followed, only a 200 text/plain answer of at most
// MaxPolicySize bytes is accepted, and the whole fetch is bounded by the
// timeout. Host names are resolved through the Resolver.
func (c *Client) Fetch(ctx context.Context, domain string) (*Policy, error) {
	c.once.Do(c.initHTTP)
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("mta-sts fetch %s: %w", domain, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mta-sts fetch %s: %w", domain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed", and
		// only 200 carries a policy.
		return nil, fmt.Errorf("mta-sts fetch %s: HTTP status %s", domain, resp.Status)
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("mta-sts fetch %s: content type %q, want text/plain", domain, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("mta-sts fetch %s: %w", domain, err)
	}
	if len(body) > MaxPolicySize {
		return nil, fmt.Errorf("mta-sts fetch %s: policy larger than %d bytes", domain, MaxPolicySize)
	}
	p, err := Parse(body)
	if err != nil {
		return nil, fmt.Errorf("mta-sts fetch %s: %w", domain, err)
	}
	return p, nil
}

func (c *Client) initHTTP() {
	tr := &http.Transport{
		Proxy:                  nil, // policy hosts are reached directly
		DialContext:            c.dialContext,
		TLSClientConfig:        &tls.Config{RootCAs: c.Roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    c.timeout(),
		ResponseHeaderTimeout:  c.timeout(),
		MaxIdleConns:           10,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: 16 << 10,
	}
	c.http = &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// dialContext resolves host with the Resolver and connects to its
// addresses in turn.
func (c *Client) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, _, err := c.Resolver.LookupIP(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	dial := c.Dial
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	var errs []error
	for _, ip := range ips {
		conn, err := dial(ctx, "tcp", net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("connect to %s: %w", host, errors.Join(errs...))
}
