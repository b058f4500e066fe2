package smtpd

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/postern-mail/postern/gateway/queue"
	"github.com/postern-mail/postern/test/support/testpki"
)

const simpleMsg = "From: a@example.org\r\nTo: b@x.example\r\nSubject: test\r\n\r\nhello\r\n"

// received reads postern_messages_received_total{result} from the registry.
func received(h *harness, result string) float64 {
	mfs, err := h.opt.Metrics.Registry.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != "postern_messages_received_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

func TestAcceptedMessageIsQueued(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	msg := "Received: from upstream.example by mta.example.org; Tue, 1 Dec 2026 10:00:00 +0000\r\n" + simpleMsg
	reply, err := send(c, "a@example.org", []string{"b@x.example"}, msg)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	// Durable when 250 arrives: both files are on disk already.
	ids := h.q.Items()
	if len(ids) != 1 {
		t.Fatalf("queue holds %v after 250", ids)
	}
	id := ids[0]
	for _, p := range []string{filepath.Join(h.dir, "meta", id+".json"), filepath.Join(h.dir, "msg", id)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after 250: %v", err)
		}
	}
	if !strings.Contains(reply, "queued as "+id) {
		t.Errorf("250 reply %q does not name queue id %s", reply, id)
	}
	it, body := h.item(t, id)

	// Our Received header comes first (RFC 5321 §4.4), then the client's.
	if !strings.HasPrefix(body, "Received: from client.test ([127.0.0.1])\r\n\tby "+testHost+" (postern) with ESMTP id "+id+"\r\n\tfor <b@x.example>;\r\n\t") {
		t.Errorf("body does not start with our Received header:\n%s", body)
	}
	if i, j := strings.Index(body, "(postern)"), strings.Index(body, "Received: from upstream.example"); j < 0 || j < i {
		t.Errorf("client's Received header lost or before ours:\n%s", body)
	}
	// A Message-ID was added at the end of the header (RFC 5321 §6.4).
	wantID := "<" + id + "@" + testHost + ">"
	if it.MessageID != wantID {
		t.Errorf("MessageID = %q, want %q", it.MessageID, wantID)
	}
	if !strings.Contains(body, "Subject: test\r\nMessage-ID: "+wantID+"\r\n\r\nhello\r\n") {
		t.Errorf("Message-ID not added at the end of the header:\n%s", body)
	}
	if it.Envelope.From != "a@example.org" || len(it.Rcpts) != 1 || it.Rcpts[0].Addr != "b@x.example" || it.Rcpts[0].State != queue.Pending {
		t.Errorf("queue record = %+v", it)
	}
	if it.Size != int64(len(body)) {
		t.Errorf("Size = %d, body is %d bytes", it.Size, len(body))
	}
	if !strings.HasPrefix(it.Client, "127.0.0.1:") {
		t.Errorf("Client = %q", it.Client)
	}
	if got := received(h, "accepted"); got != 1 {
		t.Errorf("received{accepted} = %v, want 1", got)
	}
}

func TestMessageIDKept(t *testing.T) {
	for _, tc := range []struct{ name, header, want string }{
		{"plain", "Message-ID: <abc@client.example>\r\n", "<abc@client.example>"},
		{"case", "message-id:   <Low@client.example>  \r\n", "<Low@client.example>"},
		{"folded", "Message-ID:\r\n <folded@client.example>\r\n", "<folded@client.example>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			c := h.dial(t)
			msg := "Subject: x\r\n" + tc.header + "\r\nbody Message-ID: <not@header>\r\n"
			if _, err := send(c, "a@example.org", []string{"b@x.example", "c@y.example"}, msg); err != nil {
				t.Fatalf("send: %v", err)
			}
			it, body := h.queued(t)
			if it.MessageID != tc.want {
				t.Errorf("MessageID = %q, want %q", it.MessageID, tc.want)
			}
			if n := strings.Count(strings.ToLower(body), "message-id:"); n != 2 { // header + the body line
				t.Errorf("Message-ID lines = %d, want the client's only:\n%s", n, body)
			}
			if !strings.HasSuffix(body, msg) {
				t.Errorf("message changed beyond our Received header:\n%s", body)
			}
			if strings.Contains(body, "\tfor <") {
				t.Errorf("Received names a recipient although there are two:\n%s", body)
			}
		})
	}
}

