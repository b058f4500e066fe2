package pgpkeys

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/postern-mail/postern/certs/pgpkeys/pgptest"
)

func TestSplitPacketsFormats(t *testing.T) {
	body := bytes.Repeat([]byte{7}, 300)
	cases := []struct {
		name string
		in   []byte
		tag  int
		n    int
		err  string
	}{
		{"new one-octet", append([]byte{0xc0 | 13, 3}, "abc"...), 13, 3, ""},
		{"new two-octet", append([]byte{0xc0 | 13, 192, 108}, body...), 13, 300, ""},
		{"new five-octet", append([]byte{0xc0 | 13, 255, 0, 0, 1, 44}, body...), 13, 300, ""},
		{"legacy one-octet", append([]byte{0x80 | 13<<2, 3}, "abc"...), 13, 3, ""},
		{"legacy two-octet", append([]byte{0x80 | 13<<2 | 1, 1, 44}, body...), 13, 300, ""},
		{"legacy four-octet", append([]byte{0x80 | 13<<2 | 2, 0, 0, 1, 44}, body...), 13, 300, ""},
		{"legacy indeterminate", append([]byte{0x80 | 13<<2 | 3}, "abcd"...), 13, 4, ""},
		{"partial length", append([]byte{0xc0 | 6, 224}, "a"...), 0, 0, "partial body length"},
		{"too long", []byte{0xc0 | 13, 10, 'a'}, 0, 0, "past the end"},
		{"huge length", []byte{0xc0 | 13, 255, 0xff, 0xff, 0xff, 0xff}, 0, 0, "beyond end"},
		{"truncated header", []byte{0xc0 | 13, 200}, 0, 0, "truncated"},
		{"not a packet", []byte("hello"), 0, 0, "not an OpenPGP packet"},
	}
	for _, c := range cases {
		pkts, err := splitPackets(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || len(pkts) != 1 || pkts[0].tag != c.tag || len(pkts[0].body) != c.n {
			t.Errorf("%s: %v %+v", c.name, err, pkts)
		}
	}
}

// TestParseKeysShapes: armored and binary input, several keys per file and
// per armor block, and a bad block among good ones.
func TestParseKeysShapes(t *testing.T) {
	a := newTestEntity(t, "A", "a@p.example", nil)
	b := newTestEntity(t, "B", "b@p.example", nil)
	c := newTestEntity(t, "C", "c@p.example", &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 2048})

	bin := append(publicBytes(t, a), publicBytes(t, b)...)
	keys, err := parseKeys(bin, "bin")
	if err != nil || len(keys) != 2 || keys[0].fingerprint != fpr(a) || keys[1].fingerprint != fpr(b) {
		t.Fatalf("binary: %v %d", err, len(keys))
	}
	// Two certificates in one armor block, then a broken block, then one
	// more block after some text.
	var one bytes.Buffer
	w, _ := armor.Encode(&one, openpgp.PublicKeyType, nil)
	w.Write(bin)
	w.Close()
	in := one.String() + "\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----\nsome text\n" + string(armoredPublic(t, c))
	keys, err = parseKeys([]byte(in), "arm")
	if len(keys) != 3 || keys[2].fingerprint != fpr(c) || keys[2].entity == nil {
		t.Fatalf("armored: %d keys", len(keys))
	}
	if err == nil || !strings.Contains(err.Error(), "armor block 2") {
		t.Errorf("armored: err %v", err)
	}
	for _, k := range keys {
		if k.keyID != "0x"+k.fingerprint[24:] || k.created.IsZero() || len(k.uids) != 1 {
			t.Errorf("key %+v", k)
		}
	}
	// A signature block is not a key.
	if _, err := parseKeys([]byte("-----BEGIN PGP SIGNATURE-----\n\nwsBcBAABCAAQBQJ\n-----END PGP SIGNATURE-----\n"), "sig"); err == nil {
		t.Error("signature block accepted")
	}
	if _, err := parseKeys([]byte("just text\n"), "txt"); err == nil {
		t.Error("text accepted")
	}
}

