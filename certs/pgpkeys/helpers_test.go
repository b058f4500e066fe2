package pgpkeys

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// testCA makes a CA and a server certificate for names, returning the
// server's TLS config and a pool trusting the CA.
func testCA(t testing.TB, names ...string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "postern test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}}, pool
}

// keyServer is a loopback HTTPS server standing in for every WKD and VKS
// host of a test; dial maps those names to it.
type keyServer struct {
	srv   *httptest.Server
	pool  *x509.CertPool
	mu    sync.Mutex
	hits  []string // Host + RequestURI of each request
	hosts map[string]bool
}

func newKeyServer(t *testing.T, handler http.HandlerFunc, hosts ...string) *keyServer {
	t.Helper()
	ks := &keyServer{hosts: map[string]bool{}}
	for _, h := range hosts {
		ks.hosts[h] = true
	}
	cfg, pool := testCA(t, hosts...)
	ks.pool = pool
	ks.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.mu.Lock()
		ks.hits = append(ks.hits, r.Host+r.URL.RequestURI())
		ks.mu.Unlock()
		handler(w, r)
	}))
	ks.srv.TLS = cfg
	ks.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	ks.srv.StartTLS()
	t.Cleanup(ks.srv.Close)
	return ks
}

// dial resolves the test's host names to the server; any other name does
// not exist.
func (ks *keyServer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if !ks.hosts[host] || port != "443" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, ks.srv.Listener.Addr().String())
}

func (ks *keyServer) requests() []string {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return append([]string(nil), ks.hits...)
}

func (ks *keyServer) reset() {
	ks.mu.Lock()
	ks.hits = nil
	ks.mu.Unlock()
}

// newTestEntity makes a v4 ed25519/cv25519 key with one user ID.
func newTestEntity(t testing.TB, name, email string, cfg *packet.Config) *openpgp.Entity {
	t.Helper()
	if cfg == nil {
		cfg = &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	}
	e, err := openpgp.NewEntity(name, "", email, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func publicBytes(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := e.Serialize(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func armoredPublic(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	buf.WriteString("\n")
	return buf.Bytes()
}

func fpr(e *openpgp.Entity) string {
	return strings.ToUpper(hexString(e.PrimaryKey.Fingerprint))
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func findKey(keys []Key, fingerprint string) *Key {
	for i := range keys {
		if keys[i].Fingerprint == fingerprint {
			return &keys[i]
		}
	}
	return nil
}
