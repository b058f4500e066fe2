package dnstest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/postern-mail/postern/gateway/dnsr"
)

func start(t *testing.T) *Server {
	t.Helper()
	s, err := Start()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// query sends one question with a plain miekg client.
func query(t *testing.T, s *Server, network, name string, qtype uint16, edns, do bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(1232, do)
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	resp, _, err := c.Exchange(m, s.Addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", network, name, err)
	}
	return resp
}

func TestNamesAndRcodes(t *testing.T) {
	s := start(t)
	if !strings.HasPrefix(s.Addr, "127.0.0.1:") {
		t.Errorf("Addr = %q", s.Addr)
	}
	s.SetMX("Example.ORG", dnsr.MX{Host: "mx.example.org", Pref: 10})
	s.SetA("mx.deep.sub.example.net.", "192.0.2.1")

	for _, name := range []string{"example.org.", "EXAMPLE.org.", "example.ORG."} {
		resp := query(t, s, "udp", name, dns.TypeMX, true, false)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 || !resp.RecursionAvailable {
			t.Fatalf("%s: %v", name, resp)
		}
		if mx := resp.Answer[0].(*dns.MX); mx.Mx != "mx.example.org." || mx.Preference != 10 {
			t.Errorf("%s: %v", name, mx)
		}
	}
	cases := []struct {
		name  string
		qtype uint16
		rcode int
		n     int
	}{
		{"unknown.example.", dns.TypeA, dns.RcodeNameError, 0},
		{"example.org.", dns.TypeA, dns.RcodeSuccess, 0},             // NODATA
		{"sub.example.net.", dns.TypeA, dns.RcodeSuccess, 0},         // empty non-terminal
		{"mx.deep.sub.example.net.", dns.TypeA, dns.RcodeSuccess, 1}, // data
		{"xmx.deep.sub.example.net.", dns.TypeA, dns.RcodeNameError, 0},
	}
	for _, c := range cases {
		resp := query(t, s, "udp", c.name, c.qtype, false, false)
		if resp.Rcode != c.rcode || len(resp.Answer) != c.n {
			t.Errorf("%s: rcode %s, %d answers; want %s, %d", c.name, dns.RcodeToString[resp.Rcode], len(resp.Answer), dns.RcodeToString[c.rcode], c.n)
		}
	}

	s.SetRcode("example.org", dns.RcodeServerFailure)
	if resp := query(t, s, "udp", "example.org.", dns.TypeMX, true, false); resp.Rcode != dns.RcodeServerFailure || len(resp.Answer) != 0 {
		t.Errorf("SetRcode: %v", resp)
	}
	s.SetRcode("example.org", dns.RcodeSuccess)
	if resp := query(t, s, "tcp", "example.org.", dns.TypeMX, true, false); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("after SetRcode(success): %v", resp)
	}

	qs := s.Queries()
	if len(qs) != 10 || qs[0] != (Query{Name: "example.org.", Type: dns.TypeMX, Net: "udp"}) || qs[9].Net != "tcp" {
		t.Errorf("Queries = %v", qs)
	}
}

func TestAuthenticData(t *testing.T) {
	s := start(t)
	s.SetTXT("signed.example", "v=STSv1; id=1")
	s.SetAuthentic("SIGNED.example.", true)
	s.SetTXT("unsigned.example", "x")
	if resp := query(t, s, "udp", "signed.example.", dns.TypeTXT, true, true); !resp.AuthenticatedData {
		t.Errorf("DO query to signed name: AD not set")
	}
	if resp := query(t, s, "udp", "signed.example.", dns.TypeTXT, false, false); resp.AuthenticatedData {
		t.Errorf("AD set for a client that did not ask (RFC 6840 §5.7)")
	}
	if resp := query(t, s, "udp", "unsigned.example.", dns.TypeTXT, true, true); resp.AuthenticatedData {
		t.Errorf("AD set for an unsigned name")
	}
	s.SetAuthentic("signed.example", false)
	if resp := query(t, s, "udp", "signed.example.", dns.TypeTXT, true, true); resp.AuthenticatedData {
		t.Errorf("AD still set after SetAuthentic(false)")
	}
}

