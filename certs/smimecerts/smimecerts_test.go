package smimecerts_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mozilla.org/pkcs7"

	"github.com/postern-mail/postern/certs/smimecerts"
	"github.com/postern-mail/postern/certs/smimecerts/smimetest"
)

// fixture is a CA, a roots file and a certificate directory.
type fixture struct {
	ca        *smimetest.CA
	dir       string
	rootsFile string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	base := t.TempDir()
	f := &fixture{ca: smimetest.NewCA(t, "Test Root"), dir: filepath.Join(base, "smime"), rootsFile: filepath.Join(base, "roots.pem")}
	if err := os.Mkdir(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	smimetest.WriteFile(t, f.rootsFile, smimetest.CertPEM(f.ca.Cert))
	return f
}

func (f *fixture) write(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(f.dir, name)
	smimetest.WriteFile(t, p, data)
	return p
}

func (f *fixture) store(t *testing.T, mod func(*smimecerts.Options)) *smimecerts.Store {
	t.Helper()
	opt := smimecerts.Options{Dir: f.dir, RootsFile: f.rootsFile}
	if mod != nil {
		mod(&opt)
	}
	s, err := smimecerts.New(opt)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func lookupOne(t *testing.T, s *smimecerts.Store, addr string) smimecerts.Cert {
	t.Helper()
	cs, err := s.Lookup(context.Background(), addr)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", addr, err)
	}
	if len(cs) != 1 {
		t.Fatalf("Lookup(%s): %d certificates, want 1: %+v", addr, len(cs), cs)
	}
	return cs[0]
}

// TestRefusals: every way a certificate can be unusable, each with its
// reason; the EC certificate among them is refused, not a panic.
func TestRefusals(t *testing.T) {
	f := newFixture(t)
	other := smimetest.NewCA(t, "Other Root")
	now := time.Now()
	rsaKey := smimetest.NewKey(t, smimetest.RSA2048)
	cases := []struct {
		name   string
		addr   string
		issuer *smimetest.CA
		opt    smimetest.LeafOptions
		want   string // substring of Reason; "" = usable
	}{
		{"valid", "ok@x.example", nil, smimetest.LeafOptions{}, ""},
		{"no key usage, no eku", "bare@x.example", nil, smimetest.LeafOptions{NoKeyUsage: true, NoExtKeyUsage: true}, ""},
		{"eku any", "any@x.example", nil, smimetest.LeafOptions{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}, ""},
		{"ec key", "ec@x.example", nil, smimetest.LeafOptions{KeyType: smimetest.ECDSA}, "unsupported key type ECDSA"},
		{"ed25519 key", "ed@x.example", nil, smimetest.LeafOptions{KeyType: smimetest.Ed25519}, "unsupported key type Ed25519"},
		{"rsa 1024", "small@x.example", nil, smimetest.LeafOptions{KeyType: smimetest.RSA1024}, "RSA key 1024 bits < 2048"},
		{"expired", "old@x.example", nil, smimetest.LeafOptions{NotBefore: now.AddDate(-2, 0, 0), NotAfter: time.Date(2024, 1, 2, 12, 0, 0, 0, time.UTC)}, "expired 2024-01-02"},
		{"not yet valid", "new@x.example", nil, smimetest.LeafOptions{NotBefore: now.Add(48 * time.Hour)}, "not yet valid"},
		{"wrong address", "wrong@x.example", nil, smimetest.LeafOptions{Emails: []string{"someone-else@x.example"}, SubjectEmail: "wrong@x.example"}, "no rfc822Name for wrong@x.example"},
		{"untrusted ca", "stranger@x.example", other, smimetest.LeafOptions{}, "untrusted: "},
		{"key usage without encipherment", "signonly@x.example", nil, smimetest.LeafOptions{KeyUsage: x509.KeyUsageDigitalSignature}, "key usage lacks keyEncipherment"},
		{"eku without email", "tls@x.example", nil, smimetest.LeafOptions{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, "extended key usage lacks emailProtection"},
	}
	for _, c := range cases {
		issuer := c.issuer
		if issuer == nil {
			issuer = f.ca
		}
		o := c.opt
		if o.Emails == nil {
			o.Emails = []string{c.addr}
		}
		if o.KeyType == "" {
			o.Key = rsaKey // RSA key generation is slow; share one
		}
		leaf := issuer.Issue(t, o)
		f.write(t, c.name+".pem", smimetest.CertPEM(leaf.Cert))
	}
	s := f.store(t, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := lookupOne(t, s, c.addr)
			if c.want == "" {
				if !got.Usable {
					t.Fatalf("not usable: %s", got.Reason)
				}
				if !strings.HasPrefix(got.Reason, "certificate SHA256:"+got.Fingerprint[:16]) || !strings.HasSuffix(got.Reason, "from local") {
					t.Errorf("reason %q", got.Reason)
				}
				return
			}
			if got.Usable {
				t.Fatalf("usable, want refusal %q", c.want)
			}
			if !strings.Contains(got.Reason, c.want) {
				t.Errorf("reason %q, want it to contain %q", got.Reason, c.want)
			}
			if got.Source != smimecerts.SourceLocal || !strings.HasSuffix(got.Origin, c.name+".pem") {
				t.Errorf("source %q origin %q", got.Source, got.Origin)
			}
			best, all, err := s.Best(context.Background(), c.addr)
			if err != nil || best != nil || len(all) != 1 {
				t.Errorf("Best = %v, %d, %v; want nil, 1, nil", best, len(all), err)
			}
		})
	}
}