func TestHeaderOnlyMessageGetsMessageID(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	if _, err := send(c, "", []string{"b@x.example"}, "Subject: no body\r\n"); err != nil {
		t.Fatalf("send: %v", err)
	}
	it, body := h.queued(t)
	want := "<" + it.ID + "@" + testHost + ">"
	if it.MessageID != want || !strings.HasSuffix(body, "Subject: no body\r\nMessage-ID: "+want+"\r\n") {
		t.Errorf("MessageID = %q, body:\n%s", it.MessageID, body)
	}
	if it.Envelope.From != "" {
		t.Errorf("null sender stored as %q", it.Envelope.From)
	}
}

func TestRelayDeniedOutsideAllowedNetworks(t *testing.T) {
	h := start(t, func(o *Options) { o.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} })
	c := h.dial(t)
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	wantCode(t, "RCPT", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
	h.assertNothingQueued(t)
	if got := received(h, "rejected"); got != 1 {
		t.Errorf("received{rejected} = %v, want 1", got)
	}
}

func TestNoAllowedNetworksIsNoRelay(t *testing.T) {
	h := start(t, func(o *Options) { o.AllowedNetworks = nil })
	c := h.dial(t)
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	wantCode(t, "RCPT", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
}

func TestSenderDomains(t *testing.T) {
	h := start(t, func(o *Options) { o.SenderDomains = []string{"example.org"} })
	c := h.dial(t)
	wantCode(t, "MAIL other domain", c.Mail("a@other.example", nil), 553, 5, 7, 1)
	wantCode(t, "MAIL subdomain", c.Mail("a@sub.example.org", nil), 553)
	wantCode(t, "MAIL bad syntax", c.Mail("a@-bad-.example", nil), 501, 5, 1, 7)
	// Domains compare case-insensitively.
	if _, err := send(c, "a@Example.ORG", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatalf("send from allowed domain: %v", err)
	}
	// The null sender (bounces) is not subject to sender_domains.
	if _, err := send(c, "", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatalf("send from <>: %v", err)
	}
	if n := h.q.Len(); n != 2 {
		t.Errorf("queued %d, want 2", n)
	}
}

func TestRequireTLS(t *testing.T) {
	h := start(t, func(o *Options) { o.RequireTLS = true })
	c := h.dial(t)
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}
	wantCode(t, "MAIL before STARTTLS", c.Mail("a@example.org", nil), 530, 5, 7, 0)

	c2 := h.dialTLS(t, nil)
	if _, err := send(c2, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatalf("send over TLS: %v", err)
	}
	_, body := h.queued(t)
	first := body[:strings.Index(body, ";\r\n")]
	if !strings.Contains(first, "with ESMTPS (TLS1.") {
		t.Errorf("Received header does not record TLS: %q", first)
	}
}

func TestClientCertNames(t *testing.T) {
	clientCA := testpki.NewCA(t, "client CA")
	otherCA := testpki.NewCA(t, "other CA")
	outlook := clientCA.Issue(t, x509.ExtKeyUsageClientAuth, "mail.protection.outlook.com")
	wrongName := clientCA.Issue(t, x509.ExtKeyUsageClientAuth, "mail.attacker.example")
	untrusted := otherCA.Issue(t, x509.ExtKeyUsageClientAuth, "mail.protection.outlook.com")

	h := start(t, func(o *Options) {
		o.TLS.ClientCAs = clientCA.Pool()
		o.TLS.ClientAuth = tls.VerifyClientCertIfGiven
		o.ClientCertNames = []string{"mail.protection.outlook.com"}
	})

	t.Run("named", func(t *testing.T) {
		c := h.dialTLS(t, &outlook)
		if _, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
			t.Fatalf("send with the named certificate: %v", err)
		}
	})
	t.Run("other name", func(t *testing.T) {
		c := h.dialTLS(t, &wrongName)
		if err := c.Mail("a@example.org", nil); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "RCPT", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
	})
	t.Run("no certificate", func(t *testing.T) {
		c := h.dialTLS(t, nil)
		if err := c.Mail("a@example.org", nil); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "RCPT", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
	})
	t.Run("no TLS", func(t *testing.T) {
		c := h.dial(t)
		if err := c.Mail("a@example.org", nil); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "RCPT", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
	})
	t.Run("untrusted CA", func(t *testing.T) {
		// The handshake itself is refused; whatever the client sees, no
		// transaction gets through.
		c, err := smtp.DialStartTLS(h.addr, clientTLS(&untrusted))
		if err == nil {
			defer c.Close()
			err = c.Mail("a@example.org", nil)
		}
		if err == nil {
			err = c.Rcpt("b@x.example", nil)
		}
		if err == nil {
			t.Fatal("relay allowed for a certificate from an untrusted CA")
		}
	})
	if n := h.q.Len(); n != 1 {
		t.Errorf("queued %d, want only the named client's message", n)
	}
}

