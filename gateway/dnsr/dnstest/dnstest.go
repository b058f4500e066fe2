// Package dnstest runs a small, real DNS server on loopback for tests.
//
// It answers like a recursive resolver (RA set) from zone data the test
// sets up: CNAME chains are followed inside the answer, unknown names get
// NXDOMAIN, known names without records of the asked type get NOERROR with
// an empty answer (NODATA), and names can be marked DNSSEC-authentic (AD)
// or made to fail with a chosen RCODE. UDP answers larger than the client's
// EDNS0 buffer (512 bytes without EDNS0) are truncated with TC set, so
// clients must retry over TCP, which is served on the same port.
package dnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/postern-mail/postern/gateway/dnsr"
)

// ttl is the TTL of every record served.
const ttl = 60

// Server is a DNS server on 127.0.0.1 serving UDP and TCP on one port.
type Server struct {
	Addr string // "127.0.0.1:port"

	udp, tcp *dns.Server

	mu      sync.Mutex
	names   map[string]*node // key: lowercase FQDN
	queries []Query
	closed  bool
}

// Query records one question the server received.
type Query struct {
	Name string // lowercase FQDN, e.g. "example.org."
	Type uint16 // dns.TypeMX etc.
	Net  string // "udp" or "tcp"
}

type node struct {
	mx    []dnsr.MX
	a     []netip.Addr
	aaaa  []netip.Addr
	txt   []string
	tlsa  []dnsr.TLSA
	cname string // FQDN target, "" if none
	ad    bool
	rcode int // dns.RcodeSuccess: answer normally
}

// Start serves UDP and TCP on 127.0.0.1, on a random free port that is the
// same for both, until Close.
func Start() (*Server, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("dnstest: listen udp: %w", err)
		}
		addr := pc.LocalAddr().String()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			// The port is taken for TCP; try another one.
			pc.Close()
			lastErr = err
			continue
		}
		s := &Server{Addr: addr, names: map[string]*node{}}
		if err := s.serve(pc, ln); err != nil {
			return nil, err
		}
		return s, nil
	}
	return nil, fmt.Errorf("dnstest: no port free for both UDP and TCP: %w", lastErr)
}

func (s *Server) serve(pc net.PacketConn, ln net.Listener) error {
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)}
	s.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.handle)}
	started := make(chan struct{}, 2)
	errc := make(chan error, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				errc <- err
			}
		}()
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for n := 0; n < 2; {
		select {
		case <-started:
			n++
		case err := <-errc:
			pc.Close()
			ln.Close()
			return fmt.Errorf("dnstest: serve: %w", err)
		case <-timeout.C:
			pc.Close()
			ln.Close()
			return errors.New("dnstest: server did not start")
		}
	}
	return nil
}

// Close stops the server. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
	if err != nil {
		return fmt.Errorf("dnstest: close: %w", err)
	}
	return nil
}

// fqdn is the map key for name: lowercase, with a trailing dot.
func fqdn(name string) string {
	return dns.Fqdn(strings.ToLower(strings.TrimSpace(name)))
}

// nodeLocked returns the node for name, creating it; s.mu must be held.
func (s *Server) nodeLocked(name string) *node {
	k := fqdn(name)
	n := s.names[k]
	if n == nil {
		n = &node{}
		s.names[k] = n
	}
	return n
}

// SetMX replaces the MX records of domain. MX{Host: ""} (or ".") is served
// as the null MX target "." of RFC 7505.
func (s *Server) SetMX(domain string, mx ...dnsr.MX) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodeLocked(domain).mx = append([]dnsr.MX(nil), mx...)
}

