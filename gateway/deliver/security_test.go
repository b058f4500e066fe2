package deliver

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/mtasts"
	"github.com/postern-mail/postern/gateway/tlsmemory"
	"github.com/postern-mail/postern/test/support/testpki"
)

// route sends dials to ip:port to realAddr.
func (e *env) route(ip, port, realAddr string) {
	e.mu.Lock()
	e.routes[net.JoinHostPort(ip, port)] = realAddr
	e.mu.Unlock()
}

// secureMX publishes domain -> mxHost -> ip with the AD bit on both.
func (e *env) secureMX(domain, mxHost, ip, realAddr string) {
	e.mx(domain, mxHost, ip, realAddr)
	e.dns.SetAuthentic(domain, true)
	e.dns.SetAuthentic(mxHost, true)
}

// tlsa publishes authentic TLSA records for mxHost on port 25.
func (e *env) tlsa(mxHost string, rr ...dnsr.TLSA) {
	name := "_25._tcp." + mxHost
	e.dns.SetTLSA(name, rr...)
	e.dns.SetAuthentic(name, true)
}

// eeSPKI is a "3 1 1" record for the certificate.
func eeSPKI(t *testing.T, c tls.Certificate) dnsr.TLSA {
	h := sha256.Sum256(testpki.Leaf(t, c).RawSubjectPublicKeyInfo)
	return dnsr.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: h[:]}
}

func daneOptions(e *env, roots *x509.CertPool) Options {
	o := e.options(roots)
	o.DANE = true
	return o
}

// DANE-EE decides even where the certificate's name does not match the MX
// and no PKIX root knows it: proof that DANE, not PKIX, accepted it.
func TestDANEEEMatch(t *testing.T) {
	e := newEnv(t)
	cert := testpki.SelfSigned(t, "unrelated.example")
	rcv := startReceiver(t, rcvConfig{cert: &cert})
	e.secureMX("dane.test", "mx1.dane.test", "127.0.0.2", rcv.addr)
	e.tlsa("mx1.dane.test", eeSPKI(t, cert))
	for _, level := range []string{LevelDANE, LevelVerify, LevelOpportunistic, LevelNone} {
		tr := &MX{Opt: daneOptions(e, nil)}
		res := one(t, tr.Deliver(ctxT(t), request(level, testBody, "b@dane.test")))
		if res.Outcome != Delivered || res.TLS == nil || !res.TLS.Verified || res.TLS.Policy != PolicyDANE {
			t.Errorf("level %s: got %+v TLS=%+v, want delivered with dane", level, res, res.TLS)
		}
	}
	if msgs := rcv.messages(); len(msgs) != 4 || !msgs[0].TLS {
		t.Errorf("receiver got %d messages", len(msgs))
	}
}

func TestDANEEEMismatch(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	cert := ca.Server(t, "mx1.dane.test") // PKIX-valid, but not what TLSA names
	other := testpki.SelfSigned(t, "mx1.dane.test")
	for _, level := range []string{LevelDANE, LevelVerify, LevelEncrypt, LevelOpportunistic, LevelNone} {
		t.Run(level, func(t *testing.T) {
			e := newEnv(t)
			rcv := startReceiver(t, rcvConfig{cert: &cert})
			e.secureMX("dane.test", "mx1.dane.test", "127.0.0.2", rcv.addr)
			e.tlsa("mx1.dane.test", eeSPKI(t, other))
			tr := &MX{Opt: daneOptions(e, ca.Pool())}
			res := one(t, tr.Deliver(ctxT(t), request(level, testBody, "b@dane.test")))
			if res.Outcome != TLSUnavailable || !strings.Contains(res.Response, "DANE") {
				t.Errorf("got %+v, want tls-unavailable naming DANE", res)
			}
			if _, mails := rcv.counts(); mails != 0 || len(rcv.messages()) != 0 {
				t.Errorf("MAIL sent despite the TLSA mismatch")
			}
		})
	}
}

