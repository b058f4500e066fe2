package smtpd

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/postern-mail/postern/test/support/testpki"
)

// smtp.client_ca alone (no client_cert_names) still requires a verified
// client certificate: otherwise any client in allowed_networks relays.
func TestClientCAAloneRequiresCertificate(t *testing.T) {
	clientCA := testpki.NewCA(t, "client CA")
	any := clientCA.Issue(t, x509.ExtKeyUsageClientAuth, "mta.customer.example")
	h := start(t, func(o *Options) {
		o.TLS.ClientCAs = clientCA.Pool()
		o.TLS.ClientAuth = tls.VerifyClientCertIfGiven
		o.ClientCert = true
	})
	c := h.dialTLS(t, nil)
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "RCPT without a certificate", c.Rcpt("b@x.example", nil), 554, 5, 7, 1)
	c2 := h.dialTLS(t, &any)
	if _, err := send(c2, "a@example.org", []string{"b@x.example"}, simpleMsg); err != nil {
		t.Fatalf("send with a certificate from client_ca: %v", err)
	}
}

// A null sender has no domain to check against sender_domains: its header
// From must be in them, or MAIL FROM:<> would relay anything.
func TestNullSenderHeaderFromChecked(t *testing.T) {
	h := start(t, func(o *Options) { o.SenderDomains = []string{"example.org"} })
	c := h.dial(t)
	_, err := send(c, "", []string{"b@x.example"}, "From: spammer@evil.example\r\nSubject: x\r\n\r\nbuy\r\n")
	wantCode(t, "DATA from <> with a foreign header From", err, 553, 5, 7, 1)
	h.assertNothingQueued(t)
	c2 := h.dial(t)
	if _, err := send(c2, "", []string{"b@x.example"}, "From: Mail Delivery System <MAILER-DAEMON@example.org>\r\nSubject: bounce\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("a bounce from our own domain: %v", err)
	}
}

// The same recipient twice gives one copy, not two deliveries.
func TestDuplicateRecipientCollapsed(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	if _, err := send(c, "a@example.org", []string{"b@x.example", "B@x.example"}, simpleMsg); err != nil {
		t.Fatal(err)
	}
	it, _ := h.queued(t)
	if len(it.Rcpts) != 1 {
		t.Fatalf("%d recipients queued, want 1", len(it.Rcpts))
	}
}

// "TLS-Required: No" (RFC 8689 §5) is kept with the message.
func TestTLSRequiredNoKept(t *testing.T) {
	h := start(t, nil)
	c := h.dial(t)
	if _, err := send(c, "a@example.org", []string{"b@x.example"}, "From: a@example.org\r\nTLS-Required: No\r\nSubject: x\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	it, _ := h.queued(t)
	if !it.Envelope.TLSRequiredNo {
		t.Fatal("TLS-Required: No not recorded")
	}
}
