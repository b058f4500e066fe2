package dnsr

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// ednsBufferSize is the EDNS0 UDP payload size advertised, the DNS
	// Flag Day 2020 value that avoids IP fragmentation.
	ednsBufferSize = 1232

	// maxCNAMEs bounds CNAME chains (and re-queries along them).
	maxCNAMEs = 8

	defaultTimeout = 5 * time.Second
)

// client is a stub resolver speaking to one recursive resolver.
type client struct {
	addr    string
	timeout time.Duration
	trustAD bool
}

// NewClient returns a Resolver that sends queries to the recursive resolver
// at addr ("host:port"; a missing port means 53) with github.com/miekg/dns:
// UDP with EDNS0 (DO bit set, 1232-byte buffer; RFC 6891, RFC 3225), the
// query again over TCP when the answer is truncated (RFC 7766 §5), and one
// retry after a timeout. timeout bounds each exchange; 0 means 5s.
//
// Result.Authentic is the AD bit of the answers, but only when addr's host
// is a loopback IP address: the AD bit of a resolver across the network can
// be forged (RFC 6698 §4.1 / RFC 4035 §4.9.3), and a host name is not
// trusted to resolve to loopback. CNAMEs in answers are followed.
func NewClient(addr string, timeout time.Duration) Resolver {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), "53")
	}
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	return &client{addr: addr, timeout: timeout, trustAD: isLoopbackAddr(addr)}
}

// isLoopbackAddr reports whether addr ("host:port") names a loopback IP
// address literally.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func (c *client) LookupMX(ctx context.Context, domain string) ([]MX, Result, error) {
	rrs, res, err := c.lookup(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, res, err
	}
	mxs := make([]MX, 0, len(rrs))
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, MX{Host: mx.Mx, Pref: mx.Preference})
		}
	}
	return sortMX(mxs), res, nil
}

func (c *client) LookupIP(ctx context.Context, host string) ([]netip.Addr, Result, error) {
	type answer struct {
		rrs []dns.RR
		res Result
		err error
	}
	var v4, v6 answer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		v4.rrs, v4.res, v4.err = c.lookup(ctx, host, dns.TypeA)
	}()
	go func() {
		defer wg.Done()
		v6.rrs, v6.res, v6.err = c.lookup(ctx, host, dns.TypeAAAA)
	}()
	wg.Wait()

	var addrs []netip.Addr
	for _, rr := range v4.rrs {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A); ok {
				addrs = append(addrs, ip.Unmap())
			}
		}
	}
	for _, rr := range v6.rrs {
		if a, ok := rr.(*dns.AAAA); ok {
			if ip, ok := netip.AddrFromSlice(a.AAAA); ok && ip.Is6() {
				addrs = append(addrs, ip)
			}
		}
	}
	// Authentic only if every answer received (data or denial) was.
	res := Result{Authentic: c.trustAD}
	for _, a := range []answer{v4, v6} {
		if a.err == nil || IsNotFound(a.err) {
			res.Authentic = res.Authentic && a.res.Authentic
		}
	}
	if len(addrs) > 0 {
		// One family failing does not spoil the other's addresses.
		return addrs, res, nil
	}
	switch {
	case v4.err != nil && !IsNotFound(v4.err):
		return nil, Result{}, v4.err
	case v6.err != nil && !IsNotFound(v6.err):
		return nil, Result{}, v6.err
	case v4.err != nil:
		return nil, res, v4.err
	case v6.err != nil:
		return nil, res, v6.err
	}
	// Records of the right type that were all unusable.
	return nil, res, &Error{Name: host, Kind: NotFound, Err: errNoData}
}

func (c *client) LookupTXT(ctx context.Context, name string) ([]string, Result, error) {
	rrs, res, err := c.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, res, err
	}
	var txts []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			var b strings.Builder
			for _, s := range t.Txt {
				b.WriteString(unescapeTXT(s))
			}
			txts = append(txts, b.String())
		}
	}
	return txts, res, nil
}

func (c *client) LookupTLSA(ctx context.Context, port int, host string) ([]TLSA, Result, error) {
	name, err := tlsaName(port, host)
	if err != nil {
		return nil, Result{}, err
	}
	rrs, res, err := c.lookup(ctx, name, dns.TypeTLSA)
	if err != nil {
		return nil, res, err
	}
	var out []TLSA
	for _, rr := range rrs {
		t, ok := rr.(*dns.TLSA)
		if !ok {
			continue
		}
		data, err := hex.DecodeString(t.Certificate)
		if err != nil {
			// Cannot come from the wire format; skip rather than fail.
			continue
		}
		// RFC 6698 §2.1: usage, selector, matching type, association data.
		out = append(out, TLSA{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: data})
	}
	return out, res, nil
}

// lookup asks for name/qtype and returns the records of that type at the
// end of the CNAME chain starting at name. When the chain in an answer ends
// at a name whose records the answer lacks, that name is asked for next.
func (c *client) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, Result, error) {
	qname, err := toASCIIName(name)
	if err != nil {
		return nil, Result{}, &Error{Name: name, Kind: Permanent, Err: err}
	}
	authentic := c.trustAD
	target := dns.Fqdn(qname)
	seen := map[string]bool{}
	for range maxCNAMEs {
		resp, err := c.exchange(ctx, target, qtype)
		if err != nil {
			return nil, Result{}, &Error{Name: name, Kind: errorKind(err), Err: err}
		}
		authentic = authentic && resp.AuthenticatedData
		res := Result{Authentic: authentic}
		switch resp.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			// RFC 6604 §3: the RCODE describes the last name of the chain.
			return nil, res, &Error{Name: name, Kind: NotFound, Err: errNXDomain}
		case dns.RcodeServerFailure:
			return nil, Result{}, &Error{Name: name, Kind: Temporary, Err: fmt.Errorf("server failure (SERVFAIL) from %s", c.addr)}
		default:
			return nil, Result{}, &Error{Name: name, Kind: Permanent, Err: fmt.Errorf("%s from %s", rcodeName(resp.Rcode), c.addr)}
		}
		rrs, final, err := chase(resp.Answer, target, qtype)
		if err != nil {
			return nil, Result{}, &Error{Name: name, Kind: Permanent, Err: err}
		}
		if len(rrs) > 0 {
			return rrs, res, nil
		}
		if final == target {
			return nil, res, &Error{Name: name, Kind: NotFound, Err: errNoData}
		}
		seen[target] = true
		if seen[final] {
			return nil, Result{}, &Error{Name: name, Kind: Permanent, Err: errors.New("CNAME loop")}
		}
		target = final
	}
	return nil, Result{}, &Error{Name: name, Kind: Permanent, Err: fmt.Errorf("more than %d CNAMEs", maxCNAMEs)}
}

