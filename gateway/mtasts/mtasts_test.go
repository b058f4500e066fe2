package mtasts

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern-mail/postern/gateway/dnsr"
	"github.com/postern-mail/postern/gateway/dnsr/dnstest"
	"github.com/postern-mail/postern/test/support/testpki"
)

func TestParse(t *testing.T) {
	p, err := Parse([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net.\r\nmax_age: 604800\r\nfuture: x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeEnforce || p.MaxAge != 604800*time.Second || len(p.MX) != 2 || p.MX[1] != "*.example.net" {
		t.Errorf("got %+v", p)
	}
	for host, want := range map[string]bool{
		"mail.example.com": true, "MAIL.example.com.": true, "x.example.com": false,
		"a.example.net": true, "example.net": false, "a.b.example.net": false, ".example.net": false,
	} {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
	if p, err := Parse([]byte("version: STSv1\nmode: none\nmax_age: 0\n")); err != nil || p.Mode != ModeNone {
		t.Errorf("mode none without mx: %+v %v", p, err)
	}
	for _, bad := range []string{
		"",
		"mode: enforce\nmx: a.example\nmax_age: 1\n",
		"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
		"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmx: a.example\n",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
		"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1\n",
		"version: STSv1\nno colon\n",
		strings.Repeat("x", MaxPolicySize+1),
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%.60q) succeeded", bad)
		}
	}
}

func TestParseRecord(t *testing.T) {
	for in, want := range map[string]string{
		"v=STSv1; id=20160831085700Z;": "20160831085700Z",
		"v=STSv1;id=abc":               "abc",
		"v=STSv1; ext=1; id=X1 ;":      "X1",
	} {
		if id, err := ParseRecord(in); err != nil || id != want {
			t.Errorf("ParseRecord(%q) = %q, %v", in, id, err)
		}
	}
	for _, bad := range []string{"v=STSv2; id=1", "v=STSv1;", "v=STSv1; id=", "v=STSv1; id=a-b", "v=STSv1; id=" + strings.Repeat("a", 33), "id=1; v=STSv1", "v=STSv1; id=1; id=2"} {
		if _, err := ParseRecord(bad); err == nil {
			t.Errorf("ParseRecord(%q) succeeded", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("version: STSv1\nmode: enforce\nmx: *.example.net\nmax_age: 86400\n"))
	f.Add([]byte("version: STSv1\r\nmode: testing\r\nmx: a\r\nmax_age: 0000000001\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > MaxAgeLimit || (p.Mode != ModeNone && len(p.MX) == 0) {
			t.Fatalf("accepted an invalid policy: %+v", p)
		}
		for _, m := range p.MX {
			_ = p.Match(strings.TrimPrefix(m, "*."))
		}
	})
}

// world is a loopback DNS server and HTTPS policy server for policy.test.
type world struct {
	dns    *dnstest.Server
	srv    *httptest.Server
	roots  *x509.CertPool
	hits   atomic.Int32
	mu     sync.Mutex
	handle http.HandlerFunc
	now    time.Time
}

func (w *world) setHandler(h http.HandlerFunc) { w.mu.Lock(); w.handle = h; w.mu.Unlock() }

func (w *world) clock() time.Time { w.mu.Lock(); defer w.mu.Unlock(); return w.now }

func (w *world) advance(d time.Duration) { w.mu.Lock(); w.now = w.now.Add(d); w.mu.Unlock() }

func serve(policy string) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(rw, policy)
	}
}

func newWorld(t *testing.T) (*world, *Client) {
	t.Helper()
	d, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	w := &world{dns: d, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ca := testpki.NewCA(t, "ca")
	w.roots = ca.Pool()
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.hits.Add(1)
		w.mu.Lock()
		h := w.handle
		w.mu.Unlock()
		h(rw, r)
	}))
	w.srv.TLS = ca.ServerTLS(t, "mta-sts.policy.test")
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	d.SetA("mta-sts.policy.test", "127.0.0.77")
	d.SetTXT("_mta-sts.policy.test", "v=STSv1; id=1;")
	w.setHandler(serve("version: STSv1\nmode: enforce\nmx: mx.policy.test\nmax_age: 86400\n"))
	real := w.srv.Listener.Addr().String()
	c := &Client{
		Resolver: dnsr.NewClient(d.Addr, 2*time.Second),
		Roots:    w.roots,
		Store:    DirStore{Dir: t.TempDir()},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != "127.0.0.77:443" {
				return nil, fmt.Errorf("unexpected dial to %s", addr)
			}
			var dd net.Dialer
			return dd.DialContext(ctx, network, real)
		},
		Now: w.clock,
	}
	return w, c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGetCachesAndHonoursID(t *testing.T) {
	w, c := newWorld(t)
	p, err := c.Get(ctxT(t), "policy.test")
	if err != nil || p.Policy.Mode != ModeEnforce || p.ID != "1" {
		t.Fatalf("Get = %+v, %v", p, err)
	}
	if _, err := c.Get(ctxT(t), "Policy.Test."); err != nil || w.hits.Load() != 1 {
		t.Fatalf("second Get: %v, %d fetches; want the cached policy", err, w.hits.Load())
	}
	// A new id means a new policy: fetched again.
	w.dns.SetTXT("_mta-sts.policy.test", "v=STSv1; id=2;")
	w.setHandler(serve("version: STSv1\nmode: testing\nmx: mx.policy.test\nmax_age: 86400\n"))
	p, err = c.Get(ctxT(t), "policy.test")
	if err != nil || p.Policy.Mode != ModeTesting || p.ID != "2" || w.hits.Load() != 2 {
		t.Fatalf("after id change: %+v, %v, %d fetches", p, err, w.hits.Load())
	}
	// Persisted: a new client with the same store has it without fetching.
	c2 := &Client{Resolver: c.Resolver, Store: c.Store, Now: w.clock, Dial: c.Dial}
	if p, err := c2.Get(ctxT(t), "policy.test"); err != nil || p.ID != "2" || w.hits.Load() != 2 {
		t.Errorf("from disk: %+v, %v", p, err)
	}
}

