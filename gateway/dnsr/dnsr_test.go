package dnsr_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/dnsr/dnstest"
)

func startServer(t *testing.T) *dnstest.Server {
	t.Helper()
	s, err := dnstest.Start()
	if err != nil {
		t.Fatalf("dnstest.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func kindOf(t *testing.T, err error) dnsr.Kind {
	t.Helper()
	var e *dnsr.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *dnsr.Error", err, err)
	}
	return e.Kind
}

func TestMXSorted(t *testing.T) {
	s := startServer(t)
	s.SetMX("Example.ORG.",
		dnsr.MX{Host: "mx30.example.org", Pref: 30},
		dnsr.MX{Host: "MX10.Example.Org.", Pref: 10},
		dnsr.MX{Host: "mx20a.example.org", Pref: 20},
		dnsr.MX{Host: "mx20b.example.org", Pref: 20},
	)
	r := dnsr.NewClient(s.Addr, 2*time.Second)
	orders := map[string]bool{}
	for range 40 {
		mxs, res, err := r.LookupMX(ctxT(t), "example.org")
		if err != nil {
			t.Fatalf("LookupMX: %v", err)
		}
		if res.Authentic {
			t.Errorf("Authentic without AD")
		}
		if len(mxs) != 4 || mxs[0] != (dnsr.MX{Host: "mx10.example.org", Pref: 10}) || mxs[3] != (dnsr.MX{Host: "mx30.example.org", Pref: 30}) {
			t.Fatalf("MX = %v", mxs)
		}
		if mxs[1].Pref != 20 || mxs[2].Pref != 20 {
			t.Fatalf("MX = %v", mxs)
		}
		orders[mxs[1].Host] = true
	}
	// RFC 5321 §5.1: equal preferences in random order.
	if !orders["mx20a.example.org"] || !orders["mx20b.example.org"] {
		t.Errorf("equal-preference MX hosts never reordered in 40 look-ups: %v", orders)
	}
}

func TestNullMX(t *testing.T) {
	s := startServer(t)
	s.SetMX("nomail.example", dnsr.MX{Host: "", Pref: 0})
	s.SetMX("mixed.example", dnsr.MX{Host: ".", Pref: 0}, dnsr.MX{Host: "mx.mixed.example", Pref: 10})
	r := dnsr.NewClient(s.Addr, 2*time.Second)

	mxs, _, err := r.LookupMX(ctxT(t), "nomail.example")
	if err != nil || len(mxs) != 1 || mxs[0] != (dnsr.MX{}) {
		t.Errorf("null MX: %v, %v", mxs, err)
	}
	mxs, _, err = r.LookupMX(ctxT(t), "mixed.example")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "mx.mixed.example" {
		t.Errorf("null MX among others: %v, %v", mxs, err)
	}
}

func TestErrorKinds(t *testing.T) {
	s := startServer(t)
	s.SetA("hostonly.example", "192.0.2.7")
	s.SetMX("broken.example", dnsr.MX{Host: "mx.broken.example", Pref: 10})
	s.SetRcode("broken.example", dns.RcodeServerFailure)
	s.SetMX("refused.example", dnsr.MX{Host: "mx.refused.example", Pref: 10})
	s.SetRcode("refused.example", dns.RcodeRefused)
	r := dnsr.NewClient(s.Addr, 2*time.Second)
	ctx := ctxT(t)

	// NXDOMAIN.
	_, _, err := r.LookupMX(ctx, "nowhere.example")
	if !dnsr.IsNotFound(err) || dnsr.IsTemporary(err) {
		t.Errorf("NXDOMAIN: %v", err)
	}
	var e *dnsr.Error
	if !errors.As(err, &e) || e.Name != "nowhere.example" || e.Kind != dnsr.NotFound {
		t.Errorf("NXDOMAIN error %#v", e)
	}
	if !strings.Contains(err.Error(), "nowhere.example") {
		t.Errorf("error text %q lacks the name", err)
	}
	// NODATA: the name exists without MX records.
	_, _, err = r.LookupMX(ctx, "hostonly.example")
	if !dnsr.IsNotFound(err) {
		t.Errorf("NODATA: %v", err)
	}
	// SERVFAIL is temporary.
	_, _, err = r.LookupMX(ctx, "broken.example")
	if !dnsr.IsTemporary(err) || dnsr.IsNotFound(err) {
		t.Errorf("SERVFAIL: %v", err)
	}
	// Any other RCODE is permanent.
	_, _, err = r.LookupMX(ctx, "refused.example")
	if kindOf(t, err) != dnsr.Permanent {
		t.Errorf("REFUSED: %v", err)
	}
	// SetRcode(RcodeSuccess) restores normal answers.
	s.SetRcode("broken.example", dns.RcodeSuccess)
	if mxs, _, err := r.LookupMX(ctx, "broken.example"); err != nil || len(mxs) != 1 {
		t.Errorf("after restoring: %v %v", mxs, err)
	}
	// A malformed name is permanent and never sent.
	before := len(s.Queries())
	for _, name := range []string{"", "bad..name", "spa ce.example", "bücher.example", strings.Repeat("a", 64) + ".example"} {
		_, _, err := r.LookupTXT(ctx, name)
		if kindOf(t, err) != dnsr.Permanent {
			t.Errorf("name %q: %v", name, err)
		}
	}
	if _, _, err := r.LookupTLSA(ctx, 0, "mx.example"); kindOf(t, err) != dnsr.Permanent {
		t.Errorf("port 0: %v", err)
	}
	if n := len(s.Queries()); n != before {
		t.Errorf("%d queries sent for invalid names", n-before)
	}
	// A cancelled context is temporary.
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := r.LookupMX(cctx, "example.org"); !dnsr.IsTemporary(err) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestAuthentic(t *testing.T) {
	s := startServer(t)
	s.SetMX("secure.example", dnsr.MX{Host: "mx.secure.example", Pref: 10})
	s.SetAuthentic("secure.example", true)
	s.SetMX("plain.example", dnsr.MX{Host: "mx.plain.example", Pref: 10})
	s.SetAuthentic("nodata.example", true) // exists, no records, authenticated denial

	r := dnsr.NewClient(s.Addr, 2*time.Second)
	ctx := ctxT(t)
	if _, res, err := r.LookupMX(ctx, "secure.example"); err != nil || !res.Authentic {
		t.Errorf("secure.example from loopback: %v %v", res, err)
	}
	if _, res, err := r.LookupMX(ctx, "plain.example"); err != nil || res.Authentic {
		t.Errorf("plain.example: %v %v", res, err)
	}
	if _, res, err := r.LookupTLSA(ctx, 25, "nodata.example"); !dnsr.IsNotFound(err) || res.Authentic {
		t.Errorf("NXDOMAIN for _25._tcp.nodata.example: %v %v", res, err)
	}
	if _, res, err := r.LookupTXT(ctx, "nodata.example"); !dnsr.IsNotFound(err) || !res.Authentic {
		t.Errorf("authenticated NODATA: %v %v", res, err)
	}

	// The same answers through a resolver that is not on loopback: the AD
	// bit must be ignored.
	u := dnsr.NewClientUntrusted(s.Addr, 2*time.Second)
	if _, res, err := u.LookupMX(ctx, "secure.example"); err != nil || res.Authentic {
		t.Errorf("secure.example from an untrusted resolver: %v %v", res, err)
	}
	// The system resolver never reports Authentic.
	sys := dnsr.NewSystemTLSAServers(s.Addr)
	s.SetTLSA("_25._tcp.mx.secure.example", dnsr.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{1, 2, 3}})
	s.SetAuthentic("_25._tcp.mx.secure.example", true)
	if _, res, err := r.LookupTLSA(ctx, 25, "mx.secure.example"); err != nil || !res.Authentic {
		t.Errorf("TLSA from loopback client: %v %v", res, err)
	}
	recs, res, err := sys.LookupTLSA(ctx, 25, "mx.secure.example")
	if err != nil || res.Authentic || len(recs) != 1 {
		t.Errorf("TLSA from system resolver: %v %v %v", recs, res, err)
	}
}

func TestCNAMEChain(t *testing.T) {
	s := startServer(t)
	s.SetCNAME("alias.example", "MID.example.")
	s.SetCNAME("mid.example", "mx.real.example")
	s.SetA("mx.real.example", "192.0.2.1", "2001:db8::1", "192.0.2.2")
	s.SetTXT("mx.real.example", "hello")
	s.SetCNAME("dangling.example", "gone.example")
	s.SetCNAME("loop1.example", "loop2.example")
	s.SetCNAME("loop2.example", "loop1.example")
	r := dnsr.NewClient(s.Addr, 2*time.Second)
	ctx := ctxT(t)

	ips, res, err := r.LookupIP(ctx, "alias.example")
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::1")}
	if err != nil || !slices.Equal(ips, want) || res.Authentic {
		t.Errorf("LookupIP via CNAMEs = %v %v %v, want %v", ips, res, err, want)
	}
	if txt, _, err := r.LookupTXT(ctx, "ALIAS.example."); err != nil || !slices.Equal(txt, []string{"hello"}) {
		t.Errorf("LookupTXT via CNAMEs = %q %v", txt, err)
	}
	// Authentic only when every link of the chain is.
	for _, n := range []string{"alias.example", "mid.example"} {
		s.SetAuthentic(n, true)
	}
	if _, res, _ := r.LookupIP(ctx, "alias.example"); res.Authentic {
		t.Errorf("chain with an unsigned target reported authentic")
	}
	s.SetAuthentic("mx.real.example", true)
	if _, res, err := r.LookupIP(ctx, "alias.example"); err != nil || !res.Authentic {
		t.Errorf("fully signed chain: %v %v", res, err)
	}

	if _, _, err := r.LookupIP(ctx, "dangling.example"); !dnsr.IsNotFound(err) {
		t.Errorf("CNAME to a missing name: %v", err)
	}
	if _, _, err := r.LookupIP(ctx, "loop1.example"); err == nil || dnsr.IsNotFound(err) {
		t.Errorf("CNAME loop: %v", err)
	}
}

func TestLookupIPFamilies(t *testing.T) {
	s := startServer(t)
	s.SetA("v6only.example", "2001:db8::25")
	s.SetA("v4only.example", "198.51.100.25")
	s.SetA("half.example", "198.51.100.26")
	s.SetAuthentic("half.example", true)
	r := dnsr.NewClient(s.Addr, 2*time.Second)
	ctx := ctxT(t)
	if ips, _, err := r.LookupIP(ctx, "v6only.example"); err != nil || len(ips) != 1 || !ips[0].Is6() {
		t.Errorf("v6 only: %v %v", ips, err)
	}
	if ips, _, err := r.LookupIP(ctx, "v4only.example"); err != nil || len(ips) != 1 || !ips[0].Is4() {
		t.Errorf("v4 only: %v %v", ips, err)
	}
	// A NODATA AAAA that is authentic keeps the answer authentic.
	if _, res, err := r.LookupIP(ctx, "half.example"); err != nil || !res.Authentic {
		t.Errorf("authentic A with authentic NODATA AAAA: %v %v", res, err)
	}
	if _, _, err := r.LookupIP(ctx, "none.example"); !dnsr.IsNotFound(err) {
		t.Errorf("no addresses: %v", err)
	}
}

func TestTLSA(t *testing.T) {
	s := startServer(t)
	sha := bytes.Repeat([]byte{0xab}, 32)
	full := bytes.Repeat([]byte{0x30, 0x82}, 300) // a 600-byte "certificate"
	s.SetTLSA("_25._tcp.mx.example",
		dnsr.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: sha},
		dnsr.TLSA{Usage: 2, Selector: 0, MatchingType: 0, Data: full},
	)
	r := dnsr.NewClient(s.Addr, 2*time.Second)
	recs, _, err := r.LookupTLSA(ctxT(t), 25, "MX.example.")
	if err != nil {
		t.Fatalf("LookupTLSA: %v", err)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	slices.SortFunc(recs, func(a, b dnsr.TLSA) int { return int(b.Usage) - int(a.Usage) })
	if recs[0].Usage != 3 || recs[0].Selector != 1 || recs[0].MatchingType != 1 || !bytes.Equal(recs[0].Data, sha) {
		t.Errorf("DANE-EE record = %+v", recs[0])
	}
	if recs[1].Usage != 2 || recs[1].Selector != 0 || recs[1].MatchingType != 0 || !bytes.Equal(recs[1].Data, full) {
		t.Errorf("DANE-TA record = %+v", recs[1])
	}
	if _, _, err := r.LookupTLSA(ctxT(t), 587, "mx.example"); !dnsr.IsNotFound(err) {
		t.Errorf("other port: %v", err)
	}
}

func TestTCPFallback(t *testing.T) {
	s := startServer(t)
	var big []string
	for i := range 8 {
		big = append(big, strings.Repeat(string(rune('a'+i)), 600))
	}
	odd := "v=STSv1; id=\\x\"q\x01\x00 \u00fc;" // escapes must round-trip
	s.SetTXT("big.example", append(big, odd)...)
	r := dnsr.NewClient(s.Addr, 2*time.Second)
	txts, _, err := r.LookupTXT(ctxT(t), "big.example")
	if err != nil {
		t.Fatalf("LookupTXT: %v", err)
	}
	slices.Sort(txts)
	want := append(slices.Clone(big), odd)
	slices.Sort(want)
	if !slices.Equal(txts, want) {
		t.Errorf("TXT over TCP: got %d strings, want %d; first %q", len(txts), len(want), txts[0][:10])
	}
	var udp, tcp int
	for _, q := range s.Queries() {
		if q.Name == "big.example." && q.Type == dns.TypeTXT {
			if q.Net == "tcp" {
				tcp++
			} else {
				udp++
			}
		}
	}
	if udp != 1 || tcp != 1 {
		t.Errorf("queries: %d over UDP, %d over TCP; want 1 and 1", udp, tcp)
	}
}

// udpResponder answers DNS queries on a loopback UDP port with reply,
// which may return nil to stay silent.
func udpResponder(t *testing.T, reply func(n int, req *dns.Msg) []byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for n := 1; ; n++ {
			l, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req := new(dns.Msg)
			if req.Unpack(buf[:l]) != nil {
				continue
			}
			if out := reply(n, req); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestRetryAfterTimeout(t *testing.T) {
	var seen atomic.Int32
	addr := udpResponder(t, func(n int, req *dns.Msg) []byte {
		seen.Add(1)
		if n == 1 {
			return nil // drop the first query
		}
		resp := new(dns.Msg).SetReply(req)
		resp.Answer = append(resp.Answer, &dns.TXT{
			Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: []string{"v=spf1 -all"}})
		out, _ := resp.Pack()
		return out
	})
	r := dnsr.NewClient(addr, 300*time.Millisecond)
	txt, _, err := r.LookupTXT(ctxT(t), "example.org")
	if err != nil || !slices.Equal(txt, []string{"v=spf1 -all"}) {
		t.Errorf("after one lost datagram: %q %v", txt, err)
	}
	if n := seen.Load(); n != 2 {
		t.Errorf("%d queries, want 2", n)
	}

	// A resolver that never answers: temporary, after exactly one retry.
	seen.Store(0)
	silent := udpResponder(t, func(int, *dns.Msg) []byte { seen.Add(1); return nil })
	start := time.Now()
	_, _, err = dnsr.NewClient(silent, 200*time.Millisecond).LookupMX(ctxT(t), "example.org")
	if !dnsr.IsTemporary(err) {
		t.Errorf("silent resolver: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gave up after %v", d)
	}
	if n := seen.Load(); n != 2 {
		t.Errorf("%d queries to a silent resolver, want 2", n)
	}
}

func TestMalformedAndUnreachable(t *testing.T) {
	// A reply with the right ID that claims an answer it lacks.
	addr := udpResponder(t, func(_ int, req *dns.Msg) []byte {
		out, _ := new(dns.Msg).SetReply(req).Pack()
		out[7] = 1 // ANCOUNT = 1, and a record whose owner name overruns
		return append(out, 0x3f, 'a', 'b')
	})
	_, _, err := dnsr.NewClient(addr, time.Second).LookupMX(ctxT(t), "example.org")
	if kindOf(t, err) != dnsr.Permanent {
		t.Errorf("malformed answer: %v", err)
	}

	// An answer to another question is not accepted.
	addr = udpResponder(t, func(_ int, req *dns.Msg) []byte {
		resp := new(dns.Msg).SetReply(req)
		resp.Question[0].Name = "other.example."
		out, _ := resp.Pack()
		return out
	})
	if _, _, err := dnsr.NewClient(addr, time.Second).LookupMX(ctxT(t), "example.org"); err == nil {
		t.Errorf("answer to another question accepted")
	}

	// Nothing listening: temporary.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	if _, _, err := dnsr.NewClient(closed, 300*time.Millisecond).LookupMX(ctxT(t), "example.org"); !dnsr.IsTemporary(err) {
		t.Errorf("closed port: %v", err)
	}
}

func TestSystemResolver(t *testing.T) {
	r := dnsr.NewSystem()
	ctx := ctxT(t)
	ips, res, err := r.LookupIP(ctx, "localhost")
	if err != nil {
		t.Fatalf("LookupIP(localhost): %v", err)
	}
	if len(ips) == 0 || res.Authentic {
		t.Errorf("localhost: %v %v", ips, res)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			t.Errorf("localhost resolved to %v", ip)
		}
	}
	for _, name := range []string{"bad..name", "spa ce.example", ""} {
		_, _, err := r.LookupMX(ctx, name)
		if kindOf(t, err) != dnsr.Permanent {
			t.Errorf("LookupMX(%q): %v", name, err)
		}
		_, _, err = r.LookupIP(ctx, name)
		if kindOf(t, err) != dnsr.Permanent {
			t.Errorf("LookupIP(%q): %v", name, err)
		}
	}
	if _, _, err := r.LookupTLSA(ctx, 70000, "mx.example"); kindOf(t, err) != dnsr.Permanent {
		t.Errorf("bad port: %v", err)
	}
	// Errors of net.Resolver keep their kind.
	for _, c := range []struct {
		err  error
		kind dnsr.Kind
	}{
		{&net.DNSError{Err: "no such host", Name: "x.example", IsNotFound: true}, dnsr.NotFound},
		{&net.DNSError{Err: "i/o timeout", Name: "x.example", IsTimeout: true}, dnsr.Temporary},
		{&net.DNSError{Err: "server misbehaving", Name: "x.example", IsTemporary: true}, dnsr.Temporary},
		{&net.DNSError{Err: "cannot unmarshal DNS message", Name: "x.example"}, dnsr.Permanent},
		{context.DeadlineExceeded, dnsr.Temporary},
	} {
		if k := kindOf(t, dnsr.SystemError("x.example", c.err)); k != c.kind {
			t.Errorf("%v mapped to %v, want %v", c.err, k, c.kind)
		}
	}
}