func TestAuth(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, func(o *Options) { o.Users = map[string][]byte{"alice": hash} })
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00s3cret"))

	t.Run("not offered before TLS", func(t *testing.T) {
		r := h.raw(t)
		if code, _ := r.cmd(""); code != 220 {
			t.Fatalf("greeting %d", code)
		}
		code, text := r.cmd("EHLO client.test")
		if code != 250 || hasLine(text, "AUTH") {
			t.Fatalf("EHLO before TLS: %d %q; want no AUTH", code, text)
		}
		if code, text := r.cmd("AUTH PLAIN %s", plain); code != 523 {
			t.Errorf("AUTH before TLS = %d %q, want 523", code, text)
		}
		r.cmd("MAIL FROM:<a@example.org>")
		if code, _ := r.cmd("RCPT TO:<b@x.example>"); code != 554 {
			t.Errorf("RCPT without AUTH = %d, want 554", code)
		}
	})
	t.Run("PLAIN over TLS", func(t *testing.T) {
		c := h.dialTLS(t, nil)
		if !c.SupportsAuth(sasl.Plain) || !c.SupportsAuth(sasl.Login) {
			t.Fatal("AUTH PLAIN/LOGIN not offered over TLS")
		}
		if err := c.Auth(sasl.NewPlainClient("", "alice", "s3cret")); err != nil {
			t.Fatalf("AUTH PLAIN: %v", err)
		}
		if _, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
			t.Fatalf("send after AUTH: %v", err)
		}
	})
	t.Run("LOGIN over TLS", func(t *testing.T) {
		c := h.dialTLS(t, nil)
		if err := c.Auth(sasl.NewLoginClient("alice", "s3cret")); err != nil {
			t.Fatalf("AUTH LOGIN: %v", err)
		}
		if err := c.Mail("a@example.org", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("b@x.example", nil); err != nil {
			t.Fatalf("RCPT after AUTH LOGIN: %v", err)
		}
	})
	for _, tc := range []struct {
		name string
		cl   sasl.Client
	}{
		{"wrong password", sasl.NewPlainClient("", "alice", "wrong")},
		{"unknown user", sasl.NewPlainClient("", "mallory", "s3cret")},
		{"other identity", sasl.NewPlainClient("bob", "alice", "s3cret")},
		{"LOGIN wrong password", sasl.NewLoginClient("alice", "wrong")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dialTLS(t, nil)
			wantCode(t, "AUTH", c.Auth(tc.cl), 535)
			if err := c.Mail("a@example.org", nil); err != nil {
				t.Fatal(err)
			}
			wantCode(t, "RCPT after failed AUTH", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
		})
	}
	t.Run("unauthenticated over TLS", func(t *testing.T) {
		c := h.dialTLS(t, nil)
		if err := c.Mail("a@example.org", nil); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "RCPT", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
	})
	if n := h.q.Len(); n != 1 {
		t.Errorf("queued %d, want 1", n)
	}
	// The Received header marks the authenticated submission (RFC 3848).
	_, body := h.queued(t)
	if !strings.Contains(body[:200], "with ESMTPSA") {
		t.Errorf("Received header lacks ESMTPSA:\n%s", body[:200])
	}
}

func TestMaxRecipients(t *testing.T) {
	h := start(t, func(o *Options) { o.MaxRecipients = 2 })
	c := h.dial(t)
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"b@x.example", "c@x.example"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, "third RCPT", c.Rcpt("d@x.example", nil), 452, 4, 5, 3)
	if _, err := data(c, simpleMsg); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	it, _ := h.queued(t)
	if len(it.Rcpts) != 2 {
		t.Errorf("queued %d recipients, want 2", len(it.Rcpts))
	}
}

func TestMaxMessageSize(t *testing.T) {
	h := start(t, func(o *Options) { o.MaxMessageBytes = 2000 })
	c := h.dial(t)
	big := simpleMsg + strings.Repeat("0123456789012345678901234567890123456789\r\n", 100)
	_, err := send(c, "a@example.org", []string{"b@x.example"}, big)
	wantCode(t, "oversized DATA", err, 552, 5, 3, 4)
	h.assertNothingQueued(t)
	// The session goes on.
	if _, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatalf("small message after a refused one: %v", err)
	}
}