func TestNoRootsMeansUntrusted(t *testing.T) {
	f := newFixture(t)
	f.write(t, "bob.pem", smimetest.CertPEM(f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"bob@x.example"}}).Cert))
	s := f.store(t, func(o *smimecerts.Options) { o.RootsFile = "" })
	got := lookupOne(t, s, "bob@x.example")
	if got.Usable || !strings.Contains(got.Reason, "untrusted: no trust anchors") {
		t.Fatalf("usable=%v reason %q", got.Usable, got.Reason)
	}
}

func TestIntermediateFromDir(t *testing.T) {
	f := newFixture(t)
	mid := f.ca.Intermediate(t, "Test Sub CA")
	leaf := mid.Issue(t, smimetest.LeafOptions{Emails: []string{"carol@x.example"}})
	// Without the intermediate the chain cannot be built.
	f.write(t, "carol.crt", leaf.Cert.Raw) // DER
	s := f.store(t, nil)
	if got := lookupOne(t, s, "carol@x.example"); got.Usable || !strings.HasPrefix(got.Reason, "untrusted:") {
		t.Fatalf("without intermediate: usable=%v %q", got.Usable, got.Reason)
	}
	f.write(t, "sub-ca.pem", smimetest.CertPEM(mid.Cert))
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := lookupOne(t, s, "carol@x.example"); !got.Usable {
		t.Fatalf("with intermediate: %q", got.Reason)
	}
}

func TestBestTakesLongestValid(t *testing.T) {
	f := newFixture(t)
	key := smimetest.NewKey(t, smimetest.RSA2048)
	now := time.Now()
	addr := "dave@x.example"
	short := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{addr}, Key: key, NotAfter: now.AddDate(0, 1, 0)})
	long := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{addr}, Key: key, NotAfter: now.AddDate(2, 0, 0)})
	expired := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{addr}, Key: key, NotBefore: now.AddDate(-3, 0, 0), NotAfter: now.AddDate(-1, 0, 0)})
	ec := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{addr}, KeyType: smimetest.ECDSA, NotAfter: now.AddDate(5, 0, 0)})
	// Several certificates in one file, and a duplicate in another.
	f.write(t, "dave.pem", smimetest.CertPEM(short.Cert, expired.Cert, ec.Cert, long.Cert))
	f.write(t, "dave-dup.cer", long.Cert.Raw)
	s := f.store(t, nil)
	best, all, err := s.Best(context.Background(), "<Dave@X.Example>")
	if err != nil {
		t.Fatal(err)
	}
	if best == nil || best.Cert.Equal(long.Cert) == false {
		t.Fatalf("best = %+v, want the longest valid", best)
	}
	if len(all) != 4 {
		t.Fatalf("%d certificates, want 4 (duplicate dropped)", len(all))
	}
	if !all[0].Usable || !all[1].Usable || all[2].Usable || all[3].Usable {
		t.Errorf("order: %v %v %v %v", all[0].Usable, all[1].Usable, all[2].Usable, all[3].Usable)
	}
	if !all[1].Cert.Equal(short.Cert) {
		t.Errorf("second is not the shorter valid certificate")
	}
}