// TestSecretKeysAreStripped: a secret key in the directory is used as its
// public part only.
func TestSecretKeysAreStripped(t *testing.T) {
	e := newTestEntity(t, "S", "s@p.example", nil)
	var buf bytes.Buffer
	if err := e.SerializePrivate(&buf, nil); err != nil {
		t.Fatal(err)
	}
	keys, err := parseKeys(buf.Bytes(), "sec")
	if err != nil || len(keys) != 1 || keys[0].entity == nil {
		t.Fatalf("%v %d", err, len(keys))
	}
	if keys[0].entity.PrivateKey != nil || keys[0].entity.Subkeys[0].PrivateKey != nil || keys[0].fingerprint != fpr(e) {
		t.Error("secret material kept")
	}
}

func TestUnsupportedAndWeakKeys(t *testing.T) {
	now := time.Now()
	// Change the algorithm octet of the primary key to an unassigned value:
	// the key packet cannot be parsed, but the user ID is still read so
	// the reason reaches the address.
	e := newTestEntity(t, "U", "u@p.example", nil)
	raw := publicBytes(t, e)
	pkts, err := splitPackets(raw)
	if err != nil {
		t.Fatal(err)
	}
	pkts[0].body[5] = 99
	keys, _ := parseKeys(raw, "mut")
	if len(keys) != 1 || keys[0].entity != nil {
		t.Fatalf("%+v", keys)
	}
	k := evaluate(keys[0], "u@p.example", SourceLocal, now)
	if k.Usable || !strings.HasPrefix(k.Reason, "unsupported algorithm") || len(k.UserIDs) != 1 || k.Fingerprint == "" {
		t.Errorf("unsupported: %+v", k)
	}
	// A version 3 key.
	v3 := []byte{0xc0 | 6, 6, 3, 0, 0, 0, 0, 1}
	keys, _ = parseKeys(v3, "v3")
	if len(keys) != 1 || evaluate(keys[0], "x@p.example", SourceLocal, now).Reason != "unsupported key version 3" {
		t.Errorf("v3: %+v", keys)
	}

	weak := newTestEntity(t, "W", "w@p.example", &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 1024})
	keys, err = parseKeys(publicBytes(t, weak), "weak")
	if err != nil {
		t.Fatal(err)
	}
	if k := evaluate(keys[0], "w@p.example", SourceLocal, now); k.Usable || !strings.Contains(k.Reason, "RSA-1024") {
		t.Errorf("weak: %+v", k)
	}
}

// TestEvaluateUserIDs: the user ID must carry exactly the address, and a
// revoked user ID does not count.
func TestEvaluateUserIDs(t *testing.T) {
	g := pgptest.New(t)
	f := g.GenKey("Multi <one@p.example>", "ed25519", "sign", "0")
	g.AddKey(f, "cv25519", "encr", "0")
	g.Run(nil, "--quick-add-uid", f, "Two <two@p.example>")
	g.Run(nil, "--quick-revoke-uid", f, "Two <two@p.example>")
	keys, err := parseKeys(g.Export(f, false), "multi")
	if err != nil || len(keys) != 1 {
		t.Fatal(err)
	}
	now := time.Now()
	for addr, want := range map[string]string{
		"one@p.example":    "key ",
		"ONE@P.EXAMPLE":    "key ",
		"two@p.example":    "user ID for two@p.example revoked",
		"one@p.example.co": "no user ID for one@p.example.co",
		"ne@p.example":     "no user ID for ne@p.example",
	} {
		a, _ := normalizeAddr(addr)
		if k := evaluate(keys[0], a, SourceLocal, now); !strings.HasPrefix(k.Reason, want) {
			t.Errorf("%s: %q, want %q", addr, k.Reason, want)
		}
	}
}

func TestUIDAddress(t *testing.T) {
	for uid, want := range map[string]string{
		"Alice Example <Alice@X.Example>":         "alice@x.example",
		"alice@x.example":                         "alice@x.example",
		"Alice (work) <alice@x.example>":          "alice@x.example",
		"\"Odd, Name\" <odd@x.example>":           "odd@x.example",
		"Broken <unbalanced@x.example":            "",
		"Weird name ünïcode <w@x.example>":        "w@x.example",
		"no address here":                         "",
		"Two <a@x.example> <b@x.example>":         "b@x.example",
		"Spacey < spaced@x.example >":             "spaced@x.example",
		"<>":                                      "",
		"Nobody <@x.example>":                     "",
		"Trailing <trailing@x.example> (comment)": "trailing@x.example",
	} {
		if got := uidAddress(uid); got != want {
			t.Errorf("uidAddress(%q) = %q, want %q", uid, got, want)
		}
	}
}

