package dnsr

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestIsLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:53":            true,
		"127.0.0.53:53":           true,
		"[::1]:53":                true,
		"[::ffff:127.0.0.1]:5353": true,
		"localhost:53":            false, // a name, not a loopback IP
		"192.0.2.1:53":            false,
		"[2001:db8::1]:53":        false,
		"8.8.8.8:53":              false,
		"127.0.0.1":               false, // no port: not "host:port"
	} {
		if got := isLoopbackAddr(addr); got != want {
			t.Errorf("isLoopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
	if c := NewClient("127.0.0.1", 0).(*client); c.addr != "127.0.0.1:53" || !c.trustAD || c.timeout != defaultTimeout {
		t.Errorf("NewClient without port: %+v", c)
	}
	if c := NewClient("::1", time.Second).(*client); c.addr != "[::1]:53" || !c.trustAD {
		t.Errorf("NewClient(::1): %+v", c)
	}
	if c := NewClient("192.0.2.53:53", time.Second).(*client); c.trustAD {
		t.Errorf("remote resolver trusted: %+v", c)
	}
}

func TestSortMX(t *testing.T) {
	got := sortMX([]MX{{"B.example.", 20}, {"a.example", 10}, {".", 0}, {"c.example", 5}})
	want := []MX{{"c.example", 5}, {"a.example", 10}, {"b.example", 20}}
	if !slices.Equal(got, want) {
		t.Errorf("sortMX = %v, want %v", got, want)
	}
	if got := sortMX([]MX{{".", 0}}); !slices.Equal(got, []MX{{"", 0}}) {
		t.Errorf("null MX = %v", got)
	}
	if got := sortMX(nil); len(got) != 0 {
		t.Errorf("empty = %v", got)
	}
}

func TestUnescapeTXT(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:          "plain",
		`a\"b\\c`:        `a"b\c`,
		`\000\255x\0019`: "\x00\xffx\x019",
		`trail\`:         `trail\`,
		`\999`:           "999",
	} {
		if got := unescapeTXT(in); got != want {
			t.Errorf("unescapeTXT(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"example.org", "EXAMPLE.org.", "_25._tcp.mx.example", "_mta-sts.example", "localhost", "a-b.c"} {
		if !validName(ok) {
			t.Errorf("validName(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", ".", "a..b", "sp ace.example", "bücher.example", "x/y", strings.Repeat("a", 64), strings.Repeat("abcd.", 51) + "ab"} {
		if validName(bad) {
			t.Errorf("validName(%q) = true", bad)
		}
	}
}

func TestChase(t *testing.T) {
	cn := func(from, to string) dns.RR {
		return &dns.CNAME{Hdr: dns.RR_Header{Name: from, Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: to}
	}
	a := &dns.A{Hdr: dns.RR_Header{Name: "C.example.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(192, 0, 2, 1)}
	other := &dns.A{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(192, 0, 2, 9)}
	rrs, final, err := chase([]dns.RR{other, a, cn("b.example.", "c.example."), cn("a.example.", "B.example.")}, "a.example.", dns.TypeA)
	if err != nil || final != "c.example." || len(rrs) != 1 || rrs[0] != a {
		t.Errorf("chase = %v %q %v", rrs, final, err)
	}
	if _, _, err := chase([]dns.RR{cn("a.example.", "b.example."), cn("b.example.", "a.example.")}, "a.example.", dns.TypeA); err == nil {
		t.Errorf("CNAME loop not detected")
	}
	if k := Kind(0).String(); k != "Kind(0)" {
		t.Errorf("Kind(0) = %q", k)
	}
}

// TestCNAMERequery checks that a CNAME whose target the answer lacks (as a
// non-recursive server answers) is followed with a second query.
func TestCNAMERequery(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg).SetReply(req)
		resp.AuthenticatedData = true
		q := req.Question[0]
		switch strings.ToLower(q.Name) {
		case "alias.example.":
			resp.Answer = append(resp.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: "target.example."})
		case "target.example.":
			if q.Qtype == dns.TypeMX {
				resp.Answer = append(resp.Answer, &dns.MX{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeMX, Class: dns.ClassINET}, Preference: 5, Mx: "mx.target.example."})
			}
		case "self.example.":
			resp.Answer = append(resp.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: "self2.example."})
		case "self2.example.":
			resp.Answer = append(resp.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: "self.example."})
		default:
			resp.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(resp)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })

	r := NewClient(pc.LocalAddr().String(), time.Second)
	ctx := context.Background()
	mxs, res, err := r.LookupMX(ctx, "alias.example")
	if err != nil || !slices.Equal(mxs, []MX{{"mx.target.example", 5}}) || !res.Authentic {
		t.Errorf("LookupMX through re-queried CNAME = %v %v %v", mxs, res, err)
	}
	if _, _, err := r.LookupTXT(ctx, "alias.example"); !IsNotFound(err) {
		t.Errorf("NODATA at the CNAME target: %v", err)
	}
	_, _, err = r.LookupTXT(ctx, "self.example")
	if err == nil || IsNotFound(err) || IsTemporary(err) {
		t.Errorf("CNAME loop across answers: %v", err)
	}
}

// FuzzTXTRoundTrip checks that any TXT content survives the escaping of
// github.com/miekg/dns and unescapeTXT.
func FuzzTXTRoundTrip(f *testing.F) {
	f.Add([]byte(`v=STSv1; id=20240101`))
	f.Add([]byte("\\\"\x00\xff\\123"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 255 {
			data = data[:255]
		}
		raw := string(data)
		rr := &dns.TXT{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{strings.ReplaceAll(raw, `\`, `\\`)}}
		m := new(dns.Msg).SetQuestion("x.example.", dns.TypeTXT)
		m.Answer = []dns.RR{rr}
		wire, err := m.Pack()
		if err != nil {
			t.Fatalf("pack: %v", err)
		}
		var back dns.Msg
		if err := back.Unpack(wire); err != nil {
			t.Fatalf("unpack: %v", err)
		}
		got := unescapeTXT(strings.Join(back.Answer[0].(*dns.TXT).Txt, ""))
		if got != raw {
			t.Fatalf("round trip: %q became %q", raw, got)
		}
	})
}

// FuzzResponse feeds arbitrary datagrams to the client as the resolver's
// answer: every look-up must end in records or an *Error, never a panic.
func FuzzResponse(f *testing.F) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer pc.Close()
	var reply atomic.Pointer[[]byte]
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p := reply.Load()
			if p == nil || n < 2 {
				continue
			}
			out := append([]byte(nil), *p...)
			if len(out) >= 2 {
				copy(out, buf[:2]) // the query's ID
			}
			_, _ = pc.WriteTo(out, from)
		}
	}()
	seed := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	q := new(dns.Msg).SetQuestion("example.org.", dns.TypeMX)
	r := new(dns.Msg).SetReply(q)
	r.Answer = []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: "b.example."},
		&dns.MX{Hdr: dns.RR_Header{Name: "b.example.", Rrtype: dns.TypeMX, Class: dns.ClassINET}, Preference: 1, Mx: "."},
	}
	seed(r)
	r.Truncated = true
	seed(r)
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0})

	c := &client{addr: pc.LocalAddr().String(), timeout: 200 * time.Millisecond, trustAD: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		reply.Store(&data)
		ctx := context.Background()
		check := func(err error) {
			if err == nil {
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Kind < NotFound || e.Kind > Permanent {
				t.Fatalf("error %v is not a classified *Error", err)
			}
		}
		mxs, _, err := c.LookupMX(ctx, "example.org")
		check(err)
		for _, mx := range mxs {
			if strings.HasSuffix(mx.Host, ".") || strings.ToLower(mx.Host) != mx.Host {
				t.Fatalf("MX host %q not normalised", mx.Host)
			}
		}
		_, _, err = c.LookupTXT(ctx, "example.org")
		check(err)
		_, _, err = c.LookupTLSA(ctx, 25, "example.org")
		check(err)
	})
}