func TestReloadAndProblems(t *testing.T) {
	f := newFixture(t)
	s := f.store(t, nil)
	if cs, _ := s.Lookup(context.Background(), "erin@x.example"); len(cs) != 0 {
		t.Fatalf("found %d before the file exists", len(cs))
	}
	f.write(t, "erin.pem", smimetest.CertPEM(f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"erin@x.example"}}).Cert))
	f.write(t, "junk.pem", []byte("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"))
	f.write(t, "binary.der", []byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.write(t, "readme.txt", []byte("ignored: not a certificate extension"))
	f.write(t, "key-only.pem", smimetest.KeyPEM(t, smimetest.NewKey(t, smimetest.ECDSA)))
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := lookupOne(t, s, "erin@x.example"); !got.Usable {
		t.Fatalf("after reload: %s", got.Reason)
	}
	probs := strings.Join(s.Problems(), "\n")
	for _, want := range []string{"junk.pem", "binary.der", "key-only.pem: no certificate found"} {
		if !strings.Contains(probs, want) {
			t.Errorf("problems lack %q:\n%s", want, probs)
		}
	}
	if strings.Contains(probs, "readme.txt") {
		t.Errorf("readme.txt should be ignored:\n%s", probs)
	}

	// A broken roots file fails the reload and keeps the old state.
	smimetest.WriteFile(t, f.rootsFile, []byte("garbage"))
	if err := s.Reload(); err == nil {
		t.Fatal("reload with a broken roots file succeeded")
	}
	if got := lookupOne(t, s, "erin@x.example"); !got.Usable {
		t.Fatalf("old state lost: %s", got.Reason)
	}
	if _, err := smimecerts.New(smimecerts.Options{Dir: f.dir, RootsFile: f.rootsFile}); err == nil {
		t.Fatal("New with a broken roots file succeeded")
	}
	if _, err := smimecerts.New(smimecerts.Options{Dir: filepath.Join(f.dir, "missing")}); err == nil {
		t.Fatal("New with a missing directory succeeded")
	}
}

func TestNowOptionAndLookupHook(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue(t, smimetest.LeafOptions{Emails: []string{"fay@x.example"}})
	f.write(t, "fay.pem", smimetest.CertPEM(leaf.Cert))
	var (
		mu    sync.Mutex
		calls []string
		clock = time.Now()
	)
	s := f.store(t, func(o *smimecerts.Options) {
		o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
		o.OnLookup = func(src, res string) { mu.Lock(); calls = append(calls, src+"/"+res); mu.Unlock() }
	})
	if got := lookupOne(t, s, "fay@x.example"); !got.Usable {
		t.Fatal(got.Reason)
	}
	mu.Lock()
	clock = leaf.Cert.NotAfter.Add(time.Second)
	mu.Unlock()
	if got := lookupOne(t, s, "fay@x.example"); got.Usable || !strings.HasPrefix(got.Reason, "expired ") {
		t.Fatalf("after expiry: usable=%v %q", got.Usable, got.Reason)
	}
	if _, err := s.Lookup(context.Background(), "nobody@x.example"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := "local/found local/not_found local/not_found"
	if got := strings.Join(calls, " "); got != want {
		t.Errorf("hook calls %q, want %q", got, want)
	}
}

func TestParseCertificates(t *testing.T) {
	ca := smimetest.NewCA(t, "Parse Root")
	leaf := ca.Issue(t, smimetest.LeafOptions{Emails: []string{"p@x.example"}})
	p7, err := pkcs7.DegenerateCertificate(append(append([]byte(nil), leaf.Cert.Raw...), ca.Cert.Raw...))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := smimetest.KeyPEM(t, leaf.Key)
	cases := []struct {
		name    string
		in      []byte
		n       int
		wantErr bool
	}{
		{"pem two", smimetest.CertPEM(leaf.Cert, ca.Cert), 2, false},
		{"pem with key", append(append([]byte{}, keyPEM...), smimetest.CertPEM(leaf.Cert)...), 1, false},
		{"pem after text starting with 0", append([]byte("0 = the root\n"), smimetest.CertPEM(leaf.Cert)...), 1, false},
		{"der", leaf.Cert.Raw, 1, false},
		{"pkcs7 der", p7, 2, false},
		{"pkcs7 pem", []byte("-----BEGIN PKCS7-----\n" + b64lines(p7) + "-----END PKCS7-----\n"), 2, false},
		{"pem one bad", append(smimetest.CertPEM(leaf.Cert), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"...), 1, true},
		{"key only", keyPEM, 0, true},
		{"empty", nil, 0, true},
		{"text", []byte("hello"), 0, true},
		{"truncated der", leaf.Cert.Raw[:100], 0, true},
		{"huge", make([]byte, smimecerts.MaxCertFileSize+1), 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := smimecerts.ParseCertificates(c.in)
			if len(got) != c.n || (err != nil) != c.wantErr {
				t.Fatalf("got %d certificates, err %v; want %d, error %v", len(got), err, c.n, c.wantErr)
			}
		})
	}
	if _, err := smimecerts.ParseCertificates(nil); !errors.Is(err, smimecerts.ErrNoCertificate) {
		t.Errorf("empty input: %v, want ErrNoCertificate", err)
	}
}

func b64lines(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(s) > 64 {
		out.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	out.WriteString(s + "\n")
	return out.String()
}