func TestCNAMEAndRecords(t *testing.T) {
	s := start(t)
	s.SetCNAME("www.example", "host.example.")
	s.SetA("host.example", "192.0.2.10", "2001:db8::10")
	s.SetTLSA("_25._tcp.host.example", dnsr.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{0xde, 0xad}})

	resp := query(t, s, "udp", "www.example.", dns.TypeA, true, false)
	if len(resp.Answer) != 2 {
		t.Fatalf("answers %v", resp.Answer)
	}
	if cn, ok := resp.Answer[0].(*dns.CNAME); !ok || cn.Target != "host.example." {
		t.Errorf("first answer %v", resp.Answer[0])
	}
	if a, ok := resp.Answer[1].(*dns.A); !ok || a.A.String() != "192.0.2.10" || a.Hdr.Name != "host.example." {
		t.Errorf("second answer %v", resp.Answer[1])
	}
	resp = query(t, s, "udp", "host.example.", dns.TypeAAAA, true, false)
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.AAAA).AAAA.String() != "2001:db8::10" {
		t.Errorf("AAAA %v", resp.Answer)
	}
	resp = query(t, s, "udp", "www.example.", dns.TypeCNAME, true, false)
	if len(resp.Answer) != 1 {
		t.Errorf("CNAME query %v", resp.Answer)
	}
	resp = query(t, s, "udp", "_25._tcp.host.example.", dns.TypeTLSA, true, false)
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.TLSA).Certificate != "dead" {
		t.Errorf("TLSA %v", resp.Answer)
	}
	s.SetCNAME("www.example", "")
	if resp := query(t, s, "udp", "www.example.", dns.TypeA, true, false); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("after removing the CNAME: %v", resp)
	}
	s.SetCNAME("l1.example", "l2.example")
	s.SetCNAME("l2.example", "l1.example")
	if resp := query(t, s, "udp", "l1.example.", dns.TypeA, true, false); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("CNAME loop: %v", resp)
	}
}

func TestTruncation(t *testing.T) {
	s := start(t)
	var txt []string
	for i := range 4 {
		txt = append(txt, strings.Repeat(fmt.Sprint(i), 300))
	}
	s.SetTXT("big.example", txt...)
	// No EDNS0: 512 bytes at most over UDP.
	resp := query(t, s, "udp", "big.example.", dns.TypeTXT, false, false)
	if !resp.Truncated || len(resp.Answer) >= 4 {
		t.Errorf("UDP without EDNS0: TC=%v, %d answers", resp.Truncated, len(resp.Answer))
	}
	// TCP has no such limit.
	resp = query(t, s, "tcp", "big.example.", dns.TypeTXT, true, false)
	if resp.Truncated || len(resp.Answer) != 4 {
		t.Errorf("TCP: TC=%v, %d answers", resp.Truncated, len(resp.Answer))
	}
	for _, rr := range resp.Answer {
		tx := rr.(*dns.TXT)
		if len(tx.Txt) != 2 || len(tx.Txt[0]) != 255 || len(strings.Join(tx.Txt, "")) != 300 {
			t.Errorf("character-strings %d: %v", len(tx.Txt), tx.Txt)
		}
	}
}

func TestConcurrentUpdates(t *testing.T) {
	s := start(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := range 20 {
				s.SetA("h.example", fmt.Sprintf("192.0.2.%d", j))
				s.SetAuthentic("h.example", j%2 == 0)
			}
		}()
		go func() {
			defer wg.Done()
			c := &dns.Client{Timeout: 2 * time.Second}
			for range 20 {
				m := new(dns.Msg).SetQuestion("h.example.", dns.TypeA)
				if _, _, err := c.Exchange(m, s.Addr); err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSetAInvalid(t *testing.T) {
	s := start(t)
	defer func() {
		if recover() == nil {
			t.Errorf("SetA with a bad address did not panic")
		}
	}()
	s.SetA("x.example", "not-an-ip")
}
