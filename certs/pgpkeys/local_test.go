package pgpkeys

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/postern-mail/postern/certs/pgpkeys/pgptest"
)

// TestGPGKeysFromDir reads keys made by GnuPG from keys.pgp_dir and checks
// each verdict: usable ed25519/cv25519 and RSA-3072 keys, and a key without
// an encryption subkey, an expired key and a revoked key refused with their
// reasons.
func TestGPGKeysFromDir(t *testing.T) {
	g := pgptest.New(t)
	alice := g.GenKey("Alice Example <alice@x.example>", "ed25519", "sign", "0")
	g.AddKey(alice, "cv25519", "encr", "0")
	bob := g.GenKey("Bob Example <bob@x.example>", "rsa3072", "sign", "0")
	g.AddKey(bob, "rsa3072", "encr", "0")
	carol := g.GenKey("Carol <carol@x.example>", "ed25519", "sign", "0") // no encryption subkey
	// Dave's key was made in 2020 and expired a day later.
	dave := g.GenKey("Dave <dave@x.example>", "ed25519", "sign", "1d", "--faked-system-time", "20200101T000000!")
	g.AddKey(dave, "cv25519", "encr", "1d", "--faked-system-time", "20200101T000000!")
	erin := g.GenKey("Erin <erin@x.example>", "ed25519", "sign", "0")
	g.AddKey(erin, "cv25519", "encr", "0")
	revoke(t, g, erin)

	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	alicePath := write("alice.asc", g.Export(alice, true))
	bobPath := write("bob.gpg", g.Export(bob, false))
	// Several armored keys in one file.
	var multi []byte
	for _, f := range []string{carol, dave, erin} {
		multi = append(multi, g.Export(f, true)...)
	}
	write("team.asc", multi)
	badPath := write("broken.asc", []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all!!\n-----END PGP PUBLIC KEY BLOCK-----\n"))
	write("notes.txt", []byte("ignored"))

	var lookups []string
	s, err := New(Options{Dir: dir, OnLookup: func(src, res string) { lookups = append(lookups, src+"/"+res) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	probs := s.Problems()
	if len(probs) != 1 || !strings.HasPrefix(probs[0], badPath+": ") {
		t.Errorf("Problems() = %q, want one for %s", probs, badPath)
	}

	ctx := context.Background()
	cases := []struct {
		addr, fpr, origin string
		usable            bool
		reason            string
	}{
		{"alice@x.example", alice, alicePath, true, "key 0x" + alice[24:] + " from local"},
		{"Alice@X.Example", alice, alicePath, true, "key 0x" + alice[24:] + " from local"},
		{"bob@x.example", bob, bobPath, true, "key 0x" + bob[24:] + " from local"},
		{"carol@x.example", carol, "", false, "no encryption subkey"},
		{"dave@x.example", dave, "", false, "expired 2020-01-02"},
		{"erin@x.example", erin, "", false, "revoked"},
	}
	for _, c := range cases {
		keys, err := s.Lookup(ctx, c.addr)
		if err != nil {
			t.Fatalf("%s: %v", c.addr, err)
		}
		if len(keys) != 1 {
			t.Fatalf("%s: %d keys, want 1: %+v", c.addr, len(keys), keys)
		}
		k := keys[0]
		if k.Fingerprint != c.fpr || k.Usable != c.usable || !strings.HasPrefix(k.Reason, c.reason) {
			t.Errorf("%s: got fpr %s usable %v reason %q; want %s %v %q", c.addr, k.Fingerprint, k.Usable, k.Reason, c.fpr, c.usable, c.reason)
		}
		if k.Source != SourceLocal || k.Entity == nil {
			t.Errorf("%s: source %q entity %v", c.addr, k.Source, k.Entity != nil)
		}
		if c.origin != "" && k.Origin != c.origin {
			t.Errorf("%s: origin %q, want %q", c.addr, k.Origin, c.origin)
		}
		if k.KeyID != "0x"+c.fpr[24:] {
			t.Errorf("%s: key ID %s", c.addr, k.KeyID)
		}
		best, _, err := s.Best(ctx, c.addr)
		if err != nil {
			t.Fatal(err)
		}
		if (best != nil) != c.usable {
			t.Errorf("%s: Best = %v, want usable %v", c.addr, best, c.usable)
		}
	}
	keys, _ := s.Lookup(ctx, "dave@x.example")
	if want := time.Date(2020, 1, 2, 0, 0, 0, 0, time.UTC); !keys[0].Expires.Equal(want) {
		t.Errorf("dave expires %v, want %v", keys[0].Expires, want)
	}
	keys, _ = s.Lookup(ctx, "alice@x.example")
	if !keys[0].Expires.IsZero() || keys[0].Created.IsZero() || !slices.Equal(keys[0].UserIDs, []string{"Alice Example <alice@x.example>"}) {
		t.Errorf("alice: %+v", keys[0])
	}
	if keys, err := s.Lookup(ctx, "nobody@x.example"); err != nil || len(keys) != 0 {
		t.Errorf("nobody: %v %v", keys, err)
	}
	if _, err := s.Lookup(ctx, "not an address"); err == nil {
		t.Error("invalid address accepted")
	}
	if !slices.Contains(lookups, "local/found") || !slices.Contains(lookups, "local/not_found") {
		t.Errorf("OnLookup calls %v", lookups)
	}
}

// TestLocalWinsOverRemote checks that WKD is not asked when a usable local
// key exists, and is asked when the local key is unusable.
func TestLocalWinsOverRemote(t *testing.T) {
	local := newTestEntity(t, "Ann", "ann@a.example", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, KeyLifetimeSecs: 3600})
	remote := newTestEntity(t, "Ann", "ann@a.example", nil)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ann.asc"), armoredPublic(t, local), 0o644); err != nil {
		t.Fatal(err)
	}
	ks := newKeyServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write(publicBytes(t, remote))
	}, "openpgpkey.a.example", "a.example")
	s, err := New(Options{Dir: dir, WKD: true, Dial: ks.dial, RootCAs: ks.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	best, all, err := s.Best(context.Background(), "ann@a.example")
	if err != nil || best == nil || best.Source != SourceLocal || best.Fingerprint != fpr(local) || len(all) != 1 {
		t.Fatalf("best %+v all %d err %v", best, len(all), err)
	}
	if n := len(ks.requests()); n != 0 {
		t.Errorf("WKD asked %d times despite a usable local key", n)
	}
	// LookupAll asks every source, for diagnostics.
	all, err = s.LookupAll(context.Background(), "ann@a.example")
	if err != nil || len(all) != 2 || all[0].Source != SourceLocal || all[1].Source != SourceWKD || all[1].Fingerprint != fpr(remote) {
		t.Errorf("LookupAll: %v %+v", err, all)
	}
	// A source that fails is reported next to what the others found.
	s3, err := New(Options{Dir: dir, WKD: true, Dial: ks.dial}) // the test CA is not trusted here
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	all, err = s3.LookupAll(context.Background(), "ann@a.example")
	if err == nil || !strings.HasPrefix(err.Error(), "wkd: ") || len(all) != 1 || all[0].Source != SourceLocal {
		t.Errorf("LookupAll with a failing source: %v %+v", err, all)
	}

	// Now the local key is expired (the clock moves on): WKD is asked and
	// its key is taken; the local one is still listed first.
	s2, err := New(Options{Dir: dir, WKD: true, Dial: ks.dial, RootCAs: ks.pool, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	best, all, err = s2.Best(context.Background(), "ann@a.example")
	if err != nil || best == nil {
		t.Fatalf("best %v err %v", best, err)
	}
	if len(all) != 2 || all[0].Source != SourceLocal || all[0].Usable || all[1].Source != SourceWKD || best.Source != SourceWKD {
		t.Errorf("keys %+v", all)
	}
	if !strings.HasPrefix(all[0].Reason, "expired ") {
		t.Errorf("reason %q", all[0].Reason)
	}
}

// TestReload checks the directory is re-read, and an unreadable one keeps
// the old set.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if keys, _ := s.Lookup(ctx, "zed@z.example"); len(keys) != 0 {
		t.Fatal("key before it was added")
	}
	e := newTestEntity(t, "Zed", "zed@z.example", nil)
	if err := os.WriteFile(filepath.Join(dir, "zed.pgp"), publicBytes(t, e), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if best, _, _ := s.Best(ctx, "zed@z.example"); best == nil {
		t.Fatal("key not found after Reload")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("Reload of a missing directory succeeded")
	}
	if best, _, _ := s.Best(ctx, "zed@z.example"); best == nil {
		t.Fatal("old key set not kept after a failed Reload")
	}
	if _, err := New(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "keys.pgp_dir") {
		t.Fatalf("New with a missing dir: %v", err)
	}
}
