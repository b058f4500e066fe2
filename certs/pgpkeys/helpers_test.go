package pgpkeys

import (
	"bytes"
	"context"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/postern-mail/postern/test/support/testpki"
)

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
	ca := testpki.NewCA(t, "postern test CA")
	ks.pool = ca.Pool()
	ks.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.mu.Lock()
		ks.hits = append(ks.hits, r.Host+r.URL.RequestURI())
		ks.mu.Unlock()
		handler(w, r)
	}))
	ks.srv.TLS = ca.ServerTLS(t, hosts...)
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