func TestMailLoop(t *testing.T) {
	hops := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "Received: from hop%d.example by hop%d.example; Tue, 1 Dec 2026 10:00:00 +0000\r\n", i, i+1)
		}
		return b.String()
	}
	h := start(t, nil)
	c := h.dial(t)
	_, err := send(c, "a@example.org", []string{"b@x.example"}, hops(51)+simpleMsg)
	wantCode(t, "51 Received headers", err, 554, 5, 4, 6)
	// Folded and lower-case names count too.
	_, err = send(c, "a@example.org", []string{"b@x.example"}, strings.ReplaceAll(hops(51), "Received: from", "received:\r\n\tfrom")+simpleMsg)
	wantCode(t, "51 folded received headers", err, 554, 5, 4, 6)
	h.assertNothingQueued(t)

	// 49 earlier hops plus ours is within the limit (RFC 5321 §6.3).
	if _, err := send(c, "a@example.org", []string{"b@x.example"}, hops(49)+simpleMsg); err != nil {
		t.Fatalf("49 Received headers: %v", err)
	}
	// Received lines in the body are not hops.
	if _, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg+hops(60)); err != nil {
		t.Fatalf("Received lines in the body: %v", err)
	}
	if n := h.q.Len(); n != 2 {
		t.Errorf("queued %d, want 2", n)
	}
}

func TestMaxConnections(t *testing.T) {
	h := start(t, func(o *Options) { o.MaxConnections = 2 })
	c1 := h.dial(t)
	h.dial(t)
	r := h.raw(t)
	code, text := r.cmd("")
	if code != 421 || !strings.HasPrefix(text, "4.7.0") {
		t.Fatalf("extra connection got %d %q, want 421 4.7.0", code, text)
	}
	// The connection is closed after the 421.
	if _, err := r.ReadLine(); err == nil {
		t.Error("connection left open after 421")
	}
	// A slot frees up when a session ends.
	if err := c1.Quit(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := h.raw(t)
		code, _ := r.cmd("")
		if code == 220 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused (%d) after a session ended", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A disk problem is a temporary local error (451 4.3.0) whose text tells the
// client nothing about our file system.
func TestDiskTrouble(t *testing.T) {
	for _, sub := range []string{"tmp", "meta", "msg"} {
		t.Run(sub, func(t *testing.T) {
			h := start(t, nil)
			// Replace the directory by a regular file: fails even as root.
			p := filepath.Join(h.dir, sub)
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("in the way"), 0o600); err != nil {
				t.Fatal(err)
			}
			c := h.dial(t)
			_, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg)
			se := wantCode(t, "DATA with "+sub+"/ broken", err, 451, 4, 3, 0)
			for _, leak := range []string{h.dir, sub + "/", "directory", "queue", "rename", "open", "/"} {
				if strings.Contains(strings.ToLower(se.Message), leak) {
					t.Errorf("reply text %q leaks %q", se.Message, leak)
				}
			}
			if n := h.q.Len(); n != 0 {
				t.Errorf("queue holds %d after a failed commit", n)
			}
			for _, d := range []string{"msg", "tmp"} {
				if es, err := os.ReadDir(filepath.Join(h.dir, d)); err == nil && len(es) != 0 {
					t.Errorf("%s/ keeps %d files after a failed commit", d, len(es))
				}
			}
			if got := received(h, "error"); got != 1 {
				t.Errorf("received{error} = %v, want 1", got)
			}
			// The session survives and the client may retry.
			if err := c.Noop(); err != nil {
				t.Errorf("session unusable after 451: %v", err)
			}
		})
	}
}