// SetA replaces the addresses of host: IPv4 strings are served as A
// records, IPv6 strings as AAAA. It panics on a string that is not an IP
// address, as regexp.MustCompile does on a bad pattern: that is a mistake
// in the test itself.
func (s *Server) SetA(host string, ips ...string) {
	var a, aaaa []netip.Addr
	for _, ip := range ips {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			panic(fmt.Sprintf("dnstest: SetA(%q): %v", host, err))
		}
		if addr.Unmap().Is4() {
			a = append(a, addr.Unmap())
		} else {
			aaaa = append(aaaa, addr)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodeLocked(host)
	n.a, n.aaaa = a, aaaa
}

// SetTXT replaces the TXT records of name, one record per string; strings
// longer than 255 bytes are split into several character-strings of one
// record (RFC 1035 §3.3.14), which clients concatenate.
func (s *Server) SetTXT(name string, txt ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodeLocked(name).txt = append([]string(nil), txt...)
}

// SetTLSA replaces the TLSA records at name, e.g. "_25._tcp.mx.example".
func (s *Server) SetTLSA(name string, rr ...dnsr.TLSA) {
	recs := make([]dnsr.TLSA, len(rr))
	for i, r := range rr {
		recs[i] = r
		recs[i].Data = append([]byte(nil), r.Data...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodeLocked(name).tlsa = recs
}

// SetCNAME makes name an alias of target; "" removes the alias. While set,
// the alias hides any other records of name.
func (s *Server) SetCNAME(name, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if target == "" {
		s.nodeLocked(name).cname = ""
		return
	}
	s.nodeLocked(name).cname = fqdn(target)
}

// SetAuthentic makes answers for name carry the AD bit (when the query set
// DO or AD, RFC 6840 §5.7). An answer through a CNAME chain is authentic
// only if every name on the chain is.
func (s *Server) SetAuthentic(name string, ad bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodeLocked(name).ad = ad
}

// SetRcode makes every query for name (or reaching it through a CNAME)
// fail with rcode, e.g. dns.RcodeServerFailure; dns.RcodeSuccess restores
// normal answers.
func (s *Server) SetRcode(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodeLocked(name).rcode = rcode
}

// Queries returns the questions received so far, in order.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

// handle answers one query.
func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	resp := s.answer(req, network)
	if network == "udp" {
		// RFC 6891 §7: the client's EDNS0 buffer size, else 512 (RFC 1035
		// §4.2.1); dns.Msg.Truncate sets TC when records must go.
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	// A failed write means the client went away; nothing to do.
	_ = w.WriteMsg(resp)
}

func (s *Server) answer(req *dns.Msg, network string) *dns.Msg {
	resp := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeFormatError)
		return resp
	}
	resp.SetReply(req)
	resp.RecursionAvailable = true
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	opt := req.IsEdns0()
	if opt != nil {
		resp.SetEdns0(1232, opt.Do())
	}
	wantAD := req.AuthenticatedData || (opt != nil && opt.Do())

	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries = append(s.queries, Query{Name: name, Type: q.Qtype, Net: network})

	if q.Qclass != dns.ClassINET {
		resp.Rcode = dns.RcodeRefused
		return resp
	}
	ad := true
	seen := map[string]bool{}
	for cur := name; ; {
		n := s.names[cur]
		if n == nil {
			if !s.hasDescendantLocked(cur) {
				resp.Rcode = dns.RcodeNameError
			}
			// Otherwise an empty non-terminal: NODATA (RFC 8020 §2).
			ad = false
			break
		}
		if n.rcode != dns.RcodeSuccess {
			resp.Rcode = n.rcode
			resp.Answer = nil
			ad = false
			break
		}
		ad = ad && n.ad
		if n.cname != "" && q.Qtype != dns.TypeCNAME {
			if seen[cur] || len(seen) > 16 {
				// A CNAME loop: what a resolver reports as SERVFAIL.
				resp.Rcode = dns.RcodeServerFailure
				resp.Answer = nil
				ad = false
				break
			}
			seen[cur] = true
			resp.Answer = append(resp.Answer, &dns.CNAME{Hdr: hdr(cur, dns.TypeCNAME), Target: n.cname})
			cur = n.cname
			continue
		}
		resp.Answer = append(resp.Answer, records(cur, q.Qtype, n)...)
		break
	}
	resp.AuthenticatedData = wantAD && ad && resp.Rcode == dns.RcodeSuccess
	return resp
}

// hasDescendantLocked reports whether some name below name has data.
func (s *Server) hasDescendantLocked(name string) bool {
	suffix := "." + name
	if name == "." {
		suffix = "."
	}
	for k := range s.names {
		if strings.HasSuffix(k, suffix) && k != name {
			return true
		}
	}
	return false
}

func hdr(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: ttl}
}

// records builds the RRset of type qtype at name.
func records(name string, qtype uint16, n *node) []dns.RR {
	var out []dns.RR
	switch qtype {
	case dns.TypeMX:
		for _, mx := range n.mx {
			target := "."
			if h := strings.TrimSuffix(mx.Host, "."); h != "" {
				target = fqdn(h)
			}
			out = append(out, &dns.MX{Hdr: hdr(name, dns.TypeMX), Preference: mx.Pref, Mx: target})
		}
	case dns.TypeA:
		for _, ip := range n.a {
			out = append(out, &dns.A{Hdr: hdr(name, dns.TypeA), A: net.IP(ip.AsSlice())})
		}
	case dns.TypeAAAA:
		for _, ip := range n.aaaa {
			out = append(out, &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: net.IP(ip.AsSlice())})
		}
	case dns.TypeTXT:
		for _, t := range n.txt {
			out = append(out, &dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: txtStrings(t)})
		}
	case dns.TypeTLSA:
		for _, t := range n.tlsa {
			out = append(out, &dns.TLSA{Hdr: hdr(name, dns.TypeTLSA), Usage: t.Usage, Selector: t.Selector,
				MatchingType: t.MatchingType, Certificate: fmt.Sprintf("%x", t.Data)})
		}
	case dns.TypeCNAME:
		if n.cname != "" {
			out = append(out, &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: n.cname})
		}
	}
	return out
}

// txtStrings splits t into character-strings of at most 255 bytes, escaped
// for github.com/miekg/dns, which reads "\" as the start of an escape.
func txtStrings(t string) []string {
	out := []string{}
	for {
		chunk := t
		if len(chunk) > 255 {
			chunk = chunk[:255]
		}
		out = append(out, strings.ReplaceAll(chunk, `\`, `\\`))
		t = t[len(chunk):]
		if t == "" {
			return out
		}
	}
}