// With TLSA records published, a host without STARTTLS is never used in
// plaintext, whatever level was asked (RFC 7672 §2.2).
func TestDANEStartTLSStripped(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.secureMX("dane.test", "mx1.dane.test", "127.0.0.2", rcv.addr)
	e.tlsa("mx1.dane.test", dnsr.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: make([]byte, 32)})
	tr := &MX{Opt: daneOptions(e, nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@dane.test")))
	if res.Outcome != TLSUnavailable || len(rcv.messages()) != 0 {
		t.Errorf("got %+v; want tls-unavailable, nothing sent", res)
	}
}

func TestDANETA(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	ta := dnsr.TLSA{Usage: 2, Selector: 0, MatchingType: 0, Data: ca.Cert.Raw}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want Outcome
	}{
		{"chain to anchor, name matches", withChain(ca.Server(t, "mx1.ta.test"), ca.Cert), Delivered},
		{"chain to anchor, wrong name", withChain(ca.Server(t, "other.test"), ca.Cert), TLSUnavailable},
		{"other anchor", withChain(testpki.NewCA(t, "deliver test CA").Server(t, "mx1.ta.test"), ca.Cert), TLSUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rcv := startReceiver(t, rcvConfig{cert: &tc.cert})
			e.secureMX("ta.test", "mx1.ta.test", "127.0.0.2", rcv.addr)
			e.tlsa("mx1.ta.test", ta)
			tr := &MX{Opt: daneOptions(e, nil)} // no PKIX roots at all
			res := one(t, tr.Deliver(ctxT(t), request(LevelDANE, testBody, "b@ta.test")))
			if res.Outcome != tc.want {
				t.Fatalf("got %+v, want %v", res, tc.want)
			}
			if tc.want == Delivered && (res.TLS.Policy != PolicyDANE || !res.TLS.Verified) {
				t.Errorf("TLS %+v", res.TLS)
			}
			if tc.want != Delivered && len(rcv.messages()) != 0 {
				t.Error("message sent")
			}
		})
	}
}

// withChain appends the issuer to the served chain, as RFC 7671 §5.2.2
// expects of a DANE-TA server.
func withChain(c tls.Certificate, issuer *x509.Certificate) tls.Certificate {
	c.Certificate = append(c.Certificate, issuer.Raw)
	return c
}

// Usages 0 and 1 are unusable for SMTP (RFC 7672 §3.1.3): a secure RRset
// of only those makes TLS mandatory but does not authenticate, so a dane
// level fails, verify falls back to PKIX, and encrypt works.
func TestDANEUnusableUsages(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	cert := ca.Server(t, "mx1.pk.test")
	h := sha256.Sum256(testpki.Leaf(t, cert).Raw)
	recs := []dnsr.TLSA{{Usage: 0, Selector: 0, MatchingType: 1, Data: h[:]}, {Usage: 1, Selector: 0, MatchingType: 1, Data: h[:]}}
	for _, tc := range []struct {
		level  string
		want   Outcome
		policy string
	}{
		{LevelDANE, TLSUnavailable, ""},
		{LevelVerify, Delivered, PolicyPKIX},
		{LevelNone, Delivered, PolicyPKIX}, // TLS forced by the secure TLSA RRset
	} {
		e := newEnv(t)
		rcv := startReceiver(t, rcvConfig{cert: &cert})
		e.secureMX("pk.test", "mx1.pk.test", "127.0.0.2", rcv.addr)
		e.tlsa("mx1.pk.test", recs...)
		tr := &MX{Opt: daneOptions(e, ca.Pool())}
		res := one(t, tr.Deliver(ctxT(t), request(tc.level, testBody, "b@pk.test")))
		if res.Outcome != tc.want || (tc.policy != "" && (res.TLS == nil || res.TLS.Policy != tc.policy)) {
			t.Errorf("level %s: got %+v TLS=%+v, want %v %s", tc.level, res, res.TLS, tc.want, tc.policy)
		}
	}
}

