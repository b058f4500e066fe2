package testpki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
)

func TestServerChainsToCA(t *testing.T) {
	ca := NewCA(t, "test CA")
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "test CA" {
		t.Fatalf("CA: IsCA=%v CN=%q", ca.Cert.IsCA, ca.Cert.Subject.CommonName)
	}
	c := Leaf(t, ca.Server(t, "mx.example", "alt.example"))
	if c.Subject.CommonName != "mx.example" || len(c.DNSNames) != 2 || c.IsCA {
		t.Fatalf("leaf: CN=%q names=%v IsCA=%v", c.Subject.CommonName, c.DNSNames, c.IsCA)
	}
	for _, name := range []string{"mx.example", "alt.example"} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name}); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "other.example"}); err == nil {
		t.Error("leaf verified for a name it does not carry")
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: NewCA(t, "test CA").Pool(), DNSName: "mx.example"}); err == nil {
		t.Error("leaf verified against another CA of the same name")
	}
}

func TestIssueUsage(t *testing.T) {
	ca := NewCA(t, "client CA")
	c := Leaf(t, ca.Issue(t, x509.ExtKeyUsageClientAuth, "client.example"))
	client := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := c.Verify(client); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err == nil {
		t.Error("client certificate verified for server authentication")
	}
}

func TestSelfSigned(t *testing.T) {
	ca := NewCA(t, "test CA")
	c := Leaf(t, SelfSigned(t, "mx.example"))
	if c.IsCA || c.Subject.String() != c.Issuer.String() {
		t.Fatalf("self-signed: IsCA=%v subject %q issuer %q", c.IsCA, c.Subject, c.Issuer)
	}
	if err := c.CheckSignatureFrom(c); err == nil {
		t.Error("a non-CA self-signed certificate is accepted as its own issuer")
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "mx.example"}); err == nil {
		t.Error("self-signed certificate verified against the CA")
	}
}

func TestPEM(t *testing.T) {
	ca := NewCA(t, "test CA")
	b, rest := pem.Decode(ca.PEM())
	if b == nil || b.Type != "CERTIFICATE" || len(rest) != 0 || !bytes.Equal(b.Bytes, ca.Cert.Raw) {
		t.Fatalf("PEM does not hold exactly the CA certificate")
	}
}

func TestServerTLSHandshake(t *testing.T) {
	ca := NewCA(t, "test CA")
	srvConn, cliConn := net.Pipe()
	defer srvConn.Close()
	defer cliConn.Close()
	srvCfg := ca.ServerTLS(t, "mx.example")
	errc := make(chan error, 1)
	go func() { errc <- tls.Server(srvConn, srvCfg).Handshake() }()
	cli := tls.Client(cliConn, &tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example"})
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}
