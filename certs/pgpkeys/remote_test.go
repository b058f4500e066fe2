package pgpkeys

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The example of draft-koch-openpgp-webkey-service §3.1.
func TestWKDURLs(t *testing.T) {
	adv, direct, err := WKDURLs("Joe.Doe@Example.ORG")
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"; adv != want {
		t.Errorf("advanced\n got %s\nwant %s", adv, want)
	}
	if want := "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"; direct != want {
		t.Errorf("direct\n got %s\nwant %s", direct, want)
	}
	if _, _, err := WKDURLs("x@evil.example/path"); err == nil {
		t.Error("domain with a slash accepted")
	}
	// Only ASCII is lower-cased before hashing.
	if asciiLower("ÄBc") != "Äbc" {
		t.Error(asciiLower("ÄBc"))
	}
}

func wkdHash(t *testing.T, addr string) string {
	adv, _, err := WKDURLs(addr)
	if err != nil {
		t.Fatal(err)
	}
	hu := adv[strings.Index(adv, "/hu/")+4:]
	return hu[:strings.IndexByte(hu, '?')]
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestWKDAndVKS runs the advanced and direct WKD methods and the VKS
// look-up against a loopback HTTPS server with a test CA trusted through
// RootCAs, and checks caching.
func TestWKDAndVKS(t *testing.T) {
	adv := newTestEntity(t, "Adv User", "advuser@adv.example", nil)
	dir := newTestEntity(t, "Dir User", "Dir.User@dir.example", nil)
	vks := newTestEntity(t, "VKS User", "vksuser@vks.example", nil)
	wrong := newTestEntity(t, "Someone Else", "someone-else@adv.example", nil)

	var gotL atomic.Value
	ks := newKeyServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Host == "openpgpkey.adv.example" && r.URL.Path == "/.well-known/openpgpkey/adv.example/hu/"+wkdHash(t, "advuser@adv.example"):
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(publicBytes(t, adv))
		case r.Host == "openpgpkey.adv.example" && r.URL.Path == "/.well-known/openpgpkey/adv.example/hu/"+wkdHash(t, "other@adv.example"):
			w.Write(publicBytes(t, wrong))
		case r.Host == "dir.example" && r.URL.Path == "/.well-known/openpgpkey/hu/"+wkdHash(t, "dir.user@dir.example"):
			gotL.Store(r.URL.Query().Get("l"))
			w.Write(publicBytes(t, dir))
		case r.Host == "keys.example" && r.URL.RequestURI() == "/vks/v1/by-email/vksuser%40vks.example":
			w.Header().Set("Content-Type", "application/pgp-keys")
			w.Write(armoredPublic(t, vks))
		default:
			http.NotFound(w, r)
		}
	}, "openpgpkey.adv.example", "dir.example", "keys.example", "vks.example")

	clock := &testClock{now: time.Now()}
	var mu sync.Mutex
	counts := map[string]int{}
	s, err := New(Options{
		WKD: true, Keyserver: "https://keys.example/", Dial: ks.dial, RootCAs: ks.pool,
		CacheTTL: time.Hour, Now: clock.Now, Timeout: 5 * time.Second,
		OnLookup: func(src, res string) { mu.Lock(); counts[src+"/"+res]++; mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	// Advanced method.
	best, all, err := s.Best(ctx, "advuser@adv.example")
	if err != nil || best == nil {
		t.Fatalf("advuser: %v %+v", err, all)
	}
	advURL, _, _ := WKDURLs("advuser@adv.example")
	if best.Source != SourceWKD || best.Origin != advURL || best.Fingerprint != fpr(adv) || best.Reason != "key "+best.KeyID+" from wkd" {
		t.Errorf("advuser: %+v", best)
	}
	if len(all) != 1 {
		t.Errorf("advuser: VKS asked although WKD gave a usable key: %+v", all)
	}

	// Direct method: openpgpkey.dir.example does not exist.
	best, _, err = s.Best(ctx, "Dir.User@dir.example")
	if err != nil || best == nil {
		t.Fatalf("dir user: %v", err)
	}
	_, directURL, _ := WKDURLs("Dir.User@dir.example")
	if best.Origin != directURL || best.Fingerprint != fpr(dir) {
		t.Errorf("dir user: %+v", best)
	}
	if l, _ := gotL.Load().(string); l != "Dir.User" {
		t.Errorf("l parameter %q, want the local part as given", l)
	}

	// WKD has nothing (404 on both hosts of vks.example), VKS has it.
	ks.reset()
	best, all, err = s.Best(ctx, "vksuser@vks.example")
	if err != nil || best == nil || best.Source != SourceVKS || best.Fingerprint != fpr(vks) || len(all) != 1 {
		t.Fatalf("vks user: %v %+v", err, all)
	}
	if best.Origin != "https://keys.example/vks/v1/by-email/vksuser%40vks.example" {
		t.Errorf("vks origin %q", best.Origin)
	}
	if reqs := ks.requests(); len(reqs) != 2 || !strings.HasPrefix(reqs[0], "vks.example/.well-known/openpgpkey/hu/") {
		t.Errorf("requests %q", reqs)
	}

	// WKD answers with a key for another address: refused with the reason.
	keys, err := s.Lookup(ctx, "other@adv.example")
	if err != nil || len(keys) != 1 || keys[0].Usable || keys[0].Reason != "no user ID for other@adv.example" {
		t.Fatalf("other: %v %+v", err, keys)
	}

	// Cached: no request the second time, positive or negative.
	ks.reset()
	for _, a := range []string{"advuser@adv.example", "vksuser@vks.example", "other@adv.example"} {
		if _, err := s.Lookup(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if reqs := ks.requests(); len(reqs) != 0 {
		t.Errorf("cached answers fetched again: %q", reqs)
	}
	// Negative answers expire after 5 minutes, positive ones after CacheTTL.
	clock.Add(6 * time.Minute)
	if _, err := s.Lookup(ctx, "vksuser@vks.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "advuser@adv.example"); err != nil {
		t.Fatal(err)
	}
	if reqs := ks.requests(); len(reqs) != 1 || !strings.HasPrefix(reqs[0], "vks.example/") {
		t.Errorf("after 6 minutes: %q (want only the negative WKD answer for vks.example refetched)", reqs)
	}
	clock.Add(time.Hour)
	ks.reset()
	if _, err := s.Lookup(ctx, "advuser@adv.example"); err != nil {
		t.Fatal(err)
	}
	if reqs := ks.requests(); len(reqs) != 1 {
		t.Errorf("after the TTL: %q", reqs)
	}
	mu.Lock()
	defer mu.Unlock()
	if counts["wkd/found"] < 3 || counts["wkd/not_found"] < 1 || counts["vks/found"] != 1 || counts["vks/not_found"] != 1 {
		t.Errorf("OnLookup counts %v", counts)
	}
}

// TestRemoteRefusals: redirects to another host, answers over the size
// cap, untrusted certificates, timeouts and server errors are errors, not
// keys; errors are not cached.
func TestRemoteRefusals(t *testing.T) {
	good := newTestEntity(t, "Good", "good@r.example", nil)
	var broken atomic.Bool
	broken.Store(true)
	release := make(chan struct{})
	ks := newKeyServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, wkdHash(t, "redir@r.example")):
			http.Redirect(w, r, "https://evil.example/key", http.StatusFound)
		case strings.Contains(r.URL.Path, wkdHash(t, "samehost@r.example")) && r.URL.Query().Get("moved") == "":
			http.Redirect(w, r, r.URL.Path+"?moved=1", http.StatusFound)
		case strings.Contains(r.URL.Path, wkdHash(t, "samehost@r.example")):
			w.Write(publicBytes(t, newTestEntity(t, "Same", "samehost@r.example", nil)))
		case strings.Contains(r.URL.Path, wkdHash(t, "big@r.example")):
			w.Write(make([]byte, 5000))
		case strings.Contains(r.URL.Path, wkdHash(t, "slow@r.example")):
			select {
			case <-release:
			case <-r.Context().Done():
				panic(http.ErrAbortHandler) // no answer at all
			}
		case strings.Contains(r.URL.Path, wkdHash(t, "good@r.example")):
			if broken.Load() {
				http.Error(w, "oops", http.StatusInternalServerError)
				return
			}
			w.Write(publicBytes(t, good))
		case strings.Contains(r.URL.Path, wkdHash(t, "junk@r.example")):
			w.Write([]byte("<html>not a key</html>"))
		default:
			http.NotFound(w, r)
		}
	}, "openpgpkey.r.example", "evil.example")
	defer close(release)

	s, err := New(Options{WKD: true, Dial: ks.dial, RootCAs: ks.pool, MaxKeyBytes: 4096, Timeout: 10 * time.Second, CacheTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for addr, want := range map[string]string{
		"redir@r.example": "redirect to another host refused",
		"big@r.example":   "limit",
		"good@r.example":  "HTTP status 500",
		"junk@r.example":  "not an OpenPGP packet",
	} {
		keys, err := s.Lookup(ctx, addr)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: keys %d, err %v; want an error with %q", addr, len(keys), err, want)
		}
	}
	// A server that does not answer within Timeout.
	quick, err := New(Options{WKD: true, Dial: ks.dial, RootCAs: ks.pool, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer quick.Close()
	start := time.Now()
	if _, err := quick.Lookup(ctx, "slow@r.example"); err == nil || !strings.Contains(err.Error(), "timeout") && !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("slow: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("slow look-up took %v", d)
	}

	if best, _, err := s.Best(ctx, "samehost@r.example"); err != nil || best == nil {
		t.Errorf("redirect within the host: %v %v", best, err)
	}
	// The failure was not cached: once the server is fixed, the key comes.
	broken.Store(false)
	if best, _, err := s.Best(ctx, "good@r.example"); err != nil || best == nil {
		t.Errorf("after repair: %v %v", best, err)
	}

	// A certificate from a CA that is not trusted.
	s2, err := New(Options{WKD: true, Dial: ks.dial, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Lookup(ctx, "good@r.example"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted CA: %v", err)
	}

	// A caller that gives up gets its context's error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Lookup(cctx, "slow2@r.example"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// TestConcurrentLookupsShareOneFetch: many goroutines asking at once cause
// one request.
func TestConcurrentLookupsShareOneFetch(t *testing.T) {
	e := newTestEntity(t, "Many", "many@c.example", nil)
	ks := newKeyServer(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		w.Write(publicBytes(t, e))
	}, "openpgpkey.c.example")
	s, err := New(Options{WKD: true, Dial: ks.dial, RootCAs: ks.pool, CacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if best, _, err := s.Best(context.Background(), "many@c.example"); err != nil || best == nil {
				t.Errorf("%v %v", best, err)
			}
		}()
	}
	wg.Wait()
	if n := len(ks.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestNewRejectsBadKeyserver(t *testing.T) {
	for _, u := range []string{"keys.openpgp.org", "ftp://x.example", "https://"} {
		if _, err := New(Options{Keyserver: u}); err == nil {
			t.Errorf("keyserver %q accepted", u)
		}
	}
}