func TestCachedPolicyKeptWhenServerDown(t *testing.T) {
	w, c := newWorld(t)
	if _, err := c.Get(ctxT(t), "policy.test"); err != nil {
		t.Fatal(err)
	}
	w.setHandler(func(rw http.ResponseWriter, r *http.Request) { http.Error(rw, "down", 503) })
	w.dns.SetTXT("_mta-sts.policy.test", "v=STSv1; id=9;")
	p, err := c.Get(ctxT(t), "policy.test")
	if err != nil || p.ID != "1" || p.Policy.Mode != ModeEnforce {
		t.Fatalf("got %+v, %v; want the cached policy", p, err)
	}
	// TXT record gone: cached policy still applies until it expires.
	w.dns.SetTXT("_mta-sts.policy.test")
	if p, err := c.Get(ctxT(t), "policy.test"); err != nil || p == nil {
		t.Fatalf("without TXT: %+v, %v", p, err)
	}
	// After max_age the cache is not used.
	w.advance(86401 * time.Second)
	if p, err := c.Get(ctxT(t), "policy.test"); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("after expiry: %+v, %v; want ErrNoPolicy", p, err)
	}
}

func TestMaxAgeRefetch(t *testing.T) {
	w, c := newWorld(t)
	if _, err := c.Get(ctxT(t), "policy.test"); err != nil {
		t.Fatal(err)
	}
	w.advance(86401 * time.Second)
	if _, err := c.Get(ctxT(t), "policy.test"); err != nil || w.hits.Load() != 2 {
		t.Errorf("after max_age: %v, %d fetches; want a refetch", err, w.hits.Load())
	}
	// Refresh re-fetches a policy past half its life.
	w.advance(50000 * time.Second)
	if err := c.Refresh(ctxT(t)); err != nil || w.hits.Load() != 3 {
		t.Errorf("Refresh: %v, %d fetches", err, w.hits.Load())
	}
	cached, err := c.Store.Load("policy.test")
	if err != nil || !cached.Expires.Equal(w.clock().Add(86400*time.Second)) {
		t.Errorf("refreshed expiry: %+v, %v", cached, err)
	}
}

func TestFetchRefusals(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"redirect": func(rw http.ResponseWriter, r *http.Request) {
			http.Redirect(rw, r, "https://mta-sts.policy.test/other", http.StatusFound)
		},
		"oversize": func(rw http.ResponseWriter, r *http.Request) {
			rw.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(rw, "version: STSv1\nmode: enforce\nmx: mx.policy.test\nmax_age: 86400\n"+strings.Repeat("#: padding\n", 7000))
		},
		"content type": func(rw http.ResponseWriter, r *http.Request) {
			rw.Header().Set("Content-Type", "text/html")
			fmt.Fprint(rw, "version: STSv1\nmode: enforce\nmx: mx.policy.test\nmax_age: 86400\n")
		},
		"not found": http.NotFound,
		"syntax":    serve("version: STSv1\nmode: maybe\n"),
	} {
		t.Run(name, func(t *testing.T) {
			w, c := newWorld(t)
			w.setHandler(h)
			p, err := c.Get(ctxT(t), "policy.test")
			if err == nil || errors.Is(err, ErrNoPolicy) {
				t.Errorf("got %+v, %v; want a fetch error", p, err)
			}
			if d, _ := c.Store.Domains(); len(d) != 0 {
				t.Errorf("cached %v", d)
			}
		})
	}
	t.Run("untrusted certificate", func(t *testing.T) {
		_, c := newWorld(t)
		c.Roots = x509.NewCertPool()
		if _, err := c.Get(ctxT(t), "policy.test"); err == nil {
			t.Error("policy fetched from a server with an untrusted certificate")
		}
	})
	t.Run("slow server", func(t *testing.T) {
		w, c := newWorld(t)
		c.Timeout = 300 * time.Millisecond
		release := make(chan struct{})
		defer close(release)
		w.setHandler(func(rw http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		start := time.Now()
		if _, err := c.Get(ctxT(t), "policy.test"); err == nil || time.Since(start) > 5*time.Second {
			t.Errorf("err %v after %v", err, time.Since(start))
		}
	})
}

func TestNoOrAmbiguousRecord(t *testing.T) {
	for name, txt := range map[string][]string{
		"none":      nil,
		"two":       {"v=STSv1; id=1;", "v=STSv1; id=2;"},
		"malformed": {"v=STSv1; id=no-dash;"},
	} {
		t.Run(name, func(t *testing.T) {
			w, c := newWorld(t)
			w.dns.SetTXT("_mta-sts.policy.test", txt...)
			if txt == nil {
				w.dns.SetTXT("_mta-sts.policy.test", "unrelated")
			}
			if _, err := c.Get(ctxT(t), "policy.test"); !errors.Is(err, ErrNoPolicy) || w.hits.Load() != 0 {
				t.Errorf("err %v, %d fetches; want ErrNoPolicy and no fetch", err, w.hits.Load())
			}
		})
	}
}

func TestDirStoreRejectsBadNames(t *testing.T) {
	s := DirStore{Dir: t.TempDir()}
	for _, d := range []string{"../x", "a/b", "", "*.x"} {
		if err := s.Save(&Cached{Domain: d}); err == nil {
			t.Errorf("Save(%q) succeeded", d)
		}
	}
}