// chase follows the CNAME chain from target through answer (RFC 1034
// §3.6.2) and returns the records of type qtype owned by its last name.
func chase(answer []dns.RR, target string, qtype uint16) ([]dns.RR, string, error) {
	cnames := map[string]string{}
	for _, rr := range answer {
		if cn, ok := rr.(*dns.CNAME); ok && rr.Header().Class == dns.ClassINET {
			cnames[strings.ToLower(cn.Hdr.Name)] = strings.ToLower(dns.Fqdn(cn.Target))
		}
	}
	cur := target
	if qtype != dns.TypeCNAME {
		for hops := 0; ; hops++ {
			next, ok := cnames[cur]
			if !ok {
				break
			}
			if hops >= maxCNAMEs {
				return nil, "", fmt.Errorf("CNAME chain from %s too long or looping", target)
			}
			cur = next
		}
	}
	var out []dns.RR
	for _, rr := range answer {
		h := rr.Header()
		if h.Rrtype == qtype && h.Class == dns.ClassINET && strings.EqualFold(h.Name, cur) {
			out = append(out, rr)
		}
	}
	return out, cur, nil
}

// exchange sends one query: over UDP, retried once after a timeout, and
// over TCP when the UDP answer is truncated or does not fit the buffer.
func (c *client) exchange(ctx context.Context, qname string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	m.RecursionDesired = true
	// RFC 6840 §5.7: the AD bit in a query asks for the AD bit in the answer.
	m.AuthenticatedData = true
	// RFC 3225 §3: DO signals that we understand DNSSEC.
	m.SetEdns0(ednsBufferSize, true)

	udp := &dns.Client{Net: "udp", UDPSize: ednsBufferSize, Timeout: c.timeout}
	resp, _, err := udp.ExchangeContext(ctx, m, c.addr)
	if err != nil && isTimeout(err) && ctx.Err() == nil {
		m.Id = dns.Id()
		resp, _, err = udp.ExchangeContext(ctx, m, c.addr)
	}
	tcp := &dns.Client{Net: "tcp", Timeout: c.timeout}
	switch {
	case err == nil && resp.Truncated:
		m.Id = dns.Id()
		resp, _, err = tcp.ExchangeContext(ctx, m, c.addr)
	case err != nil && errorKind(err) == Permanent && ctx.Err() == nil:
		// A datagram that does not unpack, e.g. one cut at our buffer size
		// by a server ignoring EDNS0: TCP has no such limit. If TCP fails
		// too, the UDP error is the one worth reporting.
		m.Id = dns.Id()
		if tresp, _, terr := tcp.ExchangeContext(ctx, m, c.addr); terr == nil {
			resp, err = tresp, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("query %s %s at %s: %w", qname, dns.TypeToString[qtype], c.addr, err)
	}
	// RFC 5452 §9.1: the answer must be for the question asked.
	if len(resp.Question) > 0 {
		q := resp.Question[0]
		if len(resp.Question) != 1 || q.Qtype != qtype || !strings.EqualFold(q.Name, qname) {
			return nil, fmt.Errorf("query %s %s at %s: %w", qname, dns.TypeToString[qtype], c.addr, errMismatch)
		}
	}
	return resp, nil
}

// errMismatch marks an answer to a different question.
var errMismatch = errors.New("answer does not match the question")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errorKind classifies a transport error: network trouble is temporary,
// an answer that cannot be parsed is permanent.
func errorKind(err error) Kind {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, dns.ErrId), errors.Is(err, errMismatch), errors.As(err, &ne):
		return Temporary
	}
	return Permanent
}

func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return "RCODE " + s
	}
	return fmt.Sprintf("RCODE %d", rcode)
}

// toASCIIName returns name lowercased without its trailing dot, after
// checking it with validName. Internationalised names must be converted to
// A-labels (RFC 5891 §5) by the caller.
func toASCIIName(name string) (string, error) {
	n := strings.TrimSuffix(name, ".")
	if !validName(n) {
		return "", errors.New("invalid domain name (internationalised names must be given as A-labels)")
	}
	return strings.ToLower(n), nil
}

// validName accepts an ASCII domain name (RFC 1035 §2.3.1 labels, plus the
// underscore of service labels such as _25._tcp or _mta-sts): labels of
// 1-63 characters, at most 253 characters without the trailing dot.
// Internationalised names must be given as A-labels (RFC 5891).
func validName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// unescapeTXT undoes the presentation-format escaping (RFC 1035 §5.1:
// "\X" and "\DDD") that github.com/miekg/dns applies to TXT strings.
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b = append(b, s[i])
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if v <= 255 {
				b = append(b, byte(v))
				i += 3
				continue
			}
		}
		b = append(b, s[i+1])
		i++
	}
	return string(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
