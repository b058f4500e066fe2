package dnsr

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/miekg/dns"
)

// system resolves with the operating system's configuration.
type system struct {
	r *net.Resolver
	// servers lists the "host:port" resolvers for TLSA queries, which
	// net.Resolver cannot make.
	servers func() ([]string, error)
}

// NewSystem returns a Resolver built on net.Resolver (so /etc/hosts,
// nsswitch and resolv.conf apply). It cannot see the AD bit: Authentic is
// always false, so DANE is never used with it. TLSA records, which
// net.Resolver cannot ask for, are queried from the resolv.conf name
// servers directly, in order.
func NewSystem() Resolver {
	return &system{r: &net.Resolver{}, servers: resolvConfServers}
}

// resolvConfServers reads the name servers from /etc/resolv.conf, falling
// back to the local host as the Go resolver does when the file is absent.
func resolvConfServers() ([]string, error) {
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(cfg.Servers) == 0 {
		return []string{"127.0.0.1:53", "[::1]:53"}, nil
	}
	out := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	return out, nil
}

func (s *system) LookupMX(ctx context.Context, domain string) ([]MX, Result, error) {
	name, err := toASCIIName(domain)
	if err != nil {
		return nil, Result{}, &Error{Name: domain, Kind: Permanent, Err: err}
	}
	recs, err := s.r.LookupMX(ctx, name)
	// net.Resolver drops malformed targets and reports that alongside the
	// usable records; use those.
	if err != nil && len(recs) == 0 {
		return nil, Result{}, systemError(domain, err)
	}
	mxs := make([]MX, 0, len(recs))
	for _, r := range recs {
		mxs = append(mxs, MX{Host: r.Host, Pref: r.Pref})
	}
	return sortMX(mxs), Result{}, nil
}

func (s *system) LookupIP(ctx context.Context, host string) ([]netip.Addr, Result, error) {
	name, err := toASCIIName(host)
	if err != nil {
		return nil, Result{}, &Error{Name: host, Kind: Permanent, Err: err}
	}
	addrs, err := s.r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, Result{}, systemError(host, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Unmap())
	}
	// IPv4 first, as the Client returns them.
	slices.SortStableFunc(out, func(a, b netip.Addr) int {
		switch {
		case a.Is4() == b.Is4():
			return 0
		case a.Is4():
			return -1
		}
		return 1
	})
	if len(out) == 0 {
		return nil, Result{}, &Error{Name: host, Kind: NotFound, Err: errNoData}
	}
	return out, Result{}, nil
}

func (s *system) LookupTXT(ctx context.Context, name string) ([]string, Result, error) {
	n, err := toASCIIName(name)
	if err != nil {
		return nil, Result{}, &Error{Name: name, Kind: Permanent, Err: err}
	}
	// net.Resolver concatenates the strings of each TXT record.
	txts, err := s.r.LookupTXT(ctx, n)
	if err != nil {
		return nil, Result{}, systemError(name, err)
	}
	return txts, Result{}, nil
}

func (s *system) LookupTLSA(ctx context.Context, port int, host string) ([]TLSA, Result, error) {
	if _, err := tlsaName(port, host); err != nil {
		return nil, Result{}, err
	}
	servers, err := s.servers()
	if err != nil {
		return nil, Result{}, &Error{Name: host, Kind: Temporary, Err: err}
	}
	var lastErr error = &Error{Name: host, Kind: Temporary, Err: errors.New("no name servers configured")}
	for _, addr := range servers {
		c := &client{addr: addr, timeout: defaultTimeout, trustAD: false}
		recs, _, err := c.LookupTLSA(ctx, port, host)
		if err == nil || !IsTemporary(err) || ctx.Err() != nil {
			return recs, Result{}, err
		}
		lastErr = err
	}
	return nil, Result{}, lastErr
}

// systemError maps an error from net.Resolver to *Error.
func systemError(name string, err error) error {
	kind := Permanent
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		kind = NotFound
	case errors.As(err, &de) && (de.IsTimeout || de.IsTemporary):
		kind = Temporary
	case errors.As(err, &de):
		kind = Permanent
	case errorKind(err) == Temporary:
		kind = Temporary
	}
	return &Error{Name: name, Kind: kind, Err: err}
}