func TestReadSigningKey(t *testing.T) {
	dir := t.TempDir()
	e := newTestEntity(t, "Org", "signer@example.org", nil)
	var sec bytes.Buffer
	w, _ := armor.Encode(&sec, openpgp.PrivateKeyType, nil)
	if err := e.SerializePrivate(w, nil); err != nil {
		t.Fatal(err)
	}
	w.Close()
	p := filepath.Join(dir, "org.asc")
	os.WriteFile(p, sec.Bytes(), 0o600)
	got, err := ReadSigningKey(p, time.Now())
	if err != nil || got.PrivateKey == nil || fpr(got) != fpr(e) {
		t.Fatalf("%v", err)
	}
	pub := filepath.Join(dir, "pub.asc")
	os.WriteFile(pub, armoredPublic(t, e), 0o600)
	if _, err := ReadSigningKey(pub, time.Now()); err == nil {
		t.Error("public key accepted as a signing key")
	}
	locked := newTestEntity(t, "Locked", "l@example.org", nil)
	if err := locked.EncryptPrivateKeys([]byte("pw"), nil); err != nil {
		t.Fatal(err)
	}
	var lb bytes.Buffer
	if err := locked.SerializePrivateWithoutSigning(&lb, nil); err != nil {
		t.Fatal(err)
	}
	lp := filepath.Join(dir, "locked.gpg")
	os.WriteFile(lp, lb.Bytes(), 0o600)
	if _, err := ReadSigningKey(lp, time.Now()); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("locked key: %v", err)
	}
	if _, err := ReadSigningKey(filepath.Join(dir, "missing"), time.Now()); err == nil {
		t.Error("missing file accepted")
	}
}

// TestOversizedKeyMaterial: huge DSA or ElGamal numbers are refused before
// any signature is verified.
func TestOversizedKeyMaterial(t *testing.T) {
	mk := func(algo byte, bits ...int) []byte {
		body := []byte{4, 0, 0, 0, 1, algo}
		for _, n := range bits {
			body = append(body, byte(n>>8), byte(n))
			body = append(body, bytes.Repeat([]byte{0xff}, (n+7)/8)...)
		}
		return append([]byte{0xc0 | tagPublicKey, 255, byte(len(body) >> 24), byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	}
	uid := append([]byte{0xc0 | tagUserID, 13}, "d@big.example"...)
	start := time.Now()
	for _, c := range []struct {
		in   []byte
		want string
	}{
		{mk(17, 8192, 256, 8192, 8192), "DSA-8192"},
		{mk(17, 2048, 4096, 2048, 2048), "DSA with a 4096-bit q"},
		{mk(16, 8192, 8, 8192), "ElGamal-8192"},
		{mk(1, 20000, 17), "RSA-20000"},
	} {
		keys, _ := parseKeys(append(c.in, uid...), "big")
		if len(keys) != 1 || keys[0].entity != nil || !strings.Contains(keys[0].err, c.want) {
			t.Errorf("want %q: %+v", c.want, keys)
			continue
		}
		if k := evaluate(keys[0], "d@big.example", SourceWKD, time.Now()); k.Usable || len(k.UserIDs) != 1 {
			t.Errorf("%+v", k)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

// TestV6Key: a version 6 key (RFC 9580) is read, its key ID is the high 64
// bits of its SHA-256 fingerprint, and it is usable.
func TestV6Key(t *testing.T) {
	e := newTestEntity(t, "Six", "six@p.example", &packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519})
	keys, err := parseKeys(armoredPublic(t, e), "v6")
	if err != nil || len(keys) != 1 {
		t.Fatal(err)
	}
	k := evaluate(keys[0], "six@p.example", SourceLocal, time.Now())
	if !k.Usable || len(k.Fingerprint) != 64 || k.KeyID != "0x"+k.Fingerprint[:16] || k.Fingerprint != fpr(e) {
		t.Errorf("%+v", k)
	}
}