func TestDANETLSAServfail(t *testing.T) {
	e := newEnv(t)
	cert := testpki.SelfSigned(t, "mx1.sf.test")
	rcv := startReceiver(t, rcvConfig{cert: &cert})
	e.secureMX("sf.test", "mx1.sf.test", "127.0.0.2", rcv.addr)
	e.dns.SetRcode("_25._tcp.mx1.sf.test", dns.RcodeServerFailure)
	tr := &MX{Opt: daneOptions(e, nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@sf.test")))
	if res.Outcome != Temporary || e.dialsTo(rcv) != 0 {
		t.Errorf("got %+v, %d dials; want temporary and no connection", res, e.dialsTo(rcv))
	}
}

// Without the AD bit on the MX (or on the TLSA RRset) DANE is not used:
// not even looked up for an insecure MX.
func TestDANENotAuthentic(t *testing.T) {
	other := testpki.SelfSigned(t, "x.test")
	for _, tc := range []struct {
		name              string
		mxAD, hostAD, tAD bool
	}{
		{"insecure MX", false, true, true},
		{"insecure address", true, false, true},
		{"insecure TLSA", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			cert := testpki.SelfSigned(t, "mx1.in.test")
			rcv := startReceiver(t, rcvConfig{cert: &cert})
			e.mx("in.test", "mx1.in.test", "127.0.0.2", rcv.addr)
			e.dns.SetAuthentic("in.test", tc.mxAD)
			e.dns.SetAuthentic("mx1.in.test", tc.hostAD)
			e.dns.SetTLSA("_25._tcp.mx1.in.test", eeSPKI(t, other)) // would not match
			e.dns.SetAuthentic("_25._tcp.mx1.in.test", tc.tAD)
			tr := &MX{Opt: daneOptions(e, nil)}
			res := one(t, tr.Deliver(ctxT(t), request(LevelEncrypt, testBody, "b@in.test")))
			if res.Outcome != Delivered || res.TLS.Policy != PolicyNone {
				t.Errorf("got %+v TLS=%+v; want delivered unauthenticated", res, res.TLS)
			}
			looked := false
			for _, q := range e.dns.Queries() {
				looked = looked || q.Type == dns.TypeTLSA
			}
			if tc.name != "insecure TLSA" && looked {
				t.Error("TLSA looked up for an insecure MX")
			}
		})
	}
}

// Off by configuration: DANE not looked up even when everything is secure.
func TestDANEDisabled(t *testing.T) {
	e := newEnv(t)
	cert := testpki.SelfSigned(t, "mx1.off.test")
	rcv := startReceiver(t, rcvConfig{cert: &cert})
	e.secureMX("off.test", "mx1.off.test", "127.0.0.2", rcv.addr)
	e.tlsa("mx1.off.test", eeSPKI(t, cert))
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelDANE, testBody, "b@off.test")))
	if res.Outcome != TLSUnavailable {
		t.Errorf("got %+v, want tls-unavailable", res)
	}
}

// stsWorld serves an MTA-STS policy for domain over loopback HTTPS.
type stsWorld struct {
	e      *env
	srv    *httptest.Server
	policy atomic.Value // string
	ctype  atomic.Value // string
	hits   atomic.Int32
	client *mtasts.Client
}

func newSTSWorld(t *testing.T, e *env, ca *testpki.CA, domain, id, policy string) *stsWorld {
	t.Helper()
	w := &stsWorld{e: e}
	w.policy.Store(policy)
	w.ctype.Store("text/plain; charset=utf-8")
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.hits.Add(1)
		if r.URL.Path != "/.well-known/mta-sts.txt" || r.Host != "mta-sts."+domain {
			http.NotFound(rw, r)
			return
		}
		rw.Header().Set("Content-Type", w.ctype.Load().(string))
		fmt.Fprint(rw, w.policy.Load().(string))
	}))
	cert := ca.Server(t, "mta-sts."+domain)
	w.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	e.dns.SetA("mta-sts."+domain, "127.0.0.50")
	e.route("127.0.0.50", "443", w.srv.Listener.Addr().String())
	e.dns.SetTXT("_mta-sts."+domain, "v=STSv1; id="+id+";")
	w.client = &mtasts.Client{
		Resolver: dnsr.NewClient(e.dns.Addr, 0),
		Roots:    ca.Pool(),
		Store:    mtasts.DirStore{Dir: filepath.Join(t.TempDir(), "mta-sts")},
		Dial:     e.dial,
	}
	return w
}

func stsOptions(e *env, roots *x509.CertPool, w *stsWorld) Options {
	o := e.options(roots)
	o.MTASTS = w.client
	return o
}

const enforcePolicy = "version: STSv1\nmode: enforce\nmx: *.sts.test\nmax_age: 86400\n"