func TestEnvelopeParametersKept(t *testing.T) {
	h := start(t, nil)
	c := h.dialTLS(t, nil)
	if ok, _ := c.Extension("REQUIRETLS"); !ok {
		t.Fatal("REQUIRETLS not offered over TLS")
	}
	opts := &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env+id=1", UTF8: true, RequireTLS: true}
	if err := c.Mail("jörg@example.org", opts); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	if err := c.Rcpt("b@x.example", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig+x@example.net",
	}); err != nil {
		t.Fatalf("RCPT 1: %v", err)
	}
	if err := c.Rcpt("ü@x.example", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}); err != nil {
		t.Fatalf("RCPT 2: %v", err)
	}
	if _, err := data(c, simpleMsg); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	it, body := h.queued(t)
	env := it.Envelope
	if env.From != "jörg@example.org" || !env.UTF8 || !env.RequireTLS || env.Ret != "HDRS" || env.EnvID != "env+id=1" {
		t.Errorf("envelope = %+v", env)
	}
	if len(it.Rcpts) != 2 {
		t.Fatalf("recipients = %+v", it.Rcpts)
	}
	r1, r2 := it.Rcpts[0], it.Rcpts[1]
	if r1.Addr != "b@x.example" || !slices.Equal(r1.Notify, []string{"SUCCESS", "FAILURE"}) || r1.ORCPT != "RFC822;orig+x@example.net" {
		t.Errorf("recipient 1 = %+v", r1)
	}
	if r2.Addr != "ü@x.example" || !slices.Equal(r2.Notify, []string{"NEVER"}) || r2.ORCPT != "" {
		t.Errorf("recipient 2 = %+v", r2)
	}
	if r1.WantsDSN("FAILURE") != true || r2.WantsDSN("FAILURE") != false {
		t.Errorf("WantsDSN disagrees with NOTIFY")
	}
	// RFC 6531 §3.7.3: UTF8SMTPS for an SMTPUTF8 transaction over TLS.
	if !strings.Contains(body[:200], "with UTF8ESMTPS") {
		t.Errorf("Received header lacks UTF8ESMTPS:\n%s", body[:200])
	}
}

func TestEnvelopeDefaults(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	if _, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatal(err)
	}
	it, _ := h.queued(t)
	env, r := it.Envelope, it.Rcpts[0]
	if env.UTF8 || env.RequireTLS || env.Ret != "" || env.EnvID != "" || r.Notify != nil || r.ORCPT != "" {
		t.Errorf("parameters invented: envelope %+v, recipient %+v", env, r)
	}
}

// RFC 8689 §4.1: REQUIRETLS is offered, and accepted, only on a TLS session.
func TestRequireTLSOnlyAfterSTARTTLS(t *testing.T) {
	h := start(t, nil)
	r := h.raw(t)
	r.cmd("")
	code, text := r.cmd("EHLO client.test")
	if code != 250 || hasLine(text, "REQUIRETLS") {
		t.Fatalf("EHLO before TLS: %d %q; want no REQUIRETLS", code, text)
	}
	if code, text := r.cmd("MAIL FROM:<a@example.org> REQUIRETLS"); code/100 != 5 {
		t.Fatalf("MAIL REQUIRETLS without TLS = %d %q, want refused", code, text)
	}
	// Without the parameter the same session may proceed.
	if code, text := r.cmd("MAIL FROM:<a@example.org>"); code != 250 {
		t.Fatalf("MAIL = %d %q", code, text)
	}
	h.assertNothingQueued(t)
}

func TestBadRecipientSyntax(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"no-at-sign", "b@[127.0.0.1]", "b@-bad-.example", "b@x..example"} {
		err := c.Rcpt(addr, nil)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code/100 != 5 {
			t.Errorf("RCPT %q = %v, want a 5xx", addr, err)
		}
	}
}

func TestShutdownStopsAccepting(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	if _, err := send(c, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := h.srv.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := smtp.Dial(h.addr); err == nil {
		t.Error("connection accepted after Shutdown")
	}
	if h.q.Len() != 1 {
		t.Errorf("accepted message lost")
	}
}

// A line over max_line_length is refused for good, not blamed on our disk.
func TestLineTooLong(t *testing.T) {
	h := start(t, func(o *Options) { o.MaxLineLength = 1000 })
	r := h.raw(t)
	r.cmd("")
	r.cmd("EHLO client.test")
	if code, text := r.cmd("MAIL FROM:<a@example.org>"); code != 250 {
		t.Fatalf("MAIL = %d %q", code, text)
	}
	if code, text := r.cmd("RCPT TO:<b@x.example>"); code != 250 {
		t.Fatalf("RCPT = %d %q", code, text)
	}
	if code, text := r.cmd("DATA"); code != 354 {
		t.Fatalf("DATA = %d %q", code, text)
	}
	msg := "Subject: long\r\n\r\n" + strings.Repeat("x", 1500) + "\r\n.\r\n"
	if _, err := r.c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	code, text := r.cmd("")
	if code != 554 || !strings.HasPrefix(text, "5.6.0") {
		t.Fatalf("reply to a too long line = %d %q, want 554 5.6.0", code, text)
	}
	h.assertNothingQueued(t)
	if got := received(h, "rejected"); got != 1 {
		t.Errorf("received{rejected} = %v, want 1", got)
	}
}
