package deliver

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/test/support/testpki"
)

// mx publishes domain with a single MX mxHost at ip, routed to realAddr.
func (e *env) mx(domain, mxHost, ip, realAddr string) {
	e.dns.SetMX(domain, dnsr.MX{Host: mxHost, Pref: 10})
	e.host(mxHost, ip, realAddr)
}

func TestVerifyValidCertificate(t *testing.T) {
	e := newEnv(t)
	ca := testpki.NewCA(t, "deliver test CA")
	cert := ca.Server(t, "mx1.verify.test")
	rcv := startReceiver(t, rcvConfig{cert: &cert})
	e.mx("verify.test", "mx1.verify.test", "127.0.0.2", rcv.addr)

	tr := &MX{Opt: e.options(ca.Pool())}
	res := one(t, tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@verify.test")))
	if res.Outcome != Delivered {
		t.Fatalf("outcome %v (%s %s), want delivered", res.Outcome, res.Status, res.Response)
	}
	if res.Rcpt != "b@verify.test" || res.MX != "mx1.verify.test" || res.Status != "2.0.0" {
		t.Errorf("result %+v", res)
	}
	if !strings.HasPrefix(res.Response, "250 ") {
		t.Errorf("response %q, want the 250 reply", res.Response)
	}
	if res.TLS == nil {
		t.Fatal("no TLS state")
	}
	if !res.TLS.Verified || res.TLS.Policy != "pkix" || res.TLS.Version != "TLS1.3" || res.TLS.Cipher == "" {
		t.Errorf("TLS state %+v, want verified pkix TLS1.3 with a cipher", *res.TLS)
	}
	msgs := rcv.messages()
	if len(msgs) != 1 || !msgs[0].TLS || msgs[0].From != "a@example.org" ||
		!slices.Equal(msgs[0].Rcpts, []string{"b@verify.test"}) || string(msgs[0].Data) != testBody {
		t.Errorf("receiver got %+v", msgs)
	}
}

func TestVerifyRefusesBadCertificate(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	other := testpki.NewCA(t, "deliver test CA")
	cases := []struct {
		name string
		cert func() tls.Certificate
	}{
		{"wrong name", func() tls.Certificate { return ca.Server(t, "other.test") }},
		{"untrusted issuer", func() tls.Certificate { return other.Server(t, "mx1.bad.test") }},
		{"self-signed", func() tls.Certificate { return testpki.SelfSigned(t, "mx1.bad.test") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			cert := tc.cert()
			rcv := startReceiver(t, rcvConfig{cert: &cert})
			e.mx("bad.test", "mx1.bad.test", "127.0.0.2", rcv.addr)

			tr := &MX{Opt: e.options(ca.Pool())}
			res := one(t, tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@bad.test")))
			if res.Outcome != TLSUnavailable || res.Status != "4.7.5" {
				t.Errorf("outcome %v %s (%s), want tls-unavailable 4.7.5", res.Outcome, res.Status, res.Response)
			}
			if !strings.Contains(res.Response, "mx1.bad.test") {
				t.Errorf("response %q does not name the host", res.Response)
			}
			if _, mails := rcv.counts(); mails != 0 || len(rcv.messages()) != 0 {
				t.Errorf("receiver saw %d MAIL commands and %d messages; want none", mails, len(rcv.messages()))
			}
		})
	}
}

func TestEncryptAcceptsSelfSigned(t *testing.T) {
	e := newEnv(t)
	cert := testpki.SelfSigned(t, "mx1.enc.test")
	rcv := startReceiver(t, rcvConfig{cert: &cert})
	e.mx("enc.test", "mx1.enc.test", "127.0.0.2", rcv.addr)

	tr := &MX{Opt: e.options(testpki.NewCA(t, "deliver test CA").Pool())}
	res := one(t, tr.Deliver(ctxT(t), request(LevelEncrypt, testBody, "b@enc.test")))
	if res.Outcome != Delivered {
		t.Fatalf("outcome %v (%s), want delivered", res.Outcome, res.Response)
	}
	if res.TLS == nil || res.TLS.Verified || res.TLS.Policy != "none" || res.TLS.Version == "" {
		t.Errorf("TLS state %+v, want unverified, policy none, a version", res.TLS)
	}
	if msgs := rcv.messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Errorf("receiver got %+v, want one message over TLS", msgs)
	}
}

func TestNoSTARTTLS(t *testing.T) {
	for _, level := range []string{LevelVerify, LevelEncrypt} {
		t.Run(level, func(t *testing.T) {
			e := newEnv(t)
			rcv := startReceiver(t, rcvConfig{})
			e.mx("plain.test", "mx1.plain.test", "127.0.0.2", rcv.addr)
			tr := &MX{Opt: e.options(nil)}
			res := one(t, tr.Deliver(ctxT(t), request(level, testBody, "b@plain.test")))
			if res.Outcome != TLSUnavailable || res.Status != "4.7.5" || !strings.Contains(res.Response, "STARTTLS") {
				t.Errorf("got %v %s %q, want tls-unavailable 4.7.5 naming STARTTLS", res.Outcome, res.Status, res.Response)
			}
			if _, mails := rcv.counts(); mails != 0 {
				t.Errorf("receiver saw %d MAIL commands; want none", mails)
			}
		})
	}
	t.Run(LevelOpportunistic, func(t *testing.T) {
		e := newEnv(t)
		rcv := startReceiver(t, rcvConfig{})
		e.mx("plain.test", "mx1.plain.test", "127.0.0.2", rcv.addr)
		tr := &MX{Opt: e.options(nil)}
		res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@plain.test")))
		if res.Outcome != Delivered || res.TLS != nil {
			t.Errorf("got %v TLS=%+v, want delivered in plaintext", res.Outcome, res.TLS)
		}
		if msgs := rcv.messages(); len(msgs) != 1 || msgs[0].TLS {
			t.Errorf("receiver got %+v, want one plaintext message", msgs)
		}
	})
}

func TestLevelNoneDoesNotTrySTARTTLS(t *testing.T) {
	e := newEnv(t)
	cert := testpki.SelfSigned(t, "mx1.none.test")
	rcv := startReceiver(t, rcvConfig{cert: &cert})
	e.mx("none.test", "mx1.none.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelNone, testBody, "b@none.test")))
	if res.Outcome != Delivered || res.TLS != nil {
		t.Errorf("got %v TLS=%+v, want delivered without TLS", res.Outcome, res.TLS)
	}
	if msgs := rcv.messages(); len(msgs) != 1 || msgs[0].TLS {
		t.Errorf("receiver got %+v", msgs)
	}
}

// A level the domain cannot meet (dane without TLSA records, mta-sts
// without a policy) or an unknown one must fail closed, never be treated
// as a weaker one.
func TestUnsupportedLevelFailsClosed(t *testing.T) {
	for _, level := range []string{"dane", "mta-sts", ""} {
		t.Run("mx/"+level, func(t *testing.T) {
			e := newEnv(t)
			cert := testpki.SelfSigned(t, "mx1.strict.test")
			rcv := startReceiver(t, rcvConfig{cert: &cert})
			e.mx("strict.test", "mx1.strict.test", "127.0.0.2", rcv.addr)
			tr := &MX{Opt: e.options(nil)}
			res := one(t, tr.Deliver(ctxT(t), request(level, testBody, "b@strict.test")))
			if res.Outcome != TLSUnavailable {
				t.Errorf("level %q: got %v (%s), want tls-unavailable", level, res.Outcome, res.Response)
			}
			if len(rcv.messages()) != 0 {
				t.Errorf("level %q: message sent over an unverified session", level)
			}
		})
	}
}

func TestOneOfTwoRecipientsRejected(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{rcpt: map[string]*smtp.SMTPError{
		"reject": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"},
	}})
	e.mx("two.test", "mx1.two.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	rs := tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "reject@two.test", "ok@two.test"))
	if len(rs) != 2 {
		t.Fatalf("got %d results", len(rs))
	}
	if r := rs[0]; r.Rcpt != "reject@two.test" || r.Outcome != Permanent || r.Status != "5.1.1" ||
		!strings.Contains(r.Response, "550") || !strings.Contains(r.Response, "no such user here") {
		t.Errorf("rejected recipient: %+v", r)
	}
	if r := rs[1]; r.Rcpt != "ok@two.test" || r.Outcome != Delivered || r.Status != "2.0.0" {
		t.Errorf("accepted recipient: %+v", r)
	}
	_, mails := rcv.counts()
	conns := e.dialsTo(rcv)
	msgs := rcv.messages()
	if conns != 1 || mails != 1 || len(msgs) != 1 || !slices.Equal(msgs[0].Rcpts, []string{"ok@two.test"}) {
		t.Errorf("want one session, one transaction, one message to ok@: conns=%d mails=%d msgs=%+v", conns, mails, msgs)
	}
}

func TestRcptTemporaryFailure(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{rcpt: map[string]*smtp.SMTPError{
		"later": {Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"},
	}})
	e.mx("tmp.test", "mx1.tmp.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "later@tmp.test")))
	if res.Outcome != Temporary || res.Status != "4.3.0" || !strings.Contains(res.Response, "try again later") {
		t.Errorf("got %+v, want temporary 4.3.0", res)
	}
	if len(rcv.messages()) != 0 {
		t.Error("DATA sent though no recipient was accepted")
	}
}

func TestConnectionRefused(t *testing.T) {
	e := newEnv(t)
	e.mx("down.test", "mx1.down.test", "127.0.0.2", closedAddr(t))
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@down.test")))
	if res.Outcome != Temporary || res.Status != "4.4.1" || res.MX != "mx1.down.test" {
		t.Errorf("got %+v, want temporary 4.4.1 from mx1.down.test", res)
	}
}

func TestSecondMXWhenFirstDown(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.dns.SetMX("pair.test", dnsr.MX{Host: "mx2.pair.test", Pref: 20}, dnsr.MX{Host: "mx1.pair.test", Pref: 10})
	e.host("mx1.pair.test", "127.0.0.2", closedAddr(t))
	e.host("mx2.pair.test", "127.0.0.3", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@pair.test")))
	if res.Outcome != Delivered || res.MX != "mx2.pair.test" {
		t.Errorf("got %+v, want delivered via mx2.pair.test", res)
	}
	if e.dials.Load() != 2 {
		t.Errorf("%d dials, want 2 (mx1 first, by preference)", e.dials.Load())
	}
}

// When one host fails TLS and another is unreachable, the attempt is not
// conclusive: retry later rather than fall through.
func TestTLSFailureAndUnreachableIsTemporary(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.dns.SetMX("mix.test", dnsr.MX{Host: "mx1.mix.test", Pref: 10}, dnsr.MX{Host: "mx2.mix.test", Pref: 20})
	e.host("mx1.mix.test", "127.0.0.2", rcv.addr)
	e.host("mx2.mix.test", "127.0.0.3", closedAddr(t))
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@mix.test")))
	if res.Outcome != Temporary {
		t.Errorf("got %+v, want temporary", res)
	}
}

func TestSMTPUTF8NotSupported(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{noUTF8: true})
	e.mx("ascii.test", "mx1.ascii.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	req := request(LevelOpportunistic, testBody, "b@ascii.test")
	req.Params.UTF8 = true
	res := one(t, tr.Deliver(ctxT(t), req))
	if res.Outcome != Permanent || res.Status != "5.6.7" {
		t.Errorf("got %+v, want permanent 5.6.7", res)
	}
	if _, mails := rcv.counts(); mails != 0 {
		t.Error("MAIL sent to a hop without SMTPUTF8")
	}
}

func TestSMTPUTF8Relayed(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.mx("utf8.test", "mx1.utf8.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	req := request(LevelOpportunistic, testBody, "josé@utf8.test")
	req.Params.UTF8 = true
	res := one(t, tr.Deliver(ctxT(t), req))
	if res.Outcome != Delivered {
		t.Fatalf("got %+v", res)
	}
	if msgs := rcv.messages(); len(msgs) != 1 || !msgs[0].MailOpts.UTF8 || msgs[0].Rcpts[0] != "josé@utf8.test" {
		t.Errorf("receiver got %+v", msgs)
	}
}

func TestDSNParametersRelayed(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{dsn: true})
	e.mx("dsn.test", "mx1.dsn.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	req := request(LevelOpportunistic, testBody)
	req.Domain = "dsn.test"
	req.Rcpts = []Rcpt{{Addr: "b@dsn.test", Notify: []string{"SUCCESS", "FAILURE"}, ORCPT: "rfc822;Orig+x=y@old.test"}}
	req.Params = MailParams{Ret: "HDRS", EnvID: "env id+1=2", Size: int64(len(testBody))}
	if res := one(t, tr.Deliver(ctxT(t), req)); res.Outcome != Delivered {
		t.Fatalf("got %+v", res)
	}
	msgs := rcv.messages()
	if len(msgs) != 1 {
		t.Fatalf("receiver got %d messages", len(msgs))
	}
	m := msgs[0]
	if m.MailOpts.Return != smtp.DSNReturnHeaders || m.MailOpts.EnvelopeID != "env id+1=2" || m.MailOpts.Size != int64(len(testBody)) {
		t.Errorf("MAIL options %+v", m.MailOpts)
	}
	ro := m.RcptOpts[0]
	if !slices.Equal(ro.Notify, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}) ||
		ro.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || ro.OriginalRecipient != "Orig+x=y@old.test" {
		t.Errorf("RCPT options %+v", ro)
	}
}

// Without DSN at the next hop the parameters are not sent (the server would
// refuse them).
func TestDSNParametersOmittedWithoutExtension(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.mx("nodsn.test", "mx1.nodsn.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	req := request(LevelOpportunistic, testBody)
	req.Domain = "nodsn.test"
	req.Rcpts = []Rcpt{{Addr: "b@nodsn.test", Notify: []string{"NEVER"}, ORCPT: "rfc822;b@nodsn.test"}}
	req.Params = MailParams{Ret: "FULL", EnvID: "x"}
	if res := one(t, tr.Deliver(ctxT(t), req)); res.Outcome != Delivered {
		t.Fatalf("got %+v", res)
	}
}

func TestRequireTLS(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	cert := ca.Server(t, "mx1.rt.test")
	for _, tc := range []struct {
		name  string
		cfg   rcvConfig
		level string
		roots *x509.CertPool
		want  Outcome
	}{
		{"hop without REQUIRETLS", rcvConfig{cert: &cert}, LevelVerify, ca.Pool(), Permanent},
		// RFC 8689: REQUIRETLS needs a verified session whatever the level.
		{"unverified session", rcvConfig{cert: &cert, requireTLS: true}, LevelEncrypt, testpki.NewCA(t, "deliver test CA").Pool(), Permanent},
		{"no TLS at all", rcvConfig{requireTLS: true}, LevelOpportunistic, ca.Pool(), Permanent},
		// RFC 8689 §4.2.1: PKIX alone is not enough; DANE and MTA-STS
		// cases are in security_test.go.
		{"pkix-verified hop with REQUIRETLS", rcvConfig{cert: &cert, requireTLS: true}, LevelVerify, ca.Pool(), Permanent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rcv := startReceiver(t, tc.cfg)
			e.mx("rt.test", "mx1.rt.test", "127.0.0.2", rcv.addr)
			tr := &MX{Opt: e.options(tc.roots)}
			req := request(tc.level, testBody, "b@rt.test")
			req.Params.RequireTLS = true
			res := one(t, tr.Deliver(ctxT(t), req))
			if res.Outcome != tc.want {
				t.Fatalf("got %+v, want %v", res, tc.want)
			}
			msgs := rcv.messages()
			if tc.want == Permanent && (res.Status != "5.7.30" || len(msgs) != 0) {
				t.Errorf("got status %s and %d messages; want 5.7.30 and none", res.Status, len(msgs))
			}
			if tc.want == Delivered && (len(msgs) != 1 || !msgs[0].MailOpts.RequireTLS) {
				t.Errorf("REQUIRETLS not relayed: %+v", msgs)
			}
		})
	}
}

func TestDNSOutcomes(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.dns.SetMX("nullmx.test", dnsr.MX{Host: ""})
	e.host("implicit.test", "127.0.0.4", rcv.addr) // A, no MX
	e.dns.SetMX("servfail.test", dnsr.MX{Host: "mx.servfail.test", Pref: 10})
	e.dns.SetRcode("servfail.test", dns.RcodeServerFailure)
	tr := &MX{Opt: e.options(nil)}

	for _, tc := range []struct {
		domain string
		want   Outcome
		status string
	}{
		{"nullmx.test", Permanent, "5.1.10"},
		{"nxdomain.test", Permanent, "5.1.2"},
		{"servfail.test", Temporary, "4.4.3"},
	} {
		before := e.dials.Load()
		res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@"+tc.domain)))
		if res.Outcome != tc.want || res.Status != tc.status || !strings.Contains(res.Response, tc.domain) {
			t.Errorf("%s: got %+v, want %v %s", tc.domain, res, tc.want, tc.status)
		}
		if e.dials.Load() != before {
			t.Errorf("%s: dialled a host", tc.domain)
		}
	}

	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@implicit.test")))
	if res.Outcome != Delivered || res.MX != "implicit.test" {
		t.Errorf("implicit MX: got %+v", res)
	}
	if len(rcv.messages()) != 1 {
		t.Errorf("implicit MX: receiver got %d messages", len(rcv.messages()))
	}
}

func TestMXHostWithoutAddress(t *testing.T) {
	e := newEnv(t)
	e.dns.SetMX("noaddr.test", dnsr.MX{Host: "mx.noaddr.test", Pref: 10})
	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@noaddr.test")))
	if res.Outcome != Temporary || res.Status != "4.4.4" {
		t.Errorf("got %+v, want temporary 4.4.4", res)
	}
}

func TestDotStuffingAndExactBody(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.mx("dots.test", "mx1.dots.test", "127.0.0.2", rcv.addr)
	var b strings.Builder
	b.WriteString("From: a@example.org\r\nSubject: dots\r\n\r\n")
	b.WriteString(".\r\n")                  // a lone dot would end DATA if not stuffed
	b.WriteString("..two dots\r\n")         // must arrive with both dots
	b.WriteString(".leading dot\r\n")       //
	b.WriteString("middle . dot\r\n")       //
	b.WriteString("8bit: \xc3\xa9\xff\r\n") // raw bytes pass through
	b.WriteString(strings.Repeat("x", 900) + "\r\n")
	for range 5000 { // larger than the client's write buffer
		b.WriteString(".line\r\n")
	}
	b.WriteString(".\r\n")
	body := b.String()

	tr := &MX{Opt: e.options(nil)}
	res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, body, "b@dots.test")))
	if res.Outcome != Delivered {
		t.Fatalf("got %+v", res)
	}
	msgs := rcv.messages()
	if len(msgs) != 1 {
		t.Fatalf("receiver got %d messages", len(msgs))
	}
	if !bytes.Equal(msgs[0].Data, []byte(body)) {
		t.Errorf("body changed in transit: sent %d bytes, got %d", len(body), len(msgs[0].Data))
	}
}

func TestOpenFailureIsTemporary(t *testing.T) {
	e := newEnv(t)
	rcv := startReceiver(t, rcvConfig{})
	e.mx("open.test", "mx1.open.test", "127.0.0.2", rcv.addr)
	tr := &MX{Opt: e.options(nil)}
	req := request(LevelOpportunistic, testBody, "b@open.test")
	req.Open = func() (io.ReadCloser, error) { return nil, errors.New("disk gone") }
	res := one(t, tr.Deliver(ctxT(t), req))
	if res.Outcome != Temporary || res.Status != "4.3.0" {
		t.Errorf("got %+v, want temporary 4.3.0", res)
	}
	if len(rcv.messages()) != 0 {
		t.Error("a message arrived")
	}
}

func TestRelay(t *testing.T) {
	ca := testpki.NewCA(t, "deliver test CA")
	relayCert := ca.Server(t, "relay.test")
	mxCert := ca.Server(t, "mx1.one.test")

	// world: relay.test is the smart host; one.test's MX is probed only.
	world := func(t *testing.T, relayCfg, mxCfg rcvConfig) (*env, *receiver, *receiver) {
		e := newEnv(t)
		relay := startReceiver(t, relayCfg)
		mx := startReceiver(t, mxCfg)
		e.host("relay.test", "127.0.0.9", relay.addr)
		e.mx("one.test", "mx1.one.test", "127.0.0.2", mx.addr)
		return e, relay, mx
	}

	t.Run("verified relay, probed recipient MX", func(t *testing.T) {
		e, relay, mx := world(t, rcvConfig{cert: &relayCert}, rcvConfig{cert: &mxCert})
		tr := &Relay{Opt: e.options(ca.Pool()), Addr: "relay.test:25", Level: LevelVerify}
		for range 2 {
			rs := tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@one.test", "c@one.test"))
			for _, r := range rs {
				if r.Outcome != Delivered || r.MX != "relay.test" || r.TLS == nil || !r.TLS.Verified ||
					!strings.Contains(r.Response, "mx1.one.test") {
					t.Errorf("got %+v", r)
				}
			}
		}
		if msgs := relay.messages(); len(msgs) != 2 || len(msgs[0].Rcpts) != 2 || string(msgs[0].Data) != testBody {
			t.Errorf("relay got %+v", msgs)
		}
		_, mails := mx.counts()
		if n := e.dialsTo(mx); n != 1 || mails != 0 {
			t.Errorf("recipient MX: %d connections, %d MAIL; want one (cached) probe and no mail", n, mails)
		}
	})
	t.Run("recipient MX fails the level", func(t *testing.T) {
		e, relay, _ := world(t, rcvConfig{cert: &relayCert}, rcvConfig{})
		tr := &Relay{Opt: e.options(ca.Pool()), Addr: "relay.test:25", Level: LevelVerify}
		res := one(t, tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@one.test")))
		if res.Outcome != TLSUnavailable {
			t.Errorf("got %+v, want tls-unavailable", res)
		}
		if n := e.dialsTo(relay); n != 0 {
			t.Errorf("relay contacted %d times; want never", n)
		}
	})
	t.Run("dane level, domain without TLSA", func(t *testing.T) {
		e, relay, _ := world(t, rcvConfig{cert: &relayCert}, rcvConfig{cert: &mxCert})
		tr := &Relay{Opt: e.options(ca.Pool()), Addr: "relay.test:25", Level: LevelVerify}
		res := one(t, tr.Deliver(ctxT(t), request("dane", testBody, "b@one.test")))
		if res.Outcome != TLSUnavailable || len(relay.messages()) != 0 {
			t.Errorf("got %+v, %d messages; want tls-unavailable, nothing sent", res, len(relay.messages()))
		}
	})
	// The relay hop failing relay_tls is our problem, not the recipient's:
	// retry, do not fall through.
	t.Run("relay fails relay_tls", func(t *testing.T) {
		e, relay, _ := world(t, rcvConfig{}, rcvConfig{cert: &mxCert})
		tr := &Relay{Opt: e.options(ca.Pool()), Addr: "relay.test:25", Level: LevelVerify}
		res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@one.test")))
		if res.Outcome != Temporary || len(relay.messages()) != 0 {
			t.Errorf("got %+v, want temporary and nothing sent", res)
		}
	})
	t.Run("relay_tls none", func(t *testing.T) {
		e, relay, _ := world(t, rcvConfig{cert: &relayCert}, rcvConfig{})
		tr := &Relay{Opt: e.options(ca.Pool()), Addr: "relay.test:25", Level: LevelNone}
		res := one(t, tr.Deliver(ctxT(t), request(LevelNone, testBody, "b@one.test")))
		if res.Outcome != Delivered || res.TLS != nil {
			t.Errorf("got %+v, want delivered in plaintext", res)
		}
		if msgs := relay.messages(); len(msgs) != 1 || msgs[0].TLS {
			t.Errorf("relay got %+v", msgs)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		tr := &Relay{Addr: "no-port", Level: LevelVerify}
		if res := one(t, tr.Deliver(ctxT(t), request(LevelVerify, testBody, "b@one.test"))); res.Outcome != Temporary {
			t.Errorf("got %+v, want temporary", res)
		}
	})
}

// A server that answers with garbage yields a temporary error, not a panic.
func TestGarbageServer(t *testing.T) {
	for _, script := range []string{
		"HELLO GARBAGE\r\n",
		"220 ok\r\n" + "250-mx\r\n251 inconsistent\r\n",
		"220 ok\r\n" + "\x00\x01\x02\r\n",
		"554 go away\r\n",
		"220 ok\r\n" + strings.Repeat("250-x\r\n", 2000),
		"", // silent: the command timeout ends the wait
	} {
		e := newEnv(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, script)
				// Read what the client sends, so its writes do not fail
				// before it reads our reply.
				buf := make([]byte, 512)
				_, _ = c.Read(buf)
				c.Close()
			}
		}()
		e.mx("junk.test", "mx1.junk.test", "127.0.0.2", ln.Addr().String())
		opt := e.options(nil)
		opt.CommandTimeout = 300 * time.Millisecond
		tr := &MX{Opt: opt}
		res := one(t, tr.Deliver(ctxT(t), request(LevelOpportunistic, testBody, "b@junk.test")))
		if res.Outcome != Temporary && !(script == "554 go away\r\n" && res.Outcome == Permanent) {
			t.Errorf("script %q: got %+v, want temporary", script, res)
		}
		ln.Close()
	}
}

func TestDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	tr := &Dir{Path: dir}
	req := request(LevelVerify, testBody, "b@dest.test", "weird/../name@dest.test")
	rs := tr.Deliver(ctxT(t), req)
	if len(rs) != 2 {
		t.Fatalf("got %d results", len(rs))
	}
	for _, r := range rs {
		if r.Outcome != Delivered || r.Status != "2.0.0" || r.MX != "dir:"+dir {
			t.Errorf("result %+v", r)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	want := []string{"q1-b@dest.test.eml", "q1-weird_.._name@dest.test.eml"}
	if !slices.Equal(names, want) {
		t.Fatalf("files %q, want %q (and no temporary files)", names, want)
	}
	for i, rcpt := range []string{"b@dest.test", "weird/../name@dest.test"} {
		got, err := os.ReadFile(filepath.Join(dir, want[i]))
		if err != nil {
			t.Fatal(err)
		}
		exp := "Return-Path: <a@example.org>\r\nDelivered-To: " + rcpt + "\r\n" + testBody
		if string(got) != exp {
			t.Errorf("%s:\n%q\nwant\n%q", want[i], got, exp)
		}
	}
}

func TestDirOpenFailure(t *testing.T) {
	dir := t.TempDir()
	tr := &Dir{Path: dir}
	req := request(LevelVerify, testBody, "b@dest.test")
	req.Open = func() (io.ReadCloser, error) { return nil, errors.New("disk gone") }
	res := one(t, tr.Deliver(ctxT(t), req))
	if res.Outcome != Temporary || !strings.Contains(res.Response, "disk gone") {
		t.Errorf("got %+v", res)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left files behind: %v", entries)
	}
}

func TestValidLevelAndOutcomeNames(t *testing.T) {
	for _, l := range []string{LevelNone, LevelOpportunistic, LevelEncrypt, LevelVerify, LevelDANE, LevelMTASTS} {
		if !ValidLevel(l) {
			t.Errorf("ValidLevel(%q) = false", l)
		}
	}
	for _, l := range []string{"", "DANE", "mtasts", "VERIFY"} {
		if ValidLevel(l) {
			t.Errorf("ValidLevel(%q) = true", l)
		}
	}
	names := map[Outcome]string{Delivered: "delivered", Temporary: "temporary", Permanent: "permanent", TLSUnavailable: "tls-unavailable", Outcome(99): "unknown"}
	for o, n := range names {
		if o.String() != n {
			t.Errorf("%d.String() = %q, want %q", o, o.String(), n)
		}
	}
}