func TestMTASTSEnforce(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	good := ca.Server(t, "mx1.sts.test")
	bad := testpki.SelfSigned(t, "mx1.sts.test")

	t.Run("listed MX, valid certificate", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		rcv := startReceiver(t, rcvConfig{cert: &good})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		for _, level := range []string{LevelMTASTS, LevelVerify, LevelNone} {
			res := one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(level, testBody, "b@sts.test")))
			if res.Outcome != Delivered || res.TLS.Policy != PolicyMTASTS || !res.TLS.Verified {
				t.Errorf("level %s: got %+v TLS=%+v", level, res, res.TLS)
			}
		}
	})
	t.Run("MX not in policy", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		cert := ca.Server(t, "mx.elsewhere.test")
		rcv := startReceiver(t, rcvConfig{cert: &cert})
		e.mx("sts.test", "mx.elsewhere.test", "127.0.0.2", rcv.addr)
		res := one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@sts.test")))
		if res.Outcome != TLSUnavailable || !strings.Contains(res.Response, "not listed") || e.dialsTo(rcv) != 0 {
			t.Errorf("got %+v, %d dials; want tls-unavailable without connecting", res, e.dialsTo(rcv))
		}
	})
	t.Run("invalid certificate", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		rcv := startReceiver(t, rcvConfig{cert: &bad})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		res := one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(LevelEncrypt, testBody, "b@sts.test")))
		if res.Outcome != TLSUnavailable || len(rcv.messages()) != 0 {
			t.Errorf("got %+v; want tls-unavailable, nothing sent", res)
		}
	})
	t.Run("STARTTLS stripped", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		rcv := startReceiver(t, rcvConfig{})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		res := one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(LevelNone, testBody, "b@sts.test")))
		if res.Outcome != TLSUnavailable || len(rcv.messages()) != 0 {
			t.Errorf("got %+v; want tls-unavailable, nothing sent", res)
		}
	})
	t.Run("DANE outranks MTA-STS", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		rcv := startReceiver(t, rcvConfig{cert: &bad}) // PKIX-invalid
		e.secureMX("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		e.tlsa("mx1.sts.test", eeSPKI(t, bad))
		o := stsOptions(e, ca.Pool(), w)
		o.DANE = true
		res := one(t, (&MX{Opt: o}).Deliver(ctxT(t), request(LevelMTASTS, testBody, "b@sts.test")))
		if res.Outcome != Delivered || res.TLS.Policy != PolicyDANE {
			t.Errorf("got %+v TLS=%+v; want delivered by dane", res, res.TLS)
		}
	})
	t.Run("level mta-sts without a policy", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		e.dns.SetTXT("_mta-sts.sts.test")
		rcv := startReceiver(t, rcvConfig{cert: &good})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		res := one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(LevelMTASTS, testBody, "b@sts.test")))
		if res.Outcome != TLSUnavailable || len(rcv.messages()) != 0 {
			t.Errorf("got %+v; want tls-unavailable", res)
		}
	})
}

func TestMTASTSTesting(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	bad := testpki.SelfSigned(t, "mx1.sts.test")
	e := newEnv(t)
	w := newSTSWorld(t, e, ca, "sts.test", "1", strings.Replace(enforcePolicy, "enforce", "testing", 1))
	rcv := startReceiver(t, rcvConfig{cert: &bad})
	e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
	res := one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(LevelEncrypt, testBody, "b@sts.test")))
	if res.Outcome != Delivered || !strings.Contains(res.PolicyFailure, "MTA-STS (testing)") || res.TLS.Verified {
		t.Errorf("got %+v TLS=%+v; want delivered with the failure noted", res, res.TLS)
	}
	// The testing policy is still a requirement for an mta-sts level.
	res = one(t, (&MX{Opt: stsOptions(e, ca.Pool(), w)}).Deliver(ctxT(t), request(LevelMTASTS, testBody, "b@sts.test")))
	if res.Outcome != TLSUnavailable {
		t.Errorf("level mta-sts: got %+v", res)
	}
}

func TestRequireTLSPolicies(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	good := ca.Server(t, "mx1.sts.test")
	send := func(t *testing.T, o Options, level string) Result {
		req := request(level, testBody, "b@sts.test")
		req.Params.RequireTLS = true
		return one(t, (&MX{Opt: o}).Deliver(ctxT(t), req))
	}
	t.Run("mta-sts validated, REQUIRETLS advertised", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", enforcePolicy)
		rcv := startReceiver(t, rcvConfig{cert: &good, requireTLS: true})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		res := send(t, stsOptions(e, ca.Pool(), w), LevelOpportunistic)
		if res.Outcome != Delivered || res.TLS.Policy != PolicyMTASTS {
			t.Fatalf("got %+v", res)
		}
		if msgs := rcv.messages(); len(msgs) != 1 || !msgs[0].MailOpts.RequireTLS {
			t.Errorf("REQUIRETLS not relayed: %+v", msgs)
		}
	})
	t.Run("testing policy enforced for REQUIRETLS", func(t *testing.T) {
		e := newEnv(t)
		w := newSTSWorld(t, e, ca, "sts.test", "1", strings.Replace(enforcePolicy, "enforce", "testing", 1))
		bad := testpki.SelfSigned(t, "mx1.sts.test")
		rcv := startReceiver(t, rcvConfig{cert: &bad, requireTLS: true})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		res := send(t, stsOptions(e, ca.Pool(), w), LevelOpportunistic)
		if res.Outcome != Permanent || res.Status != "5.7.30" || len(rcv.messages()) != 0 {
			t.Errorf("got %+v; want 5.7.30, nothing sent", res)
		}
	})
	t.Run("dane validated, REQUIRETLS advertised", func(t *testing.T) {
		e := newEnv(t)
		cert := testpki.SelfSigned(t, "mx1.sts.test")
		rcv := startReceiver(t, rcvConfig{cert: &cert, requireTLS: true})
		e.secureMX("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		e.tlsa("mx1.sts.test", eeSPKI(t, cert))
		res := send(t, daneOptions(e, nil), LevelVerify)
		if res.Outcome != Delivered || res.TLS.Policy != PolicyDANE {
			t.Errorf("got %+v", res)
		}
	})
	t.Run("dane validated, REQUIRETLS not advertised", func(t *testing.T) {
		e := newEnv(t)
		cert := testpki.SelfSigned(t, "mx1.sts.test")
		rcv := startReceiver(t, rcvConfig{cert: &cert})
		e.secureMX("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		e.tlsa("mx1.sts.test", eeSPKI(t, cert))
		res := send(t, daneOptions(e, nil), LevelVerify)
		if res.Outcome != Permanent || res.Status != "5.7.30" || len(rcv.messages()) != 0 {
			t.Errorf("got %+v; want 5.7.30", res)
		}
		if _, mails := rcv.counts(); mails != 0 {
			t.Error("MAIL sent")
		}
	})
	t.Run("no policy: not even connected", func(t *testing.T) {
		e := newEnv(t)
		rcv := startReceiver(t, rcvConfig{cert: &good, requireTLS: true})
		e.mx("sts.test", "mx1.sts.test", "127.0.0.2", rcv.addr)
		res := send(t, e.options(ca.Pool()), LevelVerify)
		if res.Outcome != Permanent || res.Status != "5.7.30" || e.dialsTo(rcv) != 0 {
			t.Errorf("got %+v; want 5.7.30 without a connection", res)
		}
	})
}

func TestDowngradeNote(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	e := newEnv(t)
	good := ca.Server(t, "mx1.mem.test")
	bad := testpki.SelfSigned(t, "mx1.mem.test")
	mem, err := tlsmemory.Open(filepath.Join(t.TempDir(), "tls-memory.json"))
	if err != nil {
		t.Fatal(err)
	}
	rcvGood := startReceiver(t, rcvConfig{cert: &good})
	e.mx("mem.test", "mx1.mem.test", "127.0.0.2", rcvGood.addr)
	o := e.options(ca.Pool())
	o.Memory = mem
	res := one(t, (&MX{Opt: o}).Deliver(ctxT(t), request(LevelVerify, testBody, "b@mem.test")))
	if res.Outcome != Delivered || res.Downgrade != "" {
		t.Fatalf("first: %+v", res)
	}
	rcvBad := startReceiver(t, rcvConfig{cert: &bad})
	e.host("mx1.mem.test", "127.0.0.2", rcvBad.addr)
	res = one(t, (&MX{Opt: o}).Deliver(ctxT(t), request(LevelEncrypt, testBody, "b@mem.test")))
	if res.Outcome != Delivered || !strings.Contains(res.Downgrade, "previously did verified TLS (pkix)") || !strings.Contains(res.Downgrade, "now encrypt only") {
		t.Errorf("second: %+v, want a downgrade note", res)
	}
	// Persisted.
	mem2, err := tlsmemory.Open(mem.Path())
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := mem2.Best("mem.test"); !ok || l != tlsmemory.PKIX {
		t.Errorf("reloaded best = %v, %v", l, ok)
	}
}
